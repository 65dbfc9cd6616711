"""Where a decoder's time goes: ONNX Runtime's own profiler, per operator type and per node.

One single-threaded session decodes the same 64-row run (the runtime's CPU run
size for dataset 2's 6480 voxels) repeatedly with profiling on; node kernel times are summed per operator
type and per node, with the shape each node writes. This is what showed that
the bundled model is element-wise bound (matrix products a few per cent of the
time) and which element-wise operators cost most. Profiling adds a small fixed
cost per node, so the per-shower time here is a little above the plain one;
the shares are the figures to read.

    .venv/bin/python benchmarks/bench_profile.py exported/calo-electron.onnx --json-out benchmarks/results/profile.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from fastsim import bench  # noqa: E402
from fastsim.models import resolve_model  # noqa: E402
from fastsim.spec import read_spec  # noqa: E402

__all__ = ["measure", "render_markdown"]

ROWS = 64
MATRIX_OPS = {"Gemm", "MatMul", "Conv", "ConvTranspose"}


def measure(model: str, *, rows: int = ROWS, runs: int = 200, top: int = 15) -> dict:
    """Profile ``runs`` decodes of ``rows`` showers on one thread; shares per op type and top nodes."""
    path = resolve_model(model)
    spec = read_spec(path)
    feeds = bench.decode_inputs(spec, rows, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        for _ in range(10):
            session.run(None, feeds)
        start = time.perf_counter()
        for _ in range(runs):
            session.run(None, feeds)
        seconds = time.perf_counter() - start
        events = json.loads(Path(session.end_profiling()).read_text())
    per_type: collections.Counter = collections.Counter()
    per_node: collections.Counter = collections.Counter()
    nodes: dict[str, dict] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name, args = event["name"][: -len("_kernel_time")], event["args"]
        per_type[args["op_name"]] += event["dur"]
        per_node[name] += event["dur"]
        nodes[name] = {"op": args["op_name"], "output": args.get("output_type_shape")}
    total = sum(per_type.values()) or 1
    matrix = sum(v for k, v in per_type.items() if k in MATRIX_OPS)
    return {
        "model": os.fspath(path),
        "rows_per_run": rows,
        "runs": runs,
        "us_per_shower_profiled": round(1e6 * seconds / runs / rows, 2),
        "nodes": len(nodes),
        "matrix_share": round(matrix / total, 4),
        "op_types": [{"op": k, "share": round(v / total, 4), "nodes": sum(1 for n in nodes.values() if n["op"] == k)}
                     for k, v in per_type.most_common()],
        "top_nodes": [{"node": k, **nodes[k], "share": round(v / total, 4)} for k, v in per_node.most_common(top)],
        "machine": bench.machine_info(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def render_markdown(doc: dict) -> str:
    lines = [f"# Where the time goes: `{Path(doc['model']).name}`", "",
             f"ONNX Runtime profiler, CPU provider, 1 thread, {doc['runs']} runs of {doc['rows_per_run']} showers "
             f"({doc['us_per_shower_profiled']} µs per shower with profiling on; {doc['nodes']} nodes). "
             f"Matrix products: {100 * doc['matrix_share']:.1f} % of kernel time.", "",
             f"Command: `{doc['command']}`", "",
             "| operator | share of kernel time | nodes |", "|---|---:|---:|"]
    lines += [f"| {row['op']} | {100 * row['share']:.1f} % | {row['nodes']} |" for row in doc["op_types"]]
    lines += ["", "| node | operator | output | share |", "|---|---|---|---:|"]
    for row in doc["top_nodes"]:
        shapes = ", ".join(f"{t} {s}" for out in (row["output"] or []) for t, s in out.items())
        lines.append(f"| `{row['node']}` | {row['op']} | {shapes} | {100 * row['share']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="default", help="bundled model name or .onnx path")
    parser.add_argument("--runs", type=int, default=200, help="profiled runs (default 200)")
    parser.add_argument("--json-out", type=Path, default=None, help="write the JSON document here (and a .md beside it)")
    args = parser.parse_args(argv)
    doc = measure(args.model, runs=args.runs)
    markdown = render_markdown(doc)
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))
        args.json_out.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
