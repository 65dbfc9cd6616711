"""Hostile input: a growing corpus of bad input run through the real CLI, concurrent writers, full disks.

Every corpus case runs ``fastsim`` as a subprocess in its own empty folder and
must give exit status 2, one line on stderr that names the argument, no
traceback, and leave no file behind (nor change the input files).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest

import fastsim
import fastsim.distributed  # used as fastsim.distributed: the submodule is not imported by the package
from fastsim.errors import ConditionError, ModelError, OutputError
from fastsim.io import ShowerWriter, find_partial, partial_progress, read_output
from fastsim.models import file_sha256, model_sha256
from fastsim.spec import embed_spec
from helpers import cli_env
from helpers.decoders import make_decoder, make_model, make_spec


def _files(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if not p.is_symlink()}


def _with_external_data(folder: Path, name: str, location: str) -> Path:
    """A toy decoder whose initializers live in external data at ``location`` (saved as ``data.bin``)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(make_decoder(folder / f"{name}.plain.onnx", latent_dim=4, n_voxels=24))
    (folder / f"{name}.plain.onnx").unlink()
    onnx.save_model(model, folder / f"{name}.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.bin", size_threshold=0)
    if location != f"{name}.bin":
        model = onnx.load(folder / f"{name}.onnx", load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(model, folder / f"{name}.onnx")
    return folder / f"{name}.onnx"


def _symbolic_model(path: Path, **spec_dims: int) -> Path:
    """A toy graph with symbolic latent and voxel dimensions and a spec claiming ``spec_dims``."""
    model = make_model(latent_dim=4, n_voxels=24)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "L"
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "V"
    embed_spec(model, make_spec(**{"latent_dim": 4, "n_voxels": 24, **spec_dims}))
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The bad (and a few good) input files of the corpus, made once."""
    d = tmp_path_factory.mktemp("hostile-inputs")
    make_decoder(d / "toy.onnx", latent_dim=4, n_voxels=24)
    (d / "typo.csv").write_text("5e4x\n1000\n2000\n")
    (d / "typo-later.csv").write_text("energy\n1000\n20O0\n")
    (d / "spaces.txt").write_text("1000 2000\n3000 4000\n")
    (d / "ragged.csv").write_text("1000,2000\n3000\n")
    (d / "empty.csv").write_text("")
    (d / "header-only.csv").write_text("incident_energy\n")
    (d / "binary.csv").write_bytes(b"\xff\xfe\x00\x01" * 8)
    (d / "zero.npy").write_bytes(b"")
    (d / "garbage.npy").write_bytes(b"not an npy file at all")
    np.save(d / "strings.npy", np.array(["1000", "2000"]))
    np.save(d / "bools.npy", np.array([True, False]))
    np.save(d / "three-d.npy", np.ones((2, 2, 2)) * 5e4)
    np.save(d / "huge.npy", np.array([5e4, 1e300]))
    np.save(d / "tiny.npy", np.array([5e4, 1e-300]))
    with h5py.File(d / "group.h5", "w") as fh:
        fh.create_group("incident_energies").create_dataset("x", data=[1.0])
    with h5py.File(d / "compound.h5", "w") as fh:
        fh["incident_energies"] = np.array([(1.0, 2)], dtype=[("e", "f8"), ("k", "i4")])
    with h5py.File(d / "text.h5", "w") as fh:
        fh["incident_energies"] = np.array([b"abc", b"def"])
    with h5py.File(d / "no-energies.h5", "w") as fh:
        fh["showers"] = np.zeros((2, 3))
    (d / "not-h5.h5").write_text("plain text")
    (d / "secret.bin").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 64)
    _with_external_data(d / "abs", "abs", str(d / "secret.bin"))
    _with_external_data(d / "dotdot", "dotdot", "../secret.bin")
    link_model = _with_external_data(d / "link", "link", "link.bin")
    (link_model.parent / "link.bin").unlink()
    (link_model.parent / "link.bin").symlink_to(d / "secret.bin")
    _with_external_data(d / "missing", "missing", "nowhere.bin")
    _symbolic_model(d / "wide-latent.onnx", latent_dim=2_000_000_000)
    _symbolic_model(d / "wide-output.onnx", n_voxels=2**33)
    (d / "bad-spec.json").write_text("{not json")
    (d / "dangling.h5").symlink_to(d / "nowhere" / "x.h5")
    (d / "lockdir.h5.lock").mkdir()
    (d / "bad.xml").write_text("<Bins><Bin")
    (d / "alpha.xml").write_text('<Bins><Bin name="e"><Layer id="0" r_edges="0,1" n_bin_alpha="x"/></Bin></Bins>')
    (d / "edges.xml").write_text('<Bins><Bin name="e"><Layer id="0" r_edges="5,1" n_bin_alpha="1"/></Bin></Bins>')
    with h5py.File(d / "showers.h5", "w") as fh:
        fh["incident_energies"] = np.full((10, 1), 5e4, dtype=np.float32)
        fh["showers"] = np.zeros((10, 24), dtype=np.float32)
    return d


TOY = ["--model", "{in}/toy.onnx"]
LONG = "x" * 240
# (arguments, text the one-line message must contain). {in}: the inputs folder.
CORPUS = {
    # -n and sizes
    "n zero": (["generate", "-n", "0", "-o", "o.h5", *TOY], "-n"),
    "n negative": (["generate", "-n", "-5", "-o", "o.h5", *TOY], "-n"),
    "n text": (["generate", "-n", "many", "-o", "o.h5", *TOY], "-n"),
    "n beyond int64": (["generate", "-n", "9223372036854775808", "-o", "o.h5", *TOY], "n:"),
    "n int64 max": (["generate", "-n", "9223372036854775807", "-o", "o.h5", *TOY], "n:"),
    "n int64 max compressed": (["generate", "-n", "9223372036854775807", "-o", "o.h5", "--compression", "gzip",
                                *TOY], "n:"),
    "n larger than the disk": (["generate", "-n", "1000000000000000", "-o", "o.h5", *TOY], "free"),
    "n larger than the disk, npy": (["generate", "-n", "1000000000000000", "-o", "o.npy", *TOY], "free"),
    "batch larger than memory": (["generate", "-n", "10", "--batch-size", "100000000000", "-o", "o.h5", *TOY],
                                 "batch_size"),
    "batch zero": (["generate", "-n", "10", "--batch-size", "0", "-o", "o.h5", *TOY], "--batch-size"),
    "spec latent_dim 2e9, symbolic graph": (["generate", "-n", "10", "-o", "o.h5", "--model", "{in}/wide-latent.onnx"],
                                            "latent"),
    "spec n_voxels 2^33, symbolic graph": (["generate", "-n", "10", "-o", "o.h5", "--model", "{in}/wide-output.onnx"],
                                           "voxels"),
    # energies
    "energy 1e300 extrapolated": (["generate", "-n", "5", "--energy", "1e300", "--allow-extrapolation", "-o", "o.h5",
                                   *TOY], "float32"),
    "energy 3.5e38 extrapolated": (["generate", "-n", "5", "--energy", "3.5e38", "--allow-extrapolation", "-o",
                                    "o.h5", *TOY], "float32"),
    "energy 1e-46 extrapolated": (["generate", "-n", "5", "--energy", "1e-46", "--allow-extrapolation", "-o", "o.h5",
                                   *TOY], "float32"),
    "energy range to 1e39": (["generate", "-n", "5", "--energy", "1GeV:1e39", "--allow-extrapolation", "-o", "o.h5",
                              *TOY], "float32"),
    "energy file with 1e300": (["generate", "--energy", "{in}/huge.npy", "--allow-extrapolation", "-o", "o.h5",
                                *TOY], "float32"),
    "energy file with 1e-300": (["generate", "--energy", "{in}/tiny.npy", "--allow-extrapolation", "-o", "o.h5",
                                 *TOY], "float32"),
    "energy negative": (["generate", "-n", "5", "--energy", "-5GeV", "-o", "o.h5", *TOY], "energ"),
    "energy nan": (["generate", "-n", "5", "--energy", "nan", "-o", "o.h5", *TOY], "energ"),
    "energy inf": (["generate", "-n", "5", "--energy", "inf", "-o", "o.h5", *TOY], "energ"),
    "energy unit": (["generate", "-n", "5", "--energy", "5XeV", "-o", "o.h5", *TOY], "energ"),
    "energy three-part range": (["generate", "-n", "5", "--energy", "1GeV:2GeV:3GeV", "-o", "o.h5", *TOY], "energ"),
    "energy reversed range": (["generate", "-n", "5", "--energy", "2TeV:1GeV", "--allow-extrapolation", "-o",
                               "o.h5", *TOY], "lo < hi"),
    "energy outside training": (["generate", "-n", "5", "--energy", "5TeV", "-o", "o.h5", *TOY],
                                "--allow-extrapolation"),
    "energy empty": (["generate", "-n", "5", "--energy", "", "-o", "o.h5", *TOY], "energ"),
    # energy files
    "csv typo in first row": (["generate", "--energy", "{in}/typo.csv", "-o", "o.h5", *TOY], "line 1"),
    "csv typo after header": (["generate", "--energy", "{in}/typo-later.csv", "-o", "o.h5", *TOY], "line 3"),
    "whitespace file, 2 columns": (["generate", "--energy", "{in}/spaces.txt", "-o", "o.h5", *TOY], "2 columns"),
    "csv ragged": (["generate", "--energy", "{in}/ragged.csv", "-o", "o.h5", *TOY], "line 2"),
    "csv empty": (["generate", "--energy", "{in}/empty.csv", "-o", "o.h5", *TOY], "no values"),
    "csv header only": (["generate", "--energy", "{in}/header-only.csv", "-o", "o.h5", *TOY], "no values"),
    "csv binary": (["generate", "--energy", "{in}/binary.csv", "-o", "o.h5", *TOY], "energ"),
    "npy 0 bytes": (["generate", "--energy", "{in}/zero.npy", "-o", "o.h5", *TOY], "empty"),
    "npy garbage": (["generate", "--energy", "{in}/garbage.npy", "-o", "o.h5", *TOY], "cannot read"),
    "npy strings": (["generate", "--energy", "{in}/strings.npy", "-o", "o.h5", *TOY], "expected numbers"),
    "npy bools": (["generate", "--energy", "{in}/bools.npy", "-o", "o.h5", *TOY], "expected numbers"),
    "npy 3-d": (["generate", "--energy", "{in}/three-d.npy", "-o", "o.h5", *TOY], "shape"),
    "npy missing": (["generate", "--energy", "{in}/nothing.npy", "-o", "o.h5", *TOY], "does not exist"),
    "h5 energies a group": (["generate", "--energy", "{in}/group.h5", "-o", "o.h5", *TOY], "group"),
    "h5 energies compound": (["generate", "--energy", "{in}/compound.h5", "-o", "o.h5", *TOY], "expected numbers"),
    "h5 energies text": (["generate", "--energy", "{in}/text.h5", "-o", "o.h5", *TOY], "expected numbers"),
    "h5 without energies": (["generate", "--energy", "{in}/no-energies.h5", "-o", "o.h5", *TOY], "incident_energies"),
    "h5 not hdf5": (["generate", "--energy", "{in}/not-h5.h5", "-o", "o.h5", *TOY], "cannot read"),
    # output
    "output name too long with its suffix": (["generate", "-n", "5", "-o", LONG + ".h5", *TOY], "too long"),
    "output name too long alone": (["generate", "-n", "5", "-o", "y" * 300 + ".h5", *TOY], "too long"),
    "output npy companion too long": (["generate", "-n", "5", "-o", "z" * 220 + ".npy", *TOY], "too long"),
    "output folder missing": (["generate", "-n", "5", "-o", "nowhere/o.h5", *TOY], "does not exist"),
    "output folder too long": (["generate", "-n", "5", "-o", "d" * 300 + "/o.h5", *TOY], "output"),
    "output suffix": (["generate", "-n", "5", "-o", "o.txt", *TOY], "format"),
    "output is a folder": (["generate", "-n", "5", "-o", ".", "--format", "h5", *TOY], "folder"),
    "compression level": (["generate", "-n", "5", "-o", "o.h5", "--compression", "gzip:11", *TOY], "compression"),
    "compression unknown": (["generate", "-n", "5", "-o", "o.h5", "--compression", "zstd", *TOY], "compression"),
    "compression lzf npz": (["generate", "-n", "5", "-o", "o.npz", "--compression", "lzf", *TOY], "compression"),
    "compression npy": (["generate", "-n", "5", "-o", "o.npy", "--compression", "gzip", *TOY], "compression"),
    "output a dangling symlink": (["generate", "-n", "5", "-o", "{in}/dangling.h5", *TOY], "already exists"),
    "output lock path a folder": (["generate", "-n", "5", "-o", "{in}/lockdir.h5", *TOY], "lock file"),
    "output in /proc": (["generate", "-n", "5", "-o", "/proc/fastsim-test.h5", *TOY], "output"),
    "resume nothing": (["generate", "-n", "5", "-o", "o.h5", "--resume", *TOY], "resume"),
    "resume and force": (["generate", "-n", "5", "-o", "o.h5", "--resume", "--force", *TOY], "--resume"),
    "resume npz": (["generate", "-n", "5", "-o", "o.npz", "--resume", *TOY], "resume"),
    # other options
    "seed negative": (["generate", "-n", "5", "-o", "o.h5", "--seed", "-1", *TOY], "--seed"),
    "seed 2^63": (["generate", "-n", "5", "-o", "o.h5", "--seed", str(2**63), *TOY], "--seed"),
    "threads absurd": (["generate", "-n", "5", "-o", "o.h5", "--threads", "99999999999999999999", *TOY], "--threads"),
    "threads zero": (["generate", "-n", "5", "-o", "o.h5", "--threads", "0", *TOY], "--threads"),
    "device unknown": (["generate", "-n", "5", "-o", "o.h5", "--device", "tpu", *TOY], "--device"),
    "format unknown": (["generate", "-n", "5", "-o", "o.h5", "--format", "csv", *TOY], "--format"),
    "dashboard without dask": (["generate", "-n", "5", "-o", "o.h5", "--dashboard", ":8787", *TOY], "--dashboard"),
    # models
    "model missing": (["generate", "-n", "5", "-o", "o.h5", "--model", "{in}/none.onnx"], "model"),
    "model unknown name": (["generate", "-n", "5", "-o", "o.h5", "--model", "no-such-model"], "model"),
    "model not onnx": (["generate", "-n", "5", "-o", "o.h5", "--model", "{in}/typo.csv"], "model"),
    "model external data absolute": (["generate", "-n", "5", "-o", "o.h5", "--model", "{in}/abs/abs.onnx"],
                                     "external data"),
    "model external data ..": (["generate", "-n", "5", "-o", "o.h5", "--model", "{in}/dotdot/dotdot.onnx"],
                               "external data"),
    "model external data symlink": (["generate", "-n", "5", "-o", "o.h5", "--model", "{in}/link/link.onnx"],
                                    "external data"),
    "model external data missing": (["generate", "-n", "5", "-o", "o.h5", "--model", "{in}/missing/missing.onnx"],
                                    "external data"),
    "info external data ..": (["info", "{in}/dotdot/dotdot.onnx"], "external data"),
    "spec missing": (["generate", "-n", "5", "-o", "o.h5", *TOY, "--spec", "{in}/none.json"], "spec"),
    "spec not json": (["generate", "-n", "5", "-o", "o.h5", *TOY, "--spec", "{in}/bad-spec.json"], "spec"),
    # shards and Dask
    "shards zero": (["generate", "-n", "5", "-o", "out", "--shards", "0", *TOY], "--shards"),
    "shards, n int64 max": (["generate", "-n", "9223372036854775807", "-o", "out", "--shards", "2", *TOY], "n:"),
    "shards, n larger than the disk": (["generate", "-n", "1000000000000000", "-o", "out", "--shards", "2", *TOY],
                                       "free"),
    "shards, batch larger than memory": (["generate", "-n", "10", "--batch-size", "100000000000", "-o", "out",
                                          "--shards", "1", *TOY], "batch_size"),
    "shards, more than blocks": (["generate", "-n", "10", "-o", "out", "--shards", "3", *TOY], "shards"),
    "dask local, a process per shower": (["generate", "-n", "10", "-o", "out", "--dask", "local:99999", *TOY],
                                         "at most"),
    "dask local zero": (["generate", "-n", "10", "-o", "out", "--dask", "local:0", *TOY], "dask"),
    "shards npz": (["generate", "-n", "10", "-o", "out", "--shards", "1", "--format", "npz", *TOY], "--format"),
    # binning files and validation inputs
    "binning missing": (["validate", "{in}/showers.h5", "{in}/showers.h5", "--geometry", "{in}/none.xml",
                         "-o", "report"], "none.xml"),
    "binning malformed": (["validate", "{in}/showers.h5", "{in}/showers.h5", "--geometry", "{in}/bad.xml",
                           "-o", "report"], "bad.xml"),
    "binning alpha not a number": (["validate", "{in}/showers.h5", "{in}/showers.h5", "--geometry",
                                    "{in}/alpha.xml", "-o", "report"], "n_bin_alpha"),
    "binning edges decreasing": (["validate", "{in}/showers.h5", "{in}/showers.h5", "--geometry",
                                  "{in}/edges.xml", "-o", "report"], "r_edges"),
    "validate missing file": (["validate", "{in}/none.h5", "{in}/showers.h5", "-o", "report"], "none.h5"),
    "validate not hdf5": (["validate", "{in}/not-h5.h5", "{in}/showers.h5", "-o", "report"], "not-h5.h5"),
    "validate metric group": (["validate", "{in}/showers.h5", "{in}/showers.h5", "--metrics", "vibes",
                               "-o", "report"], "vibes"),
}


@pytest.mark.parametrize("args, expected", CORPUS.values(), ids=CORPUS.keys())
def test_bad_input_is_one_clean_line_and_leaves_nothing(run_fastsim, inputs, tmp_path, args, expected):
    before = _files(inputs)
    result = run_fastsim(*(a.replace("{in}", str(inputs)) for a in args), cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("fastsim: error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no output, partial, lock, folder or manifest
    assert _files(inputs) == before


# ---------------------------------------------------------------------------- item 1: two writers


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fastsim.cli", *map(str, args)], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_writer_of_the_same_output_is_refused_while_the_first_writes(toy_model, tmp_path):
    out = tmp_path / "x.h5"
    args = ["generate", "-n", 400_000, "--model", toy_model, "--seed", 3, "--threads", 1, "-o", out]
    first = _start([*args, "--force"], tmp_path)
    try:
        deadline = time.monotonic() + 60
        while find_partial(out) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)  # held mid-write, with its partial file and lock
        assert first.poll() is None and find_partial(out) is not None, "the first run ended before it could be held"
        second = subprocess.run([sys.executable, "-m", "fastsim.cli", *map(str, args), "--force"], cwd=tmp_path,
                                env=cli_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another fastsim run (pid {first.pid}) is writing" in lines[0], second.stderr
        resume = subprocess.run([sys.executable, "-m", "fastsim.cli", *map(str, args), "--resume"], cwd=tmp_path,
                                env=cli_env(), capture_output=True, text=True, timeout=120)
        assert resume.returncode == 2 and "another fastsim run" in resume.stderr, resume.stderr
        assert not out.exists()
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert err.strip().startswith("wrote 400000 showers")
    energies, showers = read_output(out)
    expected = fastsim.load(toy_model, device="cpu", threads=1).generate(400_000, seed=3)
    assert np.array_equal(energies, expected[0]) and np.array_equal(showers, expected[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]  # no partial, no lock file


def test_every_attempt_writes_its_own_partial_file_and_resume_finds_it(toy_model, tmp_path):
    out = tmp_path / "x.h5"
    gen = fastsim.load(toy_model, device="cpu", threads=1)
    writer = ShowerWriter(out, n=2048, n_voxels=24)
    conditions, showers = gen.generate(2048, seed=1)
    writer.write(conditions[:1024], showers[:1024])
    first_partial = writer.partial
    assert first_partial.name.startswith("x.h5.") and first_partial.name.endswith(".partial")
    with pytest.raises(OutputError, match="another fastsim run .* is writing"):
        ShowerWriter(out, n=2048, n_voxels=24, force=True)
    writer.abort()  # keeps the rows for resuming, releases the lock
    assert find_partial(out) == first_partial and partial_progress(out) == 1024
    assert not out.with_name("x.h5.lock").exists()
    again = ShowerWriter(out, n=2048, n_voxels=24, resume=True)
    assert again.partial == first_partial and again.done == 1024
    again.write(conditions[1024:], showers[1024:])
    assert again.close() == out
    assert np.array_equal(read_output(out)[1], showers)
    fresh = ShowerWriter(out, n=16, n_voxels=24, force=True)
    assert fresh.partial != first_partial  # a new attempt, a new name
    fresh.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]


# ---------------------------------------------------------------------------- item 2: full disks

# Fault injection: the writer's own descriptor is pointed at /dev/full, so the next write gets
# the ENOSPC of a disk that filled up between the free-space check and the write.
_DISK_FULL_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    from fastsim.errors import OutputError
    from fastsim.io import ShowerWriter
    path, fmt, compression = sys.argv[1], sys.argv[2], sys.argv[3] or None
    rows = np.random.default_rng(0).random((1024, 4096), dtype=np.float32)
    energies = np.full((1024, 1), 5e4, dtype=np.float32)
    writer = ShowerWriter(path, n=4096, n_voxels=4096, fmt=fmt, compression=compression)
    writer.write(energies, rows)
    if fmt == "npz":
        fds = [writer._zip.fp.fileno()]
    elif writer._raw is not None:
        fds = [fd for fd in (writer._raw, writer._direct) if fd is not None]
    else:
        fds = [writer._file.id.get_vfd_handle()]
    full = os.open("/dev/full", os.O_RDWR)
    for fd in fds:
        os.dup2(full, fd)
    try:
        with writer:
            for _ in range(3):
                writer.write(energies, rows)
    except OutputError as exc:
        print(exc)
""")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("fmt, compression, kept", [("h5", "gzip", False), ("h5", "lzf", False), ("npz", "gzip", False),
                                                     ("h5", "", True)])
