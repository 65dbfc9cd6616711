"""The validation report: how closely generated showers agree with a reference sample.

The comparison protocol is defined here: which features are compared with
which metric and binning (the CaloChallenge conventions, see
:mod:`fastsim.validation.features` and :mod:`fastsim.validation.metrics`), the
floor printed beside every number (what a perfect surrogate scores at the same
sample sizes), the statistical error of every figure, the per-energy-bin
response and resolution table, the same per bin of the incidence angle theta
(``theta-bins``), the shower shape in the frame of an inclined track
(``inclined-shape``), the worst layers and features, the consistency checks on
the inputs, and the report folder (``metrics.json``, ``report.md``, PNG plots
from :mod:`fastsim.validation.plots`).

- :func:`validate` -- all metrics as a JSON-ready dict.
- :func:`quick_figure_of_merit` -- one cheap number (lower is better) for use
  after every training epoch.
- :func:`write_report` -- :func:`validate` plus the report folder.

Inputs are paths (a CaloChallenge HDF5 file or a folder of shards), open
shower files, or in-memory ``(incident_energies, showers)`` pairs. Files may
carry per-shower ``incident_theta`` and ``incident_phi`` (radians); in-memory
pairs are at normal incidence. Files are
streamed; only the per-shower features and the voxel classifier's sample are held.

The floor (``"reference"`` in each metric entry) is measured at the
comparison's sample sizes, by the first method that applies (see
``docs/validation.md``):

1. ``independent``: a second, independent reference (``floor_reference``)
   against the reference, with as many showers as the generated sample;
2. ``split``: a reference with at least twice the generated showers is split:
   its last ``n_generated`` rows are the floor sample, the rest the reference;
3. ``bootstrap``: two bootstrap samples of the reference, of the generated and
   the reference sizes, against each other (mean over resamples); for the
   classifiers, FPD and KPD, whose null value does not depend on the sample
   size, two halves of the reference (``halves``).

Errors are standard deviations over bootstrap resamples of the showers
(separation power, Wasserstein-1), over test-set resamples (AUC), of the
binned means and widths (response, resolution), or the metric's own (FPD, KPD).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from fastsim._util import atomic_write_text
from fastsim.dataset import ShowerSource
from fastsim.errors import DataError, OutputError
from fastsim.geometry import PARTICLE_NAMES, CylindricalGeometry, default_geometry
from fastsim.validation import metrics
from fastsim.validation.features import (
    DEFAULT_THRESHOLD_MEV,
    ShowerFeatures,
    compute_features,
    iter_source,
    track_frame_moments,
    voxel_energy_edges,
)

__all__ = [
    "ALL_GROUPS",
    "CONDITION_GROUPS",
    "DEFAULT_GROUPS",
    "FLOOR_METHODS",
    "GROUP_CONDITIONS",
    "Comparison",
    "compare",
    "format_energy_table",
    "format_inclined_table",
    "format_layer_table",
    "format_particle_table",
    "format_table",
    "format_theta_table",
    "format_worst",
    "open_input",
    "quick_figure_of_merit",
    "validate",
    "voxel_classifier_inputs",
    "write_report",
]

#: How a floor was measured (the ``floor_method`` of a metric entry).
FLOOR_METHODS = {
    "independent": "an independent reference of the generated sample's size against the reference",
    "split": "the reference's last n_generated showers against the rest of it",
    "bootstrap": "two bootstrap samples of the reference, of the generated and reference sizes (mean over resamples)",
    "halves": "two halves of the reference (a metric whose null value does not depend on the sample size)",
}

# Fixed CaloChallenge binnings (mm); the log binnings depend on the reference (see _binnings).
_CENTRE_EDGES = np.linspace(-30.0, 30.0, 101)
_WIDTH_EDGES = np.linspace(0.0, 30.0, 101)
_RESPONSE_EDGES = np.linspace(0.5, 1.5, 101)
_N_ENERGY_BINS = 10
_N_THETA_BINS = 6
# Bins per layer of the track-frame centre and width histograms (inclined-shape), over the reference's
# central 99.8 %: a theta bin holds a sixth of the showers, so fewer bins than the 100 of the full sample.
_N_SHAPE_BINS = 30
_SHAPE_QUANTITIES = ("centre_u", "centre_v", "width_u", "width_v")
_MIN_BIN_ROWS = 10
_MIN_CLASSIFIER_ROWS = 50
_N_WORST = 10
# Relative tolerance, as a fraction of the reference's log-energy span, on the
# energy ranges of the two inputs (the extremes of a finite sample wander a little).
_ENERGY_RANGE_TOLERANCE = 0.1


# ----------------------------------------------------------------------------- inputs

#: What the validation functions take: the path of a shower file or of a folder of shards,
#: an open shower source, or an in-memory ``(incident_energies, showers)`` pair.
ShowerInput: TypeAlias = "str | os.PathLike[str] | ShowerSource | tuple[npt.ArrayLike, np.ndarray]"
#: An input as :func:`open_input` returns it: an open source, or a pair with energies (N,) float64.
OpenInput: TypeAlias = "ShowerSource | tuple[np.ndarray, np.ndarray]"


def open_input(source: ShowerInput, geometry: CylindricalGeometry | None, *, name: str) -> OpenInput:
    """Turn a path into an open shower file; pass arrays and open files through.

    The one place that decides what a validation input may be. With
    ``geometry=None`` a file finds its own (the binning XML beside it, else
    dataset 2 when the voxel count fits). Voxel counts are checked against the
    geometry later, with a message naming ``name``.
    """
    if isinstance(source, (str, os.PathLike)):
        from fastsim.shards import open_dataset  # a file, or a folder of shards

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


def _n_voxels(source: OpenInput) -> int:
    return int(source[1].shape[1]) if isinstance(source, tuple) else int(source.n_voxels)


def _incident_energies(source: OpenInput) -> np.ndarray:
    if isinstance(source, tuple):
        return source[0]
    return np.asarray(source.incident_energies, dtype=np.float64).reshape(-1)


def _describe(source: OpenInput | None) -> str:
    path = getattr(source, "path", None)
    return str(path) if path is not None else "in-memory arrays"


def _check_inputs(samples: list[tuple[str, _Rows]], ref: _Rows, geometry: CylindricalGeometry) -> None:
    """Voxel counts, sample sizes and energy ranges of every sample against the reference's rows."""
    for name, rows in [*samples, ("reference", ref)]:
        if _n_voxels(rows.source) != geometry.n_voxels:
            raise DataError(
                f"{name}: showers have {_n_voxels(rows.source)} voxels but the geometry has {geometry.n_voxels} "
                f"({geometry.n_layers} layers); pass the matching geometry XML"
            )
        if rows.n < 10:
            raise DataError(f"{name}: need at least 10 showers to compare, got {rows.n}")
        energies = _incident_energies(rows.source)[rows.start:rows.stop]
        if not np.all(np.isfinite(energies)) or np.any(energies <= 0):
            raise DataError(f"{name}: incident energies must be finite and > 0 MeV")
    e_ref = _incident_energies(ref.source)[ref.start:ref.stop]
    lo_ref, hi_ref = float(e_ref.min()), float(e_ref.max())
    span = math.log(hi_ref / lo_ref)
    tolerance = max(_ENERGY_RANGE_TOLERANCE * span, 0.01)
    for name, rows in samples:
        energies = _incident_energies(rows.source)[rows.start:rows.stop]
        lo, hi = float(energies.min()), float(energies.max())
        if abs(math.log(lo / lo_ref)) > tolerance or abs(math.log(hi / hi_ref)) > tolerance:
            raise DataError(
                f"{name}: incident energies span {lo:.6g}-{hi:.6g} MeV but the reference spans "
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


@dataclass(frozen=True)
class _Rows:
    """Rows ``start:stop`` of an open source."""

    source: OpenInput
    start: int
    stop: int

    @property
    def n(self) -> int:
        return self.stop - self.start

    def chunks(self) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        return iter_source(self.source, start=self.start, stop=self.stop)

    def condition(self, name: str) -> np.ndarray | None:
        """A per-shower condition (``theta``, ``phi``) of these rows, or None when the source carries none."""
        values = _conditions(self.source).get(name)
        return None if values is None else values[self.start:self.stop]

    def theta(self) -> np.ndarray:
        """Polar angles of these rows (radians); zeros at normal incidence (no ``incident_theta``)."""
        theta = self.condition("theta")
        return theta if theta is not None else np.zeros(self.n)


def _conditions(source: OpenInput) -> dict[str, np.ndarray]:
    """The per-shower conditions a source carries (files: see ``fastsim.dataset``; arrays: none)."""
    if isinstance(source, tuple):
        return {}
    return dict(getattr(source, "conditions", None) or {})


@dataclass
class _Run:
    """The state shared by the metric groups of one comparison."""

    gen: _Rows
    ref: _Rows
    floor: _Rows | None  # None: the floors are bootstrap samples of the reference
    method: str
    f_gen: ShowerFeatures
    f_ref: ShowerFeatures
    f_floor: ShowerFeatures | None
    geometry: CylindricalGeometry
    threshold: float
    bins: dict[str, Any]
    options: dict[str, Any]
    table: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_layer: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    more: dict[str, Any] = field(default_factory=dict)

    def rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.options["seed"], salt])

    def put(self, key: str, value: float, error: float, floor: float, floor_error: float, method: str,
            **more: Any) -> None:
        self.table[key] = {"value": value, "error": error, "reference": floor, "reference_error": floor_error,
                           "floor_method": method, **more}


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


