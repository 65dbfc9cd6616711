"""Per-voxel decode cost of every bundled model, against the default model in the same run.

Each model decodes one run of the runtime's CPU run size for it
(:func:`fastsim.generator.cpu_run_rows`: about 415k voxels a run, so 64 rows of
dataset 2, 1024 of dataset-1 photons, 16 of dataset 3) in one single-threaded
ONNX Runtime session; the models are timed in interleaved
rounds (A, B, C, A, B, C, ...) so a noisy neighbour on a shared machine slows
all of them alike, and each model's figure is the median over rounds of its
median time per call. The figure of merit is ns per voxel per core
(time per shower / voxels), and its ratio to ``calo-electron``'s: the zoo's
target is at most 1.25x. Nothing here asserts a speed.

    python -m benchmarks.bench_zoo --json-out benchmarks/results/zoo.json --md-out benchmarks/results/zoo.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

import fastsim
from fastsim import bench
from fastsim.models import DEFAULT_MODEL, bundled_models

__all__ = ["measure", "render_markdown"]

TARGET_RATIO = 1.25


def _with_inputs(generator, rows: int) -> tuple:
    """(generator, z, conditions): ``rows`` decoder inputs for ``generator``'s model (seed 1)."""
    feeds = bench.decode_inputs(generator.spec, rows, seed=1)
    return generator, feeds[generator.spec.io_names["z"]], feeds[generator.spec.io_names["conditions"]]


def _interleaved(settings: dict, rounds: int, min_time: float) -> dict:
    """Median seconds per decode call of each setting, per round, the settings timed in turn each round."""
    per_round: dict = {key: [] for key in settings}
    for _ in range(rounds):
        for key, (generator, z, conditions) in settings.items():
            timing = bench.time_calls(lambda g=generator, a=z, b=conditions: g.decode(a, b), min_time=min_time)
            per_round[key].append(timing["median_s"])
    return per_round


def measure(models: list[str] | None = None, *, rows: int | None = None, rounds: int = 7,
            min_time: float = 0.3) -> dict:
    """Time every model (default: all bundled ones) in interleaved rounds; returns the JSON-able result.

    ``rows`` per call: each model's own CPU run size when None, else the same for all.
    """
    names = models or sorted(m.name for m in bundled_models())
    loaded = {}
    for name in names:
        generator = fastsim.load(name, device="cpu", threads=1)
        loaded[name] = _with_inputs(generator, rows or generator.run_rows)
    per_round = _interleaved(loaded, rounds, min_time)
    results = []
    for name, (generator, z, _) in loaded.items():
        seconds = statistics.median(per_round[name])
        n_rows = len(z)
        spread = float(np.std(per_round[name]) / seconds) if len(per_round[name]) > 1 else 0.0
        n_voxels = generator.spec.n_voxels
        results.append({
            "model": name, "version": generator.spec.version, "n_voxels": n_voxels,
            "conditions": list(generator.spec.condition_names),
            "rows_per_call": n_rows,
            "us_per_shower": seconds / n_rows * 1e6,
            "ns_per_voxel": seconds / n_rows / n_voxels * 1e9,
            "round_spread": spread,
        })
    baseline = next((r for r in results if r["model"] == DEFAULT_MODEL), None)
    for row in results:
        row["ratio_to_default"] = row["ns_per_voxel"] / baseline["ns_per_voxel"] if baseline else None
    return {"machine": bench.machine_info(), "rows": rows or "run size", "rounds": rounds, "threads": 1,
            "target_ratio": TARGET_RATIO, "results": results}


def compare_run_sizes(models: list[str], run_rows: list[int], *, rounds: int = 11, min_time: float = 0.3) -> dict:
    """Each model decoding the same showers in runs of each of ``run_rows``, in interleaved rounds.

    Every setting decodes max(run_rows) showers per call, so only the run size differs.
    Returns ``{"us_per_shower": {model: {rows: µs}}, "round_spread": ...}``.
    """
    settings = {}
    for name in models:
        for rows in run_rows:
            generator = fastsim.load(name, device="cpu", threads=1)
            generator.run_rows = rows
            settings[(name, rows)] = _with_inputs(generator, max(run_rows))
    per_round = _interleaved(settings, rounds, min_time)
    result: dict = {"machine": bench.machine_info(), "rounds": rounds, "showers_per_call": max(run_rows),
                    "us_per_shower": {}, "round_spread": {}}
    for (name, rows), seconds in per_round.items():
        values = [s / max(run_rows) * 1e6 for s in seconds]
        median = statistics.median(values)
        result["us_per_shower"].setdefault(name, {})[rows] = median
        result["round_spread"].setdefault(name, {})[rows] = float(np.std(values) / median)
    return result


def render_markdown(result: dict) -> str:
    machine = result["machine"]
    rows_text = "each model's CPU run size" if result["rows"] == "run size" else f"{result['rows']} rows"
    lines = [
        "# Zoo decode cost per voxel",
        "",
        f"One thread, {rows_text} per call, {result['rounds']} interleaved rounds (median); "
        f"CPU {machine.get('cpu', '?')}, load average {machine.get('loadavg', '?')}. "
        f"Target: each model's ns per voxel at most {result['target_ratio']}x the default model's.",
        "",
        "| model | conditions | voxels | rows per call | µs / shower | ns / voxel / core | ratio to default "
        "| round spread |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        ratio = "n/a" if r["ratio_to_default"] is None else f"{r['ratio_to_default']:.2f}x"
        lines.append(f"| {r['model']} {r['version']} | {', '.join(r['conditions'])} | {r['n_voxels']} | "
                     f"{r['rows_per_call']} | {r['us_per_shower']:.1f} | {r['ns_per_voxel']:.1f} | {ratio} | "
                     f"{r['round_spread']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_zoo", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names or paths (default: every bundled model)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--rows", type=int, default=None,
                        help="rows per call for every model (default: each model's CPU run size)")
    parser.add_argument("--compare-run-sizes", default=None, metavar="ROWS,ROWS",
                        help="instead: time each model decoding the same showers in runs of these sizes, "
                             "interleaved (e.g. 16,64)")
    parser.add_argument("--smoke", action="store_true", help="one short round (a test that the script runs)")
    parser.add_argument("--json-out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument("--md-out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    if args.compare_run_sizes:
        sizes = [int(v) for v in args.compare_run_sizes.split(",")]
        compared = compare_run_sizes(args.models or sorted(m.name for m in bundled_models()), sizes,
                                     rounds=1 if args.smoke else args.rounds, min_time=0.01 if args.smoke else 0.3)
        for name, by_rows in compared["us_per_shower"].items():
            cells = ", ".join(f"{rows} rows {us:.1f} µs ({compared['round_spread'][name][rows]:.0%})"
                              for rows, us in by_rows.items())
            print(f"{name}: {cells} per shower")
        if args.json_out:
            args.json_out.write_text(json.dumps(compared, indent=1))
        return 0
    result = measure(args.models or None, rows=args.rows, rounds=1 if args.smoke else args.rounds,
                     min_time=0.01 if args.smoke else 0.3)
    text = render_markdown(result)
    print(text)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))
    if args.md_out:
        args.md_out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
