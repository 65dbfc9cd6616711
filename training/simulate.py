"""The reference shower simulator: GFlash-style electromagnetic showers in any CaloChallenge geometry.

This module implements the physics that produces fastsim's training and validation
data and the writer that stores it in the CaloChallenge HDF5 layout (plus
``incident_theta``, ``incident_phi``, ``particle`` and the geometry). It is
numpy only. The physics, its laws and parameters, the two methods and their
measured speeds are described in docs/simulator.md.

- Particles: electrons, positrons, photons (a photon's shower starts after an
  exponential conversion depth of mean 9/7 X0). Charged pions are refused:
  no honest hadronic parameterisation is implemented (docs/simulator.md).
- Geometry: a binning (:class:`fastsim.geometry.CylindricalGeometry`) and its
  material (:class:`fastsim.geometry.MaterialGeometry`): any layer count,
  ring and sector counts per layer, passive slabs, several media.
- Inclined incidence (theta to the layer normal, azimuth phi): spots are placed
  in 3D along the track and projected onto the layers, each layer's rings
  centred where the track crosses its mid-plane.
- Correlated per-shower structure (``substructure=True``): the lateral tail is
  deposited by soft-photon sub-showers, groups of spots that share a position.
- Methods: ``spots`` draws every spot; ``binned`` draws the spot counts per
  voxel directly and is limited to normal-incidence electrons and positrons
  without substructure on a uniform single-medium stack (datasets 2 and 3).
  With those settings both methods reproduce the original dataset-2
  simulator bit for bit from the same seed.

Showers are made in blocks of ``BLOCK_SIZE`` from ``SeedSequence((seed, block))``:
shower i depends only on the seed, i and the settings, never on chunking.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastsim._util import atomic_path, atomic_write_text, positive_int, rechunk
from fastsim.errors import ConditionError, OutputError
from fastsim.geometry import CylindricalGeometry, MaterialGeometry, default_geometry

__all__ = [
    "BLOCK_SIZE",
    "ENERGY_RANGE_MEV",
    "METHODS",
    "PARTICLES",
    "PHOTON_CONVERSION_X0",
    "SIW",
    "THETA_MAX_RAD",
    "AngleRule",
    "EnergyRule",
    "SamplingCalorimeter",
    "Setup",
    "gamma_cdf",
    "iter_simulate",
    "parse_angle",
    "parse_energy",
    "parse_particle",
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


# --------------------------------------------------------------------------- particles and angles
#: Particles the simulator makes, by PDG id, and the names that select them.
PARTICLES = {11: "electron", -11: "positron", 22: "photon"}
_PARTICLE_NAMES = {"electron": 11, "e-": 11, "positron": -11, "e+": -11, "photon": 22, "gamma": 22}
_PION_NAMES = {"pion", "pion+", "pion-", "pi+", "pi-", "pi", "211", "-211"}
#: Largest polar angle to the layer normal (the path per layer grows as 1/cos(theta)).
THETA_MAX_RAD = math.radians(80.0)
#: Mean conversion depth of a photon in X0 (the pair-production mean free path, 9/7 X0).
PHOTON_CONVERSION_X0 = 9.0 / 7.0


def parse_particle(spec: str | int) -> int:
    """PDG id of ``electron``/``e-`` (11), ``positron``/``e+`` (-11), ``photon``/``gamma`` (22), or the id itself."""
    text = str(spec).strip().lower()
    if text in _PION_NAMES or text.lstrip("+-") == "211":
        raise ConditionError(
            f"particle: charged pions ({spec}) are not simulated: the reference simulator has no hadronic "
            "shower parameterisation (see docs/simulator.md); expected electron (11), positron (-11) or photon (22)"
        )
    if text in _PARTICLE_NAMES:
        return _PARTICLE_NAMES[text]
    try:
        pdg = int(text)
    except ValueError:
        pdg = None
    if pdg in PARTICLES:
        return pdg
    raise ConditionError(f"particle: expected electron (11), positron (-11) or photon (22), got {spec!r}")


_ANGLE_UNITS = {"rad": 1.0, "mrad": 1e-3, "deg": math.pi / 180.0, "pi": math.pi}


@dataclass(frozen=True)
class AngleRule:
    """How one angle is chosen per shower: ``fixed`` or ``uniform`` in [low, high]; values in radians."""

    name: str
    kind: str
    values: tuple[float, ...]
    low: float
    high: float

    def __post_init__(self) -> None:
        expected = {"fixed": 1, "uniform": 2}
        if self.kind not in expected or len(self.values) != expected[self.kind]:
            raise ConditionError(f"{self.name}: a {self.kind} rule needs {expected.get(self.kind, 1)} values, got {self.values}")
        for v in self.values:
            if not (math.isfinite(v) and self.low - 1e-12 <= v <= self.high + 1e-12):
                raise ConditionError(
                    f"{self.name}: expected angles between {math.degrees(self.low):g} deg and "
                    f"{math.degrees(self.high):g} deg, got {math.degrees(v):g} deg ({v:g} rad)"
                )
        if self.kind == "uniform" and not self.values[0] < self.values[1]:
            raise ConditionError(f"{self.name}: a range needs low < high, got {self.values[0]:g}:{self.values[1]:g} rad")

    @property
    def is_zero(self) -> bool:
        return self.kind == "fixed" and self.values[0] == 0.0

    def describe(self) -> str:
        if self.kind == "uniform":
            return f"uniform {self.values[0]:.6g}-{self.values[1]:.6g} rad"
        return f"fixed {self.values[0]:.6g} rad"

    def block_values(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Angles (radians) of a block's n showers; a range draws from the block's stream, a fixed value draws nothing."""
        if self.kind == "uniform":
            return self.values[0] + (self.values[1] - self.values[0]) * rng.random(n)
        return np.full(n, self.values[0])