def _separation(a: ShowerFeatures, b: ShowerFeatures,
                bins: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Separation powers, one histogram per feature: scalars, per-layer lists and their means over layers."""
    summary: dict[str, float] = {}
    per_layer: dict[str, list[float]] = {}
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


def _columns(f: ShowerFeatures) -> np.ndarray:
    """The scalar features, then every per-layer family layer by layer, as an (N, F) matrix."""
    parts = [_feature(f, name)[:, None] for name in _SCALAR] + [_feature(f, name) for name in _PER_LAYER]
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts], axis=1)


def _column_names(n_layers: int) -> list[tuple[str, int | None]]:
    return [(name, None) for name in _SCALAR] + [(name, layer) for name in _PER_LAYER for layer in range(n_layers)]


def _column_edges(bins: dict[str, Any], n_layers: int) -> list[np.ndarray]:
    edges = []
    for name, layer in _column_names(n_layers):
        e = bins[name]
        edges.append(e[layer] if isinstance(e, list) and layer is not None else e)
    return edges


class _Histograms:
    """Histograms of many columns at once, for any bootstrap resample of the rows.

    Every value is mapped once to a global bin number (``np.histogram``'s rule:
    half-open bins, the last one closed, values outside and non-finite
    dropped); a resample's histograms are then one ``bincount``.
    """

    def __init__(self, columns: np.ndarray, edges: list[np.ndarray]) -> None:
        n_bins = np.array([len(e) - 1 for e in edges])
        self.starts = np.concatenate([[0], np.cumsum(n_bins)[:-1]])
        self.total = int(n_bins.sum())
        self.column_of_bin = np.repeat(np.arange(len(edges)), n_bins)
        flat = np.full(columns.shape, self.total, dtype=np.int32)
        for j, e in enumerate(edges):
            v = columns[:, j]
            index = np.searchsorted(e, v, side="right") - 1
            index[v == e[-1]] = len(e) - 2
            ok = np.isfinite(v) & (index >= 0) & (index < len(e) - 1)
            flat[ok, j] = index[ok] + self.starts[j]
        self.flat = flat

    @property
    def n(self) -> int:
        return len(self.flat)

    def counts(self, rows: np.ndarray | None = None) -> np.ndarray:
        chosen = self.flat if rows is None else self.flat[rows]
        return np.bincount(chosen.ravel(), minlength=self.total + 1)[: self.total].astype(np.float64)


def _separation_of_counts(h1: np.ndarray, h2: np.ndarray, starts: np.ndarray, column_of_bin: np.ndarray) -> np.ndarray:
    """Separation power per column from concatenated histograms (nan where either is empty)."""
    s1, s2 = np.add.reduceat(h1, starts), np.add.reduceat(h2, starts)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1 = h1 / s1[column_of_bin]
        p2 = h2 / s2[column_of_bin]
        total = p1 + p2
        term = np.where(total > 0, (p1 - p2) ** 2 / np.where(total > 0, total, 1.0), 0.0)
    out = 0.5 * np.add.reduceat(term, starts)
    out[(s1 <= 0) | (s2 <= 0)] = np.nan
    return out


def _resample(rng: np.random.Generator, n_from: int, size: int) -> np.ndarray:
    return rng.integers(0, n_from, size)


def _stat_pair(
    a: Any, b: Any, metric: Callable[[Any, Any, np.ndarray | None, np.ndarray | None], np.ndarray],
    *, floor_a: Any | None, n_a: int, n_b: int, rng: np.random.Generator, n_bootstrap: int,
    n_floor: int | None = None,
) -> dict[str, np.ndarray]:
    """Value, bootstrap error, floor and floor error of a vector-valued two-sample statistic.

    ``metric(x, y, rows_x, rows_y)`` evaluates the statistic on rows of x and
    y (all rows for None). With ``floor_a`` (an independent sample of a's
    size, or of ``n_floor`` rows) the floor is ``metric(floor_a, b)``. Without it the floor comes from
    bootstrap samples of b of sizes ``n_a`` and ``n_b``: resampling the
    empirical distribution loses its sparsely filled tails, which biases the
    floor low (by up to 20 % for the 100-bin centre histograms at 3,000
    showers); the iterated-bootstrap correction ``B1**2 / B2`` (B1: samples
    of b, B2: samples of a bootstrap sample of b) removes most of that (see
    ``docs/validation.md``). The floor error is the spread of B1.
    """
    value = metric(a, b, None, None)
    reps = np.array([metric(a, b, _resample(rng, n_a, n_a), _resample(rng, n_b, n_b)) for _ in range(n_bootstrap)])
    out = {"value": value, "error": _nanstd(reps), "reps": reps}
    if floor_a is not None:
        out["floor"] = metric(floor_a, b, None, None)
        n_f = n_a if n_floor is None else n_floor
        out["floor_reps"] = np.array([metric(floor_a, b, _resample(rng, n_f, n_f), _resample(rng, n_b, n_b))
                                      for _ in range(n_bootstrap)])
        out["floor_error"] = _nanstd(out["floor_reps"])
        return out
    first, second = [], []
    for _ in range(n_bootstrap):
        first.append(metric(b, b, _resample(rng, n_b, n_a), _resample(rng, n_b, n_b)))
        star = _resample(rng, n_b, n_b)
        second.append(metric(b, b, star[_resample(rng, n_b, n_a)], star[_resample(rng, n_b, n_b)]))
    out["floor_reps"], out["floor_reps2"] = np.array(first), np.array(second)
    out["floor"] = _iterated(out["floor_reps"], out["floor_reps2"])
    out["floor_error"] = _nanstd(out["floor_reps"])
    return out


def _iterated(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The iterated-bootstrap floor mean(B1)**2 / mean(B2), per column."""
    m1, m2 = _nanmean(first), _nanmean(second)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m2 > 0, m1 * m1 / np.where(m2 > 0, m2, 1.0), m1)


