"""Small decoders that honour (or deliberately break) the fastsim model contract, for tests.

Built with ``onnx.helper`` only (no torch), deterministic from a seed. The graph is
physically shaped: each condition is normalised to [0, 1] over its training range
(log for log-uniform), a latent-dependent profile is turned into voxel fractions
by a softmax, and the shower is ``fraction * 0.95 * E_inc`` with a small voxel
threshold, so outputs are >= 0 MeV and scale with the incident energy.

Typical use::

    path = make_decoder(tmp_path / "toy.onnx", latent_dim=4, n_voxels=24)
    gen = fastsim.load(path, device="cpu")
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fastsim.spec import DEFAULT_IO_NAMES, ConditionSpec, ModelSpec, OutputSpec, embed_spec

__all__ = ["ENERGY_CONDITION", "INCIDENT_CONDITIONS", "INCLINED_CONDITIONS", "PERIODIC_FORMAT", "PHI_CONDITION",
           "THETA_CONDITION", "make_decoder", "make_model", "make_spec", "spec_document"]

#: The default single condition: incident energy 1 GeV - 1 TeV, log-uniform (CaloChallenge dataset 2).
ENERGY_CONDITION = ConditionSpec("incident_energy", "MeV", 1_000.0, 1_000_000.0, "log-uniform")
#: Inclined showers: polar angle 0 - 60 deg, and a periodic azimuth over [0, 2 pi).
THETA_CONDITION = ConditionSpec("incident_theta", "rad", 0.0, math.pi / 3, "uniform")
PHI_CONDITION = ConditionSpec("incident_phi", "rad", 0.0, 2 * math.pi, "uniform", period=2 * math.pi)
#: The three conditions of an inclined-shower model (spec format 1.1: phi is periodic).
INCLINED_CONDITIONS = (ENERGY_CONDITION, THETA_CONDITION, PHI_CONDITION)
#: Fraction of the incident energy the toy decoder deposits, and its voxel threshold in MeV.
RESPONSE, THRESHOLD_MEV = 0.95, 1e-3
#: The spec format of a model with a periodic condition (a condition with a ``period``).
PERIODIC_FORMAT = "fastsim-decoder/1.1"
#: Energy, polar and (periodic) azimuthal angle of the incident particle, as multi-condition
#: models declare them; dicts, because ``period`` is a format-1.1 key.
INCIDENT_CONDITIONS = (
    ENERGY_CONDITION.to_dict(),
    {"name": "incident_theta", "unit": "rad", "min": 0.0, "max": math.pi / 3, "sampling": "uniform"},
    {"name": "incident_phi", "unit": "rad", "min": 0.0, "max": 2 * math.pi, "sampling": "uniform",
     "period": 2 * math.pi},
)


def _condition(c: ConditionSpec | Mapping[str, Any]) -> ConditionSpec:
    """A ConditionSpec from either form; a dict's ``period`` is kept by ``spec_document`` instead."""
    if isinstance(c, ConditionSpec):
        return c
    return ConditionSpec.from_dict({k: v for k, v in c.items() if k != "period"})


