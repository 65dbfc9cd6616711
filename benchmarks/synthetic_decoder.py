"""A synthetic decoder with the bundled model's shape, for developing and smoke-testing benchmarks.

It honours the model contract (inputs ``z`` [N, latent_dim] and ``conditions``
[N, 1] in MeV, output ``showers`` [N, n_voxels] in MeV, ``fastsim.spec`` in the
metadata) and has the structure the trained decoder is expected to have: an MLP
on (z, normalised log E) with three heads — total energy fraction, a softmax
over layers and a softmax over the voxels of each layer — multiplied together
and by the incident energy, then the 15.15 keV voxel threshold. Its weights are
random (seeded): it is shaped like the real model, so it costs what the real
model costs, but its showers mean nothing.

    python benchmarks/synthetic_decoder.py /tmp/synthetic.onnx --hidden 256,512
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

__all__ = ["build_decoder"]

THRESHOLD_MEV = 0.01515


def build_decoder(
    path: str | Path,
    *,
    latent_dim: int = 16,
    hidden: tuple[int, ...] = (256, 512),
    n_layers: int = 45,
    n_alpha: int = 16,
    n_radial: int = 9,
    seed: int = 0,
    name: str = "synthetic-calo",
) -> Path:
    """Write a contract-honouring, CaloChallenge-shaped decoder to ``path`` and return the path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fastsim.geometry import CylindricalGeometry, Layer
    from fastsim.spec import ConditionSpec, ModelSpec, OutputSpec, embed_spec

    rng = np.random.default_rng(seed)
    n_per_layer = n_alpha * n_radial
    n_voxels = n_layers * n_per_layer
    init: list = []

    def weight(name: str, fan_in: int, fan_out: int) -> tuple[str, str]:
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(fan_out)).astype(np.float32)
        init.extend([numpy_helper.from_array(w, f"{name}.W"), numpy_helper.from_array(b, f"{name}.b")])
        return f"{name}.W", f"{name}.b"

    def const(name: str, value) -> str:
        init.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    log_lo, log_hi = np.log(1_000.0), np.log(1_000_000.0)
    nodes = [
        helper.make_node("Log", ["conditions"], ["logE"]),
        helper.make_node("Sub", ["logE", const("logE.mean", np.float32((log_lo + log_hi) / 2))], ["logE.c"]),
        helper.make_node("Div", ["logE.c", const("logE.half", np.float32((log_hi - log_lo) / 2))], ["cond.n"]),
        helper.make_node("Concat", ["z", "cond.n"], ["h0"], axis=1),
    ]
    width, previous = latent_dim + 1, "h0"
    for i, units in enumerate(hidden, start=1):
        w, b = weight(f"fc{i}", width, units)
        nodes += [
            helper.make_node("Gemm", [previous, w, b], [f"fc{i}.y"]),
            helper.make_node("Relu", [f"fc{i}.y"], [f"h{i}"]),
        ]
        width, previous = units, f"h{i}"
    wu, bu = weight("head.u", width, 1)
    wl, bl = weight("head.layer", width, n_layers)
    wv, bv = weight("head.voxel", width, n_voxels)
    nodes += [
        helper.make_node("Gemm", [previous, wu, bu], ["u.logit"]),
        helper.make_node("Sigmoid", ["u.logit"], ["u"]),
        helper.make_node("Mul", ["u", "conditions"], ["e.total"]),
        helper.make_node("Gemm", [previous, wl, bl], ["layer.logit"]),
        helper.make_node("Softmax", ["layer.logit"], ["layer.frac"], axis=1),
        helper.make_node("Reshape", ["layer.frac", const("shape.layer", np.array([-1, n_layers, 1], np.int64))],
                         ["layer.frac3"]),
        helper.make_node("Gemm", [previous, wv, bv], ["voxel.logit"]),
        helper.make_node("Reshape", ["voxel.logit",
                                     const("shape.voxel", np.array([-1, n_layers, n_per_layer], np.int64))],
                         ["voxel.logit3"]),
        helper.make_node("Softmax", ["voxel.logit3"], ["voxel.frac3"], axis=2),
        helper.make_node("Mul", ["voxel.frac3", "layer.frac3"], ["frac3"]),
        helper.make_node("Reshape", ["frac3", const("shape.flat", np.array([-1, n_voxels], np.int64))], ["frac"]),
        helper.make_node("Mul", ["frac", "e.total"], ["raw"]),
        helper.make_node("Less", ["raw", const("threshold", np.float32(THRESHOLD_MEV))], ["below"]),
        helper.make_node("Where", ["below", const("zero", np.float32(0.0)), "raw"], ["showers"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", latent_dim]),
            helper.make_tensor_value_info("conditions", TensorProto.FLOAT, ["N", 1]),
        ],
        [helper.make_tensor_value_info("showers", TensorProto.FLOAT, ["N", n_voxels])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fastsim-bench")
    model.ir_version = 9
    edges = tuple(4.65 * k for k in range(n_radial + 1))
    geometry = CylindricalGeometry(layers=tuple(Layer(r_edges=edges, n_alpha=n_alpha) for _ in range(n_layers)))
    spec = ModelSpec(
        name=name,
        version="0.0.0",
        latent_dim=latent_dim,
        conditions=(ConditionSpec("incident_energy", "MeV", 1_000.0, 1_000_000.0, "log-uniform"),),
        output=OutputSpec("showers", "MeV", n_voxels, geometry.to_dict()),
        training={"data": "none: random weights for benchmarking", "hidden": list(hidden), "seed": seed},
        producer="benchmarks/synthetic_decoder.py",
    )
    embed_spec(model, spec)
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the .onnx file")
    parser.add_argument("--hidden", default="256,512", help="hidden layer widths, comma-separated")
    parser.add_argument("--latent-dim", type=int, default=16, help="latent dimension")
    parser.add_argument("--seed", type=int, default=0, help="weight seed")
    args = parser.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    print(build_decoder(args.output, latent_dim=args.latent_dim, hidden=hidden, seed=args.seed))


if __name__ == "__main__":
    main()