def _nanstd(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    count = ok.sum(axis=0)
    mean = np.where(ok, x, 0.0).sum(axis=0) / np.maximum(count, 1)
    var = np.where(ok, (x - mean) ** 2, 0.0).sum(axis=0) / np.maximum(count - 1, 1)
    return np.where(count > 1, np.sqrt(var), np.nan)


def _nanmean(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    return np.where(ok.any(axis=0), np.where(ok, x, 0.0).sum(axis=0) / np.maximum(ok.sum(axis=0), 1), np.nan)


def _family_means(per_column: np.ndarray, n_layers: int) -> np.ndarray:
    """Scalars as they are, then each per-layer family's mean over layers (last axis is the column)."""
    scalars = per_column[..., : len(_SCALAR)]
    layers = per_column[..., len(_SCALAR):].reshape(*per_column.shape[:-1], len(_PER_LAYER), n_layers)
    ok = np.isfinite(layers)
    with np.errstate(invalid="ignore"):
        means = np.where(ok.any(axis=-1), np.where(ok, layers, 0.0).sum(axis=-1) / np.maximum(ok.sum(axis=-1), 1),
                         np.nan)
    return np.concatenate([scalars, means], axis=-1)


def _record_family_stats(run: _Run, prefix: str, stats: dict[str, np.ndarray], method: str, **more: Any) -> None:
    """Put the scalar and family-mean entries and the per-layer lists of a column statistic."""
    n_layers = run.geometry.n_layers
    names = list(_SCALAR) + list(_PER_LAYER)
    value = _family_means(stats["value"], n_layers)
    error = _nanstd(_family_means(stats["reps"], n_layers))
    if method == "bootstrap":
        floor_means = _family_means(stats["floor_reps"], n_layers)
        floor = _iterated(floor_means, _family_means(stats["floor_reps2"], n_layers))
        floor_error = _nanstd(floor_means)
    else:
        floor = _family_means(stats["floor"], n_layers)
        floor_error = _nanstd(_family_means(stats["floor_reps"], n_layers))
    for i, name in enumerate(names):
        run.put(f"{prefix}.{name}", value[i], error[i], floor[i], floor_error[i], method, **more)
    for k, name in enumerate(_PER_LAYER):
        cols = slice(len(_SCALAR) + k * n_layers, len(_SCALAR) + (k + 1) * n_layers)
        run.per_layer[f"{prefix}.{name}"] = {
            key: [float(v) for v in stats[src][cols]]
            for key, src in (("value", "value"), ("error", "error"), ("reference", "floor"),
                             ("reference_error", "floor_error"))
        }


# ----------------------------------------------------------------------------- metric groups


def _separation_group(run: _Run) -> None:
    """Separation power of every feature and layer, and of the voxel-energy spectrum."""
    n_layers = run.geometry.n_layers
    edges = _column_edges(run.bins, n_layers)
    hist = {key: _Histograms(_columns(f), edges) for key, f in
            (("gen", run.f_gen), ("ref", run.f_ref), ("floor", run.f_floor)) if f is not None}
    starts, column_of_bin = hist["ref"].starts, hist["ref"].column_of_bin

    def metric(a: _Histograms, b: _Histograms, rows_a: np.ndarray | None, rows_b: np.ndarray | None) -> np.ndarray:
        return _separation_of_counts(a.counts(rows_a), b.counts(rows_b), starts, column_of_bin)

    stats = _stat_pair(hist["gen"], hist["ref"], metric, floor_a=hist.get("floor"), n_a=run.f_gen.n,
                       n_b=run.f_ref.n, rng=run.rng(1), n_bootstrap=run.options["n_bootstrap"])
    _record_family_stats(run, "separation_power", stats, run.method)
    run.more["separation_columns"] = stats

    # The voxel-energy spectrum, from per-shower histograms so that showers can be resampled.
    ring_index, ring_centres = _ring_index(run.geometry)
    v_edges = voxel_energy_edges(run.f_ref.max_voxel_energy.max(), threshold=run.threshold)
    passes = {key: _voxel_pass(rows, v_edges, ring_index, len(ring_centres))
              for key, rows in (("gen", run.gen), ("ref", run.ref), ("floor", run.floor)) if rows is not None}
    one = np.array([0])

    def spectrum(a: np.ndarray, b: np.ndarray, rows_a: np.ndarray | None, rows_b: np.ndarray | None) -> np.ndarray:
        ha = a.sum(axis=0) if rows_a is None else a[rows_a].sum(axis=0)
        hb = b.sum(axis=0) if rows_b is None else b[rows_b].sum(axis=0)
        return _separation_of_counts(ha.astype(np.float64), hb.astype(np.float64), one, np.zeros(len(ha), int))

    floor_hist = passes["floor"]["per_shower"] if "floor" in passes else None
    s = _stat_pair(passes["gen"]["per_shower"], passes["ref"]["per_shower"], spectrum, floor_a=floor_hist,
                   n_a=run.gen.n, n_b=run.ref.n, rng=run.rng(2), n_bootstrap=run.options["n_bootstrap"])
    run.put("separation_power.voxel_energy", s["value"][0], s["error"][0], s["floor"][0], s["floor_error"][0],
            run.method)
    run.extras.update(
        voxel_edges=v_edges,
        voxel_counts_generated=passes["gen"]["per_shower"].sum(axis=0),
        voxel_counts_reference=passes["ref"]["per_shower"].sum(axis=0),
        ring_centres=ring_centres,
        radial_profile_generated=passes["gen"]["radial_profile"],
        radial_profile_reference=passes["ref"]["radial_profile"],
        radial_profile_error_generated=passes["gen"]["radial_profile_error"],
        radial_profile_error_reference=passes["ref"]["radial_profile_error"],
    )


class _Wasserstein:
    """W1 of many columns between samples a and b, for any resample weights (one sort per column)."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        merged = np.concatenate([a, b])
        self.order = np.argsort(merged, axis=0, kind="stable")
        self.steps = np.diff(np.take_along_axis(merged, self.order, axis=0), axis=0)
        self.n_a = len(a)

    def distance(self, w_a: np.ndarray, w_b: np.ndarray) -> np.ndarray:
        """W1 with integer row multiplicities: the CDF gap is summed in exact integers, so identical samples give 0."""
        total_a, total_b = w_a.sum(), w_b.sum()
        signed = np.concatenate([w_a * total_b, -w_b * total_a])
        cdf_gap = np.cumsum(signed[self.order], axis=0)[:-1]
        distance: np.ndarray = np.sum(np.abs(cdf_gap) * self.steps, axis=0) / (total_a * total_b)
        return distance


def _wasserstein_group(run: _Run) -> None:
    """W1 per feature in units of the reference's standard deviation (mean over layers for families).

    Errors and floors as for the separation power (:func:`_stat_pair`), with
    resamples expressed as row multiplicities so that each column is sorted once.
    """
    n_gen, n_ref = run.f_gen.n, run.f_ref.n
    x_gen, x_ref = _columns(run.f_gen), _columns(run.f_ref)
    x_floor = _columns(run.f_floor) if run.f_floor is not None else None
    std = x_ref.std(axis=0)
    scale = np.where(std > 0, std, np.nan)  # a constant reference feature has no scale: left out
    rng = run.rng(3)
    n_boot = run.options["n_bootstrap"]

    def multiplicity(rows: np.ndarray, n_from: int) -> np.ndarray:
        return np.bincount(rows, minlength=n_from).astype(np.float64)

    def draw(n_from: int, size: int) -> np.ndarray:
        return multiplicity(_resample(rng, n_from, size), n_from)

    draws = [(draw(n_gen, n_gen), draw(n_ref, n_ref)) for _ in range(n_boot)]
    second: list[tuple[np.ndarray, np.ndarray]] = []
    if x_floor is not None:
        floor_draws = [(draw(n_gen, n_gen), draw(n_ref, n_ref)) for _ in range(n_boot)]
    else:
        floor_draws = [(draw(n_ref, n_gen), draw(n_ref, n_ref)) for _ in range(n_boot)]
        for _ in range(n_boot):
            star = _resample(rng, n_ref, n_ref)
            second.append((multiplicity(star[_resample(rng, n_ref, n_gen)], n_ref),
                           multiplicity(star[_resample(rng, n_ref, n_ref)], n_ref)))
    n_cols = x_ref.shape[1]
    value, reps = np.empty(n_cols), np.empty((n_boot, n_cols))
    floor, floor_reps, floor_reps2 = np.full(n_cols, np.nan), np.empty((n_boot, n_cols)), np.empty((n_boot, n_cols))
    other = x_floor if x_floor is not None else x_ref
    block = 32  # columns per sort: bounds the memory to a few times (n_gen + n_ref) x 32 values
    for begin in range(0, n_cols, block):
        cols = slice(begin, begin + block)
        pair = _Wasserstein(x_gen[:, cols], x_ref[:, cols])
        value[cols] = pair.distance(np.ones(n_gen), np.ones(n_ref))
        for i, (w_a, w_b) in enumerate(draws):
            reps[i, cols] = pair.distance(w_a, w_b)
        pair = _Wasserstein(other[:, cols], x_ref[:, cols])
        if x_floor is not None:
            floor[cols] = pair.distance(np.ones(len(x_floor)), np.ones(n_ref))
        for i, (w_a, w_b) in enumerate(floor_draws):
            floor_reps[i, cols] = pair.distance(w_a, w_b)
        for i, (w_a, w_b) in enumerate(second):
            floor_reps2[i, cols] = pair.distance(w_a, w_b)
    stats = {"value": value / scale, "reps": reps / scale, "error": _nanstd(reps / scale),
             "floor_reps": floor_reps / scale, "floor_error": _nanstd(floor_reps / scale)}
    if x_floor is not None:
        stats["floor"] = floor / scale
    else:
        stats["floor_reps2"] = floor_reps2 / scale
        stats["floor"] = _iterated(stats["floor_reps"], stats["floor_reps2"])
    _record_family_stats(run, "wasserstein", stats, run.method, unit="reference std")


def _energy_edges(e_ref: np.ndarray) -> np.ndarray:
    """Log-spaced incident-energy bin edges over the reference's range (one bin at a single energy)."""
    lo, hi = e_ref.min(), e_ref.max()
    if hi <= lo * 1.0001:
        return np.array([lo * 0.999, hi * 1.001])
    edges = np.logspace(math.log10(lo), math.log10(hi), _N_ENERGY_BINS + 1)
    edges[-1] *= 1.0 + 1e-9  # include the largest reference energy
    return edges


def _theta_edges(theta_ref: np.ndarray) -> np.ndarray:
    """Equal theta bins (radians) over the reference's range (one bin when every shower has one angle)."""
    lo, hi = float(theta_ref.min()), float(theta_ref.max())
    if hi - lo < 1e-6:
        return np.array([lo, hi + 1e-6])
    edges = np.linspace(lo, hi, _N_THETA_BINS + 1)
    edges[-1] = hi + 1e-9 * max(hi, 1.0)  # include the largest reference angle
    return edges


def _binned_response(edges: np.ndarray, keys: tuple[str, str], scale: float, x_gen: np.ndarray, r_gen: np.ndarray,
                     x_ref: np.ndarray, r_ref: np.ndarray) -> list[dict[str, float]]:
    """Mean response and relative resolution per bin of a condition ``x``, with their errors and ratios.

    ``edges`` are half-open bins of x; ``keys`` name a row's low and high edges, written times ``scale``.
    """
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        row: dict[str, float] = {keys[0]: float(low * scale), keys[1]: float(high * scale)}
        for label, xs, response in (("reference", x_ref, r_ref), ("generated", x_gen, r_gen)):
            resp = response[(xs >= low) & (xs < high)]
            n = len(resp)
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
        for key in ("response", "resolution"):
            ratio = _ratio(row[f"{key}_generated"], row[f"{key}_reference"])
            row[f"{key}_ratio"] = ratio
            row[f"{key}_ratio_error"] = abs(ratio) * math.hypot(
                _ratio(row[f"{key}_error_generated"], row[f"{key}_generated"]),
                _ratio(row[f"{key}_error_reference"], row[f"{key}_reference"]),
            )
        rows.append(row)
    return rows


def _energy_bins(e_gen: np.ndarray, r_gen: np.ndarray, e_ref: np.ndarray, r_ref: np.ndarray) -> list[dict[str, float]]:
    """Mean response and relative resolution per log-spaced incident-energy bin, with their errors."""
    return _binned_response(_energy_edges(e_ref), ("e_low_mev", "e_high_mev"), 1.0, e_gen, r_gen, e_ref, r_ref)


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else float("nan")


def _max_deviation(rows: list[dict[str, float]], key: str) -> tuple[float, float]:
    """The largest |ratio - 1| over the energy bins and the error of that bin's ratio."""
    ratios = np.array([row[f"{key}_ratio"] for row in rows], dtype=float)
    errors = np.array([row[f"{key}_ratio_error"] for row in rows], dtype=float)
    ok = np.isfinite(ratios)
    if not ok.any():
        return float("nan"), float("nan")
    worst = int(np.argmax(np.where(ok, np.abs(ratios - 1.0), -1.0)))
    return float(abs(ratios[worst] - 1.0)), float(errors[worst])


_Binned = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], list[dict[str, float]]]


