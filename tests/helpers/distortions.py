"""Deliberate distortions of shower samples, and a small geometry, for the validation tests.

Samples themselves come from the reference simulator (``training.simulate``,
numpy only); these helpers make the miscalibrated or too-broad copies a
validation must detect.
"""

from __future__ import annotations

import numpy as np

from fastsim.geometry import CylindricalGeometry, Layer

__all__ = ["broaden", "drop_small_deposits", "scale_energy", "scale_layer", "small_geometry"]


def small_geometry(n_layers: int = 12, n_alpha: int = 8, n_radial: int = 6) -> CylindricalGeometry:
    """A uniform geometry with ring edges every 4.65 mm, as in CaloChallenge dataset 2."""
    edges = tuple(4.65 * i for i in range(n_radial + 1))
    return CylindricalGeometry(tuple(Layer(edges, n_alpha) for _ in range(n_layers)))


def scale_energy(showers: np.ndarray, factor: float) -> np.ndarray:
    """Every voxel times ``factor`` (a miscalibrated response)."""
    return (np.asarray(showers, dtype=np.float64) * factor).astype(np.float32)


def broaden(showers: np.ndarray, geometry: CylindricalGeometry, fraction: float) -> np.ndarray:
    """Move ``fraction`` of each voxel's energy one ring outwards (the outermost ring keeps its own)."""
    cube = geometry.reshape(showers).astype(np.float64)
    moved = cube * fraction
    out = cube - moved
    out[..., 1:] += moved[..., :-1]
    out[..., -1] += moved[..., -1]
    return out.reshape(showers.shape).astype(np.float32)


def scale_layer(showers: np.ndarray, geometry: CylindricalGeometry, layer: int, factor: float) -> np.ndarray:
    """The voxels of one layer times ``factor`` (a few per cent: a local miscalibration)."""
    out = np.array(showers, dtype=np.float32)
    out[:, geometry.layer_slices()[layer]] *= np.float32(factor)
    return out


def drop_small_deposits(showers: np.ndarray, below: float) -> np.ndarray:
    """Voxels under ``below`` MeV emptied: the missing small deposits of a too-smooth surrogate."""
    out = np.array(showers, dtype=np.float32)
    out[out < below] = 0.0
    return out
