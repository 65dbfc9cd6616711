"""The training loop: config, epochs, checkpoints, loss curves, early stopping.

``train(config, data, out)`` trains a :class:`~training.model.ShowerVAE` on a
CaloChallenge file and writes a run folder::

    runs/NAME/config.json     the resolved config (+ data description)
    runs/NAME/last.pt         checkpoint after the latest epoch (for --resume)
    runs/NAME/best.pt         checkpoint with the best validation figure of merit
    runs/NAME/history.csv     per-epoch losses and validation figures (+ .json, + .png)

Checkpoints are plain dicts of tensors and numbers, loadable with
``torch.load(path, weights_only=True)``.

Early stopping watches a figure of merit on generated showers, not the loss:
after every epoch the aggregate posterior of the training sample is fitted
with a Gaussian whose mean is a cubic in the condition (+ a Cholesky factor:
the prior the export folds into the graph), the physical decoder draws one shower per validation energy, and
:func:`fastsim.validation.quick_figure_of_merit` compares them with the
validation showers (lower is better). After the last epoch, the voxel-noise
spot energies of the best checkpoint are fitted to the validation showers'
per-layer sparsity (:func:`fit_spot_energy`) and stored in ``best.pt``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import tomllib
import torch

from fastsim._util import atomic_path, atomic_write_text
from fastsim.geometry import CylindricalGeometry, default_geometry
from training.data import ResponseFit, ShowerTensors, load_showers, read_raw
from training.model import (
    PRIOR_DEGREE,
    SPOT_DEGREE,
    ModelConfig,
    PhysicalDecoder,
    ShowerVAE,
    count_parameters,
    decoder_flops,
)

__all__ = [
    "DataConfig",
    "TrainConfig",
    "fit_latent_prior",
    "fit_spot_energy",
    "generate_showers",
    "load_checkpoint",
    "load_config",
    "physical_decoder_from_checkpoint",
    "refit_voxel_noise",
    "response_table",
    "train",
]


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` table: condition range, threshold, validation split."""

    e_min: float = 1000.0
    e_max: float = 1_000_000.0
    threshold: float = 0.01515
    max_showers: int = 0  # 0 = all
    val_fraction: float = 0.1  # used only when no separate validation file is given
    max_val_showers: int = 0
    # Conditions beyond energy (architecture "voxels"): incident_theta over [0, theta_max_deg]
    # degrees when > 0; incident_phi (periodic, [0, 2 pi)) when phi is true.
    theta_max_deg: float = 0.0
    phi: bool = False
    # Two or more particle types (names or PDG ids, e.g. ["electron", "photon"]) make the particle a
    # condition; the data's `particle` dataset (or the file's particle_pdg attribute) gives each shower's.
    particles: tuple[str | int, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    """The ``[train]`` table: optimisation, loss weights, stopping."""

    epochs: int = 30
    batch_size: int = 512
    lr: float = 2e-3
    lr_final_fraction: float = 0.05
    weight_decay: float = 0.0
    beta: float = 0.05
    kl_warmup_epochs: float = 2.0
    u_weight: float = 50.0
    shape_weight: float = 1.0
    seed: int = 1
    patience: int = 8
    prior: str = "aggregate"  # or "standard"
    fom_showers: int = 10000
    prior_fit_showers: int = 20000
    threads: int = 0  # 0 = torch default
    max_minutes: float = 0.0  # 0 = no wall-time cap


def _table(cls, data: dict, name: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"[{name}] config: unknown key(s) {unknown}; expected some of {sorted(known)}")
    return cls(**data)


def load_config(path: str | os.PathLike | None, overrides: dict | None = None) -> dict:
    """Read a TOML config into {"name", "data", "model", "train"} dataclasses.

    ``overrides`` maps "table.key" to a value (command-line options).
    """
    raw: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ValueError(f"--config: file {os.fspath(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--config: {os.fspath(path)!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"name", "description", "data", "model", "train"})
    if unknown:
        raise ValueError(f"config: unknown table(s) {unknown}; expected name, description, data, model, train")
    tables = {k: dict(raw.get(k, {})) for k in ("data", "model", "train")}
    for dotted, value in (overrides or {}).items():
        table, key = dotted.split(".")
        tables[table][key] = value
    return {
        "name": raw.get("name", "calo-electron"),
        "description": raw.get("description", ""),
        "data": _table(DataConfig, tables["data"], "data"),
        "model": ModelConfig.from_dict(tables["model"]),
        "train": _table(TrainConfig, tables["train"], "train"),
    }


def _config_to_dict(config: dict) -> dict:
    return {
        "name": config["name"],
        "description": config["description"],
        "data": asdict(config["data"]),
        "model": config["model"].to_dict(),
        "train": asdict(config["train"]),
    }


def _config_from_dict(data: dict) -> dict:
    return {
        "name": data["name"],
        "description": data.get("description", ""),
        "data": DataConfig(**data["data"]),
        "model": ModelConfig(**data["model"]),
        "train": TrainConfig(**data["train"]),
    }


# -- latent prior and generation ------------------------------------------------


@torch.no_grad()
def fit_latent_prior(vae: ShowerVAE, tensors: ShowerTensors, n_max: int, seed: int,
                     batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional Gaussian fit of the aggregate posterior q(z | c) = E_{x | c} q(z | x, c).

    Returns (mean coefficients (n_terms, d) of the prior's mean in ``vae.prior_features(c)``,
    Cholesky factor (d, d) of the residual covariance). The encoder's codes
    drift with energy (a deeper shower is a different code), so a prior with
    an energy-independent mean would give a 1 GeV shower the depth of a
    100 GeV one; the polynomial mean removes that, the covariance the rest.
    """
    vae.eval()
    n = min(tensors.n, n_max) if n_max > 0 else tensors.n
    gen = torch.Generator().manual_seed(seed)
    device = next(vae.parameters()).device
    samples = []
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        mean, log_var = vae.encode(tensors.condition[sl].to(device), tensors.v[sl].to(device),
                                   tensors.rings[sl].to(device))
        eps = torch.randn(mean.shape, generator=gen).to(device)
        samples.append((mean + eps * torch.exp(0.5 * log_var)).double().cpu())
    z = torch.cat(samples)
    powers = vae.prior_features(tensors.condition[:n].double())
    coeffs = torch.linalg.lstsq(powers, z).solution
    residual = z - powers @ coeffs
    cov = residual.T @ residual / max(1, n - powers.shape[1]) + 1e-6 * torch.eye(z.shape[1], dtype=z.dtype)
    return coeffs.float(), torch.linalg.cholesky(cov).float()


@torch.no_grad()
def generate_showers(decoder, conditions: np.ndarray, seed: int, batch_size: int = 2048) -> np.ndarray:
    """Showers (N, n_voxels) float32 MeV, z ~ N(0, I), for incident energies (N,) MeV or conditions (N, c)."""
    decoder.eval()
    device = decoder.prior_mean.device
    gen = torch.Generator().manual_seed(seed)
    d = decoder.latent_dim
    conditions = np.asarray(conditions, np.float32)
    if conditions.ndim == 1:
        conditions = conditions[:, None]
    out = []
    for start in range(0, len(conditions), batch_size):
        e = torch.as_tensor(conditions[start:start + batch_size])
        z = torch.randn((e.shape[0], d), generator=gen)
        out.append(decoder(z.to(device), e.to(device)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, decoder.vae.n_voxels), np.float32)


def response_table(energy: np.ndarray, gen_total: np.ndarray, ref_total: np.ndarray, n_bins: int = 10,
                   e_min: float | None = None, e_max: float | None = None) -> list[dict]:
    """Per log-energy bin: mean response and relative resolution of generated / reference."""
    e_min = float(energy.min()) if e_min is None else e_min
    e_max = float(energy.max()) if e_max is None else e_max
    edges = np.geomspace(e_min, e_max, n_bins + 1)
    which = np.clip(np.searchsorted(edges, energy, side="right") - 1, 0, n_bins - 1)
    rows = []
    for k in range(n_bins):
        sel = which == k
        if sel.sum() < 2:
            continue
        g = gen_total[sel] / energy[sel]
        r = ref_total[sel] / energy[sel]
        rows.append({
            "e_low": float(edges[k]), "e_high": float(edges[k + 1]), "n": int(sel.sum()),
            "response_ratio": float(g.mean() / r.mean()),
            "resolution_ratio": float((g.std() / g.mean()) / (r.std() / r.mean())),
        })
    return rows


@torch.no_grad()
def fit_spot_energy(decoder: PhysicalDecoder, energy: np.ndarray, reference: np.ndarray, *, threshold: float,
                    seed: int = 0, n_bins: int = 6, per_bin: int = 800) -> torch.Tensor:
    """Fit each layer's spot energy e_s (MeV) of the voxel noise to the data's sparsity.

    In each log-energy bin a bisection (all layers at once) finds the e_s at
    which generated showers have the reference's fraction of voxels above
    threshold in that layer -- a larger e_s leaves more voxels empty; spots
    carry more energy deep in a shower than early, so one value cannot serve
    every layer. A quadratic in c through each layer's log e_s gives the
    (SPOT_DEGREE + 1, n_layers) coefficients. Only the noise is fitted, the
    decoder's weights are untouched.
    """
    d, n_layers, n_radial = decoder.vae.config.latent_dim, decoder.vae.n_layers, decoder.vae.n_radial
    edges = np.geomspace(energy.min(), energy.max() * (1 + 1e-9), n_bins + 1)
    which = np.clip(np.searchsorted(edges, energy, side="right") - 1, 0, n_bins - 1)
    gen = torch.Generator().manual_seed(seed)
    saved = decoder.spot_coeffs
    centres, log_spots = [], []
    try:
        for k in range(n_bins):
            rows = np.flatnonzero(which == k)[:per_bin]
            if len(rows) < 20:
                continue
            target = torch.as_tensor((reference[rows] >= threshold).reshape(len(rows), n_layers, -1).mean((0, 2)))
            e = torch.as_tensor(energy[rows], dtype=torch.float32)[:, None]
            c = decoder.condition(e)
            ring_mean, total = decoder.ring_means(torch.randn((len(rows), d), generator=gen), e)
            pairs = (len(rows), (decoder.vae.n_voxels + 1) // 2)
            uniforms = (1.0 - torch.rand(pairs, generator=gen), torch.rand(pairs, generator=gen),
                        torch.rand((len(rows), decoder.vae.n_alpha, ring_mean.shape[1]), generator=gen))
            low = torch.full((n_layers,), math.log(0.05))
            high = torch.full((n_layers,), math.log(2000.0))
            for _ in range(16):
                mid = 0.5 * (low + high)
                decoder.spot_coeffs = torch.cat([mid[None], torch.zeros(SPOT_DEGREE, n_layers)])
                sample = decoder.sample_voxels(ring_mean, total, c, uniforms)  # (N, alpha, layer * radial)
                occupancy = (sample >= threshold).float().view(len(rows), -1, n_layers, n_radial).mean((0, 1, 3))
                too_full = occupancy > target
                low, high = torch.where(too_full, mid, low), torch.where(too_full, high, mid)
            centres.append(float(c.mean()))
            log_spots.append((0.5 * (low + high)).numpy())
    finally:
        decoder.spot_coeffs = saved
    coeffs = np.polynomial.polynomial.polyfit(np.array(centres), np.stack(log_spots), SPOT_DEGREE)
    return torch.as_tensor(coeffs, dtype=torch.float32)  # (SPOT_DEGREE + 1, n_layers)


def refit_voxel_noise(run: str | os.PathLike, validation: str | os.PathLike, *, checkpoint: str = "best.pt",
                      n_showers: int | None = None, seed: int | None = None, log=print) -> torch.Tensor:
    """Refit the spot energies of ``run``'s voxel noise to ``validation``'s sparsity, in place.

    What :func:`train` does after its last epoch, as a step of its own: after a
    change to the noise sampler, a trained run gets spot energies that match its
    new sampler without retraining (the decoder's weights are untouched). Uses
    the run's own ``fom_showers`` first showers of ``validation`` and its seed
    unless told otherwise; ``checkpoint`` is rewritten atomically.
    """
    path = Path(run) / checkpoint
    if not path.is_file():
        raise ValueError(f"RUN: no checkpoint {path} (expected a run folder holding {checkpoint})")
    ckpt = load_checkpoint(path)
    config = _config_from_dict(json.loads(ckpt["config_json"]))
    if config["model"].voxel_noise != "gamma":
        raise ValueError(f"RUN: {path} has voxel_noise={config['model'].voxel_noise!r}; "
                         "only 'gamma' noise has spot energies")
    geometry = CylindricalGeometry.from_dict(json.loads(ckpt["geometry_json"]))
    tcfg, dcfg = config["train"], config["data"]
    n_showers = tcfg.fom_showers if n_showers is None else n_showers
    conditions, reference = _read_sample(validation, config, geometry, 0, n_showers)
    fitted = _fit_spot(physical_decoder_from_checkpoint(ckpt, geometry), conditions, reference,
                       threshold=dcfg.threshold, seed=tcfg.seed if seed is None else seed,
                       spread=config["model"].sparsity_spread)
    _atomic_save({**ckpt, **fitted}, path)
    spot = fitted["spot_coeffs"]
    log(f"voxel noise: spot energies of {path} refitted to the sparsity of {len(reference)} showers of {validation}")
    return spot


def _reference_features(energy: np.ndarray, reference: np.ndarray, geometry: CylindricalGeometry, threshold: float):
    """The validation showers' features, computed once and reused every epoch."""
    from fastsim.validation.features import compute_features

    return compute_features((energy, reference), geometry, threshold=threshold)


def _figure_of_merit(energy: np.ndarray, generated: np.ndarray, reference_features,
                     geometry: CylindricalGeometry, threshold: float) -> float:
    from fastsim.validation import quick_figure_of_merit

    return float(quick_figure_of_merit((energy, generated), reference_features, geometry=geometry,
                                       threshold=threshold))


# -- checkpoints -------------------------------------------------------------------


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path, what="checkpoint") as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`train` (safe: ``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def physical_decoder_from_checkpoint(checkpoint: dict, geometry: CylindricalGeometry | None = None):
    """Rebuild the physical-units decoder (prior folded in) from a checkpoint dict.

    A :class:`~training.model.PhysicalDecoder` for the ring model, a
    :class:`~training.general.GeneralDecoder` for ``architecture = "voxels"``.
    """
    config = _config_from_dict(json.loads(checkpoint["config_json"]))
    geometry = geometry or CylindricalGeometry.from_dict(json.loads(checkpoint["geometry_json"]))
    vae = _build_vae(config, geometry)
    vae.load_state_dict(checkpoint["model"])
    decoder = _physical_decoder(vae, ResponseFit.from_dict(json.loads(checkpoint["response_json"])), config,
                                checkpoint["prior_mean"], checkpoint["prior_chol"], checkpoint["noise_kappa"],
                                checkpoint.get("spot_coeffs"), checkpoint.get("spot_spread"))
    return decoder.eval()


def conditioning_of(config: dict):
    """The :class:`~training.general.Conditioning` of a config (architecture "voxels")."""
    from training.general import Conditioning
    from training.simulate import parse_particle

    data: DataConfig = config["data"]
    return Conditioning(data.e_min, data.e_max, math.radians(data.theta_max_deg), bool(data.phi),
                        tuple(parse_particle(p) for p in data.particles))


def _physical_decoder(vae, response: ResponseFit, config: dict, prior_mean, prior_chol, kappa, spot_coeffs=None,
                      spot_spread=None):
    data: DataConfig = config["data"]
    if config["model"].architecture == "voxels":
        from training.general import GeneralDecoder

        return GeneralDecoder(vae, response, threshold=data.threshold, prior_mean=prior_mean, prior_chol=prior_chol,
                              noise_kappa=np.asarray(kappa, np.float64), spot_coeffs=spot_coeffs,
                              spot_spread=spot_spread)
    return PhysicalDecoder(vae, response, e_min=data.e_min, e_max=data.e_max, threshold=data.threshold,
                           prior_mean=prior_mean, prior_chol=prior_chol, noise_kappa=float(kappa),
                           spot_coeffs=spot_coeffs)


def _fit_spot(decoder, conditions: np.ndarray, reference: np.ndarray, *, threshold: float, seed: int,
              spread: bool = False) -> dict:
    """The checkpoint entries of the fitted voxel noise: ``spot_coeffs``, and ``spot_spread`` when asked."""
    if conditions.ndim == 2:
        from training.general import fit_general_spot_energy, fit_general_spot_spread

        if spread:
            sigma, coeffs = fit_general_spot_spread(decoder, conditions, reference, threshold=threshold, seed=seed)
            return {"spot_coeffs": coeffs, "spot_spread": sigma}
        return {"spot_coeffs": fit_general_spot_energy(decoder, conditions, reference, threshold=threshold,
                                                       seed=seed), "spot_spread": None}
    return {"spot_coeffs": fit_spot_energy(decoder, conditions, reference, threshold=threshold, seed=seed)}


def _read_sample(path, config: dict, geometry: CylindricalGeometry, start: int, stop: int | None):
    """(energies (N,) or, for the "voxels" architecture, conditions (N, c); raw showers (N, n_voxels))."""
    energy, showers = read_raw(path, geometry, start, stop)
    if config["model"].architecture != "voxels":
        return energy, showers
    from training.general import read_conditions

    conditions = read_conditions(path, conditioning_of(config).names, start, start + len(energy), geometry=geometry)
    return conditions, showers


def _build_vae(config: dict, geometry: CylindricalGeometry):
    model_config: ModelConfig = config["model"]
    if model_config.architecture == "voxels":
        from training.general import GeneralVAE, VoxelLayout

        return GeneralVAE(model_config, VoxelLayout(geometry), conditioning_of(config))
    data: DataConfig = config["data"]
    if data.theta_max_deg > 0 or data.phi or data.particles:
        raise ValueError('[data] theta_max_deg/phi/particles: conditions beyond energy need [model] architecture = '
                         '"voxels"')
    if not geometry.uniform:
        raise ValueError("geometry: the ring model needs every layer binned the same way (a uniform geometry); "
                         f"got layers with {sorted({layer.n_voxels for layer in geometry.layers})} voxels; "
                         'set [model] architecture = "voxels" for any binning')
    first = geometry.layers[0]
    return ShowerVAE(model_config, geometry.n_layers, first.n_alpha, first.n_radial)


# -- the loop ----------------------------------------------------------------------


def _write_history(out: Path, history: list[dict]) -> None:
    if not history:
        return
    keys = list(history[0])
    for row in history[1:]:
        keys += [k for k in row if k not in keys]
    with atomic_path(out / "history.csv", what="training history") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    atomic_write_text(out / "history.json", json.dumps(history, indent=1), what="training history")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional; the CSV/JSON are the record
        return
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, style in [("train_loss", "-"), ("val_loss", "--")]:
        axes[0].plot(epochs, [row[key] for row in history], style, label=key)
    axes[0].set_ylabel("loss (per shower)")
    for key in ["train_shape", "val_shape"]:
        axes[1].plot(epochs, [row[key] for row in history], label=key)
    axes[1].set_ylabel("shape cross-entropy")
    axes[2].plot(epochs, [row["fom"] for row in history], "o-", label="validation FOM")
    axes[2].set_ylabel("figure of merit (lower is better)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    with atomic_path(out / "history.png", what="training history") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _evaluate_loss(vae: ShowerVAE, tensors: ShowerTensors, tcfg: TrainConfig, beta: float, device) -> dict:
    vae.eval()
    sums: dict[str, float] = {}
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(tcfg.seed + 7)
        for start in range(0, tensors.n, 4096):
            sl = slice(start, start + 4096)
            terms = vae.loss(tensors.condition[sl].to(device), tensors.v[sl].to(device),
                             tensors.rings[sl].to(device), beta=beta, u_weight=tcfg.u_weight,
                             shape_weight=tcfg.shape_weight)
            k = tensors.condition[sl].shape[0]
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value) * k
    return {key: value / tensors.n for key, value in sums.items()}


@dataclass(frozen=True)
class _Schedule:
    """The learning rate (cosine decay to a floor) and the KL weight (linear warm-up) at each step."""

    tcfg: TrainConfig
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.tcfg.epochs

    def lr_at(self, step: int) -> float:
        tcfg = self.tcfg
        frac = min(1.0, step / max(1, self.total_steps))
        return tcfg.lr * (tcfg.lr_final_fraction + (1 - tcfg.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * frac)))

    def beta_at(self, step: int) -> float:
        warmup_steps = max(1, int(self.tcfg.kl_warmup_epochs * self.steps_per_epoch))
        return self.tcfg.beta * min(1.0, step / warmup_steps)


@dataclass
class _Progress:
    """Where a run stands between epochs: what a checkpoint restores."""

    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    best_fom: float = math.inf
    best_epoch: int = -1
    elapsed_before: float = 0.0  # training seconds of earlier sessions (before --resume)


def _load_split(config: dict, data: str | os.PathLike, validation: str | os.PathLike | None,
                geometry: CylindricalGeometry):
    """Training and validation showers: ``validation``, else the tail of ``data``."""
    dcfg: DataConfig = config["data"]
    if config["model"].architecture == "voxels":
        from training.general import VoxelLayout, load_general_showers

        conditioning, layout = conditioning_of(config), VoxelLayout(geometry)
        train_set, response = load_general_showers(data, conditioning, layout, max_showers=dcfg.max_showers or None)
        if validation is not None:
            val_set, _ = load_general_showers(validation, conditioning, layout, response=response,
                                              max_showers=dcfg.max_val_showers or None)
            return train_set, val_set, response
        n_val = max(1, round(train_set.n * dcfg.val_fraction))
        if n_val >= train_set.n:
            raise ValueError(f"--data: {train_set.n} showers are too few to split off a validation set")
        return (*train_set.split(n_val), response)
    train_set, response = load_showers(data, e_min=dcfg.e_min, e_max=dcfg.e_max, geometry=geometry,
                                       max_showers=dcfg.max_showers or None)
    if validation is not None:
        val_set, _ = load_showers(validation, e_min=dcfg.e_min, e_max=dcfg.e_max, response=response,
                                  geometry=geometry, max_showers=dcfg.max_val_showers or None)
        return train_set, val_set, response
    n_val = max(1, round(train_set.n * dcfg.val_fraction))
    if n_val >= train_set.n:
        raise ValueError(f"--data: {train_set.n} showers are too few to split off a validation set")
    keys = ("energy", "condition", "v", "rings")
    val_set = ShowerTensors(*(getattr(train_set, k)[-n_val:] for k in keys), 0, train_set.kappa)
    train_set = ShowerTensors(*(getattr(train_set, k)[:-n_val] for k in keys), train_set.n_dropped, train_set.kappa)
    return train_set, val_set, response


def _write_run_description(out: Path, config: dict, data: str | os.PathLike, validation: str | os.PathLike | None,
                           train_set: ShowerTensors, val_set: ShowerTensors, response: ResponseFit,
                           geometry: CylindricalGeometry) -> dict:
    """Write ``config.json``; return what every checkpoint carries besides weights (config, response, ...)."""
    config_dict = _config_to_dict(config)
    data_info = {"train": os.fspath(data), "validation": os.fspath(validation) if validation else None,
                 "n_train": train_set.n, "n_validation": val_set.n, "n_dropped": train_set.n_dropped}
    (out / "config.json").write_text(json.dumps({**config_dict, "data_files": data_info,
                                                  "response": response.to_dict()}, indent=1))
    return {
        "config_json": json.dumps(config_dict),
        "response_json": json.dumps(response.to_dict()),
        "geometry_json": json.dumps(geometry.to_dict()),
        "data_json": json.dumps(data_info),
        "noise_kappa": _kappa_record(train_set.kappa),
    }


def _kappa_record(kappa):
    """kappa as a checkpoint holds it: a float (ring model) or a list of floats per layer."""
    return float(kappa) if np.ndim(kappa) == 0 else [float(k) for k in kappa]


def _kappa_text(kappa) -> str:
    if np.ndim(kappa) == 0:
        return f"{float(kappa):.2f} MeV"
    return f"{np.min(kappa):.2f}-{np.max(kappa):.2f} MeV over {len(kappa)} layers"


def _restore(out: Path, resume: bool, vae: ShowerVAE, optimiser: torch.optim.Optimizer, log) -> _Progress:
    """With ``resume``, load ``last.pt`` into the model, optimiser and torch's RNG; else a fresh start."""
    if resume and (out / "last.pt").exists():
        ckpt = load_checkpoint(out / "last.pt")
        vae.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_state"])
        log(f"resumed from {out / 'last.pt'} after epoch {ckpt['epoch']}")
        return _Progress(json.loads(ckpt["history_json"]), ckpt["epoch"] + 1, ckpt["best_fom"], ckpt["best_epoch"],
                         ckpt["train_seconds"])
    if resume:
        log(f"--resume: no checkpoint in {out}, starting afresh")
    return _Progress()


def _fom_sample(data: str | os.PathLike, validation: str | os.PathLike | None, geometry: CylindricalGeometry,
                config: dict, train_set, val_set) -> tuple[np.ndarray, np.ndarray]:
    """Raw validation showers for the figure of merit (the held-out tail of ``data`` without ``validation``):
    (energies (N,) or conditions (N, c), showers)."""
    tcfg: TrainConfig = config["train"]
    if validation is not None:
        return _read_sample(validation, config, geometry, 0, tcfg.fom_showers)
    n_rows = val_set.n + train_set.n + train_set.n_dropped
    return _read_sample(data, config, geometry, n_rows - min(val_set.n, tcfg.fom_showers), n_rows)


def _train_epoch(vae: ShowerVAE, optimiser: torch.optim.Optimizer, train_set: ShowerTensors, schedule: _Schedule,
                 epoch: int, device, progress: bool) -> dict[str, float]:
    """One pass over the training showers in a seeded order; returns the mean loss terms."""
    from tqdm import tqdm

    tcfg, steps_per_epoch = schedule.tcfg, schedule.steps_per_epoch
    vae.train()
    perm = torch.randperm(train_set.n, generator=torch.Generator().manual_seed(tcfg.seed * 100003 + epoch))
    sums = {"loss": 0.0, "response": 0.0, "shape": 0.0, "kl": 0.0}
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{tcfg.epochs}", disable=not progress,
               mininterval=5.0, leave=False)
    for i in bar:
        step = epoch * steps_per_epoch + i
        for group in optimiser.param_groups:
            group["lr"] = schedule.lr_at(step)
        idx = perm[i * tcfg.batch_size:(i + 1) * tcfg.batch_size]
        terms = vae.loss(train_set.condition[idx].to(device), train_set.v[idx].to(device),
                         train_set.rings[idx].to(device), beta=schedule.beta_at(step), u_weight=tcfg.u_weight,
                         shape_weight=tcfg.shape_weight)
        optimiser.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 10.0)
        optimiser.step()
        for key in sums:
            sums[key] += float(terms[key].detach()) * len(idx)
        if i % 20 == 0:
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.3f}", kl=f"{float(terms['kl'].detach()):.1f}")
    bar.close()
    return {key: value / train_set.n for key, value in sums.items()}