def _put_max_deviations(run: _Run, prefix: str, binned: _Binned, x: dict[str, np.ndarray | None],
                        salt: int) -> tuple[list[dict[str, float]], list[dict[str, float]] | None]:
    """The binned response table of generated vs reference, its worst deviations with errors and floors.

    ``binned(x_gen, r_gen, x_ref, r_ref)`` makes the rows; ``x`` holds the binning
    variable per sample (``gen``, ``ref``, ``floor``). The floor is the same table
    for the floor sample against the reference, else the mean over bootstrap
    samples of the reference (of the generated and the reference sizes).
    Returns the rows and the floor sample's rows (None without a floor sample).
    """
    x_gen, x_ref, x_floor = x["gen"], x["ref"], x.get("floor")
    assert x_gen is not None and x_ref is not None
    r_gen, r_ref = run.f_gen.response, run.f_ref.response
    rows = binned(x_gen, r_gen, x_ref, r_ref)
    floor_rows = None
    if run.f_floor is not None and x_floor is not None:
        floor_rows = binned(x_floor, run.f_floor.response, x_ref, r_ref)
        floors = {key: _max_deviation(floor_rows, key) for key in ("response", "resolution")}
    else:
        rng = run.rng(salt)
        samples = []
        for _ in range(run.options["n_bootstrap"]):
            a, b = _resample(rng, run.f_ref.n, run.f_gen.n), _resample(rng, run.f_ref.n, run.f_ref.n)
            boot = binned(x_ref[a], r_ref[a], x_ref[b], r_ref[b])
            samples.append([_max_deviation(boot, key)[0] for key in ("response", "resolution")])
        table = np.array(samples)
        floors = {key: (float(_nanmean(table[:, i])), float(_nanstd(table[:, i])))
                  for i, key in enumerate(("response", "resolution"))}
    for key in ("response", "resolution"):
        value, error = _max_deviation(rows, key)
        run.put(f"{prefix}.max_{key}_deviation", value, error, *floors[key], run.method)
    return rows, floor_rows


def _energy_bins_group(run: _Run) -> None:
    """Response and resolution per incident-energy bin; their worst deviations with errors and floors."""
    x = {"gen": run.f_gen.incident_energy, "ref": run.f_ref.incident_energy,
         "floor": run.f_floor.incident_energy if run.f_floor is not None else None}
    run.more["energy_rows"], _ = _put_max_deviations(run, "energy_bins", _energy_bins, x, salt=4)


def _theta_bins_group(run: _Run) -> None:
    """Response and resolution per bin of the polar angle theta; deviations in per cent, floors beside them."""
    theta_ref = run.ref.theta()
    theta = {"gen": run.gen.theta(), "ref": theta_ref, "floor": run.floor.theta() if run.floor else None}
    edges = _theta_edges(theta_ref)

    def binned(x_gen: np.ndarray, r_gen: np.ndarray, x_ref: np.ndarray, r_ref: np.ndarray) -> list[dict[str, float]]:
        return _binned_response(edges, ("theta_low_deg", "theta_high_deg"), 180.0 / math.pi, x_gen, r_gen, x_ref,
                                r_ref)

    rows, floor_rows = _put_max_deviations(run, "theta_bins", binned, theta, salt=7)
    run.more["theta_rows"] = _with_deviations_pct(rows, floor_rows)


def _with_deviations_pct(rows: list[dict[str, float]],
                         floor_rows: list[dict[str, float]] | None) -> list[dict[str, float]]:
    """Rows with their response and resolution deviations in per cent, and the floor sample's beside them."""
    for i, row in enumerate(rows):
        for source, label in ((row, ""), (floor_rows[i] if floor_rows else None, "floor_")):
            for key in ("response", "resolution"):
                ratio = source[f"{key}_ratio"] if source else float("nan")
                error = source[f"{key}_ratio_error"] if source else float("nan")
                row[f"{label}{key}_deviation_pct"] = 100.0 * (ratio - 1.0)
                row[f"{label}{key}_deviation_error_pct"] = 100.0 * error
        if floor_rows:
            row["n_floor"] = floor_rows[i]["n_generated"]
    return rows


def _particle_bins_group(run: _Run) -> None:
    """Response and resolution per particle type (PDG id) of the reference; deviations in per cent, floors beside."""
    ids = {"gen": run.gen.condition("particle"), "ref": run.ref.condition("particle"),
           "floor": run.floor.condition("particle") if run.floor else None}
    if ids["ref"] is None or ids["gen"] is None:
        raise DataError("generated and reference: the particle-bins group needs a 'particle' dataset (PDG ids) in "
                        "both files; leave it out of --metrics for single-particle files")
    pdgs = np.unique(ids["ref"])

    def binned(x_gen: np.ndarray, r_gen: np.ndarray, x_ref: np.ndarray, r_ref: np.ndarray) -> list[dict[str, float]]:
        rows = []
        for pdg in pdgs:
            row = _binned_response(np.array([pdg - 0.5, pdg + 0.5]), ("pdg_low", "pdg_high"), 1.0, x_gen, r_gen,
                                   x_ref, r_ref)[0]
            rows.append({"particle": float(pdg), **{k: v for k, v in row.items() if not k.startswith("pdg_")}})
        return rows

    rows, floor_rows = _put_max_deviations(run, "particle_bins", binned, ids, salt=8)
    run.more["particle_rows"] = _with_deviations_pct(rows, floor_rows)


def _shape_columns(f: ShowerFeatures, phi: np.ndarray | None, layers: list[int]) -> np.ndarray:
    """Track-frame centres and widths (N, 4 * len(layers)), quantity by quantity; nan where a layer is empty."""
    moments = track_frame_moments(f, phi if phi is not None else np.zeros(f.n))
    empty = f.layer_energy[:, layers] <= 0
    parts = []
    for name in _SHAPE_QUANTITIES:
        values = np.array(moments[name][:, layers], dtype=np.float64)
        values[empty] = np.nan
        parts.append(values)
    return np.concatenate(parts, axis=1)


def _shape_edges(columns: np.ndarray) -> list[np.ndarray]:
    """Per column, equal bins over the reference's central 99.8 % (entries outside are dropped)."""
    edges = []
    for j in range(columns.shape[1]):
        v = columns[:, j][np.isfinite(columns[:, j])]
        lo, hi = (np.percentile(v, [0.1, 99.9]) if v.size else (0.0, 1.0))
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges.append(np.linspace(lo, hi, _N_SHAPE_BINS + 1))
    return edges


def _layer_mean_stats(stats: dict[str, np.ndarray], n_layers: int, bootstrap: bool) -> dict[str, np.ndarray]:
    """Per quantity, the mean over layers of a per-column statistic, with error, floor and floor error."""
    def means(x: np.ndarray) -> np.ndarray:
        x = x.reshape(*x.shape[:-1], len(_SHAPE_QUANTITIES), n_layers)
        ok = np.isfinite(x)
        return np.where(ok.any(axis=-1), np.where(ok, x, 0.0).sum(axis=-1) / np.maximum(ok.sum(axis=-1), 1), np.nan)

    out = {"value": means(stats["value"]), "error": _nanstd(means(stats["reps"]))}
    if bootstrap:
        floor_means = means(stats["floor_reps"])
        out["floor"] = _iterated(floor_means, means(stats["floor_reps2"]))
        out["floor_error"] = _nanstd(floor_means)
    else:
        out["floor"] = means(stats["floor"])
        out["floor_error"] = _nanstd(means(stats["floor_reps"]))
    return out


