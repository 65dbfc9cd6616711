"""Export a trained run's decoder to a self-describing ONNX file, and check it.

``export(run, output)`` traces :class:`~training.model.PhysicalDecoder` -- the
decoder with the latent prior, condition normalisation, response, threshold
and MeV scaling inside -- to ONNX (opset 17, IR version 9, dynamic batch axis,
inputs ``z`` [N, latent_dim] and ``conditions`` [N, 1] in MeV, output
``showers`` [N, n_voxels] in MeV), writes the ``fastsim.spec`` document into
``metadata_props``, and refuses to publish the file unless

* ``onnx.checker`` accepts it (full check, with shape inference),
* ``fastsim.load`` accepts it (the runtime's own spec-vs-graph validation),
* torch and ONNX Runtime agree on the same z and energies across the
  training range: at most 1e-4 relative on each shower's summed energy,
  1e-5 relative on average and 1e-2 at worst on voxels clear of the threshold
  (fp32 only; reduced precisions report their difference from fp32 instead).

The file is written under a temporary name and renamed only after all checks
pass; an existing file is replaced only when asked (``overwrite=True``, ``--force``),
and the model version is always given by the caller. ``--precision`` picks the
variant: ``fp32``; ``fp16`` (the network in
float16, inputs/outputs and the MeV post-processing kept float32 because
showers reach 1e6 MeV, past float16's range); ``int8`` is delegated to
:mod:`training.quantize` when present.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

import fastsim
from fastsim._util import atomic_path, temporary_name
from fastsim.models import file_sha256
from fastsim.spec import ConditionSpec, ModelSpec, OutputSpec, embed_spec
from training.model import NOISE_WORDS_OP, PhysicalDecoder, count_parameters, decoder_flops, noise_words
from training.train import load_checkpoint, physical_decoder_from_checkpoint

__all__ = [
    "ExportError",
    "IR_VERSION",
    "OPSET",
    "PRECISIONS",
    "VERSION_PATTERN",
    "build_spec",
    "export",
    "metrics_summary",
    "parity",
]

OPSET = 17
IR_VERSION = 9
PRECISIONS = ("fp32", "fp16", "int8")
SUM_TOLERANCE = 1e-4
# Per voxel: the Gamma boost U^(1/k) of the voxel noise has shapes k down to ~1e-3 in
# sparse rings, which magnifies the 1e-7 float32 differences between torch's and ONNX
# Runtime's kernels ~1/k-fold in those few voxels; an export error moves every voxel.
VOXEL_TOLERANCE = 1e-2
VOXEL_MEAN_TOLERANCE = 1e-5
# Whether a voxel is empty is a draw (uniform < exp(-mean/e_s)); a mean within float rounding of the
# boundary may fall on the other side in ONNX Runtime. Such flips are counted, not value-compared,
# and at most this fraction of the compared voxels may flip.
OCCUPANCY_FLIP_TOLERANCE = 1e-5
#: Model versions: MAJOR.MINOR.PATCH with an optional pre-release or build suffix.
VERSION_PATTERN = re.compile(r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?")


class ExportError(ValueError):
    """The exported graph failed a check; nothing was published."""


def metrics_summary(path: str | os.PathLike) -> dict:
    """The spec's ``metrics`` block from a ``fastsim validate`` metrics.json.

    Every metric as {"value", "reference"} (generated vs reference, and the
    reference-vs-reference baseline) and the per-energy-bin response and
    resolution ratios.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--metrics: cannot read {os.fspath(path)!r} as JSON: {exc}") from None
    table = doc.get("metrics") if isinstance(doc, dict) else None
    if not isinstance(table, dict):
        raise ValueError(f"--metrics: {os.fspath(path)!r} has no 'metrics' table (expected `fastsim validate` output)")
    out: dict = {"source": "fastsim validate"}
    for key, entry in table.items():
        if isinstance(entry, dict) and "value" in entry:
            out[key] = {"value": entry["value"], "reference": entry.get("reference")}
    rows = doc.get("energy_bins") or []
    out["energy_bins"] = [
        {k: row[k] for k in ("e_low_mev", "e_high_mev", "response_ratio", "resolution_ratio") if k in row}
        for row in rows if isinstance(row, dict)
    ]
    for side in ("generated", "reference"):  # sample sizes, as `fastsim validate` records them
        entry = doc.get(side)
        if isinstance(entry, dict) and "n_showers" in entry:
            out[f"n_{side}"] = entry["n_showers"]
    return out


