"""Distributed generation: shards on a real Dask LocalCluster of processes, manifest, resume, reading back.

No warning filter is needed: the cluster runs without a dashboard (no port
warnings), and with dask/distributed 2026.8 nothing here warns, so any new
warning from Dask fails these tests under ``filterwarnings = error`` and gets
looked at.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import fastsim
from fastsim import distributed
from fastsim.prior import BLOCK_SIZE
from helpers import cli_env
from helpers.decoders import make_decoder

distributed_lib = pytest.importorskip("distributed")


SEED = 11
#: 7 full random-stream blocks and a partial one, so that 7 shards are possible and uneven.
N = 7 * BLOCK_SIZE + 300
#: 2 layers x 3 alpha x 4 radial = 24 voxels: a real geometry, so `fastsim validate` reads the shards.
TOY_GEOMETRY = {"kind": "cylindrical", "layer_thickness_mm": 3.4,
                "layers": [{"r_edges": [0.0, 5.0, 10.0, 20.0, 40.0], "n_alpha": 3}] * 2}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_decoder(tmp_path_factory.mktemp("dist-models") / "toy.onnx", latent_dim=4, n_voxels=24,
                        hidden=16, geometry=TOY_GEOMETRY)


@pytest.fixture(scope="module")
def cluster_client():
    """A real LocalCluster: 2 worker processes, one thread each (the machine has 2 cores)."""
    with distributed_lib.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, distributed_lib.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def energies_file(tmp_path_factory) -> Path:
    """Per-shower incident energies (MeV), as an analyst would bring them."""
    path = tmp_path_factory.mktemp("dist-energies") / "energies.npy"
    np.save(path, np.geomspace(2_000.0, 900_000.0, N))
    return path


@pytest.fixture(scope="module")
def reference(model, energies_file):
    """The unsharded run: Generator.generate with the same seed, for both kinds of conditions."""
    gen = fastsim.load(model, device="cpu", threads=1)
    return {"sampled": gen.generate(N, seed=SEED), "per-shower": gen.generate(N, energies_file, seed=SEED)}


def _conditions(kind: str, energies_file: Path):
    return None if kind == "sampled" else str(energies_file)


def _read_all(out: Path) -> tuple[np.ndarray, np.ndarray]:
    with fastsim.open_dataset(out) as data:
        return data.read()


# ----------------------------------------------------------------------------- planning


@pytest.mark.parametrize("n, shards", [(1, 1), (BLOCK_SIZE, 1), (N, 1), (N, 3), (N, 7), (N, 8),
                                       (100 * BLOCK_SIZE + 5, 7)])
def test_plan_shards_covers_the_run_on_block_boundaries(n, shards):
    ranges = distributed.plan_shards(n, shards)
    assert len(ranges) == shards
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a < b for a, b in ranges)
    assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))  # contiguous, in order
    assert all(a % BLOCK_SIZE == 0 for a, _ in ranges)
    blocks = [-(-(b - a) // BLOCK_SIZE) for a, b in ranges]
    assert max(blocks) - min(blocks) <= 1  # balanced


@pytest.mark.parametrize("n, shards, expected", [(N, 9, "at most 8"), (N, 0, "positive number of shards"),
                                                 (0, 1, "positive number of samples")])
def test_plan_shards_rejects_impossible_layouts(n, shards, expected):
    with pytest.raises(fastsim.ArgumentError, match=expected):
        distributed.plan_shards(n, shards)


# ----------------------------------------------------------------------------- bitwise reproducibility


@pytest.mark.slow  # a Dask LocalCluster of worker processes
@pytest.mark.parametrize("kind", ["sampled", "per-shower"])
@pytest.mark.parametrize("shards", [1, 3, 7])
def test_sharded_run_on_cluster_is_bitwise_the_unsharded_run(model, cluster_client, reference, energies_file,
                                                             tmp_path, shards, kind):
    records = []
    summary = distributed.generate(model, N, tmp_path / "out", _conditions(kind, energies_file), seed=SEED,
                                   shards=shards, client=cluster_client, device="cpu", on_shard=records.append)
    assert summary["generated"] == list(range(shards)) and summary["skipped"] == []
    assert summary["workers"] == 2

    conditions, showers = reference[kind]
    energies, read_showers = _read_all(tmp_path / "out")
    assert read_showers.dtype == np.float32
    np.testing.assert_array_equal(read_showers, showers)
    np.testing.assert_array_equal(energies, conditions[:, :1].astype(np.float64))

    manifest = distributed.read_manifest(tmp_path / "out")
    assert manifest["complete"] and manifest["seed"] == SEED and manifest["n"] == N
    assert manifest["model_sha256"] == fastsim.load(model, device="cpu").sha256
    for entry, (start, stop) in zip(manifest["shards"], distributed.plan_shards(N, shards)):
        path = tmp_path / "out" / entry["file"]
        assert (entry["start"], entry["stop"], entry["status"]) == (start, stop, "done")
        # Each shard file is exactly the unsharded run's rows start:stop, and its checksum is right.
        with h5py.File(path, "r") as fh:
            np.testing.assert_array_equal(fh["showers"][...], showers[start:stop])
            assert fh.attrs["fastsim.start"] == start and fh.attrs["fastsim.seed"] == SEED
        assert distributed.shard_checksums(path) == entry["checksums"]
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".partial")]

    # Each worker process loads the model once, however many shards it runs.
    assert all(r["model_loads"] == 1 for r in records)
    if shards == 7:
        per_worker = {}
        for r in records:
            per_worker[r["pid"]] = per_worker.get(r["pid"], 0) + 1
        assert max(per_worker.values()) >= 2


def test_sharded_run_in_process_equals_unsharded_file(model, reference, tmp_path):
    """Without a client (no Dask needed) the shards are made here; they match Generator.write's file."""
    gen = fastsim.load(model, device="cpu", threads=1)
    gen.write(tmp_path / "whole.h5", N, seed=SEED)
    summary = distributed.generate(model, N, tmp_path / "out", seed=SEED, shards=3, device="cpu")
    assert summary["workers"] == 1 and summary["generated"] == [0, 1, 2]
    energies, showers = _read_all(tmp_path / "out")
    with h5py.File(tmp_path / "whole.h5", "r") as fh:
        np.testing.assert_array_equal(showers, fh["showers"][...])
        np.testing.assert_array_equal(energies, fh["incident_energies"][:, :1].astype(np.float64))