def _parse_angle_value(name: str, text: str) -> float:
    match = re.fullmatch(r"\s*([0-9.eE+\-]*)\s*([a-zA-Z]*)\s*", text)
    number, unit = match.groups() if match else ("", "")
    if not match or (not number and unit.lower() != "pi"):
        raise ConditionError(f"{name}: cannot read {text!r}; expected e.g. 30deg, 0.5rad, 2pi or 0.3 (radians)")
    if unit and unit.lower() not in _ANGLE_UNITS:
        raise ConditionError(f"{name}: unknown unit {unit!r} in {text!r}; expected deg, rad, mrad or pi")
    try:
        value = float(number) if number else 1.0
    except ValueError:
        raise ConditionError(f"{name}: cannot read {text!r}; expected e.g. 30deg, 0.5rad, 2pi or 0.3 (radians)") from None
    return value * _ANGLE_UNITS[unit.lower()] if unit else value


def parse_angle(name: str, spec: str | float | AngleRule) -> AngleRule:
    """``theta``/``phi``: ``"30deg"`` (fixed), ``"0deg:60deg"`` or ``"0:2pi"`` (uniform); bare numbers are radians.

    theta must lie in [0, 80 deg], phi in [-2 pi, 2 pi].
    """
    if isinstance(spec, AngleRule):
        return spec
    low, high = (0.0, THETA_MAX_RAD) if name == "theta" else (-2 * math.pi, 2 * math.pi)
    if isinstance(spec, (int, float, np.floating, np.integer)) and not isinstance(spec, bool):
        return AngleRule(name, "fixed", (float(spec),), low, high)
    if not isinstance(spec, str):
        raise ConditionError(f"{name}: expected an angle such as 30deg or a range 0deg:60deg, got {spec!r:.80}")
    parts = spec.split(":")
    if len(parts) > 2:
        raise ConditionError(f"{name}: a range is LOW:HIGH, got {spec!r}")
    values = tuple(_parse_angle_value(name, p) for p in parts)
    return AngleRule(name, "fixed" if len(values) == 1 else "uniform", values, low, high)


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


# --------------------------------------------------------------------------- any geometry, any angle
#: Longest shower-frame step (X0 at normal incidence) over which spots share the energy profile's integral.
MAX_STEP_X0 = 1.0
#: Lateral extent (Gaussian sigma, in R_M) of one soft-photon sub-shower around its position.
GROUP_LATERAL_RM = 0.15
#: Longitudinal extent (Gaussian sigma, X0 along the axis) of one soft-photon sub-shower.
GROUP_DEPTH_X0 = 0.5


def _medium_calorimeter(medium) -> SamplingCalorimeter:
    """The GFlash constants of a material-file medium."""
    return SamplingCalorimeter(
        x0_mm=medium.x0_mm, moliere_mm=medium.moliere_mm, critical_mev=medium.critical_mev, z_eff=medium.z_eff,
        sampling_frequency=medium.sampling_frequency, e_over_mip=medium.e_over_mip, stochastic=medium.stochastic,
        constant=medium.constant, threshold_mev=medium.threshold_mev,
    )


