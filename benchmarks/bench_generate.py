"""End-to-end generation: to memory, to HDF5 (library and CLI), and peak memory against n.

- in memory: ``Generator.generate(n)``, and ``Generator.decode`` of one batch
  of the runtime's default size (the same decoding, without the prior, the
  conditions and the copies) as the ceiling;
- to HDF5: ``Generator.write(path, n)`` (the writer thread overlaps the next
  decode) and the ``fastsim generate -o FILE.h5 --json`` command (its own
  summary figure), uncompressed, on the local disk of the temporary folder;
- raw write: the same bytes written by one thread with plain ``os.write`` and
  nothing decoding -- the page-cache cost the writer thread adds to decoding;
- peak RSS: ``fastsim generate`` in a child process at two values of n (10^5
  and 10^6 by default; the files are deleted afterwards), read from the
  rusage of a small wrapper process's children: flat in n means the writer streams.

    .venv/bin/python benchmarks/bench_generate.py exported/calo-electron.onnx --json-out /tmp/gen.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import fastsim  # noqa: E402
from fastsim import bench  # noqa: E402
from fastsim.generator import DEFAULT_BATCH_SIZE  # noqa: E402

__all__ = ["measure", "peak_rss"]


# The command is started from a small wrapper process, not from this one: a child's
# ru_maxrss keeps the high-water mark of the image it was forked from (Linux carries it
# across exec), and this process holds gigabytes of showers by the time it gets here.
def peak_rss(command: list[str]) -> dict:
    """Run ``command`` as a child and return its peak resident set (MiB), wall time and exit status."""
    wrapper = (
        "import json, os, resource, subprocess, sys, time\n"
        "t0 = time.perf_counter()\n"
        "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc': proc.returncode, 'maxrss_kib': usage.ru_maxrss, "
        "'seconds': time.perf_counter() - t0, 'stdout': proc.stdout, 'stderr': proc.stderr[-2000:]}))\n"
    )
    result = json.loads(subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True,
                                       text=True, check=True).stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(command)} failed: {result['stderr'].strip()[-500:]}")
    # ru_maxrss is in KiB on Linux.
    return {"peak_rss_mib": result["maxrss_kib"] / 1024, "seconds": result["seconds"], "stdout": result["stdout"]}


def raw_write_rate(path: Path, n: int, n_voxels: int, batch: int = DEFAULT_BATCH_SIZE) -> dict:
    """Showers/s at which one thread writes the same bytes to a new file, nothing else running.

    Plain ``os.write`` of one batch-sized float32 buffer over and over: the
    kernel's cost of taking new data into the page cache on this disk, which
    the writer thread of ``Generator.write`` pays on top of decoding.
    """
    block = memoryview(np.ones((batch, n_voxels), dtype=np.float32)).cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0, t_cpu = time.perf_counter(), time.thread_time()
        for _ in range(0, n, batch):
            os.write(fd, block)
        seconds, cpu = time.perf_counter() - t0, time.thread_time() - t_cpu
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    rows = -(-n // batch) * batch
    return {"showers_per_s": rows / seconds, "cpu_us_per_shower": 1e6 * cpu / rows}


def _median_rate(fn, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def measure(model: str, *, smoke: bool = False, tmp_dir: str | None = None,
            rss_sizes: tuple[int, ...] | None = None) -> dict:
    n = 2048 if smoke else 65536
    repeats = 1 if smoke else 3
    rss_sizes = rss_sizes or ((1000, 10000) if smoke else (100_000, 1_000_000))
    generator = fastsim.load(model, device="cpu")
    path = generator.path
    spec = generator.spec
    result: dict = {
        "kind": "fastsim-bench-generate/1",
        "machine": bench.machine_info(),
        "model": {"path": str(path), "name": spec.name},
        "n": n,
        "batch_size": DEFAULT_BATCH_SIZE,
        "threads": bench.physical_cores(),
    }
    generator.generate(min(n, 4096), seed=99)  # warm-up
    result["memory"] = {"showers_per_s": _median_rate(lambda: generator.generate(n, seed=1), n, repeats)}

    # The ceiling: decode only, one preallocated buffer, the runtime's batch size.
    feeds = bench.decode_inputs(spec, DEFAULT_BATCH_SIZE, seed=1)
    z, conditions = feeds[spec.io_names["z"]], feeds[spec.io_names["conditions"]]
    timing = bench.time_calls(lambda: generator.decode(z, conditions), min_time=0.05 if smoke else 1.0)
    result["decode_only"] = {"showers_per_s": DEFAULT_BATCH_SIZE / timing["median_s"], "calls": timing["calls"]}

    work = Path(tempfile.mkdtemp(prefix="fastsim-bench-", dir=tmp_dir))
    try:
        result["disk"] = {"folder": str(work), "free_gib": round(shutil.disk_usage(work).free / 2**30, 1)}
        target = work / "lib.h5"

        def write() -> None:
            generator.write(target, n, seed=1, force=True)

        result["hdf5_library"] = {"showers_per_s": _median_rate(write, n, repeats),
                                  "bytes_per_shower": target.stat().st_size / n}
        cli = [sys.executable, "-m", "fastsim.cli", "generate", "--model", str(path), "-n", str(n),
               "--seed", "1", "-o", str(work / "cli.h5"), "--force", "--json"]
        runs = [json.loads(subprocess.run(cli, capture_output=True, text=True, check=True).stdout)
                for _ in range(repeats)]
        result["hdf5_cli"] = {"showers_per_s": statistics.median(r["showers_per_s"] for r in runs),
                              "command": " ".join(cli[1:])}
        result["raw_write"] = raw_write_rate(work / "raw.bin", n, spec.n_voxels)
        for key in ("hdf5_library", "hdf5_cli"):
            result[key]["vs_memory"] = result[key]["showers_per_s"] / result["memory"]["showers_per_s"]
            result[key]["vs_decode_only"] = result[key]["showers_per_s"] / result["decode_only"]["showers_per_s"]
        (work / "lib.h5").unlink(missing_ok=True)
        (work / "cli.h5").unlink(missing_ok=True)

        rss = []
        for size in rss_sizes:
            out = work / f"rss-{size}.h5"
            command = [sys.executable, "-m", "fastsim.cli", "generate", "--model", str(path), "-n", str(size),
                       "--seed", "2", "-o", str(out), "--force", "--json"]
            figures = peak_rss(command)
            summary = json.loads(figures.pop("stdout"))
            rss.append({"n": size, "peak_rss_mib": round(figures["peak_rss_mib"], 1),
                        "showers_per_s": summary["showers_per_s"], "file_gib": round(out.stat().st_size / 2**30, 3)})
            out.unlink()
        result["peak_rss"] = rss
        result["peak_rss_ratio"] = rss[-1]["peak_rss_mib"] / rss[0]["peak_rss_mib"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="default", help="bundled model name or .onnx path")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--tmp-dir", default=None, help="folder for the HDF5 files (default: the system temp)")
    parser.add_argument("--rss-sizes", default=None, help="comma-separated n for the peak-RSS runs")
    parser.add_argument("--json-out", type=Path, default=None, help="write the JSON document here")
    args = parser.parse_args(argv)
    sizes = tuple(int(x) for x in args.rss_sizes.split(",")) if args.rss_sizes else None
    doc = measure(args.model, smoke=args.smoke, tmp_dir=args.tmp_dir, rss_sizes=sizes)
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))
    print(f"memory {doc['memory']['showers_per_s']:,.0f}/s, decode-only {doc['decode_only']['showers_per_s']:,.0f}/s, "
          f"HDF5 library {doc['hdf5_library']['showers_per_s']:,.0f}/s ({doc['hdf5_library']['vs_memory']:.2f} of "
          f"memory), CLI {doc['hdf5_cli']['showers_per_s']:,.0f}/s; peak RSS "
          + ", ".join(f"{r['peak_rss_mib']:.0f} MiB at n={r['n']}" for r in doc["peak_rss"]))


if __name__ == "__main__":
    main()
