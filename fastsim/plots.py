"""The validation plots: reference vs generated overlaid, with ratio panels (matplotlib).

This module owns the figures of the validation report: response and
resolution vs incident energy, longitudinal and radial profiles, E_tot/E_inc,
layer-energy and shower-shape histograms, the voxel-energy spectrum and the
separation power per layer. The reference is drawn as a filled histogram, the
generated sample as a line, as in the CaloChallenge plots.

matplotlib is an optional dependency (the ``plots`` extra) and is imported
only here, when a plot is drawn; figures are built with the object API
(``matplotlib.figure.Figure``), so no pyplot global state is touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastsim._util import atomic_path
from fastsim.errors import FastsimError

if TYPE_CHECKING:  # pragma: no cover
    from fastsim.validate import Comparison

__all__ = ["PLOTS_HINT", "draw_all", "require_matplotlib"]

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


def _figure(width: float, height: float) -> Any:
    return require_matplotlib()(figsize=(width, height), layout="constrained")


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


def _ratio_panel(ax: Any, x: np.ndarray, gen: np.ndarray, ref: np.ndarray, *, step: bool) -> None:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ref > 0, gen / ref, np.nan)
    if step:
        ax.stairs(ratio, x, color=_GEN["color"], linewidth=1.2, baseline=None)
    else:
        ax.plot(x, ratio, "o-", color=_GEN["color"], markersize=3)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylim(0.5, 1.5)
    ax.set_ylabel("gen / ref")


def _hist_panel(
    fig: Any,
    cell: Any,
    ref: np.ndarray,
    gen: np.ndarray,
    edges: np.ndarray,
    xlabel: str,
    *,
    logx: bool = False,
    title: str = "",
) -> None:
    main, ratio = _main_and_ratio(fig, cell)
    h_ref, _ = np.histogram(ref[np.isfinite(ref)], bins=edges)
    h_gen, _ = np.histogram(gen[np.isfinite(gen)], bins=edges)
    widths = np.diff(edges)
    d_ref = h_ref / max(h_ref.sum(), 1) / widths
    d_gen = h_gen / max(h_gen.sum(), 1) / widths
    main.stairs(d_ref, edges, fill=True, **_REF)
    main.stairs(d_gen, edges, **_GEN)
    if (d_ref > 0).any() or (d_gen > 0).any():
        main.set_yscale("log")
    main.set_ylabel("normalised entries")
    if title:
        main.set_title(title, fontsize=9)
    main.legend(fontsize=7, frameon=False)
    _ratio_panel(ratio, edges, d_gen, d_ref, step=True)
    ratio.set_xlabel(xlabel)
    if logx:
        main.set_xscale("log")
    else:
        main.set_xlim(*_zoom(np.concatenate([ref, gen]), edges))


def _zoom(values: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """Display range: the bulk of the data with a margin, inside the histogram edges."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float(edges[0]), float(edges[-1])
    low, high = np.percentile(values, [0.05, 99.95])
    margin = max(high - low, (edges[-1] - edges[0]) / 20) * 0.15
    return float(max(edges[0], low - margin)), float(min(edges[-1], high + margin))