class _Stack:
    """Per-block constants of a binning + material: slab depths, step and sub-step grids, voxel lookup tables."""

    def __init__(self, binning: CylindricalGeometry, material: MaterialGeometry) -> None:
        slabs = material.layers
        self.calo = _medium_calorimeter(material.shower_medium)
        self.slab_z = np.concatenate([[0.0], np.cumsum([sl.thickness_mm for sl in slabs])])
        self.slab_x0 = np.concatenate([[0.0], np.cumsum([sl.thickness_x0 for sl in slabs])])
        # beyond the stack, depth keeps the last slab's mm per X0 (so spots there land behind it, lost)
        self.far_z = np.append(self.slab_z, self.slab_z[-1] + 1e4 * slabs[-1].medium.x0_mm)
        self.far_x0 = np.append(self.slab_x0, self.slab_x0[-1] + 1e4)
        position = {lid: k for k, lid in enumerate(binning.layer_ids)}
        self.slab_readout = np.array([position[sl.binning_id] if sl.readout else -1 for sl in slabs] + [-1], dtype=np.int64)
        readout_slabs = [k for k, sl in enumerate(slabs) if sl.readout]
        self.mid_z = np.array([0.5 * (self.slab_z[k] + self.slab_z[k + 1]) for k in readout_slabs])
        # shower-frame steps: each slab cut into pieces of at most MAX_STEP_X0, each step into SUBSTEPS
        steps = [self.slab_x0[0]]
        for k, sl in enumerate(slabs):
            pieces = max(1, math.ceil(sl.thickness_x0 / MAX_STEP_X0 - 1e-9))
            steps.extend(self.slab_x0[k] + sl.thickness_x0 * np.arange(1, pieces + 1) / pieces)
        self.step_x0 = np.asarray(steps)
        self.n_steps = self.step_x0.size - 1
        fine = self.step_x0[:-1, None] + np.diff(self.step_x0)[:, None] * (np.arange(SUBSTEPS) / SUBSTEPS)
        self.sub_x0 = np.append(fine.ravel(), self.step_x0[-1])
        # voxel lookup: ring by one searchsorted over per-layer keys (layer * key_span + upper ring edge)
        layers = binning.layers
        self.n_voxels = binning.n_voxels
        self.offset = np.array([sl.start for sl in binning.layer_slices()], dtype=np.int64)
        self.n_alpha = np.array([la.n_alpha for la in layers], dtype=np.int64)
        self.n_radial = np.array([la.n_radial for la in layers], dtype=np.int64)
        self.inner = np.array([la.r_edges[0] for la in layers])
        self.outer = np.array([la.r_edges[-1] for la in layers])
        self.key_span = 4.0 * float(self.outer.max()) + 1.0
        self.ring_keys = np.concatenate([k * self.key_span + np.asarray(la.r_edges[1:]) for k, la in enumerate(layers)])
        self.ring_start = np.concatenate([[0], np.cumsum(self.n_radial)[:-1]]).astype(np.int64)
        # sampling response per voxel: the readout layer's medium
        media = [sl.medium for sl in material.readout_layers]
        sizes = [la.n_voxels for la in layers]
        self.variance_per_mev = np.repeat([m.stochastic**2 * 1e3 for m in media], sizes)
        self.threshold = np.repeat([m.threshold_mev for m in media], sizes)


