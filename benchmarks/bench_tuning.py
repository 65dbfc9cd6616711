"""ONNX Runtime CPU settings, one at a time, each measured on the same decoder and inputs.

Every configuration decodes the same 8192 showers (16384 with --full-size)
from the same latents and energies and is timed in interleaved rounds (so a
burst of load from elsewhere hits all of them alike); the median round counts.
Two figures per configuration: showers/s of wall time, and showers per
CPU-second of this process (``time.process_time``) — the second is what a
busy shared machine cannot distort much, but it also counts the CPU a
spinning thread pool burns, so it is reported beside, not instead of, wall time.

Configurations (the baseline is ONNX Runtime's defaults with one run per
2048-row batch, the runtime's default batch size):

- graph optimisation level: disable / basic / extended / all;
- memory arena off; intra-op thread spinning off;
- intra-op threads 1 vs the physical cores;
- ``run`` (new output array per call) vs IO binding into a preallocated buffer;
- micro-batched decoding: each 2048-row batch split into fixed 64-row runs
  (which keeps the intermediates in cache), on one thread or spread over one
  worker thread per core, each run single-threaded (ONNX Runtime releases the
  GIL, so the workers run in parallel).

    .venv/bin/python benchmarks/bench_tuning.py exported/calo-electron.onnx --json-out /tmp/tuning.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from fastsim import bench  # noqa: E402
from fastsim.models import resolve_model  # noqa: E402
from fastsim.spec import read_spec  # noqa: E402

__all__ = ["CONFIGS", "measure"]

BATCH = 2048
MICRO = 64
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _config(threads, *, level="all", arena=True, spinning=True, binding=False, rows=BATCH, workers=1):
    return {"threads": threads, "level": level, "arena": arena, "spinning": spinning, "binding": binding,
            "rows": rows, "workers": workers}


def CONFIGS(cores: int) -> dict[str, dict]:
    """The configurations compared, by name, for a machine with ``cores`` physical cores."""
    return {
        "baseline: defaults, run(), 2048 rows": _config(cores),
        "optimisation disable": _config(cores, level="disable"),
        "optimisation basic": _config(cores, level="basic"),
        "optimisation extended": _config(cores, level="extended"),
        "memory arena off": _config(cores, arena=False),
        "spinning off": _config(cores, spinning=False),
        "1 intra-op thread": _config(1),
        "IO binding, preallocated output": _config(cores, binding=True),
        f"IO binding, {MICRO}-row runs, 1 thread": _config(1, binding=True, rows=MICRO),
        f"IO binding, {MICRO}-row runs, {cores} intra-op threads": _config(cores, binding=True, rows=MICRO),
        f"IO binding, {MICRO}-row runs, {cores} workers x 1 thread": _config(1, binding=True, rows=MICRO,
                                                                            workers=cores),
    }


def _session(path: Path, cfg: dict):
    options = ort.SessionOptions()
    options.intra_op_num_threads = cfg["threads"]
    options.graph_optimization_level = _LEVELS[cfg["level"]]
    options.enable_cpu_mem_arena = cfg["arena"]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg["spinning"] else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _decoder(session, cfg: dict, names: tuple[str, str, str], z, conditions, out, pool):
    zname, cname, oname = names
    n, width = out.shape

    def span(lo: int, hi: int) -> None:
        binding = session.io_binding() if cfg["binding"] else None
        for a in range(lo, hi, cfg["rows"]):
            b = min(hi, a + cfg["rows"])
            if binding is None:
                out[a:b] = session.run([oname], {zname: z[a:b], cname: conditions[a:b]})[0]
            else:
                binding.bind_cpu_input(zname, z[a:b])
                binding.bind_cpu_input(cname, conditions[a:b])
                binding.bind_output(oname, "cpu", 0, out.dtype, (b - a, width), out[a:b].ctypes.data)
                session.run_with_iobinding(binding)

    def decode_all() -> None:
        for lo in range(0, n, BATCH):  # batch by batch, as the generator hands them out
            hi = min(n, lo + BATCH)
            if cfg["workers"] == 1:
                span(lo, hi)
            else:
                per = -(-(hi - lo) // cfg["rows"] // cfg["workers"]) * cfg["rows"]
                list(pool.map(lambda s: span(s, min(hi, s + per)), range(lo, hi, per)))

    return decode_all


def measure(model: str, *, smoke: bool = False, rounds: int = 5, n: int = 8192) -> dict:
    path = resolve_model(model)
    spec = read_spec(path)
    cores = bench.physical_cores()
    if smoke:
        n, rounds = 256, 1
    feeds = bench.decode_inputs(spec, n, seed=3)
    names = (spec.io_names["z"], spec.io_names["conditions"], spec.io_names["showers"])
    z, conditions = feeds[names[0]], feeds[names[1]]
    out = np.ones((n, spec.n_voxels), np.float32)  # touched once: page faults are not timed
    pool = ThreadPoolExecutor(max(1, cores))
    configs = CONFIGS(cores)
    runners, reference = {}, None
    for name, cfg in configs.items():
        runners[name] = _decoder(_session(path, cfg), cfg, names, z, conditions, out, pool)
        runners[name]()  # warm-up, and every configuration must give the same showers
        if reference is None:
            reference = out.copy()
        elif not np.allclose(out, reference, rtol=1e-4, atol=1e-5):
            raise SystemExit(f"configuration {name!r} computes different showers")
    wall: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, decode in runners.items():
            t0, c0 = time.perf_counter(), time.process_time()
            decode()
            wall[name].append(n / (time.perf_counter() - t0))
            cpu[name].append(n / max(time.process_time() - c0, 1e-9))
    pool.shutdown()
    base = statistics.median(wall[next(iter(configs))])
    rows = []
    for name, cfg in configs.items():
        rate = statistics.median(wall[name])
        rows.append({"name": name, "config": cfg, "showers_per_s": rate, "max_showers_per_s": max(wall[name]),
                     "showers_per_cpu_s": statistics.median(cpu[name]), "vs_baseline": rate / base})
    return {
        "kind": "fastsim-bench-tuning/1",
        "machine": {**bench.machine_info(), "loadavg_after": [round(x, 2) for x in __import__("os").getloadavg()]},
        "model": {"path": str(path), "name": spec.name},
        "n": n, "rounds": rounds, "batch_rows": BATCH, "micro_rows": MICRO,
        "configs": rows,
    }


def format_table(doc: dict) -> str:
    lines = ["| configuration | showers/s | vs baseline | showers per CPU-s |", "|---|---:|---:|---:|"]
    for row in doc["configs"]:
        lines.append(f"| {row['name']} | {row['showers_per_s']:,.0f} | {row['vs_baseline']:.2f} "
                     f"| {row['showers_per_cpu_s']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="default", help="bundled model name or .onnx path")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--json-out", type=Path, default=None, help="write the JSON document here")
    args = parser.parse_args(argv)
    doc = measure(args.model, smoke=args.smoke, rounds=args.rounds)
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))
    print(format_table(doc))


if __name__ == "__main__":
    main()
