"""Scaling of sharded generation on a Dask LocalCluster: 1 and 2 worker processes, and the efficiency.

For each worker count W, a ``distributed.LocalCluster`` of W processes (one
thread each; one ONNX Runtime thread per task) generates the same N showers in
S shards into a fresh folder with :func:`fastsim.distributed.generate` --
shard files written, checksums computed, manifest updated. For reference, the
unsharded ``Generator.write`` in this process with 1 ONNX Runtime thread.

The machine is shared with other jobs, so the setups are interleaved: every
round times each setup once, back to back, and efficiency(W) = rate(W) /
(W x rate(1 worker)) is computed within a round, then the median over rounds
is reported (with the median times). All clusters are started, and every
worker has loaded the model (the per-process cache keeps it, which the
recorded ``model_loads`` confirm), before the first round: cluster start-up
and model loading are not timed. The model is the bundled
exported/calo-electron.onnx or, before it exists, the synthetic decoder of the
same shape (benchmarks/synthetic_decoder.py), as recorded, with the load average.

    .venv/bin/python benchmarks/bench_dask.py --n 32768 --shards 8 --workers 1,2 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
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

__all__ = ["main", "measure"]

BUNDLED = ROOT / "exported" / "calo-electron.onnx"
RESULTS = ROOT / "benchmarks" / "results"


def measure(model: Path, n: int, shards: int, workers: list[int], rounds: int, scratch: Path) -> dict:
    """Interleaved rounds of: unsharded write, then generate on each warm cluster; times in seconds."""
    from distributed import Client, LocalCluster

    gen = fastsim.load(model, device="cpu", threads=1)
    gen.write(scratch / "warm.h5", 2048, seed=1)  # first-call costs out of the timing
    with contextlib.ExitStack() as stack:
        clients, startup, records = {}, {}, {w: [] for w in workers}
        for w in workers:
            began = time.perf_counter()
            cluster = stack.enter_context(LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            clients[w] = stack.enter_context(Client(cluster))
            startup[w] = round(time.perf_counter() - began, 2)
            # Warm-up: enough shards that every worker loads the model once, untimed.
            distributed.generate(model, 4 * w * 1024, scratch / f"warm-{w}", seed=1, shards=4 * w,
                                 client=clients[w], device="cpu", on_shard=records[w].append)
            shutil.rmtree(scratch / f"warm-{w}")
        times: dict = {"unsharded": [], **{w: [] for w in workers}}
        timed = {w: [] for w in workers}  # shard records of the timed runs only
        for round_ in range(rounds):
            began = time.perf_counter()
            gen.write(scratch / "whole.h5", n, seed=round_)
            times["unsharded"].append(time.perf_counter() - began)
            (scratch / "whole.h5").unlink()
            for w in workers:
                out = scratch / f"run-{w}"
                summary = distributed.generate(model, n, out, seed=round_, shards=shards, client=clients[w],
                                               device="cpu", on_shard=timed[w].append)
                times[w].append(summary["seconds"])
                shutil.rmtree(out)
    one = min(workers)
    rows = []
    for w in workers:
        per_round = [(one * t1) / (w * tw) for t1, tw in zip(times[one], times[w])]
        loads = {r["pid"]: r["model_loads"] for r in records[w] + timed[w]}
        seconds = statistics.median(times[w])
        rows.append({
            "workers": w,
            "seconds": round(seconds, 3),
            "showers_per_s": round(n / seconds, 1),
            "efficiency": round(statistics.median(per_round), 3),
            "efficiency_per_round": [round(e, 3) for e in per_round],
            "all_seconds": [round(t, 3) for t in times[w]],
            "shard_seconds_median": round(statistics.median(r["seconds"] for r in timed[w]), 3),
            "cluster_startup_s": startup[w],
            "model_loads": sorted(set(loads.values())),
            "worker_processes": len(loads),
        })
    unsharded = statistics.median(times["unsharded"])
    return {"unsharded": {"seconds": round(unsharded, 3), "showers_per_s": round(n / unsharded, 1),
                          "all_seconds": [round(t, 3) for t in times["unsharded"]]},
            "dask": rows}


def _markdown(doc: dict) -> str:
    machine = doc["machine"]
    lines = [
        "# Sharded generation on Dask: scaling",
        "",
        f"Measured {doc['date']} with `{doc['command']}`.",
        f"Model: {doc['model']['kind']}, {doc['model']['n_voxels']} voxels. "
        f"n = {doc['n']} showers in {doc['shards']} shards, float32, no compression; "
        f"{doc['rounds']} interleaved rounds, medians; one thread per worker, one ONNX Runtime thread per task.",
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, shared with other jobs "
        f"(load average {doc['loadavg_before']} before, {doc['loadavg_after']} after).",
        "",
        "| setup | seconds | showers/s | efficiency | seconds per shard, in the worker |",
        "|---|---:|---:|---:|---:|",
        f"| unsharded Generator.write, 1 process, 1 thread | {doc['unsharded']['seconds']} | "
        f"{doc['unsharded']['showers_per_s']:.0f} | - | - |",
    ]
    for row in doc["dask"]:
        lines.append(f"| Dask LocalCluster, {row['workers']} worker process{'es' if row['workers'] > 1 else ''} | "
                     f"{row['seconds']} | {row['showers_per_s']:.0f} | {row['efficiency']:.2f} | "
                     f"{row['shard_seconds_median']} |")
    lines += [
        "",
        "A shard's own time growing with W means the workers compete for cores (the other jobs' "
        "load included), not that Dask adds work.",
        "efficiency(W) = rate(W) / (W x rate(1 worker)), per round, median over rounds "
        "(per round: " + "; ".join(f"{r['workers']} w: {r['efficiency_per_round']}" for r in doc["dask"]) + ").",
        "Cluster start-up (" + ", ".join(f"{r['cluster_startup_s']} s for {r['workers']} w" for r in doc["dask"])
        + ") and the first model load per worker are not timed; every worker process loaded the model once "
        "(model_loads = " + ", ".join(str(r["model_loads"]) for r in doc["dask"]) + ").",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="an .onnx path (default: bundled, else synthetic)")
    parser.add_argument("--n", type=int, default=32768, help="showers per run")
    parser.add_argument("--shards", type=int, default=8, help="shards per run")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (the smallest is the base)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (medians)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for dask.json and dask.md")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="fastsim-bench-dask-") as tmp:
        scratch = Path(tmp)
        if args.model:
            model, kind = Path(args.model), f"`{args.model}`"
        elif BUNDLED.is_file():
            model, kind = BUNDLED, "bundled exported/calo-electron.onnx"
        else:
            from synthetic_decoder import build_decoder

            model = build_decoder(scratch / "synthetic.onnx")
            kind = "synthetic decoder of the bundled model's shape (benchmarks/synthetic_decoder.py defaults)"
        spec = fastsim.load(model, device="cpu", threads=1).spec
        result = measure(model, args.n, args.shards, sorted(int(w) for w in args.workers.split(",")),
                         args.rounds, scratch)
    doc = {
        "benchmark": "dask-scaling",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(__file__).name}",
                                                                  *(argv if argv is not None else sys.argv[1:])]),
        "model": {"kind": kind, "path": None if kind.startswith("synthetic") else str(model),
                  "n_voxels": spec.n_voxels},
        "n": args.n,
        "shards": args.shards,
        "rounds": args.rounds,
        **result,
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