def _energy_plot(result: dict[str, Any], folder: Path) -> Path | None:
    rows = result.get("energy_bins") or []
    if not rows:
        return None
    centres = np.array([math.sqrt(r["e_low_mev"] * r["e_high_mev"]) / 1e3 for r in rows])

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)

    fig = _figure(6.5, 7.0)
    grid = fig.add_gridspec(3, 1, height_ratios=(3, 3, 1.5))
    resp = fig.add_subplot(grid[0])
    res = fig.add_subplot(grid[1], sharex=resp)
    ratio = fig.add_subplot(grid[2], sharex=resp)
    for label, style, marker in (("reference", _REF, "s"), ("generated", _GEN, "o")):
        resp.errorbar(centres, column(f"response_{label}"), yerr=column(f"response_error_{label}"),
                      fmt=marker, color=style["color"], label=label, markersize=4, capsize=2)
        res.errorbar(centres, column(f"resolution_{label}"), yerr=column(f"resolution_error_{label}"),
                     fmt=marker, color=style["color"], label=label, markersize=4, capsize=2)
    resp.set_ylabel(r"response $\langle E_{tot}/E_{inc}\rangle$")
    res.set_ylabel(r"resolution $\sigma/\mu$ of $E_{tot}/E_{inc}$")
    res.set_yscale("log")
    ratio.plot(centres, column("response_ratio"), "o-", color="black", markersize=3, label="response")
    ratio.plot(centres, column("resolution_ratio"), "s--", color="grey", markersize=3, label="resolution")
    ratio.axhline(1.0, color="grey", linewidth=0.8)
    ratio.set_ylabel("gen / ref")
    ratio.set_xlabel(r"incident energy $E_{inc}$ [GeV]")
    ratio.legend(fontsize=7, frameon=False, ncol=2)
    for ax in (resp, res):
        ax.tick_params(labelbottom=False)
        ax.legend(fontsize=8, frameon=False)
    resp.set_xscale("log")
    resp.set_title("Response and resolution vs incident energy", fontsize=10)
    return _save(fig, folder, "response_resolution")


def _profile_plot(x: np.ndarray, ref: np.ndarray, gen: np.ndarray, xlabel: str, ylabel: str, title: str,
                  folder: Path, name: str, edges: np.ndarray | None = None) -> Path:
    fig = _figure(6.0, 5.0)
    main, ratio = _main_and_ratio(fig, fig.add_gridspec(1, 1)[0])
    if edges is not None:
        main.stairs(ref, edges, fill=True, **_REF)
        main.stairs(gen, edges, **_GEN)
        _ratio_panel(ratio, edges, gen, ref, step=True)
    else:
        main.fill_between(x, ref, step=None, color=_REF["color"], alpha=_REF["alpha"], label="reference")
        main.plot(x, gen, "o-", color=_GEN["color"], markersize=3, label="generated")
        _ratio_panel(ratio, x, gen, ref, step=False)
    main.set_yscale("log")
    main.set_ylabel(ylabel)
    main.set_title(title, fontsize=10)
    main.legend(fontsize=8, frameon=False)
    ratio.set_xlabel(xlabel)
    return _save(fig, folder, name)


def _chosen_layers(comparison: Comparison, count: int) -> list[int]:
    n_layers = comparison.reference.n_layers
    return sorted({int(round(v)) for v in np.linspace(0, n_layers - 1, min(count, n_layers))})


def _max_layer(comparison: Comparison) -> int:
    return int(np.argmax(comparison.reference.layer_energy.mean(axis=0)))


