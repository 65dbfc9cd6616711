"""Distributed generation on Dask: planning shards, running them, the run manifest, resume.

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

Reading the shards of a finished run back is :mod:`fastsim.shards`
(:func:`fastsim.open_dataset`), which needs none of this.
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fastsim._util import atomic_write_text, first_line, positive_int
from fastsim._version import __version__
from fastsim.errors import (
    ArgumentError,
    ClusterError,
    DataError,
    FastsimError,
    ModelError,
    OutputError,
    ProviderError,
)
from fastsim.prior import BLOCK_SIZE, MAX_SEED
from fastsim.session import DEVICES, provider_chain

# Reading shards back lives in fastsim.shards; these names stay importable from here.
from fastsim.shards import (
    DASK_HINT,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    SHARD_DATASETS,
    ShardedDataset,
    open_dataset,
    read_manifest,
    shard_checksums,
)

if TYPE_CHECKING:
    from fastsim.conditions import ConditionPlan
    from fastsim.generator import Generator
    from fastsim.io import ShowerWriter
    from fastsim.spec import ModelSpec

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

#: Showers per shard when the number of shards is not given: 100 random-stream blocks,
#: about 2.6 GB of float32 for 6480 voxels -- minutes of work per task, a file size
#: batch file systems handle well.
DEFAULT_SHARD_SIZE = 100 * BLOCK_SIZE
_SHARD_NAME = "shard-{:05d}.h5"
_SHARD_FILE = re.compile(r"^shard-\d{5,}\.h5$")
# A shard being written: shard-00042.h5.<token>[.<12 hex>.partial|.lock], unique per attempt, so
# that a straggler from an earlier, killed run never writes into the file of a new attempt.
_PARTIAL_FILE = re.compile(r"^shard-\d{5,}\.h5\.[0-9a-f]{32}(\.[0-9a-f]{12}\.partial|\.partial|\.lock)?$")
# While shards finish, the manifest is rewritten only when this many times its last
# write's duration has passed since (always written at the end).
_MANIFEST_BUDGET = 20
# The fields that identify a run: a manifest that differs in any of them is another run.
_IDENTITY = ("n", "seed", "block_size", "conditions", "model_sha256", "shard_ranges")
# A connected distributed.Client, or None without Dask (Dask ships no type hints for it).
_DaskClient = Any


# ----------------------------------------------------------------------------- planning


def plan_shards(n: int, shards: int | None = None, *, block_size: int = BLOCK_SIZE) -> list[tuple[int, int]]:
    """Split samples ``[0, n)`` into ``shards`` ranges ``(start, stop)`` on the block grid.

    Blocks are shared out as evenly as possible (earlier shards get one more
    when they do not divide); every boundary but ``n`` is a multiple of
    ``block_size``.

    Args:
        n: number of samples (> 0).
        shards: number of shards, at most the number of blocks; None: shards of
            about :data:`DEFAULT_SHARD_SIZE` samples.
        block_size: the random-stream block (:data:`fastsim.prior.BLOCK_SIZE`).

    Returns:
        The ``(start, stop)`` of each shard, in order, covering ``[0, n)``.

    Raises:
        ArgumentError: ``n`` or ``shards`` is not a positive integer, or there
            are more shards than blocks.

    >>> plan_shards(10_000, 3, block_size=1024)
    [(0, 4096), (4096, 7168), (7168, 10000)]
    """
    positive_int(n, "n", message="{name}: expected a positive number of samples, got {value!r}")
    n_blocks = -(-int(n) // block_size)
    if shards is None:
        shards = -(-n_blocks // (DEFAULT_SHARD_SIZE // block_size))
    positive_int(shards, "shards", message="{name}: expected a positive number of shards, got {value!r}")
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


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n", what="out")


def _identity(doc: dict[str, Any]) -> dict[str, Any]:
    return {key: doc.get(key) for key in _IDENTITY}


def _describe_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str:
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


def _inspect_output(out: Path, force: bool) -> dict[str, Any] | None:
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
    plan: ConditionPlan
    seed: int
    batch_size: int
    compression: str | None
    attrs: dict[str, Any]


# Models loaded in this (worker) process, by _ModelRef; a new model replaces the old one.
_GENERATORS: dict[_ModelRef, Generator] = {}
_GENERATORS_LOCK = threading.Lock()
_MODEL_LOADS = 0


def _worker_generator(ref: _ModelRef) -> Generator:
    """The generator for ``ref`` in this process, loaded on first use only."""
    global _MODEL_LOADS
    with _GENERATORS_LOCK:
        gen = _GENERATORS.get(ref)
        if gen is None:
            from fastsim.errors import FastsimWarning
            from fastsim.generator import load
            from fastsim.spec import ModelSpec

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

    def __init__(self, writer: ShowerWriter, with_conditions: bool) -> None:
        self.writer = writer
        keys = SHARD_DATASETS + (("conditions",) if with_conditions else ())
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


def _generate_shard(task: _ShardTask) -> dict[str, Any]:
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
        # _write_runs hands rows to write(), all a ShowerWriter is asked for there.
        gen._write_runs(cast("ShowerWriter", hashing), plan, task.seed, task.batch_size, task.start, None)
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
    most = 4 * (os.cpu_count() or 1)  # each worker is a process with its own model: more only thrash
    if int(count) > most:
        raise ArgumentError(f"dask: 'local:W' starts W worker processes on this machine; expected at most {most} "
                            f"(4 per CPU), got {address!r}")
    return int(count)


@contextlib.contextmanager
def _connect(client: Any, timeout: float | None, dashboard: str | None = None) -> Iterator[_DaskClient]:
    """A Dask client for ``client``: an open Client, a scheduler address, ``"local:W"``, or None (no Dask).

    A local cluster serves its dashboard only at ``dashboard`` (e.g. ``":8787"``) when given.
    """
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
        # Processes, not threads: ONNX Runtime and h5py hold the GIL for parts of the work. Without
        # a dashboard the scheduler still serves HTTP (on :8787 by default, warning on the second
        # run): put that on a free local port instead.
        http: dict[str, Any] = {"dashboard_address": dashboard} if dashboard else \
            {"dashboard_address": "127.0.0.1:0", "scheduler_kwargs": {"dashboard": False}}
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      **http) as cluster, distributed.Client(cluster) as local:
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
        reason = first_line(exc)
        raise ClusterError(f"dask: cannot reach a Dask scheduler at {address!r} within {timeout:g} s ({reason}); "
                           "check the address (tcp://HOST:PORT) and that the scheduler runs") from None
    with remote:
        yield remote


def _shard_plan(plan: ConditionPlan, start: int, stop: int) -> ConditionPlan:
    """The conditions of samples [start, stop) alone: per-sample arrays are cut to the shard."""
    from fastsim.conditions import ConditionPlan, Values

    sources = tuple(
        Values(np.ascontiguousarray(s.array[plan.offset + start:plan.offset + stop]), s.source)
        if isinstance(s, Values) else s
        for s in plan.sources
    )
    return ConditionPlan(plan.spec, sources, stop - start, 0)


def _fail_shard(index: int, ranges: list[tuple[int, int]], exc: BaseException, attempts: int) -> FastsimError:
    start, stop = ranges[index]
    reason = first_line(exc)
    where = f"shard {index} (showers {start}:{stop})"
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(exc, FastsimError):
        return type(exc)(f"{where} failed{tries}: {reason}")
    return ClusterError(f"{where} failed{tries}: {type(exc).__name__}: {reason}")


def _verify(client: _DaskClient, out: Path, entries: list[dict[str, Any]]) -> set[int]:
    """Indices of the shards whose file is present and matches its recorded checksums."""
    todo = [e for e in entries if (out / e["file"]).is_file()]
    paths = [str((out / e["file"]).resolve()) for e in todo]
    if client is None:
        results = [_checksums_or_none(path) for path in paths]
    else:  # reading the shards back is spread over the workers too
        results = client.gather(client.map(_checksums_or_none, paths, pure=False))
    return {e["index"] for e, sums in zip(todo, results, strict=True)
            if sums is not None and sums == e.get("checksums")}


def _checksums_or_none(path: str) -> dict[str, str] | None:
    try:
        return shard_checksums(path)
    except DataError:
        return None


@dataclass(frozen=True)
class _ShardedRun:
    """A sharded run as checked before any file is touched: what to make, where, and how."""

    generator: Generator  # loaded on the CPU with one thread: the client only checks and plans
    conditions: ConditionPlan
    out: Path
    seed: int
    ranges: list[tuple[int, int]]
    existing: dict[str, Any] | None  # the manifest of a run already in ``out`` (to resume)
    device: str
    threads: int | None
    batch_size: int
    compression: str | None
    retries: int
    force: bool


def generate(
    model: str | os.PathLike[str] = "default",
    n: int | None = None,
    out: str | os.PathLike[str] = "showers",
    conditions: Any = None,
    *,
    seed: int = 0,
    shards: int | None = None,
    client: Any = None,
    spec: ModelSpec | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
    compression: str | None = None,
    allow_extrapolation: bool = False,
    retries: int = 2,
    force: bool = False,
    progress: bool = False,
    on_shard: Callable[[dict[str, Any]], None] | None = None,
    timeout: float | None = None,
    dashboard: str | None = None,
) -> dict[str, Any]:
    """Generate ``n`` showers as shards in folder ``out``; resume a run already there.

    The concatenated shards equal the output of :meth:`fastsim.Generator.generate`
    with the same model, conditions and seed bitwise (same provider).

    Args:
        model: a bundled model's name, an ``.onnx`` path, or ``"default"``.
        n: number of showers (None: one per value when ``conditions`` gives arrays).
        out: the output folder (created; it holds the shards and ``manifest.json``).
        conditions: as in :meth:`fastsim.Generator.generate` (a value, a range,
            an array, or a dict of those by condition name).
        seed: the run's seed, 0 to :data:`fastsim.prior.MAX_SEED`.
        shards: how many shards (None: the manifest's when resuming, else
            shards of about :data:`DEFAULT_SHARD_SIZE` showers).
        client: a ``distributed.Client``, a Dask cluster object (e.g. from
            dask-jobqueue), a scheduler address (``"tcp://HOST:PORT"``),
            ``"local:W"`` (a local cluster of W worker processes), or None (the
            shards one after the other in this process, without Dask).
        spec: a spec (path, dict or :class:`fastsim.ModelSpec`) for a model
            without embedded metadata.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...; applies on the workers.
        threads: ONNX Runtime intra-op threads per task (None: ONNX Runtime's
            default without Dask, 1 on a cluster, where the workers give the
            parallelism).
        batch_size: showers per decoder call (None: the runtime's default).
        compression: HDF5 compression of the shard files (None, ``"gzip"``,
            ``"gzip:LEVEL"``, ``"lzf"``).
        allow_extrapolation: accept conditions outside the training range (with a warning).
        retries: times Dask retries a failing shard; one that keeps failing
            stops the run with its error.
        force: start over in a folder that holds another run (its shards are removed).
        progress: show a progress bar on stderr.
        on_shard: called with each finished shard's manifest record (plus
            ``pid`` and ``model_loads``).
        timeout: seconds to reach a scheduler (None: Dask's
            ``distributed.comm.timeouts.connect``).

    Returns:
        A summary: ``n``, ``shards``, ``generated`` and ``skipped`` shard
        indices, ``seconds``, ``showers_per_s`` (of the generated shards),
        ``out``, ``seed``, ``model``, ``sha256``, ``workers``.

    Raises:
        ArgumentError: a bad ``n``, ``seed``, ``shards``, ``batch_size``,
            ``retries``, ``compression`` or ``"local:W"``.
        ConditionError: conditions malformed or outside the training range.
        ModelError, SpecError: the model cannot be loaded or its spec is bad.
        ProviderError: the device is unknown, or (without a cluster) not available here.
        OutputError: ``out`` cannot be written, another client holds it, or it
            holds a different run (without ``force``).
        ClusterError: the scheduler cannot be reached, Dask is missing, or a shard kept failing.

    >>> summary = generate("default", 10_000, "showers/", {"incident_energy": (1e3, 1e6)},
    ...                    shards=4, client="local:2")  # doctest: +SKIP
    """
    began = time.perf_counter()
    run = _plan_run(model, n, out, conditions, seed=seed, shards=shards, client=client, spec=spec,
                    device=device, threads=threads, batch_size=batch_size, compression=compression,
                    allow_extrapolation=allow_extrapolation, retries=retries, force=force)
    with _connect(client, timeout, dashboard) as dask_client, _claim_output(run.out, force):
        workers = _count_workers(dask_client)
        doc, done, generated = _execute(run, dask_client, progress, on_shard)
    seconds = time.perf_counter() - began
    n_generated = sum(run.ranges[j][1] - run.ranges[j][0] for j in generated)
    return {
        "out": str(run.out),
        "n": run.conditions.n,
        "shards": len(run.ranges),
        "generated": sorted(generated),
        "skipped": sorted(done),
        "seconds": round(seconds, 3),
        "showers_per_s": round(n_generated / seconds, 1) if n_generated else 0.0,
        "seed": run.seed,
        "model": str(run.generator.path),
        "sha256": doc["model_sha256"],
        "workers": workers,
    }


def _check_arguments(seed: object, batch_size: object, retries: object, compression: str | None,
                     client: object) -> None:
    """The cheap argument checks, before any model is loaded."""
    from fastsim.io import parse_compression

    positive_int(batch_size, "batch_size")
    positive_int(retries, "retries", zero=True)
    positive_int(seed, "seed", zero=True, maximum=MAX_SEED)
    parse_compression(compression, "h5")
    if isinstance(client, str) and (client == "local" or client.startswith("local:")):
        _local_workers(client)  # a malformed local:W is an argument error before any work


def _plan_run(model: str | os.PathLike[str], n: int | None, out: str | os.PathLike[str], conditions: Any, *,
              seed: int, shards: int | None, client: Any,
              spec: ModelSpec | Mapping[str, Any] | str | os.PathLike[str] | None, device: str, threads: int | None,
              batch_size: int | None, compression: str | None, allow_extrapolation: bool, retries: int,
              force: bool) -> _ShardedRun:
    """Check every argument, the model, the conditions and the output folder; change nothing."""
    from fastsim.generator import DEFAULT_BATCH_SIZE, load
    from fastsim.io import check_mev_units, check_output_size, parse_compression

    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    _check_arguments(seed, batch_size, retries, compression, client)
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
    # Sizes that cannot work are refused before the output folder (and a manifest) exists.
    checked.check_memory(int(batch_size))
    compressed = parse_compression(compression, "h5")[0] is not None
    check_output_size(Path(out).parent, plan.n, checked.spec.n_voxels, checked.spec.n_conditions, compressed=True)
    if shards is not None:
        plan_shards(plan.n, shards)  # a bad shard count fails before the output folder is touched
    folder = Path(out)
    existing = _inspect_output(folder, force)
    if not compressed:
        done_rows = sum(e["n"] for e in existing["shards"] if e.get("status") == "done") if existing else 0
        check_output_size(folder if folder.is_dir() else folder.parent, plan.n - done_rows,
                          checked.spec.n_voxels, checked.spec.n_conditions)
    ranges = plan_shards(plan.n, len(existing["shards"]) if shards is None and existing else shards)
    run = _ShardedRun(checked, plan, folder, int(seed), ranges, existing, device, threads, int(batch_size),
                      compression, int(retries), force)
    if existing is not None:
        old, new = _identity(existing), _identity(_new_manifest(run))
        if old != new:
            raise OutputError(f"out: {str(folder)!r} holds another run: {_describe_mismatch(old, new)}; "
                              "use a new folder, or --force (Python: force=True) to start it over")
    return run


def _execute(run: _ShardedRun, dask_client: _DaskClient, progress: bool,
             on_shard: Callable[[dict[str, Any]], None] | None) -> tuple[dict[str, Any], set[int], list[int]]:
    """Generate the shards not yet done, in a claimed ``out``; return the manifest, skipped and generated."""
    manifest_path = run.out / MANIFEST_NAME
    doc = _new_manifest(run)
    done: set[int] = set()
    if run.existing is not None:
        recorded = [e for e in run.existing["shards"] if e.get("status") == "done"]
        done = _verify(dask_client, run.out, recorded)
        for entry in run.existing["shards"]:
            if entry["index"] in done:
                doc["shards"][entry["index"]] = entry
    _write_json_atomic(manifest_path, doc)
    threads = run.threads
    if threads is None and dask_client is not None:
        threads = 1  # on a cluster the workers give the parallelism: one ONNX Runtime thread per task
    ref = _ModelRef(str(run.generator.path.resolve()), doc["model_sha256"], run.generator.spec.to_json(),
                    run.device, threads)
    todo = [task for task in _shard_tasks(doc, run.conditions, ref, run.out, run.batch_size, run.compression)
            if task.index not in done]
    try:
        generated = _run(dask_client, todo, doc, manifest_path, run.retries, progress, on_shard,
                         skipped=sum(b - a for j, (a, b) in enumerate(run.ranges) if j in done))
    finally:
        if dask_client is None:
            _GENERATORS.clear()  # do not keep a session (and its device memory) in the caller
    doc["complete"] = True
    _write_json_atomic(manifest_path, doc)
    return doc, done, generated


def _new_manifest(run: _ShardedRun) -> dict[str, Any]:
    checked, plan, ranges = run.generator, run.conditions, run.ranges
    return {
        "format": MANIFEST_FORMAT,
        "producer": f"fastsim {__version__}",
        "n": plan.n,
        "seed": run.seed,
        "block_size": BLOCK_SIZE,
        "conditions": plan.describe(),
        "model_sha256": checked.sha256,
        "model": {"path": str(checked.path.resolve()), "name": checked.spec.name,
                  "version": checked.spec.version},
        "spec": checked.spec.to_dict(),
        "shard_ranges": [list(r) for r in ranges],
        "compression": run.compression,
        "checksum": "sha256 of each dataset's bytes as stored (C order, little-endian float32)",
        "complete": False,
        "shards": [{"index": j, "file": _SHARD_NAME.format(j), "start": a, "stop": b, "n": b - a,
                    "status": "pending", "checksums": None} for j, (a, b) in enumerate(ranges)],
    }


def _shard_tasks(doc: dict[str, Any], plan: ConditionPlan, ref: _ModelRef, out: Path, batch_size: int,
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


def _count_workers(client: _DaskClient) -> int:
    if client is None:
        return 1
    return len(client.scheduler_info().get("workers", {}))


def _record(doc: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = doc["shards"][result["index"]]
    entry.update(status="done", n=result["n"], checksums=result["checksums"], seconds=result["seconds"],
                 host=result["host"], provider=result["provider"], error=None)
    return entry


def _run(client: _DaskClient, todo: list[_ShardTask], doc: dict[str, Any], manifest_path: Path, retries: int,
         progress: bool, on_shard: Callable[[dict[str, Any]], None] | None, skipped: int) -> list[int]:
    """Generate the shards in ``todo``, recording each in the manifest as it finishes."""
    from tqdm import tqdm

    ranges = [(e["start"], e["stop"]) for e in doc["shards"]]
    finished: list[int] = []
    n_done = sum(e["status"] == "done" for e in doc["shards"])
    last_write, write_cost = 0.0, 0.0
    bar = tqdm(total=doc["n"], initial=skipped, unit="shower", unit_scale=True, desc="shards",
               disable=not progress, file=sys.stderr, smoothing=0.1)

    def finish(result: dict[str, Any]) -> None:
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
