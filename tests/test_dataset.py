"""Lazy, validated reading of CaloChallenge shower files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from fastsim.dataset import open_showers
from fastsim.errors import DataError
from fastsim.geometry import CylindricalGeometry, Layer, default_geometry

SMALL = CylindricalGeometry((Layer((0.0, 1.0, 2.0), 3), Layer((0.0, 4.0), 2)))  # 6 + 2 voxels


def _write(path, energies, showers, **attrs):
    with h5py.File(path, "w") as f:
        if energies is not None:
            f.create_dataset("incident_energies", data=energies)
        if showers is not None:
            f.create_dataset("showers", data=showers)
        f.attrs.update(attrs)
    return path


@pytest.fixture
def small_file(tmp_path):
    rng = np.random.default_rng(3)
    energies = rng.uniform(1e3, 1e6, (37, 1))
    showers = (rng.random((37, SMALL.n_voxels)) * energies / 8).astype(np.float32)
    showers[showers < 50] = 0
    return _write(tmp_path / "small.h5", energies, showers), energies, showers


@pytest.mark.parametrize("chunk_size", [1, 5, 37, 1000])
def test_chunks_reassemble_the_file(small_file, chunk_size):
    path, energies, showers = small_file
    with open_showers(path, SMALL) as f:
        assert (f.n, len(f), f.n_voxels) == (37, 37, 8)
        np.testing.assert_array_equal(f.incident_energies, energies)
        chunks = list(f.iter_chunks(chunk_size))
    assert all(len(e) == len(s) <= chunk_size and e.shape == (len(s), 1) for e, s in chunks)
    assert np.concatenate([e for e, _ in chunks]).dtype == np.float64
    got = np.concatenate([s for _, s in chunks])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, showers)


def test_read_and_partial_ranges(small_file):
    path, energies, showers = small_file
    with open_showers(path, SMALL) as f:
        e, s = f.read(10, 20)
        assert e.shape == (10, 1)
        np.testing.assert_array_equal(e, energies[10:20])
        np.testing.assert_array_equal(s, showers[10:20])
        parts = list(f.iter_chunks(4, start=30))
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), showers[30:])
        with pytest.raises(DataError, match="rows 5:40 are outside 0:37"):
            f.read(5, 40)
        with pytest.raises(DataError, match="chunk_size must be an integer >= 1"):
            next(f.iter_chunks(0))


def test_closed_file_refuses_reads(small_file):
    path, _, _ = small_file
    f = open_showers(path, SMALL)
    f.close()
    assert f.n == 37  # sizes stay known
    with pytest.raises(DataError, match="closed"):
        f.read()


def test_geometry_found_beside_the_file(tmp_path):
    rng = np.random.default_rng(0)
    path = _write(tmp_path / "run.h5", rng.uniform(1e3, 2e3, (4, 1)), rng.random((4, 8)), binning="run.xml")
    SMALL.to_xml(tmp_path / "run.xml")
    with open_showers(path) as f:
        assert f.geometry == SMALL
    ds2 = _write(tmp_path / "ds2.h5", np.full((2, 1), 5e4), np.zeros((2, 6480), np.float32))
    with open_showers(ds2) as f:
        assert f.geometry == default_geometry()


def _bad_files(tmp_path):
    good_e = np.full((6, 1), 1e4)
    good_s = np.ones((6, 8), np.float32)
    neg = good_s.copy()
    neg[4, 2] = -1e-3
    nan = good_s.copy()
    nan[3, 0] = np.nan
    inf = good_s.copy()
    inf[5, 7] = np.inf
    zero_e = good_e.copy()
    zero_e[2] = 0
    return {
        "missing showers": ((good_e, None), "missing dataset 'showers'"),
        "missing energies": ((None, good_s), "missing dataset 'incident_energies'"),
        "lengths": ((good_e[:5], good_s), "'incident_energies' has 5 rows, 'showers' has 6"),
        "voxels": ((good_e, np.ones((6, 9), np.float32)), "'showers' has 9 voxels per shower, the geometry has 8"),
        "1-d showers": ((good_e, np.ones(6, np.float32)), "'showers' must be 2-D"),
        "energy shape": ((np.ones((6, 2)), good_s), r"'incident_energies' must have shape \(N, 1\)"),
        "zero energy": ((zero_e, good_s), "'incident_energies' must hold finite energies > 0 MeV; row 2"),
        "negative voxel": ((good_e, neg), "'showers' has a negative energy in row 4"),
        "nan voxel": ((good_e, nan), "'showers' has a non-finite value in row 3"),
        "inf voxel": ((good_e, inf), "'showers' has a non-finite value in row 5"),
    }


BAD_NAMES = list(_bad_files(None))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_files_are_clear_errors_naming_file_and_dataset(tmp_path, name):
    (energies, showers), message = _bad_files(tmp_path)[name]
    path = _write(tmp_path / f"{name.replace(' ', '_')}.h5", energies, showers)
    with pytest.raises(DataError, match=message) as info:
        with open_showers(path, SMALL) as f:
            for _ in f.iter_chunks(2):
                pass
    assert str(path) in str(info.value)


def test_bad_values_are_found_in_the_chunk_that_holds_them(tmp_path):
    showers = np.ones((10, 8), np.float32)
    showers[8, 1] = -5.0
    path = _write(tmp_path / "late.h5", np.full((10, 1), 1e4), showers)
    with open_showers(path, SMALL) as f:  # opening does not read the showers
        chunks = f.iter_chunks(4)
        assert next(chunks)[1].shape == (4, 8)
        assert next(chunks)[1].shape == (4, 8)
        with pytest.raises(DataError, match="negative energy in row 8"):
            next(chunks)


def test_not_a_file_or_not_hdf5(tmp_path):
    with pytest.raises(DataError, match="no such shower file"):
        open_showers(tmp_path / "absent.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not HDF5")
    with pytest.raises(DataError, match="junk.h5: not a readable HDF5 file"):
        open_showers(junk)


def test_every_reader_gives_energies_as_n_by_1_like_generate(toy_model, tmp_path):
    """Generator.generate, a file, a folder of shards and its dask arrays: energies (N, 1) everywhere."""
    import fastsim
    from fastsim import distributed

    n = 1500
    energies, _ = fastsim.load(toy_model, device="cpu", threads=1).generate(n, conditions="1GeV:1TeV", seed=4)
    assert energies.shape == (n, 1)
    distributed.generate(toy_model, n, tmp_path / "shards", "1GeV:1TeV", seed=4, shards=2, device="cpu")
    single = tmp_path / "shards" / "shard-00000.h5"
    with fastsim.open_dataset(tmp_path / "shards") as data, fastsim.open_dataset(single) as first:
        for source in (data, first):
            assert source.incident_energies.shape == (source.n, 1)
            e, s = source.read(0, 10)
            assert e.shape == (10, 1) and s.shape == (10, 24)
            assert all(e.shape == (len(s), 1) for e, s in source.iter_chunks(700))
        np.testing.assert_allclose(data.read()[0], energies, rtol=1e-6)  # float32 in the file
        lazy_energies, lazy_showers = data.to_dask()
        assert lazy_energies.shape == (n, 1) and lazy_showers.shape == (n, 24)
        assert data.read(5, 5)[0].shape == (0, 1)
