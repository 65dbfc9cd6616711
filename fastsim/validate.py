"""The validation report: how closely generated showers agree with a reference sample.

This module owns the comparison protocol: which features are compared with
which metric and binning (the CaloChallenge conventions, see
:mod:`fastsim.features` and :mod:`fastsim.metrics`), the reference-vs-reference
baseline printed beside every number, the per-energy-bin response and
resolution table, the consistency checks on the inputs, and the report folder
(``metrics.json``, ``report.md``, PNG plots from :mod:`fastsim.plots`).

- :func:`validate` -- all metrics as a JSON-ready dict.
- :func:`quick_figure_of_merit` -- one cheap number (lower is better) for use
  after every training epoch.
- :func:`write_report` -- :func:`validate` plus the report folder.

Inputs are paths (a CaloChallenge HDF5 file or a folder of shards), open
shower files, or
in-memory ``(incident_energies, showers)`` pairs. Files are streamed; only the
per-shower features and a subsample of voxels for the voxel classifier are held.

Every metric is reported twice: generated vs reference (all showers of both),
and reference vs reference, two disjoint halves (even and odd rows) of the
reference -- what "perfect" looks like at half the sample size.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastsim import metrics
from fastsim._util import atomic_write_text
from fastsim.errors import DataError, OutputError
from fastsim.features import (
    DEFAULT_THRESHOLD_MEV,
    ShowerFeatures,
    compute_features,
    iter_source,
    voxel_energy_edges,
    voxel_energy_histogram,
)
from fastsim.geometry import CylindricalGeometry, default_geometry

__all__ = [
    "ALL_GROUPS",
    "DEFAULT_GROUPS",
    "Comparison",
    "compare",
    "format_energy_table",
    "format_table",
    "open_input",
    "quick_figure_of_merit",
    "validate",
    "write_report",
]

#: Metric groups, in report order. ``classifier-voxel`` trains an MLP on voxels and is the slowest.
ALL_GROUPS = ("separation", "wasserstein", "energy-bins", "fpd", "kpd", "classifier", "classifier-voxel")
DEFAULT_GROUPS = ALL_GROUPS

# Fixed CaloChallenge binnings (mm); the log binnings depend on the reference (see _binnings).
_CENTRE_EDGES = np.linspace(-30.0, 30.0, 101)
_WIDTH_EDGES = np.linspace(0.0, 30.0, 101)
_RESPONSE_EDGES = np.linspace(0.5, 1.5, 101)
_N_ENERGY_BINS = 10
_MIN_CLASSIFIER_ROWS = 50
# Relative tolerance, as a fraction of the reference's log-energy span, on the
# energy ranges of the two inputs (the extremes of a finite sample wander a little).
_ENERGY_RANGE_TOLERANCE = 0.1


# ----------------------------------------------------------------------------- inputs


def open_input(source: Any, geometry: CylindricalGeometry | None, *, name: str) -> Any:
    """Turn a path into an open shower file; pass arrays and open files through.

    The one place that decides what a validation input may be. With
    ``geometry=None`` a file finds its own (the binning XML beside it, else
    dataset 2 when the voxel count fits). Voxel counts are checked against the
    geometry later, with a message naming ``name``.
    """
    if isinstance(source, (str, os.PathLike)):
        from fastsim.distributed import open_dataset  # a file, or a folder of shards

        source = open_dataset(source, geometry=geometry)
    if isinstance(source, tuple) and len(source) == 2:
        energies = np.asarray(source[0], dtype=np.float64).reshape(-1)
        showers = source[1]
        if getattr(showers, "ndim", None) != 2:
            expected = f"(N, {geometry.n_voxels})" if geometry is not None else "(N, n_voxels)"
            raise DataError(f"{name}: expected showers of shape {expected}, got {np.shape(showers)}")
        if len(energies) != showers.shape[0]:
            raise DataError(
                f"{name}: expected one incident energy per shower, got {len(energies)} energies "
                f"for {showers.shape[0]} showers"
            )
        return energies, showers
    if not hasattr(source, "iter_chunks"):
        raise DataError(
            f"{name}: expected a CaloChallenge HDF5 path, an open shower file or an "
            f"(incident_energies, showers) pair, got {type(source).__name__}"
        )
    return source


def _n_voxels(source: Any) -> int:
    return int(source[1].shape[1]) if isinstance(source, tuple) else int(source.n_voxels)


def _incident_energies(source: Any) -> np.ndarray:
    if isinstance(source, tuple):
        return source[0]
    return np.asarray(source.incident_energies, dtype=np.float64).reshape(-1)


def _describe(source: Any) -> str:
    path = getattr(source, "path", None)
    return str(path) if path is not None else "in-memory arrays"


def _check_inputs(gen: Any, ref: Any, geometry: CylindricalGeometry, n_gen: int, n_ref: int) -> None:
    for name, source in (("generated", gen), ("reference", ref)):
        if _n_voxels(source) != geometry.n_voxels:
            raise DataError(
                f"{name}: showers have {_n_voxels(source)} voxels but the geometry has {geometry.n_voxels} "
                f"({geometry.n_layers} layers); pass the matching geometry XML"
            )
    e_gen = _incident_energies(gen)[:n_gen]
    e_ref = _incident_energies(ref)[:n_ref]
    for name, energies, n in (("generated", e_gen, n_gen), ("reference", e_ref, n_ref)):
        if n < 10:
            raise DataError(f"{name}: need at least 10 showers to compare, got {n}")
        if not np.all(np.isfinite(energies)) or np.any(energies <= 0):
            raise DataError(f"{name}: incident energies must be finite and > 0 MeV")
    lo_ref, hi_ref = float(e_ref.min()), float(e_ref.max())
    lo_gen, hi_gen = float(e_gen.min()), float(e_gen.max())
    span = math.log(hi_ref / lo_ref)
    tolerance = max(_ENERGY_RANGE_TOLERANCE * span, 0.01)
    if abs(math.log(lo_gen / lo_ref)) > tolerance or abs(math.log(hi_gen / hi_ref)) > tolerance:
        raise DataError(
            f"generated: incident energies span {lo_gen:.6g}-{hi_gen:.6g} MeV but the reference spans "
            f"{lo_ref:.6g}-{hi_ref:.6g} MeV; distributions over different energy ranges are not comparable "
            f"(generate at the reference's energies, or select a matching range)"
        )


# ----------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Comparison:
    """Everything a report needs: the metrics dict plus the features behind the plots."""

    result: dict[str, Any]
    generated: ShowerFeatures
    reference: ShowerFeatures
    extras: dict[str, Any]


def _binnings(ref: ShowerFeatures, geometry: CylindricalGeometry, threshold: float) -> dict[str, Any]:
    """Histogram edges per feature family, from the CaloChallenge conventions and the reference."""
    r_max = max(layer.r_edges[-1] for layer in geometry.layers)
    layer_max = ref.layer_energy.max(axis=0)
    low = max(threshold, 1e-6)
    return {
        "e_ratio": _RESPONSE_EDGES,
        "layer_energy": [voxel_energy_edges(m, threshold=low, n_bins=40) for m in layer_max],
        "centre_x": _CENTRE_EDGES,
        "centre_y": _CENTRE_EDGES,
        "width_x": _WIDTH_EDGES,
        "width_y": _WIDTH_EDGES,
        "centre_r": np.linspace(0.0, r_max, 101),
        "width_r": _WIDTH_EDGES,
        "sparsity": np.linspace(0.0, 1.0, 51),
        "longitudinal_centre": np.linspace(0.0, geometry.depth_mm, 101),
        "longitudinal_width": np.linspace(0.0, geometry.depth_mm / 2, 101),
    }


_SCALAR = ("e_ratio", "longitudinal_centre", "longitudinal_width")
_PER_LAYER = ("layer_energy", "centre_x", "centre_y", "width_x", "width_y", "centre_r", "width_r", "sparsity")


def _feature(f: ShowerFeatures, name: str) -> np.ndarray:
    return f.response if name == "e_ratio" else getattr(f, name)


def _separation(a: ShowerFeatures, b: ShowerFeatures, bins: dict[str, Any]) -> tuple[dict[str, float], dict[str, list]]:
    """Separation powers: scalars, per-layer lists and their means over layers."""
    summary: dict[str, float] = {}
    per_layer: dict[str, list] = {}
    for name in _SCALAR:
        summary[name] = metrics.histogram_separation_power(_feature(a, name), _feature(b, name), bins[name])
    for name in _PER_LAYER:
        va, vb = _feature(a, name), _feature(b, name)
        values = []
        for layer in range(va.shape[1]):
            edges = bins[name][layer] if isinstance(bins[name], list) else bins[name]
            values.append(metrics.histogram_separation_power(va[:, layer], vb[:, layer], edges))
        per_layer[name] = values
        summary[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return summary, per_layer


def _wasserstein(a: ShowerFeatures, b: ShowerFeatures, scale_from: ShowerFeatures) -> dict[str, float]:
    """W1 per feature in units of the reference's standard deviation (mean over layers for families)."""
    out: dict[str, float] = {}
    for name in _SCALAR + _PER_LAYER:
        va, vb, vs = _feature(a, name), _feature(b, name), _feature(scale_from, name)
        if va.ndim == 1:
            va, vb, vs = va[:, None], vb[:, None], vs[:, None]
        values = []
        for layer in range(va.shape[1]):
            std = float(np.std(vs[:, layer]))
            if std > 0:
                values.append(metrics.wasserstein1(va[:, layer], vb[:, layer]) / std)
        out[name] = float(np.mean(values)) if values else float("nan")
    return out


