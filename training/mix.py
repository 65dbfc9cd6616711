"""One training file from showers of several particles (or runs) on the same binning.

A model conditioned on the particle type trains on a file whose ``particle``
dataset gives each shower's PDG id. :func:`mix_datasets` writes one from
files of single particles (the reference simulator writes one particle per
file): rows are taken in turn, ``block`` rows from each input while it lasts,
so any leading part of the output (a validation subset, ``max_showers``)
holds every input in proportion. Each input's particle is its ``particle``
dataset, else its ``particle_pdg`` attribute, else electrons (CaloChallenge
files carry none). Inputs with angles keep them; inputs without are normal
incidence (zeros). The binning (and geometry) text of the first input is kept
as attributes and written beside the output (``OUT.xml``,
``OUT.geometry.json``), as the simulator does; every input must carry the
same binning (the particle named in the binning file aside).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastsim._util import atomic_write_text
from fastsim.dataset import particle_column, read_conditions
from fastsim.errors import DataError, OutputError

__all__ = ["mix_datasets"]

#: The per-shower datasets carried over (as (n, 1) columns) beside incident_energies and showers.
ANGLES = ("incident_theta", "incident_phi")


def _particles(f, path: Path, n: int) -> np.ndarray:
    """Each shower's PDG id: the file's checked ``particle`` column, else its one particle (see module doc)."""
    conditions = read_conditions(f, path, n)
    return particle_column(conditions, n, float(f.attrs.get("particle_pdg", 11)))[:, 0].astype(np.int32)


def _layers(f) -> tuple | None:
    """The binning's layers from a file's ``binning_xml`` attribute (the particle name in it aside), if any."""
    from fastsim.geometry import CylindricalGeometry

    text = f.attrs.get("binning_xml")
    return CylindricalGeometry.from_xml(str(text)).layers if text is not None else None


def mix_datasets(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, *, block: int = 256,
                 compression: str | None = "gzip", overwrite: bool = False) -> Path:
    """Interleave the showers of ``inputs`` into ``output`` (CaloChallenge HDF5 with ``particle``).

    Returns the output path. Raises :class:`~fastsim.errors.DataError` for an
    input that is not a shower file or has another binning, and
    :class:`~fastsim.errors.OutputError` for an output that exists (without
    ``overwrite``) or cannot be written.
    """
    import h5py

    from fastsim.geometry import MATERIAL_SUFFIX

    paths = [Path(p) for p in inputs]
    if len(paths) < 2:
        raise DataError(f"inputs: expected two or more shower files, got {len(paths)}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise DataError(f"block: expected a positive integer, got {block!r}")
    output = Path(output)
    if output.exists() and not overwrite:
        raise OutputError(f"output: {output} already exists (pass --force to overwrite)")
    if output.resolve() in {p.resolve() for p in paths if p.exists()}:
        raise OutputError(f"output: {output} is one of the inputs")
    files = []
    try:
        for path in paths:
            try:
                f = h5py.File(path, "r")
            except OSError as exc:
                raise DataError(f"inputs: cannot open {str(path)!r} as HDF5 ({exc})") from None
            files.append(f)
            if "showers" not in f or "incident_energies" not in f:
                raise DataError(f"inputs: {str(path)!r} has no showers/incident_energies datasets (it has {sorted(f)})")
        first = files[0]
        n_voxels = first["showers"].shape[1]
        layers = _layers(first)
        for path, f in zip(paths, files, strict=True):
            theirs = _layers(f)
            if f["showers"].shape[1] != n_voxels or (layers and theirs and theirs != layers):
                raise DataError(f"inputs: {str(path)!r} has another binning than {str(paths[0])!r} "
                                f"({f['showers'].shape[1]} voxels, {n_voxels} expected)")
        sizes = [f["showers"].shape[0] for f in files]
        n = sum(sizes)
        angles = [name for name in ANGLES if any(name in f for f in files)]
        # The order of the output rows: block by block from each input in turn.
        order = []
        starts = [0] * len(files)
        while any(s < size for s, size in zip(starts, sizes, strict=True)):
            for i, size in enumerate(sizes):
                if starts[i] < size:
                    stop = min(size, starts[i] + block)
                    order.append((i, starts[i], stop))
                    starts[i] = stop
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        with h5py.File(partial, "w") as out:
            out.create_dataset("incident_energies", (n, 1), dtype="float64")
            out.create_dataset("showers", (n, n_voxels), dtype="float32", compression=compression,
                               shuffle=compression is not None, chunks=(min(n, 32), n_voxels))
            for name in angles:
                out.create_dataset(name, (n, 1), dtype="float64")
            out.create_dataset("particle", (n, 1), dtype="int32")
            particles = [_particles(f, path, size) for f, path, size in zip(files, paths, sizes, strict=True)]
            row = 0
            for i, lo, hi in order:
                f, k = files[i], hi - lo
                out["incident_energies"][row:row + k] = np.asarray(f["incident_energies"][lo:hi]).reshape(k, 1)
                out["showers"][row:row + k] = f["showers"][lo:hi]
                for name in angles:
                    out[name][row:row + k] = np.asarray(f[name][lo:hi]).reshape(k, 1) if name in f else 0.0
                out["particle"][row:row + k] = particles[i][lo:hi, None]
                row += k
            out.attrs.update({key: first.attrs[key] for key in ("binning_xml", "geometry_json") if key in first.attrs})
            out.attrs["n"] = n
            out.attrs["mixed_from"] = [os.fspath(p) for p in paths]
            out.attrs["mixed_block"] = block
            if "binning_xml" in first.attrs:
                out.attrs["binning"] = output.with_suffix(".xml").name
            if "geometry_json" in first.attrs:
                out.attrs["geometry"] = output.with_name(output.stem + MATERIAL_SUFFIX).name
        if "binning_xml" in first.attrs:
            atomic_write_text(output.with_suffix(".xml"), str(first.attrs["binning_xml"]))
        if "geometry_json" in first.attrs:
            atomic_write_text(output.with_name(output.stem + MATERIAL_SUFFIX), str(first.attrs["geometry_json"]))
        os.replace(partial, output)
    except OSError as exc:
        output.with_name(output.name + ".partial").unlink(missing_ok=True)
        raise OutputError(f"output: cannot write {output} ({exc.strerror or exc})") from None
    finally:
        for f in files:
            f.close()
    return output
