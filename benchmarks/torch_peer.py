"""The PyTorch-eager peer: the same decoder, the same weights, run op by op by PyTorch.

:class:`TorchDecoder` reads an ONNX decoder and executes its graph with PyTorch
eager ops: every initializer becomes a torch tensor once, and each node is one
torch call (Gemm is ``torch.addmm``, as ``nn.Linear`` runs it; MatMul is
``torch.matmul``; Softmax is ``torch.softmax``; and so on). This is what an
``nn.Module`` with the same layers does in ``forward``, so it is the fair eager
peer of ONNX Runtime running the same file — no graph fusion, no compilation,
the same float32 arithmetic — and it works on any exported decoder without the
training code or a checkpoint. :func:`check_parity` proves it computes the same
showers as ONNX Runtime before any timing is trusted.

The interpreter covers the operators a torch-exported MLP/conv decoder uses;
an unsupported operator is an error naming it, never a silent approximation.
PyTorch has no uint32 arithmetic, so uint32 tensors (the voxel-noise hash) are
held in int64 and every Mul/Add/Sub/left shift on them is masked to 32 bits --
what a torch module computing the same hash does (``training.model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["TorchDecoder", "check_parity"]

_DTYPES = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _reduce(fn: Callable) -> Callable:
    def op(a, x, axes=None):
        axes = _ints(axes) if axes is not None else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        if axes is None or len(axes) == 0:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=tuple(axes), keepdim=keep)
    return op


def _slice(a, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st != 1:
            raise NotImplementedError("Slice with step != 1")
        index[ax] = slice(s, min(e, x.shape[ax]) if e >= 0 else e)
    return x[tuple(index)]


def _reshape(a, x, shape):
    shape = _ints(shape)
    shape = [x.shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _split(a, x, split=None):
    axis = a.get("axis", 0)
    sizes = _ints(split) if split is not None else a.get("split")
    if sizes is None:
        n = a["num_outputs"]
        size = -(-x.shape[axis] // n)
        return list(torch.split(x, size, dim=axis))
    return list(torch.split(x, sizes, dim=axis))


def _gemm(a, x, w, c=None):
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if c is None:
        return torch.mm(x, w) if alpha == 1.0 else alpha * torch.mm(x, w)
    return torch.addmm(c, x, w, beta=beta, alpha=alpha)


def _clip(a, x, lo=None, hi=None):
    lo = a.get("min") if lo is None else lo
    hi = a.get("max") if hi is None else hi
    return torch.clamp(x, min=lo, max=hi)


def _squeeze(a, x, axes=None):
    axes = _ints(axes) if axes is not None else a.get("axes")
    if axes is None:
        return x.squeeze()
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _unsqueeze(a, x, axes=None):
    axes = _ints(axes) if axes is not None else a["axes"]
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


def _batchnorm(a, x, scale, bias, mean, var):
    return torch.nn.functional.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def _layernorm(a, x, scale, bias=None):
    axis = a.get("axis", -1) % x.dim()
    return torch.nn.functional.layer_norm(x, x.shape[axis:], scale, bias, a.get("epsilon", 1e-5))


def _conv(a, x, w, b=None):
    dims = x.dim() - 2
    fn = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[dims]
    pads = a.get("pads", [0] * 2 * dims)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or pads[:dims] != pads[dims:]:
        raise NotImplementedError("Conv with auto_pad or asymmetric pads")
    return fn(x, w, b, a.get("strides", 1), pads[:dims], a.get("dilations", 1), a.get("group", 1))


def _conv_transpose(a, x, w, b=None):
    dims = x.dim() - 2
    fn = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d,
          3: torch.nn.functional.conv_transpose3d}[dims]
    pads = a.get("pads", [0] * 2 * dims)
    if pads[:dims] != pads[dims:]:
        raise NotImplementedError("ConvTranspose with asymmetric pads")
    return fn(x, w, b, a.get("strides", 1), pads[:dims], a.get("output_padding", 0), a.get("group", 1),
              a.get("dilations", 1))


def _fold(fn: Callable, xs):
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return out


_UINT32 = 12  # onnx.TensorProto.UINT32
_U32_MASK = 0xFFFFFFFF
_U32_WRAPPING = {"Mul", "Add", "Sub", "BitShift"}  # results masked back to 32 bits
_U32_PRESERVING = _U32_WRAPPING | {"Div", "Split", "Slice", "Reshape", "Identity", "Expand", "Concat", "Squeeze",
                                   "Unsqueeze", "Transpose", "Flatten"}


def _masked(fn: Callable) -> Callable:
    return lambda a, *xs: fn(a, *xs) & _U32_MASK


def _u32_mul(a, x, y):
    # Split y so no int64 product passes 2^63 (signed overflow is undefined in C++).
    y_lo, y_hi = y & 0xFFFF, (y >> 16) & 0xFFFF
    return (x * y_lo + (((x * y_hi) & 0xFFFF) << 16)) & _U32_MASK


def _cast_u32(a, x):
    return x.to(torch.int64) & _U32_MASK


def _constant_of_shape(a, shape):
    from onnx import numpy_helper

    value = np.array(numpy_helper.to_array(a["value"])) if "value" in a else np.zeros(1, np.float32)
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=torch.from_numpy(value).dtype)


_OPS: dict[str, Callable] = {
    "Identity": lambda a, x: x,
    "Add": lambda a, x, y: torch.add(x, y),
    "Sub": lambda a, x, y: torch.sub(x, y),
    "Mul": lambda a, x, y: torch.mul(x, y),
    "Div": lambda a, x, y: torch.div(x, y) if x.is_floating_point() else torch.div(x, y, rounding_mode="trunc"),
    "Pow": lambda a, x, y: torch.pow(x, y),
    "Neg": lambda a, x: torch.neg(x),
    "Abs": lambda a, x: torch.abs(x),
    "Sign": lambda a, x: torch.sign(x),
    "Reciprocal": lambda a, x: torch.reciprocal(x),
    "Exp": lambda a, x: torch.exp(x),
    "Log": lambda a, x: torch.log(x),
    "Sqrt": lambda a, x: torch.sqrt(x),
    "Floor": lambda a, x: torch.floor(x),
    "Ceil": lambda a, x: torch.ceil(x),
    "Erf": lambda a, x: torch.erf(x),
    "Cos": lambda a, x: torch.cos(x),
    "Sin": lambda a, x: torch.sin(x),
    "Round": lambda a, x: torch.round(x),
    "Mod": lambda a, x, y: torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y),
    "Relu": lambda a, x: torch.relu(x),
    "LeakyRelu": lambda a, x: torch.nn.functional.leaky_relu(x, a.get("alpha", 0.01)),
    "Elu": lambda a, x: torch.nn.functional.elu(x, a.get("alpha", 1.0)),
    "Selu": lambda a, x: torch.selu(x),
    "Celu": lambda a, x: torch.celu(x, a.get("alpha", 1.0)),
    "Sigmoid": lambda a, x: torch.sigmoid(x),
    "HardSigmoid": lambda a, x: torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0),
    "Tanh": lambda a, x: torch.tanh(x),
    "Softplus": lambda a, x: torch.nn.functional.softplus(x),
    "Gelu": lambda a, x: torch.nn.functional.gelu(x, approximate=a.get("approximate", "none")),
    "Softmax": lambda a, x: torch.softmax(x, dim=a.get("axis", -1)),
    "LogSoftmax": lambda a, x: torch.log_softmax(x, dim=a.get("axis", -1)),
    "MatMul": lambda a, x, y: torch.matmul(x, y),
    "Gemm": _gemm,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batchnorm,
    "LayerNormalization": _layernorm,
    "Reshape": _reshape,
    "Flatten": lambda a, x: x.reshape(int(np.prod(x.shape[: a.get("axis", 1)])), -1),
    "Transpose": lambda a, x: x.permute(a["perm"]) if "perm" in a else x.permute(*reversed(range(x.dim()))),
    "Concat": lambda a, *xs: torch.cat(xs, dim=a["axis"]),
    "Split": _split,
    "Slice": _slice,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Gather": lambda a, x, i: torch.index_select(x, a.get("axis", 0), i.reshape(-1)).reshape(
        (*x.shape[: a.get("axis", 0) % x.dim()], *i.shape, *x.shape[a.get("axis", 0) % x.dim() + 1:])),
    "Shape": lambda a, x: torch.tensor(x.shape, dtype=torch.int64),
    "Size": lambda a, x: torch.tensor(x.numel(), dtype=torch.int64),
    "Cast": lambda a, x: x.to(_DTYPES[a["to"]]),
    "Clip": _clip,
    "Where": lambda a, c, x, y: torch.where(c, x, y),
    "Less": lambda a, x, y: torch.lt(x, y),
    "LessOrEqual": lambda a, x, y: torch.le(x, y),
    "Greater": lambda a, x, y: torch.gt(x, y),
    "GreaterOrEqual": lambda a, x, y: torch.ge(x, y),
    "Equal": lambda a, x, y: torch.eq(x, y),
    "Not": lambda a, x: torch.logical_not(x),
    "And": lambda a, x, y: torch.logical_and(x, y),
    "Or": lambda a, x, y: torch.logical_or(x, y),
    "Max": lambda a, *xs: _fold(torch.maximum, xs),
    "Min": lambda a, *xs: _fold(torch.minimum, xs),
    "ThresholdedRelu": lambda a, x: torch.nn.functional.threshold(x, a.get("alpha", 1.0), 0.0),
    "BitShift": lambda a, x, k: x >> k if a["direction"] in (b"RIGHT", "RIGHT") else x << k,
    "Sum": lambda a, *xs: sum(xs[1:], xs[0]),
    "ReduceSum": _reduce(torch.sum),
    "ReduceMean": _reduce(torch.mean),
    "ReduceMax": _reduce(torch.amax),
    "ReduceMin": _reduce(torch.amin),
    "Expand": lambda a, x, shape: x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape)))),
    "Tile": lambda a, x, reps: x.repeat(_ints(reps)),
    "ConstantOfShape": _constant_of_shape,
    "Range": lambda a, s, e, d: torch.arange(s.item(), e.item(), d.item()),
    "CumSum": lambda a, x, axis: torch.cumsum(x, dim=int(axis.item())),
}


class TorchDecoder(torch.nn.Module):
    """An ONNX decoder executed by PyTorch eager, node by node, with the file's own weights."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        graph = model.graph
        self._consts: dict[str, torch.Tensor] = {}
        uint32: set[str] = set()  # names of uint32 values, held as int64

        def constant(name: str, array: np.ndarray) -> None:
            if array.dtype == np.uint32:
                uint32.add(name)
                array = array.astype(np.int64)
            # np.array copies, so the tensor owns writable memory.
            self._consts[name] = torch.from_numpy(np.array(array))

        for t in graph.initializer:
            constant(t.name, numpy_helper.to_array(t))
        self._nodes: list[tuple[str, Callable, dict, list[str], list[str]]] = []
        unsupported = set()
        for node in graph.node:
            if node.op_type == "Constant":
                value = _attrs(node)
                if "value" not in value:
                    raise NotImplementedError(f"Constant node {node.name!r} without a tensor value")
                constant(node.output[0], numpy_helper.to_array(value["value"]))
                continue
            if node.domain not in ("", "ai.onnx") or node.op_type not in _OPS:
                unsupported.add(f"{node.domain or 'ai.onnx'}::{node.op_type}")
                continue
            attrs, fn = _attrs(node), _OPS[node.op_type]
            if node.op_type == "Cast" and attrs["to"] == _UINT32:
                fn = _cast_u32
                uint32.update(node.output)
            elif node.input and node.input[0] in uint32 and node.op_type in _U32_PRESERVING:
                fn = _u32_mul if node.op_type == "Mul" else _masked(fn) if node.op_type in _U32_WRAPPING else fn
                uint32.update(node.output)
            self._nodes.append((node.op_type, fn, attrs, list(node.input), list(node.output)))
        if unsupported:
            raise NotImplementedError(f"the torch peer does not implement: {sorted(unsupported)}")
        initializer_names = {t.name for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in initializer_names]
        self.output_names = [o.name for o in graph.output]
        # Free each intermediate after its last use, as Python frees a module's
        # temporaries in forward(); keeping them all would hold every
        # (N, n_voxels) tensor of the graph at once.
        last_use: dict[str, int] = {}
        for index, (_, _, _, ins, _) in enumerate(self._nodes):
            for name in ins:
                last_use[name] = index
        keep = set(self.output_names) | set(self._consts)
        self._release = [[name for name in set(ins) if name and last_use.get(name) == index and name not in keep]
                         for index, (_, _, _, ins, _) in enumerate(self._nodes)]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        env = dict(self._consts)
        env.update(zip(self.input_names, inputs))
        for (_, fn, attrs, ins, outs), release in zip(self._nodes, self._release):
            result = fn(attrs, *[env[name] if name else None for name in ins])
            if len(outs) == 1:
                env[outs[0]] = result
            else:
                env.update(zip(outs, result))
            for name in release:
                del env[name]
        outputs = tuple(env[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs


def check_parity(path: str | Path, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Run ONNX Runtime and the torch peer on the same feeds; return their largest differences."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[0]
    peer = TorchDecoder(path)
    with torch.inference_mode():
        got = peer(*[torch.from_numpy(feeds[name]) for name in peer.input_names]).numpy()
    scale = np.maximum(np.abs(expected), 1e-6)
    total_exp, total_got = expected.sum(axis=1), got.sum(axis=1)
    return {
        "max_abs_diff": float(np.max(np.abs(got - expected))),
        "max_rel_diff_total": float(np.max(np.abs(total_got - total_exp) / np.maximum(np.abs(total_exp), 1e-6))),
        "max_rel_diff_voxel_above_1MeV": float(np.max(np.where(np.abs(expected) > 1.0,
                                                             np.abs(got - expected) / scale, 0.0))),
    }
