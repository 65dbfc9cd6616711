"""What alpha symmetry by construction costs on inclined showers: the best a symmetric decoder could do.

A decoder whose sectors of a ring share one mean (the ring model, or a
general model without harmonics) makes the sectors of a ring exchangeable:
at best it reproduces each shower's ring energies and voxel fluctuations, but
not where in alpha they sit. This script writes that best case -- every
shower of a reference file with the sectors of each ring shuffled (a random
permutation per shower and ring, seeded), conditions kept -- so
``fastsim validate`` can score it like a model. At normal incidence it scores
like an independent reference; what it loses with theta is what symmetry by
construction costs:

    python -m benchmarks.bench_symmetric_bound data/d2inc/heldout.h5 symmetric.h5
    fastsim validate symmetric.h5 data/d2inc/heldout.h5 --floor-reference data/d2inc/floor.h5 \\
        --metrics inclined-shape,theta-bins --geometry 2 -o report-symmetric

Uniform binnings only (datasets 2 and 3).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np

from fastsim.geometry import CylindricalGeometry, default_geometry

__all__ = ["symmetrise"]


def symmetrise(source: str | Path, output: str | Path, geometry: CylindricalGeometry | None = None,
               chunk: int = 2000, seed: int = 0) -> int:
    """Write ``source``'s showers with the sectors of each ring shuffled; returns the shower count."""
    rng = np.random.default_rng(seed)
    geometry = geometry or default_geometry()
    if not geometry.uniform:
        raise ValueError("geometry: the symmetric bound needs a uniform binning")
    with h5py.File(source, "r") as src, h5py.File(output, "w") as dst:
        n = src["showers"].shape[0]
        for key in src:
            if key != "showers":
                src.copy(key, dst)
        out = dst.create_dataset("showers", shape=src["showers"].shape, dtype="float32")
        for start in range(0, n, chunk):
            block = geometry.reshape(np.asarray(src["showers"][start:start + chunk], np.float32))
            order = np.argsort(rng.random(block.shape), axis=2)  # (N, layer, alpha, radial): per ring
            shuffled = np.take_along_axis(block, order, axis=2)
            out[start:start + len(block)] = shuffled.reshape(len(block), -1)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_symmetric_bound",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("source", help="reference showers (CaloChallenge HDF5, uniform binning)")
    parser.add_argument("output", help="where to write the symmetrised showers")
    parser.add_argument("--binning", default=None, help="binning XML (default: dataset 2)")
    args = parser.parse_args(argv)
    geometry = CylindricalGeometry.from_xml(args.binning) if args.binning else None
    n = symmetrise(args.source, args.output, geometry)
    print(f"wrote {n} symmetrised showers to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