def spec_document(
    spec: ModelSpec, conditions: Sequence[ConditionSpec | Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """``spec`` as a JSON document, with the ``period`` of each periodic condition in ``conditions``.

    A document with a period says format ``fastsim-decoder/1.1``, as the contract asks.
    """
    doc = spec.to_dict()
    periods = {c["name"]: c["period"] for c in conditions or () if isinstance(c, Mapping) and "period" in c}
    for block in doc["conditions"]:
        if block["name"] in periods:
            block["period"] = periods[block["name"]]
    if periods:
        doc["format"] = PERIODIC_FORMAT
    return doc


def make_spec(
    *,
    latent_dim: int = 4,
    n_voxels: int = 24,
    conditions: Sequence[ConditionSpec | Mapping] | None = None,
    names: Mapping[str, str] | None = None,
    output_dtype: str = "float32",
    name: str = "toy-decoder",
    geometry: Mapping | None = None,
) -> ModelSpec:
    """A spec for a toy decoder with the given widths (and io name mapping)."""
    conds = tuple(_condition(c) for c in (conditions if conditions is not None else [ENERGY_CONDITION]))
    return ModelSpec(
        name=name,
        version="0.0.1",
        latent_dim=latent_dim,
        conditions=conds,
        output=OutputSpec(name="showers", unit="MeV", n_voxels=n_voxels,
                          geometry=dict(geometry or {}), dtype=output_dtype),
        io_names={**DEFAULT_IO_NAMES, **(names or {})},
        training={"data": "synthetic (tests/decoders.py)", "n_showers": 0, "epochs": 0, "seed": 0},
        metrics={},
        producer="tests/decoders.py",
    )


def make_model(
    *,
    latent_dim: int = 4,
    n_voxels: int = 24,
    conditions: Sequence[ConditionSpec] = (ENERGY_CONDITION,),
    names: Mapping[str, str] | None = None,
    hidden: int = 0,
    output_dtype: str = "float32",
    seed: int = 0,
    opset: int = 17,
    batch_dim: str | int = "N",
) -> onnx.ModelProto:
    """The decoder graph alone (no spec embedded); widths as given."""
    io = {**DEFAULT_IO_NAMES, **(names or {})}
    rng = np.random.default_rng(seed)
    n_cond = len(conditions)
    energy_col = next((i for i, c in enumerate(conditions) if c.unit in ("MeV", "GeV", "TeV", "keV")), 0)
    to_mev = {"keV": 1e-3, "MeV": 1.0, "GeV": 1e3, "TeV": 1e6}.get(conditions[energy_col].unit, 1.0)

    # Per-condition normalisation to [0, 1]: log for log-uniform conditions.
    is_log = np.array([c.sampling == "log-uniform" for c in conditions])
    lo = np.array([math.log(c.min) if log else c.min for c, log in zip(conditions, is_log, strict=False)])
    hi = np.array([math.log(c.max) if log else c.max for c, log in zip(conditions, is_log, strict=False)])

    init = {
        "log_mask": is_log.astype(np.float32)[None, :],
        "lin_mask": (~is_log).astype(np.float32)[None, :],
        "tiny": np.array(1e-30, np.float32),
        "cond_lo": lo.astype(np.float32)[None, :],
        "cond_span": (hi - lo).astype(np.float32)[None, :],
        "W_cond": (rng.normal(size=(n_cond, n_voxels)) * 1.5).astype(np.float32),
        "profile": np.linspace(2.0, -2.0, n_voxels, dtype=np.float32)[None, :],
        "energy_index": np.array([energy_col], np.int64),
        "energy_scale": np.array(RESPONSE * to_mev, np.float32),
        "threshold": np.array(THRESHOLD_MEV, np.float32),
    }
    nodes = [
        # Normalised conditions: log(max(c, tiny)) where log-uniform, c elsewhere, mapped to [0, 1].
        helper.make_node("Max", [io["conditions"], "tiny"], ["c_pos"]),
        helper.make_node("Log", ["c_pos"], ["c_log"]),
        helper.make_node("Mul", ["c_log", "log_mask"], ["c_log_part"]),
        helper.make_node("Mul", [io["conditions"], "lin_mask"], ["c_lin_part"]),
        helper.make_node("Add", ["c_log_part", "c_lin_part"], ["c_t"]),
        helper.make_node("Sub", ["c_t", "cond_lo"], ["c_shift"]),
        helper.make_node("Div", ["c_shift", "cond_span"], ["c_norm"]),
        helper.make_node("MatMul", ["c_norm", "W_cond"], ["h_cond"]),
    ]
    if hidden:
        init["W1"] = (rng.normal(size=(latent_dim, hidden)) / math.sqrt(latent_dim)).astype(np.float32)
        init["b1"] = (rng.normal(size=(hidden,)) * 0.1).astype(np.float32)
        init["W2"] = (rng.normal(size=(hidden, n_voxels)) * 0.5 / math.sqrt(hidden)).astype(np.float32)
        nodes += [
            helper.make_node("MatMul", [io["z"], "W1"], ["a1"]),
            helper.make_node("Add", ["a1", "b1"], ["a1b"]),
            helper.make_node("Relu", ["a1b"], ["h1"]),
            helper.make_node("MatMul", ["h1", "W2"], ["h_z"]),
        ]
    else:
        init["W_z"] = (rng.normal(size=(latent_dim, n_voxels)) * 0.5).astype(np.float32)
        nodes.append(helper.make_node("MatMul", [io["z"], "W_z"], ["h_z"]))
    nodes += [
        helper.make_node("Add", ["h_z", "h_cond"], ["h_zc"]),
        helper.make_node("Add", ["h_zc", "profile"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["fractions"], axis=1),
        helper.make_node("Gather", [io["conditions"], "energy_index"], ["e_inc"], axis=1),
        helper.make_node("Mul", ["e_inc", "energy_scale"], ["deposit"]),
        helper.make_node("Mul", ["fractions", "deposit"], ["raw"]),
        helper.make_node("Sub", ["raw", "threshold"], ["above"]),
        helper.make_node("Relu", ["above"], ["kept"]),
        helper.make_node("Sign", ["kept"], ["hit"]),
        # Voxels above threshold keep their full deposit; the rest are 0.
        helper.make_node("Mul", ["raw", "hit"], ["showers_f32" if output_dtype == "float16" else io["showers"]]),
    ]
    out_type = TensorProto.FLOAT
    if output_dtype == "float16":
        nodes.append(helper.make_node("Cast", ["showers_f32"], [io["showers"]], to=TensorProto.FLOAT16))
        out_type = TensorProto.FLOAT16
    graph = helper.make_graph(
        nodes,
        "toy_decoder",
        inputs=[
            helper.make_tensor_value_info(io["z"], TensorProto.FLOAT, [batch_dim, latent_dim]),
            helper.make_tensor_value_info(io["conditions"], TensorProto.FLOAT, [batch_dim, n_cond]),
        ],
        outputs=[helper.make_tensor_value_info(io["showers"], out_type, [batch_dim, n_voxels])],
        initializer=[numpy_helper.from_array(v, k) for k, v in init.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="fastsim-tests")
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return model


def make_decoder(
    path: str | Path,
    *,
    latent_dim: int = 4,
    n_voxels: int = 24,
    conditions: Sequence[ConditionSpec | Mapping] | None = None,
    spec: ModelSpec | None = None,
    sidecar: bool = False,
    embed: bool = True,
    names: Mapping[str, str] | None = None,
    hidden: int = 0,
    output_dtype: str = "float32",
    seed: int = 0,
    name: str = "toy-decoder",
    geometry: Mapping | None = None,
) -> Path:
    """Write a toy decoder to ``path`` and return the path.

    The graph has the given widths. Its spec is ``spec`` if given (which may
    deliberately disagree with the graph) or one matching the graph; it is
    embedded in the metadata (``embed``), and/or written to the sidecar
    ``PATH.json`` (``sidecar``). ``names`` renames the graph's tensors (and
    the matching spec maps them). A condition given as a dict may carry a
    ``period`` (e.g. ``INCIDENT_CONDITIONS``' azimuth); the spec then says
    format ``fastsim-decoder/1.1``. The graph does not depend on periods.
    """
    path = Path(path)
    if spec is None:
        spec = make_spec(latent_dim=latent_dim, n_voxels=n_voxels, conditions=conditions,
                         names=names, output_dtype=output_dtype, name=name, geometry=geometry)
        doc = spec_document(spec, conditions)
    else:
        doc = spec.to_dict()
    conds = tuple(_condition(c) for c in (conditions if conditions is not None else [ENERGY_CONDITION]))
    model = make_model(latent_dim=latent_dim, n_voxels=n_voxels, conditions=conds, names=names,
                       hidden=hidden, output_dtype=output_dtype, seed=seed)
    if embed and not sidecar:
        embed_spec(model, spec)
        model.metadata_props[-1].value = json.dumps(doc)  # embed_spec writes the spec entry last
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    if sidecar:
        path.with_name(path.name + ".json").write_text(json.dumps(doc, indent=2))
    return path
