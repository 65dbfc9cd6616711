"""The general surrogate: several conditions, any CaloChallenge binning, alpha structure where the data have it.

:mod:`training.model`'s ring model decodes one fraction per (layer, ring)
shared by every alpha sector, on a uniform binning, with energy the only
condition. This module lifts each of those limits:

* **Conditions** (:class:`Conditioning`): incident energy (MeV), and
  optionally the polar angle ``incident_theta`` and the azimuth
  ``incident_phi`` (radians, periodic). The network sees energy and theta;
  phi enters only as a rotation of the alpha structure (the readout is
  symmetric under rotations, so a shower at azimuth phi is the shower at
  azimuth 0 turned by phi). With several particle types the ``particle``
  condition (PDG id, categorical) reaches the network one-hot.
* **Geometry** (:class:`VoxelLayout`): any CaloChallenge binning, including
  dataset 1's layers with different ring and sector counts, some without
  alpha segmentation. The decoder works on a padded
  ``(layer, alpha, radial)`` block (``n_active_layers x max n_alpha x max
  n_radial``), which for a uniform binning *is* the CaloChallenge order, and
  gathers the real voxels out of it otherwise.
* **Alpha structure** (``alpha_harmonics`` in the model config): the decoded
  mean of each (layer, ring) is spread over its sectors by a softmax over
  ``sum_k a_k cos(k (alpha - phi)) + b_k sin(k (alpha - phi))`` for the chosen
  orders k, per-shower coefficients from the network. No orders: the sectors
  of a ring share one mean (the symmetry of normal incidence). Which orders
  to use is a measurement on the data, not an assumption:
  :func:`measure_alpha_symmetry` gives each order's track-frame moment and
  its error, and recommends the significant ones.

Fractions are decoded as ``layer softmax x within-layer ring softmax x
within-ring sector softmax`` and trained by the voxel-level cross-entropy,
with the standardised log response and the KL as in the ring model. The
physical decoder (:class:`GeneralDecoder`) folds in the latent prior,
samples every voxel with the Gamma noise of :mod:`training.model` (per-layer
kappa and spot energies), applies the threshold and keeps ``sum = u E_inc``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from fastsim.dataset import ShowerSource, particle_column, phi_column, theta_column
from fastsim.geometry import CylindricalGeometry
from fastsim.spec import ConditionSpec
from training.data import ResponseFit, energy_to_condition
from training.model import (
    NOISE_SEED_DIMS,
    SPOT_DEGREE,
    ModelConfig,
    _mlp,
    _NoiseWords,
    _Threshold,
    gamma_draw,
    gamma_parameters,
)

__all__ = [
    "Conditioning",
    "GeneralDecoder",
    "GeneralTensors",
    "GeneralVAE",
    "VoxelLayout",
    "conditions_of",
    "fit_general_spot_energy",
    "fit_general_spot_spread",
    "load_general_showers",
    "measure_alpha_symmetry",
    "read_conditions",
]

TWO_PI = 2.0 * math.pi
# Padded rings and sectors get this logit: exp() of it is exactly 0 in float32.
_MASKED_LOGIT = -1e4


@dataclass(frozen=True)
class Conditioning:
    """Which conditions a model takes and their training ranges.

    ``theta_max`` (radians) > 0 adds ``incident_theta`` in [0, theta_max];
    ``phi`` adds ``incident_phi`` in [0, 2 pi), periodic; two or more
    ``particles`` (PDG ids) add the categorical ``particle``. The order of the
    condition columns is energy, theta, phi, particle.
    """

    e_min: float
    e_max: float
    theta_max: float = 0.0
    phi: bool = False
    particles: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        from training.simulate import PARTICLES

        object.__setattr__(self, "particles", tuple(int(p) for p in self.particles))
        unknown = [p for p in self.particles if p not in PARTICLES]
        if unknown or len(set(self.particles)) != len(self.particles) or len(self.particles) == 1:
            raise ValueError(f"particles: expected none or two or more distinct PDG ids among "
                             f"{sorted(PARTICLES)}, got {list(self.particles)}")

    @property
    def names(self) -> tuple[str, ...]:
        return ("incident_energy",) + (("incident_theta",) if self.theta_max > 0 else ()) + \
            (("incident_phi",) if self.phi else ()) + (("particle",) if self.particles else ())

    @property
    def n_conditions(self) -> int:
        return len(self.names)

    @property
    def n_features(self) -> int:
        """Inputs the network sees: the normalised log energy, with theta the normalised angle, one-hot particles."""
        return 1 + (self.theta_max > 0) + len(self.particles)

    def features(self, conditions: torch.Tensor) -> torch.Tensor:
        """(N, n_conditions) physical conditions -> (N, n_features) in [-1, 1]."""
        parts = [energy_to_condition(conditions[:, :1], self.e_min, self.e_max)]
        if self.theta_max > 0:
            parts.append(conditions[:, 1:2] * (2.0 / self.theta_max) - 1.0)
        if self.particles:
            codes = torch.tensor(self.particles, dtype=conditions.dtype, device=conditions.device)
            column = self.names.index("particle")
            parts.append((conditions[:, column:column + 1] == codes).to(conditions.dtype) * 2.0 - 1.0)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def azimuth(self, conditions: torch.Tensor) -> torch.Tensor | None:
        """The (N, 1) azimuth column, or None when the model has no phi."""
        if not self.phi:
            return None
        column = self.names.index("incident_phi")
        return conditions[:, column:column + 1]

    def specs(self) -> tuple[ConditionSpec, ...]:
        from training.simulate import PARTICLES

        out = [ConditionSpec("incident_energy", "MeV", float(self.e_min), float(self.e_max), "log-uniform")]
        if self.theta_max > 0:
            out.append(ConditionSpec("incident_theta", "rad", 0.0, float(self.theta_max), "uniform"))
        if self.phi:
            out.append(ConditionSpec("incident_phi", "rad", 0.0, TWO_PI, "uniform", period=TWO_PI))
        if self.particles:
            out.append(ConditionSpec("particle", "pdg", float(min(self.particles)), float(max(self.particles)),
                                     "categorical", categories=tuple((PARTICLES[p], p) for p in self.particles)))
        return tuple(out)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, n_conditions) float32 conditions drawn over the training ranges (log-uniform energy)."""
        cols = [np.exp(rng.uniform(math.log(self.e_min), math.log(self.e_max), n))]
        if self.theta_max > 0:
            cols.append(rng.uniform(0.0, self.theta_max, n))
        if self.phi:
            cols.append(rng.uniform(0.0, TWO_PI, n))
        if self.particles:
            cols.append(rng.choice(np.asarray(self.particles, dtype=np.float64), n))
        return np.stack(cols, axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        return {**asdict(self), "particles": list(self.particles)}


def conditions_of(source: ShowerSource, names: tuple[str, ...]) -> np.ndarray:
    """(N, len(names)) float64 conditions of every row of an open shower source (read when it was opened).

    ``incident_energy`` is the file's ``incident_energies``; ``incident_theta``
    and ``incident_phi`` its angles, a missing one meaning normal incidence
    (zeros); phi is wrapped into [0, 2 pi). ``particle`` is the file's
    ``particle`` dataset (PDG ids) or, without one, its one particle: the
    ``particle_pdg`` attribute (the reference simulator's), else electrons.
    """
    cols = []
    for name in names:
        if name == "incident_energy":
            cols.append(source.incident_energies)
        elif name == "incident_theta":
            cols.append(theta_column(source.conditions, source.n))
        elif name == "incident_phi":
            phi = phi_column(source.conditions)
            cols.append(np.zeros((source.n, 1)) if phi is None else np.mod(phi, TWO_PI))
        elif name == "particle":
            attrs = getattr(source, "attrs", {})
            cols.append(particle_column(source.conditions, source.n, float(attrs.get("particle_pdg", 11))))
        else:
            raise ValueError(f"{os.fspath(source.path)!r}: the model's condition {name!r} is not one a shower file "
                             "carries (incident_energy, incident_theta, incident_phi, particle)")
    return np.concatenate(cols, axis=1)


def read_conditions(path: str | os.PathLike, names: tuple[str, ...], start: int = 0, stop: int | None = None, *,
                    geometry: CylindricalGeometry | None = None) -> np.ndarray:
    """(N, len(names)) float64 conditions of rows [start, stop) of a CaloChallenge file (see :func:`conditions_of`)."""
    from fastsim.dataset import open_showers

    with open_showers(path, geometry=geometry) as f:
        return conditions_of(f, names)[start:stop]


class VoxelLayout:
    """A binning as a padded (layer, alpha, radial) block of the layers that have voxels.

    Attributes (numpy): ``n_alpha`` and ``n_radial`` per active layer;
    ``slot_of_voxel`` (n_voxels,) the flat padded slot of each voxel in
    CaloChallenge order; ``ring_mask`` (L, R) and ``sector_mask`` (L, A)
    True where real; ``alpha`` (L, A) sector centres (radians);
    ``layer_of_voxel`` (n_voxels,) the active-layer index of each voxel.
    """

    def __init__(self, geometry: CylindricalGeometry):
        active = [layer for layer in geometry.layers if layer.n_voxels > 0]
        if not active:
            raise ValueError("geometry: no layer has voxels")
        self.geometry = geometry
        self.n_layers = len(active)
        self.n_alpha = np.array([layer.n_alpha for layer in active])
        self.n_radial = np.array([layer.n_radial for layer in active])
        self.max_alpha, self.max_radial = int(self.n_alpha.max()), int(self.n_radial.max())
        self.n_voxels = geometry.n_voxels
        a_idx = np.arange(self.max_alpha)
        r_idx = np.arange(self.max_radial)
        self.ring_mask = r_idx[None, :] < self.n_radial[:, None]
        self.sector_mask = a_idx[None, :] < self.n_alpha[:, None]
        self.alpha = np.zeros((self.n_layers, self.max_alpha))
        slots, layer_of_voxel = [], []
        for i, layer in enumerate(active):
            self.alpha[i, :layer.n_alpha] = layer.alpha_centres
            a, r = np.meshgrid(np.arange(layer.n_alpha), np.arange(layer.n_radial), indexing="ij")
            slots.append(((i * self.max_alpha + a) * self.max_radial + r).ravel())
            layer_of_voxel.append(np.full(layer.n_voxels, i))
        self.slot_of_voxel = np.concatenate(slots)
        self.layer_of_voxel = np.concatenate(layer_of_voxel)
        self.n_slots = self.n_layers * self.max_alpha * self.max_radial
        self.n_rings = int(self.ring_mask.sum())

    @property
    def padded(self) -> bool:
        """False when the padded block is the CaloChallenge order itself (a uniform binning)."""
        return self.n_slots != self.n_voxels

    def to_slots(self, showers: np.ndarray) -> np.ndarray:
        """(N, n_voxels) -> (N, L, A, R), zeros in the padding."""
        out = np.zeros((showers.shape[0], self.n_slots), dtype=showers.dtype)
        out[:, self.slot_of_voxel] = showers
        return out.reshape(-1, self.n_layers, self.max_alpha, self.max_radial)


# -- symmetry measurement -------------------------------------------------------------


def measure_alpha_symmetry(path: str | os.PathLike, geometry: CylindricalGeometry, *, orders=(1, 2, 3, 4),
                           max_showers: int = 20000, chunk_size: int = 2000, n_sigma: float = 5.0) -> dict:
    """Track-frame alpha moments of a shower file, layer by layer: which harmonic orders the decoder needs.

    For each shower and each layer with at least 2 k + 1 sectors,
    ``m_kl = sum_v f_v cos(k (alpha_v - phi))`` and ``s_kl = sum_v f_v sin(k
    (alpha_v - phi))`` over the layer's voxels, ``f_v`` the voxel's share of
    the layer's energy and phi the shower's azimuth (0 without
    ``incident_phi``). A shower symmetric in alpha about its axis has every
    moment zero on average. Layers are tested one by one: an odd moment can
    change sign with depth (an inclined shower's early layers lag behind the
    track, its late layers lead), so a sum over layers could cancel it. An
    order is recommended when some layer's mean moment is more than
    ``n_sigma`` standard errors from zero. Returns ``{"orders": [...],
    "recommended": [...], "n_showers": N}``; each order gives, for cos and
    sin, the largest significance over layers, that layer and its mean and error.
    """
    from fastsim.dataset import open_showers

    alpha = geometry.voxel_centres()[3]
    layer_of_voxel = np.concatenate([np.full(layer.n_voxels, i) for i, layer in enumerate(geometry.layers)])
    n_layers = geometry.n_layers
    n_alpha = np.array([layer.n_alpha for layer in geometry.layers])
    # Per (order, layer): sums of cos, cos^2, sin, sin^2 and the number of showers with energy in the layer.
    sums = {k: np.zeros((5, n_layers)) for k in orders}
    n_seen = 0
    with open_showers(path, geometry=geometry) as f:
        phis = conditions_of(f, ("incident_phi",))[:, 0]
        stop = min(f.n, max_showers)
        for start in range(0, stop, chunk_size):
            end = min(stop, start + chunk_size)
            _, showers = f.read(start, end)
            showers = np.asarray(showers, np.float64)
            phi = phis[start:end]
            delta = alpha[None, :] - phi[:, None]
            layer_sum = np.zeros((len(showers), n_layers))
            np.add.at(layer_sum.T, layer_of_voxel, showers.T)
            ok = layer_sum > 0
            for k in orders:
                for part, values in ((0, np.cos(k * delta)), (2, np.sin(k * delta))):
                    moment = np.zeros((len(showers), n_layers))
                    np.add.at(moment.T, layer_of_voxel, (showers * values).T)
                    moment = np.where(ok, moment / np.where(ok, layer_sum, 1.0), 0.0)
                    sums[k][part] += moment.sum(0)
                    sums[k][part + 1] += (moment * moment).sum(0)
                sums[k][4] += ok.sum(0)
            n_seen += end - start
    rows, recommended = [], []
    for k in orders:
        usable = (n_alpha >= 2 * k + 1) & (sums[k][4] > 1)
        row: dict = {"order": k}
        significant = False
        for name, part in (("cos", 0), ("sin", 2)):
            n = np.maximum(sums[k][4], 2)
            mean = sums[k][part] / n
            err = np.sqrt(np.maximum(sums[k][part + 1] / n - mean**2, 0.0) / (n - 1))
            z = np.where(usable & (err > 0), np.abs(mean) / np.where(err > 0, err, 1.0), 0.0)
            worst = int(np.argmax(z))
            row.update({f"{name}_max_sigma": float(z[worst]), f"{name}_layer": worst,
                        f"{name}_mean": float(mean[worst]), f"{name}_error": float(err[worst])})
            significant = significant or bool(z[worst] > n_sigma)
        row["significant"] = significant
        rows.append(row)
        if significant:
            recommended.append(k)
    return {"n_showers": n_seen, "n_sigma": n_sigma, "orders": rows, "recommended": recommended}


# -- data ---------------------------------------------------------------------------------


# Showers whose total is below this fraction of E_inc carry no shape information (as training.data).
_MIN_RESPONSE = 1e-3
# Rings whose mean voxel energy is below this (MeV) are left out of the kappa fit (threshold-truncated).
_KAPPA_MIN_MEAN = 2.0
_KAPPA_SHOWERS = 10000
# Inclined showers are not alpha-symmetric: kappa comes from the near-normal ones only.
_KAPPA_MAX_THETA = math.radians(10.0)


@dataclass
class GeneralTensors:
    """A preprocessed sample in memory, with the field names the training loop uses.

    energy (N,) float64 MeV; condition (N, n_conditions) float32 physical
    conditions; v (N, 1) standardised log response; rings (N, L, A, R)
    float32 voxel fractions of E_tot in the padded layout; kappa (L,) MeV.
    """

    energy: torch.Tensor
    condition: torch.Tensor
    v: torch.Tensor
    rings: torch.Tensor
    n_dropped: int
    kappa: np.ndarray

    @property
    def n(self) -> int:
        return int(self.energy.shape[0])

    def split(self, n_tail: int) -> tuple[GeneralTensors, GeneralTensors]:
        keys = ("energy", "condition", "v", "rings")
        head = GeneralTensors(*(getattr(self, k)[:-n_tail] for k in keys), self.n_dropped, self.kappa)
        tail = GeneralTensors(*(getattr(self, k)[-n_tail:] for k in keys), 0, self.kappa)
        return head, tail


def load_general_showers(path: str | os.PathLike, conditioning: Conditioning, layout: VoxelLayout, *,
                         response: ResponseFit | None = None, max_showers: int | None = None,
                         chunk_size: int = 5000) -> tuple[GeneralTensors, ResponseFit]:
    """Read a CaloChallenge file into :class:`GeneralTensors` (``response`` fitted here when not given)."""
    from fastsim.dataset import open_showers

    names = conditioning.names
    conds, log_us, fractions = [], [], []
    n_dropped, var_sum, mean_sum, n_kappa = 0, np.zeros(layout.n_layers), np.zeros(layout.n_layers), 0
    with open_showers(path, geometry=layout.geometry) as f:
        all_conditions = conditions_of(f, names)
        stop = f.n if max_showers is None else min(f.n, max_showers)
        for start in range(0, stop, chunk_size):
            end = min(stop, start + chunk_size)
            _, showers = f.read(start, end)
            showers = np.asarray(showers, np.float32)
            cond = all_conditions[start:end]
            e_tot = showers.sum(axis=1, dtype=np.float64)
            keep = e_tot > _MIN_RESPONSE * cond[:, 0]
            n_dropped += int((~keep).sum())
            showers, cond, e_tot = showers[keep], cond[keep], e_tot[keep]
            slots = layout.to_slots(showers)
            if n_kappa < _KAPPA_SHOWERS:
                near_normal = cond[:, 1] <= _KAPPA_MAX_THETA if conditioning.theta_max > 0 else np.ones(len(cond), bool)
                var, mean = _sector_moments(slots[near_normal], layout)
                var_sum, mean_sum, n_kappa = var_sum + var, mean_sum + mean, n_kappa + int(near_normal.sum())
            conds.append(cond)
            log_us.append(np.log(e_tot / cond[:, 0]))
            fractions.append(torch.from_numpy((slots / e_tot[:, None, None, None]).astype(np.float32)))
    if not conds:
        raise ValueError(f"data file {os.fspath(path)!r} holds no non-empty showers")
    cond = np.concatenate(conds)
    log_u = np.concatenate(log_us)
    c_e = energy_to_condition(cond[:, 0], conditioning.e_min, conditioning.e_max)
    if response is None:
        response = ResponseFit.fit(c_e, log_u)
    v = response.standardise(c_e, log_u)
    kappa = np.where(mean_sum > 0, var_sum / np.maximum(mean_sum, 1e-30), np.nan)
    # Layers without alpha segmentation (or without a measurable ring) take the median of the others.
    fallback = float(np.nanmedian(kappa)) if np.isfinite(kappa).any() else 0.0
    kappa = np.where(np.isfinite(kappa), kappa, fallback)
    tensors = GeneralTensors(
        energy=torch.from_numpy(cond[:, 0].copy()),
        condition=torch.from_numpy(cond.astype(np.float32)),
        v=torch.from_numpy(v.astype(np.float32)[:, None]),
        rings=torch.cat(fractions),
        n_dropped=n_dropped,
        kappa=kappa,
    )
    return tensors, response


def _sector_moments(slots: np.ndarray, layout: VoxelLayout) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: summed spread and mean over the sectors of each (shower, ring) with mean >= the cut."""
    var_sum, mean_sum = np.zeros(layout.n_layers), np.zeros(layout.n_layers)
    for i in range(layout.n_layers):
        a, r = int(layout.n_alpha[i]), int(layout.n_radial[i])
        if a < 2 or len(slots) == 0:
            continue
        ring = slots[:, i, :a, :r].astype(np.float64)
        mean, var = ring.mean(axis=1), ring.var(axis=1, ddof=1)
        sel = mean >= _KAPPA_MIN_MEAN
        var_sum[i], mean_sum[i] = var[sel].sum(), mean[sel].sum()
    return var_sum, mean_sum


# -- the VAE --------------------------------------------------------------------------------


class GeneralVAE(nn.Module):
    """Conditional VAE over voxel fractions in a padded layout, with optional alpha harmonics."""

    def __init__(self, config: ModelConfig, layout: VoxelLayout, conditioning: Conditioning):
        super().__init__()
        self.config, self.layout, self.conditioning = config, layout, conditioning
        self.orders = tuple(config.harmonic_orders)
        if self.orders and not conditioning.phi:
            raise ValueError("[model] alpha_harmonics: harmonics turn with the azimuth; the data need incident_phi "
                             "(set [data] phi = true)")
        L, R, K = layout.n_layers, layout.max_radial, len(self.orders)
        h, d = config.hidden, config.latent_dim
        n_feat = conditioning.n_features
        n_in = n_feat + 3 + L + layout.n_rings + 2 * K * L
        self.encoder = _mlp([n_in, config.encoder_hidden, config.encoder_hidden // 2, 2 * d])
        self.trunk = nn.Sequential(_mlp([d + n_feat] + [h] * config.n_hidden), nn.SiLU())
        self.v_head = nn.Linear(h, 1)
        self.layer_head = nn.Linear(h, L)
        self.ring_head = nn.Linear(h, L * R)
        self.harmonic_head = nn.Linear(h, L * R * 2 * K) if K else None
        self.register_buffer("input_mean", torch.zeros(n_in))
        self.register_buffer("input_std", torch.ones(n_in))
        self.register_buffer("ring_logit_mask", torch.as_tensor(np.where(layout.ring_mask, 0.0, _MASKED_LOGIT),
                                                                dtype=torch.float32))
        self.register_buffer("sector_logit_mask", torch.as_tensor(
            np.where(layout.sector_mask, 0.0, _MASKED_LOGIT), dtype=torch.float32)[:, :, None])
        # Symmetric sectors: each gets 1 / n_alpha of its ring (log), padded ones nothing.
        uniform = np.where(layout.sector_mask, -np.log(layout.n_alpha)[:, None], _MASKED_LOGIT)
        self.register_buffer("sector_log_uniform", torch.as_tensor(uniform, dtype=torch.float32)[:, :, None])
        # cos(k alpha), sin(k alpha) of each sector: (K, L, A, 1).
        k = np.array(self.orders, dtype=np.float64)[:, None, None]
        k_alpha = k * layout.alpha[None]
        self.register_buffer("cos_alpha", torch.as_tensor(np.cos(k_alpha), dtype=torch.float32)[..., None])
        self.register_buffer("sin_alpha", torch.as_tensor(np.sin(k_alpha), dtype=torch.float32)[..., None])
        self.register_buffer("orders_t", torch.as_tensor(self.orders, dtype=torch.float32).view(1, -1))
        # The same as one (L, A, 2K) matrix [cos k alpha | sin k alpha], so the decoder's sum over k is a
        # MatMul (a broadcast multiply-and-sum cost 5x more on ONNX Runtime). Derived: not in checkpoints.
        basis = np.concatenate([np.cos(k_alpha), np.sin(k_alpha)]).transpose(1, 2, 0)
        self.register_buffer("harmonic_basis", torch.as_tensor(basis, dtype=torch.float32), persistent=False)

    @property
    def n_voxels(self) -> int:
        return self.layout.n_voxels

    @property
    def prior_mean_terms(self) -> int:
        return 4 + 3 * (self.conditioning.theta_max > 0) + 2 * len(self.conditioning.particles)

    def decoder_modules(self) -> list[nn.Module]:
        heads = [self.trunk, self.v_head, self.layer_head, self.ring_head]
        return heads + ([self.harmonic_head] if self.harmonic_head is not None else [])

    def prior_features(self, conditions: torch.Tensor) -> torch.Tensor:
        """The terms of the latent prior's mean: a cubic in c_E, plus c_th, c_th^2, c_E c_th with theta,
        plus p and c_E p for each particle's one-hot p."""
        f = self.conditioning.features(conditions)
        c = f[:, :1]
        terms = [torch.ones_like(c), c, c * c, c * c * c]
        if self.conditioning.theta_max > 0:
            t = f[:, 1:2]
            terms += [t, t * t, c * t]
        for k in range(len(self.conditioning.particles)):
            p = f[:, f.shape[1] - len(self.conditioning.particles) + k:][:, :1]
            terms += [p, c * p]
        return torch.cat(terms, dim=1)

    # -- encoder ---------------------------------------------------------------
    def _rotations(self, conditions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos k phi, sin k phi), each (N, K, 1, 1, 1)."""
        phi = self.conditioning.azimuth(conditions)
        kphi = (phi * self.orders_t)[:, :, None, None, None]
        return torch.cos(kphi), torch.sin(kphi)

    def encoder_features(self, conditions: torch.Tensor, v: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
        fractions = fractions.float()
        rings = fractions.sum(2)  # (N, L, R)
        layer_frac = rings.sum(2)
        depth = torch.arange(layer_frac.shape[1], dtype=fractions.dtype, device=fractions.device)
        centre = (layer_frac * depth).sum(1, keepdim=True)
        width = torch.sqrt(torch.clamp((layer_frac * depth * depth).sum(1, keepdim=True) - centre * centre, min=1e-6))
        ring_mask = self.ring_logit_mask == 0
        parts = [self.conditioning.features(conditions), v, centre, width, torch.log(layer_frac + 1e-6),
                 torch.sqrt(rings[:, ring_mask])]
        if self.orders:
            # Track-frame harmonic moments of each layer: cos/sin of k (alpha - phi), energy-weighted.
            cos_kphi, sin_kphi = self._rotations(conditions)
            cos_d = self.cos_alpha * cos_kphi + self.sin_alpha * sin_kphi  # (N, K, L, A, 1)
            sin_d = self.sin_alpha * cos_kphi - self.cos_alpha * sin_kphi
            f = fractions.unsqueeze(1)
            norm = layer_frac.unsqueeze(1) + 1e-6
            parts += [((f * cos_d).sum((3, 4)) / norm).flatten(1), ((f * sin_d).sum((3, 4)) / norm).flatten(1)]
        return torch.cat(parts, dim=1)

    def fit_input_scaling(self, conditions, v, fractions, n_max: int = 20000) -> None:
        with torch.no_grad():
            x = self.encoder_features(conditions[:n_max], v[:n_max], fractions[:n_max])
            self.input_mean.copy_(x.mean(0))
            self.input_std.copy_(x.std(0).clamp_min(0.05))

    def encode(self, conditions, v, fractions) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.encoder_features(conditions, v, fractions) - self.input_mean) / self.input_std
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 8.0)

    # -- decoder ---------------------------------------------------------------
    def decode(self, z: torch.Tensor, conditions: torch.Tensor):
        """(v_hat (N, 1), layer log-probs (N, L), ring log-probs within layer (N, L, R),
        sector logits within ring (N, L, A, R) or None for symmetric sectors)."""
        h = self.hidden(z, conditions)
        return (*self.ring_heads(h), self.sector_logits(h, conditions))

    def hidden(self, z: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """The trunk's output (N, hidden), input of every head."""
        return self.trunk(torch.cat([z, self.conditioning.features(conditions)], dim=1))

    def ring_heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(v_hat (N, 1), layer log-probs (N, L), ring log-probs within layer (N, L, R))."""
        L, R = self.layout.n_layers, self.layout.max_radial
        layer_logp = torch.log_softmax(self.layer_head(h), dim=1)
        ring_logp = torch.log_softmax(self.ring_head(h).view(-1, L, R) + self.ring_logit_mask, dim=2)
        return self.v_head(h), layer_logp, ring_logp

    def sector_logits(self, h: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor | None:
        """sum_k a_k cos(k (alpha - phi)) + b_k sin(k (alpha - phi)) per (layer, sector, ring), or None."""
        if self.harmonic_head is None:
            return None
        K, L, R = len(self.orders), self.layout.n_layers, self.layout.max_radial
        coeffs = self.harmonic_head(h).view(-1, 2, K, L, 1, R)
        a, b = coeffs[:, 0], coeffs[:, 1]
        cos_kphi, sin_kphi = self._rotations(conditions)
        # a cos(k(alpha - phi)) + b sin(k(alpha - phi)) = cos(k alpha) (a cos kphi - b sin kphi)
        #                                                + sin(k alpha) (a sin kphi + b cos kphi)
        along = a * cos_kphi - b * sin_kphi
        across = a * sin_kphi + b * cos_kphi
        rotated = torch.cat([along, across], dim=1).squeeze(3).transpose(1, 2)  # (N, L, 2K, R)
        return torch.matmul(self.harmonic_basis, rotated)  # (L, A, 2K) @ (N, L, 2K, R) -> (N, L, A, R)

    def sector_logp(self, sector_logits: torch.Tensor | None) -> torch.Tensor:
        """Log share of each sector in its ring: (N, L, A, R), or (L, A, 1) when symmetric."""
        if sector_logits is None:
            return self.sector_log_uniform
        return torch.log_softmax(sector_logits + self.sector_logit_mask, dim=2)

    def loss(self, conditions, v, fractions, *, beta: float, u_weight: float, shape_weight: float,
             sample: bool = True) -> dict[str, torch.Tensor]:
        """Per-batch mean loss terms: response MSE, voxel cross-entropy, KL to N(0, I)."""
        mean, log_var = self.encode(conditions, v, fractions)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var) if sample else mean
        v_hat, layer_logp, ring_logp, sector_logits = self.decode(z, conditions)
        t = fractions.float()
        rings = t.sum(2)
        shape = -(rings.sum(2) * layer_logp).sum(1) - (rings * ring_logp).sum((1, 2))
        if sector_logits is not None:
            shape = shape - (t * self.sector_logp(sector_logits)).sum((1, 2, 3))
        response = (v_hat - v).pow(2).sum(1)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(1)
        total = u_weight * response + shape_weight * shape + beta * kl
        return {"loss": total.mean(), "response": response.mean(), "shape": shape.mean(), "kl": kl.mean()}


class GeneralDecoder(nn.Module):
    """(z ~ N(0, I), conditions in physical units) -> showers (N, n_voxels) MeV, all processing included.

    As :class:`training.model.PhysicalDecoder`, for any layout: the folded
    latent prior, the response, the voxel means ``E_inc u p(layer) p(ring |
    layer) p(sector | ring)``, Gamma voxel noise with per-layer kappa and
    spot energies, the threshold and the renormalisation to ``u E_inc``.

    Speed: the graph is element-wise bound, so the noise is drawn in the
    smallest block that holds the voxels (its "cells"). For a uniform
    binning with alpha harmonics that is the (layer, alpha, radial) block,
    the CaloChallenge order itself; with symmetric sectors the Gamma law's
    parameters depend on the ring only, so they are computed once per ring
    and broadcast over its sectors, in (alpha, layer * radial) cells
    transposed to the CaloChallenge order once, at the end, as the ring
    model does. A ragged binning (dataset 1) would waste most of a padded block
    (950 slots for 368 photon voxels): its Gamma parameters are worked out
    per ring, taken to the voxels layer by layer (:meth:`to_cells`), and the
    noise is drawn per voxel. With alpha harmonics the sector softmax is one
    MatMul (a basis turned by phi, the bound and the padding as extra columns)
    and an Exp, normalised per ring (:meth:`sector_weights`): the
    LogSoftmax over the sector axis, its two broadcast adds and a Transpose
    were 17 % of ``calo-electron-inclined`` 0.3.0's time in ONNX Runtime's
    profile.
    """

    def __init__(self, vae: GeneralVAE, response: ResponseFit, *, threshold: float,
                 prior_mean: torch.Tensor | None = None, prior_chol: torch.Tensor | None = None,
                 max_response: float = 2.0, noise_kappa=None, spot_coeffs: torch.Tensor | None = None,
                 spot_spread: torch.Tensor | None = None):
        super().__init__()
        self.vae, self.response = vae, response
        layout = vae.layout
        self.threshold = float(threshold)
        self.threshold_alpha = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
        self.max_response = float(max_response)
        kappa = np.zeros(layout.n_layers) if noise_kappa is None else np.asarray(noise_kappa, np.float64)
        self.noise_kappa = kappa if vae.config.voxel_noise == "gamma" else np.zeros(layout.n_layers)
        self.noisy = bool((self.noise_kappa > 0).any())
        d = vae.config.latent_dim
        if prior_mean is None:
            prior_mean = torch.zeros(vae.prior_mean_terms, d)
        self.register_buffer("prior_mean", prior_mean.float().clone())
        self.register_buffer("prior_chol_t", torch.eye(d) if prior_chol is None else prior_chol.float().T.clone())
        self.register_buffer("slot_of_voxel", torch.as_tensor(layout.slot_of_voxel, dtype=torch.int64))
        # Broadcasts per-ring values over the sectors by multiplication (an expand would trace to shape ops).
        self.register_buffer("sector_ones", torch.ones(1, 1, layout.max_alpha, 1))
        # The cells the noise is drawn in: the voxels of a ragged binning; the (layer, alpha, radial) block
        # with alpha harmonics (per-voxel means); with symmetric sectors (alpha, layer * radial), so a ring's
        # parameters broadcast over its sectors along the leading axis (ONNX Runtime's broadcast runs in
        # spans of L * R floats rather than R), transposed to the CaloChallenge order at the end: a
        # decoder shaped like calo-egamma-d2 took 0.81 of the time (docs/models.md).
        self.alpha_major = not layout.padded and vae.harmonic_head is None
        if layout.padded:
            self.cell_shape = (layout.n_voxels,)
        elif self.alpha_major:
            self.cell_shape = (layout.max_alpha, layout.n_layers * layout.max_radial)
        else:
            self.cell_shape = (layout.n_layers, layout.max_alpha, layout.max_radial)
        self.register_buffer("kappa_layer", torch.as_tensor(self.noise_kappa, dtype=torch.float32).view(-1, 1, 1))
        if self.noisy:
            gen = torch.Generator().manual_seed(20221)
            n_cells = math.prod(self.cell_shape)
            n_cells += n_cells % 2  # an even number, for Box-Muller pairs
            self.register_buffer("hash_add", torch.randint(0, 2**31, (n_cells,), generator=gen, dtype=torch.int32))
            self.register_buffer("hash_mul", torch.randint(0, 2**30, (n_cells,), generator=gen,
                                                           dtype=torch.int32) * 2 + 1)
        self.register_buffer("spot_coeffs", None if spot_coeffs is None else spot_coeffs.float().clone())
        # sigma of each layer's log spot energy from shower to shower, (L, 1, 1); None: no spread.
        self.register_buffer("spot_spread", None if spot_spread is None else
                             torch.as_tensor(spot_spread, dtype=torch.float32).view(-1, 1, 1).clone())
        if vae.harmonic_head is not None:
            self._init_harmonic_decode(layout, len(vae.orders))
        if self.noisy:
            # The two hash words of each layer make its normal, from constants of their own: the cells'
            # words (and so the showers of a model without spread) do not move.
            gen = torch.Generator().manual_seed(20222)
            self.register_buffer("layer_hash_add", torch.randint(0, 2**31, (layout.n_layers,), generator=gen,
                                                                 dtype=torch.int32))
            self.register_buffer("layer_hash_mul", torch.randint(0, 2**30, (layout.n_layers,), generator=gen,
                                                                 dtype=torch.int32) * 2 + 1)

    def _init_harmonic_decode(self, layout: VoxelLayout, n_orders: int) -> None:
        """Buffers of :meth:`sector_weights`: the head's rows in (layer, coefficient, ring) order, k alpha of
        each sector, and the constant basis columns (-1 for the bound, the padding's logit)."""
        L, R, K = layout.n_layers, layout.max_radial, n_orders
        # New row (l, j, r) is the training head's row (j, l, r), j = (cos|sin, order): the decoder's
        # coefficients come out (N, L, 2K, R), ready for the MatMul (no Transpose). Folded at export.
        rows = torch.arange(2 * K * L * R).view(2 * K, L, R).permute(1, 0, 2).reshape(-1)
        self.register_buffer("harmonic_rows", rows, persistent=False)
        # One basis for all layers when they share their sector centres and none is padded (dataset 2, 3).
        self.sector_padding = not bool(layout.sector_mask.all())
        shared = not self.sector_padding and bool(np.allclose(layout.alpha, layout.alpha[:1]))
        alpha = layout.alpha[:1] if shared else layout.alpha  # (Lb, A)
        k_alpha = alpha[:, :, None] * np.asarray(self.vae.orders, dtype=np.float64)
        self.register_buffer("k_alpha", torch.as_tensor(k_alpha, dtype=torch.float32), persistent=False)
        columns = [-np.ones(alpha.shape)]
        if self.sector_padding:
            columns.append(np.where(layout.sector_mask, 0.0, _MASKED_LOGIT))
        self.register_buffer("basis_const", torch.as_tensor(np.stack(columns, axis=-1), dtype=torch.float32),
                             persistent=False)

    @property
    def latent_dim(self) -> int:
        return self.vae.config.latent_dim + (NOISE_SEED_DIMS if self.noisy else 0)

    @property
    def conditioning(self) -> Conditioning:
        return self.vae.conditioning

    def slot_means(self, z: torch.Tensor, conditions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected energy per voxel in MeV: (N, L, 1, R) per ring when the sectors are symmetric,
        else (N, L, A, R); total u E_inc (N, 1) MeV)."""
        vae = self.vae
        z = z @ self.prior_chol_t + vae.prior_features(conditions) @ self.prior_mean
        h = vae.hidden(z, conditions)
        v_hat, layer_logp, ring_logp = vae.ring_heads(h)
        c_e = vae.conditioning.features(conditions)[:, :1]
        log_u = self.response.mean(c_e) + self.response.sigma(c_e) * v_hat
        total = conditions[:, :1] * torch.clamp(torch.exp(log_u), 0.0, self.max_response)
        ring_logp = (layer_logp.unsqueeze(2) + ring_logp).unsqueeze(2)  # (N, L, 1, R)
        if vae.harmonic_head is None:
            # One voxel's share of its ring is 1 / n_alpha of the layer (a constant (L, 1, 1) offset).
            return torch.exp(ring_logp + vae.sector_log_uniform[:, :1]) * total.view(-1, 1, 1, 1), total
        # The sector softmax, normalised per ring after the exp (one MatMul, one Exp, one ReduceSum and
        # one Mul per voxel) rather than a LogSoftmax over the sector axis and broadcast adds.
        weights = self.sector_weights(h, conditions)
        ring_energy = torch.exp(ring_logp) * total.view(-1, 1, 1, 1)
        return weights * (ring_energy / torch.clamp(weights.sum(2, keepdim=True), min=1e-30)), total

    def sector_weights(self, h: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """exp(sector logit - B) per (layer, sector, ring): (N, L, A, R), padded sectors 0.

        The logits of :meth:`GeneralVAE.sector_logits`, with the basis turned
        by each shower's azimuth instead of the coefficients, and B = sum_k
        sqrt(a_k^2 + b_k^2) >= every logit of the ring subtracted inside the
        MatMul as one more basis column, as the padding's logit is: no exp()
        overflows, and the largest sector of a ring is at least exp(-2 B)
        (exp(-B) with all sectors real: their logits average 0), so a ring
        underflows only at an amplitude of 40 or more (a trained head's is a few
        units); it is then left empty, never NaN.
        """
        vae = self.vae
        K, L, R = len(vae.orders), vae.layout.n_layers, vae.layout.max_radial
        head = vae.harmonic_head
        coeffs = nn.functional.linear(h, head.weight[self.harmonic_rows], head.bias[self.harmonic_rows])
        coeffs = coeffs.view(-1, L, 2 * K, R)
        cos_part, sin_part = coeffs[:, :, :K], coeffs[:, :, K:]
        bound = torch.sqrt(cos_part * cos_part + sin_part * sin_part).sum(2, keepdim=True)  # (N, L, 1, R)
        rows = [coeffs, bound] + ([torch.ones_like(bound)] if self.sector_padding else [])
        k_phi = (vae.conditioning.azimuth(conditions) * vae.orders_t).view(-1, 1, 1, K)
        delta = self.k_alpha - k_phi  # k (alpha - phi): (N, Lb, A, K)
        constant = delta[..., :self.basis_const.shape[-1]] * 0.0 + self.basis_const
        basis = torch.cat([torch.cos(delta), torch.sin(delta), constant], dim=3)  # (N, Lb, A, 2K + 1 [+ 1])
        return torch.exp(torch.matmul(basis, torch.cat(rows, dim=2)))

    def voxel_means(self, z: torch.Tensor, conditions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected energy per voxel (N, n_voxels) MeV in CaloChallenge order, total (N, 1) MeV)."""
        means, total = self.slot_means(z, conditions)
        layout = self.vae.layout
        full = means.expand(-1, -1, layout.max_alpha, -1).reshape(means.shape[0], -1)
        return full[:, self.slot_of_voxel], total

    def spot_energy(self, c_e: torch.Tensor) -> torch.Tensor:
        """Spot energy (N, L, 1, 1) MeV: per layer, a quadratic in c_E for its log."""
        powers = torch.cat([torch.ones_like(c_e), c_e, c_e * c_e], dim=1)
        return torch.exp(powers @ self.spot_coeffs).unsqueeze(2).unsqueeze(3)

    def to_cells(self, block: torch.Tensor) -> torch.Tensor:
        """A (..., L, 1 or A, R) block as the cells the noise is drawn in: for a uniform binning itself, or
        per ring (..., 1, L * R) with symmetric sectors (broadcast over them later); its voxels
        (..., n_voxels) for a ragged one.

        Layer by layer (slice, broadcast over the sectors, concatenate): ONNX Runtime's Gather along
        the voxels cost 6 ns a voxel, more than the rest of the noise together.
        """
        layout = self.vae.layout
        if self.alpha_major:
            return block.reshape(*block.shape[:-3], 1, layout.n_layers * layout.max_radial)
        if not layout.padded:
            return block
        parts = []
        for i, (n_alpha, n_radial) in enumerate(zip(layout.n_alpha.tolist(), layout.n_radial.tolist(), strict=True)):
            rings = block[..., i, :, :n_radial] if block.shape[-2] == 1 else block[..., i, :n_alpha, :n_radial]
            if rings.shape[-2] != n_alpha:
                rings = rings * self.sector_ones[0, 0, :n_alpha]
            parts.append(rings.flatten(-2))
        return torch.cat(parts, dim=-1)

    def uniforms(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(radius (N, P), angle (N, P), hit (N, *cell_shape)) from the seed latents, P = n_cells / 2."""
        hit_word, pair_word = _NoiseWords.apply(seeds, self.hash_add, self.hash_mul)
        n_cells = math.prod(self.cell_shape)
        if hit_word.shape[1] != n_cells:
            hit_word = hit_word[:, :n_cells]
        radius, angle = pair_word.split(pair_word.shape[1] // 2, dim=1)
        radius = radius * 2.0**-32 + 2.0**-33  # never 0: it goes into a log
        hit = hit_word * ((1.0 - 2.0**-24) * 2.0**-32)
        return radius, angle * 2.0**-32, hit.view(-1, *self.cell_shape)

    def layer_normals(self, seeds: torch.Tensor) -> torch.Tensor:
        """One standard normal per shower and layer (N, L, 1, 1) from the seed latents (Box-Muller)."""
        radius_word, angle_word = _NoiseWords.apply(seeds, self.layer_hash_add, self.layer_hash_mul)
        radius = torch.sqrt(torch.log(radius_word * 2.0**-32 + 2.0**-33) * -2.0)
        return (radius * torch.cos(angle_word * (2.0**-32 * 2.0 * math.pi))).unsqueeze(2).unsqueeze(3)

    def sample_cells(self, means: torch.Tensor, total: torch.Tensor, conditions: torch.Tensor,
                     uniforms, layer_normals: torch.Tensor | None = None) -> torch.Tensor:
        """Cell energies (N, *cell_shape) around ``means`` (N, L, 1 or A, R) (variance kappa * mean per layer),
        scaled to ``total``.

        The law of :meth:`training.model.PhysicalDecoder.sample_voxels`
        (:func:`training.model.gamma_parameters`, :func:`training.model.gamma_draw`).
        """
        spot = self.spot_energy(self.vae.conditioning.features(conditions)[:, :1]) \
            if self.spot_coeffs is not None else None
        if spot is not None and self.spot_spread is not None and layer_normals is not None:
            # Log-normal with mean 1 around the fitted spot energy, one draw per shower and layer.
            spread = self.spot_spread
            spot = spot * torch.exp(spread * layer_normals - 0.5 * spread * spread)
        params = gamma_parameters(means, self.kappa_layer, spot)  # per ring (or slot)
        if self.vae.layout.padded:  # taken to the voxels together
            params = self.to_cells(torch.stack(params, dim=1)).unbind(1)
        elif self.alpha_major:
            params = [self.to_cells(p) for p in params]
        voxels = gamma_draw(*params, uniforms)
        sums = voxels.sum(tuple(range(1, voxels.dim()))).unsqueeze(1)
        return voxels * (total / torch.clamp(sums, min=1e-30)).view(-1, *([1] * len(self.cell_shape)))

    def cells_to_showers(self, cells: torch.Tensor) -> torch.Tensor:
        """Cells (N, *cell_shape) as showers (N, n_voxels) in CaloChallenge order."""
        if not self.alpha_major:
            return cells.flatten(1)
        layout = self.vae.layout
        blocks = cells.reshape(-1, layout.max_alpha, layout.n_layers, layout.max_radial)
        return blocks.transpose(1, 2).reshape(-1, layout.n_voxels)

    def forward(self, z: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        d = self.vae.config.latent_dim
        means, total = self.slot_means(z[:, :d], conditions)
        if not self.noisy:
            voxels = self.to_cells(means) if self.vae.layout.padded else means * self.sector_ones
            kept = _Threshold.apply(voxels.flatten(1), self.threshold_alpha)
            return kept * (total / torch.clamp(kept.sum(1, keepdim=True), min=1e-30))
        seeds = z[:, d:d + NOISE_SEED_DIMS]
        normals = self.layer_normals(seeds) if self.spot_spread is not None else None
        cells = self.sample_cells(means, total, conditions, self.uniforms(seeds), normals).flatten(1)
        # The threshold, then the lost energy handed back to the surviving voxels (total exactly u E_inc),
        # both in cell order; then the one Transpose to CaloChallenge order, if the cells are alpha-major.
        kept = _Threshold.apply(cells, self.threshold_alpha)
        return self.cells_to_showers(kept * (total / torch.clamp(kept.sum(1, keepdim=True), min=1e-30)))


def _energy_bins(energy: np.ndarray, n_bins: int, per_bin: int) -> list[np.ndarray]:
    """The rows of each log-energy bin (at most ``per_bin``), bins with fewer than 20 left out."""
    edges = np.geomspace(energy.min(), energy.max() * (1 + 1e-9), n_bins + 1)
    which = np.clip(np.searchsorted(edges, energy, side="right") - 1, 0, n_bins - 1)
    bins = [np.flatnonzero(which == k)[:per_bin] for k in range(n_bins)]
    return [rows for rows in bins if len(rows) >= 20]


def _fixed_draws(decoder: GeneralDecoder, cond: torch.Tensor, gen: torch.Generator):
    """(slot means, totals, uniforms, layer normals) for ``cond``, drawn once: a fit's bisection then
    sees only the parameter it moves."""
    n = len(cond)
    means, total = decoder.slot_means(torch.randn((n, decoder.vae.config.latent_dim), generator=gen), cond)
    pairs = (n, (math.prod(decoder.cell_shape) + 1) // 2)
    uniforms = (1.0 - torch.rand(pairs, generator=gen), torch.rand(pairs, generator=gen),
                torch.rand((n, *decoder.cell_shape), generator=gen))
    normals = torch.randn((n, decoder.vae.layout.n_layers, 1, 1), generator=gen)
    return means, total, uniforms, normals


def _layer_occupancy(showers: torch.Tensor, layout: VoxelLayout, threshold: float, *,
                     mean: bool = False) -> torch.Tensor:
    """Fraction of each layer's voxels at or above ``threshold``: per shower (N, L), or over all of
    them (L,) with ``mean`` (integer counts summed first, so exact)."""
    layer_of_voxel = torch.as_tensor(layout.layer_of_voxel)
    counts = torch.zeros(showers.shape[0], layout.n_layers, dtype=torch.float64)
    counts.index_add_(1, layer_of_voxel, (showers >= threshold).double())
    voxels = torch.bincount(layer_of_voxel, minlength=layout.n_layers).double()
    return counts.sum(0) / (voxels * showers.shape[0]) if mean else counts / voxels


@torch.no_grad()
def fit_general_spot_energy(decoder: GeneralDecoder, conditions: np.ndarray, reference: np.ndarray, *,
                            threshold: float, seed: int = 0, n_bins: int = 6, per_bin: int = 800) -> torch.Tensor:
    """Per-layer spot energies fitted to the reference's sparsity (as :func:`training.train.fit_spot_energy`).

    In each log-energy bin a bisection finds, for all layers at once, the
    spot energy at which generated showers have the reference's fraction of
    voxels above threshold in that layer; a quadratic in c_E through each
    layer's log e_s gives the (SPOT_DEGREE + 1, n_layers) coefficients.
    """
    layout = decoder.vae.layout
    n_layers = layout.n_layers
    gen = torch.Generator().manual_seed(seed)
    saved = decoder.spot_coeffs
    centres, log_spots = [], []
    try:
        for rows in _energy_bins(conditions[:, 0], n_bins, per_bin):
            target = _layer_occupancy(torch.as_tensor(reference[rows]), layout, threshold, mean=True)
            cond = torch.as_tensor(conditions[rows], dtype=torch.float32)
            means, total, uniforms, normals = _fixed_draws(decoder, cond, gen)
            low = torch.full((n_layers,), math.log(0.05))
            high = torch.full((n_layers,), math.log(2000.0))
            for _ in range(16):
                mid = 0.5 * (low + high)
                decoder.spot_coeffs = torch.cat([mid[None], torch.zeros(SPOT_DEGREE, n_layers)])
                sample = decoder.cells_to_showers(decoder.sample_cells(means, total, cond, uniforms, normals))
                occupancy = _layer_occupancy(sample, layout, threshold, mean=True)
                too_full = occupancy > target
                low, high = torch.where(too_full, mid, low), torch.where(too_full, high, mid)
            centres.append(float(decoder.vae.conditioning.features(cond)[:, 0].mean()))
            log_spots.append((0.5 * (low + high)).numpy())
    finally:
        decoder.spot_coeffs = saved
    coeffs = np.polynomial.polynomial.polyfit(np.array(centres), np.stack(log_spots), SPOT_DEGREE)
    return torch.as_tensor(coeffs, dtype=torch.float32)


@torch.no_grad()
def fit_general_spot_spread(decoder: GeneralDecoder, conditions: np.ndarray, reference: np.ndarray, *,
                            threshold: float, seed: int = 0, n_bins: int = 6, per_bin: int = 800,
                            rounds: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma per layer (L,), spot coefficients) so that each layer's sparsity has the reference's
    mean and its shower-to-shower spread.

    The spread is the standard deviation of a layer's fraction of voxels above
    threshold among the showers of one log-energy bin, averaged over the bins.
    Independent voxel noise gives too little of it (neighbouring voxels are
    empty or full together in real showers); a log-normal spot energy per
    shower and layer adds it. A bisection per layer on sigma in [0, 1], alternating
    with :func:`fit_general_spot_energy` (a spread moves the mean occupancy too).
    """
    layout = decoder.vae.layout
    n_layers = layout.n_layers
    bins = _energy_bins(conditions[:, 0], n_bins, per_bin)

    def spread_of(occupancy: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        parts = occupancy.split(sizes)
        return torch.stack([part.std(0) for part in parts]).mean(0)

    rows = np.concatenate(bins)
    sizes = [len(b) for b in bins]
    target = spread_of(_layer_occupancy(torch.as_tensor(reference[rows]), layout, threshold), sizes)
    cond = torch.as_tensor(conditions[rows], dtype=torch.float32)
    means, total, uniforms, normals = _fixed_draws(decoder, cond, torch.Generator().manual_seed(seed + 1))
    sigma = torch.zeros(n_layers)
    for _ in range(rounds):
        decoder.spot_spread = sigma.view(-1, 1, 1)
        decoder.spot_coeffs = fit_general_spot_energy(decoder, conditions, reference, threshold=threshold,
                                                      seed=seed, n_bins=n_bins, per_bin=per_bin)
        low, high = torch.zeros(n_layers), torch.full((n_layers,), 1.0)
        for _ in range(12):
            mid = 0.5 * (low + high)
            decoder.spot_spread = mid.view(-1, 1, 1)
            sample = decoder.cells_to_showers(decoder.sample_cells(means, total, cond, uniforms, normals))
            too_little = spread_of(_layer_occupancy(sample, layout, threshold), sizes) < target
            low, high = torch.where(too_little, mid, low), torch.where(too_little, high, mid)
        sigma = 0.5 * (low + high)
    decoder.spot_spread = sigma.view(-1, 1, 1)
    coeffs = fit_general_spot_energy(decoder, conditions, reference, threshold=threshold, seed=seed,
                                     n_bins=n_bins, per_bin=per_bin)
    return sigma, coeffs
