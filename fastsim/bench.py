"""Throughput measurement against the hardware limit.

This module measures the numbers ``fastsim bench`` and ``benchmarks/`` report:

- the machine a figure was measured on (CPU model, cores, load average,
  package versions), so no absolute time is ever quoted without its hardware;
- the limit: large-matrix single-precision matrix-multiply FLOP/s on the same
  cores with the same thread count, measured with numpy (and with ONNX
  Runtime's own MatMul when ``onnx`` is installed) — the best of them;
- the work: a decoder's FLOPs per shower, counted from its MatMul, Gemm and
  Conv nodes at the tensor shapes of a real run;
- decode throughput (showers/s) of an ONNX Runtime session over batch size,
  thread count and precision, as a fraction of the limit.

Limits are the best of repeated timings (a limit is the most the hardware
does; on a shared machine the best repeat is the one least disturbed);
throughputs are the median of repeated calls. A fraction of the limit is
therefore never overstated by a disturbed limit measurement. Ratios are taken
between measurements of one run on one machine. Nothing here asserts a speed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from fastsim._util import positive_int
from fastsim.errors import FastsimError, ModelError
from fastsim.models import file_sha256
from fastsim.session import physical_cores

if TYPE_CHECKING:
    from fastsim.spec import ModelSpec

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "PRECISIONS",
    "DecodePoint",
    "compute_limit",
    "copy_bandwidth",
    "decode_inputs",
    "format_table",
    "generator_rate",
    "machine_info",
    "matmul_limit",
    "measure_decode",
    "model_flops",
    "physical_cores",
    "run",
    "sgemm_limit",
    "sweep",
    "time_calls",
    "variant_path",
]

#: The sweep ``fastsim bench`` runs by default: 1 ... 65536 in steps of 4x.
DEFAULT_BATCH_SIZES = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
#: Precision variants of a model, found beside it as NAME-int8.onnx / NAME-fp16.onnx.
PRECISIONS = ("fp32", "int8", "fp16")
_FLOP_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger", "QLinearMatMul", "FusedMatMul",
             "QLinearConv", "ConvInteger")


# --- the machine ---------------------------------------------------------------------------

def _cpuinfo() -> list[dict[str, str]]:
    """The processor blocks of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    blocks = []
    for chunk in text.strip().split("\n\n"):
        entry = {}
        for line in chunk.splitlines():
            key, _, value = line.partition(":")
            entry[key.strip()] = value.strip()
        blocks.append(entry)
    return blocks


