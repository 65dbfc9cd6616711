"""int8 variant of an exported decoder: ONNX Runtime dynamic quantisation, spec kept.

``quantize_model(src, dst)`` rewrites the decoder's matrix products (MatMul and
Gemm whose weights are constants) to int8 weights with per-batch dynamically
quantised activations (``DynamicQuantizeLinear`` + ``MatMulInteger``), the form
ONNX Runtime's CPU provider runs with VNNI/AVX-512 integer kernels. Everything
else — condition normalisation, the softmaxes, the MeV scaling and threshold —
stays float32, so the inputs and outputs and the contract are unchanged.

The ``fastsim.spec`` document is carried over with ``training.precision`` set
to ``"int8"`` and a ``quantization`` block saying how and from what; the
parent's ``metrics`` are dropped because they no longer describe this file —
measure the variant's fidelity with ``fastsim validate``. The result is
written to a temporary name and renamed, so ``src`` may equal ``dst``
(``python -m training export RUN -o X.onnx --precision int8`` does that).

    python -m training.quantize exported/calo-electron.onnx exported/calo-electron-int8.onnx
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from fastsim._util import atomic_path
from fastsim.models import file_sha256

__all__ = ["QUANTIZED_OPS", "quantize_model"]

#: The node types quantised: the matrix products carry nearly all the FLOPs.
QUANTIZED_OPS = ("MatMul", "Gemm")
_IR_VERSION = 9  # as the fp32 export: loadable by ONNX Runtime releases before 1.20
_QUANTIZED_NODE_TYPES = {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QuantizeLinear", "ConvInteger",
                         "QLinearConv", "DequantizeLinear"}


@contextlib.contextmanager
def _quiet_preprocess_hint():
    """Hide the quantiser's root-logger advice to pre-process: a decoder MLP has nothing to gain from it."""
    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize_model(src: str | os.PathLike, dst: str | os.PathLike, *, per_channel: bool = True,
                   reduce_range: bool = True) -> Path:
    """Write the int8 dynamic-quantised variant of decoder ``src`` to ``dst``; returns ``dst``.

    ``per_channel`` gives each output column of a weight matrix its own scale
    (the voxel head's columns span very different logit ranges, so this is the
    default); ``reduce_range`` (the default) uses 7-bit weights: on CPUs without
    VNNI (AVX2 only) the 8-bit u8*s8 product saturates its int16 sums, which
    put single showers' totals 20 % off on such a machine; the file may run
    anywhere, so it must be right everywhere. ``reduce_range=False`` keeps
    full 8-bit weights for hosts known to have VNNI.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from fastsim.spec import embed_spec, read_spec

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ValueError(f"model: {os.fspath(src)!r} is not a file")
    spec = read_spec(src)
    # The spec may already say int8 (the export writes the final spec before
    # quantising); the graph is what tells an fp32 decoder from a reduced one.
    graph = onnx.load(os.fspath(src), load_external_data=False).graph
    reduced = sorted({n.op_type for n in graph.node if n.op_type in _QUANTIZED_NODE_TYPES}
                     | {"float16 weights" for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16})
    if reduced or spec.training.get("precision") == "fp16":
        raise ValueError(f"model: quantising needs an fp32 decoder; {os.fspath(src)!r} already has "
                         f"{', '.join(reduced) or 'fp16 precision'}")
    parent_sha = file_sha256(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst, suffix=".int8.partial.onnx") as tmp:
        with _quiet_preprocess_hint():
            quantize_dynamic(
                os.fspath(src), os.fspath(tmp),
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                # Only products with a constant weight: activation x activation
                # products would need both sides quantised per batch, for no gain.
                extra_options={"MatMulConstBOnly": True},
            )
        model = onnx.load(os.fspath(tmp))
        model.ir_version = min(model.ir_version, _IR_VERSION)
        training = dict(spec.training)
        training["precision"] = "int8"
        training["quantization"] = {
            "method": "onnxruntime.quantization.quantize_dynamic",
            "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
            "activations": "uint8, dynamic per batch",
            "reduce_range": reduce_range,
            "ops": list(QUANTIZED_OPS),
            "parent": {"file": src.name, "sha256": parent_sha, "metrics": dict(spec.metrics)},
        }
        embed_spec(model, spec.replace(training=training, metrics={}))
        onnx.checker.check_model(model)
        onnx.save(model, os.fspath(tmp))
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the fp32 decoder (.onnx)")
    parser.add_argument("output", help="where to write the int8 variant (.onnx)")
    parser.add_argument("--per-tensor", action="store_true", help="one scale per weight matrix, not per column")
    parser.add_argument("--full-range", action="store_true",
                        help="8-bit weights (default: 7-bit, exact on CPUs without VNNI too); only for VNNI hosts")
    args = parser.parse_args(argv)
    from fastsim.errors import FastsimError

    try:
        out = quantize_model(args.source, args.output, per_channel=not args.per_tensor,
                             reduce_range=not args.full_range)
    except (ValueError, FastsimError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, int8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
