"""Training data: CaloChallenge shower files -> preprocessed in-memory tensors.

The VAE never sees raw MeV. Every shower is factorised into the three pieces
the decoder predicts, so that energy conservation is structural rather than
learned:

* ``u = E_tot / E_inc``, stored as ``v = (log u - mu(c)) / sigma(c)``, its
  standardised logarithm, where ``mu`` and ``sigma`` are low-order polynomials
  of the normalised condition ``c`` fitted on the training set
  (:class:`ResponseFit`). The decoder learns a unit-scale quantity at every
  energy, so the latent code resolves a 1 % fluctuation at 1 TeV as well as a
  16 % one at 1 GeV.
* the fraction of ``E_tot`` in each (layer, radial ring), summed over the
  ring's alpha sectors: ``t = E_ring / E_tot`` (summing to one over the
  shower). Layer fractions and within-layer ring fractions are sums/ratios of
  ``t``; the loss is the cross-entropy between ``t`` and the decoder's
  ``layer softmax x within-layer softmax`` (the multinomial log-likelihood of
  where the energy went). The alpha sectors of a ring share one expectation
  (the particle enters along the axis); their spread is measured here once,
  as the voxel-noise scale ``kappa`` (:func:`_ring_moments`).
* the condition ``c = 2 (ln E - ln E_min) / (ln E_max - ln E_min) - 1`` in
  [-1, 1] for the incident-energy range of the training sample.

``t`` is small (405 float32 per shower on the dataset-2 binning: 160 MB for
100k showers), so a whole training set sits in memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from fastsim.geometry import CylindricalGeometry, default_geometry

__all__ = [
    "ResponseFit",
    "ShowerTensors",
    "energy_to_condition",
    "load_showers",
    "read_raw",
]


def energy_to_condition(energy_mev, e_min: float, e_max: float):
    """Map incident energies (MeV) to the normalised condition in [-1, 1] (numpy or torch)."""
    lib = torch if isinstance(energy_mev, torch.Tensor) else np
    scale = 2.0 / (math.log(e_max) - math.log(e_min))
    return (lib.log(energy_mev) - math.log(e_min)) * scale - 1.0


@dataclass(frozen=True)
class ResponseFit:
    """``log u`` mean and spread as polynomials of the condition ``c`` (lowest order first).

    ``log u = poly(mean_coeffs, c) + exp(poly(log_sigma_coeffs, c)) * v`` with
    ``v`` roughly standard normal at every energy.
    """

    mean_coeffs: tuple[float, ...]
    log_sigma_coeffs: tuple[float, ...]

    @classmethod
    def fit(cls, c: np.ndarray, log_u: np.ndarray, degree: int = 3, n_bins: int = 20) -> "ResponseFit":
        """Fit mean and log-spread of ``log u`` per condition bin, then polynomials through them."""
        edges = np.quantile(c, np.linspace(0.0, 1.0, n_bins + 1))
        which = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, n_bins - 1)
        centres, means, log_sigmas, weights = [], [], [], []
        for k in range(n_bins):
            sel = which == k
            if sel.sum() < 5:
                continue
            centres.append(c[sel].mean())
            means.append(log_u[sel].mean())
            # The median absolute deviation keeps the rare empty or half-leaked
            # shower from inflating the spread that sets the latent's scale.
            mad = np.median(np.abs(log_u[sel] - np.median(log_u[sel])))
            log_sigmas.append(math.log(max(1.4826 * mad, 1e-4)))
            weights.append(math.sqrt(sel.sum()))
        degree = min(degree, len(centres) - 1)
        mean = np.polynomial.polynomial.polyfit(centres, means, degree, w=weights)
        log_sigma = np.polynomial.polynomial.polyfit(centres, log_sigmas, degree, w=weights)
        return cls(tuple(float(x) for x in mean), tuple(float(x) for x in log_sigma))

    def mean(self, c):
        return _poly(self.mean_coeffs, c)

    def sigma(self, c):
        lib = torch if isinstance(c, torch.Tensor) else np
        return lib.exp(_poly(self.log_sigma_coeffs, c))

    def standardise(self, c, log_u):
        return (log_u - self.mean(c)) / self.sigma(c)

    def to_dict(self) -> dict:
        return {"mean_coeffs": list(self.mean_coeffs), "log_sigma_coeffs": list(self.log_sigma_coeffs)}

    @classmethod
    def from_dict(cls, data: dict) -> "ResponseFit":
        return cls(tuple(data["mean_coeffs"]), tuple(data["log_sigma_coeffs"]))


def _poly(coeffs, c):
    out = 0.0 * c + coeffs[-1]
    for a in reversed(coeffs[:-1]):
        out = out * c + a
    return out


# Showers whose total is below this fraction of E_inc (nothing above threshold)
# carry no shape information; they are dropped from training and counted.
_MIN_RESPONSE = 1e-3


@dataclass
class ShowerTensors:
    """A preprocessed sample held in memory (CPU tensors).

    energy: (N,) float64 MeV; condition: (N, 1) float32; v: (N, 1) float32
    standardised log response; rings: (N, n_layers * n_radial) float32
    fractions of E_tot per ring; n_dropped: showers skipped because they were empty.
    """

    energy: torch.Tensor
    condition: torch.Tensor
    v: torch.Tensor
    rings: torch.Tensor
    n_dropped: int
    kappa: float = 0.0

    @property
    def n(self) -> int:
        return int(self.energy.shape[0])


def read_raw(path: str | os.PathLike, geometry: CylindricalGeometry | None = None,
             start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read (incident energies (N,) float64 MeV, showers (N, n_voxels) float32) rows [start, stop)."""
    from fastsim.dataset import open_showers

    with open_showers(path, geometry=geometry) as f:
        stop = f.n if stop is None else min(f.n, stop)
        energies, showers = f.read(max(0, start), stop)
    return np.asarray(energies, np.float64).reshape(-1), np.asarray(showers, np.float32)


