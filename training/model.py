"""The conditional VAE for showers and its physical-units decoder.

Decoder p(x | z, c) is an MLP trunk with three heads, factorised so that the
shower's energy is structural rather than learned voxel by voxel:

* ``v``: the standardised log response (see :mod:`training.data`), giving
  ``u = E_tot / E_inc = exp(mu(c) + sigma(c) v)``;
* ``n_layers`` logits -> softmax = fraction of E_tot in each layer;
* ``n_voxels`` logits -> softmax within each layer = where in the layer.

Encoder q(z | x, c) sees the same factorised targets (``v``, log layer
fractions, square-root voxel fractions) and the condition, and returns a mean
and log-variance.

:class:`PhysicalDecoder` wraps the trained decoder with everything between
physical inputs and physical outputs -- the latent prior folded in as
``z' = m + L z`` (callers still feed N(0, I)), condition normalisation, the
response polynomials, ``showers = E_inc * u * layer_frac * voxel_frac``, the
voxel threshold and a renormalisation that puts the energy of sub-threshold
voxels back into the surviving ones so ``sum(showers) = u E_inc`` exactly. It
is what :mod:`training.export` traces to ONNX and what training uses to draw
showers for its validation figure of merit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from training.data import ResponseFit

__all__ = ["ModelConfig", "PhysicalDecoder", "ShowerVAE", "count_parameters", "decoder_flops"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (the ``[model]`` table of a training config)."""

    latent_dim: int = 16
    hidden: int = 128
    n_hidden: int = 2
    encoder_hidden: int = 256

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"[model] config: unknown key(s) {unknown}; expected some of {sorted(known)}")
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
    """Conditional VAE over factorised showers on a uniform cylindrical geometry."""

    def __init__(self, config: ModelConfig, n_layers: int, voxels_per_layer: int):
        super().__init__()
        self.config = config
        self.n_layers = n_layers
        self.voxels_per_layer = voxels_per_layer
        n_voxels = n_layers * voxels_per_layer
        n_in = 1 + 1 + n_layers + n_voxels
        h, d = config.hidden, config.latent_dim
        self.encoder = _mlp([n_in, config.encoder_hidden, config.encoder_hidden // 2, 2 * d])
        self.trunk = nn.Sequential(_mlp([d + 1] + [h] * config.n_hidden), nn.SiLU())
        self.v_head = nn.Linear(h, 1)
        self.layer_head = nn.Linear(h, n_layers)
        self.voxel_head = nn.Linear(h, n_voxels)
        # Encoder input scaling, fitted on the training sample (saved in the state dict).
        self.register_buffer("input_mean", torch.zeros(n_in))
        self.register_buffer("input_std", torch.ones(n_in))

    # -- encoder -------------------------------------------------------------
    def encoder_features(self, condition: torch.Tensor, v: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
        fractions = fractions.float()
        layer_frac = fractions.view(-1, self.n_layers, self.voxels_per_layer).sum(-1)
        return torch.cat([condition, v, torch.log(layer_frac + 1e-6), torch.sqrt(fractions)], dim=1)

    def fit_input_scaling(self, condition, v, fractions, n_max: int = 20000) -> None:
        with torch.no_grad():
            x = self.encoder_features(condition[:n_max], v[:n_max], fractions[:n_max])
            std = x.std(0)
            # One scale for the whole voxel block: a voxel that happens to be
            # empty in every training shower must not become a huge input
            # when a validation shower lights it up.
            n_head = 2 + self.n_layers
            std[n_head:] = std[n_head:].pow(2).mean().sqrt()
            self.input_mean.copy_(x.mean(0))
            self.input_std.copy_(std.clamp_min(0.05))

    def encode(self, condition, v, fractions) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.encoder_features(condition, v, fractions) - self.input_mean) / self.input_std
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 8.0)

    # -- decoder -------------------------------------------------------------
    def decode(self, z: torch.Tensor, condition: torch.Tensor):
        """(v_hat (N, 1), layer log-probs (N, L), within-layer voxel log-probs (N, L, V))."""
        h = self.trunk(torch.cat([z, condition], dim=1))
        v_hat = self.v_head(h)
        layer_logp = torch.log_softmax(self.layer_head(h), dim=1)
        voxel_logits = self.voxel_head(h).view(-1, self.n_layers, self.voxels_per_layer)
        return v_hat, layer_logp, torch.log_softmax(voxel_logits, dim=2)

    def loss(self, condition, v, fractions, *, beta: float, u_weight: float, shape_weight: float,
             sample: bool = True) -> dict[str, torch.Tensor]:
        """Per-batch mean loss terms: response MSE, shape cross-entropy, KL to N(0, I)."""
        mean, log_var = self.encode(condition, v, fractions)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var) if sample else mean
        v_hat, layer_logp, voxel_logp = self.decode(z, condition)
        t = fractions.float().view(-1, self.n_layers, self.voxels_per_layer)
        t_layer = t.sum(-1)
        # Cross-entropy of the joint (layer, voxel) distribution = layer CE +
        # within-layer CE weighted by each layer's share.
        shape = -(t_layer * layer_logp).sum(1) - (t * voxel_logp).sum((1, 2))
        response = (v_hat - v).pow(2).sum(1)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(1)
        total = u_weight * response + shape_weight * shape + beta * kl
        return {"loss": total.mean(), "response": response.mean(), "shape": shape.mean(), "kl": kl.mean()}


class PhysicalDecoder(nn.Module):
    """(z ~ N(0, I), incident energy in MeV) -> showers in MeV, all processing included."""

    def __init__(self, vae: ShowerVAE, response: ResponseFit, *, e_min: float, e_max: float,
                 threshold: float, prior_mean: torch.Tensor | None = None,
                 prior_chol: torch.Tensor | None = None, max_response: float = 2.0):
        super().__init__()
        self.vae = vae
        self.response = response
        self.log_e_min = math.log(e_min)
        self.c_scale = 2.0 / (math.log(e_max) - math.log(e_min))
        self.threshold = float(threshold)
        self.max_response = float(max_response)
        d = vae.config.latent_dim
        self.register_buffer("prior_mean", torch.zeros(d) if prior_mean is None else prior_mean.float().clone())
        self.register_buffer("prior_chol_t", torch.eye(d) if prior_chol is None else prior_chol.float().T.clone())

    def forward(self, z: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        energy = conditions[:, :1]
        c = (torch.log(energy) - self.log_e_min) * self.c_scale - 1.0
        z = z @ self.prior_chol_t + self.prior_mean
        v_hat, layer_logp, voxel_logp = self.vae.decode(z, c)
        log_u = self.response.mean(c) + self.response.sigma(c) * v_hat
        total = energy * torch.clamp(torch.exp(log_u), 0.0, self.max_response)
        log_frac = layer_logp.unsqueeze(2) + voxel_logp
        showers = total * torch.exp(log_frac.flatten(1))
        # The voxel threshold of the data, then the lost energy handed back to
        # the surviving voxels so the shower total is exactly u * E_inc.
        showers = torch.where(showers >= self.threshold, showers, torch.zeros_like(showers))
        kept = showers.sum(1, keepdim=True)
        return showers * (total / torch.clamp(kept, min=1e-30))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decoder_flops(vae: ShowerVAE) -> int:
    """Multiply-adds x 2 of the exported decoder per shower (Linear layers and prior transform)."""
    d = vae.config.latent_dim
    flops = 2 * d * d
    for module in [vae.trunk, vae.v_head, vae.layer_head, vae.voxel_head]:
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                flops += 2 * layer.in_features * layer.out_features
    return flops