def draw_all(comparison: Comparison, folder: str | Path) -> list[Path]:
    """Draw every plot of the report into ``folder``; returns the PNG paths written."""
    require_matplotlib()
    folder = Path(folder)
    ref, gen, extras = comparison.reference, comparison.generated, comparison.extras
    bins = extras["bins"]
    written: list[Path] = []
    energy = _energy_plot(comparison.result, folder)
    if energy is not None:
        written.append(energy)

    # Longitudinal profile: mean fraction of E_inc per layer.
    n_layers = ref.n_layers
    layer_edges = np.arange(n_layers + 1) - 0.5
    written.append(_profile_plot(
        np.arange(n_layers),
        (ref.layer_energy / ref.incident_energy[:, None]).mean(axis=0),
        (gen.layer_energy / gen.incident_energy[:, None]).mean(axis=0),
        "layer", r"mean $E_{layer}/E_{inc}$", "Longitudinal profile", folder, "longitudinal_profile", edges=layer_edges,
    ))
    if "radial_profile_reference" in extras:
        written.append(_profile_plot(
            extras["ring_centres"], extras["radial_profile_reference"], extras["radial_profile_generated"],
            "r (ring centre) [mm]", r"mean $E_{ring}/E_{inc}$ (all layers)", "Radial profile", folder, "radial_profile",
        ))

    # E_tot / E_inc and the scalar shape features.
    fig = _figure(11.0, 7.5)
    grid = fig.add_gridspec(2, 3)
    peak = _max_layer(comparison)
    panels = [
        (ref.response, gen.response, bins["e_ratio"], r"$E_{tot}/E_{inc}$", ""),
        (ref.longitudinal_centre, gen.longitudinal_centre, bins["longitudinal_centre"], "longitudinal centre [mm]", ""),
        (ref.longitudinal_width, gen.longitudinal_width, bins["longitudinal_width"], "longitudinal width [mm]", ""),
        (ref.centre_x[:, peak], gen.centre_x[:, peak], bins["centre_x"], f"centre x, layer {peak} [mm]", ""),
        (ref.width_x[:, peak], gen.width_x[:, peak], bins["width_x"], f"width x, layer {peak} [mm]", ""),
        (ref.width_r[:, peak], gen.width_r[:, peak], bins["width_r"], f"width r, layer {peak} [mm]", ""),
    ]
    for cell, (a, b, edges, label, title) in zip(grid, panels):
        _hist_panel(fig, cell, a, b, edges, label, title=title)
    fig.suptitle("Shower shapes (layer with the largest mean energy where per layer)", fontsize=10)
    written.append(_save(fig, folder, "shapes"))

    # Layer energies in a few layers across the depth.
    layers = _chosen_layers(comparison, 6)
    fig = _figure(11.0, 7.5)
    grid = fig.add_gridspec(2, 3)
    for cell, layer in zip(grid, layers):
        _hist_panel(fig, cell, ref.layer_energy[:, layer], gen.layer_energy[:, layer], bins["layer_energy"][layer],
                    "energy [MeV]", logx=True, title=f"energy in layer {layer}")
    written.append(_save(fig, folder, "layer_energies"))

    # Voxel-energy spectrum.
    if "voxel_counts_reference" in extras:
        edges = extras["voxel_edges"]
        widths = np.diff(edges)
        d_ref = extras["voxel_counts_reference"] / max(extras["voxel_counts_reference"].sum(), 1) / widths
        d_gen = extras["voxel_counts_generated"] / max(extras["voxel_counts_generated"].sum(), 1) / widths
        fig = _figure(6.0, 5.0)
        main, ratio = _main_and_ratio(fig, fig.add_gridspec(1, 1)[0])
        main.stairs(d_ref, edges, fill=True, **_REF)
        main.stairs(d_gen, edges, **_GEN)
        main.set_xscale("log")
        main.set_yscale("log")
        main.set_ylabel("normalised entries")
        main.set_title("Voxel energy spectrum (above threshold)", fontsize=10)
        main.legend(fontsize=8, frameon=False)
        _ratio_panel(ratio, edges, d_gen, d_ref, step=True)
        ratio.set_xlabel("voxel energy [MeV]")
        written.append(_save(fig, folder, "voxel_energy"))

    # Separation power per layer, with the reference-vs-reference baseline dashed.
    per_layer = comparison.result.get("per_layer") or {}
    if per_layer:
        fig = _figure(7.0, 4.5)
        ax = fig.add_subplot()
        colours = {}
        for key, entry in per_layer.items():
            name = key.split(".", 1)[1]
            value = np.array([np.nan if v is None else v for v in entry["value"]], dtype=float)
            base = np.array([np.nan if v is None else v for v in entry["reference"]], dtype=float)
            (line,) = ax.plot(np.arange(len(value)), value, "-", linewidth=1.2, label=name)
            colours[name] = line.get_color()
            ax.plot(np.arange(len(base)), base, "--", linewidth=0.8, color=line.get_color())
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel("separation power")
        ax.set_title("Separation power per layer (dashed: reference vs reference)", fontsize=10)
        ax.legend(fontsize=7, frameon=False, ncol=2)
        written.append(_save(fig, folder, "separation_power_per_layer"))
    return written