# ----------------------------------------------------------------------------- reading back


def test_open_dataset_streams_across_shard_boundaries(model, reference, tmp_path):
    distributed.generate(model, N, tmp_path / "out", seed=SEED, shards=7, device="cpu")
    conditions, showers = reference["sampled"]
    with fastsim.open_dataset(tmp_path / "out") as data:
        assert isinstance(data, distributed.ShardedDataset)
        assert (len(data), data.n, data.n_voxels, data.n_shards) == (N, N, 24, 7)
        np.testing.assert_array_equal(data.incident_energies, conditions[:, :1].astype(np.float64))
        # Chunks of 1000 rows straddle the shard boundaries (2048, 3072, ...); all but the last are full.
        chunks = list(data.iter_chunks(1000, start=500, stop=N - 3))
        assert [len(s) for _, s in chunks[:-1]] == [1000] * (len(chunks) - 1)
        np.testing.assert_array_equal(np.concatenate([s for _, s in chunks]), showers[500:N - 3])
        np.testing.assert_array_equal(data.read(2000, 2100)[1], showers[2000:2100])
        lazy_energies, lazy_showers = data.to_dask()
        assert lazy_showers.shape == (N, 24)
        np.testing.assert_array_equal(lazy_showers[1020:1030].compute(), showers[1020:1030])
        np.testing.assert_array_equal(lazy_energies.compute(), conditions[:, :1])
    # A single file opens as a plain shower file.
    first = tmp_path / "out" / "shard-00000.h5"
    with fastsim.open_dataset(first) as single:
        assert single.n == 2 * BLOCK_SIZE  # 8 blocks in 7 shards: the first has two