def test_a_disk_that_fills_up_gives_one_message_and_no_crash(tmp_path, fmt, compression, kept):
    out = tmp_path / f"x.{fmt}"
    result = subprocess.run([sys.executable, "-c", _DISK_FULL_SCRIPT, out, fmt, compression], cwd=tmp_path,
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    # Before: SIGSEGV from HDF5 at exit (h5, compressed), or a ZipFile.__del__ traceback (npz).
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    message = result.stdout.strip()
    assert "No space left on device" in message
    partial = find_partial(out)
    if kept:
        assert "the 1024 showers written so far are kept in" in message and "--resume" in message
        assert partial is not None and str(partial) in message and partial_progress(out) == 1024
    else:
        assert "is removed" in message and partial is None
    assert not out.exists() and not out.with_name(out.name + ".lock").exists()


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.fixture()
def small_disk(tmp_path):
    """A 20 MB tmpfs (needs root and permission to mount; skipped otherwise)."""
    folder = tmp_path / "small"
    if not _mount_tmpfs(folder, "20m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("output, options", [("x.h5", ["--compression", "gzip"]), ("x.npz", ["--compression", "gzip"]),
                                             ("x.h5", []), ("x.npy", [])])
def test_generating_onto_a_full_tmpfs_is_one_clean_error(run_fastsim, small_disk, output, options):
    # The command: the bundled model, 10,000 showers of 6480 voxels onto 20 MB.
    result = run_fastsim("generate", "-n", 10_000, "--energy", "50GeV", "-o", small_disk / output, *options)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastsim: error: output:"), result.stderr
    assert "free" in lines[0] or "No space left on device" in lines[0]
    assert list(small_disk.iterdir()) == []


