"""Scaling of sharded generation on a Dask LocalCluster: 1 and 2 worker processes, and the efficiency.

For each worker count W, a ``distributed.LocalCluster`` of W processes (one
thread each; one ONNX Runtime thread per task) generates the same N showers in
S shards into a fresh folder with :func:`fastsim.distributed.generate` --
shard files written, checksums computed, manifest updated. Cluster start-up
and the workers' first model load are not timed: a warm-up run first loads
the model in every worker (the per-process cache keeps it, which the recorded
``model_loads`` confirm). Each figure is the median wall time of ``--repeats``
runs; rate = N / time; efficiency(W) = rate(W) / (W x rate(1)). For reference,
the unsharded ``Generator.write`` in one process with 1 ONNX Runtime thread.
The model is the bundled exported/calo-electron.onnx or, before it exists,
the synthetic decoder of the same shape (benchmarks/synthetic_decoder.py), as
recorded. The machine is shared: its load average is recorded with the figures.

    .venv/bin/python benchmarks/bench_dask.py --n 32768 --shards 8 --workers 1,2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fastsim  # noqa: E402
from fastsim import distributed  # noqa: E402
from fastsim.bench import machine_info  # noqa: E402

__all__ = ["main", "measure_dask", "measure_unsharded"]

BUNDLED = ROOT / "exported" / "calo-electron.onnx"
RESULTS = ROOT / "benchmarks" / "results"


def measure_unsharded(model: Path, n: int, repeats: int, scratch: Path) -> dict:
    """Median wall time of Generator.write (one process, 1 ONNX Runtime thread) into one file."""
    gen = fastsim.load(model, device="cpu", threads=1)
    gen.write(scratch / "warm.h5", 2048, seed=1)  # first-call costs out of the timing
    times = []
    for repeat in range(repeats):
        out = scratch / f"whole-{repeat}.h5"
        began = time.perf_counter()
        gen.write(out, n, seed=repeat)
        times.append(time.perf_counter() - began)
        out.unlink()
    seconds = statistics.median(times)
    return {"seconds": round(seconds, 3), "showers_per_s": round(n / seconds, 1), "all_seconds": times}


def measure_dask(model: Path, n: int, shards: int, workers: int, repeats: int, scratch: Path) -> dict:
    """Median wall time of distributed.generate on a warm LocalCluster of ``workers`` processes."""
    from distributed import Client, LocalCluster

    began = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        startup = time.perf_counter() - began
        warm_records: list[dict] = []
        distributed.generate(model, 4 * workers * 1024, scratch / "warm", seed=1, shards=4 * workers,
                             client=client, device="cpu", on_shard=warm_records.append)
        shutil.rmtree(scratch / "warm")
        times, records = [], []
        for repeat in range(repeats):
            out = scratch / f"run-{repeat}"
            summary = distributed.generate(model, n, out, seed=repeat, shards=shards, client=client, device="cpu",
                                           on_shard=records.append)
            times.append(summary["seconds"])
            shutil.rmtree(out)
    seconds = statistics.median(times)
    loads = {r["pid"]: r["model_loads"] for r in warm_records + records}
    return {
        "workers": workers,
        "seconds": round(seconds, 3),
        "showers_per_s": round(n / seconds, 1),
        "all_seconds": times,
        "cluster_startup_s": round(startup, 2),
        "worker_pids": sorted(loads),
        "model_loads": sorted(set(loads.values())),
        "shard_seconds_median": round(statistics.median(r["seconds"] for r in records), 3),
    }


def _markdown(doc: dict) -> str:
    machine = doc["machine"]
    lines = [
        "# Sharded generation on Dask: scaling",
        "",
        f"Measured {doc['date']} with `{doc['command']}`.",
        f"Model: {doc['model']['kind']} (`{doc['model']['path']}`, {doc['model']['n_voxels']} voxels). "
        f"n = {doc['n']} showers in {doc['shards']} shards, float32, no compression; "
        f"median of {doc['repeats']} runs; one thread per worker, one ONNX Runtime thread per task.",
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, shared with other jobs "
        f"(load average {doc['loadavg_before']} before, {doc['loadavg_after']} after).",
        "",
        "| setup | seconds | showers/s | efficiency |",
        "|---|---:|---:|---:|",
        f"| unsharded Generator.write, 1 process, 1 thread | {doc['unsharded']['seconds']} | "
        f"{doc['unsharded']['showers_per_s']:.0f} | - |",
    ]
    for row in doc["dask"]:
        lines.append(f"| Dask LocalCluster, {row['workers']} worker(s) | {row['seconds']} | "
                     f"{row['showers_per_s']:.0f} | {row['efficiency']:.2f} |")
    lines += [
        "",
        "efficiency(W) = rate(W) / (W x rate(1 worker)). Cluster start-up "
        + ", ".join(f"{r['cluster_startup_s']} s ({r['workers']} w)" for r in doc["dask"])
        + " and the first model load per worker are not in the timings; every worker loaded the model "
        "once (model_loads = " + ", ".join(str(r["model_loads"]) for r in doc["dask"]) + ").",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="an .onnx path (default: bundled, else synthetic)")
    parser.add_argument("--n", type=int, default=32768, help="showers per run")
    parser.add_argument("--shards", type=int, default=8, help="shards per run")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setup (median)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for dask.json and dask.md")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="fastsim-bench-dask-") as tmp:
        scratch = Path(tmp)
        if args.model:
            model, kind = Path(args.model), "given"
        elif BUNDLED.is_file():
            model, kind = BUNDLED, "bundled calo-electron"
        else:
            from synthetic_decoder import build_decoder

            model, kind = build_decoder(scratch / "synthetic.onnx"), "synthetic (benchmarks/synthetic_decoder.py)"
        spec = fastsim.load(model, device="cpu", threads=1).spec
        unsharded = measure_unsharded(model, args.n, args.repeats, scratch)
        rows = [measure_dask(model, args.n, args.shards, int(w), args.repeats, scratch)
                for w in args.workers.split(",")]
    base = next((r["showers_per_s"] for r in rows if r["workers"] == 1), None)
    for row in rows:
        row["efficiency"] = round(row["showers_per_s"] / (row["workers"] * base), 3) if base else None
    doc = {
        "benchmark": "dask-scaling",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(__file__).name}",
                                                                  *(argv if argv is not None else sys.argv[1:])]),
        "model": {"kind": kind, "path": str(model if kind != "synthetic (benchmarks/synthetic_decoder.py)"
                                            else "benchmarks/synthetic_decoder.py defaults"),
                  "n_voxels": spec.n_voxels},
        "n": args.n,
        "shards": args.shards,
        "repeats": args.repeats,
        "unsharded": unsharded,
        "dask": rows,
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_info(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dask.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "dask.md").write_text(_markdown(doc))
    print(_markdown(doc))


if __name__ == "__main__":
    main()