def build_spec(checkpoint: dict, decoder: PhysicalDecoder, *, name: str, version: str,
               precision: str, metrics: dict | None = None) -> ModelSpec:
    """The ``fastsim.spec`` document for a checkpoint's decoder."""
    config = json.loads(checkpoint["config_json"])
    data_info = json.loads(checkpoint["data_json"])
    data = config["data"]
    vae = decoder.vae
    general = hasattr(decoder, "conditioning")
    training = {
        "data": config.get("description") or f"reference simulator showers from {Path(data_info['train']).name}",
        "data_files": {"train": data_info["train"], "validation": data_info["validation"]},
        "n_showers": data_info["n_train"],
        "n_validation": data_info["n_validation"],
        "epochs": int(checkpoint["epoch"]) + 1,
        "seed": config["train"]["seed"],
        "train_seconds": round(float(checkpoint["train_seconds"]), 1),
        "validation_fom": float(checkpoint["fom"]),
        "hyperparameters": {"model": config["model"], "train": config["train"], "data": data},
        "architecture": _architecture_text(decoder),
        "parameters": sum(count_parameters(m) for m in vae.decoder_modules()),
        "flops_per_shower": decoder_flops(vae),
        "precision": precision,
        "voxel_threshold_mev": data["threshold"],
        "voxel_noise": {"kind": "gamma",
                        **({"kappa_mev_per_layer": [round(float(k), 5) for k in decoder.noise_kappa]} if general
                           else {"kappa_mev": decoder.noise_kappa}),
                        "spot_energy": None if decoder.spot_coeffs is None else {
                            "law": "per layer l: log(e_s / MeV) = sum_k coeffs[k][l] * c^k",
                            "coeffs": [[round(float(x), 5) for x in row] for row in decoder.spot_coeffs]},
                        **({"spot_spread_per_layer": {
                            "law": "each shower's e_s of layer l times exp(sigma_l g - sigma_l^2 / 2), g ~ N(0, 1)",
                            "sigma": [round(float(x), 5) for x in decoder.spot_spread.flatten()]}}
                           if general and decoder.spot_spread is not None else {}),
                        "seed_latent_dims": list(range(vae.config.latent_dim, decoder.latent_dim))}
        if _noisy(decoder) else {"kind": "none"},
    }
    return ModelSpec(
        name=name,
        version=version,
        latent_dim=decoder.latent_dim,
        prior={"kind": "standard_normal"},
        conditions=decoder.conditioning.specs() if general else (
            ConditionSpec("incident_energy", "MeV", float(data["e_min"]), float(data["e_max"]), "log-uniform"),),
        output=OutputSpec(name="showers", unit="MeV", n_voxels=vae.n_voxels,
                          geometry=json.loads(checkpoint["geometry_json"]), dtype="float32"),
        training=training,
        metrics=dict(metrics or {}),
        producer=f"fastsim {fastsim.__version__}",
    )


def _noisy(decoder) -> bool:
    return bool(np.any(np.asarray(decoder.noise_kappa) > 0))


def _architecture_text(decoder) -> str:
    if not hasattr(decoder, "conditioning"):
        return ("conditional VAE decoder (MLP trunk; response, layer-softmax and alpha-symmetric "
                "ring-softmax heads; Gamma voxel noise), aggregate-posterior prior folded in")
    orders = decoder.vae.orders
    sectors = (f"sector softmax over track-frame alpha harmonics k={list(orders)} turned by incident_phi"
               if orders else "alpha-symmetric sectors (no significant alpha harmonics in the data)")
    return (f"conditional VAE decoder, general voxel layout (MLP trunk on latent, log energy"
            f"{' and theta' if decoder.conditioning.theta_max > 0 else ''}"
            f"{', one-hot particle' if decoder.conditioning.particles else ''}; response, layer-softmax, "
            f"within-layer ring-softmax heads; {sectors}; per-layer Gamma voxel noise), "
            "aggregate-posterior prior folded in")


