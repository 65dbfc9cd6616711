"""fastsim's voxel classifier against a CaloChallenge-style torch DNN, on the same files and split.

The CaloChallenge evaluation (``evaluate.py --mode cls-low``) trains a fully
connected network on ``[log10 E_inc, 100 * E_voxel / E_inc]``: an input layer
and two hidden layers of 512 LeakyReLU units, one logit, Adam (lr 2e-4),
batch 1000, up to 50 epochs, keeping the epoch with the best validation
accuracy, isotonic calibration on the validation set. This script rebuilds
that network in torch (written here from its description) and trains it on
exactly the rows and split that ``fastsim validate``'s voxel classifier uses
(:func:`fastsim.validation.metrics.two_sample_split`), then runs fastsim's own numpy
classifier (:func:`fastsim.validation.metrics.fit_classifier`, ``model="mlp"``) on the
same split, for generated vs reference and for an independent reference vs
reference (the floor). Records both AUCs (raw scores; the DNN's calibrated AUC
too), their bootstrap spreads, the epochs and the run times.

    .venv/bin/python benchmarks/bench_voxel_classifier.py data/gen.h5 data/heldout.h5 data/floor.h5 \\
        -n 20000 --json-out benchmarks/results/voxel_classifier.json

torch is a dev dependency here (benchmarks are dev tools); ``fastsim`` itself never imports it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastsim.dataset import open_showers  # noqa: E402
from fastsim.geometry import default_geometry  # noqa: E402
from fastsim.validation import metrics, voxel_classifier_inputs  # noqa: E402
from fastsim.validation.classifier import bootstrap_auc, roc_auc  # noqa: E402
from fastsim.validation.features import DEFAULT_THRESHOLD_MEV  # noqa: E402

__all__ = ["calochallenge_dnn_auc", "measure"]


def _read(path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    with open_showers(path) as f:
        if f.n < n:
            raise SystemExit(f"{path}: has {f.n} showers, need {n}")
        energies, showers = f.read(0, n)
    return energies.astype(np.float64), showers.astype(np.float32)


def _calochallenge_inputs(energies: np.ndarray, showers: np.ndarray) -> np.ndarray:
    return np.concatenate([np.log10(energies)[:, None], 100.0 * showers / energies[:, None]], axis=1).astype(np.float32)


def _fastsim_inputs(energies: np.ndarray, showers: np.ndarray) -> np.ndarray:
    return voxel_classifier_inputs(energies, showers, default_geometry(), DEFAULT_THRESHOLD_MEV)


def calochallenge_dnn_auc(data: np.ndarray, labels: np.ndarray, split: tuple, *, max_epochs: int = 50,
                          patience: int = 10, seed: int = 0, threads: int = 2) -> dict:
    """Train the CaloChallenge-style DNN on ``split[0]``, select by validation accuracy, score ``split[2]``."""
    import torch
    from sklearn.isotonic import IsotonicRegression

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    train, val, test = split
    width = data.shape[1]
    layers = [torch.nn.Linear(width, 512), torch.nn.LeakyReLU()]
    for _ in range(2):
        layers += [torch.nn.Linear(512, 512), torch.nn.LeakyReLU()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(512, 1))
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.from_numpy(np.ascontiguousarray(data))
    y = torch.from_numpy(labels.astype(np.float32))
    generator = torch.Generator().manual_seed(seed)

    def scores(rows: np.ndarray) -> np.ndarray:
        net.eval()
        with torch.no_grad():
            return torch.cat([net(x[torch.from_numpy(rows[i:i + 4096])])[:, 0]
                              for i in range(0, len(rows), 4096)]).numpy().astype(np.float64)

    best_acc, best_epoch, best_state, history = -1.0, 0, None, []
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        net.train()
        order = torch.from_numpy(train)[torch.randperm(len(train), generator=generator)]
        for begin in range(0, len(order), 1000):
            rows = order[begin:begin + 1000]
            optimiser.zero_grad()
            loss = loss_fn(net(x[rows])[:, 0], y[rows])
            loss.backward()
            optimiser.step()
        val_scores = scores(val)
        accuracy = float(np.mean((val_scores > 0) == (labels[val] == 1)))
        history.append(accuracy)
        if accuracy > best_acc:
            best_acc, best_epoch = accuracy, epoch
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    net.load_state_dict(best_state)
    raw = scores(test)
    val_prob = 1.0 / (1.0 + np.exp(-scores(val)))
    calibrator = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6).fit(val_prob, labels[val])
    calibrated = calibrator.predict(1.0 / (1.0 + np.exp(-raw)))
    return {
        "auc": roc_auc(raw, labels[test]),
        "auc_error": bootstrap_auc(raw, labels[test], seed=seed),
        "auc_calibrated": roc_auc(calibrated, labels[test]),
        "best_epoch": best_epoch,
        "epochs": epoch,
        "converged": epoch < max_epochs,
        "val_accuracy": history,
    }


def measure(generated: str, reference: str, floor: str, *, n: int = 20_000, seed: int = 0,
            max_epochs: int = 50, patience: int = 10) -> dict:
    e_ref, s_ref = _read(reference, n)
    pairs = {"generated_vs_reference": _read(generated, n), "floor_vs_reference": _read(floor, n)}
    out: dict = {"kind": "fastsim-bench-voxel-classifier/1", "n_per_sample": n, "seed": seed,
                 "files": {"generated": generated, "reference": reference, "floor": floor},
                 "machine": {"platform": platform.platform(), "python": platform.python_version()}}
    for name, (e_other, s_other) in pairs.items():
        row: dict = {}
        data, labels, split = metrics.two_sample_split(_calochallenge_inputs(e_ref, s_ref),
                                                       _calochallenge_inputs(e_other, s_other), n_max=n, seed=seed)
        began = time.perf_counter()
        row["calochallenge_dnn"] = calochallenge_dnn_auc(data, labels, split, max_epochs=max_epochs,
                                                         patience=patience, seed=seed)
        row["calochallenge_dnn"]["seconds"] = round(time.perf_counter() - began, 1)
        del data
        data, labels_2, split_2 = metrics.two_sample_split(_fastsim_inputs(e_ref, s_ref),
                                                           _fastsim_inputs(e_other, s_other), n_max=n, seed=seed)
        assert np.array_equal(labels, labels_2)
        assert all(np.array_equal(a, b) for a, b in zip(split, split_2, strict=True))
        began = time.perf_counter()
        row["fastsim_mlp"] = metrics.fit_classifier(data, labels_2, split_2, model="mlp", seed=seed)
        row["fastsim_mlp"]["seconds"] = round(time.perf_counter() - began, 1)
        del data
        out[name] = row
        print(f"{name}: CaloChallenge-style DNN AUC {row['calochallenge_dnn']['auc']:.4f} "
              f"± {row['calochallenge_dnn']['auc_error']:.4f} ({row['calochallenge_dnn']['seconds']} s), "
              f"fastsim AUC {row['fastsim_mlp']['auc']:.4f} ± {row['fastsim_mlp']['auc_error']:.4f} "
              f"({row['fastsim_mlp']['seconds']} s)", flush=True)
    gen = out["generated_vs_reference"]
    out["fastsim_minus_dnn"] = gen["fastsim_mlp"]["auc"] - gen["calochallenge_dnn"]["auc"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("generated", help="generated showers (CaloChallenge HDF5)")
    parser.add_argument("reference", help="reference showers")
    parser.add_argument("floor", help="an independent reference sample (the floor)")
    parser.add_argument("-n", type=int, default=20_000, help="showers per sample (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="split and training seed")
    parser.add_argument("--max-epochs", type=int, default=50, help="DNN epoch cap (evaluate.py: 50)")
    parser.add_argument("--patience", type=int, default=10, help="stop the DNN after this many epochs without a "
                        "better validation accuracy (evaluate.py runs all 50)")
    parser.add_argument("--json-out", type=Path, default=None, help="write the JSON document here")
    args = parser.parse_args(argv)
    doc = measure(args.generated, args.reference, args.floor, n=args.n, seed=args.seed,
                  max_epochs=args.max_epochs, patience=args.patience)
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
