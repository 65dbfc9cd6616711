"""Throughput of the reference simulator (training/simulate.py), per kind of shower, recorded in benchmarks/results.

Measures showers/s of ``method="spots"`` (every GFlash spot drawn: the reference,
whose cost grows with energy; target >= 200 showers/s for log-uniform
1 GeV-1 TeV electrons) and ``method="binned"`` (spot counts per voxel drawn
directly, for large training sets), for log-uniform 1 GeV-1 TeV and fixed
energies, and end to end into a gzip-compressed HDF5 file with ``write_dataset``;
then each kind of training shower (electron / photon, normal / inclined 0-60 deg,
substructure, CaloChallenge datasets 1, 2 and 3), log-uniform 1 GeV-1 TeV, with
the hours one process needs for 100,000 of them. The simulator is numpy in one
process; the machine is shared, so the load average is recorded alongside.

    .venv/bin/python benchmarks/bench_simulate.py            # full run (~2 min)
    .venv/bin/python benchmarks/bench_simulate.py --smoke    # seconds, for tests
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastsim.geometry import load_detector  # noqa: E402
from training.simulate import BLOCK_SIZE, METHODS, SIW, parse_energy, simulate, write_dataset  # noqa: E402

__all__ = ["main", "measure"]

TARGET_SPOTS_PER_S = 200  # showers/s, spots method, log-uniform 1 GeV-1 TeV


def _mean_spots(energy: str, n: int, seed: int) -> float:
    """Mean N_spot = 93 ln Z (E/GeV)^0.876 of the showers a measurement simulates."""
    energies, _ = simulate(min(n, BLOCK_SIZE), energy, seed=seed, method="binned")  # energies only
    if parse_energy(energy).kind == "fixed":
        energies = energies[:1]
    return float(np.mean(np.rint(93.0 * np.log(SIW.z_eff) * (energies / 1e3) ** 0.876)))


def _rate(n: int, energy: str, seed: int, repeats: int, method: str) -> dict:
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        simulate(n, energy, seed=seed + r, method=method)
        times.append(time.perf_counter() - t0)
    best, median = min(times), float(np.median(times))
    spots = _mean_spots(energy, n, seed)
    return {"energy": energy, "n": n, "repeats": repeats, "showers_per_s_best": n / best,
            "showers_per_s_median": n / median, "mean_spots_per_shower": spots,
            "spots_per_s_best": spots * n / best}


def measure(n: int, n_fixed: int, repeats: int, fixed: tuple[str, ...]) -> dict:
    results = {}
    for method in METHODS:
        simulate(BLOCK_SIZE, "1GeV:1TeV", seed=99, method=method)  # warm-up: imports, caches
        row = {"log_uniform_1GeV_1TeV": _rate(n, "1GeV:1TeV", 1, repeats, method)}
        row["fixed"] = [_rate(n_fixed, e, 1, repeats, method) for e in fixed]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path, _ = write_dataset(Path(tmp) / "bench.h5", n, "1GeV:1TeV", seed=1, progress=False, method=method)
            seconds = time.perf_counter() - t0
            size = path.stat().st_size
        row["hdf5_gzip_end_to_end"] = {"n": n, "seconds": seconds, "showers_per_s": n / seconds,
                                       "bytes_per_shower": size / n}
        results[method] = row
    return results


#: (dataset, particle, theta, substructure, method) of each kind of training shower measured.
KINDS = (
    ("2", "electron", "0", False, "spots"),
    ("2", "electron", "0", False, "binned"),
    ("2", "electron", "0deg:60deg", False, "spots"),
    ("2", "electron", "0", True, "spots"),
    ("2", "photon", "0", False, "spots"),
    ("2", "photon", "0deg:60deg", True, "spots"),
    ("1-photons", "photon", "0", False, "spots"),
    ("1-photons", "photon", "0deg:60deg", True, "spots"),
    ("1-pions", "electron", "0", False, "spots"),
    ("3", "electron", "0", False, "spots"),
    ("3", "electron", "0", False, "binned"),
    ("3", "electron", "0deg:60deg", False, "spots"),
)


def measure_kinds(n: int, repeats: int, kinds=KINDS) -> list[dict]:
    """showers/s of each kind, log-uniform 1 GeV-1 TeV electrons or photons, phi uniform when inclined."""
    rows = []
    for dataset, particle, theta, substructure, method in kinds:
        geometry, material = load_detector(dataset)
        settings = dict(geometry=geometry, material=material, particle=particle, theta=theta,
                        phi="0:2pi" if theta != "0" else 0.0, substructure=substructure, method=method)
        simulate(min(n, BLOCK_SIZE), "1GeV:1TeV", seed=99, **settings)  # warm-up
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            simulate(n, "1GeV:1TeV", seed=1 + r, **settings)
            times.append(time.perf_counter() - t0)
        best = n / min(times)
        rows.append({"dataset": dataset, "n_voxels": geometry.n_voxels, "particle": particle, "theta": theta,
                     "substructure": substructure, "method": method, "n": n, "repeats": repeats,
                     "showers_per_s_best": best, "showers_per_s_median": n / float(np.median(times)),
                     "hours_per_100k_one_process": 1e5 / best / 3600})
    return rows


def _machine() -> dict:
    import h5py

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="showers per log-uniform measurement")
    parser.add_argument("--n-fixed", type=int, default=512, help="showers per fixed-energy measurement")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (best and median reported)")
    parser.add_argument("--n-kind", type=int, default=512, help="showers per kind of training shower")
    parser.add_argument("--smoke", action="store_true", help="tiny run, results written under --out-dir")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    fixed = ("1GeV", "10GeV", "100GeV", "1TeV")
    if args.smoke:
        args.n, args.n_fixed, args.repeats, fixed = BLOCK_SIZE, BLOCK_SIZE, 1, ("1GeV", "10GeV")
        args.n_kind = 16

    machine = _machine()
    results = measure(args.n, args.n_fixed, args.repeats, fixed)
    kinds = measure_kinds(args.n_kind, args.repeats, KINDS[:3] + KINDS[-3:-2] if args.smoke else KINDS)
    machine["loadavg_at_end"] = os.getloadavg()
    record = {
        "benchmark": "reference simulator throughput",
        "command": "python benchmarks/bench_simulate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": {"method": "spots", "workload": "log_uniform_1GeV_1TeV", "showers_per_s": TARGET_SPOTS_PER_S},
        "machine": machine,
        "results": results,
        "kinds": kinds,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "simulate.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out_dir / "simulate.md").write_text(_markdown(record))
    print(_markdown(record))
    return 0


def _markdown(record: dict) -> str:
    res, m = record["results"], record["machine"]
    lines = [
        "# Reference simulator throughput",
        "",
        f"`{record['command'].strip()}` on {record['date_utc']}",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs shared with other work, load average "
        f"{m['loadavg_at_start'][0]:.2f} -> {m['loadavg_at_end'][0]:.2f} (1-min); Python {m['python']}, "
        f"numpy {m['numpy']}, h5py {m['h5py']}. One process (numpy), so at most one core is used.",
        "",
        "`spots`: every GFlash spot drawn (the reference simulator, cost grows with energy). "
        "`binned`: spot counts per voxel drawn directly (equal in distribution, for large training sets).",
        "",
        "| method | workload | showers | mean spots/shower | best showers/s | median showers/s | best Mspots/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for method, row in res.items():
        for label, r in [("log-uniform 1 GeV-1 TeV", row["log_uniform_1GeV_1TeV"])] + [
            (f"fixed {r['energy']}", r) for r in row["fixed"]
        ]:
            lines.append(f"| {method} | {label} | {r['n']} | {r['mean_spots_per_shower']:.0f} | "
                         f"{r['showers_per_s_best']:.0f} | {r['showers_per_s_median']:.0f} | "
                         f"{r['spots_per_s_best'] / 1e6:.1f} |")
    lines.append("")
    for method, row in res.items():
        h5 = row["hdf5_gzip_end_to_end"]
        lines.append(f"End to end into gzip HDF5 (`write_dataset(method=\"{method}\")`, log-uniform): {h5['n']} showers "
                     f"in {h5['seconds']:.2f} s = {h5['showers_per_s']:.0f} showers/s, "
                     f"{h5['bytes_per_shower'] / 1e3:.1f} kB per shower on disk.")
    lines += [
        "",
        "## Per kind of training shower (log-uniform 1 GeV-1 TeV; inclined: theta uniform 0-60 deg, phi 0-2 pi)",
        "",
        "| dataset | voxels | particle | theta | substructure | method | showers | best showers/s | "
        "hours per 100k, one process |",
        "|---|---:|---|---|---|---|---:|---:|---:|",
    ]
    for k in record.get("kinds", []):
        lines.append(f"| {k['dataset']} | {k['n_voxels']} | {k['particle']} | {k['theta']} | "
                     f"{'yes' if k['substructure'] else 'no'} | {k['method']} | {k['n']} | "
                     f"{k['showers_per_s_best']:.0f} | {k['hours_per_100k_one_process']:.2f} |")
    target = record["target"]
    got = res[target["method"]][target["workload"]]["showers_per_s_best"]
    lines += [
        "",
        f"Target: spots method >= {target['showers_per_s']} showers/s for log-uniform 1 GeV-1 TeV: "
        f"measured {got:.0f} showers/s ({'met' if got >= target['showers_per_s'] else 'NOT met'}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
