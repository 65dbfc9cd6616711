"""Every throughput benchmark in one run on one machine: JSON, a Markdown table and a plot.

    .venv/bin/python -m benchmarks.run_all exported/calo-electron.onnx            # ~5 min on 2 cores
    .venv/bin/python -m benchmarks.run_all MODEL --reference-data data/val.h5     # + int8 fidelity
    .venv/bin/python -m benchmarks.run_all MODEL --smoke --out /tmp/bench          # seconds (tests)

Each part runs in its own child process (so thread pools, memory arenas and
torch never share a process with what they are compared against), in this
order: the limits and the ONNX Runtime sweep (``bench_decode.py``: sgemm
limit, fp32 and int8), the PyTorch-eager peer (``bench_torch.py``), the
reference simulator on the same energies (``bench_reference.py``), end-to-end
generation to memory and HDF5 with peak RSS (``bench_generate.py``), the ONNX
Runtime settings (``bench_tuning.py``), and, with ``--reference-data``, the
int8 fidelity cost (``bench_fidelity.py``). GPU parts are recorded as not
measured when the machine has no GPU.

Writes to ``--out`` (default ``benchmarks/results``; with ``--smoke`` a new
temporary folder unless ``--out`` is given): ``throughput.json`` (everything:
machine, versions, commands, figures, load averages), ``throughput.md`` (the
headline ratios and tables the README quotes) and ``throughput.png``
(showers/s against batch size).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

__all__ = ["headline", "main", "render_markdown"]

PARTS = ("decode", "torch", "reference", "generate", "tuning")
TARGETS = {
    "fraction_of_limit": 0.9,
    "vs_torch": 1.9,
    "vs_reference": 30.0,
    "hdf5_vs_memory": 0.9,
    "us_per_shower": 100.0,
}


def _run_part(name: str, args: list[str], out: Path, log) -> dict:
    """Run benchmarks/bench_NAME.py in a child process; return its JSON document plus the command."""
    json_out = out / f".{name}.json"
    command = [sys.executable, str(HERE / f"bench_{name}.py"), *args, "--json-out", str(json_out)]
    log(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command[1:])}")
    began = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        log(proc.stderr[-2000:])
        return {"error": f"exit status {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}",
                "command": " ".join(command[1:])}
    doc = json.loads(json_out.read_text())
    json_out.unlink()
    doc["command"] = " ".join(["python", *command[1:-2]])
    doc["wall_s"] = round(time.perf_counter() - began, 1)
    log(proc.stdout.strip())
    return doc


def _best(points: list[dict], **match) -> dict | None:
    chosen = [p for p in points if p.get("showers_per_s") and all(p.get(k) == v for k, v in match.items())]
    return max(chosen, key=lambda p: p["showers_per_s"]) if chosen else None


def headline(results: dict) -> dict:
    """The ratios the issue asks for, from one run's results (None where a part did not run)."""
    h: dict = {}
    decode = results.get("decode", {})
    points = decode.get("points", [])
    cores = max((p["threads"] for p in points), default=None)
    if points:
        measured = [p for p in points if p["precision"] == "fp32" and p["threads"] == cores and p.get("showers_per_s")]
        largest = max(measured, key=lambda p: p["batch_size"]) if measured else None
        best = _best(points, precision="fp32", threads=cores)
        h["threads"] = cores
        h["large_batch"] = largest and {"batch_size": largest["batch_size"], "showers_per_s": largest["showers_per_s"],
                                        "fraction_of_limit": largest["fraction_of_limit"]}
        h["best_fp32"] = best and {"batch_size": best["batch_size"], "showers_per_s": best["showers_per_s"],
                                   "us_per_shower": best["us_per_shower"],
                                   "fraction_of_limit": best["fraction_of_limit"]}
        int8 = _best(points, precision="int8", threads=cores)
        if int8 and best:
            h["int8"] = {"batch_size": int8["batch_size"], "showers_per_s": int8["showers_per_s"],
                         "speedup_vs_fp32": int8["showers_per_s"] / best["showers_per_s"]}
        rates = {g["threads"]: g for g in decode.get("generator", [])}
        if cores in rates:
            g = rates[cores]
            h["generator"] = {"threads": cores, "n": g["n"], "showers_per_s": g["showers_per_s"],
                              "us_per_shower": g["us_per_shower"], "fraction_of_limit": g["fraction_of_limit"]}
        limit = (decode.get("limits") or {}).get(str(cores))
        h["limit_gflops"] = limit and limit["flop_per_s"] / 1e9
        h["flops_per_shower"] = decode.get("model", {}).get("flops_per_shower")
    torch_doc = results.get("torch", {})
    if points and torch_doc.get("points"):
        by_threads = {}
        rates = {g["threads"]: g for g in decode.get("generator", [])}
        for t in sorted({p["threads"] for p in points}):
            peer, ours = _best(torch_doc["points"], threads=t), _best(points, precision="fp32", threads=t)
            if peer and ours:
                by_threads[str(t)] = {"ratio_best_vs_best": ours["showers_per_s"] / peer["showers_per_s"],
                                      "onnxruntime_best": {"batch_size": ours["batch_size"],
                                                           "showers_per_s": ours["showers_per_s"]},
                                      "torch_best": {"batch_size": peer["batch_size"],
                                                     "showers_per_s": peer["showers_per_s"]}}
                if t in rates:
                    # fastsim as a user runs it (generate(), CPU runs spread over t workers)
                    # against torch eager's best batch on t threads.
                    by_threads[str(t)]["generate_vs_torch_best"] = rates[t]["showers_per_s"] / peer["showers_per_s"]
        if str(cores) in by_threads:
            h["vs_torch"] = {**by_threads[str(cores)], "by_threads": by_threads}
    ref = results.get("reference", {})
    if ref.get("speedup"):
        h["vs_reference"] = {"reference_showers_per_s": ref["reference"]["showers_per_s"],
                             "speedup_by_threads": ref["speedup"]}
    gen = results.get("generate", {})
    if gen.get("memory"):
        h["generate"] = {
            "memory_showers_per_s": gen["memory"]["showers_per_s"],
            "decode_only_showers_per_s": gen["decode_only"]["showers_per_s"],
            "hdf5_showers_per_s": gen["hdf5_library"]["showers_per_s"],
            "hdf5_vs_memory": gen["hdf5_library"]["vs_memory"],
            "cli_hdf5_vs_memory": gen["hdf5_cli"]["vs_memory"],
            "raw_write": gen.get("raw_write"),
            "peak_rss": gen["peak_rss"],
        }
    return h