def load_showers(
    path: str | os.PathLike,
    *,
    e_min: float,
    e_max: float,
    response: ResponseFit | None = None,
    geometry: CylindricalGeometry | None = None,
    max_showers: int | None = None,
    chunk_size: int = 5000,
) -> tuple[ShowerTensors, ResponseFit]:
    """Read a CaloChallenge file chunk by chunk into :class:`ShowerTensors`.

    ``response`` is fitted on this sample when not given (the training set);
    pass the training fit when loading a validation set.
    """
    from fastsim.dataset import open_showers

    geometry = geometry or default_geometry()
    if not geometry.uniform:
        raise ValueError("geometry: the VAE needs every layer binned the same way (a uniform geometry); "
                         f"got layers with {sorted({layer.n_voxels for layer in geometry.layers})} voxels")
    energies, log_us, rings = [], [], []
    n_dropped, noise_var, noise_mean = 0, 0.0, 0.0
    with open_showers(path, geometry=geometry) as f:
        stop = f.n if max_showers is None else min(f.n, max_showers)
        for e_chunk, s_chunk in f.iter_chunks(chunk_size=chunk_size, start=0, stop=stop):
            e_chunk = np.asarray(e_chunk, np.float64).reshape(-1)
            s_chunk = np.asarray(s_chunk, np.float32)
            e_tot = s_chunk.sum(axis=1, dtype=np.float64)
            keep = e_tot > _MIN_RESPONSE * e_chunk
            n_dropped += int((~keep).sum())
            e_chunk, s_chunk, e_tot = e_chunk[keep], s_chunk[keep], e_tot[keep]
            if sum(len(e) for e in energies) < _KAPPA_SHOWERS:  # chunks before this one
                var, mean = _ring_moments(s_chunk, geometry)
                noise_var, noise_mean = noise_var + var, noise_mean + mean
            energies.append(e_chunk)
            log_us.append(np.log(e_tot / e_chunk))
            ring_energy = geometry.reshape(s_chunk).sum(axis=2, dtype=np.float64).reshape(len(e_chunk), -1)
            rings.append(torch.from_numpy((ring_energy / e_tot[:, None]).astype(np.float32)))
    energy = np.concatenate(energies) if energies else np.zeros(0)
    if energy.size == 0:
        raise ValueError(f"data file {os.fspath(path)!r} holds no non-empty showers")
    log_u = np.concatenate(log_us)
    c = energy_to_condition(energy, e_min, e_max)
    if response is None:
        response = ResponseFit.fit(c, log_u)
    v = response.standardise(c, log_u)
    tensors = ShowerTensors(
        energy=torch.from_numpy(energy),
        condition=torch.from_numpy(c.astype(np.float32)[:, None]),
        v=torch.from_numpy(v.astype(np.float32)[:, None]),
        rings=torch.cat(rings),
        n_dropped=n_dropped,
        kappa=noise_var / noise_mean if noise_mean > 0 else 0.0,
    )
    return tensors, response


# Rings whose mean voxel energy is below this (MeV) are left out of the noise
# fit: the 15 keV threshold truncates their spread.
_KAPPA_MIN_MEAN = 2.0
# kappa is one number: the first showers of the file pin it to a fraction of a percent.
_KAPPA_SHOWERS = 10000


def _ring_moments(showers: np.ndarray, geometry: CylindricalGeometry) -> tuple[float, float]:
    """Summed spread and mean over the alpha sectors of each (shower, layer, ring).

    The sectors of a ring share one expectation (azimuthal symmetry), so the
    spread among them is the voxel-level noise; kappa = sum var / sum mean is
    its scale in MeV (var = kappa * mean for a sampling calorimeter).
    """
    if not geometry.uniform or geometry.layers[0].n_alpha < 2:
        return 0.0, 0.0
    rings = geometry.reshape(showers).astype(np.float64)
    mean = rings.mean(axis=2)
    var = rings.var(axis=2, ddof=1)
    sel = mean >= _KAPPA_MIN_MEAN
    return float(var[sel].sum()), float(mean[sel].sum())
