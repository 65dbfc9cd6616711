"""The validation plots: reference vs generated overlaid, with ratio panels (matplotlib).

The figures of the validation report: response and
resolution vs incident energy, longitudinal and radial profiles, E_tot/E_inc,
layer-energy and shower-shape histograms, the voxel-energy spectrum and the
separation power per layer. The reference is drawn as a filled histogram, the
generated sample as a line, as in the CaloChallenge plots. Every ratio panel
carries its statistical error bars, and every figure states the sample sizes,
the incident-energy range and the model that generated the showers.

matplotlib is an optional dependency (the ``plots`` extra) and is imported
only here, when a plot is drawn; figures are built with the object API
(``matplotlib.figure.Figure``), so no pyplot global state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastsim._util import atomic_path
from fastsim.errors import FastsimError

if TYPE_CHECKING:  # pragma: no cover
    from fastsim.validation.comparison import Comparison

__all__ = [
    "DRAWERS",
    "PLOTS_HINT",
    "caption",
    "draw_all",
    "draw_layer_energies",
    "draw_longitudinal_profile",
    "draw_radial_profile",
    "draw_response_resolution",
    "draw_separation_per_layer",
    "draw_shapes",
    "draw_voxel_spectrum",
    "require_matplotlib",
]

PLOTS_HINT = "pip install 'fastsim[plots]'"

_REF = {"color": "#1f77b4", "alpha": 0.3, "label": "reference"}
_GEN = {"color": "#d62728", "linewidth": 1.8, "label": "generated"}


def require_matplotlib() -> Any:
    """Import matplotlib's Figure class or raise a clear error with the install hint."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise FastsimError(f"plots need matplotlib, which is not installed; install it with: {PLOTS_HINT}") from None
    return Figure


# ----------------------------------------------------------------------------- building blocks


def _figure(width: float, height: float) -> Any:
    return require_matplotlib()(figsize=(width, height), layout="constrained")


def caption(comparison: Comparison) -> str:
    """One line for every figure: sample sizes, incident-energy range, model and floor method."""
    r = comparison.result
    gen = r["generated"]
    model = f" ({gen['model']} {gen.get('model_version', '')})".replace(" )", ")") if "model" in gen else ""
    lo, hi = r.get("energy_range_mev") or (float("nan"), float("nan"))
    return (f"generated N={gen['n_showers']:,}{model}, reference N={r['reference']['n_showers']:,}, "
            f"$E_{{inc}}$ {lo / 1e3:.4g}-{hi / 1e3:.4g} GeV")


def _titled(fig: Any, comparison: Comparison, title: str) -> None:
    fig.suptitle(f"{title}\n{caption(comparison)}", fontsize=9)


