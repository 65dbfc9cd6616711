"""The reference shower simulator: GFlash-style electromagnetic showers in Si-W.

This module owns the physics that produces fastsim's training and validation
data (``docs/simulator.md``; Grindhammer & Peters, hep-ex/0001020) and the
writer that stores it in the CaloChallenge layout. It is numpy only.

Per shower, with energy E and y = E / E_c:

1. Longitudinal profile. (ln T, ln alpha) are drawn from the correlated
   Gaussian of the sampling-calorimeter parameterisation; the energy fraction
   of each readout layer is the Gamma(alpha, beta = (alpha - 1) / T) integral
   over its depth (regularised incomplete gamma function). Energy beyond the
   last layer is lost.
2. Spots. N_spot = 93 ln Z (E/GeV)^0.876 spots (398 at 1 GeV, ~169,000 at
   1 TeV) have depths drawn from the spot profile (T_spot, alpha_spot). As in
   Geant4's GFlash, the spots in a layer share that layer's energy equally, so
   the layer energies follow the energy profile while the spots set the
   granularity of the lateral fluctuations.
3. Radial profile. Each spot falls at radius r from the two-component
   (core + tail) profile evaluated at its depth tau = t / T, with the
   sampling corrections, and at a uniform azimuth. Spots beyond the outermost
   radial edge are lost (lateral leakage).
4. Sampling fluctuations. The energy seen by each voxel is drawn from a Gamma
   distribution with mean e and variance a^2 * e (a = 16.5 %/sqrt(GeV)):
   sums of such draws are again Gamma, so the total response has exactly the
   stochastic term a / sqrt(E) whatever the partition over voxels, and small
   deposits fluctuate strongly, as in a thin silicon sampling layer. A
   per-shower Gaussian factor of 1 % gives the constant term. Voxels below
   15.15 keV (0.5 keV in silicon) then read zero.

Two ways to deposit the spots (``method=``); steps 1 and 4 are shared, and the
same seed gives both methods the same energies, (T, alpha) and constant-term
draws per shower.

- ``"spots"`` (the default; the reference simulator). GFlash as Geant4 runs
  it: every spot is drawn -- depth t from the spot Gamma profile, core or tail
  with probability p(t / T) at its own depth, r = R sqrt(u / (1 - u)),
  azimuth uniform -- turned into a voxel index (layer from the depth, ring by
  ``np.searchsorted`` on the ring edges, sector from the azimuth) and
  histogrammed with ``np.bincount``. Vectorised over all spots of a block of
  showers, in slices of ``SPOT_SLICE`` spots to bound memory (~10 MB);
  the per-spot radial profile runs in float32. Its cost grows with the number
  of spots, i.e. like E^0.876, as a real simulator's does: use it as the
  reference (validation data, the throughput comparison with the surrogate).
- ``"binned"`` (an accelerated sampler, equal in distribution, for making
  large training sets fast). Spots are independent draws from the shower's
  profile, so the numbers of spots per layer, per ring in a layer and per
  sector of a ring are exactly multinomial; this draws those counts directly
  -- layer counts from the spot profile, ring counts from the radial profile
  averaged over the spot depths inside the layer (``SUBSTEPS`` sub-layers),
  sector counts uniform. Equal in distribution to ``"spots"`` up to the depth
  dependence of the radial profile within a sub-layer; its cost barely grows
  with energy. tests/test_simulate.py checks that the two agree (response mean
  and width, mean longitudinal profile, mean radial profile in three depth
  bands, hit-voxel count, at 2-50 GeV, all within 4.5 standard errors).

Measured (benchmarks/results/simulate.md; one process on a shared 2-core
machine, load average 3.6-5.9): ``spots`` 522 showers/s for log-uniform
1 GeV-1 TeV (~14 M spots/s), 9,500/s at 1 GeV, 620/s at 100 GeV, 91/s at
1 TeV; ``binned`` 2,400/s log-uniform, 1,300/s at 1 TeV. Peak memory of a
process simulating a block of 1 TeV showers: 72 MB (spots), 68 MB (binned).

Reproducibility. Showers are made in fixed blocks of ``BLOCK_SIZE``; block b
draws from ``numpy.random.SeedSequence((seed, b))``. Shower i therefore
depends only on the seed, i, the energy rule and the method, never on how a
run is cut into chunks. Energies are fixed, a list cycled by shower index, or
log-uniform in a range (drawn first from the block's stream).

Physics measured on this model (tests/test_simulate.py, both methods):
E_tot/E_inc ~0.97 at 1 GeV and ~0.99 from 10 GeV to 1 TeV (lateral leakage of
the wide GFlash tail at low energy, longitudinal leakage growing slowly above
100 GeV); fitted stochastic term 0.166-0.177 (sampling plus leakage
fluctuations); the maximum of the mean profile moves 1.0 X0 per e-fold of
energy; ~91 % of the energy within 9.3 mm (0.98 R_M).

The output is on the CaloChallenge dataset-2 scale: MeV of deposited energy
divided by the sampling fraction, so a contained shower sums to about E_inc.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastsim.errors import ConditionError, OutputError
from fastsim.geometry import CylindricalGeometry, default_geometry

__all__ = [
    "BLOCK_SIZE",
    "ENERGY_RANGE_MEV",
    "METHODS",
    "EnergyRule",
    "SIW",
    "SamplingCalorimeter",
    "gamma_cdf",
    "iter_simulate",
    "parse_energy",
    "simulate",
    "write_dataset",
]

#: Showers per random-stream block: block b draws from SeedSequence((seed, b)).
BLOCK_SIZE = 128
#: Sub-layers per readout layer over which the binned method averages the radial profile.
SUBSTEPS = 4
#: Spots drawn at once by the spots method (~150 bytes each in flight): bounds its memory and
#: keeps the per-spot arrays in the CPU cache.
SPOT_SLICE = 1 << 16
#: How spots are deposited: every spot drawn (the default), or the counts per voxel drawn directly.
METHODS = ("spots", "binned")
#: Incident energies the parameterisation is used for (MeV).
ENERGY_RANGE_MEV = (100.0, 1.0e7)

_UNITS = {"mev": 1.0, "gev": 1.0e3, "tev": 1.0e6, "kev": 1.0e-3}


@dataclass(frozen=True)
class SamplingCalorimeter:
    """Material and response constants of a sampling calorimeter (docs/simulator.md)."""

    x0_mm: float = 4.22  # effective radiation length of the Si-W mixture
    moliere_mm: float = 9.5  # effective Moliere radius
    critical_mev: float = 9.4  # effective critical energy
    z_eff: float = 72.5
    sampling_frequency: float = 2.48  # F_s = X0_eff / (d_W + d_Si)
    e_over_mip: float = 0.704  # e-hat = 1 / (1 + 0.007 (Z_W - Z_Si))
    stochastic: float = 0.165  # a in sigma/E = a / sqrt(E/GeV) (+) b
    constant: float = 0.01  # b
    threshold_mev: float = 0.01515  # 15.15 keV on the dataset-2 scale


#: The CaloChallenge dataset-2-like Si-W calorimeter (1.4 mm W + 0.3 mm Si, twice per layer).
SIW = SamplingCalorimeter()


# --------------------------------------------------------------------------- energies
@dataclass(frozen=True)
class EnergyRule:
    """How incident energies are chosen: ``fixed``, ``list`` (cycled by index) or ``log-uniform``.

    ``values`` are in MeV: one value, the list, or (low, high).
    """

    kind: str
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            values = tuple(float(v) for v in self.values)
        except (TypeError, ValueError):
            raise ConditionError(f"energy: expected numbers in MeV, got {self.values!r:.80}") from None
        object.__setattr__(self, "values", values)
        expected = {"fixed": 1, "log-uniform": 2}
        if self.kind not in ("fixed", "list", "log-uniform"):
            raise ConditionError(f"energy: kind must be fixed, list or log-uniform, got {self.kind!r}")
        if not values or (self.kind in expected and len(values) != expected[self.kind]):
            raise ConditionError(f"energy: a {self.kind} rule needs {expected.get(self.kind, '>= 1')} values, got {values}")
        low, high = ENERGY_RANGE_MEV
        for v in values:
            if not (math.isfinite(v) and low <= v <= high):
                raise ConditionError(
                    f"energy: expected values between {low:g} MeV and {high:g} MeV, got {v:g} MeV"
                )
        if self.kind == "log-uniform" and not values[0] < values[1]:
            raise ConditionError(f"energy: a range needs low < high, got {values[0]:g}:{values[1]:g} MeV")

    def describe(self) -> str:
        if self.kind == "log-uniform":
            return f"log-uniform {self.values[0]:g}-{self.values[1]:g} MeV"
        return f"{self.kind} " + ",".join(f"{v:g}" for v in self.values) + " MeV"

    def block_energies(self, block: int, rng: np.random.Generator) -> np.ndarray:
        """Energies (MeV) of the BLOCK_SIZE showers of ``block``, drawn from its stream."""
        if self.kind == "log-uniform":
            low, high = np.log(self.values[0]), np.log(self.values[1])
            return np.exp(low + (high - low) * rng.random(BLOCK_SIZE))
        index = block * BLOCK_SIZE + np.arange(BLOCK_SIZE)
        return np.asarray(self.values)[index % len(self.values)]


def _parse_quantity(text: str) -> float:
    match = re.fullmatch(r"\s*([0-9.eE+\-]+)\s*([a-zA-Z]*)\s*", text)
    if not match:
        raise ConditionError(f"energy: cannot read {text!r}; expected e.g. 50GeV, 1TeV or 2000 (MeV)")
    number, unit = match.groups()
    try:
        value = float(number)
    except ValueError:
        raise ConditionError(f"energy: cannot read {text!r}; expected e.g. 50GeV, 1TeV or 2000 (MeV)") from None
    if unit and unit.lower() not in _UNITS:
        raise ConditionError(f"energy: unknown unit {unit!r} in {text!r}; expected MeV, GeV or TeV")
    return value * _UNITS[unit.lower()] if unit else value


def parse_energy(spec: str | float | Sequence[float] | EnergyRule) -> EnergyRule:
    """``"50GeV"`` (fixed), ``"10GeV,100GeV"`` (list), ``"1GeV:1TeV"`` (log-uniform); bare numbers are MeV."""
    if isinstance(spec, EnergyRule):
        return spec
    if isinstance(spec, (int, float, np.floating, np.integer)):
        return EnergyRule("fixed", (float(spec),))
    if not isinstance(spec, str):
        try:
            values = tuple(spec)
        except TypeError:
            raise ConditionError(f"energy: expected a string, a number or a list of MeV values, got {spec!r:.80}") from None
        return EnergyRule("fixed" if len(values) == 1 else "list", values)
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) != 2:
            raise ConditionError(f"energy: a range is LOW:HIGH, got {spec!r}")
        return EnergyRule("log-uniform", tuple(_parse_quantity(p) for p in parts))
    values = tuple(_parse_quantity(p) for p in spec.split(","))
    return EnergyRule("fixed" if len(values) == 1 else "list", values)


# --------------------------------------------------------------------------- maths
def _lgamma(a: np.ndarray) -> np.ndarray:
    return np.fromiter((math.lgamma(v) for v in a.ravel()), dtype=np.float64, count=a.size).reshape(a.shape)


def gamma_cdf(a: np.ndarray, x: np.ndarray, iterations: int = 80) -> np.ndarray:
    """Regularised lower incomplete gamma P(a, x), vectorised (a > 0 broadcast against x >= 0).

    Series for x < a + 1, Lentz continued fraction otherwise (Numerical Recipes 6.2),
    with a fixed number of iterations so that it runs as whole-array numpy.
    """
    a = np.asarray(a, dtype=np.float64)
    # lgamma once per distinct a (typically one per shower), not once per x
    a, log_gamma_a, x = np.broadcast_arrays(a, _lgamma(a), np.asarray(x, dtype=np.float64))
    out = np.zeros(a.shape)
    use_series = (x > 0) & (x < a + 1)
    use_fraction = x >= a + 1

    if use_series.any():
        aa, xx, lg = a[use_series], x[use_series], log_gamma_a[use_series]
        term = 1.0 / aa
        total = term.copy()
        denom = aa.copy()
        for _ in range(iterations):
            denom += 1.0
            term *= xx / denom
            total += term
        out[use_series] = total * np.exp(aa * np.log(xx) - xx - lg)

    if use_fraction.any():
        aa, xx, lg = a[use_fraction], x[use_fraction], log_gamma_a[use_fraction]
        tiny = 1e-300
        b = xx + 1.0 - aa
        c = np.full_like(b, 1.0 / tiny)
        d = 1.0 / b
        h = d.copy()
        for i in range(1, iterations + 1):
            an = -i * (i - aa)
            b += 2.0
            d = an * d + b
            d[np.abs(d) < tiny] = tiny
            c = b + an / c
            c[np.abs(c) < tiny] = tiny
            d = 1.0 / d
            h *= d * c
        out[use_fraction] = 1.0 - np.exp(aa * np.log(xx) - xx - lg) * h
    return np.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------- physics
def _longitudinal(energy_mev: np.ndarray, z: np.ndarray, calo: SamplingCalorimeter):
    """Per-shower (T, alpha) of the energy profile and (T, alpha) of the spot profile."""
    ln_y = np.log(energy_mev / calo.critical_mev)
    z_eff = calo.z_eff
    t_hom = ln_y - 0.812
    alpha_hom = 0.81 + (0.458 + 2.26 / z_eff) * ln_y
    t_mean = t_hom - 0.55 / calo.sampling_frequency - 0.69 * (1.0 - calo.e_over_mip)
    alpha_mean = alpha_hom - 0.476 / calo.sampling_frequency
    sigma_t = np.minimum(1.0 / (-2.5 + 1.25 * ln_y), 0.5)
    sigma_a = np.minimum(1.0 / (-0.82 + 0.79 * ln_y), 0.5)
    rho = 0.784 - 0.023 * ln_y
    plus, minus = np.sqrt((1 + rho) / 2), np.sqrt((1 - rho) / 2)
    ln_t = np.log(t_mean) + sigma_t * (plus * z[:, 0] + minus * z[:, 1])
    ln_a = np.log(alpha_mean) + sigma_a * (plus * z[:, 0] - minus * z[:, 1])
    # Geant4's clamps keep the Gamma profile well defined (maximum inside, alpha > 1)
    t_max = np.maximum(np.exp(ln_t), 1.0)
    alpha = np.maximum(np.exp(ln_a), 1.1)
    t_spot = t_max * (0.698 + 0.00212 * z_eff)
    alpha_spot = np.maximum(alpha * (0.639 + 0.00334 * z_eff), 1.1)
    return t_max, alpha, t_spot, alpha_spot


def _radial_shape(tau: np.ndarray, ln_e: np.ndarray, calo: SamplingCalorimeter):
    """(p_core, R_C, R_T) of the radial profile at reduced depth tau (radii in Moliere radii).

    ``tau`` and ``ln_e`` (ln(E/GeV)) broadcast against each other; sampling corrections included.
    """
    z_eff, fs, ehat = calo.z_eff, calo.sampling_frequency, calo.e_over_mip
    exp_minus_tau = np.exp(-tau)
    r_core = (0.0251 + 0.00319 * ln_e) + (0.1162 - 0.000381 * z_eff) * tau
    r_core = r_core - 0.0203 * (1 - ehat) + 0.0397 * exp_minus_tau / fs
    k1, k2, k3 = 0.659 - 0.00309 * z_eff, 0.645, -2.59
    k4 = 0.3585 + 0.0412 * ln_e
    r_tail = k1 * (np.exp(k3 * (tau - k2)) + np.exp(k4 * (tau - k2)))
    r_tail = r_tail - 0.14 * (1 - ehat) - 0.495 * exp_minus_tau / fs
    p1, p2 = 2.632 - 0.00094 * z_eff, 0.401 + 0.00187 * z_eff
    p3 = 1.313 - 0.0686 * ln_e
    u = (p2 - tau) / p3
    p_core = p1 * np.exp(u - np.exp(u)) + (1 - ehat) * (0.348 - 0.642 * np.exp(-((tau - 1) ** 2)) / fs)
    # the parameterisation can leave its domain far from the shower maximum; keep it a distribution
    return np.clip(p_core, 0.0, 1.0), np.maximum(r_core, 1e-3), np.maximum(r_tail, 1e-3)


def _radial_cdf(r: np.ndarray, tau: np.ndarray, ln_e: np.ndarray, calo: SamplingCalorimeter) -> np.ndarray:
    """Fraction of a spot at reduced depth tau falling within radius r (in Moliere radii).

    ``tau`` and ``ln_e`` broadcast against each other; ``r`` is appended as a last axis.
    """
    p_core, r_core, r_tail = _radial_shape(tau, ln_e, calo)
    p_core = p_core[..., None]
    rc2, rt2 = r_core[..., None] ** 2, r_tail[..., None] ** 2
    r2 = np.asarray(r, dtype=np.float64) ** 2
    return p_core * r2 / (r2 + rc2) + (1 - p_core) * r2 / (r2 + rt2)


def _layer_energy(energies: np.ndarray, t_max: np.ndarray, alpha: np.ndarray, n_layers: int, dt: float) -> np.ndarray:
    """Energy (MeV) per readout layer: the Gamma integral over its depth; beyond the last layer is lost."""
    beta = (alpha - 1.0) / t_max
    cdf = gamma_cdf(alpha[:, None], beta[:, None] * (dt * np.arange(n_layers + 1)))
    return energies[:, None] * np.diff(cdf, axis=1)


def _spot_count(energies: np.ndarray, calo: SamplingCalorimeter) -> np.ndarray:
    """N_spot = 93 ln Z (E/GeV)^0.876 per shower (Geant4's homogeneous tuning)."""
    return np.rint(93.0 * math.log(calo.z_eff) * (energies / 1e3) ** 0.876).astype(np.int64)


def _respond(deposit: np.ndarray, scale: np.ndarray, rng: np.random.Generator, calo: SamplingCalorimeter) -> np.ndarray:
    """Sampling fluctuations, constant term and threshold on (n, n_voxels) deposits (MeV); float32."""
    # Gamma with mean e and variance a^2 e (e, a^2 in MeV): sums stay Gamma, so a / sqrt(E) overall
    variance_per_mev = calo.stochastic**2 * 1e3
    flat = deposit.reshape(-1)
    hit = np.flatnonzero(flat)
    flat[hit] = rng.gamma(flat[hit] / variance_per_mev, variance_per_mev)
    deposit *= scale[:, None]
    deposit[deposit < calo.threshold_mev] = 0.0
    return deposit.astype(np.float32)


def _block_shape(energies: np.ndarray, geometry: CylindricalGeometry, calo: SamplingCalorimeter):
    """(showers, layers, alpha sectors, rings, layer depth in X0) of a block on a uniform geometry."""
    layer = geometry.layers[0]
    return energies.shape[0], geometry.n_layers, layer.n_alpha, layer.n_radial, geometry.layer_thickness_mm / calo.x0_mm


def _shower_draws(energies: np.ndarray, rng: np.random.Generator, n_layers: int, dt: float, calo: SamplingCalorimeter):
    """The per-shower draws both methods share, in one fixed order (so a seed gives both the same showers'
    energies, profile parameters and constant-term factors): (scale, T, T_spot, alpha_spot, layer energies)."""
    n = energies.shape[0]
    z = rng.standard_normal((n, 2))
    scale = np.maximum(1.0 + calo.constant * rng.standard_normal(n), 0.0)
    t_max, alpha, t_spot, alpha_spot = _longitudinal(energies, z, calo)
    return scale, t_max, t_spot, alpha_spot, _layer_energy(energies, t_max, alpha, n_layers, dt)


def _spot_block(
    energies: np.ndarray,
    rng: np.random.Generator,
    geometry: CylindricalGeometry,
    calo: SamplingCalorimeter,
) -> np.ndarray:
    """Showers (len(energies), n_voxels) float32 for one block, every spot drawn: the ``spots`` method."""
    n, n_layers, n_alpha, n_radial, dt = _block_shape(energies, geometry, calo)
    layer = geometry.layers[0]
    scale, t_max, t_spot, alpha_spot, layer_energy = _shower_draws(energies, rng, n_layers, dt, calo)
    n_spots = _spot_count(energies, calo)
    spot_scale = t_spot / (alpha_spot - 1.0)  # 1 / beta_spot, X0
    inv_t_max = 1.0 / t_max
    # the per-spot radial profile runs in float32: twice as fast, 1e-7 on quantities that are sampled anyway
    ln_e = np.log(energies / 1e3).astype(np.float32)
    ring_edges2 = ((np.asarray(layer.r_edges[1:], dtype=np.float64) / calo.moliere_mm) ** 2).astype(np.float32)

    # spot counts per (shower, layer, sector, ring) with an overflow slot for spots behind the
    # last layer (index n_layers) and beyond the outermost edge (index n_radial)
    shape = (n, n_layers + 1, n_alpha, n_radial + 1)
    stride = math.prod(shape[1:])  # slots per shower
    counts = np.zeros(math.prod(shape), dtype=np.int64)
    ends = np.cumsum(n_spots)
    begins = ends - n_spots
    total = int(ends[-1]) if n else 0
    for lo in range(0, total, SPOT_SLICE):
        hi = min(lo + SPOT_SLICE, total)
        first, last = np.searchsorted(ends, [lo, hi - 1], side="right")  # showers this slice touches
        within = np.clip(ends[first : last + 1], lo, hi) - np.clip(begins[first : last + 1], lo, hi)
        shower = np.repeat(np.arange(first, last + 1), within)
        m = hi - lo
        depth = rng.standard_gamma(alpha_spot[shower]) * spot_scale[shower]  # t in X0
        layer_index = np.minimum(depth * (1.0 / dt), n_layers).astype(np.int64)
        # radial profile at the spot's own depth: core with probability p(tau), else tail
        tau = (depth * inv_t_max[shower]).astype(np.float32)
        p_core, r_core, r_tail = _radial_shape(tau, ln_e[shower], calo)
        radius2 = np.where(rng.random(m, dtype=np.float32) < p_core, r_core, r_tail) ** 2
        u = rng.random(m, dtype=np.float32)
        radius2 *= u / (1.0 - u)  # r = R sqrt(u / (1 - u)), compared squared with the ring edges
        ring = np.searchsorted(ring_edges2, radius2, side="right")
        # azimuth phi = -pi + 2 pi u uniform -> sector floor(u n_alpha) (centres at -pi + (k + 1/2) 2pi/n_alpha)
        sector = np.minimum(rng.random(m, dtype=np.float32) * n_alpha, n_alpha - 1).astype(np.int64)
        index = (((shower - first) * (n_layers + 1) + layer_index) * n_alpha + sector) * (n_radial + 1) + ring
        counts[first * stride : (last + 1) * stride] += np.bincount(index, minlength=(last + 1 - first) * stride)
    counts = counts.reshape(shape)

    # the spots of a layer share the layer's energy (GFlash); spots beyond the edge take theirs away
    spots_per_layer = counts[:, :n_layers].sum(axis=(2, 3))
    spot_energy = layer_energy / np.maximum(spots_per_layer, 1)
    deposit = counts[:, :n_layers, :, :n_radial] * spot_energy[:, :, None, None]
    return _respond(deposit.reshape(n, -1), scale, rng, calo)


def _binned_block(
    energies: np.ndarray,
    rng: np.random.Generator,
    geometry: CylindricalGeometry,
    calo: SamplingCalorimeter,
) -> np.ndarray:
    """Showers (len(energies), n_voxels) float32 for one block, spot counts drawn per voxel: ``binned``."""
    n, n_layers, n_alpha, n_radial, dt = _block_shape(energies, geometry, calo)
    layer = geometry.layers[0]
    scale, t_max, t_spot, alpha_spot, layer_energy = _shower_draws(energies, rng, n_layers, dt, calo)
    beta_spot = (alpha_spot - 1.0) / t_spot

    # spots per sub-layer from the spot profile
    sub_edges = (dt / SUBSTEPS) * np.arange(n_layers * SUBSTEPS + 1)
    cdf_spot = gamma_cdf(alpha_spot[:, None], beta_spot[:, None] * sub_edges)
    sub_prob = np.diff(cdf_spot, axis=1).reshape(n, n_layers, SUBSTEPS)
    layer_prob = sub_prob.sum(axis=2)
    beyond = np.clip(1.0 - layer_prob.sum(axis=1, keepdims=True), 0.0, 1.0)
    n_spots = _spot_count(energies, calo)
    spots_per_layer = rng.multinomial(n_spots, np.concatenate([layer_prob, beyond], axis=1))[:, :n_layers]

    # ring probabilities per layer: radial profile averaged over the spot depths in the layer
    sub_depth = 0.5 * (sub_edges[:-1] + sub_edges[1:]).reshape(n_layers, SUBSTEPS)
    tau = sub_depth[None] / t_max[:, None, None]  # (n, L, S)
    ln_e = np.log(energies / 1e3)[:, None, None]
    cdf_r = _radial_cdf(np.asarray(layer.r_edges[1:]) / calo.moliere_mm, tau, ln_e, calo)  # (n, L, S, R)
    weight = sub_prob / np.maximum(layer_prob, 1e-300)[..., None]
    weight[layer_prob == 0] = 1.0 / SUBSTEPS
    cdf_layer = np.einsum("nls,nlsr->nlr", weight, cdf_r)
    ring_prob = np.diff(cdf_layer, axis=2, prepend=0.0)
    outside = np.clip(1.0 - ring_prob.sum(axis=2, keepdims=True), 0.0, 1.0)
    spots_per_ring = rng.multinomial(spots_per_layer, np.concatenate([ring_prob, outside], axis=2))[..., :n_radial]

    # uniform azimuth: split each ring's spots over the alpha sectors
    spots = rng.multinomial(spots_per_ring, np.full(n_alpha, 1.0 / n_alpha))  # (n, L, R, A)
    spots = spots.transpose(0, 1, 3, 2).reshape(n, n_layers, n_alpha * n_radial)

    # the spots of a layer share the layer's energy (GFlash), lost spots take theirs away
    spot_energy = layer_energy / np.maximum(spots_per_layer, 1)
    deposit = (spots * spot_energy[:, :, None]).reshape(n, -1)

    return _respond(deposit, scale, rng, calo)


_BLOCK_MAKERS = {"spots": _spot_block, "binned": _binned_block}


def _check_method(method: str) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ConditionError(f"method: expected one of {', '.join(METHODS)}, got {method!r:.80}")
    return method


def _check_geometry(geometry: CylindricalGeometry) -> None:
    if not geometry.uniform:
        raise ConditionError("geometry: the simulator needs every layer binned alike (a uniform geometry)")


def _iter_blocks(
    rule: EnergyRule,
    seed: int,
    start: int,
    stop: int,
    geometry: CylindricalGeometry,
    calorimeter: SamplingCalorimeter,
    method: str,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the rows start:stop block by block; each block is always made whole, then cut."""
    make_block = _BLOCK_MAKERS[method]
    for block in range(start // BLOCK_SIZE, -(-stop // BLOCK_SIZE)):
        rng = np.random.default_rng(np.random.SeedSequence((seed, block)))
        energies = rule.block_energies(block, rng)
        showers = make_block(energies, rng, geometry, calorimeter)
        offset = block * BLOCK_SIZE
        lo, hi = max(start, offset) - offset, min(stop, offset + BLOCK_SIZE) - offset
        yield energies[lo:hi], showers[lo:hi]


def simulate(
    n: int,
    energy: str | float | Sequence[float] | EnergyRule = "1GeV:1TeV",
    *,
    seed: int = 0,
    start: int = 0,
    geometry: CylindricalGeometry | None = None,
    calorimeter: SamplingCalorimeter = SIW,
    method: str = "spots",
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate showers ``start .. start + n``: (energies (n,) float64 MeV, showers (n, n_voxels) float32 MeV).

    ``method="spots"`` draws every spot (GFlash as Geant4 runs it; cost grows with energy);
    ``method="binned"`` draws the spot counts per voxel directly, equal in distribution, for
    making large training sets fast.

    >>> energies, showers = simulate(10, "50GeV", seed=1)
    """
    n, start, seed = _check_count("n", n), _check_count("start", start), _check_count("seed", seed)
    method = _check_method(method)
    rule = parse_energy(energy)
    geometry = geometry or default_geometry()
    _check_geometry(geometry)
    energies = np.empty(n, dtype=np.float64)
    showers = np.empty((n, geometry.n_voxels), dtype=np.float32)
    done = 0
    for block_energies, block_showers in _iter_blocks(rule, seed, start, start + n, geometry, calorimeter, method):
        k = block_energies.shape[0]
        energies[done : done + k] = block_energies
        showers[done : done + k] = block_showers
        done += k
    return energies, showers


def iter_simulate(
    n: int,
    energy: str | float | Sequence[float] | EnergyRule = "1GeV:1TeV",
    *,
    seed: int = 0,
    start: int = 0,
    chunk_size: int = 4 * BLOCK_SIZE,
    geometry: CylindricalGeometry | None = None,
    calorimeter: SamplingCalorimeter = SIW,
    method: str = "spots",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (energies, showers) chunks of ``chunk_size`` covering showers start .. start + n.

    The concatenated chunks equal one ``simulate(n, start=start, method=method)`` call.
    """
    n, start, seed = _check_count("n", n), _check_count("start", start), _check_count("seed", seed)
    method = _check_method(method)
    chunk_size = _check_count("chunk_size", chunk_size, minimum=1)
    rule = parse_energy(energy)
    geometry = geometry or default_geometry()
    _check_geometry(geometry)
    pending_e: list[np.ndarray] = []
    pending_s: list[np.ndarray] = []
    held = 0
    for block_energies, block_showers in _iter_blocks(rule, seed, start, start + n, geometry, calorimeter, method):
        pending_e.append(block_energies)
        pending_s.append(block_showers)
        held += block_energies.shape[0]
        while held >= chunk_size:
            energies, showers = np.concatenate(pending_e), np.concatenate(pending_s)
            yield energies[:chunk_size], showers[:chunk_size]
            pending_e, pending_s = [energies[chunk_size:]], [showers[chunk_size:]]
            held -= chunk_size
    if held:
        yield np.concatenate(pending_e), np.concatenate(pending_s)


def _check_count(name: str, value: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConditionError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- writer
def write_dataset(
    path: str | os.PathLike,
    n: int,
    energy: str | float | Sequence[float] | EnergyRule = "1GeV:1TeV",
    *,
    seed: int = 0,
    chunk_size: int = 8 * BLOCK_SIZE,
    geometry: CylindricalGeometry | None = None,
    compression: str | None = "gzip",
    overwrite: bool = False,
    progress: bool = True,
    method: str = "spots",
) -> tuple[Path, Path]:
    """Simulate n showers into a CaloChallenge HDF5 file plus its binning XML (``PATH.xml`` stem).

    The file is written chunk by chunk under a temporary name and renamed when complete,
    so memory stays flat in n and an interrupted run never leaves a file that looks finished.
    ``method`` is as in :func:`simulate` and recorded in the file's attributes.
    Returns (hdf5 path, xml path).
    """
    import h5py
    from tqdm import tqdm

    from fastsim import __version__

    n = _check_count("n", n, minimum=1)
    chunk_size = _check_count("chunk_size", chunk_size, minimum=1)
    method = _check_method(method)
    rule = parse_energy(energy)
    geometry = geometry or default_geometry()
    _check_geometry(geometry)
    if compression not in (None, "gzip", "lzf"):
        raise OutputError(f"compression: expected gzip, lzf or none, got {compression!r}")
    path = Path(path)
    xml_path = path.with_suffix(".xml")
    if path.suffix.lower() == ".xml":
        raise OutputError(f"output: expected an HDF5 file name (e.g. showers.h5), got {path}; the .xml name is taken by the binning")
    if path.exists() and not overwrite:
        raise OutputError(f"output: {path} already exists (pass --force to overwrite)")
    if xml_path.exists() and not overwrite and xml_path.read_text(errors="replace") != geometry.to_xml_string():
        raise OutputError(f"output: {xml_path} already exists with other content (pass --force to overwrite)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no data/
    except OSError as exc:
        raise OutputError(f"output: cannot create directory {path.parent} ({exc.strerror})") from None
    tmp = path.with_name(path.name + ".partial")
    # ~0.8 MB HDF5 chunks fit h5py's default chunk cache, so row-wise reads stay cheap
    row_chunk = max(1, min(n, 32))
    try:
        with h5py.File(tmp, "w") as f:
            energies_ds = f.create_dataset("incident_energies", (n, 1), dtype="float64", chunks=(min(n, 4096), 1))
            showers_ds = f.create_dataset(
                "showers",
                (n, geometry.n_voxels),
                dtype="float32",
                chunks=(row_chunk, geometry.n_voxels),
                compression=compression,
                shuffle=compression is not None,
            )
            f.attrs.update(
                {
                    "generator": "fastsim reference simulator (training.simulate, GFlash-style)",
                    "fastsim_version": __version__,
                    "seed": seed,
                    "n": n,
                    "energy": rule.describe(),
                    "method": method,
                    "block_size": BLOCK_SIZE,
                    "binning": xml_path.name,
                }
            )
            with tqdm(total=n, unit="shower", disable=not progress, desc="simulate") as bar:
                done = 0
                for chunk_energies, chunk_showers in iter_simulate(
                    n, rule, seed=seed, chunk_size=chunk_size, geometry=geometry, method=method
                ):
                    k = chunk_energies.shape[0]
                    energies_ds[done : done + k, 0] = chunk_energies
                    showers_ds[done : done + k] = chunk_showers
                    done += k
                    bar.update(k)
        geometry.to_xml(xml_path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path, xml_path