def _example_conditions(decoder, n: int, seed: int) -> np.ndarray:
    """(n, c) float32 conditions spanning the training range: energies on a log grid, angles drawn."""
    if hasattr(decoder, "conditioning"):
        cond = decoder.conditioning
        out = cond.sample(n, np.random.default_rng(seed))
        out[:, 0] = np.geomspace(cond.e_min, cond.e_max, n).astype(np.float32)
        return out
    spec_min, spec_max = decoder.log_e_min, decoder.log_e_min + 2.0 / decoder.c_scale
    return np.exp(np.linspace(spec_min, spec_max, n)).astype(np.float32)[:, None]


def _trace(decoder: PhysicalDecoder, path: Path) -> None:
    d = decoder.latent_dim
    z = torch.zeros(2, d)
    conditions = torch.as_tensor(_example_conditions(decoder, 2, 0))
    with warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation; the graph it
        # writes for this plain MLP is clean and needs no onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            decoder, (z, conditions), os.fspath(path), dynamo=False, opset_version=OPSET,
            input_names=["z", "conditions"], output_names=["showers"],
            dynamic_axes={"z": {0: "N"}, "conditions": {0: "N"}, "showers": {0: "N"}},
            do_constant_folding=True, custom_opsets={NOISE_WORDS_OP.split("::")[0]: 1},
        )


