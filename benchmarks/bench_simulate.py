"""Throughput of the reference simulator (training/simulate.py), recorded in benchmarks/results.

Measures showers/s for log-uniform 1 GeV-1 TeV electrons (the target: >= 200/s),
per fixed energy, and end to end into a gzip-compressed HDF5 file with
``write_dataset``. The simulator is numpy in one process; the figure is for that
process on this machine, whose load is recorded alongside.

    .venv/bin/python benchmarks/bench_simulate.py            # full run (~1 min)
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

from training.simulate import BLOCK_SIZE, simulate, write_dataset  # noqa: E402

__all__ = ["main", "measure"]


def _rate(n: int, energy: str, seed: int, repeats: int) -> dict:
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        simulate(n, energy, seed=seed + r)
        times.append(time.perf_counter() - t0)
    best, median = min(times), float(np.median(times))
    return {"energy": energy, "n": n, "repeats": repeats, "showers_per_s_best": n / best, "showers_per_s_median": n / median}


def measure(n: int, repeats: int) -> dict:
    simulate(BLOCK_SIZE, "1GeV:1TeV", seed=99)  # warm-up: imports, caches
    results = {"log_uniform_1GeV_1TeV": _rate(n, "1GeV:1TeV", 1, repeats)}
    results["fixed"] = [_rate(max(n // 4, BLOCK_SIZE), e, 1, repeats) for e in ("1GeV", "10GeV", "100GeV", "1TeV")]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path, _ = write_dataset(Path(tmp) / "bench.h5", n, "1GeV:1TeV", seed=1, progress=False)
        seconds = time.perf_counter() - t0
        size = path.stat().st_size
    results["hdf5_gzip_end_to_end"] = {"n": n, "seconds": seconds, "showers_per_s": n / seconds, "bytes_per_shower": size / n}
    return results


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
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (best and median reported)")
    parser.add_argument("--smoke", action="store_true", help="tiny run, results written under --out-dir")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.repeats = BLOCK_SIZE, 1

    machine = _machine()
    results = measure(args.n, args.repeats)
    machine["loadavg_at_end"] = os.getloadavg()
    record = {
        "benchmark": "reference simulator throughput",
        "command": "python benchmarks/bench_simulate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target_showers_per_s": 200,
        "machine": machine,
        "results": results,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "simulate.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out_dir / "simulate.md").write_text(_markdown(record))
    print(_markdown(record))
    return 0


def _markdown(record: dict) -> str:
    res, m = record["results"], record["machine"]
    lu = res["log_uniform_1GeV_1TeV"]
    lines = [
        "# Reference simulator throughput",
        "",
        f"`{record['command'].strip()}` on {record['date_utc']}",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, load average {m['loadavg_at_start'][0]:.2f} -> "
        f"{m['loadavg_at_end'][0]:.2f} (shared machine); Python {m['python']}, numpy {m['numpy']}, h5py {m['h5py']}. "
        "One process (numpy).",
        "",
        "| workload | showers | best showers/s | median showers/s |",
        "|---|---:|---:|---:|",
        f"| log-uniform 1 GeV-1 TeV | {lu['n']} | {lu['showers_per_s_best']:.0f} | {lu['showers_per_s_median']:.0f} |",
    ]
    for row in res["fixed"]:
        lines.append(f"| fixed {row['energy']} | {row['n']} | {row['showers_per_s_best']:.0f} | {row['showers_per_s_median']:.0f} |")
    h5 = res["hdf5_gzip_end_to_end"]
    lines += [
        "",
        f"End to end into gzip HDF5 (`write_dataset`, log-uniform): {h5['n']} showers in {h5['seconds']:.2f} s = "
        f"{h5['showers_per_s']:.0f} showers/s, {h5['bytes_per_shower'] / 1e3:.1f} kB per shower on disk.",
        "",
        f"Target: >= {record['target_showers_per_s']} showers/s averaged over log-uniform 1 GeV-1 TeV.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