def _inclined_shape_group(run: _Run) -> None:
    """Separation power of the track-frame centres and widths per layer, per theta bin and overall."""
    layers = [i for i, layer in enumerate(run.geometry.layers) if layer.n_alpha > 1]
    if not layers:
        raise DataError("geometry: inclined-shape needs layers with more than one alpha sector (a single sector "
                        f"carries no azimuth), got {run.geometry.n_layers} layers of one sector")
    samples = {"gen": (run.f_gen, run.gen), "ref": (run.f_ref, run.ref)}
    if run.f_floor is not None and run.floor is not None:
        samples["floor"] = (run.f_floor, run.floor)
    columns = {key: _shape_columns(f, rows.condition("phi"), layers) for key, (f, rows) in samples.items()}
    thetas = {key: rows.theta() for key, (_, rows) in samples.items()}
    edges = _shape_edges(columns["ref"])
    theta_edges = _theta_edges(thetas["ref"])
    bins = [(lo, hi) for lo, hi in zip(theta_edges[:-1], theta_edges[1:])] + [(-math.inf, math.inf)]
    rows = []
    for index, (lo, hi) in enumerate(bins):
        chosen = {key: (thetas[key] >= lo) & (thetas[key] < hi) for key in columns}
        row: dict[str, Any] = {
            "theta_low_deg": math.degrees(lo) if math.isfinite(lo) else None,
            "theta_high_deg": math.degrees(hi) if math.isfinite(hi) else None,
            **{f"n_{name}": int(chosen[key].sum()) for key, name in
               (("gen", "generated"), ("ref", "reference"), ("floor", "floor")) if key in chosen},
        }
        if min(int(c.sum()) for c in chosen.values()) < _MIN_BIN_ROWS:
            for name in _SHAPE_QUANTITIES:
                row[name] = {"value": None, "error": None, "reference": None, "reference_error": None}
            rows.append(row)
            continue
        hist = {key: _Histograms(columns[key][chosen[key]], edges) for key in columns}
        starts, column_of_bin = hist["ref"].starts, hist["ref"].column_of_bin

        def metric(a: _Histograms, b: _Histograms, rows_a: np.ndarray | None, rows_b: np.ndarray | None,
                   starts: np.ndarray = starts, column_of_bin: np.ndarray = column_of_bin) -> np.ndarray:
            return _separation_of_counts(a.counts(rows_a), b.counts(rows_b), starts, column_of_bin)

        stats = _stat_pair(hist["gen"], hist["ref"], metric, floor_a=hist.get("floor"), n_a=hist["gen"].n,
                           n_b=hist["ref"].n, rng=run.rng(100 + index), n_bootstrap=run.options["n_bootstrap"],
                           n_floor=hist["floor"].n if "floor" in hist else None)
        summary = _layer_mean_stats(stats, len(layers), bootstrap="floor" not in hist)
        for q, name in enumerate(_SHAPE_QUANTITIES):
            row[name] = {"value": summary["value"][q], "error": summary["error"][q],
                         "reference": summary["floor"][q], "reference_error": summary["floor_error"][q]}
        if math.isinf(hi):
            per_layer = len(layers)
            for q, name in enumerate(_SHAPE_QUANTITIES):
                cols = slice(q * per_layer, (q + 1) * per_layer)
                run.per_layer[f"inclined_shape.{name}"] = {
                    "layer": layers,
                    **{key: [float(v) for v in stats[src][cols]] for key, src in (
                        ("value", "value"), ("error", "error"), ("reference", "floor"),
                        ("reference_error", "floor_error"))},
                }
        rows.append(row)
    overall = rows.pop()
    for name in _SHAPE_QUANTITIES:
        entry = overall[name]
        run.put(f"inclined_shape.{name}", entry["value"], entry["error"], entry["reference"],
                entry["reference_error"], run.method)
    run.more["inclined_shape"] = {
        "layers": layers,
        "n_bins_per_layer": _N_SHAPE_BINS,
        "theta_bins": rows,
        "overall": {name: overall[name] for name in _SHAPE_QUANTITIES},
    }


def _physics_matrices(run: _Run) -> dict[str, np.ndarray]:
    """FPD/KPD inputs scaled by the reference's max |x| (jetnet's normalisation); built once."""
    if "physics" not in run.more:
        x_ref, _ = run.f_ref.matrix()
        scaled = {"ref": _scale_like(x_ref, x_ref), "gen": _scale_like(run.f_gen.matrix()[0], x_ref)}
        if run.f_floor is not None:
            scaled["floor"] = _scale_like(run.f_floor.matrix()[0], x_ref)
        run.more["physics"] = scaled
    physics: dict[str, np.ndarray] = run.more["physics"]
    return physics


def _null_pair(run: _Run, x: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, str]:
    """The reference and the floor sample of a size-independent metric: the floor file or two halves."""
    if "floor" in x:
        return x["ref"], x["floor"], run.method
    return x["ref"][1::2], x["ref"][0::2], "halves"


def _fpd_group(run: _Run) -> None:
    x = _physics_matrices(run)
    seed = run.options["seed"]
    value, error = metrics.fpd(x["ref"], x["gen"], normalise=False, seed=seed)
    ref, other, method = _null_pair(run, x)
    floor, floor_error = metrics.fpd(ref, other, normalise=False, seed=seed)
    run.put("fpd", value, error, floor, floor_error, method)


def _kpd_group(run: _Run) -> None:
    x = _physics_matrices(run)
    seed, batch = run.options["seed"], run.options["kpd_batch_size"]
    value, error = metrics.kpd(x["ref"], x["gen"], batch_size=batch, normalise=False, seed=seed)
    ref, other, method = _null_pair(run, x)
    floor, floor_error = metrics.kpd(ref, other, batch_size=batch, normalise=False, seed=seed)
    run.put("kpd", value, error, floor, floor_error, method)


def _put_classifier(run: _Run, key: str, out: dict[str, Any], base: dict[str, Any], method: str) -> None:
    run.put(key, out["auc"], out["auc_error"], base["auc"], base["auc_error"], method,
            converged=out["converged"], epochs=out["epochs"], best_epoch=out["best_epoch"],
            reference_converged=base["converged"], n_train=out["n_train"], n_test=out["n_test"],
            reference_n_test=base["n_test"], jsd=out["jsd"])


def _classifier_group(run: _Run) -> None:
    """Boosted trees on the high-level features (log energies, centres, widths, sparsity, E_inc)."""
    n_max, seed = run.options["classifier_n"], run.options["seed"]
    c_gen, c_ref = run.f_gen.matrix(for_classifier=True)[0], run.f_ref.matrix(for_classifier=True)[0]
    out = metrics.classifier_auc(c_ref, c_gen, n_max=n_max, seed=seed)
    if run.f_floor is not None:
        base = metrics.classifier_auc(c_ref, run.f_floor.matrix(for_classifier=True)[0], n_max=n_max, seed=seed)
        method = run.method
    else:
        base = metrics.classifier_auc(c_ref[1::2], c_ref[0::2], n_max=n_max, seed=seed)
        method = "halves"
    _put_classifier(run, "classifier_auc.high_level", out, base, method)


def voxel_classifier_inputs(energies: np.ndarray, showers: np.ndarray, geometry: CylindricalGeometry,
                            threshold: float = DEFAULT_THRESHOLD_MEV) -> np.ndarray:
    """The voxel classifier's input rows, float32: log10(E_inc), every voxel, and per layer its energy and occupancy.

    Voxels enter as log(1 + E_voxel / threshold): the logarithm makes the small
    deposits (and so the occupancy of sparse deep layers) as visible as the
    large ones, and it is a monotone map of the voxel energies, so it hides
    nothing that the CaloChallenge's E_voxel / E_inc shows. As the
    CaloChallenge's ``cls-low-normed`` classifier does, the layer energies
    (log10 of E_layer / E_inc) are added, and with them the fraction of each
    layer's voxels above threshold: a network sees a few per cent in a sum of
    hundreds of inputs only from many more showers than a validation has.
    """
    e = np.asarray(energies, dtype=np.float64).reshape(-1)
    showers = np.asarray(showers, dtype=np.float32)
    above = showers > threshold
    kept = np.where(above, showers, np.float32(0.0))
    starts = np.array([sl.start for sl in geometry.layer_slices()], dtype=np.intp)
    sizes = np.array([sl.stop - sl.start for sl in geometry.layer_slices()], dtype=np.float64)
    layer_energy = np.add.reduceat(kept, starts, axis=1, dtype=np.float64)
    occupancy = np.add.reduceat(above, starts, axis=1, dtype=np.float64) / sizes
    voxels = np.log1p(kept * np.float32(1.0 / max(threshold, 1e-12)))
    return np.concatenate([
        np.log10(e)[:, None].astype(np.float32),
        voxels,
        np.log10(layer_energy / e[:, None] + 1e-8).astype(np.float32),
        occupancy.astype(np.float32),
    ], axis=1)


def _voxel_sample(rows: _Rows, n: int, geometry: CylindricalGeometry, threshold: float) -> np.ndarray:
    """The first n showers of ``rows`` as voxel-classifier inputs (see :func:`voxel_classifier_inputs`)."""
    parts = [voxel_classifier_inputs(energies, showers, geometry, threshold)
             for energies, showers in iter_source(rows.source, start=rows.start, stop=rows.start + n)]
    return np.concatenate(parts)


