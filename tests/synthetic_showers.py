"""Synthetic calorimeter showers for the validation tests (numpy only, seeded).

A simple electromagnetic-shower model on any cylindrical geometry: a Gamma
longitudinal profile whose maximum moves with log(E_inc), an exponential radial
profile that widens with depth, a random transverse offset, Gaussian response
fluctuations with a stochastic term, and gamma-distributed voxel fluctuations
that make small deposits sparse. Not physics-accurate; realistic enough that
features, metrics and distortions behave as they do on real showers.

``scale_energy`` and ``broaden`` make the deliberately distorted copies the
tests must detect.
"""

from __future__ import annotations

import numpy as np

from fastsim.geometry import CylindricalGeometry, Layer

__all__ = ["broaden", "scale_energy", "small_geometry", "synthetic_showers"]


def small_geometry(n_layers: int = 12, n_alpha: int = 8, n_radial: int = 6) -> CylindricalGeometry:
    """A uniform geometry with ring edges every 4.65 mm, as in CaloChallenge dataset 2."""
    edges = tuple(4.65 * i for i in range(n_radial + 1))
    return CylindricalGeometry(tuple(Layer(edges, n_alpha) for _ in range(n_layers)))


def synthetic_showers(
    n: int,
    geometry: CylindricalGeometry,
    *,
    seed: int,
    energy_range: tuple[float, float] = (1_000.0, 100_000.0),
    radius_mm: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(incident_energies (n,) MeV log-uniform, showers (n, n_voxels) float32 MeV)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.log(energy_range[0]), np.log(energy_range[1])
    energies = np.exp(rng.uniform(lo, hi, n))
    x, y, _, _, layer = geometry.voxel_centres()
    depth_x0 = (layer + 0.5) * geometry.layer_thickness_mm / 3.5  # tungsten X0 ~ 3.5 mm
    # Longitudinal Gamma profile: t_max = ln(E/Ec) - 0.5, b = 0.5, with per-shower jitter.
    t_max = np.log(energies / 8.0) - 0.5
    b = 0.5 * (1.0 + 0.05 * rng.standard_normal(n))
    a = b * t_max + 1.0
    t = depth_x0[None, :]
    log_long = (a[:, None] - 1.0) * np.log(t) - b[:, None] * t
    # Exponential radial profile around a random shower axis, widening with depth.
    offset = rng.normal(0.0, 1.0, (n, 2))
    dist = np.hypot(x[None, :] - offset[:, :1], y[None, :] - offset[:, 1:])
    radius = radius_mm * (1.0 + 0.08 * t)
    log_density = log_long - dist / radius - 2.0 * np.log(radius)
    weights = np.exp(log_density - log_density.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    # Voxel fluctuations: gamma with shape proportional to the expected deposit (~0.5 MeV quanta).
    expected = weights * energies[:, None]
    shape = np.maximum(expected / 0.5, 1e-3)
    deposits = rng.gamma(shape) * (expected / shape)
    response = 1.0 + rng.standard_normal(n) * np.hypot(0.15 / np.sqrt(energies / 1000.0), 0.01)
    deposits *= (response * energies / np.maximum(deposits.sum(axis=1), 1e-12))[:, None]
    return energies, deposits.astype(np.float32)


def scale_energy(showers: np.ndarray, factor: float) -> np.ndarray:
    """Every voxel times ``factor`` (a miscalibrated response)."""
    return (showers * factor).astype(np.float32)


def broaden(showers: np.ndarray, geometry: CylindricalGeometry, fraction: float) -> np.ndarray:
    """Move ``fraction`` of each voxel's energy one ring outwards (the outermost ring keeps its own)."""
    cube = geometry.reshape(showers).astype(np.float64)
    moved = cube * fraction
    out = cube - moved
    out[..., 1:] += moved[..., :-1]
    out[..., -1] += moved[..., -1]
    return out.reshape(showers.shape).astype(np.float32)
