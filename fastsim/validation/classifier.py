"""A fully connected binary classifier in numpy, for the voxel-level two-sample test.

The network behind ``classifier_auc.voxel``: the
CaloChallenge's low-level classifier (a fully connected net on the voxel
energies divided by the incident energy, plus log10 of the incident energy,
trained with Adam on the binary cross-entropy) written in numpy float32 so
that the runtime needs no torch. It trains to convergence: early stopping on
the validation loss, keeping the weights of the best epoch.

- :class:`MLP` -- the network (LeakyReLU hidden layers, one logit out).
- :func:`train_mlp` -- fit with Adam and early stopping; returns an :class:`MLPFit`.
- :func:`roc_auc` and :func:`bootstrap_auc` -- the rank AUC and its bootstrap spread.

Results are deterministic for a given seed, data and BLAS thread count.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MLP", "MLPFit", "bootstrap_auc", "roc_auc", "train_mlp"]

_LEAK = 0.01  # torch.nn.LeakyReLU's default slope


@dataclass
class MLP:
    """Weights of a fully connected net: ``len(weights) - 1`` LeakyReLU hidden layers and a logit."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]

    @classmethod
    def initialise(cls, n_inputs: int, hidden: tuple[int, ...], rng: np.random.Generator) -> MLP:
        """Uniform(+-1/sqrt(fan_in)) weights and biases, torch.nn.Linear's default."""
        sizes = (n_inputs, *hidden, 1)
        weights, biases = [], []
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / np.sqrt(fan_in)
            weights.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32))
            biases.append(rng.uniform(-bound, bound, fan_out).astype(np.float32))
        return cls(weights, biases)

    def copy(self) -> MLP:
        return MLP([w.copy() for w in self.weights], [b.copy() for b in self.biases])

    def logits(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """The network's output logit for every row of ``x`` (float32 in, float64 out)."""
        out = np.empty(len(x), dtype=np.float64)
        for begin in range(0, len(x), batch_size):
            h = x[begin:begin + batch_size]
            for w, b in zip(self.weights[:-1], self.biases[:-1], strict=False):
                h = h @ w + b
                np.maximum(h, _LEAK * h, out=h)
            out[begin:begin + batch_size] = (h @ self.weights[-1] + self.biases[-1])[:, 0]
        return out


@dataclass
class MLPFit:
    """A trained network and how its training went."""

    model: MLP
    best_epoch: int
    epochs_run: int
    converged: bool
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


def _bce(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits, computed stably."""
    z = logits.astype(np.float64)
    return float(np.mean(np.maximum(z, 0) - z * labels + np.log1p(np.exp(-np.abs(z)))))


def train_mlp(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    hidden: tuple[int, ...] = (128, 128),
    learning_rate: float = 1e-4,
    batch_size: int = 500,
    max_epochs: int = 40,
    patience: int = 4,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> MLPFit:
    """Fit an :class:`MLP` with Adam on the binary cross-entropy, with early stopping.

    After every epoch the loss on ``(x_val, y_val)`` is measured; training
    stops when it has not improved for ``patience`` epochs (``converged``) or
    after ``max_epochs`` (not converged), and the weights of the best epoch are
    returned. Inputs are float32 matrices; labels are 0/1.
    """
    if x_train.ndim != 2 or x_val.ndim != 2 or x_train.shape[1] != x_val.shape[1]:
        raise ValueError(f"x_train and x_val: expected 2-d matrices with equal widths, got "
                         f"{x_train.shape} and {x_val.shape}")
    rng = np.random.default_rng(seed)
    net = MLP.initialise(x_train.shape[1], tuple(hidden), rng)
    params = net.weights + net.biases
    first_moment = [np.zeros_like(p) for p in params]
    second_moment = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    y_train = np.asarray(y_train, dtype=np.float32)
    best, best_loss, best_epoch, since_best = net.copy(), np.inf, 0, 0
    train_curve, val_curve = [], []
    n_layers = len(net.weights)
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        order = rng.permutation(len(x_train))
        total = 0.0
        for begin in range(0, len(order), batch_size):
            rows = order[begin:begin + batch_size]
            x, y = x_train[rows], y_train[rows]
            # Forward, keeping pre-activations for the backward pass.
            inputs, pre = [x], []
            h = x
            for i in range(n_layers):
                z = h @ net.weights[i] + net.biases[i]
                if i < n_layers - 1:
                    pre.append(z)
                    h = np.where(z > 0, z, _LEAK * z)
                    inputs.append(h)
                else:
                    h = z
            logit = h[:, 0]
            prob = 0.5 * (1.0 + np.tanh(0.5 * logit))  # the sigmoid, without overflow
            total += _bce(logit, y) * len(rows)
            grad = ((prob - y) / len(rows)).astype(np.float32)[:, None]
            grads_w: list[np.ndarray] = [np.empty(0, np.float32)] * n_layers
            grads_b: list[np.ndarray] = [np.empty(0, np.float32)] * n_layers
            for i in range(n_layers - 1, -1, -1):
                grads_w[i] = inputs[i].T @ grad
                grads_b[i] = grad.sum(axis=0)
                if i > 0:  # no gradient with respect to the data
                    grad = grad @ net.weights[i].T
                    grad *= np.where(pre[i - 1] > 0, 1.0, _LEAK).astype(np.float32)
            step += 1
            lr_t = float(learning_rate * np.sqrt(1 - beta2**step) / (1 - beta1**step))
            for p, g, m, v in zip(params, grads_w + grads_b, first_moment, second_moment, strict=False):
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * (g * g)
                p -= (lr_t * m / (np.sqrt(v) + eps)).astype(np.float32)
            if weight_decay:  # decoupled (AdamW), on the weights only
                for w in net.weights:
                    w *= np.float32(1.0 - learning_rate * weight_decay)
        train_curve.append(total / len(order))
        val_loss = _bce(net.logits(x_val), np.asarray(y_val, dtype=np.float64))
        val_curve.append(val_loss)
        if val_loss < best_loss - 1e-5:
            best, best_loss, best_epoch, since_best = net.copy(), val_loss, epoch, 0
        else:
            since_best += 1
            if since_best >= patience:
                return MLPFit(best, best_epoch, epoch, True, train_curve, val_curve)
    return MLPFit(best, best_epoch, epoch, False, train_curve, val_curve)


def roc_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve (ties count one half), optionally with per-row weights."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    s, lab, w = scores[order], labels[order], w[order]
    # Group equal scores: a positive beats the negatives below its group and ties with half of its own.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    neg = np.add.reduceat(np.where(lab, 0.0, w), starts)
    pos = np.add.reduceat(np.where(lab, w, 0.0), starts)
    below = np.cumsum(neg) - neg
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    return float(np.sum(pos * (below + 0.5 * neg)) / (total_pos * total_neg))


def bootstrap_auc(scores: np.ndarray, labels: np.ndarray, *, n_resamples: int = 200, seed: int = 0) -> float:
    """Standard deviation of the AUC over bootstrap resamples of the scored rows."""
    rng = np.random.default_rng(seed)
    n = len(scores)
    values = [roc_auc(scores, labels, np.bincount(rng.integers(0, n, n), minlength=n)) for _ in range(n_resamples)]
    return float(np.std(values, ddof=1))