def _save(fig: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    with atomic_path(path, what="plot") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def _main_and_ratio(fig: Any, cell: Any) -> tuple[Any, Any]:
    grid = cell.subgridspec(2, 1, height_ratios=(3, 1), hspace=0.05)
    main = fig.add_subplot(grid[0])
    ratio = fig.add_subplot(grid[1], sharex=main)
    main.tick_params(labelbottom=False)
    return main, ratio


def _ratio_with_errors(gen: np.ndarray, ref: np.ndarray, gen_error: np.ndarray,
                       ref_error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gen / ref and its propagated error (nan where ref is not positive)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ref > 0, gen / ref, np.nan)
        rel = np.hypot(np.where(gen > 0, gen_error / gen, np.nan), np.where(ref > 0, ref_error / ref, np.nan))
    return ratio, np.abs(ratio) * rel


def _ratio_panel(ax: Any, x: np.ndarray, ratio: np.ndarray, error: np.ndarray, *, step: bool) -> None:
    if step:  # x are bin edges: a line per bin, error bars at the bin centres
        ax.stairs(ratio, x, color=_GEN["color"], linewidth=1.2, baseline=None)
        centres = 0.5 * (x[1:] + x[:-1])
        ax.errorbar(centres, ratio, yerr=error, fmt="none", ecolor=_GEN["color"], elinewidth=0.8)
    else:
        ax.errorbar(x, ratio, yerr=error, fmt="o-", color=_GEN["color"], markersize=3, capsize=2)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylim(0.5, 1.5)
    ax.set_ylabel("gen / ref")


def _hist_panel(fig: Any, cell: Any, ref: np.ndarray, gen: np.ndarray, edges: np.ndarray, xlabel: str, *,
                logx: bool = False, title: str = "") -> None:
    """Normalised histograms of one feature with a ratio panel (Poisson errors per bin)."""
    main, ratio = _main_and_ratio(fig, cell)
    h_ref, _ = np.histogram(ref[np.isfinite(ref)], bins=edges)
    h_gen, _ = np.histogram(gen[np.isfinite(gen)], bins=edges)
    _overlay(main, ratio, h_ref, h_gen, edges)
    if title:
        main.set_title(title, fontsize=9)
    ratio.set_xlabel(xlabel)
    if logx:
        main.set_xscale("log")
    else:
        main.set_xlim(*_zoom(np.concatenate([ref, gen]), edges))


def _overlay(main: Any, ratio: Any, h_ref: np.ndarray, h_gen: np.ndarray, edges: np.ndarray) -> None:
    """Densities of two count histograms, reference filled, and their ratio with Poisson errors."""
    widths = np.diff(edges)
    n_ref, n_gen = max(h_ref.sum(), 1), max(h_gen.sum(), 1)
    d_ref, d_gen = h_ref / n_ref / widths, h_gen / n_gen / widths
    main.stairs(d_ref, edges, fill=True, **_REF)
    main.stairs(d_gen, edges, **_GEN)
    if (d_ref > 0).any() or (d_gen > 0).any():
        main.set_yscale("log")
    main.set_ylabel("normalised entries")
    main.legend(fontsize=7, frameon=False)
    values, errors = _ratio_with_errors(d_gen, d_ref, np.sqrt(h_gen) / n_gen / widths, np.sqrt(h_ref) / n_ref / widths)
    _ratio_panel(ratio, edges, values, errors, step=True)


def _zoom(values: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """Display range: the bulk of the data with a margin, inside the histogram edges."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float(edges[0]), float(edges[-1])
    low, high = np.percentile(values, [0.05, 99.95])
    margin = max(high - low, (edges[-1] - edges[0]) / 20) * 0.15
    return float(max(edges[0], low - margin)), float(min(edges[-1], high + margin))


def _column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)


def _plain_log_ticks(axis: Any) -> None:
    """Ticks at 1, 2, 5 x 10^k as plain numbers and no minor labels on a log axis (minor labels overlapped)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(NullFormatter())


def _profile_plot(comparison: Comparison, x: np.ndarray, ref: np.ndarray, gen: np.ndarray, ref_error: np.ndarray,
                  gen_error: np.ndarray, xlabel: str, ylabel: str, title: str, folder: Path, name: str,
                  edges: np.ndarray | None = None) -> Path:
    fig = _figure(6.0, 5.2)
    main, ratio = _main_and_ratio(fig, fig.add_gridspec(1, 1)[0])
    values, errors = _ratio_with_errors(gen, ref, gen_error, ref_error)
    if edges is not None:
        main.stairs(ref, edges, fill=True, **_REF)
        main.stairs(gen, edges, **_GEN)
        _ratio_panel(ratio, edges, values, errors, step=True)
    else:
        main.fill_between(x, ref, step=None, color=_REF["color"], alpha=_REF["alpha"], label="reference")
        main.plot(x, gen, "o-", color=_GEN["color"], markersize=3, label="generated")
        _ratio_panel(ratio, x, values, errors, step=False)
    main.set_yscale("log")
    main.set_ylabel(ylabel)
    main.legend(fontsize=8, frameon=False)
    ratio.set_xlabel(xlabel)
    _titled(fig, comparison, title)
    return _save(fig, folder, name)


# ----------------------------------------------------------------------------- the figures


def draw_response_resolution(comparison: Comparison, folder: Path) -> Path | None:
    """Mean response and relative resolution per incident-energy bin, each with its ratio panel."""
    rows = comparison.result.get("energy_bins") or []
    if not rows:
        return None
    centres = np.array([math.sqrt(r["e_low_mev"] * r["e_high_mev"]) / 1e3 for r in rows])
    fig = _figure(6.5, 8.0)
    grid = fig.add_gridspec(4, 1, height_ratios=(3, 1.3, 3, 1.3))
    panels: dict[str, Any] = {}
    for i, key in enumerate(("response", "resolution")):
        main = fig.add_subplot(grid[2 * i], sharex=panels.get("response"))
        ratio = fig.add_subplot(grid[2 * i + 1], sharex=main)
        panels[key] = main
        for label, style, marker in (("reference", _REF, "s"), ("generated", _GEN, "o")):
            main.errorbar(centres, _column(rows, f"{key}_{label}"), yerr=_column(rows, f"{key}_error_{label}"),
                          fmt=marker, color=style["color"], label=label, markersize=4, capsize=2)
        ratio.errorbar(centres, _column(rows, f"{key}_ratio"), yerr=_column(rows, f"{key}_ratio_error"),
                       fmt="o", color="black", markersize=3, capsize=2)
        ratio.axhline(1.0, color="grey", linewidth=0.8)
        ratio.set_ylabel("gen / ref", fontsize=8)
        main.legend(fontsize=8, frameon=False)
        main.tick_params(axis="x", which="both", labelbottom=False)
        if i == 0:
            ratio.tick_params(axis="x", which="both", labelbottom=False)
    panels["response"].set_ylabel(r"response $\langle E_{tot}/E_{inc}\rangle$")
    panels["resolution"].set_ylabel(r"resolution $\sigma/\mu$ of $E_{tot}/E_{inc}$")
    panels["resolution"].set_yscale("log")
    _plain_log_ticks(panels["resolution"].yaxis)
    panels["response"].set_xscale("log")
    _plain_log_ticks(panels["response"].xaxis)
    fig.axes[-1].set_xlabel(r"incident energy $E_{inc}$ [GeV]")
    _titled(fig, comparison, "Response and resolution vs incident energy")
    return _save(fig, folder, "response_resolution")


def draw_longitudinal_profile(comparison: Comparison, folder: Path) -> Path:
    """Mean fraction of E_inc per layer."""
    ref, gen = comparison.reference, comparison.generated
    n_layers = ref.n_layers

    def mean_and_error(f: Any) -> tuple[np.ndarray, np.ndarray]:
        fractions = f.layer_energy / f.incident_energy[:, None]
        return fractions.mean(axis=0), fractions.std(axis=0, ddof=1) / math.sqrt(max(f.n, 2))

    (m_ref, e_ref), (m_gen, e_gen) = mean_and_error(ref), mean_and_error(gen)
    return _profile_plot(comparison, np.arange(n_layers), m_ref, m_gen, e_ref, e_gen, "layer",
                         r"mean $E_{layer}/E_{inc}$", "Longitudinal profile", folder, "longitudinal_profile",
                         edges=np.arange(n_layers + 1) - 0.5)


def draw_radial_profile(comparison: Comparison, folder: Path) -> Path | None:
    """Mean fraction of E_inc per radial ring, summed over layers."""
    extras = comparison.extras
    if "radial_profile_reference" not in extras:
        return None
    return _profile_plot(comparison, extras["ring_centres"], extras["radial_profile_reference"],
                         extras["radial_profile_generated"], extras["radial_profile_error_reference"],
                         extras["radial_profile_error_generated"], "r (ring centre) [mm]",
                         r"mean $E_{ring}/E_{inc}$ (all layers)", "Radial profile", folder, "radial_profile")


def draw_shapes(comparison: Comparison, folder: Path) -> Path:
    """E_tot/E_inc, the longitudinal moments and the lateral moments of the layer with the largest mean energy."""
    ref, gen, bins = comparison.reference, comparison.generated, comparison.extras["bins"]
    peak = int(np.argmax(ref.layer_energy.mean(axis=0)))
    fig = _figure(11.0, 7.8)
    grid = fig.add_gridspec(2, 3)
    panels = [
        (ref.response, gen.response, bins["e_ratio"], r"$E_{tot}/E_{inc}$"),
        (ref.longitudinal_centre, gen.longitudinal_centre, bins["longitudinal_centre"], "longitudinal centre [mm]"),
        (ref.longitudinal_width, gen.longitudinal_width, bins["longitudinal_width"], "longitudinal width [mm]"),
        (ref.centre_x[:, peak], gen.centre_x[:, peak], bins["centre_x"], f"centre x, layer {peak} [mm]"),
        (ref.width_x[:, peak], gen.width_x[:, peak], bins["width_x"], f"width x, layer {peak} [mm]"),
        (ref.width_r[:, peak], gen.width_r[:, peak], bins["width_r"], f"width r, layer {peak} [mm]"),
    ]
    for cell, (a, b, edges, label) in zip(grid, panels):
        _hist_panel(fig, cell, a, b, edges, label)
    _titled(fig, comparison, "Shower shapes (per-layer features: the layer with the largest mean energy)")
    return _save(fig, folder, "shapes")


def _worst_layers(comparison: Comparison, family: str, count: int) -> list[int]:
    """The layers of a family furthest above their floors, from the report's worst-feature list."""
    worst = [row["layer"] for row in comparison.result.get("worst_features") or [] if row["feature"] == family]
    return list(dict.fromkeys(worst))[:count]


def draw_layer_energies(comparison: Comparison, folder: Path) -> Path:
    """Layer-energy histograms: layers across the depth, and the worst layers of the report first."""
    ref, gen, bins = comparison.reference, comparison.generated, comparison.extras["bins"]
    n_layers = ref.n_layers
    spread = [int(round(v)) for v in np.linspace(0, n_layers - 1, min(6, n_layers))]
    layers = list(dict.fromkeys(_worst_layers(comparison, "layer_energy", 3) + spread))[:6]
    fig = _figure(11.0, 7.8)
    grid = fig.add_gridspec(2, 3)
    for cell, layer in zip(grid, layers):
        _hist_panel(fig, cell, ref.layer_energy[:, layer], gen.layer_energy[:, layer], bins["layer_energy"][layer],
                    "energy [MeV]", logx=True, title=f"energy in layer {layer}")
    _titled(fig, comparison, "Layer energies (the worst layers by separation power first)")
    return _save(fig, folder, "layer_energies")


def draw_voxel_spectrum(comparison: Comparison, folder: Path) -> Path | None:
    """The voxel-energy spectrum above threshold."""
    extras = comparison.extras
    if "voxel_counts_reference" not in extras:
        return None
    edges = extras["voxel_edges"]
    fig = _figure(6.0, 5.2)
    main, ratio = _main_and_ratio(fig, fig.add_gridspec(1, 1)[0])
    _overlay(main, ratio, np.asarray(extras["voxel_counts_reference"], dtype=float),
             np.asarray(extras["voxel_counts_generated"], dtype=float), edges)
    main.set_xscale("log")
    ratio.set_xlabel("voxel energy [MeV]")
    _titled(fig, comparison, "Voxel energy spectrum (above threshold)")
    return _save(fig, folder, "voxel_energy")


def draw_separation_per_layer(comparison: Comparison, folder: Path) -> Path | None:
    """Separation power per layer of every family, with its floor dashed."""
    per_layer = comparison.result.get("per_layer") or {}
    per_layer = {k: v for k, v in per_layer.items() if k.startswith("separation_power.")}
    if not per_layer:
        return None
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    for key, entry in per_layer.items():
        value = _column([{"v": v} for v in entry["value"]], "v")
        error = _column([{"v": v} for v in entry.get("error", [None] * len(value))], "v")
        base = _column([{"v": v} for v in entry["reference"]], "v")
        layers = np.arange(len(value))
        line = ax.errorbar(layers, value, yerr=error, fmt="-", linewidth=1.2, elinewidth=0.6,
                           label=key.split(".", 1)[1])
        ax.plot(layers, base, "--", linewidth=0.8, color=line[0].get_color())
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("separation power")
    ax.legend(fontsize=7, frameon=False, ncol=2)
    _titled(fig, comparison, "Separation power per layer (dashed: the floor)")
    return _save(fig, folder, "separation_power_per_layer")


#: Every figure of the report, in report order.
DRAWERS: tuple[Callable[[Any, Path], Path | None], ...] = (
    draw_response_resolution,
    draw_longitudinal_profile,
    draw_radial_profile,
    draw_shapes,
    draw_layer_energies,
    draw_voxel_spectrum,
    draw_separation_per_layer,
)


def draw_all(comparison: Comparison, folder: str | Path) -> list[Path]:
    """Draw every plot of the report into ``folder``; returns the PNG paths written."""
    require_matplotlib()
    folder = Path(folder)
    return [path for draw in DRAWERS if (path := draw(comparison, folder)) is not None]