def _general_block(
    energies: np.ndarray,
    rng: np.random.Generator,
    stack: _Stack,
    pdg: int,
    theta: np.ndarray,
    phi: np.ndarray,
    substructure: bool,
) -> np.ndarray:
    """Showers (n, n_voxels) float32 for one block, every spot placed in 3D and projected onto the layers."""
    calo = stack.calo
    n, n_steps, n_sub = energies.shape[0], stack.n_steps, stack.n_steps * SUBSTEPS
    z = rng.standard_normal((n, 2))
    scale = np.maximum(1.0 + calo.constant * rng.standard_normal(n), 0.0)
    t_max, alpha, t_spot, alpha_spot = _longitudinal(energies, z, calo)
    # a photon's shower starts where it converts: exponential, mean 9/7 X0 along its path
    start = rng.exponential(PHOTON_CONVERSION_X0, n) if pdg == 22 else np.zeros(n)
    cos_t = np.cos(theta)
    # shower-frame depth (X0 along the axis, from the shower's start) of the step and sub-step edges
    step_s = np.maximum(stack.step_x0[None, :] / cos_t[:, None] - start[:, None], 0.0)
    sub_s = np.maximum(stack.sub_x0[None, :] / cos_t[:, None] - start[:, None], 0.0)
    beta = (alpha - 1.0) / t_max
    # (a CDF difference can come out at -1e-16 where the incomplete gamma switches method: clip at 0)
    step_energy = energies[:, None] * np.maximum(np.diff(gamma_cdf(alpha[:, None], beta[:, None] * step_s), axis=1), 0.0)
    beta_spot = (alpha_spot - 1.0) / t_spot
    sub_prob = np.maximum(np.diff(gamma_cdf(alpha_spot[:, None], beta_spot[:, None] * sub_s), axis=1), 0.0)
    beyond = np.clip(1.0 - sub_prob.sum(axis=1, keepdims=True), 0.0, 1.0)
    n_spots = _spot_count(energies, calo)
    counts = rng.multinomial(n_spots, np.concatenate([sub_prob, beyond], axis=1))[:, :n_sub]
    # the spots of a step share its energy (GFlash); spots behind the last step take nothing
    step_count = counts.reshape(n, n_steps, SUBSTEPS).sum(axis=2)
    spot_energy = np.repeat(step_energy / np.maximum(step_count, 1), SUBSTEPS, axis=1).ravel()
    cell_counts = counts.ravel()
    ends = np.cumsum(cell_counts)
    begins = ends - cell_counts
    total = int(ends[-1]) if ends.size else 0

    # The track runs along d = (sin t cos p, sin t sin p, cos t); a spot sits at lateral offset (lu, lv) in the
    # plane across it, lu along u = (cos t cos p, cos t sin p, -sin t) (in the plane of d and the layer normal),
    # lv along v = (-sin p, cos p, 0). Its depth in the stack is z = axis z - lu sin t. A layer is read out in its
    # mid-plane, rings centred on the track; the energy reaches that plane along the shower direction, so in
    # readout coordinates the offset is (lu / cos t, lv) turned by phi: the stretch along phi is 1/cos t.
    sin_t = np.sin(theta).astype(np.float32)
    inv_cos_t = (1.0 / cos_t).astype(np.float32)
    normal = bool(np.all(theta == 0.0))
    sub_lo = sub_s[:, :-1].ravel()
    sub_width = np.diff(sub_s, axis=1).ravel()
    ln_e = np.log(energies / 1e3).astype(np.float32)
    inv_t_max = (1.0 / t_max).astype(np.float32)
    rm = np.float32(calo.moliere_mm)
    two_pi = 2.0 * math.pi
    # soft-photon sub-showers: a tail spot starts a new group with probability E_spot / E_group
    group_start = np.minimum(1.0, (energies / np.maximum(n_spots, 1)) / calo.critical_mev)

    nv = stack.n_voxels
    deposit = np.zeros(n * nv)
    for lo in range(0, total, SPOT_SLICE):
        hi = min(lo + SPOT_SLICE, total)
        c0, c1 = np.searchsorted(ends, [lo, hi - 1], side="right")
        within = np.clip(ends[c0 : c1 + 1], lo, hi) - np.clip(begins[c0 : c1 + 1], lo, hi)
        cell = np.repeat(np.arange(c0, c1 + 1), within)
        shower = cell // n_sub
        m = hi - lo
        # depth uniform inside the sub-step (<= 0.25 X0 at normal incidence; the profile is sampled per sub-step)
        depth = sub_lo[cell] + sub_width[cell] * rng.random(m)
        tau = depth.astype(np.float32) * inv_t_max[shower]
        p_core, r_core, r_tail = _radial_shape(tau, ln_e[shower], calo)
        tail = rng.random(m, dtype=np.float32) >= p_core
        radius2 = np.where(tail, r_tail, r_core) ** 2
        w = rng.random(m, dtype=np.float32)
        rho = np.sqrt(radius2 * w / (1.0 - w)) * rm  # mm
        psi = np.float32(two_pi) * rng.random(m, dtype=np.float32)
        if substructure:
            lu, lv = rho * np.cos(psi), rho * np.sin(psi)
            depth, lu, lv = _group_tail(rng, shower, tail, depth, lu, lv, group_start, rm)
        axis_z = np.interp((depth + start[shower]) * cos_t[shower], stack.far_x0, stack.far_z)
        if normal and not substructure:
            pz, r, angle = axis_z, rho, psi + phi[shower]
        else:
            if not substructure:
                lu, lv = rho * np.cos(psi), rho * np.sin(psi)
            pz = axis_z - lu * sin_t[shower]
            along = lu * inv_cos_t[shower]
            r, angle = np.hypot(along, lv), np.arctan2(lv, along) + phi[shower]
        slab = np.searchsorted(stack.slab_z, pz, side="right") - 1
        slab[pz < 0] = -1  # out through the front face
        layer = stack.slab_readout[slab]  # -1: passive slab, in front or behind
        keep = np.flatnonzero(layer >= 0)
        shower, layer, r, angle = shower[keep], layer[keep], r[keep], angle[keep]
        energy = spot_energy[cell[keep]]
        ring = np.searchsorted(stack.ring_keys, layer * stack.key_span + np.minimum(r, 2.0 * stack.outer[layer]), side="right")
        ring -= stack.ring_start[layer]
        n_alpha = stack.n_alpha[layer]
        # sector k covers alpha in [-pi + k 2pi/n, -pi + (k + 1) 2pi/n)
        sector = np.minimum((np.mod(angle + math.pi, two_pi) * (n_alpha / two_pi)).astype(np.int64), n_alpha - 1)
        inside = np.flatnonzero((ring < stack.n_radial[layer]) & (r >= stack.inner[layer]))
        if inside.size:
            shower = shower[inside]
            first, last = int(shower[0]), int(shower[-1]) + 1
            index = (shower - first) * nv + (stack.offset[layer] + sector * stack.n_radial[layer] + ring)[inside]
            deposit[first * nv : last * nv] += np.bincount(index, weights=energy[inside], minlength=(last - first) * nv)
    deposit = deposit.reshape(n, nv)

    # sampling fluctuations per voxel (the readout layer's medium), constant term, threshold
    flat = deposit.reshape(-1)
    hit = np.flatnonzero(flat)
    variance = stack.variance_per_mev[hit % nv]
    noisy = variance > 0
    flat[hit[noisy]] = rng.gamma(flat[hit[noisy]] / variance[noisy], variance[noisy])
    deposit *= scale[:, None]
    deposit[deposit < stack.threshold[None, :]] = 0.0
    return deposit.astype(np.float32)