def _energy_bins(gen: ShowerFeatures, ref: ShowerFeatures) -> list[dict[str, float]]:
    """Mean response and relative resolution per log-spaced incident-energy bin."""
    lo, hi = ref.incident_energy.min(), ref.incident_energy.max()
    if hi <= lo * 1.0001:
        edges = np.array([lo * 0.999, hi * 1.001])
    else:
        edges = np.logspace(math.log10(lo), math.log10(hi), _N_ENERGY_BINS + 1)
        edges[-1] *= 1.0 + 1e-9  # include the largest reference energy
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        row: dict[str, float] = {"e_low_mev": float(low), "e_high_mev": float(high)}
        for label, f in (("reference", ref), ("generated", gen)):
            sel = (f.incident_energy >= low) & (f.incident_energy < high)
            resp = f.response[sel]
            n = int(sel.sum())
            mean = float(resp.mean()) if n else float("nan")
            std = float(resp.std(ddof=1)) if n > 1 else float("nan")
            row[f"n_{label}"] = n
            row[f"response_{label}"] = mean
            row[f"response_error_{label}"] = std / math.sqrt(n) if n > 1 else float("nan")
            row[f"resolution_{label}"] = std / mean if n > 1 and mean > 0 else float("nan")
            # Standard error of a standard deviation, ~ sigma / sqrt(2(n-1)), propagated to sigma/mean.
            row[f"resolution_error_{label}"] = (
                row[f"resolution_{label}"] / math.sqrt(2 * (n - 1)) if n > 2 else float("nan")
            )
        row["response_ratio"] = _ratio(row["response_generated"], row["response_reference"])
        row["resolution_ratio"] = _ratio(row["resolution_generated"], row["resolution_reference"])
        rows.append(row)
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else float("nan")


