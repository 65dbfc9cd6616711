"""Throughput of the C++ embedding example against the Python runtime, same model and threads.

Both sides do the same work per batch of 4096: draw standard-normal latents,
fill the conditions (a constant incident energy) and run the decoder once.
C++: ``fastsim-cpp MODEL --n N --energy E --batch 4096 --threads T --json``
(its own timer covers drawing and Run, not loading the model). Python:
``Generator.generate(N, incident_energy=E, batch_size=4096)`` wall time after
a warm-up call. The runs alternate (C++, Python, C++, ...) so that a shared
machine's changing load hits both alike; each figure is the median of
``--repeats`` runs and the ratio compares those medians. For reference the
C++ demo is also timed at batch 1, one shower per Run, the pattern of
examples that call the model once per Geant4 particle. The model is the
bundled exported/calo-electron.onnx, or, before it exists, the synthetic
decoder of the same shape (benchmarks/synthetic_decoder.py), as recorded.

    .venv/bin/python benchmarks/bench_embedding.py --threads 1,2 --n 16384
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fastsim  # noqa: E402
from fastsim.bench import machine_info  # noqa: E402

__all__ = ["cpp_rate", "main", "measure", "python_rate"]

BUNDLED = ROOT / "exported" / "calo-electron.onnx"
RESULTS = ROOT / "benchmarks" / "results"


def build_demo(build_dir: Path) -> Path:
    """Build examples/cpp with its script (headers cached) and return the demo binary."""
    result = subprocess.run([str(ROOT / "examples" / "cpp" / "build.sh"), str(build_dir)],
                            capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    if result.returncode != 0:
        sys.exit(f"bench_embedding: examples/cpp/build.sh failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def cpp_rate(demo: Path, model: Path, *, n: int, batch: int, threads: int, energy: float, seed: int) -> float:
    """Showers/s of one fastsim-cpp run (its own timer: drawing latents and Run, not loading)."""
    out = subprocess.run([str(demo), str(model), "--n", str(n), "--energy", repr(energy), "--batch", str(batch),
                          "--threads", str(threads), "--seed", str(seed), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["showers_per_second"]


def python_rate(generator, *, n: int, batch: int, energy: float, seed: int) -> float:
    """Showers/s of one Generator.generate call (wall time)."""
    start = time.perf_counter()
    generator.generate(n, incident_energy=energy, batch_size=batch, seed=seed)
    return n / (time.perf_counter() - start)


def measure(demo: Path, model: Path, *, n: int, single_n: int, batch: int, threads: int, energy: float,
            repeats: int) -> dict:
    """C++ and Python runs interleaved, so the machine's load drifts over both alike."""
    generator = fastsim.load(model, device="cpu", threads=threads)
    generator.generate(batch, incident_energy=energy, batch_size=batch)  # warm-up
    cpp_rate(demo, model, n=batch, batch=batch, threads=threads, energy=energy, seed=0)  # page cache
    runs: dict[str, list[float]] = {"cpp": [], "python": [], "cpp_batch_1": []}
    for seed in range(repeats):
        runs["cpp"].append(cpp_rate(demo, model, n=n, batch=batch, threads=threads, energy=energy, seed=seed))
        runs["python"].append(python_rate(generator, n=n, batch=batch, energy=energy, seed=seed))
        runs["cpp_batch_1"].append(cpp_rate(demo, model, n=single_n, batch=1, threads=threads, energy=energy,
                                            seed=seed))
    return {key: {"median_showers_per_s": statistics.median(rates), "runs_showers_per_s": rates}
            for key, rates in runs.items()}


def toolchain(build_dir: Path) -> dict:
    cache = (build_dir / "CMakeCache.txt").read_text()
    header = re.search(r"ONNXRUNTIME_INCLUDE_DIR:PATH=(.*)", cache).group(1)
    api = re.search(r"#define ORT_API_VERSION (\d+)", Path(header, "onnxruntime_c_api.h").read_text()).group(1)
    debs = (ROOT / "examples" / "cpp" / "third_party" / ".complete")
    compiler = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return {
        "compiler": compiler,
        "flags": "-O2 -std=c++17",
        "onnxruntime_header_api_version": int(api),
        "header_packages": debs.read_text().split() if debs.is_file() else None,
        "onnxruntime_library": re.search(r"ONNXRUNTIME_LIBRARY:FILEPATH=(.*)", cache).group(1),
    }


