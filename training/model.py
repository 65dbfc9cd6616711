"""The conditional VAE for showers and its physical-units decoder.

Decoder p(x | z, c) is an MLP trunk with three heads, factorised so that the
shower's energy is structural rather than learned voxel by voxel:

* ``v``: the standardised log response (see :mod:`training.data`), giving
  ``u = E_tot / E_inc = exp(mu(c) + sigma(c) v)``;
* ``n_layers`` logits -> softmax = fraction of E_tot in each layer;
* ``n_layers x n_radial`` logits -> softmax within each layer = fraction of
  the layer in each radial ring, shared equally by the ring's alpha sectors.

The decoded mean is alpha-symmetric on purpose: the particle enters along the
cylinder axis, so every alpha sector of a ring has the same expectation, and
the sector-to-sector differences are voxel noise that a latent code of a few
dims cannot carry anyway. Modelling rings (405 numbers) instead of voxels
(6480) makes the model ~10x smaller and faster for the same mean shower; the
noise is put back by the Gamma sampling of :class:`PhysicalDecoder`.

Encoder q(z | x, c) sees the same factorised targets (``v``, log layer
fractions, square-root ring fractions) and the condition, and returns a mean
and log-variance.

:class:`PhysicalDecoder` wraps the trained decoder with everything between
physical inputs and physical outputs -- the latent prior folded in as
``z' = m(c) + L z`` (callers still feed N(0, I)), condition normalisation,
the response polynomials, ``mean = E_inc * u * layer_frac * ring_frac /
n_alpha``, the voxel noise, the voxel threshold and a renormalisation that
puts the energy of sub-threshold voxels back into the surviving ones so
``sum(showers) = u E_inc`` exactly. It is what :mod:`training.export` traces
to ONNX and what training uses to draw showers for its validation figure of
merit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from training.data import ResponseFit

__all__ = [
    "NOISE_SEED_DIMS",
    "PRIOR_DEGREE",
    "SPOT_DEGREE",
    "VOXEL_NOISE",
    "ModelConfig",
    "PhysicalDecoder",
    "ShowerVAE",
    "count_parameters",
    "decoder_flops",
]

VOXEL_NOISE = ("gamma", "none")
#: Degree of the polynomial in the condition that gives the latent prior's mean.
PRIOR_DEGREE = 3
#: Degree of the polynomial in the condition that gives each layer's log spot energy.
SPOT_DEGREE = 2
#: Latent inputs that seed the voxel noise (appended after the VAE's latent dims).
NOISE_SEED_DIMS = 2


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (the ``[model]`` table of a training config)."""

    latent_dim: int = 16
    hidden: int = 128
    n_hidden: int = 2
    encoder_hidden: int = 256
    # "gamma": the exported decoder samples each voxel from a Gamma law around
    # the decoded mean (see PhysicalDecoder); "none": it returns the mean.
    voxel_noise: str = "gamma"

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"[model] config: unknown key(s) {unknown}; expected some of {sorted(known)}")
        if data.get("voxel_noise", "gamma") not in VOXEL_NOISE:
            raise ValueError(f"[model] voxel_noise: expected one of {list(VOXEL_NOISE)}, got {data['voxel_noise']!r}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class ShowerVAE(nn.Module):
    """Conditional VAE over factorised, ring-level showers on a uniform cylindrical geometry."""

    def __init__(self, config: ModelConfig, n_layers: int, n_alpha: int, n_radial: int):
        super().__init__()
        self.config = config
        self.n_layers, self.n_alpha, self.n_radial = n_layers, n_alpha, n_radial
        n_rings = n_layers * n_radial
        n_in = 4 + n_layers + n_rings
        h, d = config.hidden, config.latent_dim
        self.encoder = _mlp([n_in, config.encoder_hidden, config.encoder_hidden // 2, 2 * d])
        self.trunk = nn.Sequential(_mlp([d + 1] + [h] * config.n_hidden), nn.SiLU())
        self.v_head = nn.Linear(h, 1)
        self.layer_head = nn.Linear(h, n_layers)
        self.ring_head = nn.Linear(h, n_rings)
        # Encoder input scaling, fitted on the training sample (saved in the state dict).
        self.register_buffer("input_mean", torch.zeros(n_in))
        self.register_buffer("input_std", torch.ones(n_in))

    @property
    def n_voxels(self) -> int:
        return self.n_layers * self.n_alpha * self.n_radial

    def decoder_modules(self) -> list[nn.Module]:
        return [self.trunk, self.v_head, self.layer_head, self.ring_head]

    # -- encoder -------------------------------------------------------------
    def encoder_features(self, condition: torch.Tensor, v: torch.Tensor, rings: torch.Tensor) -> torch.Tensor:
        rings = rings.float()
        layer_frac = rings.view(-1, self.n_layers, self.n_radial).sum(-1)
        # The longitudinal centre and width, spelled out: a shower's depth and
        # length are what its code must carry, and they are awkward to read
        # off log fractions.
        depth = torch.arange(self.n_layers, dtype=rings.dtype, device=rings.device)
        centre = (layer_frac * depth).sum(1, keepdim=True)
        width = torch.sqrt(torch.clamp((layer_frac * depth * depth).sum(1, keepdim=True) - centre * centre, min=1e-6))
        return torch.cat([condition, v, centre, width, torch.log(layer_frac + 1e-6), torch.sqrt(rings)], dim=1)

    def fit_input_scaling(self, condition, v, rings, n_max: int = 20000) -> None:
        with torch.no_grad():
            x = self.encoder_features(condition[:n_max], v[:n_max], rings[:n_max])
            self.input_mean.copy_(x.mean(0))
            # A ring that is empty in every training shower must not become a
            # huge input when a validation shower lights it up.
            self.input_std.copy_(x.std(0).clamp_min(0.05))

    def encode(self, condition, v, rings) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.encoder_features(condition, v, rings) - self.input_mean) / self.input_std
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 8.0)

    # -- decoder -------------------------------------------------------------
    def decode(self, z: torch.Tensor, condition: torch.Tensor):
        """(v_hat (N, 1), layer log-probs (N, L), within-layer ring log-probs (N, L, R))."""
        h = self.trunk(torch.cat([z, condition], dim=1))
        v_hat = self.v_head(h)
        layer_logp = torch.log_softmax(self.layer_head(h), dim=1)
        ring_logits = self.ring_head(h).view(-1, self.n_layers, self.n_radial)
        return v_hat, layer_logp, torch.log_softmax(ring_logits, dim=2)

    def loss(self, condition, v, rings, *, beta: float, u_weight: float, shape_weight: float,
             sample: bool = True) -> dict[str, torch.Tensor]:
        """Per-batch mean loss terms: response MSE, shape cross-entropy, KL to N(0, I)."""
        mean, log_var = self.encode(condition, v, rings)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var) if sample else mean
        v_hat, layer_logp, ring_logp = self.decode(z, condition)
        t = rings.float().view(-1, self.n_layers, self.n_radial)
        t_layer = t.sum(-1)
        # Cross-entropy of the joint (layer, ring) distribution = layer CE +
        # within-layer CE weighted by each layer's share.
        shape = -(t_layer * layer_logp).sum(1) - (t * ring_logp).sum((1, 2))
        response = (v_hat - v).pow(2).sum(1)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(1)
        total = u_weight * response + shape_weight * shape + beta * kl
        return {"loss": total.mean(), "response": response.mean(), "shape": shape.mean(), "kl": kl.mean()}