def _epoch_prior(vae, config: dict, train_set) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent prior the export folds in: the aggregate posterior's fit, or N(0, I)."""
    tcfg: TrainConfig = config["train"]
    if tcfg.prior == "aggregate":
        return fit_latent_prior(vae, train_set, tcfg.prior_fit_showers, tcfg.seed)
    d = config["model"].latent_dim
    return torch.zeros(getattr(vae, "prior_mean_terms", PRIOR_DEGREE + 1), d), torch.eye(d)


def _judge(decoder, dcfg: DataConfig, tcfg: TrainConfig, fom_conditions: np.ndarray,
           fom_reference: np.ndarray, fom_reference_features, geometry: CylindricalGeometry) -> dict[str, float]:
    """Generated vs validation showers: the figure of merit and the worst response/resolution deviations."""
    generated = generate_showers(decoder, fom_conditions, seed=tcfg.seed + 1)
    fom_energy = fom_conditions if fom_conditions.ndim == 1 else fom_conditions[:, 0]
    fom = _figure_of_merit(fom_energy, generated, fom_reference_features, geometry, dcfg.threshold)
    table = response_table(fom_energy, generated.sum(1), fom_reference.sum(1), e_min=dcfg.e_min, e_max=dcfg.e_max)
    return {"fom": fom,
            "worst_response_dev": max(abs(r["response_ratio"] - 1) for r in table),
            "worst_resolution_dev": max(abs(r["resolution_ratio"] - 1) for r in table)}