def _fmt(value, spec: str = ",.0f", none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def _threads(n) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"


def _status(value, target, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**not met**"


def render_markdown(results: dict) -> str:
    """The Markdown page: machine, headline table with targets, sweep table, tuning table, GPU status."""
    lines = _intro(results) + _headline_table(results) + _decode_table(results) + _tuning_table(results)
    lines += _fidelity_table(results)
    errors = {k: v["error"] for k, v in results["parts"].items() if isinstance(v, dict) and "error" in v}
    if errors:
        lines += ["## Parts that failed", ""] + [f"- {k}: {v}" for k, v in errors.items()] + [""]
    return "\n".join(lines)


def _intro(results: dict) -> list[str]:
    """Where and how it was measured: machine, versions, load, model, command."""
    h = results["headline"]
    machine = results["machine"]
    lines = [
        "# fastsim throughput",
        "",
        f"Measured {results['date']} on {machine['cpu']} ({machine['physical_cores']} physical cores, "
        f"{machine.get('memory_gib')} GiB, {', '.join(machine['simd'])}), {machine['platform']}; "
        f"onnxruntime {machine['versions']['onnxruntime']}, numpy {machine['versions']['numpy']}, "
        f"fastsim {machine['versions']['fastsim']}. Load average at start {machine['loadavg']} "
        "(the machine may be shared: see each part's load in throughput.json). "
        f"Model: `{results['model']}`"
        + (f", {h['flops_per_shower'] / 1e6:.2f} MFLOP per shower" if h.get("flops_per_shower") else "") + ".",
        "",
        f"Command: `{results['command']}`" + (" (smoke mode: tiny sizes, figures not meaningful)"
                                               if results.get("smoke") else ""),
        "",
    ]
    if results.get("model_training"):
        lines += [f"Model training data (from its spec): {results['model_training']}", ""]
    if results.get("note"):
        lines += [f"Note: {results['note']}", ""]
    return lines


def _headline_table(results: dict) -> list[str]:
    """Each headline figure against its target, one row per measurement that was made."""
    h = results["headline"]
    cores = h.get("threads")
    lines = [
        "| measurement | figure | target | status |",
        "|---|---|---|---|",
    ]
    lines += _decode_rows(h, cores)
    if h.get("vs_torch"):
        lines.append(_vs_torch_row(h["vs_torch"], cores))
    if h.get("vs_reference"):
        lines.append(_vs_reference_row(h["vs_reference"]))
    if h.get("generate"):
        lines += _generate_rows(h["generate"])
    if h.get("int8"):
        i = h["int8"]
        lines.append(f"| int8 (dynamic quantisation) / fp32, best batch each | {i['speedup_vs_fp32']:.2f}x "
                     f"({_fmt(i['showers_per_s'])} showers/s at batch {i['batch_size']}) | speed-up, fidelity "
                     "measured | see below |")
    lines += ["| GPU: host-output throughput / device-to-host bound; ≤ 1 µs per shower on one H100 "
              f"| {results['gpu']} | ≥ 0.8; ≤ 1 µs | not measured |", ""]
    return lines


def _decode_rows(h: dict, cores) -> list[str]:
    """Decoding against the sgemm limit (largest and best batch) and the time per shower."""
    lines = []
    if h.get("large_batch"):
        lb = h["large_batch"]
        lines.append(f"| decode fp32, largest batch ({lb['batch_size']}), {_threads(cores)}: fraction of sgemm limit "
                     f"({_fmt(h.get('limit_gflops'), '.0f')} GFLOP/s) | {_fmt(lb['fraction_of_limit'], '.2f')} "
                     f"({_fmt(lb['showers_per_s'])} showers/s) | ≥ {TARGETS['fraction_of_limit']} "
                     f"| {_status(lb['fraction_of_limit'], TARGETS['fraction_of_limit'])} |")
    if h.get("best_fp32"):
        b = h["best_fp32"]
        lines.append(f"| decode fp32, best batch ({b['batch_size']}), {_threads(cores)}: fraction of sgemm limit "
                     f"| {_fmt(b['fraction_of_limit'], '.2f')} ({_fmt(b['showers_per_s'])} showers/s) "
                     f"| ≥ {TARGETS['fraction_of_limit']} "
                     f"| {_status(b['fraction_of_limit'], TARGETS['fraction_of_limit'])} |")
    if h.get("generator"):
        g = h["generator"]
        lines.append(f"| `generate({g['n']})` in memory, fp32, {_threads(cores)} (the runtime's own path) "
                     f"| {_fmt(g['showers_per_s'])} showers/s = {_fmt(g['us_per_shower'], '.1f')} µs/shower; "
                     f"{_fmt(g['fraction_of_limit'], '.3f')} of the limit | ≤ {TARGETS['us_per_shower']:.0f} µs "
                     f"| {_status(g['us_per_shower'], TARGETS['us_per_shower'], higher_is_better=False)} |")
    elif h.get("best_fp32"):
        b = h["best_fp32"]
        lines.append(f"| µs per shower, fp32, best batch, {_threads(cores)} | {_fmt(b['us_per_shower'], '.1f')} µs "
                     f"| ≤ {TARGETS['us_per_shower']:.0f} µs | "
                     f"{_status(b['us_per_shower'], TARGETS['us_per_shower'], higher_is_better=False)} |")
    return lines


def _vs_torch_row(t: dict, cores) -> str:
    """ONNX Runtime against the PyTorch-eager peer, per thread count."""
    def one(k: str, v: dict) -> str:
        text = (f"{k} thread(s): {v['ratio_best_vs_best']:.2f}x ({_fmt(v['onnxruntime_best']['showers_per_s'])} "
                f"vs {_fmt(v['torch_best']['showers_per_s'])} showers/s")
        if "generate_vs_torch_best" in v:
            text += f"; `generate()` {v['generate_vs_torch_best']:.2f}x"
        return text + ")"

    per = "; ".join(one(k, v) for k, v in t["by_threads"].items())
    return (f"| ONNX Runtime / PyTorch eager, best batch of each | {per} | ≥ {TARGETS['vs_torch']}x "
            f"| {_status(t['ratio_best_vs_best'], TARGETS['vs_torch'])} at {_threads(cores)}"
            + ("" if all(v["ratio_best_vs_best"] >= TARGETS["vs_torch"] for v in t["by_threads"].values())
               else ", **not at every thread count**") + " |")


def _vs_reference_row(r: dict) -> str:
    """The surrogate against the reference simulator on the same energies."""
    best_threads = max(r["speedup_by_threads"], key=lambda k: r["speedup_by_threads"][k])
    speedup = r["speedup_by_threads"][best_threads]
    per = ", ".join(f"{v:,.1f}x on {k} thread(s)" for k, v in r["speedup_by_threads"].items())
    return (f"| surrogate / reference simulator, same energies, in memory | {per} (simulator "
            f"{_fmt(r['reference_showers_per_s'])} showers/s, one process) "
            f"| ≥ {TARGETS['vs_reference']:.0f}x "
            f"| {_status(speedup, TARGETS['vs_reference'])} |")


def _generate_rows(g: dict) -> list[str]:
    """End-to-end generation: HDF5 against memory, and the peak RSS as n grows."""
    raw = g.get("raw_write")
    raw_text = (f"; writing the same bytes alone, one thread: {_fmt(raw['showers_per_s'])} showers/s, "
                f"{raw['cpu_us_per_shower']:.1f} µs CPU per shower" if raw else "")
    rss = g["peak_rss"]
    growth = rss[-1]["peak_rss_mib"] / rss[0]["peak_rss_mib"]
    return [
        f"| HDF5 end-to-end / in-memory generate | {_fmt(g['hdf5_vs_memory'], '.2f')} "
        f"({_fmt(g['hdf5_showers_per_s'])} vs {_fmt(g['memory_showers_per_s'])} showers/s; CLI "
        f"{_fmt(g['cli_hdf5_vs_memory'], '.2f')}{raw_text}) | ≥ {TARGETS['hdf5_vs_memory']} "
        f"| {_status(g['hdf5_vs_memory'], TARGETS['hdf5_vs_memory'])} |",
        "| peak RSS of `fastsim generate` to HDF5 | "
        + " → ".join(f"{r['peak_rss_mib']:.0f} MiB (n={r['n']:,})" for r in rss)
        + f" | flat in n | {'met' if growth < 1.1 else '**not met**'} ({growth:.2f}x) |",
    ]


def _decode_table(results: dict) -> list[str]:
    """Showers/s against batch size, per precision and thread count, beside the PyTorch peer; the limits."""
    decode = results["parts"].get("decode", {})
    if not decode.get("points"):
        return []
    torch_doc = results["parts"].get("torch", {})
    torch_rate = {(p["threads"], p["batch_size"]): p.get("showers_per_s") for p in torch_doc.get("points", [])}
    precisions = list(dict.fromkeys(p["precision"] for p in decode["points"]))
    threads = sorted({p["threads"] for p in decode["points"]})
    header = "| batch | " + " | ".join(f"{pr} {t}T showers/s (fraction)" for pr in precisions for t in threads)
    header += " | " + " | ".join(f"torch {t}T showers/s" for t in threads) + " |"
    lines = ["## Decode throughput against batch size (ONNX Runtime, IO binding; PyTorch eager peer)", "",
             header, "|" + "---:|" * (1 + len(precisions) * len(threads) + len(threads))]
    index = {(p["precision"], p["threads"], p["batch_size"]): p for p in decode["points"]}
    for batch in sorted({p["batch_size"] for p in decode["points"]}):
        cells = []
        for pr in precisions:
            for t in threads:
                p = index.get((pr, t, batch))
                if p is None or not p.get("showers_per_s"):
                    cells.append("skipped")
                else:
                    cells.append(f"{p['showers_per_s']:,.0f} ({_fmt(p.get('fraction_of_limit'), '.2f')})")
        cells += [_fmt(torch_rate.get((t, batch))) for t in threads]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    lines.append("")
    limits = decode.get("limits") or {}
    lines.append("Limits (best of 10 large float32 matmuls, same cores and thread count): "
                 + "; ".join(f"{t} thread(s): {v['flop_per_s'] / 1e9:,.0f} GFLOP/s ({v['source']}; numpy "
                             f"{v['numpy']['flop_per_s'] / 1e9:,.0f})" for t, v in limits.items()) + ".")
    lines.append("")
    return lines


def _tuning_table(results: dict) -> list[str]:
    """The ONNX Runtime CPU settings compared in interleaved rounds."""
    tuning = results["parts"].get("tuning", {})
    if not tuning.get("configs"):
        return []
    lines = [f"## ONNX Runtime CPU settings ({tuning['n']} showers, {tuning['rounds']} interleaved rounds, "
             f"load after {tuning['machine'].get('loadavg_after')})", "",
             "| configuration | showers/s | vs baseline | showers per CPU-second |", "|---|---:|---:|---:|"]
    for row in tuning["configs"]:
        lines.append(f"| {row['name']} | {row['showers_per_s']:,.0f} | {row['vs_baseline']:.2f} "
                     f"| {row['showers_per_cpu_s']:,.0f} |")
    lines.append("")
    return lines


def _fidelity_table(results: dict) -> list[str]:
    """What int8 costs in validation metrics (only with --reference-data)."""
    fidelity = results["parts"].get("fidelity")
    if not (fidelity and fidelity.get("metrics")):
        return [] if results.get("smoke") else ["int8 fidelity: not measured in this run (pass --reference-data FILE).",
                                                ""]
    lines = [f"## int8 fidelity (`fastsim validate` against `{fidelity['reference']['path']}`, "
             f"n = {fidelity['reference']['n']:,})", "", "| metric | fp32 | int8 | difference |",
             "|---|---:|---:|---:|"]
    for name, value in sorted(fidelity["metrics"]["fp32"].items()):
        other = fidelity["metrics"]["int8"].get(name)
        lines.append(f"| {name} | {value:.5f} | {_fmt(other, '.5f')} "
                     f"| {_fmt(fidelity['metrics']['difference'].get(name), '+.5f')} |")
    te = fidelity["total_energy_rel_change"]
    lines += ["", f"Per-shower total energy, int8 vs fp32 (same latents): median relative change "
              f"{te['median']:.2e}, 99th percentile {te['p99']:.2e}, max {te['max']:.2e}.", ""]
    return lines


def plot(results: dict, path: Path) -> Path | None:
    """showers/s against batch size, one line per precision x threads, and the torch peer dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    decode = results["parts"].get("decode", {})
    torch_doc = results["parts"].get("torch", {})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list] = {}
    for p in decode.get("points", []):
        if p.get("showers_per_s"):
            series.setdefault(f"ONNX Runtime {p['precision']}, {p['threads']} thread(s)", []).append(
                (p["batch_size"], p["showers_per_s"]))
    for label, xy in series.items():
        x, y = zip(*sorted(xy), strict=True)
        ax.plot(x, y, marker="o", label=label)
    peer: dict[int, list] = {}
    for p in torch_doc.get("points", []):
        if p.get("showers_per_s"):
            peer.setdefault(p["threads"], []).append((p["batch_size"], p["showers_per_s"]))
    for threads, xy in peer.items():
        x, y = zip(*sorted(xy), strict=True)
        ax.plot(x, y, marker="s", linestyle="--", label=f"PyTorch eager, {threads} thread(s)")
    ref = results["parts"].get("reference", {})
    if ref.get("reference"):
        ax.axhline(ref["reference"]["showers_per_s"], color="grey", linestyle=":", label="reference simulator")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (showers per ONNX Runtime call)")
    ax.set_ylabel("showers / s")
    machine = results["machine"]
    ax.set_title(f"{results['model_name']} on {machine['cpu']} ({machine['physical_cores']} cores)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="default", help="bundled model name or .onnx path")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for tests")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--reference-data", default=None, help="reference HDF5 for the int8 fidelity part")
    parser.add_argument("--tmp-dir", default=None, help="folder for the HDF5 files of the generate part")
    args = parser.parse_args(argv)

    from fastsim import bench
    from fastsim.models import resolve_model
    from fastsim.spec import read_spec

    model = resolve_model(args.model)
    out = args.out or (Path(tempfile.mkdtemp(prefix="fastsim-bench-smoke-")) if args.smoke else HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown part(s) {unknown}; expected some of {','.join(PARTS)}")
    common = [str(model)] + (["--smoke"] if args.smoke else [])
    machine = bench.machine_info()
    results: dict = {
        "kind": "fastsim-bench-all/1",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])]),
        "smoke": args.smoke,
        "model": str(model),
        "model_name": read_spec(model).name,
        "model_training": str(read_spec(model).training.get("data", "")),
        "machine": machine,
        "gpu": "not measured: no GPU on this machine" if not machine["gpu"] else "see parts.gpu",
        "parts": {},
    }
    extra = {"generate": ["--tmp-dir", args.tmp_dir] if args.tmp_dir else []}
    for part in parts:
        results["parts"][part] = _run_part(part, common + extra.get(part, []), out, print)
    if args.reference_data:
        results["parts"]["fidelity"] = _run_part("fidelity", [str(model), args.reference_data]
                                                 + (["--smoke"] if args.smoke else []), out, print)
    results["headline"] = headline(results["parts"])
    results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    (out / "throughput.json").write_text(json.dumps(results, indent=2))
    (out / "throughput.md").write_text(render_markdown(results))
    png = plot(results, out / "throughput.png")
    print(f"wrote {out / 'throughput.json'}, {out / 'throughput.md'}" + (f", {png}" if png else ""))
    failed = [k for k, v in results["parts"].items() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
