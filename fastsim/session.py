"""The one place an ONNX Runtime session is built: providers, threads, no silent fallback.

Devices map to execution providers: ``cpu`` -> CPU, ``cuda`` -> CUDA,
``tensorrt`` -> TensorRT (with CUDA for the nodes TensorRT does not take).
``auto`` picks CUDA when this onnxruntime build offers it, else CPU; TensorRT
is only used when asked for, because building its engines takes minutes.

Asking for a GPU device that is not there is a :class:`~fastsim.errors.ProviderError`
listing the available providers. For GPU sessions ONNX Runtime's CPU fallback
is disabled and the provider actually in use is checked after creation, so a
missing CUDA library never turns silently into a CPU run.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping

from fastsim._util import ort_message, positive_int
from fastsim.errors import FastsimWarning, ModelError, ProviderError

__all__ = ["DEVICES", "MAX_THREADS", "available_providers", "make_session", "physical_cores", "provider_chain"]

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
#: More threads than any machine has cores for (and than ONNX Runtime's int32 takes).
MAX_THREADS = 4096
_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}
_OPTIMIZATION = ("disable", "basic", "extended", "all")


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once): the default thread count."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    try:
        with open("/proc/cpuinfo") as fh:
            block: dict[str, str] = {}
            for line in [*fh, "\n"]:
                if line.strip():
                    key, _, value = line.partition(":")
                    block[key.strip()] = value.strip()
                    continue
                if block and int(block.get("processor", -1)) in allowed:
                    cores.add((block.get("physical id", "0"), block.get("core id", block.get("processor"))))
                block = {}
    except (OSError, ValueError):
        pass
    return max(1, len(cores) or len(allowed))


def provider_chain(device: str) -> list[str]:
    """The providers a device asks for, checked against the available ones."""
    if device not in DEVICES:
        raise ProviderError(f"device: expected one of {list(DEVICES)}, got {device!r}")
    available = available_providers()
    if device == "auto":
        return ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else ["CPUExecutionProvider"]
    wanted = _PROVIDERS[device]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ProviderError(
            f"device {device!r} needs {', '.join(missing)}, which this onnxruntime does not offer; "
            f"available providers: {', '.join(available)}"
            + ("" if device == "cpu" else " (install fastsim[gpu] in an environment without the CPU-only onnxruntime)")
        )
    return wanted


def _options(threads: int | None, optimization: str, gpu: bool, config: Mapping[str, str] | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = positive_int(threads, "threads", maximum=MAX_THREADS, error=ProviderError)
    # One request at a time: inter-op parallelism only adds contention for a feed-forward decoder.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimization not in _OPTIMIZATION:
        raise ProviderError(f"optimization: expected one of {list(_OPTIMIZATION)}, got {optimization!r}")
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    # ONNX Runtime's own log lines would duplicate the one-line errors raised from here.
    options.log_severity_level = 4
    if gpu:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, str(value))
    return options


def _create(path: str, providers: list[str], options: Any,
            provider_options: Mapping[str, Mapping[str, Any]] | None) -> Any:
    import onnxruntime as ort

    chain = [(p, dict((provider_options or {}).get(p, {}))) for p in providers]
    return ort.InferenceSession(path, sess_options=options, providers=chain)


def make_session(
    path: str | os.PathLike[str],
    device: str = "auto",
    threads: int | None = None,
    *,
    optimization: str = "all",
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    config: Mapping[str, str] | None = None,
) -> tuple[Any, str]:
    """Build an ``onnxruntime.InferenceSession`` for ``path`` on ``device``.

    Returns ``(session, provider)``, the provider being the one ONNX Runtime
    actually put first. ``threads`` sets the intra-op thread count (None: ONNX
    Runtime's default, one per physical core); ``provider_options`` maps a
    provider name to its options; ``config`` adds session config entries.
    """
    from fastsim.models import external_data_files

    path = os.fspath(path)
    external_data_files(path)  # external data outside the model's folder is refused before ONNX Runtime reads it
    providers = provider_chain(device)
    gpu = providers[0] != "CPUExecutionProvider"
    options = _options(threads, optimization, gpu, config)
    try:
        session = _create(path, providers, options, provider_options)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        if gpu and device == "auto":
            # Listed but not loadable (e.g. CUDA libraries missing): auto says so and uses the CPU.
            warnings.warn(f"device 'auto': {providers[0]} could not start ({ort_message(exc)}); using the CPU",
                          FastsimWarning, stacklevel=2)
            return make_session(path, "cpu", threads, optimization=optimization,
                                provider_options=provider_options, config=config)
        if gpu:
            raise ProviderError(f"device {device!r}: {providers[0]} could not start a session: {ort_message(exc)}; "
                                f"available providers: {', '.join(available_providers())}") from None
        raise ModelError(f"model {path!r} cannot be loaded by ONNX Runtime: {ort_message(exc)}") from None
    used = session.get_providers()[0]
    if used != providers[0]:
        raise ProviderError(f"device {device!r}: asked for {providers[0]} but ONNX Runtime used {used}; "
                            f"available providers: {', '.join(available_providers())}")
    return session, used
