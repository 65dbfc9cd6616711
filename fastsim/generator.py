"""Loading a decoder and generating showers: :func:`load`, :class:`Generator`.

``load`` finds the model (:mod:`fastsim.models`), reads its spec
(:mod:`fastsim.spec`), builds the session (:mod:`fastsim.session`) and checks
the spec against the graph. A :class:`Generator` draws latents and sampled
conditions block-wise (:mod:`fastsim.prior`), so sample ``start + i`` depends
only on ``(seed, start + i)``, and decodes them in batches; ``iter_batches``
streams fixed-size chunks so that outputs larger than memory can be written
as they are produced.

Session runs always cover whole prior blocks on the global block grid (the
batch size only changes how many blocks one run takes), because ONNX
Runtime's CPU kernels round small or oddly sized runs differently; the tests
check bitwise identity across batch sizes and thread counts on CPU. GPU
libraries may choose kernels by batch size, so on a GPU keep the batch size
fixed when comparing bits.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, cast

import numpy as np

from fastsim._util import available_memory, format_bytes, ort_message, positive_int, rechunk
from fastsim.conditions import ConditionPlan, plan_conditions
from fastsim.errors import ArgumentError, ConditionError, ModelError, ProviderError
from fastsim.io import WRITE_QUEUE, ShowerWriter, aligned_empty, check_mev_units, write_batches
from fastsim.models import model_sha256, resolve_model
from fastsim.prior import BLOCK_SIZE, MAX_SEED, BlockStreams
from fastsim.session import MAX_THREADS, make_session, physical_cores, provider_chain
from fastsim.spec import ModelSpec, check_graph, read_metadata, read_spec

__all__ = ["CPU_RUN_CELLS", "DEFAULT_BATCH_SIZE", "Generator", "cpu_run_rows", "load"]

#: Showers per session run by default: large enough to keep the cores busy, small enough
#: (~50 MB for 6480 voxels) that a few batches in flight stay cheap.
DEFAULT_BATCH_SIZE = 2048
#: Voxels per ONNX Runtime call on the CPU (64 rows of 6480 voxels). A run this
#: size keeps the decoder's intermediates (a few rows x n_voxels tensors) in the
#: core's cache where a 2048-row run of 6480 voxels streams them through memory:
#: 1.4-2x more showers per CPU-second, and a far smaller memory arena
#: (benchmarks/bench_tuning.py). A model with fewer voxels takes more rows per
#: run, so that its fixed cost per call (a few hundred small nodes) is spread
#: over as many voxels: see :func:`cpu_run_rows`.
CPU_RUN_CELLS = 64 * 6480


def cpu_run_rows(n_voxels: int) -> int:
    """Rows per ONNX Runtime call on the CPU for a model of ``n_voxels``: about CPU_RUN_CELLS voxels.

    A power of two from 16 to BLOCK_SIZE (so it divides BLOCK_SIZE): every
    sample is decoded in the same run grid whatever the batch size, and ONNX
    Runtime's CPU kernels give the same bits as in one large run. 64 for
    dataset 2 (6480 voxels), 1024 for dataset-1 photons (368), 16 for dataset 3
    (40,500).
    """
    rows = 16
    while rows * 2 * n_voxels <= CPU_RUN_CELLS and rows * 2 <= BLOCK_SIZE:
        rows *= 2
    return rows


class Generator:
    """A loaded decoder: its spec, session and provider, and the generation methods."""

    def __init__(self, session: Any, spec: ModelSpec, path: Path, provider: str, threads: int | None = None,
                 workers: int = 1):
        self.session = session
        self.spec = spec
        self.path = Path(path)
        self.provider = provider
        self.threads = threads
        #: Threads that each run run_rows-row decodes concurrently (CPU sessions;
        #: ONNX Runtime releases the GIL). 1 for GPU sessions, which take whole batches.
        self.workers = workers
        #: Rows per session run on the CPU (:func:`cpu_run_rows`).
        self.run_rows = cpu_run_rows(spec.n_voxels)
        self._inputs = (spec.io_names["z"], spec.io_names["conditions"])
        self._output = spec.io_names["showers"]
        self._out_dtype = np.float16 if spec.output.dtype == "float16" else np.float32

    def __repr__(self) -> str:
        return f"Generator({self.spec.name!r} {self.spec.version}, path={str(self.path)!r}, provider={self.provider!r})"

    @cached_property
    def sha256(self) -> str:
        """sha256 of the model file and its external data (identifies the model in output files and for resume)."""
        return model_sha256(self.path)

    def decode(self, z: np.ndarray, conditions: np.ndarray) -> np.ndarray:
        """Decode latents (k, latent_dim) and conditions (k, n_conditions) -> showers (k, n_voxels).

        No prior, no condition checks: the raw decoder. On a GPU it is one
        session run; on the CPU, ``run_rows``-row runs spread over the workers.

        Args:
            z: latents, shape (k, latent_dim), cast to float32.
            conditions: raw condition values in the spec's units, shape (k, n_conditions).

        Returns:
            Showers (k, n_voxels) in MeV, float32 (float16 for an fp16 model).

        Raises:
            ArgumentError: ``z`` or ``conditions`` has the wrong shape.
        """
        z = np.ascontiguousarray(z, dtype=np.float32)
        conditions = np.ascontiguousarray(conditions, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.spec.latent_dim:
            raise ArgumentError(f"z: expected shape (k, {self.spec.latent_dim}), got {z.shape}")
        if conditions.ndim != 2 or conditions.shape != (len(z), self.spec.n_conditions):
            raise ArgumentError(f"conditions: expected shape ({len(z)}, {self.spec.n_conditions}), "
                                f"got {conditions.shape}")
        if self.workers > 1 and len(z) > self.run_rows:
            with ThreadPoolExecutor(self.workers - 1, thread_name_prefix="fastsim-decode") as pool:
                return self._decode_rows(z, conditions, pool)
        return self._decode_rows(z, conditions, None)

    def _decode_rows(self, z: np.ndarray, conditions: np.ndarray, pool: ThreadPoolExecutor | None,
                     out: np.ndarray | None = None) -> np.ndarray:
        """Decode checked, contiguous float32 rows: one run on a GPU, ``run_rows``-row runs on the CPU.

        CPU runs write straight into one output through IO binding (no per-run
        output array, no copy): ``out`` when given (C-contiguous, (rows,
        n_voxels), the model's output dtype), else a new array; with a ``pool``
        the rows are split into one contiguous span per worker, the caller's
        thread taking the first.
        """
        try:
            if self.provider != "CPUExecutionProvider":
                return cast(np.ndarray,
                            self.session.run([self._output], {self._inputs[0]: z, self._inputs[1]: conditions})[0])
            rows = len(z)
            if out is None:
                out = np.empty((rows, self.spec.n_voxels), dtype=self._out_dtype)

            step = self.run_rows

            def span(lo: int, hi: int) -> None:
                binding = self.session.io_binding()
                for a in range(lo, hi, step):
                    b = min(hi, a + step)
                    binding.bind_cpu_input(self._inputs[0], z[a:b])
                    binding.bind_cpu_input(self._inputs[1], conditions[a:b])
                    binding.bind_output(self._output, "cpu", 0, out.dtype, (b - a, out.shape[1]),
                                        out[a:b].ctypes.data)
                    self.session.run_with_iobinding(binding)

            if pool is None or rows <= step:
                span(0, rows)
                return out
            per = -(-rows // step // self.workers) * step
            futures = [pool.submit(span, lo, min(rows, lo + per)) for lo in range(per, rows, per)]
            try:
                span(0, min(rows, per))
            finally:
                for future in futures:
                    future.exception()  # wait for every span before the buffer can go
            for future in futures:
                future.result()
            return out
        except Exception as exc:  # onnxruntime's Fail/RuntimeException/...: report it in one line
            raise ModelError(f"model {str(self.path)!r} failed to decode a batch of {len(z)}: "
                             f"{ort_message(exc)}") from None

    def plan(self, n: int | None = None, conditions: Any = None, *, allow_extrapolation: bool = False,
             **named: Any) -> ConditionPlan:
        """Check and plan the conditions of ``n`` samples (see :func:`fastsim.conditions.plan_conditions`).

        Conditions may also be given by name, e.g. ``incident_energy=50_000``.
        """
        if named:
            if conditions is not None and not isinstance(conditions, Mapping):
                raise ConditionError(f"conditions: give either conditions=... or named conditions "
                                     f"({', '.join(named)}), not both")
            conditions = {**(conditions or {}), **named}
        return plan_conditions(self.spec, conditions, n, allow_extrapolation=allow_extrapolation)

    def iter_batches(
        self,
        n: int | None = None,
        conditions: Any = None,
        *,
        seed: int = 0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        start: int = 0,
        allow_extrapolation: bool = False,
        **named: Any,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(conditions, showers)`` chunks of at most ``batch_size`` samples, in order.

        Arguments are checked now, not at the first ``next()``. Memory use is
        independent of ``n``; the showers are those of :meth:`generate` with the
        same arguments.

        Args:
            n: number of showers (None: one per value when ``conditions`` gives arrays).
            conditions: None (sampled over the training range with the spec's
                law), a constant (``50_000`` or ``"50GeV"``), a range
                (``"10GeV:1TeV"`` or ``(lo, hi)``), per-sample values (an array
                or a ``.npy``/``.csv`` file), or a mapping of those by condition name.
            seed: the run's seed, 0 to :data:`fastsim.prior.MAX_SEED`.
            batch_size: showers per chunk (> 0).
            start: global index of the first sample (for shards and resumed runs).
            allow_extrapolation: accept conditions outside the training range (with a warning).
            **named: conditions by name, e.g. ``incident_energy="50GeV"``.

        Returns:
            An iterator of (conditions (k, n_conditions), showers (k, n_voxels)), float32, MeV.

        Raises:
            ArgumentError: a bad ``n``, ``seed``, ``batch_size`` or ``start``.
            ConditionError: conditions malformed or outside the training range.

        Examples:
            >>> import fastsim
            >>> gen = fastsim.load("default", device="cpu", threads=1)
            >>> [len(showers) for _, showers in gen.iter_batches(2500, "50GeV", batch_size=1024)]
            [1024, 1024, 452]
        """
        plan, streams, start, batch_size = self._prepare(n, conditions, seed, batch_size, start,
                                                         allow_extrapolation, named)
        return self._batches(plan, streams, start, batch_size)

    def _prepare(self, n: int | None, conditions: Any, seed: int, batch_size: int, start: int,
                 allow_extrapolation: bool, named: dict[str, Any]) -> tuple[ConditionPlan, BlockStreams, int, int]:
        """Checked arguments of a generation: (condition plan, random streams, start, batch size)."""
        plan = self.plan(n, conditions, allow_extrapolation=allow_extrapolation, **named)
        seed = positive_int(seed, "seed", zero=True, maximum=MAX_SEED)
        batch_size = positive_int(batch_size, "batch_size")
        start = positive_int(start, "start", zero=True)
        self.check_memory(batch_size)
        return plan, BlockStreams(seed, self.spec.latent_dim, self.spec.n_conditions), start, batch_size

    def _batches(self, plan: ConditionPlan, streams: BlockStreams, start: int,
                 batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # Session runs cover whole prior blocks on the global block grid, whatever the batch
        # size: ONNX Runtime's kernels can round differently for small or oddly sized runs,
        # and this keeps each sample's bits independent of batch size and start.
        end = start + plan.n
        run_rows = -(-batch_size // BLOCK_SIZE) * BLOCK_SIZE
        with self._decode_pool() as pool:
            yield from rechunk(self._decoded(plan, streams, start, end, run_rows, pool), batch_size)

    def _grid_start(self, start: int, run_rows: int) -> int:
        """First row of the run that holds ``start``, on a grid fixed by the global sample index.

        The CPU path decodes in ``run_rows``-row runs on the block grid whatever the run,
        so block alignment is enough; a GPU run is one session call whose kernels may
        depend on its rows, so a resumed run or a shard must see the same run windows as
        an uninterrupted run: align to multiples of the run size itself.
        """
        return start - start % (BLOCK_SIZE if self.provider == "CPUExecutionProvider" else run_rows)

    def _decoded(self, plan: ConditionPlan, streams: BlockStreams, start: int, end: int, run_rows: int,
                 pool: ThreadPoolExecutor | None,
                 buffer: Callable[[int], np.ndarray | None] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(conditions, showers)`` per session run, cut to [start, end).

        ``buffer(first)`` may give the (run_rows, n_voxels) array, in the
        model's output dtype, that the run starting at global row ``first`` is
        decoded into (a recycled buffer, or the caller's final array); None or
        no ``buffer``: a new array.
        """
        for first in range(self._grid_start(start, run_rows), end, run_rows):
            last = first + run_rows
            lo, hi = max(first, start), min(last, end)
            conditions = np.empty((run_rows, self.spec.n_conditions), dtype=np.float32)
            conditions[lo - first:hi - first] = plan.values(streams.uniforms(lo, hi), lo - start, hi - start)
            # Rows outside [start, end) only pad the run; give them valid conditions.
            conditions[:lo - first] = conditions[lo - first]
            conditions[hi - first:] = conditions[hi - first - 1]
            out = buffer(first) if buffer is not None and self.provider == "CPUExecutionProvider" else None
            showers = self._decode_rows(streams.latents(first, last), conditions, pool, out)
            yield conditions[lo - first:hi - first], showers[lo - first:hi - first].astype(np.float32, copy=False)

    @contextlib.contextmanager
    def _decode_pool(self) -> Iterator[ThreadPoolExecutor | None]:
        """The worker threads of CPU decoding besides the caller's (None with one worker)."""
        pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="fastsim-decode") if self.workers > 1 else None
        try:
            yield pool
        finally:
            if pool is not None:
                pool.shutdown()

    def check_memory(self, batch_size: int, *, in_memory: int = 0) -> None:
        """Refuse, before anything starts, a run that cannot fit in the memory available now.

        A run holds WRITE_QUEUE + 2 run buffers of ``ceil(batch_size / BLOCK_SIZE) *
        BLOCK_SIZE`` showers (see :meth:`write`), the latents of a run and of a
        prior block, and ``in_memory`` whole showers for :meth:`generate`. An
        :class:`ArgumentError` names the batch size, ``n`` or the model's
        dimensions, whichever is at fault.
        """
        available = available_memory()
        if available is None:
            return
        spec, item = self.spec, np.dtype(self._out_dtype).itemsize
        run_rows = -(-batch_size // BLOCK_SIZE) * BLOCK_SIZE
        per_row = spec.n_voxels * item * (WRITE_QUEUE + 2) + 8 * spec.latent_dim + 8 * spec.n_conditions
        smallest = BLOCK_SIZE * per_row + BLOCK_SIZE * 4 * spec.latent_dim
        needed = run_rows * per_row + BLOCK_SIZE * 4 * spec.latent_dim
        stored = in_memory * 4 * (spec.n_voxels + spec.n_conditions)
        if smallest > available:
            raise ArgumentError(f"model: {spec.name!r} has {spec.n_voxels} voxels and a latent of {spec.latent_dim}; "
                                f"even a batch of {BLOCK_SIZE} showers needs {format_bytes(smallest)} of memory, "
                                f"and {format_bytes(available)} is available")
        if needed > available:
            most = max(BLOCK_SIZE, (available - BLOCK_SIZE * 4 * spec.latent_dim) // per_row // BLOCK_SIZE * BLOCK_SIZE)
            raise ArgumentError(f"batch_size: a batch of {batch_size} showers needs about {format_bytes(needed)} of "
                                f"memory, and {format_bytes(available)} is available; use a batch size of at most "
                                f"{most}")
        if needed + stored > available:
            raise ArgumentError(f"n: {in_memory} showers held in memory need {format_bytes(stored)}, and "
                                f"{format_bytes(available)} is available; write them to a file (Generator.write, "
                                "fastsim generate -o) or take them in batches (iter_batches)")

    @property
    def device_type(self) -> str:
        """Where the session's tensors live: ``"cuda"`` for GPU providers, else ``"cpu"``."""
        return "cuda" if self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"

    def iter_device_batches(
        self,
        n: int | None = None,
        conditions: Any = None,
        *,
        seed: int = 0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        start: int = 0,
        allow_extrapolation: bool = False,
        **named: Any,
    ) -> Iterator[tuple[np.ndarray, Any]]:
        """Yield ``(conditions, showers)`` with ``showers`` left on the session's device.

        ``showers`` is an ``onnxruntime.OrtValue`` in GPU memory for the CUDA and
        TensorRT providers (host memory on the CPU); it speaks DLPack, so
        ``torch.from_dlpack(showers)`` or ``cupy.from_dlpack(showers)`` take it
        without a copy. Each batch is one session run of a fixed
        ``ceil(batch_size / BLOCK_SIZE) * BLOCK_SIZE`` rows on a grid fixed by the
        global sample index (a fixed shape: ONNX Runtime's arena never grows with varying
        shapes), bound with IO binding so the output is never copied to the
        host; only where ``start`` or ``start + n`` falls inside a run are that
        run's rows copied out, cut and put back on the device. The showers are
        those of :meth:`iter_batches` with the same arguments, bit for bit on the
        same provider.

        The arguments are those of :meth:`iter_batches`.

        Returns:
            An iterator of (conditions (k, n_conditions) float32 numpy, showers
            ``onnxruntime.OrtValue`` (k, n_voxels) on the session's device).

        Raises:
            ArgumentError: a bad ``n``, ``seed``, ``batch_size`` or ``start``.
            ConditionError: conditions malformed or outside the training range.
        """
        import onnxruntime as ort

        plan, streams, start, batch_size = self._prepare(n, conditions, seed, batch_size, start,
                                                         allow_extrapolation, named)
        device = self.device_type

        def batches() -> Iterator[tuple[np.ndarray, Any]]:
            end = start + plan.n
            run_rows = -(-batch_size // BLOCK_SIZE) * BLOCK_SIZE
            for first in range(self._grid_start(start, run_rows), end, run_rows):
                lo, hi = max(first, start), min(first + run_rows, end)
                rows = np.empty((run_rows, self.spec.n_conditions), dtype=np.float32)
                rows[lo - first:hi - first] = plan.values(streams.uniforms(lo, hi), lo - start, hi - start)
                rows[:lo - first] = rows[lo - first]
                rows[hi - first:] = rows[hi - first - 1]
                if device == "cpu":
                    # The CPU path decodes in run_rows-row runs (same bits). The OrtValue
                    # owns its memory: one wrapping a numpy array would not keep it alive
                    # for a DLPack consumer.
                    decoded = self.decode(streams.latents(first, first + run_rows), rows)[lo - first:hi - first]
                    showers = ort.OrtValue.ortvalue_from_shape_and_type(decoded.shape, decoded.dtype, "cpu", 0)
                    showers.update_inplace(np.ascontiguousarray(decoded))
                else:
                    binding = self.session.io_binding()
                    binding.bind_cpu_input(self._inputs[0], streams.latents(first, first + run_rows))
                    binding.bind_cpu_input(self._inputs[1], rows)
                    binding.bind_output(self._output, device, 0)
                    self.session.run_with_iobinding(binding)
                    showers = binding.get_outputs()[0]
                    if (lo, hi) != (first, first + run_rows):
                        cut = np.ascontiguousarray(showers.numpy()[lo - first:hi - first])
                        showers = ort.OrtValue.ortvalue_from_shape_and_type(cut.shape, cut.dtype, device, 0)
                        showers.update_inplace(cut)
                yield rows[lo - first:hi - first], showers

        return batches()

    def generate(
        self,
        n: int | None = None,
        conditions: Any = None,
        *,
        seed: int = 0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        start: int = 0,
        allow_extrapolation: bool = False,
        **named: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Generate ``n`` showers in memory.

        The same seed gives the same showers for any batch size and thread
        count (bitwise on the CPU); sample ``start + i`` depends only on
        ``(seed, start + i)``.

        Args:
            n: number of showers (None: one per value when ``conditions`` gives arrays).
            conditions: None (sampled over the training range with the spec's
                law), a constant (``50_000`` or ``"50GeV"``), a range
                (``"10GeV:1TeV"`` or ``(lo, hi)``), per-sample values (an array
                or a ``.npy``/``.csv`` file), or a mapping of those by condition name.
            seed: the run's seed, 0 to :data:`fastsim.prior.MAX_SEED`.
            batch_size: showers per session run (> 0); changes speed, not results.
            start: global index of the first sample (for shards and resumed runs).
            allow_extrapolation: accept conditions outside the training range (with a warning).
            **named: conditions by name, e.g. ``incident_energy="50GeV"``.

        Returns:
            (conditions (n, n_conditions), showers (n, n_voxels)), float32, MeV.

        Raises:
            ArgumentError: a bad ``n``, ``seed``, ``batch_size`` or ``start``.
            ConditionError: conditions malformed or outside the training range.

        >>> import fastsim
        >>> gen = fastsim.load("default", device="cpu", threads=1)
        >>> conditions, showers = gen.generate(10, "50GeV", seed=1)
        >>> conditions.shape, showers.shape
        ((10, 1), (10, 6480))
        >>> float(conditions[0, 0])
        50000.0
        >>> bool((gen.generate(10, "50GeV", seed=1, batch_size=1)[1] == showers).all())
        True
        """
        plan, streams, start, batch_size = self._prepare(n, conditions, seed, batch_size, start,
                                                         allow_extrapolation, named)
        self.check_memory(batch_size, in_memory=plan.n)
        all_conditions = np.empty((plan.n, self.spec.n_conditions), dtype=np.float32)
        showers = np.empty((plan.n, self.spec.n_voxels), dtype=np.float32)
        end, run_rows = start + plan.n, -(-batch_size // BLOCK_SIZE) * BLOCK_SIZE

        def in_place(first: int) -> np.ndarray | None:
            # Runs that lie inside [start, end) decode straight into the result: no copy.
            if self._out_dtype != np.float32 or first < start or first + run_rows > end:
                return None
            return showers[first - start:first - start + run_rows]

        with self._decode_pool() as pool:
            pos = 0
            for run_conditions, run_showers in self._decoded(plan, streams, start, end, run_rows, pool, in_place):
                k = len(run_showers)
                all_conditions[pos:pos + k] = run_conditions
                if not np.may_share_memory(run_showers, showers):
                    showers[pos:pos + k] = run_showers
                pos += k
        return all_conditions, showers

    def write(
        self,
        path: str | os.PathLike[str],
        n: int | None = None,
        conditions: Any = None,
        *,
        seed: int = 0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        start: int = 0,
        fmt: str | None = None,
        compression: str | None = None,
        resume: bool = False,
        force: bool = False,
        allow_extrapolation: bool = False,
        on_batch: Callable[[int], object] | None = None,
        **named: Any,
    ) -> dict[str, Any]:
        """Generate ``n`` showers straight into a file (HDF5, .npz or .npy; see :mod:`fastsim.io`).

        Memory stays flat in ``n``; decoding overlaps writing. The file appears
        under its name only when complete. With ``resume=True`` an interrupted
        run of the same arguments is continued and the result is bitwise
        identical to an uninterrupted one.

        Args:
            path: the output file; its suffix picks the format unless ``fmt`` is given.
            n: number of showers (None: one per value when ``conditions`` gives arrays).
            conditions: None (sampled over the training range with the spec's
                law), a constant (``50_000`` or ``"50GeV"``), a range
                (``"10GeV:1TeV"`` or ``(lo, hi)``), per-sample values (an array
                or a ``.npy``/``.csv`` file), or a mapping of those by condition name.
            seed: the run's seed, 0 to :data:`fastsim.prior.MAX_SEED`.
            batch_size: showers per session run (> 0).
            start: global index of the first sample (for shards).
            fmt: ``"h5"``, ``"npz"`` or ``"npy"`` (None: from the suffix).
            compression: None, ``"gzip"``, ``"gzip:LEVEL"`` (0-9) or ``"lzf"``;
                ``.npz`` takes gzip only.
            resume: continue the partial file of an interrupted run of the same arguments.
            force: replace an existing file.
            allow_extrapolation: accept conditions outside the training range (with a warning).
            on_batch: called with k as each batch of k showers is done (progress bars).
            **named: conditions by name, e.g. ``incident_energy="50GeV"``.

        Returns:
            A summary: ``n``, ``generated``, ``resumed_from``, ``seconds``,
            ``showers_per_s``, ``provider``, ``output``, ``format``, ``seed``,
            ``model``, ``model_sha256``, ``batch_size``, ``conditions``, ...

        Raises:
            ArgumentError: a bad ``n``, ``seed``, ``batch_size``, ``start`` or format.
            ConditionError: conditions malformed or outside the training range.
            OutputError: the file exists (without ``force``), cannot be written,
                or has no partial run to resume that matches these arguments.
        """
        plan = self.plan(n, conditions, allow_extrapolation=allow_extrapolation, **named)
        seed = positive_int(seed, "seed", zero=True, maximum=MAX_SEED)
        batch_size = positive_int(batch_size, "batch_size")
        start = positive_int(start, "start", zero=True)
        attrs = {
            "spec": self.spec.to_json(),
            "model": self.spec.name,
            "model_sha256": self.sha256,
            "seed": seed,
            "start": start,
            "conditions": plan.describe(),
        }
        check_mev_units(self.spec)
        self.check_memory(batch_size)
        began = time.perf_counter()
        writer = ShowerWriter(path, n=plan.n, n_voxels=self.spec.n_voxels,
                              condition_names=self.spec.condition_names, attrs=attrs, fmt=fmt,
                              compression=compression, resume=resume, force=force)
        resumed_from = writer.done
        with writer:
            if writer.done < plan.n:
                self._write_runs(writer, plan.subset(writer.done), seed, batch_size, start + writer.done, on_batch)
        seconds = time.perf_counter() - began
        generated = plan.n - resumed_from
        return {
            "n": plan.n,
            "generated": generated,
            "resumed_from": resumed_from,
            "seconds": round(seconds, 6),
            "showers_per_s": round(generated / seconds, 3) if seconds > 0 else None,
            "provider": self.provider,
            "output": str(writer.path),
            "format": writer.format,
            "direct_io_fraction": round(writer.direct_fraction, 4),
            "seed": seed,
            "start": start,
            "model": self.spec.name,
            "model_path": str(self.path),
            "model_sha256": self.sha256,
            "batch_size": batch_size,
            "conditions": plan.describe(),
        }

    def _write_runs(self, writer: ShowerWriter, plan: ConditionPlan, seed: int, batch_size: int, start: int,
                    on_batch: Callable[[int], object] | None) -> None:
        """Decode run by run into a fixed pool of buffers that the writer thread hands back.

        The pool -- WRITE_QUEUE + 2 run buffers: one being decoded, WRITE_QUEUE
        waiting, one being written -- is all the shower memory a write holds,
        whatever ``n``, and no run faults in fresh pages.
        """
        streams = BlockStreams(seed, self.spec.latent_dim, self.spec.n_conditions)
        end, run_rows = start + plan.n, -(-batch_size // BLOCK_SIZE) * BLOCK_SIZE
        free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        for _ in range(WRITE_QUEUE + 2):
            free.put(aligned_empty((run_rows, self.spec.n_voxels), self._out_dtype))  # page-aligned: O_DIRECT
        in_use: collections.deque[np.ndarray] = collections.deque()  # runs are written in the order they are decoded

        def take(first: int) -> np.ndarray:
            buffer = free.get()
            in_use.append(buffer)
            return buffer

        def give_back() -> None:
            if in_use:  # GPU runs use no buffer
                free.put(in_use.popleft())

        with self._decode_pool() as pool:
            runs = self._decoded(plan, streams, start, end, run_rows, pool, take)
            write_batches(writer, runs, on_batch=on_batch, queue_size=WRITE_QUEUE, on_written=give_back)


def load(
    model: str | os.PathLike[str] = "default",
    *,
    spec: ModelSpec | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    device: str = "auto",
    threads: int | None = None,
    optimization: str = "all",
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Generator:
    """Load a decoder by bundled name or path and check it against its spec.

    On the CPU each decoding thread runs its own single-threaded ONNX Runtime
    calls of :func:`cpu_run_rows` rows, which measured faster than ONNX Runtime's
    intra-op threads on this decoder's small, memory-bound operators.

    Args:
        model: a bundled model's name (``fastsim models`` lists them),
            ``"default"``, or a path to an ``.onnx`` file.
        spec: None: the model's own metadata, else its ``MODEL.onnx.json``
            sidecar; otherwise a :class:`ModelSpec`, its dict, or a path to its JSON file.
        device: ``"auto"`` (CUDA if available, else CPU; see
            ``Generator.provider``), ``"cpu"``, ``"cuda"`` or ``"tensorrt"`` --
            never a silent fallback.
        threads: CPU threads decoding (None: one per physical core); on a GPU,
            ONNX Runtime's intra-op thread count.
        optimization: ONNX Runtime graph optimisation level (``"all"``,
            ``"extended"``, ``"basic"``, ``"disable"``).
        provider_options: options per execution provider, passed to ONNX Runtime.

    Returns:
        A :class:`Generator` ready to generate.

    Raises:
        ModelError: no such file or bundled name, or not an ONNX model.
        SpecError: the spec is missing, malformed, or disagrees with the graph.
        ProviderError: the device is unknown or not available, or ``threads`` is bad.

    >>> import fastsim
    >>> gen = fastsim.load("default", device="cpu")
    >>> gen.spec.condition_names, gen.provider
    (('incident_energy',), 'CPUExecutionProvider')
    """
    path = resolve_model(model)
    if spec is None or isinstance(spec, (str, os.PathLike)):
        model_spec = read_spec(path, sidecar=spec)
    else:
        read_metadata(path)  # raises ModelError when the file is not ONNX
        model_spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)
    on_cpu = provider_chain(device)[0] == "CPUExecutionProvider"
    if threads is not None:
        threads = positive_int(threads, "threads", maximum=MAX_THREADS, error=ProviderError)
    session, provider = make_session(path, device, 1 if on_cpu else threads, optimization=optimization,
                                     provider_options=provider_options)
    check_graph(model_spec, session.get_inputs(), session.get_outputs())
    workers = (threads or physical_cores()) if on_cpu else 1
    return Generator(session, model_spec, path, provider, threads, workers)