def test_open_dataset_refuses_an_incomplete_run(model, tmp_path):
    distributed.generate(model, N, tmp_path / "out", seed=SEED, shards=3, device="cpu")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    manifest["shards"][1]["status"] = "pending"
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(fastsim.DataError, match=r"incomplete: 1 of 3 shards are not done \(1\)"):
        fastsim.open_dataset(tmp_path / "out")
    manifest["shards"][1]["status"] = "done"
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "out" / "shard-00002.h5").unlink()
    with pytest.raises(fastsim.DataError, match="shard files missing: shard-00002.h5"):
        fastsim.open_dataset(tmp_path / "out")


def test_validate_accepts_a_folder_of_shards(model, tmp_path, run_fastsim):
    fastsim.load(model, device="cpu").write(tmp_path / "whole.h5", N, seed=SEED)
    distributed.generate(model, N, tmp_path / "out", seed=SEED, shards=3, device="cpu")
    result = run_fastsim("validate", tmp_path / "out", tmp_path / "whole.h5", "--metrics", "separation",
                         "--no-plots", "--json", "-o", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    separation = {k: v["value"] for k, v in metrics.items() if k.startswith("separation_power")}
    assert separation and all(value == 0.0 for value in separation.values())  # identical showers


# ----------------------------------------------------------------------------- resume


def test_rerun_skips_verified_shards_and_redoes_missing_or_corrupt_ones(model, reference, tmp_path):
    out = tmp_path / "out"
    distributed.generate(model, N, out, seed=SEED, shards=4, device="cpu")
    (out / "shard-00001.h5").unlink()
    with h5py.File(out / "shard-00002.h5", "r+") as fh:
        fh["showers"][5, 3] += 1.0  # silent corruption: only the checksum sees it
    untouched = (out / "shard-00000.h5").stat().st_mtime_ns, (out / "shard-00003.h5").stat().st_mtime_ns

    summary = distributed.generate(model, N, out, seed=SEED, device="cpu")  # shards from the manifest
    assert summary["generated"] == [1, 2] and summary["skipped"] == [0, 3]
    assert ((out / "shard-00000.h5").stat().st_mtime_ns, (out / "shard-00003.h5").stat().st_mtime_ns) == untouched
    np.testing.assert_array_equal(_read_all(out)[1], reference["sampled"][1])


@pytest.mark.slow  # a Dask LocalCluster of worker processes
def test_killed_worker_is_replaced_and_the_data_are_identical(model, cluster_client, reference, tmp_path):
    """A worker process dies (os._exit) as it starts shard 2: Dask reruns the shard elsewhere."""
    marker = tmp_path / "killed-once"
    pids_before = set(cluster_client.run(os.getpid).values())
    cluster_client.register_plugin(ExitOnceOnShard(2, str(marker)), name="exit-once")
    try:
        summary = distributed.generate(model, N, tmp_path / "out", seed=SEED, shards=7,
                                       client=cluster_client, device="cpu")
    finally:
        cluster_client.unregister_worker_plugin("exit-once")
    assert marker.read_text() in {str(p) for p in pids_before}  # a real worker died mid-run ...
    assert summary["generated"] == list(range(7))  # ... and the run completed
    np.testing.assert_array_equal(_read_all(tmp_path / "out")[1], reference["sampled"][1])
    cluster_client.wait_for_workers(2, timeout=60)
    assert set(cluster_client.run(os.getpid).values()) != pids_before  # the nanny restarted it


class ExitOnceOnShard(distributed_lib.WorkerPlugin):
    """Kills the worker process the first time any worker starts executing shard ``index``."""

    def __init__(self, index: int, marker: str):
        self.prefix, self.marker = f"fastsim-shard-{index:05d}-", marker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith(self.prefix):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(1)


def _wait_for_manifest(path: Path, process: subprocess.Popen, done_at_least: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            manifest = None
        if manifest and sum(s["status"] == "done" for s in manifest["shards"]) >= done_at_least:
            return manifest
        time.sleep(0.01)
    raise AssertionError(f"the run did not reach {done_at_least} shards in time (exit {process.poll()})")


@pytest.mark.slow  # a Dask LocalCluster of worker processes
def test_killed_client_then_rerun_generates_only_the_missing_shards(tmp_path, run_fastsim):
    """SIGKILL a real `fastsim generate --dask local:2` mid-run; the same command then finishes it."""
    psutil = pytest.importorskip("psutil")
    # 1024 voxels written with gzip level 9: a shard of two blocks takes a noticeable moment (~0.3 s).
    heavy = make_decoder(tmp_path / "heavy.onnx", latent_dim=8, n_voxels=1024, hidden=256, seed=3)
    n, shards, out = 32 * BLOCK_SIZE, 16, tmp_path / "out"
    args = ["generate", "-n", n, "--model", heavy, "--seed", SEED, "--shards", shards, "--dask", "local:2",
            "--compression", "gzip:9", "-o", out, "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "fastsim.cli", *map(str, args)], env=cli_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_manifest(out / "manifest.json", process, 2, timeout=60)
        children = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    # The orphaned worker processes notice that their parent is gone; never leave one behind.
    _, alive = psutil.wait_procs(children, timeout=20)
    for child in alive:
        child.kill()

    manifest = json.loads((out / "manifest.json").read_text())
    done = sorted(s["index"] for s in manifest["shards"] if s["status"] == "done")
    assert 2 <= len(done) < shards and not manifest["complete"]
    stamps = {j: (out / f"shard-{j:05d}.h5").stat().st_mtime_ns for j in done}

    result = run_fastsim(*args[:-1], "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["skipped"] == done
    assert summary["generated"] == sorted(set(range(shards)) - set(done))
    assert {j: (out / f"shard-{j:05d}.h5").stat().st_mtime_ns for j in done} == stamps
    assert distributed.read_manifest(out)["complete"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [f"shard-{j:05d}.h5" for j in range(shards)]
    expected = fastsim.load(heavy, device="cpu", threads=1).generate(n, seed=SEED)[1]
    np.testing.assert_array_equal(_read_all(out)[1], expected)
    with h5py.File(out / "shard-00000.h5", "r") as fh:
        assert fh["showers"].compression == "gzip" and fh["showers"].compression_opts == 9


# ----------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize("change, expected", [
    ({"seed": SEED + 1}, f"seed (manifest: {SEED}, now: {SEED + 1})"),
    ({"n": N - 1}, f"n (manifest: {N}, now: {N - 1})"),
    ({"shards": 2}, "shard layout (manifest: 3 shards, now: 2)"),
    ({"conditions": "50GeV"}, "conditions (manifest:"),
    ({"model": "other"}, "model sha256 (manifest:"),
])
def test_rerun_against_a_different_run_is_an_error(model, tmp_path, change, expected):
    out = tmp_path / "out"
    distributed.generate(model, N, out, seed=SEED, shards=3, device="cpu")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    args = {"model": model, "n": N, "seed": SEED, "shards": 3, "conditions": None, **change}
    if args["model"] == "other":
        args["model"] = make_decoder(tmp_path / "other.onnx", latent_dim=4, n_voxels=24, hidden=16, seed=5,
                                     geometry=TOY_GEOMETRY)
    with pytest.raises(fastsim.OutputError, match="holds another run") as info:
        distributed.generate(args["model"], args["n"], out, args["conditions"], seed=args["seed"],
                             shards=args["shards"], device="cpu")
    assert expected in str(info.value)
    if "n" in change:
        assert "shard layout" not in str(info.value)  # n explains the moved ranges
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched


def test_cli_manifest_mismatch_is_one_line_exit_2(model, tmp_path, run_fastsim):
    out = tmp_path / "out"
    distributed.generate(model, N, out, seed=SEED, shards=3, device="cpu")
    result = run_fastsim("generate", "-n", N, "--model", model, "--seed", SEED + 1, "--shards", 3, "-o", out)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "holds another run: seed (manifest: 11, now: 12)" in result.stderr


def test_unreachable_scheduler_is_a_clear_error(model, tmp_path, run_fastsim):
    with pytest.raises(distributed.ClusterError, match=r"cannot reach a Dask scheduler at 'tcp://127.0.0.1:9' "
                                                       r"within 1 s"):
        distributed.generate(model, N, tmp_path / "out", seed=SEED, shards=3, client="tcp://127.0.0.1:9",
                             timeout=1)
    assert not (tmp_path / "out").exists()
    env = cli_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s")
    result = run_fastsim("generate", "-n", N, "--model", model, "--shards", 3, "--dask", "tcp://127.0.0.1:9",
                         "-o", tmp_path / "out", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert message.startswith("fastsim: error: dask: cannot reach a Dask scheduler at 'tcp://127.0.0.1:9' within 1 s")
    assert message.endswith("check the address (tcp://HOST:PORT) and that the scheduler runs")
    assert message.count("\n") == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where, expected", [
    ("missing-parent", "parent folder '{tmp}/nowhere' does not exist"),
    ("file-parent", "parent folder '{tmp}/file.h5' is not a folder"),
    ("out-is-file", "'{tmp}/file.h5' exists and is not a folder"),
    ("not-empty", "is not empty (notes.txt) and holds no manifest.json"),
])
def test_unusable_output_folder_is_a_clear_error(model, tmp_path, run_fastsim, where, expected):
    (tmp_path / "file.h5").write_text("not a folder")
    out = {"missing-parent": tmp_path / "nowhere" / "out", "file-parent": tmp_path / "file.h5" / "out",
           "out-is-file": tmp_path / "file.h5", "not-empty": tmp_path / "used"}[where]
    if where == "not-empty":
        out.mkdir()
        (out / "notes.txt").write_text("someone else's")
    result = run_fastsim("generate", "-n", N, "--model", model, "--shards", 3, "-o", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert expected.format(tmp=tmp_path) in result.stderr
    assert (tmp_path / "file.h5").read_text() == "not a folder"


@pytest.mark.slow  # a Dask LocalCluster of worker processes
def test_shard_that_keeps_failing_stops_the_run_with_its_error(model, cluster_client, tmp_path):
    """A shard whose file cannot be written fails on every retry; the run stops and says why."""
    out = tmp_path / "out"
    distributed.generate(model, N, out, seed=SEED, shards=3, device="cpu")
    (out / "shard-00001.h5").unlink()
    (out / "shard-00001.h5").mkdir()  # something in the way that even root cannot replace
    (out / "shard-00001.h5" / "keep").write_text("x")
    with pytest.raises(fastsim.OutputError) as info:
        distributed.generate(model, N, out, seed=SEED, client=cluster_client, device="cpu", retries=1)
    assert str(info.value).startswith(f"shard 1 (showers {BLOCK_SIZE * 3}:{BLOCK_SIZE * 6}) failed after 2 "
                                      f"attempts: out: cannot write shard file '{out.resolve()}/shard-00001.h5'")
    manifest = distributed.read_manifest(out)
    assert [s["status"] for s in manifest["shards"]] == ["done", "failed", "done"]
    assert manifest["shards"][1]["error"] == str(info.value) and not manifest["complete"]
    assert not [p.name for p in out.iterdir() if "partial" in p.name or p.name.count(".") > 1]


def test_without_dask_the_option_gives_the_install_hint(model, tmp_path):
    """`import fastsim` never imports dask; --dask without it installed says how to get it."""
    code = ("import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
            "import fastsim, fastsim.cli\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed') "
            "and sys.modules[m] is not None]\n"
            f"fastsim.cli.main(['generate', '-n', '{N}', '--model', {str(model)!r}, '--dask', 'local:2', "
            f"'-o', {str(tmp_path / 'out')!r}])")
    result = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("fastsim: error: dask: distributed generation on a Dask cluster needs Dask, "
                                     "which is not installed; install it with pip install 'fastsim[dask]'")


def test_import_fastsim_does_not_import_dask():
    code = ("import sys, fastsim; fastsim.open_dataset; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    result = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize("dask_arg, expected", [
    ("local:0", "dask: expected 'local:W' with W a positive number of workers, got 'local:0'"),
    ("local:two", "dask: expected 'local:W' with W a positive number of workers, got 'local:two'"),
])
def test_bad_local_cluster_argument(model, tmp_path, run_fastsim, dask_arg, expected):
    result = run_fastsim("generate", "-n", N, "--model", model, "--dask", dask_arg, "-o", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.strip() == f"fastsim: error: {expected}"
    assert not (tmp_path / "out").exists()


def test_two_condition_model_shards_and_checksums(tmp_path):
    """Every dataset of a shard (incident_energies, showers, conditions) is covered by its checksum."""
    from fastsim.spec import ConditionSpec
    from helpers.decoders import ENERGY_CONDITION

    conditions = [ENERGY_CONDITION, ConditionSpec("theta", "rad", 0.1, 1.0, "uniform")]
    model = make_decoder(tmp_path / "two.onnx", latent_dim=4, n_voxels=24, conditions=conditions)
    out = tmp_path / "out"
    distributed.generate(model, N, out, {"theta": "0.2:0.9"}, seed=SEED, shards=3, device="cpu")
    manifest = distributed.read_manifest(out)
    assert manifest["conditions"]["theta"] == {"kind": "range", "lo": 0.2, "hi": 0.9, "unit": "rad",
                                               "sampling": "uniform"}
    for entry in manifest["shards"]:
        assert set(entry["checksums"]) == {"incident_energies", "showers", "conditions"}
        assert distributed.shard_checksums(out / entry["file"]) == entry["checksums"]
    expected_conditions, expected = fastsim.load(model, device="cpu").generate(N, {"theta": "0.2:0.9"}, seed=SEED)
    np.testing.assert_array_equal(_read_all(out)[1], expected)
    with h5py.File(out / "shard-00001.h5", "r") as fh:
        np.testing.assert_array_equal(fh["conditions"][...], expected_conditions[3 * BLOCK_SIZE:6 * BLOCK_SIZE])


def test_progress_bar_reports_showers_and_shards(model, tmp_path, capsys):
    distributed.generate(model, N, tmp_path / "out", seed=SEED, shards=3, device="cpu", progress=True)
    err = capsys.readouterr().err
    assert f"{N / 1000:.2f}k/{N / 1000:.2f}k" in err and "3/3 shards" in err and "shower/s" in err


@pytest.mark.slow  # a Dask LocalCluster of worker processes
def test_client_may_be_a_cluster_object(model, cluster_client, reference, tmp_path):
    """dask-jobqueue users hold a cluster (SLURMCluster, HTCondorCluster); it is accepted as the client."""
    summary = distributed.generate(model, N, tmp_path / "out", seed=SEED, shards=2, client=cluster_client.cluster,
                                   device="cpu")
    assert summary["workers"] == 2
    np.testing.assert_array_equal(_read_all(tmp_path / "out")[1], reference["sampled"][1])


def test_second_client_on_the_same_folder_is_refused(model, tmp_path):
    """While one run holds the folder (an flock, released even on SIGKILL), another may not write it."""
    import fcntl

    out = tmp_path / "out"
    distributed.generate(model, N, out, seed=SEED, shards=3, device="cpu")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    holder = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(fastsim.OutputError, match="another fastsim run is writing to"):
            distributed.generate(model, N, out, seed=SEED, device="cpu", force=True)
    finally:
        os.close(holder)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert distributed.generate(model, N, out, seed=SEED, device="cpu")["skipped"] == [0, 1, 2]