def _group_tail(rng, shower, tail, depth, lateral_u, lateral_v, group_start, rm):
    """Soft-photon sub-showers: consecutive tail spots of a shower (depth-ordered) form groups that share the
    lateral position of their first spot (plus GROUP_LATERAL_RM) and its depth (plus GROUP_DEPTH_X0)."""
    index = np.flatnonzero(tail)
    if index.size == 0:
        return depth, lateral_u, lateral_v
    owner = shower[index]
    starts = rng.random(index.size) < group_start[owner]
    starts[0] = True
    starts[1:] |= owner[1:] != owner[:-1]  # a group never spans two showers
    leader = index[np.maximum.accumulate(np.where(starts, np.arange(index.size), 0))]
    member = index[~starts]
    lead = leader[~starts]
    depth, lateral_u, lateral_v = depth.copy(), lateral_u.copy(), lateral_v.copy()
    k = member.size
    depth[member] = np.abs(depth[lead] + GROUP_DEPTH_X0 * rng.standard_normal(k))
    spread = np.float32(GROUP_LATERAL_RM * rm)
    lateral_u[member] = lateral_u[lead] + spread * rng.standard_normal(k, dtype=np.float32)
    lateral_v[member] = lateral_v[lead] + spread * rng.standard_normal(k, dtype=np.float32)
    return depth, lateral_u, lateral_v


_BLOCK_MAKERS = {"spots": _spot_block, "binned": _binned_block}


def _check_method(method: str) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ConditionError(f"method: expected one of {', '.join(METHODS)}, got {method!r:.80}")
    return method


def _siw_medium(calo: SamplingCalorimeter):
    from fastsim.geometry import Medium

    # lambda_int of 2 x (1.4 mm W + 0.3 mm Si) per 3.4 mm (PDG: W 99.46 mm, Si 465.2 mm)
    return Medium("si-w", calo.x0_mm, 115.5, calo.moliere_mm, calo.critical_mev, calo.z_eff, calo.sampling_frequency,
                  calo.e_over_mip, calo.stochastic, calo.constant, calo.threshold_mev)


