"""The fidelity cost of a reduced-precision variant, measured with ``fastsim validate``.

Generates showers from the fp32 model and from its variant (NAME-int8.onnx,
made on the fly with :func:`training.quantize.quantize_model` if absent) on
the incident energies of a reference file (seed 11 for both, so both decode
the same latents), validates each against the reference with
:func:`fastsim.validation.validate`, and reports each metric for fp32, for the
variant, and their difference; plus the direct difference of the two outputs
(relative change of each shower's total energy).

    .venv/bin/python benchmarks/bench_fidelity.py exported/calo-electron.onnx data/val.h5 --json-out /tmp/fid.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fastsim  # noqa: E402
from fastsim import bench  # noqa: E402
from fastsim.dataset import open_showers  # noqa: E402
from fastsim.models import resolve_model  # noqa: E402

__all__ = ["measure"]

SMOKE_GROUPS = ("separation", "wasserstein")
# The classifier and FPD groups take minutes each on 2 cores; ask for them with --groups.
FULL_GROUPS = ("separation", "wasserstein", "energy-bins", "kpd")


def _values(report: dict) -> dict[str, float]:
    return {name: m["value"] for name, m in report["metrics"].items() if isinstance(m, dict) and "value" in m}


def measure(model: str, reference: str, *, precision: str = "int8", n: int | None = None,
            smoke: bool = False, groups: tuple[str, ...] | None = None) -> dict:
    from fastsim.validation import validate

    path = resolve_model(model)
    with open_showers(reference) as ref:
        n = min(n or (1000 if smoke else 20000), ref.n)
        energies, ref_showers = ref.read(0, n)
    with tempfile.TemporaryDirectory(prefix="fastsim-fid-") as tmp:
        variant = bench.variant_path(path, precision)
        if not variant.is_file():
            if precision != "int8":
                raise SystemExit(f"no {precision} variant beside {path}")
            from training.quantize import quantize_model

            copy = Path(tmp) / path.name
            shutil.copyfile(path, copy)
            variant = quantize_model(copy, bench.variant_path(copy, "int8"))
        outputs = {}
        for label, file in (("fp32", path), (precision, variant)):
            gen = fastsim.load(file, device="cpu")
            _, showers = gen.generate(n, conditions=energies.astype(np.float32), seed=11, allow_extrapolation=True)
            outputs[label] = showers
    groups = groups or (SMOKE_GROUPS if smoke else FULL_GROUPS)
    reports = {label: validate((energies, showers), (energies, ref_showers), groups=groups)
               for label, showers in outputs.items()}
    values = {label: _values(r) for label, r in reports.items()}
    diff = {k: values[precision][k] - values["fp32"][k] for k in values["fp32"] if k in values[precision]}
    totals = {label: s.sum(axis=1) for label, s in outputs.items()}
    rel = np.abs(totals[precision] - totals["fp32"]) / np.maximum(totals["fp32"], 1e-30)
    return {
        "kind": "fastsim-bench-fidelity/1",
        "model": {"path": str(path)},
        "reference": {"path": str(reference), "n": n},
        "precision": precision,
        "groups": list(groups),
        "metrics": {"fp32": values["fp32"], precision: values[precision], "difference": diff},
        "total_energy_rel_change": {"median": float(np.median(rel)), "p99": float(np.quantile(rel, 0.99)),
                                    "max": float(rel.max())},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="bundled model name or .onnx path (the fp32 model)")
    parser.add_argument("reference", help="reference showers (CaloChallenge HDF5), e.g. the validation set")
    parser.add_argument("--precision", default="int8", help="the variant: int8 or fp16")
    parser.add_argument("-n", type=int, default=None, help="showers compared (default 20000)")
    parser.add_argument("--groups", default=None, help=f"validate metric groups (default {','.join(FULL_GROUPS)})")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--json-out", type=Path, default=None, help="write the JSON document here")
    args = parser.parse_args(argv)
    groups = tuple(args.groups.split(",")) if args.groups else None
    doc = measure(args.model, args.reference, precision=args.precision, n=args.n, smoke=args.smoke, groups=groups)
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))
    for name, value in sorted(doc["metrics"]["fp32"].items()):
        other = doc["metrics"][doc["precision"]].get(name)
        print(f"{name:40s} fp32 {value:10.5f}  {doc['precision']} {other:10.5f}")


if __name__ == "__main__":
    main()
