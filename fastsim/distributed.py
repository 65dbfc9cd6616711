"""Distributed generation on Dask: shards, the run manifest, resume, and reading shards back.

A run of ``n`` showers is split into shards whose boundaries fall on the prior's
random-stream blocks (:data:`fastsim.prior.BLOCK_SIZE`), so shard ``j`` holds
exactly the showers an unsharded run with the same seed has at indices
``[start_j, stop_j)``. Each shard is one CaloChallenge HDF5 file,
``OUT/shard-00042.h5``, written by a worker under a temporary name and renamed
when complete. Every worker process loads the model once and keeps it for the
next shards (a per-process cache keyed by the model's path and sha256).

The client alone writes ``OUT/manifest.json`` (atomically, after every shard):
the model's sha256 and spec, seed, n, conditions, the shard ranges, and per
shard its status, count and sha256 checksums of the datasets' bytes. Running
the same command again resumes: shards whose file still matches its checksum
are skipped, the others are generated; a different model, seed, n, conditions
or shard layout against an existing manifest is an error.

Workers and client must see ``OUT`` and the model file at the same paths (a
shared file system, as on batch clusters); one client at a time holds ``OUT``
(an advisory lock, released even when the client is killed). Dask is optional: it is imported
only when a cluster is used (``pip install 'fastsim[dask]'``); without a
client the shards are generated one after the other in this process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from fastsim._version import __version__
from fastsim.errors import ArgumentError, DataError, FastsimError, ModelError, OutputError, ProviderError
from fastsim.prior import BLOCK_SIZE, MAX_SEED
from fastsim.session import DEVICES, provider_chain

__all__ = [
    "DASK_HINT",
    "DEFAULT_SHARD_SIZE",
    "MANIFEST_NAME",
    "ClusterError",
    "ShardedDataset",
    "generate",
    "open_dataset",
    "plan_shards",
    "read_manifest",
    "shard_checksums",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fastsim-shards/1"
DASK_HINT = "pip install 'fastsim[dask]'"
#: Showers per shard when the number of shards is not given: 100 random-stream blocks,
#: about 2.6 GB of float32 for 6480 voxels -- minutes of work per task, a file size
#: batch file systems handle well.
DEFAULT_SHARD_SIZE = 100 * BLOCK_SIZE
_SHARD_NAME = "shard-{:05d}.h5"
_SHARD_FILE = re.compile(r"^shard-\d{5,}\.h5$")
# A shard being written: shard-00042.h5.<token>[.partial], unique per attempt, so that a
# straggler from an earlier, killed run never writes into the file of a new attempt.
_PARTIAL_FILE = re.compile(r"^shard-\d{5,}\.h5\.[0-9a-f]{32}(\.partial)?$")
_DATASETS = ("incident_energies", "showers")
_HASH_ROWS = 4096
# While shards finish, the manifest is rewritten only when this many times its last
# write's duration has passed since (always written at the end).
_MANIFEST_BUDGET = 20
# The fields that identify a run: a manifest that differs in any of them is another run.
_IDENTITY = ("n", "seed", "block_size", "conditions", "model_sha256", "shard_ranges")


class ClusterError(FastsimError):
    """The Dask cluster cannot be reached or used, or a shard kept failing."""


# ----------------------------------------------------------------------------- planning


def plan_shards(n: int, shards: int | None = None, *, block_size: int = BLOCK_SIZE) -> list[tuple[int, int]]:
    """Split samples ``[0, n)`` into ``shards`` ranges ``(start, stop)`` on the block grid.

    Blocks are shared out as evenly as possible (earlier shards get one more
    when they do not divide); every boundary but ``n`` is a multiple of
    ``block_size``. ``shards=None`` gives shards of about :data:`DEFAULT_SHARD_SIZE`.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ArgumentError(f"n: expected a positive number of samples, got {n!r}")
    n_blocks = -(-int(n) // block_size)
    if shards is None:
        shards = -(-n_blocks // (DEFAULT_SHARD_SIZE // block_size))
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards <= 0:
        raise ArgumentError(f"shards: expected a positive number of shards, got {shards!r}")
    if shards > n_blocks:
        raise ArgumentError(
            f"shards: expected at most {n_blocks} for n={n} (a shard holds whole random-stream "
            f"blocks of {block_size} showers), got {shards}"
        )
    per_shard, extra = divmod(n_blocks, int(shards))
    ranges, block = [], 0
    for j in range(int(shards)):
        blocks = per_shard + (1 if j < extra else 0)
        ranges.append((block * block_size, min((block + blocks) * block_size, int(n))))
        block += blocks
    return ranges


# ----------------------------------------------------------------------------- files and manifest


def shard_checksums(path: str | os.PathLike) -> dict[str, str]:
    """sha256 of each dataset's bytes (C order, as stored) in a shard file, read in chunks."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            sums = {}
            for key in _DATASETS + (("conditions",) if "conditions" in fh else ()):
                data, digest = fh[key], hashlib.sha256()
                for lo in range(0, data.shape[0], _HASH_ROWS):
                    digest.update(np.ascontiguousarray(data[lo:lo + _HASH_ROWS]).tobytes())
                sums[key] = digest.hexdigest()
            return sums
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: cannot read shard file ({exc})") from None


def _write_json_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"out: cannot write {str(path)!r} ({exc.strerror or exc})") from None


def read_manifest(out: str | os.PathLike) -> dict:
    """The manifest of the run in folder ``out`` (a :class:`DataError` if it is missing or malformed)."""
    path = Path(out) / MANIFEST_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{Path(out)}: no {MANIFEST_NAME}; not the output folder of a sharded run") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("shards"), list):
        raise DataError(f"{path}: not a fastsim shard manifest (expected format {MANIFEST_FORMAT!r})")
    return doc


def _identity(doc: dict) -> dict:
    return {key: doc.get(key) for key in _IDENTITY}


def _describe_mismatch(old: dict, new: dict) -> str:
    names = {"model_sha256": "model sha256", "shard_ranges": "shard layout", "block_size": "block size"}
    parts = []
    for key in _IDENTITY:
        if old.get(key) != new.get(key):
            if key == "shard_ranges":
                if old.get("n") != new.get("n"):
                    continue  # a different n moves every range; n itself is the news
                parts.append(f"shard layout (manifest: {len(old.get(key) or [])} shards, "
                             f"now: {len(new.get(key) or [])})")
            elif key == "conditions":
                parts.append(f"conditions (manifest: {json.dumps(old.get(key))}, now: {json.dumps(new.get(key))})")
            else:
                parts.append(f"{names.get(key, key)} (manifest: {old.get(key)}, now: {new.get(key)})")
    return "; ".join(parts)


def _inspect_output(out: Path, force: bool) -> dict | None:
    """Check that ``out`` can hold the run (changing nothing); return the manifest of a run already there."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"out: {str(out)!r} exists and is not a folder; a sharded run writes a folder of shards")
    if not out.exists():
        parent = out.parent
        if not parent.is_dir():
            state = "is not a folder" if parent.exists() else "does not exist"
            raise OutputError(f"out: parent folder {str(parent)!r} {state}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"out: cannot create {str(out)!r}: folder {str(parent)!r} is not writable")
        return None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"out: folder {str(out)!r} is not writable")
    if force:
        return None
    if (out / MANIFEST_NAME).exists():
        return read_manifest(out)
    leftovers = sorted(p.name for p in out.iterdir())
    if leftovers:
        shown = ", ".join(leftovers[:3]) + (", ..." if len(leftovers) > 3 else "")
        raise OutputError(f"out: folder {str(out)!r} is not empty ({shown}) and holds no {MANIFEST_NAME}; "
                          "use an empty or new folder, or --force (Python: force=True)")
    return None


@contextlib.contextmanager
def _claim_output(out: Path, force: bool) -> Iterator[None]:
    """Make ``out`` and hold it for this run: one client per folder; clear what an earlier attempt left."""
    try:
        out.mkdir(exist_ok=True)
        probe = out / f".write-test.{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"out: cannot write into folder {str(out)!r} ({exc.strerror or exc})") from None
    # An advisory lock on the folder, released by the kernel even when this process is killed.
    folder = os.open(out, os.O_RDONLY)
    try:
        try:
            import fcntl

            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"out: another fastsim run is writing to {str(out)!r}; "
                              "let it finish or stop it first") from None
        except (ImportError, OSError):
            pass  # no flock here (another OS, some network file systems): go on unlocked
        _clear_leftovers(out, force)
        yield
    finally:
        os.close(folder)


def _clear_leftovers(out: Path, force: bool) -> None:
    for old in out.iterdir():
        # Partial shards of an interrupted attempt are never complete; with force, nothing is kept.
        if _PARTIAL_FILE.match(old.name) or (force and (_SHARD_FILE.match(old.name) or old.name == MANIFEST_NAME)):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


# ----------------------------------------------------------------------------- the worker side


@dataclass(frozen=True)
class _ModelRef:
    """What a worker needs to load the run's model: path, sha256, spec, device, threads."""

    path: str
    sha256: str
    spec_json: str
    device: str
    threads: int | None


@dataclass(frozen=True)
class _ShardTask:
    """One shard: its index and range, the conditions planned for it, and where it goes."""

    index: int
    start: int
    stop: int
    path: str
    model: _ModelRef
    plan: Any
    seed: int
    batch_size: int
    compression: str | None
    attrs: dict


# Models loaded in this (worker) process, by _ModelRef; a new model replaces the old one.
_GENERATORS: dict[_ModelRef, Any] = {}
_GENERATORS_LOCK = threading.Lock()
_MODEL_LOADS = 0


def _worker_generator(ref: _ModelRef) -> Any:
    """The generator for ``ref`` in this process, loaded on first use only."""
    global _MODEL_LOADS
    with _GENERATORS_LOCK:
        gen = _GENERATORS.get(ref)
        if gen is None:
            from fastsim.generator import load
            from fastsim.spec import ModelSpec

            from fastsim.errors import FastsimWarning

            # A warning on a worker reaches nobody: a device 'auto' whose CUDA could not
            # start must fail the shard (and say why), not make it quietly on the CPU.
            with warnings.catch_warnings():
                warnings.simplefilter("error", FastsimWarning)
                try:
                    gen = load(ref.path, spec=ModelSpec.from_json(ref.spec_json), device=ref.device,
                               threads=ref.threads)
                except FastsimWarning as exc:
                    raise ProviderError(f"device {ref.device!r} on host {socket.gethostname()}: {exc}") from None
            if gen.sha256 != ref.sha256:
                raise ModelError(
                    f"model: {ref.path} on host {socket.gethostname()} has sha256 {gen.sha256[:12]}..., "
                    f"the run uses {ref.sha256[:12]}...; every worker must see the same model file"
                )
            _GENERATORS.clear()
            _GENERATORS[ref] = gen
            _MODEL_LOADS += 1
        return gen


class _HashingWriter:
    """Hands rows to a ShowerWriter, hashing each dataset's bytes exactly as the writer stores them.

    Used from the writer thread of ``Generator._write_runs``, so the hashing (which
    releases the GIL) overlaps decoding, and the checksums cost no second read of the file.
    """

    def __init__(self, writer: Any, with_conditions: bool) -> None:
        self.writer = writer
        keys = _DATASETS + (("conditions",) if with_conditions else ())
        self.sums = {key: hashlib.sha256() for key in keys}

    def write(self, conditions: np.ndarray, showers: np.ndarray) -> None:
        conditions = np.asarray(conditions, dtype=np.float32).reshape(len(showers), -1)
        showers = np.ascontiguousarray(showers, dtype=np.float32)
        column = self.writer.energy_column
        self.sums["incident_energies"].update(np.ascontiguousarray(conditions[:, column]).tobytes())
        self.sums["showers"].update(showers.data)
        if "conditions" in self.sums:
            self.sums["conditions"].update(np.ascontiguousarray(conditions).tobytes())
        self.writer.write(conditions, showers)

    def hexdigests(self) -> dict[str, str]:
        return {key: digest.hexdigest() for key, digest in self.sums.items()}


def _generate_shard(task: _ShardTask) -> dict:
    """Generate one shard into its file (temporary name, then renamed); return its record."""
    from fastsim.io import ShowerWriter

    began = time.perf_counter()
    gen = _worker_generator(task.model)
    final = Path(task.path)
    n = task.stop - task.start
    plan = gen.plan(n, task.plan)
    # The writer renames its NAME.partial to NAME when complete; NAME is unique to this
    # attempt, and only the last rename gives the shard its final name.
    staged = final.with_name(f"{final.name}.{uuid.uuid4().hex}")
    names = gen.spec.condition_names
    with ShowerWriter(staged, n=n, n_voxels=gen.spec.n_voxels, condition_names=names, attrs=task.attrs,
                      fmt="h5", compression=task.compression) as writer:
        hashing = _HashingWriter(writer, with_conditions=len(names) > 1)
        # The runtime's own write path: recycled page-aligned run buffers, O_DIRECT where possible.
        gen._write_runs(hashing, plan, task.seed, task.batch_size, task.start, None)
    try:
        os.replace(staged, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise OutputError(f"out: cannot write shard file {str(final)!r} ({exc.strerror or exc})") from None
    return {
        "index": task.index,
        "n": n,
        "checksums": hashing.hexdigests(),
        "seconds": round(time.perf_counter() - began, 3),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "provider": gen.provider,
        "model_loads": _MODEL_LOADS,
    }


# ----------------------------------------------------------------------------- the client side


def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ClusterError(f"dask: distributed generation on a Dask cluster needs Dask, which is not "
                           f"installed; install it with {DASK_HINT}") from None
    return distributed


def _local_workers(address: str) -> int | None:
    """W for ``"local:W"`` (None for ``"local"``: one worker per core)."""
    _, _, count = address.partition(":")
    if not count:
        return None
    if not count.isdigit() or int(count) <= 0:
        raise ArgumentError(f"dask: expected 'local:W' with W a positive number of workers, got {address!r}")
    return int(count)


@contextlib.contextmanager
def _connect(client: Any, timeout: float | None) -> Iterator[Any]:
    """A Dask client for ``client``: an open Client, a scheduler address, ``"local:W"``, or None (no Dask)."""
    if client is None or hasattr(client, "submit"):
        yield client
        return
    if hasattr(client, "scheduler_address"):  # a cluster object, e.g. dask_jobqueue.SLURMCluster
        with _require_distributed().Client(client) as connected:
            yield connected
        return
    if not isinstance(client, str):
        raise ArgumentError(f"client: expected a distributed.Client, a Dask cluster, a scheduler address or "
                            f"'local:W', got {type(client).__name__}")
    address = client.strip()
    if address == "local" or address.startswith("local:"):
        workers = _local_workers(address)
        distributed = _require_distributed()
        # Processes, not threads: ONNX Runtime and h5py hold the GIL for parts of the work.
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as local:
            yield local
        return
    if not address:
        raise ArgumentError("dask: expected a scheduler address (tcp://HOST:PORT) or 'local:W', got ''")
    distributed = _require_distributed()
    if timeout is None:
        import dask
        from dask.utils import parse_timedelta

        timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    try:
        remote = distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(f"dask: cannot reach a Dask scheduler at {address!r} within {timeout:g} s ({reason}); "
                           "check the address (tcp://HOST:PORT) and that the scheduler runs") from None
    with remote:
        yield remote


def _shard_plan(plan: Any, start: int, stop: int) -> Any:
    """The conditions of samples [start, stop) alone: per-sample arrays are cut to the shard."""
    from fastsim.conditions import ConditionPlan, Values

    sources = tuple(
        Values(np.ascontiguousarray(s.array[plan.offset + start:plan.offset + stop]), s.source)
        if isinstance(s, Values) else s
        for s in plan.sources
    )
    return ConditionPlan(plan.spec, sources, stop - start, 0)


def _fail_shard(index: int, ranges: list, exc: BaseException, attempts: int) -> FastsimError:
    start, stop = ranges[index]
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    where = f"shard {index} (showers {start}:{stop})"
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(exc, FastsimError):
        return type(exc)(f"{where} failed{tries}: {reason}")
    return ClusterError(f"{where} failed{tries}: {type(exc).__name__}: {reason}")


def _verify(client: Any, out: Path, entries: list[dict]) -> set[int]:
    """Indices of the shards whose file is present and matches its recorded checksums."""
    todo = [e for e in entries if (out / e["file"]).is_file()]
    paths = [str((out / e["file"]).resolve()) for e in todo]
    if client is None:
        results = [_checksums_or_none(path) for path in paths]
    else:  # reading the shards back is spread over the workers too
        results = client.gather(client.map(_checksums_or_none, paths, pure=False))
    return {e["index"] for e, sums in zip(todo, results) if sums is not None and sums == e.get("checksums")}


def _checksums_or_none(path: str) -> dict | None:
    try:
        return shard_checksums(path)
    except DataError:
        return None


def generate(
    model: str | os.PathLike = "default",
    n: int | None = None,
    out: str | os.PathLike = "showers",
    conditions: Any = None,
    *,
    seed: int = 0,
    shards: int | None = None,
    client: Any = None,
    spec: Any = None,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
    compression: str | None = None,
    allow_extrapolation: bool = False,
    retries: int = 2,
    force: bool = False,
    progress: bool = False,
    on_shard: Callable[[dict], None] | None = None,
    timeout: float | None = None,
) -> dict:
    """Generate ``n`` showers as shards in folder ``out``; resume a run already there.

    ``client``: a ``distributed.Client``, a Dask cluster object (e.g. from
    dask-jobqueue), a scheduler address (``"tcp://HOST:PORT"``), ``"local:W"``
    (a local cluster of W worker processes), or None (the shards one after the
    other in this process, without Dask). ``shards``: how many (None: the
    manifest's when resuming, else shards of about :data:`DEFAULT_SHARD_SIZE`).
    ``conditions``, ``seed``, ``spec``, ``allow_extrapolation`` as in
    :meth:`fastsim.Generator.generate`; the concatenated shards equal that
    call's output bitwise (same provider). ``device`` and ``threads`` (ONNX
    Runtime intra-op threads per task; None: ONNX Runtime's default without
    Dask, 1 on a cluster, where the workers give the parallelism) apply on the
    workers. A failing shard is retried ``retries`` times by Dask; one that
    keeps failing stops the run with its error. ``on_shard`` is called with
    each finished shard's record. ``timeout``: seconds to reach a scheduler
    (None: Dask's ``distributed.comm.timeouts.connect``).

    Returns a summary: ``n``, ``shards``, ``generated`` and ``skipped`` shard
    indices, ``seconds``, ``showers_per_s`` (of the generated shards), ``out``,
    ``seed``, ``model``, ``sha256``, ``workers``.
    """
    from fastsim.generator import DEFAULT_BATCH_SIZE, load
    from fastsim.io import check_mev_units, parse_compression

    began = time.perf_counter()
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ArgumentError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
        raise ArgumentError(f"retries: expected a non-negative integer, got {retries!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ArgumentError(f"seed: expected a non-negative integer at most {MAX_SEED}, got {seed!r}")
    parse_compression(compression, "h5")
    if isinstance(client, str) and (client == "local" or client.startswith("local:")):
        _local_workers(client)  # a malformed local:W is an argument error before any work

    # The client checks model, spec and conditions once, before any worker starts, and the
    # device before the output folder is touched: without a cluster the shards run here, so the
    # device must be here; with one, the workers check it again where they run.
    if client is None:
        provider_chain(device)
    elif device not in DEVICES:
        raise ProviderError(f"device: expected one of {list(DEVICES)}, got {device!r}")
    checked = load(model, spec=spec, device="cpu", threads=1)
    check_mev_units(checked.spec)
    plan = checked.plan(n, conditions, allow_extrapolation=allow_extrapolation)
    if shards is not None:
        plan_shards(plan.n, shards)  # a bad shard count fails before the output folder is touched
    out = Path(out)
    existing = _inspect_output(out, force)
    ranges = plan_shards(plan.n, len(existing["shards"]) if shards is None and existing else shards)
    doc = _new_manifest(checked, plan, int(seed), ranges, compression)
    if existing is not None:
        old, new = _identity(existing), _identity(doc)
        if old != new:
            raise OutputError(f"out: {str(out)!r} holds another run: {_describe_mismatch(old, new)}; "
                              "use a new folder, or --force (Python: force=True) to start it over")

    manifest_path = out / MANIFEST_NAME
    with _connect(client, timeout) as dask_client, _claim_output(out, force):
        done: set[int] = set()
        if existing is not None:
            recorded = [e for e in existing["shards"] if e.get("status") == "done"]
            done = _verify(dask_client, out, recorded)
            for entry in existing["shards"]:
                if entry["index"] in done:
                    doc["shards"][entry["index"]] = entry
        _write_json_atomic(manifest_path, doc)
        if threads is None and dask_client is not None:
            threads = 1  # on a cluster the workers give the parallelism: one ONNX Runtime thread per task
        ref = _ModelRef(str(checked.path.resolve()), doc["model_sha256"], checked.spec.to_json(), device, threads)
        todo = [task for task in _shard_tasks(doc, plan, ref, out, int(batch_size), compression)
                if task.index not in done]
        workers = _count_workers(dask_client)
        try:
            generated = _run(dask_client, todo, doc, manifest_path, retries, progress, on_shard,
                             skipped=sum(b - a for j, (a, b) in enumerate(ranges) if j in done))
        finally:
            if dask_client is None:
                _GENERATORS.clear()  # do not keep a session (and its device memory) in the caller
        doc["complete"] = True
        _write_json_atomic(manifest_path, doc)
    seconds = time.perf_counter() - began
    n_generated = sum(ranges[j][1] - ranges[j][0] for j in generated)
    return {
        "out": str(out),
        "n": plan.n,
        "shards": len(ranges),
        "generated": sorted(generated),
        "skipped": sorted(done),
        "seconds": round(seconds, 3),
        "showers_per_s": round(n_generated / seconds, 1) if n_generated else 0.0,
        "seed": int(seed),
        "model": str(checked.path),
        "sha256": doc["model_sha256"],
        "workers": workers,
    }


def _new_manifest(checked: Any, plan: Any, seed: int, ranges: list[tuple[int, int]],
                  compression: str | None) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "producer": f"fastsim {__version__}",
        "n": plan.n,
        "seed": seed,
        "block_size": BLOCK_SIZE,
        "conditions": plan.describe(),
        "model_sha256": checked.sha256,
        "model": {"path": str(checked.path.resolve()), "name": checked.spec.name,
                  "version": checked.spec.version},
        "spec": checked.spec.to_dict(),
        "shard_ranges": [list(r) for r in ranges],
        "compression": compression,
        "checksum": "sha256 of each dataset's bytes as stored (C order, little-endian float32)",
        "complete": False,
        "shards": [{"index": j, "file": _SHARD_NAME.format(j), "start": a, "stop": b, "n": b - a,
                    "status": "pending", "checksums": None} for j, (a, b) in enumerate(ranges)],
    }


def _shard_tasks(doc: dict, plan: Any, ref: _ModelRef, out: Path, batch_size: int,
                 compression: str | None) -> list[_ShardTask]:
    # Each shard file describes itself like the output of an unsharded run with start=...
    run_attrs = {"spec": ref.spec_json, "model": doc["model"]["name"], "model_sha256": ref.sha256,
                 "seed": doc["seed"], "run_n": doc["n"], "run_conditions": doc["conditions"],
                 "shard_count": len(doc["shards"])}
    tasks = []
    for entry in doc["shards"]:
        j, a, b = entry["index"], entry["start"], entry["stop"]
        shard_plan = _shard_plan(plan, a, b)
        attrs = {**run_attrs, "start": a, "shard_index": j, "conditions": shard_plan.describe()}
        tasks.append(_ShardTask(j, a, b, str((out / entry["file"]).resolve()), ref, shard_plan,
                                doc["seed"], batch_size, compression, attrs))
    return tasks


def _count_workers(client: Any) -> int:
    if client is None:
        return 1
    return len(client.scheduler_info().get("workers", {}))


def _record(doc: dict, result: dict) -> dict:
    entry = doc["shards"][result["index"]]
    entry.update(status="done", n=result["n"], checksums=result["checksums"], seconds=result["seconds"],
                 host=result["host"], provider=result["provider"], error=None)
    return entry


def _run(client: Any, todo: list[_ShardTask], doc: dict, manifest_path: Path, retries: int,
         progress: bool, on_shard: Callable[[dict], None] | None, skipped: int) -> list[int]:
    """Generate the shards in ``todo``, recording each in the manifest as it finishes."""
    from tqdm import tqdm

    ranges = [(e["start"], e["stop"]) for e in doc["shards"]]
    finished: list[int] = []
    n_done = sum(e["status"] == "done" for e in doc["shards"])
    last_write, write_cost = 0.0, 0.0
    bar = tqdm(total=doc["n"], initial=skipped, unit="shower", unit_scale=True, desc="shards",
               disable=not progress, file=sys.stderr, smoothing=0.1)

    def finish(result: dict) -> None:
        nonlocal n_done, last_write, write_cost
        entry = _record(doc, result)
        finished.append(result["index"])
        n_done += 1
        # With thousands of shards the manifest is MBs: rewriting it for every shard would be
        # most of the client's I/O. Keep that under ~5% of the time; a shard finished but not
        # yet recorded is only redone on resume.
        now = time.monotonic()
        if now - last_write >= _MANIFEST_BUDGET * write_cost:
            _write_json_atomic(manifest_path, doc)
            last_write = time.monotonic()
            write_cost = last_write - now
        bar.set_postfix_str(f"{n_done}/{len(ranges)} shards", refresh=False)
        bar.update(result["n"])
        if on_shard is not None:
            on_shard({**entry, "pid": result["pid"], "model_loads": result["model_loads"]})

    def fail(index: int, exc: BaseException, attempts: int) -> FastsimError:
        error = _fail_shard(index, ranges, exc, attempts)
        doc["shards"][index].update(status="failed", error=str(error))
        return error

    with bar, contextlib.ExitStack() as stack:
        # Whatever ends the loop (done, a failure, Ctrl-C), the manifest then has every finished shard.
        stack.callback(_write_json_atomic, manifest_path, doc)
        if client is None:
            for task in todo:
                try:
                    result = _generate_shard(task)
                except Exception as exc:
                    raise fail(task.index, exc, 1) from None
                finish(result)
            return finished

        distributed = _require_distributed()
        # Unique keys: a long-lived scheduler must never hand back another run's results.
        token = uuid.uuid4().hex[:12]
        futures = {
            client.submit(_generate_shard, task, key=f"fastsim-shard-{task.index:05d}-{token}",
                          pure=False, retries=retries): task.index
            for task in todo
        }
        try:
            for future in distributed.as_completed(list(futures)):
                index = futures[future]
                if future.status == "error":
                    raise fail(index, future.exception(), retries + 1) from None
                finish(future.result())
        finally:
            client.cancel(list(futures))
    return finished


# ----------------------------------------------------------------------------- reading back


class ShardedDataset:
    """The shards of a finished run, read in order as one CaloChallenge dataset.

    Nothing is loaded up front but the manifest and the incident energies;
    :meth:`iter_chunks` and :meth:`read` open one shard file at a time. Use
    :func:`open_dataset` to make one.
    """

    def __init__(self, path: str | os.PathLike, geometry: Any = None) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.geometry = geometry
        pending = [e["index"] for e in self.manifest["shards"] if e.get("status") != "done"]
        if pending:
            shown = ", ".join(map(str, pending[:10])) + (", ..." if len(pending) > 10 else "")
            raise DataError(f"{self.path}: the run is incomplete: {len(pending)} of "
                            f"{len(self.manifest['shards'])} shards are not done ({shown}); "
                            "run the same generate command again to finish it")
        self._shards = [(int(e["start"]), int(e["stop"]), self.path / e["file"]) for e in self.manifest["shards"]]
        missing = [str(p.name) for _, _, p in self._shards if not p.is_file()]
        if missing:
            raise DataError(f"{self.path}: shard files missing: {', '.join(missing[:5])}")
        self._energies: np.ndarray | None = None
        self._dask_files: list = []
        if self.geometry is None:
            self.geometry = self._find_geometry()

    def _find_geometry(self) -> Any:
        # The model's own geometry, else whatever the first shard file finds for itself.
        block = self.manifest.get("spec", {}).get("output", {}).get("geometry")
        if block:
            from fastsim.geometry import CylindricalGeometry, GeometryError

            try:
                return CylindricalGeometry.from_dict(block)
            except GeometryError as exc:
                raise DataError(f"{self.path}: the model's geometry in {MANIFEST_NAME} is malformed ({exc})") from None
        from fastsim.dataset import open_showers

        with open_showers(self._shards[0][2]) as first:
            return first.geometry

    @property
    def n(self) -> int:
        """Number of showers over all shards."""
        return int(self.manifest["n"])

    def __len__(self) -> int:
        return self.n

    @property
    def n_voxels(self) -> int:
        return int(self.manifest["spec"]["output"]["n_voxels"])

    @property
    def n_shards(self) -> int:
        return len(self._shards)

    @property
    def attrs(self) -> dict:
        """Run-level attributes: seed, model sha256, conditions, producer (from the manifest)."""
        keys = ("seed", "n", "model_sha256", "conditions", "producer", "block_size")
        return {key: self.manifest.get(key) for key in keys}

    @property
    def incident_energies(self) -> np.ndarray:
        """Incident energies (N, 1) float64 in MeV, read from every shard on first use."""
        if self._energies is None:
            parts = []
            for shard in self.iter_shards():
                with shard:
                    parts.append(shard.incident_energies)
            self._energies = np.concatenate(parts)
        return self._energies

    def iter_shards(self) -> Iterator[Any]:
        """Each shard as an open :class:`fastsim.dataset.ShowerFile`, in order (close each when done)."""
        from fastsim.dataset import open_showers

        for _, _, path in self._shards:
            yield open_showers(path, geometry=self.geometry)

    def iter_chunks(self, chunk_size: int = 1000, start: int = 0,
                    stop: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (energies (k, 1) float64, showers (k, n_voxels) float32) for rows start:stop.

        Chunks run across shard boundaries: every chunk but the last has ``chunk_size`` rows.
        """
        from fastsim.dataset import open_showers

        stop = self.n if stop is None else stop
        for name, value in (("chunk_size", chunk_size), ("start", start), ("stop", stop)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise DataError(f"{self.path}: {name} must be an integer, got {value!r}")
        if chunk_size < 1:
            raise DataError(f"{self.path}: chunk_size must be >= 1, got {chunk_size}")
        if not 0 <= start <= stop <= self.n:
            raise DataError(f"{self.path}: rows {start}:{stop} are outside 0:{self.n}")
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        n_pending = 0
        for first, last, path in self._shards:
            lo, hi = max(first, start), min(last, stop)
            if lo >= hi:
                continue
            with open_showers(path, geometry=self.geometry) as shard:
                # Read so that the chunk grid stays aligned with rows start, start + chunk_size, ...
                pos = lo
                while pos < hi:
                    take = min(chunk_size - n_pending, hi - pos)
                    pending.append(shard.read(pos - first, pos - first + take))
                    n_pending += take
                    pos += take
                    if n_pending == chunk_size:
                        yield _concat(pending)
                        pending, n_pending = [], 0
        if pending:
            yield _concat(pending)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.iter_chunks()

    def read(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows start:stop at once: (energies (k, 1) float64, showers (k, n_voxels) float32)."""
        stop = self.n if stop is None else stop
        return _concat(list(self.iter_chunks(max(stop - start, 1), start, stop)) or
                       [(np.empty((0, 1)), np.empty((0, self.n_voxels), np.float32))])

    def to_dask(self) -> tuple[Any, Any]:
        """Lazy dask arrays (energies (N, 1), showers (N, n_voxels)) over all shards; needs Dask."""
        try:
            import dask.array as da
            import h5py
        except ImportError:
            raise ClusterError(f"to_dask: needs Dask, which is not installed; install it with {DASK_HINT}") from None
        energies, showers = [], []
        for _, _, path in self._shards:
            fh = h5py.File(path, "r")
            self._dask_files.append(fh)
            rows = max(1, min(fh["showers"].shape[0], (64 << 20) // max(1, 4 * self.n_voxels)))
            energies.append(da.from_array(fh["incident_energies"], chunks=(rows, 1)))
            showers.append(da.from_array(fh["showers"], chunks=(rows, self.n_voxels)))
        return da.concatenate(energies), da.concatenate(showers)

    def close(self) -> None:
        for fh in self._dask_files:
            fh.close()
        self._dask_files = []

    def __enter__(self) -> ShardedDataset:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardedDataset({str(self.path)!r}, n={self.n}, shards={self.n_shards})"


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([e for e, _ in parts]), np.concatenate([s for _, s in parts])


def open_dataset(path: str | os.PathLike, geometry: Any = None) -> Any:
    """Open generated showers for lazy reading: a folder of shards or one HDF5 file.

    A folder (the ``out`` of :func:`generate`) gives a :class:`ShardedDataset`
    that reads its shards in order as one dataset; a file gives
    :class:`fastsim.dataset.ShowerFile`. Both offer ``n``, ``n_voxels``,
    ``incident_energies``, ``iter_chunks`` and ``read``.

    >>> with fastsim.open_dataset("showers/") as data:
    ...     for energies, showers in data.iter_chunks(10_000):
    ...         ...
    """
    if Path(path).is_dir():
        return ShardedDataset(path, geometry)
    from fastsim.formats import open_hep  # a ROOT file or a hit list written by generate

    hep = open_hep(path, geometry)
    if hep is not None:
        return hep
    from fastsim.dataset import open_showers

    return open_showers(path, geometry=geometry)
