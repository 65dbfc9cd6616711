"""The surrogate against the reference simulator it replaces, on the same incident energies.

Draws n energies log-uniformly over the model's training range (seed 7), runs
the reference simulator (``training.simulate.simulate``, numpy, one process)
on exactly those energies, and the surrogate (``fastsim.load(...).generate``
with the same per-shower energies) on one thread and on all physical cores.
Both sides produce (n, n_voxels) float32 arrays in memory; the ratio of their
rates is the speed-up. The surrogate is timed as the median of 3 calls
(after a warm-up), the simulator as the median of its repeats.

    .venv/bin/python benchmarks/bench_reference.py exported/calo-electron.onnx --json-out /tmp/ref.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fastsim  # noqa: E402
from fastsim import bench  # noqa: E402

__all__ = ["measure"]


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model: str, *, smoke: bool = False) -> dict:
    from training.simulate import simulate

    n_sim = 128 if smoke else 2048
    n_gen = 256 if smoke else 65536
    generator = fastsim.load(model, device="cpu", threads=1)
    cond = generator.spec.conditions[0]
    rng = np.random.default_rng(7)
    energies = np.exp(rng.uniform(np.log(cond.min), np.log(cond.max), n_gen))
    sim_energies = energies[:n_sim]
    # The per-spot method: GFlash as Geant4 runs it, cost growing with the number of spots.
    simulate(16, sim_energies[:16].tolist(), seed=1, method="spots")  # warm-up: imports, caches
    sim_s = _timed(lambda: simulate(n_sim, sim_energies.tolist(), seed=1, method="spots"), 1 if smoke else 3)
    result = {
        "kind": "fastsim-bench-reference/1",
        "machine": bench.machine_info(),
        "model": {"path": str(generator.path), "name": generator.spec.name},
        "energies": f"log-uniform {cond.min:g}-{cond.max:g} {cond.unit}, seed 7",
        "reference": {"n": n_sim, "seconds": sim_s, "showers_per_s": n_sim / sim_s,
                      "what": "training.simulate.simulate(method='spots'), one process", "method": "spots"},
        "surrogate": {},
    }
    for threads in sorted({1, bench.physical_cores()}):
        gen = fastsim.load(generator.path, device="cpu", threads=threads)
        gen.generate(min(n_gen, 4096), conditions=energies[:min(n_gen, 4096)].astype(np.float32))
        seconds = _timed(lambda: gen.generate(n_gen, conditions=energies.astype(np.float32)), 3)
        result["surrogate"][str(threads)] = {"n": n_gen, "threads": threads, "seconds": seconds,
                                             "showers_per_s": n_gen / seconds}
    ref = result["reference"]["showers_per_s"]
    result["speedup"] = {t: s["showers_per_s"] / ref for t, s in result["surrogate"].items()}
    result["machine"]["loadavg_after"] = [round(x, 2) for x in __import__("os").getloadavg()]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="default", help="bundled model name or .onnx path")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--json-out", type=Path, default=None, help="write the JSON document here")
    args = parser.parse_args(argv)
    doc = measure(args.model, smoke=args.smoke)
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))
    print(f"reference {doc['reference']['showers_per_s']:,.0f} showers/s; surrogate "
          + ", ".join(f"{s['showers_per_s']:,.0f}/s on {t} thread(s)" for t, s in doc["surrogate"].items())
          + "; speed-up " + ", ".join(f"{v:,.0f}x ({t})" for t, v in doc["speedup"].items()))


if __name__ == "__main__":
    main()
