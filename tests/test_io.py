"""Output files: CaloChallenge HDF5 / npz / npy, atomic rename, resume, and the background writer."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import fastsim
from fastsim.errors import ArgumentError, OutputError
from fastsim.io import (
    ShowerWriter,
    check_output_path,
    find_partial,
    output_format,
    parse_compression,
    partial_progress,
    read_output,
    write_batches,
)


@pytest.fixture(scope="module")
def gen(wide_model):
    return fastsim.load(wide_model, device="cpu", threads=1)


N = 1500


@pytest.fixture(scope="module")
def reference(gen):
    return gen.generate(N, "10GeV:1TeV", seed=3)


@pytest.mark.parametrize(("name", "compression"), [
    ("out.h5", None), ("out.h5", "gzip"), ("out.hdf5", "lzf"), ("out.h5", "gzip:1"),
    ("out.npz", None), ("out.npz", "gzip"), ("out.npy", None),
])
def test_written_files_hold_exactly_the_generated_showers(gen, reference, tmp_path, name, compression):
    path = tmp_path / name
    summary = gen.write(path, N, "10GeV:1TeV", seed=3, batch_size=512, compression=compression)
    assert summary["n"] == N and summary["output"] == str(path) and summary["provider"] == "CPUExecutionProvider"
    assert path.is_file() and find_partial(path) is None
    energies, showers = read_output(path)
    assert energies.shape == (N, 1) and showers.shape == (N, 6480)
    assert energies.dtype == np.float32 and showers.dtype == np.float32
    assert np.array_equal(energies, reference[0]) and np.array_equal(showers, reference[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_write_recycles_a_fixed_pool_of_buffers_without_mixing_runs(wide_model, tmp_path, monkeypatch, threads):
    # A slow writer keeps the queue full while the same few buffers go round: every run must
    # still land in the file intact, and no more than WRITE_QUEUE + 2 buffers may ever exist.
    import time

    from fastsim import generator as generator_module
    from fastsim.io import WRITE_QUEUE

    gen = fastsim.load(wide_model, device="cpu", threads=threads)
    n, start = 9 * 1024 + 37, 100
    expected = gen.generate(n, seed=8, start=start, batch_size=1024)
    slow_write = ShowerWriter.write

    def write(self, conditions, showers):
        time.sleep(0.01)
        slow_write(self, conditions, showers)

    allocations = []
    real_empty = generator_module.aligned_empty

    def counting_empty(shape, *args, **kwargs):
        allocations.append(tuple(shape))
        return real_empty(shape, *args, **kwargs)

    monkeypatch.setattr(ShowerWriter, "write", write)
    monkeypatch.setattr(generator_module, "aligned_empty", counting_empty)
    gen.write(tmp_path / "w.h5", n, seed=8, start=start, batch_size=1024)
    monkeypatch.undo()
    energies, showers = read_output(tmp_path / "w.h5")
    assert np.array_equal(energies, expected[0]) and np.array_equal(showers, expected[1])
    assert allocations == [(1024, 6480)] * (WRITE_QUEUE + 2)


def test_hdf5_layout_and_attributes(gen, tmp_path):
    path = tmp_path / "out.h5"
    gen.write(path, 700, "50GeV", seed=12, compression="gzip")
    with h5py.File(path, "r") as fh:
        assert set(fh) == {"incident_energies", "showers"}
        assert fh["showers"].chunks[1] == 6480 and fh["showers"].compression == "gzip"
        attrs = fh.attrs
        assert fastsim.ModelSpec.from_json(attrs["fastsim.spec"]) == gen.spec
        assert attrs["fastsim.seed"] == 12 and attrs["fastsim.n"] == 700 and attrs["fastsim.progress"] == 700
        assert attrs["fastsim.version"] == fastsim.__version__
        assert attrs["fastsim.model_sha256"] == gen.sha256
        assert json.loads(attrs["fastsim.conditions"]) == {
            "incident_energy": {"kind": "constant", "value": 50000.0, "unit": "MeV"}}
        assert bool(attrs["fastsim.complete"])


def test_uncompressed_showers_are_one_aligned_contiguous_dataset_written_directly(gen, reference, tmp_path):
    path = tmp_path / "d.h5"
    summary = gen.write(path, N, "10GeV:1TeV", seed=3, batch_size=512)
    # O_DIRECT on this file system, from page-aligned run buffers: all but the last 28 rows
    # (1500 = 23 x 64 + 28; offsets are page-aligned every 64 rows of 6480 floats).
    assert summary["direct_io_fraction"] == round((N - 28) / N, 4)
    with h5py.File(path, "r") as fh:
        showers = fh["showers"]
        assert showers.chunks is None and showers.compression is None
        assert showers.id.get_offset() % 4096 == 0
        assert np.array_equal(showers[...], reference[1])


@pytest.mark.parametrize("refusal", ["open", "write"])
def test_without_o_direct_the_same_bytes_go_through_the_page_cache(gen, reference, tmp_path, monkeypatch, refusal):
    # Some file systems (tmpfs, some network mounts) refuse O_DIRECT when opening, others on
    # the first write: either way the file must come out the same.
    import errno
    import os

    real_open, real_pwrite = os.open, os.pwrite
    direct_fds = set()

    def open_(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            if refusal == "open":
                raise OSError(errno.EINVAL, "Invalid argument")
            fd = real_open(path, flags, *args)
            direct_fds.add(fd)
            return fd
        return real_open(path, flags, *args)

    def pwrite(fd, data, offset):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "pwrite", pwrite)
    summary = gen.write(tmp_path / "b.h5", N, "10GeV:1TeV", seed=3, batch_size=512)
    monkeypatch.undo()
    assert summary["direct_io_fraction"] == 0.0
    assert bool(direct_fds) == (refusal == "write")
    energies, showers = read_output(tmp_path / "b.h5")
    assert np.array_equal(energies, reference[0]) and np.array_equal(showers, reference[1])


def test_writer_takes_rows_in_any_memory_and_at_any_offset(tmp_path):
    # Arrays a caller hands to ShowerWriter need not be page-aligned, and rows may start
    # anywhere: only rows whose file offset and memory are both page-aligned go direct.
    from fastsim.io import aligned_empty

    rng = np.random.default_rng(0)
    data = rng.random((300, 6480), dtype=np.float32)
    aligned = aligned_empty((300, 6480))
    aligned[...] = data
    row = 6480 * 4
    with ShowerWriter(tmp_path / "any.h5", n=300, n_voxels=6480) as writer:
        writer.write(np.ones((7, 1)), data[:7])            # ordinary memory
        writer.write(np.ones((121, 1)), aligned[:121])      # file rows 7..: memory out of phase
        assert writer.bytes_direct == 0
        writer.write(np.ones((172, 1)), aligned[128:])      # file rows 128..: in phase
        assert writer.bytes_direct == 128 * row  # two 64-row blocks; the last 44 rows through the cache
    expected = np.concatenate([data[:7], data[:121], data[128:]])
    assert np.array_equal(read_output(tmp_path / "any.h5")[1], expected)


def test_an_open_showers_handle_cannot_write_stale_bytes_over_direct_rows(tmp_path):
    # h5py's sieve buffer must never write stale bytes over rows that went around it: with a
    # reader's handle to "showers" open all along, every row still comes out right.
    from fastsim.io import aligned_empty

    data = aligned_empty((1024, 10))
    data[...] = np.arange(1024 * 10, dtype=np.float32).reshape(1024, 10)
    with ShowerWriter(tmp_path / "h.h5", n=2048, n_voxels=10) as writer:
        held = writer._file["showers"]
        for rows in (600, 424, 600, 424):
            start = writer.done % 1024
            writer.write(np.ones((rows, 1)), data[start:start + rows])
        del held
    got = read_output(tmp_path / "h.h5")[1]
    assert np.array_equal(got[:1024], data) and np.array_equal(got[1024:], data)


def test_partial_file_until_closed_then_renamed(tmp_path):
    path = tmp_path / "x.h5"
    writer = ShowerWriter(path, n=10, n_voxels=3, attrs={"seed": 0})
    writer.write(np.ones((4, 1)), np.ones((4, 3)))
    assert find_partial(path).is_file() and not path.exists()
    assert partial_progress(path) == 4
    with pytest.raises(OutputError, match="only 4 of 10 rows"):
        writer.close()
    writer.write(np.ones((6, 1)), np.ones((6, 3)))
    assert writer.close() == path and path.is_file() and find_partial(path) is None


@pytest.mark.parametrize("name", ["x.h5", "x.npz", "x.npy"])
def test_error_before_any_row_leaves_nothing(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(RuntimeError):
        with ShowerWriter(path, n=10, n_voxels=3):
            raise RuntimeError("decoding failed")
    assert list(tmp_path.iterdir()) == []


def test_error_after_rows_keeps_the_hdf5_partial_for_resuming(tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(RuntimeError):
        with ShowerWriter(path, n=10, n_voxels=3, attrs={"seed": 1}) as writer:
            writer.write(np.ones((4, 1)), np.ones((4, 3)))
            raise RuntimeError("interrupted")
    assert not path.exists() and partial_progress(path) == 4


def _interrupt_write(gen, path, after_runs, **kwargs):
    """Run gen.write, raising KeyboardInterrupt from the decoding loop after some session runs (like Ctrl-C)."""
    original = gen._decoded

    def interrupted(*args, **kw):
        for i, run in enumerate(original(*args, **kw)):
            if i == after_runs:
                raise KeyboardInterrupt
            yield run

    gen._decoded = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            gen.write(path, **kwargs)
    finally:
        del gen._decoded


@pytest.mark.parametrize("compression", ["lzf", None])  # chunked by h5py; contiguous, O_DIRECT
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(gen, reference, tmp_path, compression):
    path = tmp_path / "r.h5"
    # batch_size 256 still decodes whole 1024-row runs on the block grid; each run is written at once.
    _interrupt_write(gen, path, 1, n=N, conditions="10GeV:1TeV", seed=3, batch_size=256, compression=compression)
    assert not path.exists() and partial_progress(path) == 1024
    summary = gen.write(path, N, "10GeV:1TeV", seed=3, batch_size=700, compression=compression, resume=True)
    assert summary["resumed_from"] == 1024 and summary["generated"] == N - 1024
    energies, showers = read_output(path)
    assert np.array_equal(energies, reference[0]) and np.array_equal(showers, reference[1])


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": 4}, "seed is 3 in the file, 4 now"),
    ({"n": N + 1}, "n is 1500 in the file, 1501 now"),
    ({"conditions": "20GeV:1TeV"}, "conditions is"),
    ({"start": 1024}, "start is 0 in the file, 1024 now"),
])
def test_resume_refuses_a_different_run(gen, tmp_path, change, message):
    path = tmp_path / "r.h5"
    args = {"n": N, "conditions": "10GeV:1TeV", "seed": 3, "start": 0}
    _interrupt_write(gen, path, 1, batch_size=256, **args)
    assert partial_progress(path) == 1024
    args.update(change)
    with pytest.raises(OutputError, match=f"resume: .* is from a different run: .*{message}"):
        gen.write(path, resume=True, batch_size=256, **args)
    assert partial_progress(path) == 1024  # the partial run is left as it was


def test_existing_output_needs_force(gen, tmp_path):
    path = tmp_path / "o.h5"
    gen.write(path, 10, seed=1)
    with pytest.raises(OutputError, match="already exists; pass --force"):
        gen.write(path, 10, seed=1)
    gen.write(path, 20, seed=2, force=True)
    assert read_output(path)[1].shape == (20, 6480)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"path": "nodir/o.h5"}, OutputError, "folder .*nodir' does not exist"),
    ({"path": "o.txt"}, ArgumentError, "cannot tell the format"),
    ({"path": "o.h5", "fmt": "csv"}, ArgumentError, "format: expected one of"),
    ({"path": "o.npz", "resume": True}, OutputError, "only HDF5 output"),
    ({"path": "o.h5", "resume": True}, OutputError, "no partial run of"),
    ({"path": "o.h5", "resume": True, "force": True}, OutputError, "not both"),
])
def test_bad_output_paths(tmp_path, kwargs, error, message):
    kwargs["path"] = tmp_path / kwargs["path"]
    with pytest.raises(error, match=message):
        check_output_path(**kwargs)


def test_unwritable_folder(tmp_path):
    import os

    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    if os.access(folder, os.W_OK):
        pytest.skip("running as a user who can write anywhere")
    with pytest.raises(OutputError, match="not writable"):
        check_output_path(folder / "o.h5")


@pytest.mark.parametrize(("value", "fmt", "expected"), [
    (None, "h5", (None, None)), ("none", "h5", (None, None)), ("gzip", "h5", ("gzip", 4)),
    ("gzip:9", "h5", ("gzip", 9)), ("lzf", "h5", ("lzf", None)), ("gzip", "npz", ("gzip", 4)),
])
def test_compression_values(value, fmt, expected):
    assert parse_compression(value, fmt) == expected


@pytest.mark.parametrize(("value", "fmt"), [("zstd", "h5"), ("gzip:12", "h5"), ("lzf:2", "h5"),
                                            ("lzf", "npz"), ("gzip", "npy")])
def test_bad_compression_values(value, fmt):
    with pytest.raises(ArgumentError, match="compression"):
        parse_compression(value, fmt)


def test_format_from_suffix():
    assert [output_format(p) for p in ("a.h5", "a.HDF5", "a.npz", "a.npy")] == ["h5", "h5", "npz", "npy"]
    assert output_format("a.dat", "npz") == "npz"


def test_write_batches_reraises_writer_errors_and_stops(tmp_path):
    path = tmp_path / "w.h5"
    writer = ShowerWriter(path, n=5, n_voxels=3)
    produced = []

    def batches():
        for i in range(100):
            produced.append(i)
            yield np.ones((2, 1)), np.ones((2, 3))

    with pytest.raises(OutputError, match="6 rows written to a file of 5"):
        write_batches(writer, batches())
    assert len(produced) < 100  # production stops soon after the writer fails
    writer.abort()


def test_multi_condition_files_keep_all_conditions(tmp_path):
    from fastsim.spec import ConditionSpec
    from helpers.decoders import ENERGY_CONDITION, make_decoder

    path = make_decoder(tmp_path / "two.onnx",
                        conditions=[ConditionSpec("angle", "rad", 0.1, 1.0), ENERGY_CONDITION])
    gen = fastsim.load(path, device="cpu")
    conditions, showers = gen.generate(300, seed=1)
    for name in ("m.h5", "m.npz"):
        gen.write(tmp_path / name, 300, seed=1)
        energies, stored = read_output(tmp_path / name)
        assert np.array_equal(energies[:, 0], conditions[:, 1])  # incident_energy is column 1
        assert np.array_equal(stored, showers)
    with h5py.File(tmp_path / "m.h5") as fh:
        assert np.array_equal(fh["conditions"][...], conditions)
    with np.load(tmp_path / "m.npz") as archive:
        assert np.array_equal(archive["conditions"], conditions)


def test_writing_memory_does_not_grow_with_n(toy_model, tmp_path):
    import tracemalloc

    gen = fastsim.load(toy_model, device="cpu", threads=1)
    gen.write(tmp_path / "warm-up.h5", 10_000, seed=1)  # one-time allocations (imports, caches)
    peaks = {}
    for n in (100_000, 400_000):
        tracemalloc.start()
        gen.write(tmp_path / f"m{n}.h5", n, seed=1, batch_size=4096)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    data_bytes = 400_000 * 25 * 4  # showers + energies of the larger run: 40 MB
    assert peaks[400_000] < data_bytes / 8
    assert peaks[400_000] < 1.5 * peaks[100_000] + 256 * 1024