def _voxel_sample(source: Any, n: int) -> np.ndarray:
    """The first n showers as E_inc-normalised voxels plus a log10(E_inc) column, float32."""
    parts = []
    for energies, showers in iter_source(source, stop=n):
        block = np.asarray(showers, dtype=np.float32) / energies[:, None].astype(np.float32)
        parts.append(np.concatenate([block, np.log10(energies, dtype=np.float64)[:, None].astype(np.float32)], axis=1))
    return np.concatenate(parts)


def _voxel_pass(source: Any, n: int, edges: np.ndarray, rings: np.ndarray, n_rings: int) -> dict[str, np.ndarray]:
    """One streaming pass for voxel-level summaries over the first ``n`` showers.

    Returns the voxel-energy spectrum of all of them (``counts``) and of the
    even and odd rows separately (``even``, ``odd``: the reference-vs-reference
    split), and the mean radial profile (fraction of E_inc per ring).
    """
    zeros = np.zeros(edges.size - 1, np.int64)
    out = {"counts": zeros.copy(), "even": zeros.copy(), "odd": zeros.copy()}
    radial = np.zeros(n_rings)
    seen = 0
    for energies, showers in iter_source(source, stop=n):
        showers = np.asarray(showers)
        # Row parity is global: a chunk may start on an odd row.
        first_even = seen % 2
        even = voxel_energy_histogram((energies[first_even::2], showers[first_even::2]), edges)
        odd = voxel_energy_histogram((energies[1 - first_even::2], showers[1 - first_even::2]), edges)
        out["even"] += even
        out["odd"] += odd
        out["counts"] += even + odd
        fractions = np.asarray(showers, dtype=np.float64) / energies[:, None]
        radial += np.bincount(rings, weights=fractions.sum(axis=0), minlength=n_rings)
        seen += len(energies)
    out["radial_profile"] = radial / max(seen, 1)
    return out