def test_a_disk_that_fills_mid_run_keeps_the_partial_file_and_resume_finishes_it(run_fastsim, tmp_path):
    folder = tmp_path / "small"
    if not _mount_tmpfs(folder, "30m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = folder / "x.h5"
        common = ["-n", 10_000, "--energy", "50GeV", "-o", out, "--compression", "gzip", "--batch-size", 1024]
        full = run_fastsim("generate", *common)
        assert full.returncode == 2, full.stderr
        lines = full.stderr.strip().splitlines()
        partial = find_partial(out)
        assert len(lines) == 1 and partial is not None, full.stderr
        done = partial_progress(out)
        assert 1024 <= done < 10_000 and done % 1024 == 0
        assert f"the {done} showers written so far are kept in {str(partial)!r}" in lines[0]
        assert "--resume" in lines[0] and not out.exists()
        subprocess.run(["mount", "-o", "remount,size=200m", str(folder)], check=True)  # make room
        resumed = run_fastsim("generate", *common, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert f"(resumed after {done})" in resumed.stderr
        energies, showers = read_output(out)
        assert showers.shape == (10_000, 6480) and np.all(energies == 50_000.0)
        assert sorted(p.name for p in folder.iterdir()) == ["x.h5"]
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# ---------------------------------------------------------------------------- item 3: external data


def test_external_data_inside_the_folder_works_and_counts_in_the_checksum(tmp_path):
    model = _with_external_data(tmp_path / "m", "ok", "ok.bin")
    gen = fastsim.load(model, device="cpu", threads=1)
    plain = fastsim.load(make_decoder(tmp_path / "plain.onnx", latent_dim=4, n_voxels=24), device="cpu", threads=1)
    assert np.array_equal(gen.generate(64, seed=2)[1], plain.generate(64, seed=2)[1])
    before = gen.sha256
    assert before == model_sha256(model) != file_sha256(model)
    data = model.with_name("ok.bin")
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 1
    data.write_bytes(bytes(blob))
    assert model_sha256(model) != before  # the same .onnx file with other weights is another model


def test_onnx_runtime_itself_refuses_external_data_outside_the_folder(inputs):
    # pyproject requires an onnxruntime that does (>= 1.24.3); fastsim checks first regardless.
    import onnxruntime as ort

    for name in ("dotdot", "abs"):
        with pytest.raises(Exception, match="(?i)external data"):
            ort.InferenceSession(str(inputs / name / f"{name}.onnx"))
        with pytest.raises(ModelError, match="external data location"):
            fastsim.load(inputs / name / f"{name}.onnx", device="cpu")


# ---------------------------------------------------------------------------- items 4, 5, 7: values and files


@pytest.mark.parametrize("energy", [1e300, 3.5e38, -3.5e38, 1e-46, 1e-39, "1GeV:1e39"])
def test_conditions_float32_cannot_hold_are_refused_even_when_extrapolating(toy_model, energy):
    gen = fastsim.load(toy_model, device="cpu", threads=1)
    with pytest.raises(ConditionError, match="float32"):
        gen.plan(4, energy, allow_extrapolation=True)
    with pytest.warns(fastsim.FastsimWarning):  # large but representable: extrapolated, as before
        assert gen.plan(4, 1e30, allow_extrapolation=True).n == 4


def test_energy_files_read_what_they_say(toy_model, tmp_path):
    gen = fastsim.load(toy_model, device="cpu", threads=1)
    cases = {
        "header.csv": ("incident_energy\n1000\n2000\n", [1000, 2000]),
        "quoted.csv": ('"E [MeV]"\n1e3\n# a comment\n\n2e3\n', [1000, 2000]),
        "spaces.txt": ("1000\n  2000 \n3000\n", [1000, 2000, 3000]),
        "tabs.txt": ("1000\t\n2000\n", [1000, 2000]),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        plan = gen.plan(None, str(tmp_path / name))
        assert plan.n == len(expected)
        assert np.array_equal(plan.sources[0].array, np.array(expected, dtype=np.float64)), name
    (tmp_path / "row.txt").write_text("1000 2000 3000\n")
    with pytest.raises(ConditionError, match="3 columns"):
        gen.plan(None, str(tmp_path / "row.txt"))


# ---------------------------------------------------------------------------- item 6: sizes, no manifest


def test_a_sharded_run_refused_at_the_start_leaves_no_folder_or_manifest(toy_model, tmp_path):
    out = tmp_path / "out"
    for n in (2**63 - 1, 10**15):
        with pytest.raises(fastsim.FastsimError):
            fastsim.distributed.generate(toy_model, n, out, shards=2, device="cpu")
        assert not out.exists()
    out.mkdir()  # an existing, empty folder stays empty
    with pytest.raises(fastsim.FastsimError, match="batch_size"):
        fastsim.distributed.generate(toy_model, 10, out, shards=1, batch_size=10**11, device="cpu")
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------- item 8: local Dask, no dashboard


@pytest.mark.slow
def test_a_local_cluster_starts_no_dashboard_and_prints_no_port_warning(run_fastsim, toy_model, tmp_path):
    pytest.importorskip("distributed")
    holder = socket.socket()
    with contextlib.suppress(OSError):  # if 8787 is taken already, it is taken: the point of the test
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", 8787))
        holder.listen()
    try:
        result = run_fastsim("generate", "-n", 100, "--model", toy_model, "--shards", 1, "--dask", "local:1",
                             "-o", tmp_path / "out")
    finally:
        holder.close()
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrote 100 showers in 1 shards"), result.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["complete"] is True