def _voxel_classifier_group(run: _Run) -> None:
    """The fully connected network on voxels (the CaloChallenge's low-level classifier, in numpy)."""
    seed = run.options["seed"]
    n_vox = min(run.gen.n, run.ref.n, run.options["voxel_classifier_n"])
    v_ref = _voxel_sample(run.ref, n_vox if run.floor is not None else min(run.ref.n, 2 * n_vox), run.geometry,
                          run.threshold)
    v_gen = _voxel_sample(run.gen, n_vox, run.geometry, run.threshold)
    out = metrics.classifier_auc(v_ref[:n_vox], v_gen, model="mlp", n_max=n_vox, seed=seed)
    del v_gen
    if run.floor is not None:
        base = metrics.classifier_auc(v_ref, _voxel_sample(run.floor, n_vox, run.geometry, run.threshold), model="mlp",
                                      n_max=n_vox, seed=seed)
        method = run.method
    else:
        base = metrics.classifier_auc(v_ref[1::2], v_ref[0::2], model="mlp", n_max=n_vox, seed=seed)
        method = "halves"
    _put_classifier(run, "classifier_auc.voxel", out, base, method)


#: The metric groups in report order: name -> (function, what it costs).
_GROUPS: dict[str, tuple[Callable[[_Run], None], str]] = {
    "separation": (_separation_group, "histograms of every feature and layer, bootstrap resamples"),
    "wasserstein": (_wasserstein_group, "one sort per feature and layer, bootstrap resamples"),
    "energy-bins": (_energy_bins_group, "cheap"),
    "theta-bins": (_theta_bins_group, "cheap"),
    "particle-bins": (_particle_bins_group, "cheap"),
    "inclined-shape": (_inclined_shape_group, "histograms per layer and theta bin, bootstrap resamples"),
    "fpd": (_fpd_group, "covariance square roots at 5 sample sizes"),
    "kpd": (_kpd_group, "kernel matrices of kpd_batch_size squared"),
    "classifier": (_classifier_group, "boosted trees, two fits"),
    "classifier-voxel": (_voxel_classifier_group, "a third read of the voxels and two network fits"),
}

#: Metric groups, in report order (derived from the registry above).
ALL_GROUPS = tuple(_GROUPS)
DEFAULT_GROUPS = ALL_GROUPS
#: The groups that compare in bins of a condition and the per-shower condition each needs; ``all`` (and the
#: default) runs one only when both the generated and the reference files carry its condition
#: (``incident_theta``, ``particle``).
GROUP_CONDITIONS = {"theta-bins": "theta", "inclined-shape": "theta", "particle-bins": "particle"}
CONDITION_GROUPS = tuple(GROUP_CONDITIONS)


def _voxel_pass(rows: _Rows, edges: np.ndarray, rings: np.ndarray, n_rings: int) -> dict[str, np.ndarray]:
    """One streaming pass: the voxel-energy spectrum of every shower and the mean radial profile.

    ``per_shower`` is an (N, n_bins) count matrix (voxels outside the edges,
    in particular empty ones, are not counted, as in the CaloChallenge
    evaluation); ``radial_profile`` the mean fraction of E_inc per ring.
    """
    n_bins = edges.size - 1
    per_shower = []
    ring_matrix = np.zeros((rings.size, n_rings))
    ring_matrix[np.arange(rings.size), rings] = 1.0
    radial, radial_sq = np.zeros(n_rings), np.zeros(n_rings)
    seen = 0
    for energies, showers in rows.chunks():
        values = np.asarray(showers, dtype=np.float64)
        inside = (values >= edges[0]) & (values <= edges[-1])
        row, col = np.nonzero(inside)
        index = np.searchsorted(edges, values[row, col], side="right") - 1
        index[index == n_bins] = n_bins - 1  # the last edge belongs to the last bin
        counts = np.bincount(row * n_bins + index, minlength=len(energies) * n_bins)
        per_shower.append(counts.reshape(len(energies), n_bins).astype(np.int32))
        ring_fractions = (values / energies[:, None]) @ ring_matrix
        radial += ring_fractions.sum(axis=0)
        radial_sq += (ring_fractions**2).sum(axis=0)
        seen += len(energies)
    mean = radial / max(seen, 1)
    spread = np.sqrt(np.clip(radial_sq / max(seen, 1) - mean**2, 0.0, None))
    return {"per_shower": np.concatenate(per_shower), "radial_profile": mean,
            "radial_profile_error": spread / math.sqrt(max(seen - 1, 1))}