@dataclass(frozen=True)
class Setup:
    """Everything but the energies and the seed that decides a run's showers (checked on construction).

    ``material=None`` means the binning's layers are each ``layer_thickness_mm`` of the Si-W stack
    (the ``calorimeter`` constants), as the original simulator assumed.
    """

    binning: CylindricalGeometry
    material: MaterialGeometry
    particle: int = 11
    theta: AngleRule = AngleRule("theta", "fixed", (0.0,), 0.0, THETA_MAX_RAD)
    phi: AngleRule = AngleRule("phi", "fixed", (0.0,), -2 * math.pi, 2 * math.pi)
    method: str = "spots"
    substructure: bool = False

    @classmethod
    def make(
        cls,
        geometry: CylindricalGeometry | None = None,
        material: MaterialGeometry | None = None,
        *,
        particle: str | int = "electron",
        theta: str | float | AngleRule = 0.0,
        phi: str | float | AngleRule = 0.0,
        method: str = "spots",
        substructure: bool = False,
        calorimeter: SamplingCalorimeter = SIW,
    ) -> Setup:
        method = _check_method(method)
        pdg = parse_particle(particle)
        theta_rule, phi_rule = parse_angle("theta", theta), parse_angle("phi", phi)
        if not isinstance(substructure, bool):
            raise ConditionError(f"substructure: expected True or False, got {substructure!r:.80}")
        binning = geometry or default_geometry()
        if not isinstance(binning, CylindricalGeometry):
            raise ConditionError(f"geometry: expected a CylindricalGeometry, got {type(binning).__name__}")
        if material is None:
            material = MaterialGeometry.uniform(binning, _siw_medium(calorimeter), 0.033)
        elif not isinstance(material, MaterialGeometry):
            raise ConditionError(f"material: expected a MaterialGeometry, got {type(material).__name__}")
        material.check_binning(binning, f"geometry {material.name!r}")
        setup = cls(binning, material, pdg, theta_rule, phi_rule, method, substructure)
        if method == "binned" and not setup.legacy:
            raise ConditionError(
                "method: binned supports normal-incidence electrons and positrons without substructure on a uniform "
                f"single-medium stack; got particle {PARTICLES[pdg]}, theta {theta_rule.describe()}, "
                f"substructure {substructure}, {'uniform' if binning.uniform else 'non-uniform'} binning "
                f"({material.name}); use method spots"
            )
        return setup

    @property
    def legacy(self) -> bool:
        """True where the original per-layer samplers apply (and reproduce the original showers bit for bit)."""
        slabs = self.material.layers
        return (
            self.particle in (11, -11)
            and self.theta.is_zero
            and not self.substructure
            and self.binning.uniform
            and all(sl.readout and sl.medium == slabs[0].medium and sl.thickness_mm == slabs[0].thickness_mm for sl in slabs)
        )

    def legacy_parts(self) -> tuple[CylindricalGeometry, SamplingCalorimeter]:
        layer = self.material.layers[0]
        geometry = CylindricalGeometry(self.binning.layers, layer_thickness_mm=layer.thickness_mm)
        return geometry, _medium_calorimeter(layer.medium)

    def describe(self) -> dict:
        """Attributes recorded in an output file."""
        return {
            "particle": PARTICLES[self.particle],
            "particle_pdg": self.particle,
            "theta": self.theta.describe(),
            "phi": self.phi.describe(),
            "method": self.method,
            "substructure": self.substructure,
            "material": self.material.name,
            "material_version": self.material.version,
        }


