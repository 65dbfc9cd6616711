"""Decode throughput of a decoder with ONNX Runtime against the sgemm limit, fp32 and int8.

Sweeps batch size x threads x precision with :func:`fastsim.bench.run` (the
``fastsim bench`` measurement) and writes its JSON document. The int8 variant
is made on the fly with :func:`training.quantize.quantize_model` in a
temporary folder (beside a copy of the model) unless it already exists beside
the model as NAME-int8.onnx.

    .venv/bin/python benchmarks/bench_decode.py exported/calo-electron.onnx --json-out /tmp/decode.json
    .venv/bin/python benchmarks/bench_decode.py MODEL --smoke --json-out /tmp/decode.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastsim import bench  # noqa: E402
from fastsim.models import resolve_model  # noqa: E402

__all__ = ["measure"]

SMOKE = {"batch_sizes": [1, 16, 64], "min_time": 0.02, "limit_size": 256, "generator_n": 1024}
FULL = {"batch_sizes": list(bench.DEFAULT_BATCH_SIZES), "min_time": 0.5, "limit_size": 2048, "generator_n": 32768}


def measure(model: str, *, smoke: bool = False, precisions: tuple[str, ...] = ("fp32", "int8"),
            threads: list[int] | None = None) -> dict:
    """The decode sweep document for ``model`` (see :func:`fastsim.bench.run`)."""
    settings = SMOKE if smoke else FULL
    path = resolve_model(model)
    with tempfile.TemporaryDirectory(prefix="fastsim-bench-") as tmp:
        if "int8" in precisions and not bench.variant_path(path, "int8").is_file():
            from training.quantize import quantize_model

            copy = Path(tmp) / path.name
            shutil.copyfile(path, copy)
            quantize_model(copy, bench.variant_path(copy, "int8"))
            path = copy
        threads = threads or ([1] if smoke else sorted({1, bench.physical_cores()}))
        doc = bench.run(path, batch_sizes=settings["batch_sizes"], threads=threads, precisions=precisions,
                        min_time=settings["min_time"], limit_size=settings["limit_size"],
                        generator_n=settings["generator_n"])
    doc["model"]["path"] = str(resolve_model(model))
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="default", help="bundled model name or .onnx path")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--precisions", default="fp32,int8", help="comma-separated: fp32, int8, fp16")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts")
    parser.add_argument("--json-out", type=Path, default=None, help="write the JSON document here")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")] if args.threads else None
    doc = measure(args.model, smoke=args.smoke, precisions=tuple(args.precisions.split(",")), threads=threads)
    text = json.dumps(doc, indent=2)
    if args.json_out:
        args.json_out.write_text(text)
    print(bench.format_table(bench.DecodePoint(**p) for p in doc["points"]))


if __name__ == "__main__":
    main()