def markdown(record: dict) -> str:
    machine = record["machine"]
    lines = [
        "# C++ embedding vs Python runtime: throughput",
        "",
        f"Model: `{record['model']['path']}` ({record['model']['kind']}, {record['model']['n_voxels']} voxels, "
        f"latent {record['model']['latent_dim']}). Batch {record['batch']}, {record['n']} showers per run, "
        f"median of {record['repeats']} runs, incident energy {record['energy_mev']:g} MeV, CPU provider.",
        "",
        f"| threads | C++ fastsim-cpp, batch {record['batch']} (showers/s) | Python Generator.generate, "
        f"batch {record['batch']} (showers/s) | C++ / Python | C++ one shower per Run (showers/s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in record["results"]:
        lines.append(f"| {row['threads']} | {row['cpp']['median_showers_per_s']:,.0f} | "
                     f"{row['python']['median_showers_per_s']:,.0f} | {row['cpp_over_python']:.2f} | "
                     f"{row['cpp_batch_1']['median_showers_per_s']:,.0f} |")
    lines += [
        "",
        f"Machine: {machine['cpu']}, {machine['physical_cores']} physical cores "
        f"({machine['logical_cpus']} logical), {machine['memory_gib']} GiB; load average "
        f"{record['loadavg_before']} before, {record['loadavg_after']} after.",
        f"Versions: onnxruntime {machine['versions']['onnxruntime']} (Python wheel; the C++ demo links the same "
        f"`{Path(record['toolchain']['onnxruntime_library']).name}`), headers ORT_API_VERSION "
        f"{record['toolchain']['onnxruntime_header_api_version']} "
        f"({', '.join(record['toolchain']['header_packages'] or [])}), {record['toolchain']['compiler']}, "
        f"numpy {machine['versions']['numpy']}, Python {machine['python']}.",
        "",
        f"Command: `{record['command']}`",
        "",
        record["note"],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="decoder to time (default: exported/calo-electron.onnx, else a synthetic stand-in)")
    parser.add_argument("--n", type=int, default=16384, help="showers per timed run")
    parser.add_argument("--batch", type=int, default=4096, help="showers per ONNX Runtime Run")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--single-n", type=int, default=1024,
                        help="showers per timed C++ run at batch 1 (one shower per Run, for reference)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (the median is reported)")
    parser.add_argument("--energy", type=float, default=50_000.0, help="incident energy in MeV")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "examples" / "cpp" / "build",
                        help="where to build the C++ demo")
    parser.add_argument("--out", type=Path, default=RESULTS / "embedding",
                        help="results path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        model, kind = args.model, "given"
        if model is None and BUNDLED.is_file():
            model, kind = BUNDLED, "bundled"
        elif model is None:
            from synthetic_decoder import build_decoder
            model = build_decoder(Path(scratch) / "synthetic-calo.onnx")
            kind = "synthetic stand-in (benchmarks/synthetic_decoder.py, default shape): bundled model not exported yet"
        demo = build_demo(args.build_dir)
        spec = fastsim.load(model, device="cpu", threads=1).spec
        loadavg_before = [round(x, 2) for x in os.getloadavg()]
        results = []
        for threads in (int(t) for t in args.threads.split(",")):
            row = measure(demo, model, n=args.n, single_n=args.single_n, batch=args.batch, threads=threads,
                          energy=args.energy, repeats=args.repeats)
            cpp, python = row["cpp"], row["python"]
            results.append({"threads": threads, **row,
                            "cpp_over_python": cpp["median_showers_per_s"] / python["median_showers_per_s"]})
            print(f"threads {threads}: C++ {cpp['median_showers_per_s']:,.0f}/s, "
                  f"Python {python['median_showers_per_s']:,.0f}/s", file=sys.stderr)
        record = {
            "benchmark": "embedding",
            "model": {"path": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else model.name,
                      "kind": kind, "name": spec.name, "latent_dim": spec.latent_dim, "n_voxels": spec.n_voxels},
            "n": args.n, "batch": args.batch, "repeats": args.repeats, "energy_mev": args.energy,
            "results": results,
            "loadavg_before": loadavg_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "machine": machine_info(),
            "toolchain": toolchain(args.build_dir),
            "command": shlex.join([Path(sys.executable).name, "benchmarks/bench_embedding.py", *(argv or sys.argv[1:])]),
            "note": ("Measured on a shared 2-core machine while other jobs were running: the load average above "
                     "says how busy it was, and single figures may be off by tens of percent. Compare the two "
                     "columns of one row (taken back to back), not rows across runs."),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(record, indent=2) + "\n")
    Path(f"{args.out}.md").write_text(markdown(record))
    print(f"wrote {args.out}.json and {args.out}.md", file=sys.stderr)


if __name__ == "__main__":
    main()
