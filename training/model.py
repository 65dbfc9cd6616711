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

import numpy as np
import torch
from torch import nn

from training.data import ResponseFit

__all__ = [
    "ARCHITECTURES",
    "NOISE_SEED_DIMS",
    "NOISE_WORDS_OP",
    "PRIOR_DEGREE",
    "SPOT_DEGREE",
    "VOXEL_NOISE",
    "ModelConfig",
    "PhysicalDecoder",
    "ShowerVAE",
    "count_parameters",
    "decoder_flops",
    "gamma_draw",
    "gamma_parameters",
    "noise_words",
]

VOXEL_NOISE = ("gamma", "none")
ARCHITECTURES = ("rings", "voxels")
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
    # "rings": the ring model of this module (uniform binning, energy only);
    # "voxels": training.general (any binning, several conditions, alpha harmonics).
    architecture: str = "rings"
    # Harmonic orders k of the alpha structure (architecture "voxels"): a list of
    # orders, or an int K for 1..K; empty: the sectors of a ring share one mean.
    alpha_harmonics: tuple[int, ...] | int = ()
    # Architecture "voxels" with gamma noise: each shower's spot energy of a layer is drawn
    # log-normal around the fitted one (sigma per layer, fitted to the shower-to-shower spread of
    # the layer's sparsity), so the voxels of a layer are empty or full together.
    sparsity_spread: bool = False

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"[model] architecture: expected one of {list(ARCHITECTURES)}, "
                             f"got {self.architecture!r}")
        orders = self.harmonic_orders
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in orders) or \
                len(set(orders)) != len(orders):
            raise ValueError(f"[model] alpha_harmonics: expected distinct orders >= 1 (or a count K), "
                             f"got {self.alpha_harmonics!r}")
        if orders and self.architecture != "voxels":
            raise ValueError('[model] alpha_harmonics: needs architecture = "voxels" (the ring model is '
                             "alpha-symmetric by construction)")
        if self.sparsity_spread and (self.architecture != "voxels" or self.voxel_noise != "gamma"):
            raise ValueError('[model] sparsity_spread: needs architecture = "voxels" and voxel_noise = "gamma"')
        if isinstance(self.alpha_harmonics, list):
            object.__setattr__(self, "alpha_harmonics", tuple(self.alpha_harmonics))

    @property
    def harmonic_orders(self) -> tuple[int, ...]:
        k = self.alpha_harmonics
        if isinstance(k, int) and not isinstance(k, bool):
            return tuple(range(1, k + 1))
        return tuple(k)

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

    def prior_features(self, condition: torch.Tensor) -> torch.Tensor:
        """The terms of the latent prior's mean: powers 0..PRIOR_DEGREE of the normalised condition."""
        return torch.cat([condition ** k for k in range(PRIOR_DEGREE + 1)], dim=1)

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


# Voxel-noise hash: exact uint32 arithmetic -- wrapping multiplies and adds,
# and right shifts done as exact division by 2^k (ONNX Runtime's CUDA provider
# has no BitShift kernel) -- so torch, ONNX Runtime on any device and any host
# draw the same bits. Every step after the seeds is a bijection of uint32, so
# distinct shower states never merge (a squaring would: h and h + 2^31 square
# alike): the nonlinear step is RC6's x -> x (2x + 1) + c, and ONNX (opset 17)
# has no xor, so the per-shower rounds bring the high half down with a
# 16-bit rotation. Per voxel, h = (state + A_v) * M_v spreads the mixed shower
# state over the voxels, and each word is the nonlinear step of the last: its
# top bits -- all that a float32 of a word keeps -- depend on every bit of h.
_U32 = 0xFFFFFFFF
_SEED_SCALE = 2.0**16  # resolution of a seed latent
_SEED_OFFSET = 2**24  # makes floor(z * scale) positive for |z| < 256
_SEED_MIX = 0x2545F491
_SHOWER_ROUNDS = (0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F, 0x165667B1)
_VOXEL_ROUNDS = (0x85EBCA6B, 0xC2B2AE35)  # one per word
#: Placeholder node for the hash in a freshly traced graph (expanded by training.export).
NOISE_WORDS_OP = "fastsim::NoiseWords"