def machine_info() -> dict[str, Any]:
    """What a figure was measured on: CPU, cores, memory, load, and the versions that matter."""
    import onnxruntime as ort

    from fastsim import __version__

    blocks = _cpuinfo()
    flags = set(blocks[0].get("flags", "").split()) if blocks else set()
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    try:
        import h5py
        h5py_version = h5py.__version__
    except ImportError:  # pragma: no cover - h5py is a runtime dependency
        h5py_version = None
    return {
        "cpu": (blocks[0].get("model name") if blocks else None) or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "simd": sorted(flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile"}),
        "memory_gib": None if memory_gib is None else round(memory_gib, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "fastsim": __version__,
            "numpy": np.__version__,
            "onnxruntime": ort.__version__,
            "h5py": h5py_version,
        },
        "onnxruntime_providers": ort.get_available_providers(),
        "gpu": _gpu_info(),
    }


def _gpu_info() -> list[dict[str, str]] | None:
    """Name, driver and memory of each NVIDIA GPU (None where nvidia-smi is absent)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [dict(zip(("name", "driver", "memory"), (x.strip() for x in line.split(","))))
            for line in out.strip().splitlines()]


# --- timing --------------------------------------------------------------------------------

def time_calls(fn: Callable[[], Any], *, min_time: float = 0.3, min_calls: int = 3,
               warmup: int = 2, max_calls: int = 100_000) -> dict[str, float]:
    """Time ``fn()`` repeatedly (after ``warmup`` untimed calls) for ``min_time`` s and ``min_calls`` calls.

    Returns the median, best and mean seconds per call and the number of calls.
    Throughputs quote the median (robust to the odd preempted call); limits
    quote the best (see the module docstring).
    """
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        if i == 0 and time.perf_counter() - t0 > max(min_time, 1.0):
            # A call longer than the time budget: one warm-up and two timed calls are enough.
            min_calls = min(min_calls, 2)
            break
    times: list[float] = []
    start = time.perf_counter()
    while (len(times) < min_calls or time.perf_counter() - start < min_time) and len(times) < max_calls:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "best_s": min(times),
        "mean_s": statistics.fmean(times),
        "calls": len(times),
    }


# --- the limit -----------------------------------------------------------------------------

_SGEMM_CHILD = r"""
import json, sys, time
import numpy as np
n, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
c = np.empty((n, n), dtype=np.float32)
np.matmul(a, b, out=c)
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    np.matmul(a, b, out=c)
    times.append(time.perf_counter() - t0)
blas = {}
try:
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    blas = {"name": blas.get("name"), "version": blas.get("version")}
except Exception:
    pass
try:
    import threadpoolctl
    pools = [p for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"]
    if pools:
        blas.update(kernel=pools[0].get("architecture"), threads=pools[0].get("num_threads"))
except ImportError:
    pass
print(json.dumps({"times": times, "blas": blas}))
"""

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def _numpy_sgemm(threads: int, size: int, repeats: int, extra_env: dict[str, str]) -> dict[str, Any]:
    # A child process, because BLAS libraries fix their thread count (and
    # OpenBLAS its kernel) when they load; this process's numpy is left alone.
    env = {**os.environ, **{var: str(threads) for var in _THREAD_VARS}, **extra_env}
    proc = subprocess.run([sys.executable, "-c", _SGEMM_CHILD, str(size), str(repeats)],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise FastsimError(f"sgemm measurement failed: {proc.stderr.strip().splitlines()[-1:]}")
    result = json.loads(proc.stdout)
    return {
        "flop_per_s": 2.0 * size**3 / min(result["times"]),
        "median_flop_per_s": 2.0 * size**3 / statistics.median(result["times"]),
        "blas": result["blas"],
        "env": extra_env,
    }


def sgemm_limit(threads: int, *, size: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """Large-matrix float32 matmul FLOP/s with numpy on ``threads`` threads of these cores.

    OpenBLAS builds with runtime kernel selection do not always recognise new
    CPUs and then fall back to an AVX2 kernel; on a CPU with AVX-512 the
    AVX-512 kernel is measured as well (``OPENBLAS_CORETYPE=SkylakeX``), and
    the limit is the better of the two, so the limit is never understated.
    """
    positive_int(threads, "threads", error=FastsimError)
    variants = {"default": _numpy_sgemm(threads, size, repeats, {})}
    blas_name = str(variants["default"]["blas"].get("name", "")).lower()
    flags = set(_cpuinfo()[0].get("flags", "").split()) if _cpuinfo() else set()
    if "openblas" in blas_name and "avx512f" in flags:
        variants["openblas-avx512"] = _numpy_sgemm(threads, size, repeats, {"OPENBLAS_CORETYPE": "SkylakeX"})
    best = max(variants, key=lambda k: variants[k]["flop_per_s"])
    return {
        "flop_per_s": variants[best]["flop_per_s"],
        "source": f"numpy ({best})",
        "threads": threads,
        "size": size,
        "variants": variants,
    }


def matmul_limit(threads: int | None, *, size: int = 2048, repeats: int = 10,
                 device: str = "cpu") -> dict[str, Any] | None:
    """Large-matrix float32 MatMul FLOP/s inside ONNX Runtime (its own GEMM kernels), or None without onnx.

    ``device="cuda"`` measures the GPU's matmul with the CUDA provider, inputs
    and output bound on the device so no copy is timed (TF32 off: a float32 limit).
    """
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = rng.standard_normal((size, size), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["c"])], "sgemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if device == "cpu":
        providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
    else:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers = [("CUDAExecutionProvider", {"use_tf32": "0"})]
    session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    expected = "CPUExecutionProvider" if device == "cpu" else "CUDAExecutionProvider"
    if session.get_providers()[0] != expected:
        raise FastsimError(f"matmul limit: asked for {device} but ONNX Runtime used {session.get_providers()[0]}")
    a = rng.standard_normal((size, size), dtype=np.float32)
    binding = session.io_binding()
    if device == "cpu":
        out = np.empty((size, size), np.float32)
        binding.bind_cpu_input("a", a)
        binding.bind_output("c", "cpu", 0, np.float32, out.shape, out.ctypes.data)
    else:
        binding.bind_ortvalue_input("a", ort.OrtValue.ortvalue_from_numpy(a, device, 0))
        binding.bind_ortvalue_output("c", ort.OrtValue.ortvalue_from_shape_and_type((size, size), np.float32,
                                                                                     device, 0))

    def call() -> None:
        session.run_with_iobinding(binding)
        if device != "cpu":
            binding.synchronize_outputs()

    timing = time_calls(call, min_time=0.0, min_calls=repeats)
    return {
        "flop_per_s": 2.0 * size**3 / timing["best_s"],
        "median_flop_per_s": 2.0 * size**3 / timing["median_s"],
        "source": f"onnxruntime MatMul ({device})",
        "threads": threads,
        "size": size,
    }


def copy_bandwidth(*, device: str = "cuda", megabytes: int = 256, repeats: int = 5) -> dict[str, Any]:
    """Device-to-host copy bandwidth (bytes/s) of a device buffer into pageable host memory, via ONNX Runtime.

    This is the bound a decode whose output is copied to host memory meets:
    showers/s <= bandwidth / bytes per shower. Pinned host memory (not
    reachable from ONNX Runtime's Python API) can be faster; it is not measured here.
    """
    import onnxruntime as ort

    n = megabytes * 2**20 // 4
    source = ort.OrtValue.ortvalue_from_shape_and_type((n,), np.float32, device, 0)
    timing = time_calls(source.numpy, min_time=0.0, min_calls=repeats)
    return {"bytes_per_s": 4 * n / timing["best_s"], "median_bytes_per_s": 4 * n / timing["median_s"],
            "bytes": 4 * n, "host_memory": "pageable", "source": "OrtValue.numpy()"}


def compute_limit(threads: int, *, size: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """The CPU sgemm limit on ``threads`` threads: the best of numpy's and ONNX Runtime's large matmul."""
    numpy_limit = sgemm_limit(threads, size=size, repeats=repeats)
    ort_limit = matmul_limit(threads, size=size, repeats=repeats)
    best = numpy_limit
    if ort_limit is not None and ort_limit["flop_per_s"] > numpy_limit["flop_per_s"]:
        best = ort_limit
    return {
        "flop_per_s": best["flop_per_s"],
        "source": best["source"],
        "threads": threads,
        "size": size,
        "numpy": numpy_limit,
        "onnxruntime": ort_limit,
    }


# --- the work ------------------------------------------------------------------------------

def _node_flops(op: str, in_shapes: list[tuple[int, ...] | None], out_shape: tuple[int, ...] | None) -> float | None:
    """Multiply-add FLOPs (2 per MAC) of one node from its real shapes; None if not countable."""
    if out_shape is None or not in_shapes or in_shapes[0] is None:
        return None
    out_size = math.prod(out_shape)
    if op in ("Conv", "QLinearConv", "ConvInteger"):
        weight = in_shapes[3] if op == "QLinearConv" else in_shapes[1]
        if weight is None:
            return None
        return 2.0 * out_size * math.prod(weight[1:])
    if op == "ConvTranspose":
        weight = in_shapes[1]
        if weight is None:
            return None
        return 2.0 * math.prod(in_shapes[0]) * math.prod(weight[1:])
    # MatMul-like: A is [..., M, K] (or [..., K, M] when transposed); the output
    # is [..., M, N]; K is A's size over the output's rows.
    a = in_shapes[0]
    if len(a) == 1:
        k = a[0]
    else:
        rows = math.prod(out_shape[:-1]) if len(out_shape) > 1 else 1
        a_batch = math.prod(a[:-2]) if len(a) > 2 else 1
        out_batch = math.prod(out_shape[:-2]) if len(out_shape) > 2 else 1
        # A broadcast over output batch dims holds fewer rows than the output.
        rows = rows // out_batch * a_batch if out_batch else rows
        if rows == 0:
            return 0.0
        k = math.prod(a) // rows
    return 2.0 * out_size * k


def _graph_flops(model: Any, feeds: dict[str, np.ndarray]) -> tuple[float, dict[str, float], list[str]]:
    import onnx
    import onnxruntime as ort

    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:  # Constant nodes are weights too
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(attr.t.dims)
    wanted = sorted({name for node in graph.node if node.op_type in _FLOP_OPS
                     for name in (*node.input, *node.output) if name and name not in shapes})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted if n not in existing)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, feeds)
    shapes.update({n: tuple(v.shape) for n, v in zip(names, values)})
    total = 0.0
    by_op: dict[str, float] = {}
    uncounted: list[str] = []
    for node in graph.node:
        if node.op_type not in _FLOP_OPS:
            continue
        flops = _node_flops(node.op_type, [shapes.get(n) for n in node.input],
                            shapes.get(node.output[0]))
        if flops is None:
            uncounted.append(node.name or node.op_type)
            continue
        total += flops
        by_op[node.op_type] = by_op.get(node.op_type, 0.0) + flops
    return total, by_op, uncounted


def model_flops(path: str | os.PathLike[str], *, sidecar: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """FLOPs per shower of a decoder: 2 per multiply-add of its MatMul/Gemm/Conv nodes.

    The graph is run at two batch sizes with every such node's inputs and
    outputs exposed, so the count uses real shapes (whatever Reshape or Shape
    arithmetic produced them); the difference divided by the batch difference
    is the per-shower cost, free of any work done once per batch. Needs the
    ``onnx`` package (``pip install onnx``). Nodes inside If/Loop subgraphs are
    not counted; element-wise work is not counted (it is not FLOP-bound).
    """
    try:
        import onnx
    except ImportError:
        raise FastsimError("counting model FLOPs needs the onnx package: pip install onnx") from None
    from fastsim.spec import read_spec

    spec = read_spec(path, sidecar)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError/OSError variants
        raise ModelError(f"model {str(path)!r} cannot be read as ONNX: {exc}") from None
    counts = {}
    for batch in (2, 4):
        feeds = decode_inputs(spec, batch, seed=0)
        counts[batch] = _graph_flops(model, feeds)
    per_shower = (counts[4][0] - counts[2][0]) / 2
    by_op = {op: (counts[4][1].get(op, 0.0) - counts[2][1].get(op, 0.0)) / 2 for op in counts[4][1]}
    return {
        "flops_per_shower": per_shower,
        "by_op": by_op,
        "per_batch_flops": counts[2][0] - 2 * per_shower,
        "uncounted_nodes": counts[4][2],
        "n_voxels": spec.n_voxels,
    }


# --- decoding ------------------------------------------------------------------------------

def decode_inputs(spec: Any, batch: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for one decoder run: standard-normal latents and conditions drawn over the spec's range."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, spec.latent_dim), dtype=np.float32)
    columns = []
    for cond in spec.conditions:
        u = rng.random(batch)
        if cond.sampling == "log-uniform":
            columns.append(np.exp(np.log(cond.min) + u * (np.log(cond.max) - np.log(cond.min))))
        else:
            columns.append(cond.min + u * (cond.max - cond.min))
    conditions = np.stack(columns, axis=1).astype(np.float32)
    return {spec.io_names["z"]: z, spec.io_names["conditions"]: conditions}


def variant_path(path: str | os.PathLike[str], precision: str) -> Path:
    """The file of a precision variant: ``NAME.onnx`` (fp32), ``NAME-int8.onnx``, ``NAME-fp16.onnx``."""
    if precision not in PRECISIONS:
        raise FastsimError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    path = Path(path)
    if precision == "fp32":
        return path
    return path.with_name(f"{path.stem}-{precision}{path.suffix}")


@dataclass
class DecodePoint:
    """One point of a sweep: a model variant at one batch size and thread count (None where skipped)."""

    precision: str
    threads: int | None
    batch_size: int
    showers_per_s: float | None = None
    us_per_shower: float | None = None
    best_showers_per_s: float | None = None
    calls: int = 0
    mode: str = "iobinding"
    fraction_of_limit: float | None = None
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _output_bytes(spec: ModelSpec) -> int:
    return spec.n_voxels * (2 if spec.output.dtype == "float16" else 4)


def _available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def measure_decode(session: Any, spec: Any, batch: int, *, mode: str = "iobinding",
                   output_device: str = "cpu", min_time: float = 0.3, seed: int = 0) -> dict[str, float]:
    """Time one session at one batch size: ``run`` (numpy in, new array out) or ``iobinding``.

    ``iobinding`` binds the inputs and a preallocated output buffer once, as a
    generator that reuses its buffers does; ``run`` allocates the output per
    call. With ``output_device="cuda"`` the output is a preallocated device
    buffer of fixed shape that never leaves the GPU (the "keep on device"
    path); ``"cpu"`` copies every batch to host memory.
    """
    feeds = decode_inputs(spec, batch, seed=seed)
    out_name = spec.io_names["showers"]
    dtype = np.float16 if spec.output.dtype == "float16" else np.float32
    if mode == "run":
        fn = lambda: session.run([out_name], feeds)  # noqa: E731
    elif mode == "iobinding":
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        if output_device == "cpu":
            out = np.empty((batch, spec.n_voxels), dtype)
            binding.bind_output(out_name, "cpu", 0, dtype, out.shape, out.ctypes.data)
        else:
            import onnxruntime as ort

            device_out = ort.OrtValue.ortvalue_from_shape_and_type((batch, spec.n_voxels), dtype, output_device, 0)
            binding.bind_ortvalue_output(out_name, device_out)
        fn = lambda: session.run_with_iobinding(binding)  # noqa: E731
    else:
        raise FastsimError(f"mode: expected 'run' or 'iobinding', got {mode!r}")
    timing = time_calls(fn, min_time=min_time)
    return {
        "showers_per_s": batch / timing["median_s"],
        "best_showers_per_s": batch / timing["best_s"],
        "us_per_shower": 1e6 * timing["median_s"] / batch,
        "calls": timing["calls"],
    }


def sweep(
    model: str | os.PathLike[str],
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    threads: Sequence[int] | None = None,
    precisions: Sequence[str] = ("fp32",),
    device: str = "cpu",
    mode: str = "iobinding",
    output_device: str = "cpu",
    min_time: float = 0.3,
    limits: dict[int, float] | None = None,
    flops_per_shower: float | None = None,
    max_memory: int | None = None,
    progress: Callable[[DecodePoint], None] | None = None,
) -> list[DecodePoint]:
    """Decode throughput over precision x threads x batch size for one model.

    Sessions come from :func:`fastsim.session.make_session`, as ``fastsim
    generate`` builds them. ``limits`` maps a thread count to its FLOP/s limit;
    with ``flops_per_shower`` each point gets ``fraction_of_limit``. Batch sizes
    whose output and intermediates would not fit in ``max_memory`` bytes
    (default: half the available memory) are recorded as skipped, not run.
    """
    from fastsim.models import resolve_model
    from fastsim.session import make_session
    from fastsim.spec import read_spec

    base = resolve_model(model)
    threads = list(threads) if threads else [physical_cores()]
    budget = max_memory if max_memory is not None else _available_memory() // 2
    for precision in precisions:  # every variant must exist before anything is timed
        if not variant_path(base, precision).is_file():
            raise ModelError(f"precision {precision!r}: no variant file {str(variant_path(base, precision))!r} "
                             f"beside {str(base)!r}")
    points: list[DecodePoint] = []
    for precision in precisions:
        path = variant_path(base, precision)
        spec = read_spec(path)
        for n_threads in threads:
            session, provider = make_session(path, device=device, threads=n_threads)
            for batch in batch_sizes:
                # The output plus a few same-sized intermediates, some of them int64.
                need = 8 * batch * _output_bytes(spec)
                point = DecodePoint(precision, n_threads, batch, mode=mode, extra={"provider": provider})
                if need > budget:
                    point.skipped = f"needs ~{need / 2**30:.1f} GiB > budget {budget / 2**30:.1f} GiB"
                else:
                    figures = measure_decode(session, spec, batch, mode=mode, output_device=output_device,
                                             min_time=min_time)
                    for key, value in figures.items():
                        setattr(point, key, value)
                    limit = (limits or {}).get(n_threads)
                    if limit and flops_per_shower:
                        point.fraction_of_limit = figures["showers_per_s"] * flops_per_shower / limit
                points.append(point)
                if progress is not None:
                    progress(point)
            del session
    return points


def _parse_list(text: str | Sequence[Any], name: str, kind: type = int) -> list[Any]:
    """'1,4,16' -> [1, 4, 16], naming the option in the error."""
    items = text.split(",") if isinstance(text, str) else list(text)
    values = []
    for item in items:
        try:
            value = kind(item.strip()) if isinstance(item, str) else kind(item)
        except ValueError:
            value = None
        if value is None or (kind is int and value <= 0):
            raise FastsimError(f"{name}: expected a comma-separated list of positive integers, got {text!r}")
        values.append(value)
    if not values:
        raise FastsimError(f"{name}: expected at least one value, got {text!r}")
    return values


def run(
    model: str | os.PathLike[str] = "default",
    *,
    batch_sizes: Sequence[int] | str = DEFAULT_BATCH_SIZES,
    threads: Sequence[int] | str | None = None,
    precisions: Sequence[str] | str = ("fp32",),
    device: str = "cpu",
    mode: str = "iobinding",
    min_time: float = 0.3,
    limit: bool = True,
    limit_size: int = 2048,
    max_memory: int | None = None,
    generator_n: int = 16384,
    progress: Callable[[DecodePoint], None] | None = None,
) -> dict[str, Any]:
    """The whole ``fastsim bench`` measurement as one JSON-ready document.

    Machine and versions, the model (path, sha256, FLOPs per shower), the
    limits (CPU: sgemm per thread count; GPU: matmul and device-to-host copy
    bandwidth), the sweep points with their fraction of the limit, and
    (``generator_n`` > 0) the rate of ``generate(generator_n)`` per thread count.
    """
    from fastsim.models import resolve_model
    from fastsim.spec import read_spec

    batch_sizes = _parse_list(batch_sizes, "batch sizes")
    threads = _parse_list(threads, "threads") if threads else sorted({1, physical_cores()})
    precisions = [p.strip() for p in precisions.split(",")] if isinstance(precisions, str) else list(precisions)
    for precision in precisions:
        variant_path("x.onnx", precision)  # validates the name
    if device not in ("cpu", "cuda"):
        raise FastsimError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    path = resolve_model(model)
    spec = read_spec(path)
    doc: dict[str, Any] = {
        "kind": "fastsim-bench/1",
        "machine": machine_info(),
        "model": {"path": str(path), "name": spec.name, "version": spec.version, "sha256": file_sha256(path),
                  "n_voxels": spec.n_voxels},
        "settings": {"batch_sizes": batch_sizes, "threads": threads, "precisions": precisions, "device": device,
                     "mode": mode, "min_time_s": min_time,
                     "statistic": "throughput: median of calls; limits: best of repeats"},
    }
    try:
        flops = model_flops(path)
        doc["model"]["flops_per_shower"] = flops["flops_per_shower"]
        doc["model"]["flops_by_op"] = flops["by_op"]
    except FastsimError as exc:
        flops = None
        doc["model"]["flops_per_shower"] = None
        doc["model"]["flops_note"] = str(exc)
    limits: dict[int, float] = {}
    if limit and device == "cpu":
        doc["limits"] = {str(t): compute_limit(t, size=limit_size) for t in threads}
        limits = {t: doc["limits"][str(t)]["flop_per_s"] for t in threads}
    elif limit:
        doc["limits"] = {"matmul": matmul_limit(None, size=limit_size, device=device),
                         "device_to_host": copy_bandwidth(device=device)}
        gpu_flops = (doc["limits"]["matmul"] or {}).get("flop_per_s")
        limits = {t: gpu_flops for t in threads} if gpu_flops else {}
    points = sweep(path, batch_sizes=batch_sizes, threads=threads, precisions=precisions, device=device,
                   mode=mode, min_time=min_time, limits=limits,
                   flops_per_shower=flops["flops_per_shower"] if flops else None,
                   max_memory=max_memory, progress=progress)
    doc["points"] = [p.to_dict() for p in points]
    measured = [p for p in points if p.showers_per_s]
    if measured:
        best = max(measured, key=lambda p: p.showers_per_s or 0.0)  # all measured: > 0
        doc["best"] = best.to_dict()
    if generator_n:
        doc["generator"] = [generator_rate(path, threads=t, device=device, n=generator_n, min_time=min_time,
                                           limit=limits.get(t),
                                           flops_per_shower=flops["flops_per_shower"] if flops else None)
                            for t in threads]
    doc["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return doc


def generator_rate(model: str | os.PathLike[str], *, threads: int, device: str = "cpu", n: int = 16384,
                   min_time: float = 0.3, limit: float | None = None,
                   flops_per_shower: float | None = None) -> dict[str, Any]:
    """Showers/s of ``fastsim.load(model, threads=...).generate(n)`` in memory: what a user gets.

    Unlike a sweep point (one ONNX Runtime call of a given size), this is the
    runtime's own path: prior sampling, conditions, decoding (on the CPU in
    small runs spread over ``threads`` workers) and assembling the output.
    """
    from fastsim.generator import load

    generator = load(model, device=device, threads=threads)
    timing = time_calls(lambda: generator.generate(n, seed=0), min_time=min_time, warmup=1)
    rate = n / timing["median_s"]
    return {"threads": threads, "n": n, "showers_per_s": rate, "us_per_shower": 1e6 / rate,
            "fraction_of_limit": rate * flops_per_shower / limit if limit and flops_per_shower else None,
            "provider": generator.provider, "calls": timing["calls"]}


def format_table(points: Iterable[DecodePoint]) -> str:
    """A Markdown table of sweep points: showers/s, µs/shower and fraction of the limit."""
    lines = [
        "| precision | threads | batch | showers/s | µs/shower | fraction of limit |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        if p.skipped or p.showers_per_s is None:
            lines.append(f"| {p.precision} | {p.threads} | {p.batch_size} | skipped: {p.skipped} | | |")
            continue
        fraction = "n/a" if p.fraction_of_limit is None else f"{p.fraction_of_limit:.2f}"
        lines.append(f"| {p.precision} | {p.threads} | {p.batch_size} | {p.showers_per_s:,.0f} "
                     f"| {p.us_per_shower:.2f} | {fraction} |")
    return "\n".join(lines)