def _ring_index(geometry: CylindricalGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Map every voxel to its radial ring (by ring centre, shared across layers)."""
    _, _, r, _, _ = geometry.voxel_centres()
    centres, index = np.unique(np.round(r, 6), return_inverse=True)
    return index, centres


def compare(
    generated: Any,
    reference: Any,
    geometry: CylindricalGeometry | None = None,
    groups: Sequence[str] = DEFAULT_GROUPS,
    n_max: int | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD_MEV,
    classifier_n: int = 20_000,
    voxel_classifier_n: int = 5_000,
    kpd_batch_size: int = 5_000,
    seed: int = 0,
) -> Comparison:
    """Compute the validation metrics and keep the features for plots (see :func:`validate`)."""
    groups = _check_groups(groups)
    if n_max is not None and n_max < 1:
        raise DataError(f"n_max: expected a positive number of showers, got {n_max}")
    with contextlib.ExitStack() as opened:
        def open_here(source: Any, name: str) -> Any:
            handle = open_input(source, geometry, name=name)
            if hasattr(handle, "close") and all(handle is not given for given in (reference, generated)):
                opened.callback(handle.close)  # close only the files opened here, even if the next open fails
            return handle

        ref = open_here(reference, "reference")
        gen = open_here(generated, "generated")
        geometry = _resolve_geometry(geometry, gen, ref)
        return _compare(
            gen, ref, geometry, groups, n_max, threshold=threshold, classifier_n=classifier_n,
            voxel_classifier_n=voxel_classifier_n, kpd_batch_size=kpd_batch_size, seed=seed,
        )


def _resolve_geometry(geometry: CylindricalGeometry | None, gen: Any, ref: Any) -> CylindricalGeometry:
    """The explicit geometry, else the one the files carry (which must agree), else dataset 2."""
    if geometry is not None:
        return geometry
    found = {name: getattr(src, "geometry", None) for name, src in (("generated", gen), ("reference", ref))}
    if found["generated"] is not None and found["reference"] is not None:
        if found["generated"].to_dict() != found["reference"].to_dict():
            raise DataError(
                f"generated and reference: the files' geometries disagree "
                f"({found['generated'].n_layers} layers / {found['generated'].n_voxels} voxels vs "
                f"{found['reference'].n_layers} layers / {found['reference'].n_voxels} voxels); "
                f"showers on different binnings are not comparable"
            )
    chosen = found["reference"] or found["generated"] or default_geometry()
    return chosen


def _compare(
    gen: Any,
    ref: Any,
    geometry: CylindricalGeometry,
    groups: tuple[str, ...],
    n_max: int | None,
    *,
    threshold: float,
    classifier_n: int,
    voxel_classifier_n: int,
    kpd_batch_size: int,
    seed: int,
) -> Comparison:
    n_gen = len(_incident_energies(gen)) if n_max is None else min(n_max, len(_incident_energies(gen)))
    n_ref = len(_incident_energies(ref)) if n_max is None else min(n_max, len(_incident_energies(ref)))
    _check_inputs(gen, ref, geometry, n_gen, n_ref)
    if {"classifier", "classifier-voxel"} & set(groups) and min(n_gen, n_ref // 2) < _MIN_CLASSIFIER_ROWS:
        raise DataError(
            f"n_max: the classifier tests need at least {_MIN_CLASSIFIER_ROWS} generated and "
            f"{2 * _MIN_CLASSIFIER_ROWS} reference showers, got {n_gen} and {n_ref}; "
            f"use more showers or leave out the classifier groups"
        )

    f_gen = compute_features(gen, geometry, threshold=threshold, stop=n_gen)
    f_ref = compute_features(ref, geometry, threshold=threshold, stop=n_ref)
    # "value" compares every generated shower with every reference shower (identical
    # inputs score exactly 0); "reference" compares the even with the odd reference
    # rows, the finite-sample floor of a perfect surrogate at half the sample size.
    ref_a, ref_b = f_ref.take(slice(0, None, 2)), f_ref.take(slice(1, None, 2))
    bins = _binnings(f_ref, geometry, threshold)

    table: dict[str, dict[str, Any]] = {}
    per_layer: dict[str, dict[str, list]] = {}
    extras: dict[str, Any] = {"bins": bins}

    def put(key: str, value: float, baseline: float, **more: Any) -> None:
        table[key] = {"value": value, "reference": baseline, **more}

    if "separation" in groups:
        sp, sp_layers = _separation(f_gen, f_ref, bins)
        sp_ref, sp_ref_layers = _separation(ref_a, ref_b, bins)
        for name in sp:
            put(f"separation_power.{name}", sp[name], sp_ref[name])
        for name in sp_layers:
            per_layer[f"separation_power.{name}"] = {"value": sp_layers[name], "reference": sp_ref_layers[name]}
        ring_index, ring_centres = _ring_index(geometry)
        edges = voxel_energy_edges(f_ref.max_voxel_energy.max(), threshold=threshold)
        vg = _voxel_pass(gen, n_gen, edges, ring_index, len(ring_centres))
        vr = _voxel_pass(ref, n_ref, edges, ring_index, len(ring_centres))
        put(
            "separation_power.voxel_energy",
            metrics.separation_power(vg["counts"], vr["counts"]),
            metrics.separation_power(vr["even"], vr["odd"]),
        )
        extras.update(
            voxel_edges=edges,
            voxel_counts_generated=vg["counts"],
            voxel_counts_reference=vr["counts"],
            ring_centres=ring_centres,
            radial_profile_generated=vg["radial_profile"],
            radial_profile_reference=vr["radial_profile"],
        )
    if "wasserstein" in groups:
        w = _wasserstein(f_gen, f_ref, f_ref)
        w_ref = _wasserstein(ref_a, ref_b, f_ref)
        for name in w:
            put(f"wasserstein.{name}", w[name], w_ref[name], unit="reference std")
    energy_rows = _energy_bins(f_gen, f_ref) if "energy-bins" in groups else []
    if "energy-bins" in groups:
        baseline = _energy_bins(ref_a, ref_b)
        for key in ("response", "resolution"):
            put(
                f"energy_bins.max_{key}_deviation",
                _max_abs_deviation(np.array([row[f"{key}_ratio"] for row in energy_rows])),
                _max_abs_deviation(np.array([row[f"{key}_ratio"] for row in baseline])),
            )
    if "fpd" in groups or "kpd" in groups:
        # Features scaled by the full reference's max |x| in both comparisons (jetnet's normalisation).
        x_ref, _ = f_ref.matrix()
        x_gen = _scale_like(f_gen.matrix()[0], x_ref)
        x_scaled = _scale_like(x_ref, x_ref)
        x_a, x_b = x_scaled[0::2], x_scaled[1::2]
        if "fpd" in groups:
            value, error = metrics.fpd(x_scaled, x_gen, normalise=False, seed=seed)
            base, base_error = metrics.fpd(x_b, x_a, normalise=False, seed=seed)
            put("fpd", value, base, error=error, reference_error=base_error)
        if "kpd" in groups:
            value, error = metrics.kpd(x_scaled, x_gen, batch_size=kpd_batch_size, normalise=False, seed=seed)
            base, base_error = metrics.kpd(x_b, x_a, batch_size=kpd_batch_size, normalise=False, seed=seed)
            put("kpd", value, base, error=error, reference_error=base_error)
    if "classifier" in groups:
        c_gen, c_ref = f_gen.matrix(for_classifier=True)[0], f_ref.matrix(for_classifier=True)[0]
        out = metrics.classifier_auc(c_ref, c_gen, n_max=classifier_n, seed=seed)
        base = metrics.classifier_auc(c_ref[1::2], c_ref[0::2], n_max=classifier_n, seed=seed)
        put("classifier_auc.high_level", out["auc"], base["auc"], n_test=out["n_test"], jsd=out["jsd"])
    if "classifier-voxel" in groups:
        n_vox = min(n_gen, n_ref, voxel_classifier_n)
        v_gen = _voxel_sample(gen, n_vox)
        v_ref = _voxel_sample(ref, min(n_ref, 2 * n_vox))
        out = metrics.classifier_auc(v_ref[:n_vox], v_gen, model="mlp", n_max=n_vox, seed=seed)
        base = metrics.classifier_auc(v_ref[1::2], v_ref[0::2], model="mlp", n_max=n_vox, seed=seed)
        put("classifier_auc.voxel", out["auc"], base["auc"], n_test=out["n_test"], jsd=out["jsd"])

    result = {
        "format": "fastsim-validation/1",
        "generated": {"source": _describe(gen), "n_showers": n_gen},
        "reference": {"source": _describe(ref), "n_showers": n_ref},
        "geometry": {"n_layers": geometry.n_layers, "n_voxels": geometry.n_voxels},
        "threshold_mev": threshold,
        "groups": list(groups),
        "metrics": table,
        "per_layer": per_layer,
        "energy_bins": energy_rows,
    }
    return Comparison(_json_ready(result), f_gen, f_ref, extras)


def _scale_like(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Divide columns by the reference's max |x| (jetnet's FPD/KPD normalisation)."""
    return metrics.scale_by_reference(reference, x)[1]


def _max_abs_deviation(ratios: np.ndarray) -> float:
    finite = ratios[np.isfinite(ratios)]
    return float(np.max(np.abs(finite - 1.0))) if finite.size else float("nan")


def _check_groups(groups: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(groups, str):
        groups = [g.strip() for g in groups.split(",") if g.strip()]
    if list(groups) == ["all"]:
        groups = ALL_GROUPS
    groups = tuple(dict.fromkeys(groups))
    unknown = [g for g in groups if g not in ALL_GROUPS]
    if unknown or not groups:
        raise DataError(f"groups: expected some of {', '.join(ALL_GROUPS)}; got {', '.join(groups) or 'none'}")
    return groups


def _json_ready(value: Any) -> Any:
    """Plain JSON types; nan and inf become null so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def validate(
    generated: Any,
    reference: Any,
    geometry: CylindricalGeometry | None = None,
    groups: Sequence[str] = DEFAULT_GROUPS,
    n_max: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Compare generated showers with reference showers; return the metrics as a JSON-ready dict.

    ``generated`` and ``reference`` are CaloChallenge HDF5 paths, open shower
    files, or ``(incident_energies, showers)`` pairs. ``geometry`` defaults to
    CaloChallenge dataset 2. ``groups`` picks metric groups from
    :data:`ALL_GROUPS`; ``n_max`` caps the showers read from each input.
    Keyword options: ``threshold`` (MeV), ``classifier_n``,
    ``voxel_classifier_n``, ``kpd_batch_size``, ``seed``.

    ``result["metrics"]`` maps a metric name (``separation_power.e_ratio``,
    ``fpd``, ``classifier_auc.high_level``, ...) to ``{"value": generated vs
    reference, "reference": reference half vs reference half, ...}``; lower
    is better except for AUC, where 0.5 is best. ``result["energy_bins"]``
    holds the response and resolution table.
    """
    return compare(generated, reference, geometry, groups, n_max, **options).result


def quick_figure_of_merit(
    generated: Any,
    reference: Any,
    geometry: CylindricalGeometry | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD_MEV,
    n_max: int | None = None,
) -> float:
    """One cheap agreement score for every training epoch; lower is better, 0 is identical.

    The mean of the separation powers of E_tot/E_inc, of the layer energies
    (averaged over layers) and of the x and y widths (averaged over layers).
    Either input may be precomputed :class:`~fastsim.features.ShowerFeatures`
    (compute the reference's once, reuse it every epoch).
    """
    geometry = geometry if geometry is not None else default_geometry()

    def features(source: Any, name: str) -> ShowerFeatures:
        if isinstance(source, ShowerFeatures):
            return source if n_max is None else source.take(slice(0, n_max))
        return compute_features(open_input(source, geometry, name=name), geometry, threshold=threshold, stop=n_max)

    f_gen, f_ref = features(generated, "generated"), features(reference, "reference")
    bins = _binnings(f_ref, geometry, threshold)
    sp, _ = _separation(f_gen, f_ref, {k: bins[k] for k in bins})
    parts = [sp["e_ratio"], sp["layer_energy"], sp["width_x"], sp["width_y"]]
    return float(np.nanmean(parts))


# ----------------------------------------------------------------------------- the report folder


_LABELS = {
    "separation_power": "Separation power",
    "wasserstein": "Wasserstein-1 / ref. std",
    "energy_bins": "Energy bins",
    "classifier_auc": "Classifier AUC",
}


def format_table(result: dict[str, Any]) -> str:
    """The summary as a Markdown table: metric, generated vs reference, reference vs reference."""
    lines = ["| metric | generated vs reference | reference vs reference |", "|---|---|---|"]
    for key, entry in result["metrics"].items():
        lines.append(f"| {key} | {_fmt(entry['value'], entry.get('error'))} | "
                     f"{_fmt(entry['reference'], entry.get('reference_error'))} |")
    return "\n".join(lines)


def format_energy_table(result: dict[str, Any]) -> str:
    rows = result.get("energy_bins") or []
    if not rows:
        return ""
    lines = [
        "| E_inc [GeV] | N ref | N gen | response ref | response gen | ratio | σ/μ ref | σ/μ gen | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{row['e_low_mev'] / 1e3:.3g}–{row['e_high_mev'] / 1e3:.3g}", str(row["n_reference"]),
                 str(row["n_generated"])]
        cells += [_fmt(row[f"{kind}_{which}"]) for kind in ("response", "resolution")
                  for which in ("reference", "generated", "ratio")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any, error: Any = None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.4g}"
    return f"{text} ± {error:.2g}" if error is not None else text


def _report_markdown(comparison: Comparison, plots: list[Path]) -> str:
    r = comparison.result
    parts = [
        "# fastsim validation report",
        "",
        f"- generated: `{r['generated']['source']}` ({r['generated']['n_showers']} showers)",
        f"- reference: `{r['reference']['source']}` ({r['reference']['n_showers']} showers)",
        f"- geometry: {r['geometry']['n_layers']} layers, {r['geometry']['n_voxels']} voxels; "
        f"voxel threshold {r['threshold_mev']:.4g} MeV",
        "",
        "Lower is better for every metric except the classifier AUC, where 0.5 means the "
        "classifier cannot tell the samples apart. The middle column compares all generated "
        "with all reference showers. The right-hand column compares two halves (even and odd "
        "rows) of the reference with each other: what a perfect surrogate scores at half the "
        "sample size. Finite-sample floors of separation power, FPD and KPD fall about as 1/N, "
        "so at the full size a perfect surrogate would score about half of that column "
        "(Wasserstein-1: about 1/sqrt(2) of it). Separation powers of per-layer features are "
        "averaged over layers (CaloChallenge binnings); Wasserstein-1 distances are in units "
        "of the reference's standard deviation.",
        "",
        "## Metrics",
        "",
        format_table(r),
        "",
    ]
    energy = format_energy_table(r)
    if energy:
        parts += ["## Response and resolution per incident-energy bin", "", energy, ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(parts)


def write_report(
    generated: Any,
    reference: Any,
    output_dir: str | os.PathLike,
    geometry: CylindricalGeometry | None = None,
    groups: Sequence[str] = DEFAULT_GROUPS,
    n_max: int | None = None,
    *,
    plots: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Run :func:`validate` and write ``metrics.json``, ``report.md`` and PNG plots to ``output_dir``.

    Files are written under temporary names and renamed, ``metrics.json``
    last, so a folder with a ``metrics.json`` is a complete report. Plots need
    matplotlib (``pip install 'fastsim[plots]'``); with ``plots=False`` none are
    drawn. Returns the metrics dict.
    """
    if plots:
        from fastsim import plots as plotting

        plotting.require_matplotlib()
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output_dir: expected a folder, got an existing file {str(folder)!r}")
    comparison = compare(generated, reference, geometry, groups, n_max, **options)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output_dir: cannot create {str(folder)!r}: {exc.strerror}") from None
    stale = folder / "metrics.json"
    if stale.exists():
        stale.unlink()  # the report is being replaced; never leave the old one looking current
    drawn = plotting.draw_all(comparison, folder) if plots else []
    _atomic_write(folder / "report.md", _report_markdown(comparison, drawn))
    _atomic_write(folder / "metrics.json", json.dumps(comparison.result, indent=2, allow_nan=False) + "\n")
    return comparison.result


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text, what="report")