def _scramble(ops, x, constant):
    """x (2x + 1) + c mod 2^32: a permutation of uint32 (RC6), nonlinear, mixing upwards."""
    return ops.add(ops.mul(x, ops.add(ops.add(x, x), 1)), constant)


def _rotate16(ops, x):
    """x rotated by 16 bits (a permutation): brings the high half down for the next scramble."""
    return ops.add(ops.mul(x, 1 << 16), ops.shr(x, 16))


def noise_words(ops, a, b, voxel_add, voxel_mul) -> list:
    """Two uint32 words per voxel slot from the two seed integers; ``ops`` is the arithmetic backend."""
    state = ops.add(ops.mul(a, _SEED_MIX), b)
    for constant in _SHOWER_ROUNDS:
        state = _scramble(ops, _rotate16(ops, state), constant)
    h = ops.mul(ops.add(state, voxel_add), voxel_mul)
    words = []
    for constant in _VOXEL_ROUNDS:
        h = _scramble(ops, h, constant)
        words.append(h)
    return words


class _TorchU32:
    """uint32 arithmetic on int64 tensors holding values in [0, 2^32) (torch has no uint32 kernels)."""

    @staticmethod
    def mul(x, y):
        if isinstance(y, int) and y < 2**31:  # the product stays below 2^63
            return (x * y) & _U32
        # Split y so no product passes 2^63: the low 32 bits come out exact.
        y_lo, y_hi = y & 0xFFFF, (y >> 16) & 0xFFFF
        return (x * y_lo + (((x * y_hi) & 0xFFFF) << 16)) & _U32

    @staticmethod
    def add(x, y):
        return (x + y) & _U32

    @staticmethod
    def shr(x, k):
        return x >> k


class _NoiseWords(torch.autograd.Function):
    """(N, 2) seed latents -> two (N, n_slots) float32 tensors holding uint32 hash words.

    The seeds become integers ``floor(z * 2^16) + 2^24`` (exact in float32 and
    int64); :func:`noise_words` does the rest.
    """

    @staticmethod
    def forward(ctx, seeds, voxel_add, voxel_mul):
        ints = (torch.floor(seeds * _SEED_SCALE).to(torch.int64) + _SEED_OFFSET) & _U32
        words = noise_words(_TorchU32, ints[:, :1], ints[:, 1:2], voxel_add.to(torch.int64),
                             voxel_mul.to(torch.int64))
        return tuple(w.to(torch.float32) for w in words)

    @staticmethod
    def symbolic(g, seeds, voxel_add, voxel_mul):
        # The TorchScript exporter has no uint32 type: it records one placeholder
        # node, and training.export expands it into plain ONNX uint32 nodes.
        words = g.op(NOISE_WORDS_OP, seeds, voxel_add, voxel_mul, outputs=len(_VOXEL_ROUNDS))
        for word in words:  # float32 (N, n_slots), for the exporter's shape inference downstream
            word.setType(seeds.type().with_sizes([None, voxel_add.type().sizes()[0]]))
        return words


class _Threshold(torch.autograd.Function):
    """x where x > alpha, else 0, as ONNX ThresholdedRelu: one cheap pass.

    A Where over the voxels cost ~10 float Muls on ONNX Runtime's CPU provider (1.0.0's profile).
    """

    @staticmethod
    def forward(ctx, x, alpha: float):
        return torch.where(x > alpha, x, torch.zeros_like(x))

    @staticmethod
    def symbolic(g, x, alpha: float):
        return g.op("ThresholdedRelu", x, alpha_f=alpha)