# Voxel-noise hash: exact int64 arithmetic modulo the Mersenne prime 2^31 - 1,
# so torch, ONNX Runtime on any device and any host give the same bits.
_PRIME = 2**31 - 1
_SEED_SCALE = 2.0**16  # resolution of a seed latent
_SEED_OFFSET = 2**24  # makes floor(z * scale) positive for |z| < 256


class PhysicalDecoder(nn.Module):
    """(z ~ N(0, I), incident energy in MeV) -> showers in MeV, all processing included.

    ``z`` holds the VAE's latent dims followed, with voxel noise, by
    ``NOISE_SEED_DIMS`` seed dims. The decoded mean shower is
    ``E_inc * u * layer_frac * ring_frac / n_alpha``. With
    ``voxel_noise="gamma"`` each voxel is then sampled around that mean with
    the variance ``kappa * mean`` of a sampling calorimeter (kappa measured on
    the training data from the spread over the alpha sectors of a ring, which
    share one expectation by symmetry); with per-layer spot energies ``e_s``
    (fitted to the data's sparsity) the voxel is first left empty with probability ``exp(-mean / e_s)`` -- no energy
    spot landed in it -- which sets the sparsity (see :meth:`sample_voxels`).
    This is what gives generated showers the voxel-level fluctuations --
    sparsity, centre-of-energy jitter, voxel spectrum -- that no latent code
    of a few dims can carry. The noise is a pure function of the seed latents:
    a hash in exact integer arithmetic makes four uniforms per voxel, so
    torch, ONNX Runtime and any host draw the same noise. Then the threshold,
    and the energy of sub-threshold voxels handed back to the surviving ones
    so the total is exactly ``u * E_inc`` (the response and resolution are the
    response head's alone).
    """

    def __init__(self, vae: ShowerVAE, response: ResponseFit, *, e_min: float, e_max: float,
                 threshold: float, prior_mean: torch.Tensor | None = None,
                 prior_chol: torch.Tensor | None = None, max_response: float = 2.0,
                 noise_kappa: float = 0.0, spot_coeffs: torch.Tensor | None = None):
        super().__init__()
        self.vae = vae
        self.response = response
        self.log_e_min = math.log(e_min)
        self.c_scale = 2.0 / (math.log(e_max) - math.log(e_min))
        self.threshold = float(threshold)
        self.max_response = float(max_response)
        self.noise_kappa = float(noise_kappa) if vae.config.voxel_noise == "gamma" else 0.0
        d = vae.config.latent_dim
        # prior_mean: (PRIOR_DEGREE + 1, d) polynomial coefficients in c of the
        # latent mean (a 1-D tensor is a constant mean).
        if prior_mean is None:
            prior_mean = torch.zeros(d)
        if prior_mean.dim() == 1:
            prior_mean = torch.cat([prior_mean[None], torch.zeros(PRIOR_DEGREE, d)])
        self.register_buffer("prior_mean", prior_mean.float().clone())
        self.register_buffer("prior_chol_t", torch.eye(d) if prior_chol is None else prior_chol.float().T.clone())
        n_voxels = vae.n_voxels
        # Spreads a ring's energy equally over its alpha sectors (broadcast multiply).
        self.register_buffer("alpha_share", torch.full((1, 1, vae.n_alpha, 1), 1.0 / vae.n_alpha))
        if self.noise_kappa > 0:
            # Per-voxel hash constants, fixed by a seed so every export is identical.
            # Stored as int32 (all below 2^31) to keep the file small, widened in the graph.
            gen = torch.Generator().manual_seed(20221)
            self.register_buffer("hash_mul", torch.randint(1, _PRIME, (n_voxels,), generator=gen, dtype=torch.int32))
            self.register_buffer("hash_add", torch.randint(0, _PRIME, (n_voxels,), generator=gen, dtype=torch.int32))
            self.hash_rounds = [int(x) for x in torch.randint(1, _PRIME, (4,), generator=gen)]
        # Spot energy per layer, log e_s = sum_k coeffs[k, layer] c^k (MeV); None: no empty-voxel law.
        self.register_buffer("spot_coeffs", None if spot_coeffs is None else spot_coeffs.float().clone())
        self.register_buffer("layer_spread", torch.ones(1, 1, vae.n_alpha * vae.n_radial))

    @property
    def latent_dim(self) -> int:
        return self.vae.config.latent_dim + (NOISE_SEED_DIMS if self.noise_kappa > 0 else 0)

    def mean_showers(self, z: torch.Tensor, energy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected voxel energies (N, n_voxels) MeV, total u * E_inc (N, 1) MeV)."""
        c = (torch.log(energy) - self.log_e_min) * self.c_scale - 1.0
        powers = torch.cat([torch.ones_like(c), c, c * c, c * c * c], dim=1)  # (N, PRIOR_DEGREE + 1)
        z = z @ self.prior_chol_t + powers @ self.prior_mean
        v_hat, layer_logp, ring_logp = self.vae.decode(z, c)
        log_u = self.response.mean(c) + self.response.sigma(c) * v_hat
        total = energy * torch.clamp(torch.exp(log_u), 0.0, self.max_response)
        ring_frac = torch.exp(layer_logp.unsqueeze(2) + ring_logp)  # (N, L, R)
        voxel_frac = (ring_frac.unsqueeze(2) * self.alpha_share).flatten(1)  # (N, L * A * R)
        return total * voxel_frac, total

    def uniforms(self, seeds: torch.Tensor) -> list[torch.Tensor]:
        """Four (N, n_voxels) uniforms in (0, 1) from the seed latents, in exact int64 arithmetic."""
        ints = torch.floor(seeds * _SEED_SCALE).to(torch.int64) + _SEED_OFFSET
        state = torch.remainder(ints[:, :1] * 2**25 + ints[:, 1:2], _PRIME)
        h = torch.remainder(state * self.hash_mul.to(torch.int64) + self.hash_add.to(torch.int64), _PRIME)
        out = []
        for constant in self.hash_rounds:
            # x -> x^2 + c (mod p): the squaring breaks the linearity in the seed.
            h = torch.remainder(h * h + constant, _PRIME)
            out.append((h.to(torch.float32) + 0.5) * (1.0 / _PRIME))
        return out

    def spot_energy(self, c: torch.Tensor) -> torch.Tensor:
        """Spot energy e_s (N, n_voxels) in MeV: per layer, a quadratic in c for its log."""
        powers = torch.cat([torch.ones_like(c), c, c * c], dim=1)  # (N, SPOT_DEGREE + 1)
        per_layer = torch.exp(powers @ self.spot_coeffs)  # (N, n_layers)
        return (per_layer.unsqueeze(2) * self.layer_spread).flatten(1)

    def sample_voxels(self, mean: torch.Tensor, total: torch.Tensor, c: torch.Tensor,
                      uniforms: list[torch.Tensor]) -> torch.Tensor:
        """Voxel energies around ``mean`` (variance kappa * mean), rescaled to ``total``.

        With spot energies e_s, a voxel is empty with probability
        exp(-mean / e_s) (no energy spot landed in it, as in the data) and
        otherwise Gamma with the conditional mean and variance that keep the
        totals mean and kappa * mean; without, it is Gamma(mean / kappa, kappa).
        """
        u1, u2, u3, u4 = uniforms
        kappa = self.noise_kappa
        if self.spot_coeffs is not None:
            occupied = torch.clamp(1.0 - torch.exp(-mean / self.spot_energy(c)), min=1e-12)
            mean_hit = mean / occupied
            var_hit = torch.clamp((kappa * mean - (1.0 - occupied) * mean * mean_hit) / occupied,
                                  min=1e-6 * mean_hit * mean_hit + 1e-30)
            shape, scale = mean_hit * mean_hit / var_hit, var_hit / mean_hit
        else:
            occupied = torch.ones_like(mean)
            shape, scale = mean * (1.0 / kappa), torch.full_like(mean, kappa)
        shape = torch.clamp(shape, min=1e-12)
        # Gamma(k) = Gamma(k + 1) * U^(1/k); Gamma(k + 1) by Wilson-Hilferty from a Box-Muller normal.
        gauss = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
        a = shape + 1.0
        cube = torch.clamp(1.0 - 1.0 / (9.0 * a) + gauss / (3.0 * torch.sqrt(a)), min=0.0)
        draws = scale * (a * cube * cube * cube) * torch.exp(torch.log(u3) / shape)
        showers = torch.where(u4 < occupied, draws, torch.zeros_like(draws))
        return showers * (total / torch.clamp(showers.sum(1, keepdim=True), min=1e-30))

    def condition(self, energy: torch.Tensor) -> torch.Tensor:
        return (torch.log(energy) - self.log_e_min) * self.c_scale - 1.0

    def forward(self, z: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        energy = conditions[:, :1]
        d = self.vae.config.latent_dim
        showers, total = self.mean_showers(z[:, :d], energy)
        if self.noise_kappa > 0:
            showers = self.sample_voxels(showers, total, self.condition(energy),
                                         self.uniforms(z[:, d:d + NOISE_SEED_DIMS]))
        # The voxel threshold of the data, then the lost energy handed back to
        # the surviving voxels so the shower total is exactly u * E_inc. That
        # factor is >= 1, so no surviving voxel drops below the threshold.
        showers = torch.where(showers >= self.threshold, showers, torch.zeros_like(showers))
        kept = showers.sum(1, keepdim=True)
        return showers * (total / torch.clamp(kept, min=1e-30))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decoder_flops(vae: ShowerVAE) -> int:
    """Multiply-adds x 2 of the exported decoder per shower (Linear layers and prior transform)."""
    d = vae.config.latent_dim
    flops = 2 * d * d + 2 * (PRIOR_DEGREE + 1) * d  # the folded prior; the voxel noise adds ~30 elementwise ops per voxel
    for module in vae.decoder_modules():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                flops += 2 * layer.in_features * layer.out_features
    return flops
