"""The PyTorch-eager peer: the same decoder and weights in torch, over the same batch sizes and threads.

The peer is :class:`torch_peer.TorchDecoder` (the ONNX graph executed op by op
with torch eager calls, weights from the file's initializers), run under
``torch.inference_mode()`` with ``torch.set_num_threads(threads)`` — the
thread count ONNX Runtime gets. Before timing, its output is compared with
ONNX Runtime's on the same inputs (``parity`` in the result); a peer that does
not compute the same showers is not timed. Each call returns a new tensor, as
eager inference does; the median of calls is reported.

    .venv/bin/python benchmarks/bench_torch.py exported/calo-electron.onnx --json-out /tmp/torch.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (str(ROOT), str(ROOT / "benchmarks")):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import torch  # noqa: E402

from fastsim import bench  # noqa: E402
from fastsim.models import resolve_model  # noqa: E402
from fastsim.spec import read_spec  # noqa: E402
from torch_peer import TorchDecoder, check_parity  # noqa: E402

__all__ = ["measure"]

SMOKE = {"batch_sizes": [1, 16, 64], "min_time": 0.02}
FULL = {"batch_sizes": list(bench.DEFAULT_BATCH_SIZES), "min_time": 0.5}
#: Parity the peer must meet before it is timed (relative, on each shower's summed energy).
PARITY_TOLERANCE = 1e-4


def measure(model: str, *, smoke: bool = False, threads: list[int] | None = None) -> dict:
    settings = SMOKE if smoke else FULL
    path = resolve_model(model)
    spec = read_spec(path)
    threads = threads or ([1] if smoke else sorted({1, bench.physical_cores()}))
    parity = check_parity(path, bench.decode_inputs(spec, 256, seed=1))
    if parity["max_rel_diff_total"] > PARITY_TOLERANCE:
        raise SystemExit(f"torch peer disagrees with ONNX Runtime: {parity}")
    peer = TorchDecoder(path).eval()
    budget = bench._available_memory() // 2
    points = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for batch in settings["batch_sizes"]:
            point = {"threads": n_threads, "batch_size": batch}
            if 8 * batch * spec.n_voxels * 4 > budget:
                point["skipped"] = "does not fit in the memory budget"
                points.append(point)
                continue
            feeds = bench.decode_inputs(spec, batch, seed=0)
            inputs = [torch.from_numpy(feeds[name]) for name in peer.input_names]

            def call() -> None:
                with torch.inference_mode():
                    peer(*inputs)

            timing = bench.time_calls(call, min_time=settings["min_time"])
            point.update(showers_per_s=batch / timing["median_s"], best_showers_per_s=batch / timing["best_s"],
                         us_per_shower=1e6 * timing["median_s"] / batch, calls=timing["calls"])
            points.append(point)
    return {
        "kind": "fastsim-bench-torch/1",
        "machine": bench.machine_info(),
        "torch": {"version": torch.__version__, "mkldnn": torch.backends.mkldnn.is_available(),
                  "config": torch.__config__.show().splitlines()[:3]},
        "model": {"path": str(path), "name": spec.name},
        "peer": "ONNX graph executed op by op with torch eager calls (benchmarks/torch_peer.py)",
        "parity": parity,
        "points": points,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="default", help="bundled model name or .onnx path")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts")
    parser.add_argument("--json-out", type=Path, default=None, help="write the JSON document here")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")] if args.threads else None
    doc = measure(args.model, smoke=args.smoke, threads=threads)
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))
    for p in doc["points"]:
        if "showers_per_s" in p:
            print(f"torch threads={p['threads']} batch={p['batch_size']}: {p['showers_per_s']:,.0f} showers/s")


if __name__ == "__main__":
    main()