def gamma_parameters(mean: torch.Tensor, kappa, spot: torch.Tensor | None):
    """The voxel-noise law's parameters per cell: (offset, slope, 1 / shape, 1 / occupancy).

    A voxel of expected energy ``mean`` is empty with probability
    exp(-mean / spot) (no energy spot landed in it, as in the data), and
    otherwise Gamma with the conditional mean and variance that keep the
    totals mean and kappa * mean; without ``spot``, Gamma(mean / kappa, kappa).
    ``offset + slope * g`` for a standard normal g is the cube root of a
    Gamma(shape + 1) draw (Wilson-Hilferty), ``(a * scale)^(1/3)`` folded in.
    Shared by both decoders, op for op, so their graphs compute the same law.
    """
    if spot is not None:
        # 1 - exp(-x) = 2 t / (1 + t), t = tanh(x / 2): no cancellation for sparse rings (x << 1).
        t = torch.tanh(mean / spot * 0.5)
        occupied = torch.clamp(t * 2.0 / (1.0 + t), min=1e-12)
        # With the hit's mean m / occupied and variance (kappa m - (1 - occupied) m m_hit) / occupied,
        # shape = m / d and scale = d / occupied for d = kappa occupied - (1 - occupied) m: every
        # parameter from d, in 30 graph ops per cell rather than 43 (the law's cost with
        # per-voxel means). d >= 1e-6 m keeps the shape below 1e6, as var_hit >= 1e-6 m_hit^2 did.
        d = torch.maximum(kappa * occupied - (1.0 - occupied) * mean, mean * 1e-6 + 1e-30)
    else:
        occupied, d = None, torch.clamp(torch.ones_like(mean) * kappa, min=1e-30)
    inv_shape = d / torch.clamp(mean, min=1e-30)
    # Gamma(k) = Gamma(k + 1) * U^(1/k); Gamma(k + 1) by Wilson-Hilferty from a Box-Muller normal.
    # Gamma(a) = a * scale * cube^3, cube = 1 - 1/(9a) + g / (3 sqrt(a)); (a * scale)^(1/3) folded in,
    # a = shape + 1 = (m + d) / d and a * scale = (m + d) / occupied.
    mean_d = mean + d
    inv_a = d / mean_d
    a_scale = mean_d if occupied is None else mean_d / occupied
    size = torch.exp(torch.log(a_scale) * (1.0 / 3.0))
    offset, slope = size * (1.0 - inv_a * (1.0 / 9.0)), size * torch.sqrt(inv_a) * (1.0 / 3.0)
    return offset, slope, inv_shape, (torch.ones_like(mean) if occupied is None else 1.0 / occupied)