def _ring_index(geometry: CylindricalGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Map every voxel to its radial ring (by ring centre, shared across layers)."""
    _, _, r, _, _ = geometry.voxel_centres()
    centres, index = np.unique(np.round(r, 6), return_inverse=True)
    return index, centres


def _worst_features(run: _Run, k: int = _N_WORST) -> list[dict[str, Any]]:
    """The k features (a scalar or one layer of a family) with the largest separation power over its floor."""
    stats = run.more.get("separation_columns")
    if stats is None:
        return []
    rows: list[dict[str, Any]] = []
    for (name, layer), value, error, floor, floor_error in zip(
        _column_names(run.geometry.n_layers), stats["value"], stats["error"], stats["floor"], stats["floor_error"]
    ):
        if not (np.isfinite(value) and np.isfinite(floor)):
            continue
        excess = value - floor
        sigma = math.hypot(error, floor_error) if np.isfinite(error) and np.isfinite(floor_error) else float("nan")
        rows.append({
            "feature": name, "layer": layer, "value": float(value), "error": float(error),
            "reference": float(floor), "reference_error": float(floor_error),
            "ratio": float(value / floor) if floor > 0 else float("inf"),
            "significance": float(excess / sigma) if sigma and np.isfinite(sigma) else float("nan"),
        })
    rows.sort(key=lambda r: r["ratio"], reverse=True)
    return rows[:k]


def compare(
    generated: ShowerInput,
    reference: ShowerInput,
    geometry: CylindricalGeometry | None = None,
    groups: Sequence[str] = DEFAULT_GROUPS,
    n_max: int | None = None,
    *,
    floor_reference: ShowerInput | None = None,
    threshold: float = DEFAULT_THRESHOLD_MEV,
    classifier_n: int = 20_000,
    voxel_classifier_n: int = 20_000,
    kpd_batch_size: int = 5_000,
    n_bootstrap: int = 20,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Compute the validation metrics and keep the features for plots (see :func:`validate`)."""
    implicit = _means_all(groups)
    groups = _check_groups(groups)
    if n_max is not None and n_max < 1:
        raise DataError(f"n_max: expected a positive number of showers, got {n_max}")
    if n_bootstrap < 2:
        raise DataError(f"n_bootstrap: expected at least 2 resamples, got {n_bootstrap}")
    options = {"classifier_n": classifier_n, "voxel_classifier_n": voxel_classifier_n,
               "kpd_batch_size": kpd_batch_size, "n_bootstrap": n_bootstrap, "seed": seed}
    given = (reference, generated, floor_reference)
    with contextlib.ExitStack() as opened:
        def open_here(source: ShowerInput, name: str) -> OpenInput:
            handle = open_input(source, geometry, name=name)
            close = getattr(handle, "close", None)
            if close is not None and all(handle is not g for g in given):
                opened.callback(close)  # close only the files opened here, even if the next open fails
            return handle

        ref = open_here(reference, "reference")
        gen = open_here(generated, "generated")
        floor = open_here(floor_reference, "floor_reference") if floor_reference is not None else None
        geometry = _resolve_geometry(geometry, gen, ref)
        groups = _condition_groups(groups, implicit, {"generated": gen, "reference": ref, "floor_reference": floor})
        return _compare(gen, ref, floor, geometry, groups, n_max, threshold, options, progress or (lambda _: None))


def _means_all(groups: Iterable[str] | str) -> bool:
    """Whether ``groups`` asks for every group (``"all"``, or the whole registry, as the default does)."""
    if isinstance(groups, str):
        return [g.strip() for g in groups.split(",") if g.strip()] == ["all"]
    groups = tuple(groups)
    return groups == ("all",) or groups == ALL_GROUPS


def _condition_groups(groups: tuple[str, ...], implicit: bool,
                      sources: dict[str, OpenInput | None]) -> tuple[str, ...]:
    """Drop the incidence groups from ``all`` unless both inputs carry theta; check the inputs agree on conditions.

    Asked for by name, they run at normal incidence when no input carries ``incident_theta``
    (one theta bin, no rotation); an input without a condition the others carry is an error.
    """
    carried = {name: _conditions(src) for name, src in sources.items() if src is not None}
    if implicit:
        both = set(carried["generated"]) & set(carried["reference"])
        groups = tuple(g for g in groups if g not in GROUP_CONDITIONS or GROUP_CONDITIONS[g] in both)
    asked = [g for g in groups if GROUP_CONDITIONS.get(g) == "theta"]
    for condition in ("theta", "phi") if asked else ():
        having = [name for name, c in carried.items() if condition in c]
        lacking = [name for name, c in carried.items() if condition not in c]
        if having and lacking:
            raise DataError(
                f"{lacking[0]}: expected a dataset 'incident_{condition}' as the {having[0]} has one (the groups "
                f"{', '.join(asked)} compare in bins of the incidence), got none; pass inputs that all carry it, "
                f"or leave those groups out of --metrics"
            )
    if "particle-bins" in groups:
        lacking = [name for name, c in carried.items() if "particle" not in c]
        if len(lacking) == len(carried):
            # No input says which particle a shower is: one particle throughout, nothing to bin.
            return tuple(g for g in groups if g != "particle-bins")
        if lacking:
            raise DataError(f"{lacking[0]}: expected a dataset 'particle' (PDG ids; the group particle-bins compares "
                            "per particle), got none; pass inputs that all carry it, or leave particle-bins out of "
                            "--metrics")
    return groups


def _resolve_geometry(geometry: CylindricalGeometry | None, gen: OpenInput, ref: OpenInput) -> CylindricalGeometry:
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


def _plan_floor(gen: OpenInput, ref: OpenInput, floor: OpenInput | None,
                n_max: int | None) -> tuple[_Rows, _Rows, _Rows | None, str]:
    """The rows of each sample and the floor method (see the module docstring)."""
    def size(source: OpenInput) -> int:
        n = len(_incident_energies(source))
        return n if n_max is None else min(n_max, n)

    n_gen, n_ref = size(gen), size(ref)
    if floor is not None:
        n_floor = len(_incident_energies(floor))
        if n_floor < n_gen:
            raise DataError(
                f"floor_reference: expected at least as many showers as the generated sample ({n_gen}), "
                f"got {n_floor}; compare fewer showers (n_max) or use a larger floor reference"
            )
        return _Rows(gen, 0, n_gen), _Rows(ref, 0, n_ref), _Rows(floor, 0, n_gen), "independent"
    if n_ref >= 2 * n_gen:
        return _Rows(gen, 0, n_gen), _Rows(ref, 0, n_ref - n_gen), _Rows(ref, n_ref - n_gen, n_ref), "split"
    return _Rows(gen, 0, n_gen), _Rows(ref, 0, n_ref), None, "bootstrap"


def _compare(gen: OpenInput, ref: OpenInput, floor: OpenInput | None, geometry: CylindricalGeometry,
             groups: tuple[str, ...],
             n_max: int | None, threshold: float, options: dict[str, Any],
             progress: Callable[[str], None]) -> Comparison:
    gen_rows, ref_rows, floor_rows, method = _plan_floor(gen, ref, floor, n_max)
    samples = [("generated", gen_rows)] + ([("floor_reference", floor_rows)] if floor_rows is not None else [])
    _check_inputs(samples, ref_rows, geometry)
    if {"classifier", "classifier-voxel"} & set(groups):
        smallest = min(gen_rows.n, ref_rows.n if floor_rows is not None else ref_rows.n // 2)
        if smallest < _MIN_CLASSIFIER_ROWS:
            raise DataError(
                f"n_max: the classifier tests need at least {_MIN_CLASSIFIER_ROWS} generated and "
                f"{2 * _MIN_CLASSIFIER_ROWS} reference showers, got {gen_rows.n} and {ref_rows.n}; "
                f"use more showers or leave out the classifier groups"
            )
    timings: dict[str, float] = {}

    def stage(name: str, work: Callable[[], Any]) -> Any:
        progress(f"{name} ...")
        began = time.perf_counter()
        out = work()
        timings[name] = round(time.perf_counter() - began, 2)
        progress(f"{name}: {timings[name]:.1f} s")
        return out

    def features(rows: _Rows) -> ShowerFeatures:
        return compute_features(rows.source, geometry, threshold=threshold, start=rows.start, stop=rows.stop)

    f_gen, f_ref, f_floor = stage("features", lambda: (
        features(gen_rows), features(ref_rows), features(floor_rows) if floor_rows is not None else None))
    run = _Run(gen_rows, ref_rows, floor_rows, method, f_gen, f_ref, f_floor, geometry, threshold,
               _binnings(f_ref, geometry, threshold), options)
    run.extras["bins"] = run.bins
    for name in groups:
        stage(name, functools.partial(_GROUPS[name][0], run))

    result = {
        "format": "fastsim-validation/2",
        "generated": {"source": _describe(gen), "n_showers": gen_rows.n, **_model_label(gen)},
        "reference": {"source": _describe(ref), "n_showers": ref_rows.n},
        "floor": {
            "method": method,
            "description": FLOOR_METHODS[method],
            "source": _describe(floor_rows.source) if floor_rows is not None else _describe(ref),
            "rows": [floor_rows.start, floor_rows.stop] if floor_rows is not None else None,
            "n_bootstrap": options["n_bootstrap"],
        },
        "energy_range_mev": [float(f_ref.incident_energy.min()), float(f_ref.incident_energy.max())],
        "geometry": {"n_layers": geometry.n_layers, "n_voxels": geometry.n_voxels},
        "threshold_mev": threshold,
        "groups": list(groups),
        "metrics": run.table,
        "worst_features": _worst_features(run),
        "per_layer": run.per_layer,
        "energy_bins": run.more.get("energy_rows", []),
        "theta_bins": run.more.get("theta_rows", []),
        "particle_bins": run.more.get("particle_rows", []),
        **({"inclined_shape": run.more["inclined_shape"]} if "inclined_shape" in run.more else {}),
        "conditions": {name: sorted(_conditions(rows.source)) for name, rows in
                       (("generated", gen_rows), ("reference", ref_rows), ("floor_reference", floor_rows))
                       if rows is not None},
        "timings_s": timings,
    }
    return Comparison(_json_ready(result), f_gen, f_ref, run.extras)


def _model_label(source: OpenInput) -> dict[str, str]:
    """The model that wrote a file, from the attributes `fastsim generate` stores (empty if unknown)."""
    attrs = getattr(source, "attrs", None)
    if not isinstance(attrs, dict) or "fastsim.model" not in attrs:
        return {}
    label = {"model": str(attrs["fastsim.model"])}
    with contextlib.suppress(Exception):  # an unreadable spec only loses the version
        label["model_version"] = str(json.loads(attrs["fastsim.spec"])["version"])
    return label


def _scale_like(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Divide columns by the reference's max |x| (jetnet's FPD/KPD normalisation)."""
    return metrics.scale_by_reference(reference, x)[1]


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
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def validate(
    generated: ShowerInput,
    reference: ShowerInput,
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
    Keyword options: ``floor_reference`` (an independent reference sample, for
    the floors), ``threshold`` (MeV), ``classifier_n``, ``voxel_classifier_n``,
    ``kpd_batch_size``, ``n_bootstrap``, ``seed``, ``progress`` (called with a
    line of text as each stage starts and ends).

    ``result["metrics"]`` maps a metric name (``separation_power.e_ratio``,
    ``fpd``, ``classifier_auc.high_level``, ...) to ``{"value": generated vs
    reference, "error", "reference": the floor at the same sample sizes,
    "reference_error", "floor_method", ...}``; lower is better except for
    AUC, where 0.5 is best. ``result["worst_features"]`` lists the features
    and layers furthest above their floors; ``result["energy_bins"]`` holds
    the response and resolution table.
    """
    return compare(generated, reference, geometry, groups, n_max, **options).result


def quick_figure_of_merit(
    generated: ShowerInput | ShowerFeatures,
    reference: ShowerInput | ShowerFeatures,
    geometry: CylindricalGeometry | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD_MEV,
    n_max: int | None = None,
) -> float:
    """One cheap agreement score for every training epoch; lower is better, 0 is identical.

    The mean of the separation powers of E_tot/E_inc, of the layer energies
    (averaged over layers) and of the x and y widths (averaged over layers).
    Either input may be precomputed :class:`~fastsim.validation.features.ShowerFeatures`
    (compute the reference's once, reuse it every epoch).
    """
    geometry = geometry if geometry is not None else default_geometry()

    def features(source: ShowerInput | ShowerFeatures, name: str) -> ShowerFeatures:
        if isinstance(source, ShowerFeatures):
            return source if n_max is None else source.take(slice(0, n_max))
        return compute_features(open_input(source, geometry, name=name), geometry, threshold=threshold, stop=n_max)

    f_gen, f_ref = features(generated, "generated"), features(reference, "reference")
    bins = _binnings(f_ref, geometry, threshold)
    sp, _ = _separation(f_gen, f_ref, bins)
    parts = [sp["e_ratio"], sp["layer_energy"], sp["width_x"], sp["width_y"]]
    return float(np.nanmean(parts))


# ----------------------------------------------------------------------------- the report folder


def format_table(result: dict[str, Any]) -> str:
    """The summary as a Markdown table: metric, generated vs reference, floor, their ratio and the floor method.

    AUCs also say whether the classifier converged (early stopping ended its training).
    """
    lines = ["| metric | generated vs reference | floor (same sizes) | value / floor | floor method |",
             "|---|---|---|---|---|"]
    for key, entry in result["metrics"].items():
        value, floor = entry["value"], entry["reference"]
        ratio = _fmt(value / floor, None, digits=3) if value is not None and floor else "n/a"
        if key.startswith("classifier_auc"):
            ratio = "converged" if entry.get("converged") else "not converged"
        lines.append(f"| {key} | {_fmt(value, entry.get('error'))} | {_fmt(floor, entry.get('reference_error'))} | "
                     f"{ratio} | {entry.get('floor_method', 'n/a')} |")
    return "\n".join(lines)


def format_worst(result: dict[str, Any]) -> str:
    """The features and layers furthest above their floors, as a Markdown table (empty without separation)."""
    rows = result.get("worst_features") or []
    if not rows:
        return ""
    lines = ["| feature | layer | separation power | floor | value / floor | (value - floor) / error |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        layer = "—" if row["layer"] is None else str(row["layer"])
        lines.append(f"| {row['feature']} | {layer} | {_fmt(row['value'], row['error'])} | "
                     f"{_fmt(row['reference'], row['reference_error'])} | {_fmt(row['ratio'], None, digits=3)} | "
                     f"{_fmt(row['significance'], None, digits=3)} |")
    return "\n".join(lines)


def format_layer_table(result: dict[str, Any], families: Sequence[str] = ("layer_energy", "sparsity")) -> str:
    """Separation power per layer of some families, each beside its floor."""
    per_layer = result.get("per_layer") or {}
    keys = [f"separation_power.{name}" for name in families if f"separation_power.{name}" in per_layer]
    if not keys:
        return ""
    header = "| layer | " + " | ".join(f"{k.split('.', 1)[1]} | floor" for k in keys) + " |"
    lines = [header, "|---|" + "---|---|" * len(keys)]
    for layer in range(len(per_layer[keys[0]]["value"])):
        cells = [str(layer)]
        for key in keys:
            entry = per_layer[key]
            cells += [_fmt(entry["value"][layer], entry["error"][layer]),
                      _fmt(entry["reference"][layer], entry["reference_error"][layer])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_energy_table(result: dict[str, Any]) -> str:
    """The response and resolution per incident-energy bin, ratios with their statistical errors."""
    rows = result.get("energy_bins") or []
    if not rows:
        return ""
    lines = [
        "| E_inc [GeV] | N ref | N gen | response ref | response gen | ratio | σ/μ ref | σ/μ gen | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{_gev(row['e_low_mev'])}–{_gev(row['e_high_mev'])}", str(row["n_reference"]),
                 str(row["n_generated"])]
        for kind in ("response", "resolution"):
            cells += [_fmt(row[f"{kind}_reference"], row.get(f"{kind}_error_reference")),
                      _fmt(row[f"{kind}_generated"], row.get(f"{kind}_error_generated")),
                      _fmt(row[f"{kind}_ratio"], row.get(f"{kind}_ratio_error"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_theta_table(result: dict[str, Any]) -> str:
    """Response and resolution per theta bin: generated vs reference deviations in per cent, the floor's beside them.

    Empty when the ``theta-bins`` group did not run. The floor columns (the floor
    sample vs the reference) are filled when there is a floor sample
    (``--floor-reference``, or a split reference).
    """
    rows = result.get("theta_bins") or []
    return _deviation_table("θ [deg]", [f"{row['theta_low_deg']:.1f}–{row['theta_high_deg']:.1f}" for row in rows],
                            rows)


def _deviation_table(heading: str, labels: list[str], rows: list[dict[str, Any]]) -> str:
    """Rows of a binned response table (one per label): reference value, deviation and the floor's deviation."""
    if not rows:
        return ""
    lines = [
        f"| {heading} | N ref | N gen | response ref | Δ response [%] | floor Δ response [%] | σ/μ ref "
        "| Δ σ/μ [%] | floor Δ σ/μ [%] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in zip(labels, rows, strict=True):
        cells = [label, str(row["n_reference"]), str(row["n_generated"])]
        for kind in ("response", "resolution"):
            cells += [_fmt(row[f"{kind}_reference"], row.get(f"{kind}_error_reference")),
                      _fmt_pct(row.get(f"{kind}_deviation_pct"), row.get(f"{kind}_deviation_error_pct")),
                      _fmt_pct(row.get(f"floor_{kind}_deviation_pct"), row.get(f"floor_{kind}_deviation_error_pct"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_particle_table(result: dict[str, Any]) -> str:
    """Response and resolution per particle type: generated vs reference deviations in per cent, the floor's beside.

    Empty when the ``particle-bins`` group did not run.
    """
    rows = result.get("particle_bins") or []
    labels = [f"{PARTICLE_NAMES.get(int(row['particle']), 'PDG')} ({int(row['particle'])})" for row in rows]
    return _deviation_table("particle", labels, rows)


def format_inclined_table(result: dict[str, Any]) -> str:
    """Separation power of the track-frame centres and widths per theta bin and overall, model beside floor.

    Empty when the ``inclined-shape`` group did not run.
    """
    shape = result.get("inclined_shape")
    if not shape:
        return ""
    header = "| θ [deg] | N gen | " + " | ".join(f"{q} | floor" for q in _SHAPE_QUANTITIES) + " |"
    lines = [header, "|---|---|" + "---|---|" * len(_SHAPE_QUANTITIES)]
    overall = {"theta_low_deg": None, "n_generated": result["generated"]["n_showers"], **shape["overall"]}
    for row in [*shape["theta_bins"], overall]:
        label = "all" if row["theta_low_deg"] is None else f"{row['theta_low_deg']:.1f}–{row['theta_high_deg']:.1f}"
        cells = [label, str(row["n_generated"])]
        for q in _SHAPE_QUANTITIES:
            entry = row[q]
            cells += [_fmt(entry["value"], entry["error"]), _fmt(entry["reference"], entry["reference_error"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_pct(value: Any, error: Any = None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value:+.2f}"
    return f"{text} ± {error:.2f}" if error is not None and math.isfinite(error) else text


def _gev(mev: float) -> str:
    """An energy in GeV with three significant digits, without exponents (1000, not 1e+03)."""
    gev = mev / 1e3
    return f"{gev:.3g}" if gev < 100 else f"{gev:.0f}"


def _fmt(value: Any, error: Any = None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{digits}g}"
    return f"{text} ± {error:.2g}" if error is not None else text


def _report_markdown(comparison: Comparison, plots: list[Path]) -> str:
    r = comparison.result
    gen = r["generated"]
    model = f", model {gen['model']} {gen.get('model_version', '')}".rstrip() if "model" in gen else ""
    floor = r["floor"]
    lo, hi = r["energy_range_mev"]
    parts = [
        "# fastsim validation report",
        "",
        f"- generated: `{gen['source']}` ({gen['n_showers']} showers{model})",
        f"- reference: `{r['reference']['source']}` ({r['reference']['n_showers']} showers)",
        f"- floor: {floor['method']} — {floor['description']} (source `{floor['source']}`"
        + (f", rows {floor['rows'][0]}–{floor['rows'][1]}" if floor["rows"] else "")
        + f"; {floor['n_bootstrap']} bootstrap resamples for errors)",
        f"- incident energies {lo / 1e3:.4g}–{hi / 1e3:.4g} GeV; geometry: {r['geometry']['n_layers']} layers, "
        f"{r['geometry']['n_voxels']} voxels; voxel threshold {r['threshold_mev']:.4g} MeV",
        "",
        "Lower is better for every metric except the classifier AUC, where 0.5 means the classifier "
        "cannot tell the samples apart. The floor is what a perfect surrogate scores at the same "
        "sample sizes (a value near its floor, within the errors, is indistinguishable from the "
        "reference at this statistics). Errors are one standard deviation: bootstrap resamples of "
        "the showers for separation power and Wasserstein-1, of the test set for AUC, the binned "
        "statistics for response and resolution. Separation powers of per-layer features are "
        "averaged over layers (CaloChallenge binnings; see the worst layers below); Wasserstein-1 "
        "distances are in units of the reference's standard deviation.",
        "",
        "## Metrics",
        "",
        format_table(r),
        "",
    ]
    worst = format_worst(r)
    if worst:
        parts += ["## Worst features (separation power over its floor)", "", worst, ""]
    energy = format_energy_table(r)
    if energy:
        parts += ["## Response and resolution per incident-energy bin", "", energy, ""]
    theta = format_theta_table(r)
    if theta:
        parts += ["## Response and resolution per theta bin", "",
                  "Δ: generated / reference − 1 in per cent, with its statistical error; floor Δ: the same for "
                  "the floor sample against the reference (what a perfect surrogate shows at these sizes).", "",
                  theta, ""]
    particle = format_particle_table(r)
    if particle:
        parts += ["## Response and resolution per particle", "",
                  "Δ: generated / reference − 1 in per cent, with its statistical error; floor Δ: the same for "
                  "the floor sample against the reference.", "", particle, ""]
    inclined = format_inclined_table(r)
    if inclined:
        parts += ["## Shower shape in the track frame, per theta bin", "",
                  "Separation power (mean over layers with energy and more than one alpha sector) of the "
                  "per-layer energy-weighted centre and width along (u) and across (v) the projected track; "
                  "floor: the floor sample against the reference.", "", inclined, ""]
    layers = format_layer_table(r)
    if layers:
        parts += ["## Separation power per layer: layer energy and sparsity", "", layers, ""]
    timings = r.get("timings_s") or {}
    if timings:
        parts += ["## Run time per stage", "", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(parts)


def write_report(
    generated: ShowerInput,
    reference: ShowerInput,
    output_dir: str | os.PathLike[str],
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
        from fastsim.validation import plots as plotting

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
    progress = options.get("progress") or (lambda _: None)
    if plots:
        progress("plots ...")
    drawn = plotting.draw_all(comparison, folder) if plots else []
    _atomic_write(folder / "report.md", _report_markdown(comparison, drawn))
    _atomic_write(folder / "metrics.json", json.dumps(comparison.result, indent=2, allow_nan=False) + "\n")
    return comparison.result


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text, what="report")