def _iter_blocks(rule: EnergyRule, seed: int, start: int, stop: int, setup: Setup):
    """Yield (energies, theta, phi, showers) of the rows start:stop block by block; each block is made whole, then cut."""
    if setup.legacy:
        geometry, calo = setup.legacy_parts()
        make_block = _BLOCK_MAKERS[setup.method]
    else:
        stack = _Stack(setup.binning, setup.material)
    for block in range(start // BLOCK_SIZE, -(-stop // BLOCK_SIZE)):
        rng = np.random.default_rng(np.random.SeedSequence((seed, block)))
        energies = rule.block_energies(block, rng)
        theta = setup.theta.block_values(BLOCK_SIZE, rng)
        phi = setup.phi.block_values(BLOCK_SIZE, rng)
        if setup.legacy:
            showers = make_block(energies, rng, geometry, calo)
        else:
            showers = _general_block(energies, rng, stack, setup.particle, theta, phi, setup.substructure)
        offset = block * BLOCK_SIZE
        lo, hi = max(start, offset) - offset, min(stop, offset + BLOCK_SIZE) - offset
        yield energies[lo:hi], theta[lo:hi], phi[lo:hi], showers[lo:hi]


def simulate(
    n: int,
    energy: str | float | Sequence[float] | EnergyRule = "1GeV:1TeV",
    *,
    seed: int = 0,
    start: int = 0,
    geometry: CylindricalGeometry | None = None,
    material: MaterialGeometry | None = None,
    calorimeter: SamplingCalorimeter = SIW,
    method: str = "spots",
    particle: str | int = "electron",
    theta: str | float | AngleRule = 0.0,
    phi: str | float | AngleRule = 0.0,
    substructure: bool = False,
    return_angles: bool = False,
):
    """Simulate showers ``start .. start + n``: (energies (n,) float64 MeV, showers (n, n_voxels) float32 MeV).

    ``geometry`` is the binning, ``material`` its material (default: the Si-W stack);
    ``particle`` electron, positron or photon (name or PDG id); ``theta``/``phi`` fixed
    angles or ranges (``"0deg:60deg"``; bare numbers are radians); ``substructure``
    adds the soft-photon sub-showers. With ``return_angles=True`` the result is
    (energies, showers, theta, phi). ``method="binned"`` is the accelerated sampler
    for normal-incidence electrons on uniform single-medium stacks.

    >>> energies, showers = simulate(10, "50GeV", seed=1)
    """
    n, start, seed = _check_count("n", n), _check_count("start", start), _check_count("seed", seed)
    setup = Setup.make(geometry, material, particle=particle, theta=theta, phi=phi, method=method,
                       substructure=substructure, calorimeter=calorimeter)
    rule = parse_energy(energy)
    energies = np.empty(n, dtype=np.float64)
    thetas, phis = np.empty(n), np.empty(n)
    showers = np.empty((n, setup.binning.n_voxels), dtype=np.float32)
    done = 0
    for block_energies, block_theta, block_phi, block_showers in _iter_blocks(rule, seed, start, start + n, setup):
        k = block_energies.shape[0]
        energies[done : done + k] = block_energies
        thetas[done : done + k], phis[done : done + k] = block_theta, block_phi
        showers[done : done + k] = block_showers
        done += k
    return (energies, showers, thetas, phis) if return_angles else (energies, showers)


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
    setup: Setup | None = None,
    return_angles: bool = False,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield (energies, showers) chunks of ``chunk_size`` covering showers start .. start + n
    ((energies, showers, theta, phi) with ``return_angles``).

    ``setup`` (a :class:`Setup`) replaces ``geometry``/``calorimeter``/``method`` when given.
    The concatenated chunks equal one ``simulate`` call with the same settings.
    """
    n, start, seed = _check_count("n", n), _check_count("start", start), _check_count("seed", seed)
    chunk_size = _check_count("chunk_size", chunk_size, minimum=1)
    if setup is None:
        setup = Setup.make(geometry, method=method, calorimeter=calorimeter)
    rule = parse_energy(energy)
    blocks = _iter_blocks(rule, seed, start, start + n, setup)
    yield from rechunk(((e, s, t, p) if return_angles else (e, s) for e, t, p, s in blocks), chunk_size)


def _check_count(name: str, value: int, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` (0 or 1), else a ConditionError naming ``name``."""
    return positive_int(value, name, zero=minimum == 0, error=ConditionError,
                        message="{name}: expected an integer >= {minimum}, got {value!r}")


# --------------------------------------------------------------------------- writer
_CANNOT_WRITE = "output: cannot write {path} ({reason})"


def write_dataset(
    path: str | os.PathLike,
    n: int,
    energy: str | float | Sequence[float] | EnergyRule = "1GeV:1TeV",
    *,
    seed: int = 0,
    chunk_size: int = 8 * BLOCK_SIZE,
    geometry: CylindricalGeometry | None = None,
    material: MaterialGeometry | None = None,
    compression: str | None = "gzip",
    overwrite: bool = False,
    progress: bool = True,
    method: str = "spots",
    particle: str | int = "electron",
    theta: str | float | AngleRule = 0.0,
    phi: str | float | AngleRule = 0.0,
    substructure: bool = False,
) -> tuple[Path, Path]:
    """Simulate n showers into a CaloChallenge HDF5 file, its binning XML (``PATH.xml`` stem) and,
    with ``material``, its geometry file (``PATH.geometry.json``).

    Datasets: ``incident_energies`` (n, 1) and ``showers`` (n, n_voxels) in MeV as CaloChallenge;
    ``incident_theta``/``incident_phi`` (n, 1) radians when theta is not fixed at 0; ``particle``
    (n, 1) PDG id when the particle is not an electron. Attributes name the settings, the binning
    and geometry files and carry their text. The output folder is created if missing; the file is
    written under a temporary name and renamed when complete. Returns (hdf5 path, xml path).
    """
    import dataclasses

    import h5py
    from tqdm import tqdm

    from fastsim import __version__
    from fastsim.geometry import MATERIAL_SUFFIX

    n = _check_count("n", n, minimum=1)
    chunk_size = _check_count("chunk_size", chunk_size, minimum=1)
    setup = Setup.make(geometry, material, particle=particle, theta=theta, phi=phi, method=method,
                       substructure=substructure)
    rule = parse_energy(energy)
    if compression not in (None, "gzip", "lzf"):
        raise OutputError(f"compression: expected gzip, lzf or none, got {compression!r}")
    path = Path(path)
    if path.suffix.lower() in (".xml", ".json"):
        raise OutputError(f"output: expected an HDF5 file name (e.g. showers.h5), got {path}; .xml and .json names are taken by the binning and geometry")
    xml_path = path.with_suffix(".xml")
    json_path = path.with_name(path.stem + MATERIAL_SUFFIX)
    binning = dataclasses.replace(setup.binning, particle=PARTICLES[setup.particle])
    xml_text = binning.to_xml_string()
    json_text = setup.material.to_json_string()
    if path.exists() and not overwrite:
        raise OutputError(f"output: {path} already exists (pass --force to overwrite)")
    for side, text in ((xml_path, xml_text), (json_path, json_text)):
        if side.exists() and not overwrite and side.read_text(errors="replace") != text:
            raise OutputError(f"output: {side} already exists with other content (pass --force to overwrite)")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"output: {path.parent} is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output: cannot create directory {path.parent} ({exc.strerror or exc})") from None
    angles = not setup.theta.is_zero or not (setup.phi.kind == "fixed" and setup.phi.values[0] == 0.0)
    # ~0.8 MB HDF5 chunks fit h5py's default chunk cache, so row-wise reads stay cheap
    row_chunk = max(1, min(n, 32, (1 << 20) // (4 * binning.n_voxels) or 1))
    with atomic_path(path, message=_CANNOT_WRITE) as tmp:
        with h5py.File(tmp, "w") as f:
            energies_ds = f.create_dataset("incident_energies", (n, 1), dtype="float64", chunks=(min(n, 4096), 1))
            showers_ds = f.create_dataset(
                "showers",
                (n, binning.n_voxels),
                dtype="float32",
                chunks=(row_chunk, binning.n_voxels),
                compression=compression,
                shuffle=compression is not None,
            )
            if angles:
                theta_ds = f.create_dataset("incident_theta", (n, 1), dtype="float64")
                phi_ds = f.create_dataset("incident_phi", (n, 1), dtype="float64")
            if setup.particle != 11:
                f.create_dataset("particle", data=np.full((n, 1), setup.particle, dtype=np.int32))
            f.attrs.update(
                {
                    "generator": "fastsim reference simulator (training.simulate, GFlash-style)",
                    "fastsim_version": __version__,
                    "seed": seed,
                    "n": n,
                    "energy": rule.describe(),
                    "block_size": BLOCK_SIZE,
                    "binning": xml_path.name,
                    "binning_xml": xml_text,
                    "geometry": json_path.name,
                    "geometry_json": json_text,
                    **setup.describe(),
                }
            )
            with tqdm(total=n, unit="shower", disable=not progress, desc="simulate") as bar:
                done = 0
                for e, s, t, p in iter_simulate(n, rule, seed=seed, chunk_size=chunk_size, setup=setup, return_angles=True):
                    k = e.shape[0]
                    energies_ds[done : done + k, 0] = e
                    showers_ds[done : done + k] = s
                    if angles:
                        theta_ds[done : done + k, 0] = t
                        phi_ds[done : done + k, 0] = p
                    done += k
                    bar.update(k)
        binning.to_xml(xml_path)
        atomic_write_text(json_path, json_text, message=_CANNOT_WRITE)
    return path, xml_path