def gamma_draw(offset: torch.Tensor, slope: torch.Tensor, inv_shape: torch.Tensor, inv_occupied: torch.Tensor,
               uniforms: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Cell energies (shaped as the hit uniforms) from :func:`gamma_parameters` (broadcast to them).

    ``uniforms`` = (radius (N, P), angle (N, P), hit (N, ...)): each Box-Muller
    (radius, angle) pair makes the normals of two cells, the first half of
    the cells taking the cosines, the second the sines.
    """
    u_radius, u_angle, u_hit = uniforms
    radius, angle = torch.sqrt(torch.log(u_radius) * -2.0), u_angle * (2.0 * math.pi)
    gauss = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    n_cells = math.prod(u_hit.shape[1:])
    if gauss.shape[1] != n_cells:
        gauss = gauss[:, :n_cells]
    cube = torch.relu(offset + slope * gauss.view(u_hit.shape))
    # One uniform decides "occupied" (u < occupied) and, rescaled, is the U of the boost:
    # log(u / occupied) <= 0 when occupied; when empty it is > 0, and the Min turns it
    # into a huge negative number, so exp() empties the voxel without a Where.
    log_hit = torch.log(u_hit * inv_occupied)
    log_hit = torch.minimum(log_hit, log_hit * -1e30)
    return (cube * cube * cube) * torch.exp(log_hit * inv_shape)


def _scaled_to(voxels: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """(N, a, b) voxels times the per-shower factor that makes them sum to ``total`` (N, 1)."""
    return voxels * (total / torch.clamp(voxels.sum((1, 2)), min=1e-30).unsqueeze(1)).unsqueeze(2)


class PhysicalDecoder(nn.Module):
    """(z ~ N(0, I), incident energy in MeV) -> showers in MeV, all processing included.

    ``z`` holds the VAE's latent dims followed, with voxel noise, by
    ``NOISE_SEED_DIMS`` seed dims. The decoded mean shower is
    ``E_inc * u * layer_frac * ring_frac / n_alpha``. With
    ``voxel_noise="gamma"`` each voxel is then sampled around that mean with
    the variance ``kappa * mean`` of a sampling calorimeter (kappa measured on
    the training data from the spread over the alpha sectors of a ring, which
    share one expectation by symmetry); with per-layer spot energies ``e_s``
    (fitted to the data's sparsity) the voxel is first left empty with
    probability ``exp(-mean / e_s)`` -- no energy spot landed in it -- which
    sets the sparsity (see :meth:`sample_voxels`). This is what gives
    generated showers the voxel-level fluctuations -- sparsity,
    centre-of-energy jitter, voxel spectrum -- that no latent code of a few
    dims can carry. The noise is a pure function of the seed latents: a hash
    in exact uint32 arithmetic makes the uniforms (two words per voxel), so torch, ONNX
    Runtime and any host draw the same noise. Then the threshold, and the
    energy of sub-threshold voxels handed back to the surviving ones so the
    total is exactly ``u * E_inc`` (the response and resolution are the
    response head's alone).

    Speed (the graph is element-wise bound, not matmul bound): everything
    that depends only on a ring -- spot energy, occupancy, Gamma shape and
    scale -- is computed once per ring (405 values) and broadcast over its
    alpha sectors. To make that broadcast cheap the voxels are worked on in
    ``(N, alpha, layer * radial)`` order and transposed to the CaloChallenge
    ``(layer, alpha, radial)`` order once, at the end.
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
        # ThresholdedRelu keeps x > alpha; the float32 just below the threshold makes that x >= threshold.
        self.threshold_alpha = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
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
        if self.noise_kappa > 0:
            # Per-slot hash constants (odd multipliers), fixed by a seed so every export is
            # identical; int32 (all below 2^31) keeps the file small, the graph casts them to uint32.
            gen = torch.Generator().manual_seed(20221)
            n_voxels = vae.n_voxels + vae.n_voxels % 2  # an even number of slots, for Box-Muller pairs
            self.register_buffer("hash_add", torch.randint(0, 2**31, (n_voxels,), generator=gen, dtype=torch.int32))
            self.register_buffer("hash_mul", torch.randint(0, 2**30, (n_voxels,), generator=gen,
                                                           dtype=torch.int32) * 2 + 1)
        # Spot energy per layer, log e_s = sum_k coeffs[k, layer] c^k (MeV); None: no empty-voxel law.
        self.register_buffer("spot_coeffs", None if spot_coeffs is None else spot_coeffs.float().clone())
        # Broadcasts by multiplication: an expand(-1, ...) would trace to shape arithmetic.
        self.register_buffer("radial_ones", torch.ones(1, 1, vae.n_radial))
        self.register_buffer("alpha_ones", torch.ones(1, vae.n_alpha, 1))

    @property
    def latent_dim(self) -> int:
        return self.vae.config.latent_dim + (NOISE_SEED_DIMS if self.noise_kappa > 0 else 0)

    def condition(self, energy: torch.Tensor) -> torch.Tensor:
        return (torch.log(energy) - self.log_e_min) * self.c_scale - 1.0

    def ring_means(self, z: torch.Tensor, energy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected energy of each voxel of a ring (N, n_layers * n_radial) MeV, total u * E_inc (N, 1) MeV)."""
        c = self.condition(energy)
        powers = torch.cat([torch.ones_like(c), c, c * c, c * c * c], dim=1)  # (N, PRIOR_DEGREE + 1)
        z = z @ self.prior_chol_t + powers @ self.prior_mean
        v_hat, layer_logp, ring_logp = self.vae.decode(z, c)
        log_u = self.response.mean(c) + self.response.sigma(c) * v_hat
        total = energy * torch.clamp(torch.exp(log_u), 0.0, self.max_response)
        ring_frac = torch.exp(layer_logp.unsqueeze(2) + ring_logp).flatten(1)  # (N, L * R)
        return ring_frac * (total * (1.0 / self.vae.n_alpha)), total

    def mean_showers(self, z: torch.Tensor, energy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected voxel energies (N, n_voxels) MeV in CaloChallenge order, total (N, 1) MeV)."""
        ring_mean, total = self.ring_means(z, energy)
        vae = self.vae
        mean = ring_mean.view(-1, vae.n_layers, 1, vae.n_radial).expand(-1, -1, vae.n_alpha, -1)
        return mean.reshape(-1, vae.n_voxels), total

    def uniforms(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Uniforms from the seed latents: (radius (N, P) in (0, 1], angle (N, P) in [0, 1),
        hit (N, n_alpha, n_layers * n_radial) in [0, 1)), P = ceil(n_voxels / 2).

        One hash word per voxel for ``hit``; the other word of the first half
        of the slots is the Box-Muller radius, of the second half the angle,
        so one log, cos and sin make two normals.
        """
        hit_word, pair_word = _NoiseWords.apply(seeds, self.hash_add, self.hash_mul)
        n_voxels = self.vae.n_voxels
        if hit_word.shape[1] != n_voxels:
            hit_word = hit_word[:, :n_voxels]
        radius, angle = pair_word.split(pair_word.shape[1] // 2, dim=1)
        radius = radius * 2.0**-32 + 2.0**-33  # never 0: it goes into a log
        # float32(1 - 2^-24) * 2^-32 maps the largest word 2^32 to the largest float32 below 1.
        hit = hit_word * ((1.0 - 2.0**-24) * 2.0**-32)
        return radius, angle * 2.0**-32, hit.view(-1, self.vae.n_alpha, self.vae.n_layers * self.vae.n_radial)

    def spot_energy(self, c: torch.Tensor) -> torch.Tensor:
        """Spot energy e_s (N, n_layers * n_radial) in MeV: per layer, a quadratic in c for its log."""
        powers = torch.cat([torch.ones_like(c), c, c * c], dim=1)  # (N, SPOT_DEGREE + 1)
        per_layer = torch.exp(powers @ self.spot_coeffs)  # (N, n_layers)
        return (per_layer.unsqueeze(2) * self.radial_ones).flatten(1)

    def sample_voxels(self, ring_mean: torch.Tensor, total: torch.Tensor, c: torch.Tensor,
                      uniforms: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Voxel energies (N, n_alpha, n_layers * n_radial) around ``ring_mean`` (variance kappa * mean),
        scaled to sum to ``total`` (N, 1): :func:`gamma_parameters` per ring, :func:`gamma_draw` per voxel.

        ``uniforms`` as :meth:`uniforms` returns them.
        """
        spot = self.spot_energy(c) if self.spot_coeffs is not None else None
        params = gamma_parameters(ring_mean, self.noise_kappa, spot)  # per ring
        return _scaled_to(gamma_draw(*(t.unsqueeze(1) for t in params), uniforms), total)

    def forward(self, z: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        energy = conditions[:, :1]
        d, vae = self.vae.config.latent_dim, self.vae
        ring_mean, total = self.ring_means(z[:, :d], energy)
        if self.noise_kappa > 0:
            voxels = self.sample_voxels(ring_mean, total, self.condition(energy),
                                        self.uniforms(z[:, d:d + NOISE_SEED_DIMS]))
        else:
            voxels = ring_mean.unsqueeze(1) * self.alpha_ones
        # Scaled to the shower's total, the voxel threshold of the data, then the
        # lost energy handed back to the surviving voxels so the total is exactly
        # u * E_inc. That last factor is >= 1, so no voxel drops below the threshold.
        kept = _Threshold.apply(voxels, self.threshold_alpha)
        showers = _scaled_to(kept, total)
        showers = showers.view(-1, vae.n_alpha, vae.n_layers, vae.n_radial).transpose(1, 2)
        return showers.reshape(-1, vae.n_voxels)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decoder_flops(vae: ShowerVAE) -> int:
    """Multiply-adds x 2 of the exported decoder per shower (Linear layers and prior transform)."""
    d = vae.config.latent_dim
    n_terms = getattr(vae, "prior_mean_terms", PRIOR_DEGREE + 1)
    flops = 2 * d * d + 2 * n_terms * d  # the folded prior; the voxel noise adds ~40 element-wise ops per voxel, not counted
    for module in vae.decoder_modules():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                flops += 2 * layer.in_features * layer.out_features
    return flops
