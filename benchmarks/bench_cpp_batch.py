"""Showers per second and peak memory of the C++ demo against its batch size (showers per Run).

Answers how an embedding host should batch: ``fastsim-cpp MODEL --n N --energy E
--batch B --threads T --json`` for each batch and thread count, median of the
repeats, peak RSS from ``/usr/bin/time -f %M``. Writes
``benchmarks/results/embedding_batch.md`` (and ``.json``) with the machine and
its load average, which says how far the figures can be trusted.

    .venv/bin/python -m benchmarks.bench_cpp_batch            # builds the demo first (examples/cpp/build.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main", "sweep"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def sweep(demo: Path, model: Path, *, n: int, energy: float, batches: list[int], threads: list[int],
          repeats: int) -> list[dict]:
    """One row per (threads, batch): median showers/s over ``repeats`` runs and the largest peak RSS."""
    rows = []
    for thread_count in threads:
        for batch in batches:
            rates, peaks = [], []
            for _ in range(repeats):
                command = ["/usr/bin/time", "-f", "%M", str(demo), str(model), "--n", str(n), "--energy",
                           repr(energy), "--batch", str(batch), "--threads", str(thread_count), "--json"]
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                rates.append(json.loads(out.stdout)["showers_per_second"])
                peaks.append(int(out.stderr.strip().splitlines()[-1]) / 1024)
            rows.append({"threads": thread_count, "batch": batch, "showers_per_s": statistics.median(rates),
                         "runs": rates, "peak_rss_mib": max(peaks)})
            print(f"threads {thread_count} batch {batch}: {rows[-1]['showers_per_s']:.0f} showers/s, "
                  f"{max(peaks):.0f} MiB", file=sys.stderr)
    return rows


def render(doc: dict) -> str:
    lines = [
        "# C++ demo: throughput and memory against batch size",
        "",
        f"Model: `{doc['model']}`; {doc['n']} showers per run at {doc['energy']:g} MeV, median of "
        f"{doc['repeats']} runs; peak RSS of the process. Measured {doc['when']}.",
        "",
        "| threads | showers per Run | showers/s (median) | runs | peak RSS (MiB) |",
        "|---:|---:|---:|---|---:|",
    ]
    for row in doc["rows"]:
        runs = ", ".join(f"{r:,.0f}" for r in row["runs"])
        lines.append(f"| {row['threads']} | {row['batch']} | {row['showers_per_s']:,.0f} | {runs} | "
                     f"{row['peak_rss_mib']:,.0f} |")
    lines += [
        "",
        f"Machine: {doc['machine']}; load average {doc['load_before']} before, {doc['load_after']} after "
        "(a loaded, shared machine: compare rows of one table, not figures across runs).",
        "",
        f"Command: `{doc['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "exported" / "calo-electron.onnx"), help="ONNX model")
    parser.add_argument("--n", type=int, default=8192, help="showers per run")
    parser.add_argument("--energy", type=float, default=50_000.0, help="incident energy in MeV")
    parser.add_argument("--batches", default="1,16,64,256,1024,4096", help="comma-separated batch sizes")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point")
    parser.add_argument("--out", default=str(RESULTS / "embedding_batch"), help="output stem (.md and .json)")
    args = parser.parse_args(argv)
    built = subprocess.run([str(ROOT / "examples" / "cpp" / "build.sh")], capture_output=True, text=True)
    if built.returncode != 0:
        print(built.stderr[-3000:], file=sys.stderr)
        return built.returncode
    demo = Path(built.stdout.strip().splitlines()[-1])
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = sweep(demo, Path(args.model), n=args.n, energy=args.energy,
                 batches=[int(b) for b in args.batches.split(",")],
                 threads=[int(t) for t in args.threads.split(",")], repeats=args.repeats)
    doc = {"model": Path(args.model).name, "n": args.n, "energy": args.energy, "repeats": args.repeats,
           "rows": rows, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
           "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
           "command": shlex.join(["python", "-m", "benchmarks.bench_cpp_batch", *(argv or sys.argv[1:])])}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(doc))
    print(out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