class _OnnxU32:
    """uint32 arithmetic as ONNX nodes (Mul and Add wrap modulo 2^32; Div), for :func:`noise_words`."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.initializers, self._constants = prefix, [], [], {}

    def _name(self, what: str) -> str:
        return f"{self.prefix}/{what}_{len(self.nodes)}"

    def value(self, y):
        if not isinstance(y, int):
            return y
        if y not in self._constants:
            from onnx import numpy_helper

            name = f"{self.prefix}/u32_{y:x}"
            self.initializers.append(numpy_helper.from_array(np.array(y, dtype=np.uint32), name))
            self._constants[y] = name
        return self._constants[y]

    def node(self, op: str, *inputs, **attrs) -> str:
        from onnx import helper

        out = self._name(op)
        self.nodes.append(helper.make_node(op, [self.value(x) for x in inputs], [out], name=out, **attrs))
        return out

    def mul(self, x, y):
        return self.node("Mul", x, y)

    def add(self, x, y):
        return self.node("Add", x, y)

    def shr(self, x, k):
        # x >> k as exact integer division: ONNX Runtime's CUDA provider has no BitShift kernel.
        return self.node("Div", x, 2**k)


def _expand_noise_words(model):
    """Replace the traced placeholder for the voxel-noise hash by plain ONNX uint32 nodes.

    Same program as the torch side (:func:`training.model.noise_words`):
    seeds -> floor(z * 2^16) + 2^24 as int64 -> uint32 -> hash words -> float32.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    nodes = []
    for node in graph.node:
        if f"{node.domain}::{node.op_type}" != NOISE_WORDS_OP:
            nodes.append(node)
            continue
        seeds, voxel_add, voxel_mul = node.input
        ops = _OnnxU32(node.name or "NoiseWords")
        graph.initializer.extend([
            numpy_helper.from_array(np.array(2.0**16, dtype=np.float32), f"{ops.prefix}/seed_scale"),
            numpy_helper.from_array(np.array(2**24, dtype=np.int64), f"{ops.prefix}/seed_offset"),
            numpy_helper.from_array(np.array([1, 1], dtype=np.int64), f"{ops.prefix}/split")])
        scaled = ops.node("Floor", ops.node("Mul", seeds, f"{ops.prefix}/seed_scale"))
        ints = ops.node("Add", ops.node("Cast", scaled, to=TensorProto.INT64), f"{ops.prefix}/seed_offset")
        ints = ops.node("Cast", ints, to=TensorProto.UINT32)
        a, b = f"{ops.prefix}/seed_a", f"{ops.prefix}/seed_b"
        ops.nodes.append(helper.make_node("Split", [ints, f"{ops.prefix}/split"], [a, b], axis=1,
                                          name=f"{ops.prefix}/Split"))
        words = noise_words(ops, a, b, ops.node("Cast", voxel_add, to=TensorProto.UINT32),
                            ops.node("Cast", voxel_mul, to=TensorProto.UINT32))
        for word, out in zip(words, node.output):
            ops.nodes.append(helper.make_node("Cast", [word], [out], to=TensorProto.FLOAT, name=f"{out}/Cast"))
        nodes.extend(ops.nodes)
        graph.initializer.extend(ops.initializers)
    del graph.node[:]
    graph.node.extend(nodes)
    domain = NOISE_WORDS_OP.split("::")[0]
    kept = [o for o in model.opset_import if o.domain != domain]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def _to_fp16(model):
    """Run every Gemm in float16 (weights stored float16, a Cast on each side).

    Everything else -- condition handling, log-softmaxes, MeV scaling,
    threshold, sums -- stays float32: a 1 TeV shower holds 1e6 MeV, past
    float16's range, and a summed energy must not lose 1e-3 to rounding.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes, cast_inputs = [], set()
    for node in graph.node:
        if node.op_type != "Gemm" or not all(x in initializers for x in node.input[1:]):
            nodes.append(node)
            continue
        for name in node.input[1:]:
            init = initializers[name]
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), name))
        half_in, half_out = node.input[0] + "_fp16", node.output[0] + "_fp16"
        if half_in not in cast_inputs:  # the three heads share one input: cast it once
            cast_inputs.add(half_in)
            nodes.append(helper.make_node("Cast", [node.input[0]], [half_in], name=node.name + "_cast_in",
                                          to=TensorProto.FLOAT16))
        gemm = helper.make_node("Gemm", [half_in, *node.input[1:]], [half_out], name=node.name)
        gemm.attribute.extend(node.attribute)
        nodes.append(gemm)
        nodes.append(helper.make_node("Cast", [half_out], [node.output[0]], name=node.name + "_cast_out",
                                      to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale float32 annotations; the checker re-infers them
    return model


def _ort_run(path: Path, z: np.ndarray, conditions: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run(["showers"], {"z": z, "conditions": conditions})[0]


def parity(decoder: PhysicalDecoder, path: Path, *, n: int = 200, seed: int = 123) -> dict:
    """Compare torch and ONNX Runtime on the same z and conditions spanning the training range."""
    energy = _example_conditions(decoder, n, seed)
    z = np.random.default_rng(seed).standard_normal((n, decoder.latent_dim)).astype(np.float32)
    with torch.no_grad():
        expected = decoder(torch.from_numpy(z), torch.from_numpy(energy)).numpy().astype(np.float64)
    got = _ort_run(path, z, energy).astype(np.float64)
    sum_err = np.abs(got.sum(1) - expected.sum(1)) / np.maximum(expected.sum(1), 1e-30)
    # Voxels within 1 % of the threshold may legitimately land on either side of it.
    clear = expected > decoder.threshold * 1.01
    # A voxel clear of the threshold on one side and empty on the other: its occupancy draw flipped.
    occupancy_flips = int((clear & (got == 0)).sum() + ((got > decoder.threshold * 1.01) & (expected == 0)).sum())
    compared = clear & (got > 0)
    voxel_err = np.abs(got - expected)[compared] / expected[compared]
    flipped = int(((expected > 0) != (got > 0)).sum())
    return {
        "n": n,
        "max_rel_error_sum": float(sum_err.max()),
        "max_rel_error_voxel": float(voxel_err.max()) if voxel_err.size else 0.0,
        "mean_rel_error_voxel": float(voxel_err.mean()) if voxel_err.size else 0.0,
        "threshold_flips": flipped,
        "occupancy_flips": occupancy_flips,
        "voxels_compared": int(compared.sum()),
    }


def export(run: str | os.PathLike, output: str | os.PathLike, *, version: str, precision: str = "fp32",
           checkpoint: str = "best.pt", name: str | None = None, metrics: dict | None = None,
           overwrite: bool = False, log=print) -> dict:
    """Export ``run``'s decoder to ``output`` (see the module docstring); returns a report dict.

    Args:
        run: A run folder (holding ``checkpoint``) or a ``.pt`` checkpoint file.
        output: The ``.onnx`` file to write.
        version: The model version in the spec, ``MAJOR.MINOR.PATCH``; required, so
            that no export silently claims the version of another model.
        precision: ``fp32``, ``fp16`` or ``int8``.
        checkpoint: The checkpoint file inside ``run``.
        name: The model name in the spec (default: the output file's stem).
        metrics: The spec's ``metrics`` block (see :func:`metrics_summary`).
        overwrite: Replace an existing ``output``; without it an existing file is an error.
        log: Called with one line of summary.

    Raises:
        ValueError: A bad argument, an existing output without ``overwrite``, or a
            failed check (:class:`ExportError`); nothing is written then.
    """
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise ValueError(f"--version: expected MAJOR.MINOR.PATCH such as 0.1.0, got {version!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    run = Path(run)
    ckpt_path = run / checkpoint if run.is_dir() else run
    if not ckpt_path.is_file():
        raise ValueError(f"RUN: no checkpoint {ckpt_path} (expected a run folder holding {checkpoint} or a .pt file)")
    output = Path(output)
    if output.suffix != ".onnx":
        raise ValueError(f"--output: expected a path ending in .onnx, got {os.fspath(output)!r}")
    if output.exists() and not overwrite:
        raise ValueError(f"--output: {os.fspath(output)!r} already exists; export to a new name, "
                         "or pass --force to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(ckpt_path)
    decoder = physical_decoder_from_checkpoint(ckpt)
    name = name or output.stem
    spec = build_spec(ckpt, decoder, name=name, version=version, precision=precision, metrics=metrics)

    fp32_path = temporary_name(output, ".fp32.partial.onnx")
    try:
        with atomic_path(output, suffix=".partial.onnx") as partial:
            import onnx

            _trace(decoder, fp32_path)
            model = _expand_noise_words(onnx.load(os.fspath(fp32_path)))
            # The tracer leaves the voxel axis symbolic (it comes out of a broadcast); pin it.
            for value in model.graph.output:
                value.type.tensor_type.shape.dim[1].Clear()
                value.type.tensor_type.shape.dim[1].dim_value = spec.n_voxels
            if precision == "fp16":
                model = _to_fp16(model)
            # IR 9 keeps the file loadable by ONNX Runtime releases before 1.20.
            model.ir_version = IR_VERSION
            model.producer_name, model.producer_version = "fastsim", fastsim.__version__
            model.doc_string = (f"fastsim decoder {name} {version} ({precision}); "
                                f"spec in metadata_props[{'fastsim.spec'!r}]")
            embed_spec(model, spec)
            onnx.checker.check_model(model, full_check=True)
            onnx.save(model, os.fspath(partial))
            if precision == "int8":
                from training.quantize import quantize_model

                quantize_model(partial, partial)

            fastsim.load(os.fspath(partial), device="cpu", threads=1)  # the runtime's own spec check
            report = {"output": os.fspath(output), "precision": precision, "opset": OPSET, "ir_version": IR_VERSION,
                      "latent_dim": spec.latent_dim, "parameters": spec.training["parameters"],
                      "flops_per_shower": spec.training["flops_per_shower"]}
            checks = parity(decoder, partial)
            report["parity"] = checks
            if precision == "fp32":
                flip_limit = OCCUPANCY_FLIP_TOLERANCE * max(checks["voxels_compared"], 1)
                if (checks["max_rel_error_sum"] > SUM_TOLERANCE or checks["max_rel_error_voxel"] > VOXEL_TOLERANCE
                        or checks["mean_rel_error_voxel"] > VOXEL_MEAN_TOLERANCE
                        or checks["occupancy_flips"] > flip_limit):
                    raise ExportError(
                        f"torch/ONNX Runtime parity failed: max relative error {checks['max_rel_error_sum']:.2e} "
                        f"on summed energy (limit {SUM_TOLERANCE:g}), {checks['max_rel_error_voxel']:.2e} per voxel "
                        f"(limit {VOXEL_TOLERANCE:g}), mean {checks['mean_rel_error_voxel']:.2e} per voxel "
                        f"(limit {VOXEL_MEAN_TOLERANCE:g}), {checks['occupancy_flips']} occupancy flips "
                        f"(limit {flip_limit:.0f})")
    finally:
        fp32_path.unlink(missing_ok=True)
    report["sha256"] = file_sha256(output)
    report["bytes"] = output.stat().st_size
    log(f"exported {output} ({report['bytes'] / 1e6:.2f} MB, {precision}, sha256 {report['sha256'][:16]}...): "
        f"parity max rel. error {checks['max_rel_error_sum']:.2e} (sum), {checks['max_rel_error_voxel']:.2e} (voxel)")
    return report