def train(config: dict, data: str | os.PathLike, out: str | os.PathLike, *,
          validation: str | os.PathLike | None = None, resume: bool = False,
          geometry: CylindricalGeometry | None = None, progress: bool = True,
          log=print) -> dict:
    """Train per ``config`` on ``data``, writing checkpoints and the history into ``out``.

    Args:
        config: as returned by :func:`load_config` (``name``, ``data``, ``model``, ``train``).
        data: the training showers (a CaloChallenge HDF5 file).
        out: the run folder (created): ``config.json``, ``last.pt``, ``best.pt``, ``history.*``.
        validation: held-out showers for the validation loss and the figure of
            merit; None: the last ``val_fraction`` of ``data``.
        resume: continue from ``out/last.pt`` when it exists.
        geometry: the showers' binning (None: CaloChallenge dataset 2).
        progress: show a progress bar per epoch.
        log: called with one line per event (data loaded, each epoch, stopping).

    Returns:
        ``best_fom``, ``best_epoch``, ``epochs_run``, ``train_seconds``, ``out``.

    Raises:
        ValueError: too few showers to split off a validation set, or a geometry
            the VAE cannot bin (layers binned differently).
    """
    dcfg: DataConfig = config["data"]
    tcfg: TrainConfig = config["train"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    geometry = geometry or default_geometry()
    torch.manual_seed(tcfg.seed)

    t_load = time.perf_counter()
    train_set, val_set, response = _load_split(config, data, validation, geometry)
    log(f"data: {train_set.n} training showers ({train_set.n_dropped} empty dropped), "
        f"{val_set.n} validation showers, loaded in {time.perf_counter() - t_load:.0f} s; "
        f"voxel noise kappa {_kappa_text(train_set.kappa)}")

    vae = _build_vae(config, geometry)
    vae.fit_input_scaling(train_set.condition, train_set.v, train_set.rings)
    vae.to(device)
    optimiser = torch.optim.Adam(vae.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    schedule = _Schedule(tcfg, math.ceil(train_set.n / tcfg.batch_size))
    meta = _write_run_description(out, config, data, validation, train_set, val_set, response, geometry)
    state = _restore(out, resume, vae, optimiser, log)

    fom_conditions, fom_reference = _fom_sample(data, validation, geometry, config, train_set, val_set)
    fom_energy = fom_conditions if fom_conditions.ndim == 1 else fom_conditions[:, 0]
    fom_reference_features = _reference_features(fom_energy, fom_reference, geometry, dcfg.threshold)
    log(f"model: {count_parameters(vae)} parameters "
        f"({sum(count_parameters(m) for m in vae.decoder_modules())} in the decoder), "
        f"{decoder_flops(vae) / 1e6:.2f} MFLOP per decoded shower; device {device}, {torch.get_num_threads()} threads")

    t_start = time.perf_counter()
    epochs_without_gain = state.history[-1]["epoch"] - state.best_epoch if state.history else 0
    for epoch in range(state.start_epoch, tcfg.epochs):
        t_epoch = time.perf_counter()
        train_terms = _train_epoch(vae, optimiser, train_set, schedule, epoch, device, progress)
        val_terms = _evaluate_loss(vae, val_set, tcfg, tcfg.beta, device)
        prior_mean, prior_chol = _epoch_prior(vae, config, train_set)
        decoder = _physical_decoder(vae, response, config, prior_mean.to(device), prior_chol.to(device),
                                    train_set.kappa).to(device)
        judged = _judge(decoder, dcfg, tcfg, fom_conditions, fom_reference, fom_reference_features, geometry)
        fom = judged["fom"]

        elapsed = state.elapsed_before + time.perf_counter() - t_start
        row = {"epoch": epoch, "lr": schedule.lr_at((epoch + 1) * schedule.steps_per_epoch),
               "seconds": round(time.perf_counter() - t_epoch, 1),
               **{f"train_{k}": v for k, v in train_terms.items()}, **{f"val_{k}": v for k, v in val_terms.items()},
               **judged}
        state.history.append(row)
        improved = fom < state.best_fom
        if improved:
            state.best_fom, state.best_epoch = fom, epoch
        ckpt = {
            "epoch": epoch, "model": {k: v.cpu() for k, v in vae.state_dict().items()},
            "optimizer": optimiser.state_dict(), "rng_state": torch.get_rng_state(),
            "prior_mean": prior_mean.cpu(), "prior_chol": prior_chol.cpu(),
            "best_fom": state.best_fom, "best_epoch": state.best_epoch, "fom": fom, "train_seconds": elapsed,
            "history_json": json.dumps(state.history), **meta,
        }
        _atomic_save(ckpt, out / "last.pt")
        if improved:
            _atomic_save({k: v for k, v in ckpt.items() if k != "optimizer"}, out / "best.pt")
        _write_history(out, state.history)
        log(f"epoch {epoch + 1}/{tcfg.epochs}: loss {train_terms['loss']:.4f} (val {val_terms['loss']:.4f}), "
            f"shape {val_terms['shape']:.4f}, response {val_terms['response']:.4f}, kl {val_terms['kl']:.2f}, "
            f"FOM {fom:.5f}{' *' if improved else ''}, worst response {judged['worst_response_dev']:.4f}, "
            f"worst resolution {judged['worst_resolution_dev']:.4f} [{row['seconds']:.0f} s]")
        epochs_without_gain = 0 if improved else epochs_without_gain + 1
        if epochs_without_gain >= tcfg.patience:
            log(f"early stop: no FOM gain for {tcfg.patience} epochs "
                f"(best {state.best_fom:.5f} at epoch {state.best_epoch + 1})")
            break
        epoch_seconds = time.perf_counter() - t_epoch
        if tcfg.max_minutes > 0 and elapsed + epoch_seconds > 60 * tcfg.max_minutes:
            log(f"stopping: another epoch would pass the {tcfg.max_minutes} min wall-time cap")
            break
    if config["model"].voxel_noise == "gamma" and (out / "best.pt").exists():
        best = load_checkpoint(out / "best.pt")
        fitted = _fit_spot(physical_decoder_from_checkpoint(best, geometry), fom_conditions, fom_reference,
                           threshold=dcfg.threshold, seed=tcfg.seed, spread=config["model"].sparsity_spread)
        _atomic_save({**best, **fitted}, out / "best.pt")
        log("voxel noise: per-layer spot energies fitted to the validation sparsity"
            + ("" if fitted.get("spot_spread") is None else
               ", and their spread to its shower-to-shower spread: sigma "
               + ", ".join(f"{x:.2f}" for x in fitted["spot_spread"].tolist())))
    return {"best_fom": state.best_fom, "best_epoch": state.best_epoch, "epochs_run": len(state.history),
            "train_seconds": state.elapsed_before + time.perf_counter() - t_start, "out": os.fspath(out)}
