"""HEP output formats: ROOT trees through uproot and sparse hit lists, written by `fastsim generate`.

The files must hold exactly the showers `Generator.generate` gives for the same
seed, record units, describe the voxels with the model's geometry, read back
(uproot, h5py, `fastsim.open_dataset`, `fastsim validate`) and never be left
half-written.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

import fastsim
from fastsim.formats import hep_format, voxel_table, write_hep
from fastsim.geometry import CylindricalGeometry, Layer
from helpers.decoders import make_decoder

uproot = pytest.importorskip("uproot")

GEOMETRY = CylindricalGeometry((Layer((0.0, 2.0, 5.0, 10.0, 30.0), 3), Layer((0.0, 4.0, 8.0, 16.0, 40.0), 3)),
                               layer_thickness_mm=5.0)
N = 700


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_decoder(tmp_path_factory.mktemp("models") / "geo.onnx", latent_dim=4, n_voxels=GEOMETRY.n_voxels,
                        geometry=GEOMETRY.to_dict())


@pytest.fixture(scope="module")
def expected(model):
    generator = fastsim.load(model, device="cpu", threads=1)
    return generator.generate(N, conditions="1GeV:1TeV", seed=11)


def _generate(run_fastsim, model, out, *extra):
    result = run_fastsim("generate", "-n", N, "--energy", "1GeV:1TeV", "--seed", 11, "--model", model,
                         "-o", out, "-q", *extra)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left beside it


def test_root_tree_holds_conditions_voxel_energies_units_and_geometry(run_fastsim, model, expected, tmp_path):
    out = tmp_path / "showers.root"
    _generate(run_fastsim, model, out)
    energies, showers = expected
    with uproot.open(out) as root:
        tree = root["showers"]
        assert tree.num_entries == N
        assert tree.typenames() == {"incident_energy": "double", "voxel_energy": f"float[{GEOMETRY.n_voxels}]"}
        np.testing.assert_array_equal(tree["incident_energy"].array(library="np"), energies[:, 0])
        np.testing.assert_array_equal(tree["voxel_energy"].array(library="np"), showers)  # bitwise
        assert json.loads(str(root["fastsim_units"]))["voxel_energy"] == "MeV"
        assert json.loads(str(root["fastsim_units"]))["incident_energy"] == "MeV"
        run = json.loads(str(root["fastsim_run"]))
        assert (run["seed"], run["n"], run["model"]) == (11, N, "toy-decoder")
        assert fastsim.ModelSpec.from_json(str(root["fastsim_spec"])).n_voxels == GEOMETRY.n_voxels
        voxels = root["voxels"].arrays(library="np")
    x, _, _, alpha, layer = GEOMETRY.voxel_centres()
    np.testing.assert_array_equal(voxels["voxel"], np.arange(GEOMETRY.n_voxels))
    np.testing.assert_allclose(voxels["x"], x)
    np.testing.assert_allclose(voxels["alpha"], alpha)
    np.testing.assert_allclose(voxels["z"], (layer + 0.5) * 5.0)  # mid-layer depth in mm
    # The second layer's first voxel is its innermost ring, first alpha sector.
    assert voxels["layer"][12] == 1 and voxels["r"][12] == pytest.approx(2.0)


def test_hit_list_is_the_nonzero_voxels_with_positions(run_fastsim, model, expected, tmp_path):
    out = tmp_path / "showers.hits.h5"
    _generate(run_fastsim, model, out)
    energies, showers = expected
    rows, cols = np.nonzero(showers)
    table = voxel_table(GEOMETRY)
    with h5py.File(out, "r") as fh:
        np.testing.assert_array_equal(fh["hits/event"][()], rows)
        np.testing.assert_array_equal(fh["hits/voxel"][()], cols)
        np.testing.assert_array_equal(fh["hits/energy"][()], showers[rows, cols])
        np.testing.assert_allclose(fh["hits/x"][()], table["x"][cols], rtol=1e-6)
        np.testing.assert_allclose(fh["hits/z"][()], table["z"][cols], rtol=1e-6)
        np.testing.assert_array_equal(fh["hits/layer"][()], table["layer"][cols])
        offsets = fh["events/hit_offsets"][()]
        np.testing.assert_array_equal(np.diff(offsets), (showers > 0).sum(axis=1))
        np.testing.assert_array_equal(fh["events/incident_energies"][()], energies)
        assert fh["hits/energy"].attrs["unit"] == "MeV" and fh["hits/x"].attrs["unit"] == "mm"
        assert fh["voxels/alpha"].attrs["unit"] == "rad"
        assert fh.attrs["fastsim.format"] == "fastsim-hits/1" and fh.attrs["fastsim.seed"] == 11


def test_hit_list_of_the_bundled_model_lists_only_voxels_with_energy(run_fastsim, tmp_path):
    out = tmp_path / "bundled.hits.h5"
    result = run_fastsim("generate", "-n", 40, "--energy", "50GeV", "--seed", 2, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    with fastsim.open_dataset(out) as data:
        _, dense = data.read()
    _, direct = fastsim.load("calo-electron", device="cpu", threads=1).generate(40, conditions=50_000.0, seed=2)
    np.testing.assert_array_equal(dense, direct)
    with h5py.File(out, "r") as fh:
        n_hits = fh["hits/energy"].shape[0]
        assert (fh["hits/energy"][()] > 0).all()
    # Sparse: the voxels below the model's threshold are not listed.
    assert n_hits == np.count_nonzero(direct) < direct.size


@pytest.mark.parametrize("name", ["showers.root", "showers.hits.h5"])
def test_open_dataset_and_validate_read_what_generate_wrote(run_fastsim, model, expected, tmp_path, name):
    out = tmp_path / "gen" / name
    out.parent.mkdir()
    _generate(run_fastsim, model, out)
    with fastsim.open_dataset(out) as data:
        assert (data.n, data.n_voxels) == (N, GEOMETRY.n_voxels)
        assert data.geometry == GEOMETRY  # from the spec stored in the file
        chunks = list(data.iter_chunks(300))
        assert [len(e) for e, _ in chunks] == [300, 300, 100] and chunks[0][0].shape == (300, 1)
        np.testing.assert_array_equal(np.concatenate([s for _, s in chunks]), expected[1])
        np.testing.assert_array_equal(data.incident_energies, expected[0])
    reference = tmp_path / "ref" / "reference.h5"
    reference.parent.mkdir()
    _generate(run_fastsim, model, reference)
    result = run_fastsim("validate", out, reference, "-o", tmp_path / "report", "--metrics", "separation",
                         "--no-plots", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    # The same showers on both sides: every separation power is exactly zero.
    values = [v["value"] for k, v in metrics["metrics"].items() if k.startswith("separation_power")]
    assert values and all(v == 0.0 for v in values)


def test_python_api_writes_the_same_file(model, expected, tmp_path):
    generator = fastsim.load(model, device="cpu", threads=1)
    summary = write_hep(generator, tmp_path / "api.root", N, "1GeV:1TeV", seed=11, batch_size=256)
    assert (summary["n"], summary["format"]) == (N, "root")
    with fastsim.open_dataset(tmp_path / "api.root") as data:
        np.testing.assert_array_equal(data.read()[1], expected[1])


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "{tmp}/existing.root"], "already exists; pass --force"),
        (["-o", "{tmp}/s.root", "--resume"], "resume: only HDF5 output"),
        (["-o", "{tmp}/s.root", "--compression", "gzip"], "compression: root output chooses its own"),
        (["-o", "{tmp}/s.npz", "--format", "hits"], "a hit list is HDF5"),
        (["-o", "{tmp}/s.h5", "--format", "root"], "ROOT output needs a name ending in .root"),
        (["-o", "{tmp}/missing/s.root"], "does not exist"),
        (["-o", "{tmp}/s.root", "--energy", "5TeV"], "--energy"),
    ],
)
def test_bad_hep_output_is_one_line_exit_2_and_no_file(run_fastsim, model, tmp_path, args, message):
    (tmp_path / "existing.root").write_bytes(b"keep me")
    args = [a.format(tmp=tmp_path) for a in args]
    result = run_fastsim("generate", "-n", 10, "--model", model, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.root"]
    assert (tmp_path / "existing.root").read_bytes() == b"keep me"


def test_root_output_without_uproot_names_the_extra(run_fastsim, model, tmp_path):
    # A Python path on which `import uproot` fails, as it does where the root extra is not installed.
    blocked = tmp_path / "blocked" / "uproot"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('uproot is not installed here')\n")
    env = {k: v for k, v in os.environ.items() if k != "FASTSIM_MODEL_PATH"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(blocked.parent), env.get("PYTHONPATH", "")]))
    result = run_fastsim("generate", "-n", 10, "--model", model, "-o", tmp_path / "s.root", env=env)
    assert result.returncode == 2
    assert "pip install 'fastsim[root]'" in result.stderr
    assert not (tmp_path / "s.root").exists()


def test_format_is_chosen_by_suffix_or_option():
    assert hep_format("a/showers.root") == "root"
    assert hep_format("showers.HITS.h5") == "hits"
    assert hep_format("showers.h5") is None
    assert hep_format("showers.h5", "hits") == "hits"
    assert hep_format("showers.root", "h5") is None
