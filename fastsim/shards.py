"""The folder of shards a sharded run writes, read back as one dataset.

A sharded run (:func:`fastsim.distributed.generate`) writes ``OUT/shard-00042.h5``
files and ``OUT/manifest.json``: the run's n, seed, conditions, model sha256 and
spec, the shard ranges, and per shard its status and the sha256 checksums of its
datasets' bytes. This module holds the manifest's name and format, reading and
checking it, the shard checksums, :class:`ShardedDataset` (the shards of a
finished run in order, one file open at a time) and :func:`open_dataset`, which
opens either a folder of shards or a single shower file. Nothing here imports
Dask unless :meth:`ShardedDataset.to_dask` is called.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from fastsim._util import concat_rows, rechunk
from fastsim.dataset import ShowerSource, open_showers, phi_column, row_range, theta_column
from fastsim.errors import ClusterError, DataError

if TYPE_CHECKING:
    import dask.array

    from fastsim.geometry import CylindricalGeometry

__all__ = [
    "DASK_HINT",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "SHARD_DATASETS",
    "ShardedDataset",
    "open_dataset",
    "read_manifest",
    "shard_checksums",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fastsim-shards/1"
DASK_HINT = "pip install 'fastsim[dask]'"
#: The datasets of a shard file that its checksums cover (plus ``conditions`` when present).
SHARD_DATASETS = ("incident_energies", "showers")
# Rows hashed per read: about 100 MB of float32 for 6480 voxels.
_HASH_ROWS = 4096


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the manifest of the sharded run in folder ``out``.

    Args:
        out: the output folder of :func:`fastsim.distributed.generate`.

    Returns:
        The manifest as a dict (``format``, ``n``, ``seed``, ``conditions``,
        ``model_sha256``, ``spec``, ``shard_ranges``, ``shards``, ...).

    Raises:
        DataError: the folder holds no ``manifest.json``, or it is unreadable or
            not a fastsim shard manifest.
    """
    path = Path(out) / MANIFEST_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{Path(out)}: no {MANIFEST_NAME}; not the output folder of a sharded run") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("shards"), list):
        raise DataError(f"{path}: not a fastsim shard manifest (expected format {MANIFEST_FORMAT!r})")
    return doc


def shard_checksums(path: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 of each dataset's bytes (C order, as stored) in a shard file, read in chunks.

    Args:
        path: a shard file (CaloChallenge HDF5).

    Returns:
        Hex digests by dataset name: ``incident_energies``, ``showers`` and,
        when the file has it, ``conditions``.

    Raises:
        DataError: the file cannot be read or lacks one of the datasets.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            sums = {}
            for key in SHARD_DATASETS + (("conditions",) if "conditions" in fh else ()):
                data, digest = fh[key], hashlib.sha256()
                for lo in range(0, data.shape[0], _HASH_ROWS):
                    digest.update(np.ascontiguousarray(data[lo:lo + _HASH_ROWS]).tobytes())
                sums[key] = digest.hexdigest()
            return sums
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: cannot read shard file ({exc})") from None


class ShardedDataset:
    """The shards of a finished run, read in order as one CaloChallenge dataset.

    Nothing is loaded up front but the manifest and the incident energies;
    :meth:`iter_chunks` and :meth:`read` open one shard file at a time. Use
    :func:`open_dataset` to make one.

    Args:
        path: the run's output folder (holding ``manifest.json``).
        geometry: checked against each shard's voxel count; None: the model's
            geometry from the manifest, else what the first shard file finds.

    Raises:
        DataError: no readable manifest, shards not done (an unfinished run)
            or shard files missing.
    """

    def __init__(self, path: str | os.PathLike[str], geometry: CylindricalGeometry | None = None) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.geometry = geometry
        pending = [e["index"] for e in self.manifest["shards"] if e.get("status") != "done"]
        if pending:
            shown = ", ".join(map(str, pending[:10])) + (", ..." if len(pending) > 10 else "")
            raise DataError(f"{self.path}: the run is incomplete: {len(pending)} of "
                            f"{len(self.manifest['shards'])} shards are not done ({shown}); "
                            "run the same generate command again to finish it")
        self._shards = [(int(e["start"]), int(e["stop"]), self.path / e["file"]) for e in self.manifest["shards"]]
        missing = [str(p.name) for _, _, p in self._shards if not p.is_file()]
        if missing:
            raise DataError(f"{self.path}: shard files missing: {', '.join(missing[:5])}")
        self._energies: np.ndarray | None = None
        self._conditions: dict[str, np.ndarray] | None = None
        self._dask_files: list[Any] = []
        if self.geometry is None:
            self.geometry = self._find_geometry()

    def _find_geometry(self) -> CylindricalGeometry | None:
        # The model's own geometry, else whatever the first shard file finds for itself.
        block = self.manifest.get("spec", {}).get("output", {}).get("geometry")
        if block:
            from fastsim.geometry import CylindricalGeometry, GeometryError

            try:
                return CylindricalGeometry.from_dict(block)
            except GeometryError as exc:
                raise DataError(f"{self.path}: the model's geometry in {MANIFEST_NAME} is malformed ({exc})") from None
        with open_showers(self._shards[0][2]) as first:
            return first.geometry

    @property
    def n(self) -> int:
        """Number of showers over all shards."""
        return int(self.manifest["n"])

    def __len__(self) -> int:
        return self.n

    @property
    def n_voxels(self) -> int:
        """Voxels per shower (the model's output size)."""
        return int(self.manifest["spec"]["output"]["n_voxels"])

    @property
    def n_shards(self) -> int:
        """Number of shard files."""
        return len(self._shards)

    @property
    def attrs(self) -> dict[str, Any]:
        """Run-level attributes: seed, model sha256, conditions, producer (from the manifest)."""
        keys = ("seed", "n", "model_sha256", "conditions", "producer", "block_size")
        return {key: self.manifest.get(key) for key in keys}

    @property
    def incident_energies(self) -> np.ndarray:
        """Incident energies (N, 1) float64 in MeV, read from every shard on first use."""
        if self._energies is None:
            self._read_per_shower()
        assert self._energies is not None
        return self._energies

    @property
    def conditions(self) -> dict[str, np.ndarray]:
        """The per-shower conditions every shard carries, ``{"theta": (N,), "phi": (N,)}`` radians.

        Read with the energies on first use (the showers are not read); a
        condition missing from any shard is left out, as in
        :attr:`fastsim.dataset.ShowerFile.conditions`.
        """
        if self._conditions is None:
            self._read_per_shower()
        assert self._conditions is not None
        return dict(self._conditions)

    @property
    def incident_theta(self) -> np.ndarray:
        """Polar angles (N, 1) float64 radians; zeros (normal incidence) when the shards carry none."""
        return theta_column(self.conditions, self.n)

    @property
    def incident_phi(self) -> np.ndarray | None:
        """Azimuths (N, 1) float64 radians, or None when the shards carry none."""
        return phi_column(self.conditions)

    def _read_per_shower(self) -> None:
        energies, conditions = [], []
        for shard in self.iter_shards():
            with shard:
                energies.append(shard.incident_energies)
                conditions.append(shard.conditions)
        self._energies = np.concatenate(energies)
        names = set.intersection(*(set(c) for c in conditions)) if conditions else set()
        self._conditions = {name: np.concatenate([c[name] for c in conditions]) for name in sorted(names)}

    def iter_shards(self) -> Iterator[ShowerSource]:
        """Each shard as an open :class:`fastsim.dataset.ShowerFile`, in order.

        Returns:
            An iterator of open files; close each when done (use it in ``with``).

        Raises:
            DataError: a shard file is unreadable or malformed.
        """
        for _, _, path in self._shards:
            yield open_showers(path, geometry=self.geometry)

    def iter_chunks(self, chunk_size: int = 1000, start: int = 0,
                    stop: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield the showers of rows ``start:stop`` in chunks, across shard boundaries.

        Every chunk but the last has ``chunk_size`` rows, wherever the shard
        files begin and end.

        Args:
            chunk_size: rows per chunk (>= 1).
            start: first row over the whole run.
            stop: row after the last; None: the end of the run.

        Returns:
            An iterator of (energies (k, 1) float64 MeV, showers (k, n_voxels) float32 MeV).

        Raises:
            DataError: a bound is not an integer or outside ``0:n``, ``chunk_size``
                is below 1, or a shard holds a non-finite or negative value.
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
            raise DataError(f"{self.path}: chunk_size must be an integer, got {chunk_size!r}")
        if chunk_size < 1:
            raise DataError(f"{self.path}: chunk_size must be >= 1, got {chunk_size}")
        start, stop = row_range(self.path, self.n, start, stop)
        yield from rechunk(self._pieces(chunk_size, start, stop), chunk_size)

    def _pieces(self, chunk_size: int, start: int, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # Rows start:stop shard by shard, at most chunk_size at a time, one shard file open at a time.
        for first, last, path in self._shards:
            lo, hi = max(first, start), min(last, stop)
            if lo < hi:
                with open_showers(path, geometry=self.geometry) as shard:
                    yield from shard.iter_chunks(chunk_size, lo - first, hi - first)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.iter_chunks()

    def read(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` at once.

        Args:
            start: first row over the whole run.
            stop: row after the last; None: the end of the run.

        Returns:
            (energies (k, 1) float64 MeV, showers (k, n_voxels) float32 MeV).

        Raises:
            DataError: as :meth:`iter_chunks`.
        """
        stop = self.n if stop is None else stop
        return concat_rows(list(self.iter_chunks(max(stop - start, 1), start, stop)) or
                       [(np.empty((0, 1)), np.empty((0, self.n_voxels), np.float32))])

    def to_dask(self) -> tuple[dask.array.Array, dask.array.Array]:
        """Lazy dask arrays over all shards, for out-of-core analysis.

        The shard files stay open until :meth:`close`.

        Returns:
            (energies (N, 1), showers (N, n_voxels)) as ``dask.array`` arrays.

        Raises:
            ClusterError: Dask is not installed.
        """
        try:
            import dask.array as da
            import h5py
        except ImportError:
            raise ClusterError(f"to_dask: needs Dask, which is not installed; install it with {DASK_HINT}") from None
        energies, showers = [], []
        for _, _, path in self._shards:
            fh = h5py.File(path, "r")
            self._dask_files.append(fh)
            rows = max(1, min(fh["showers"].shape[0], (64 << 20) // max(1, 4 * self.n_voxels)))
            energies.append(da.from_array(fh["incident_energies"], chunks=(rows, 1)))
            showers.append(da.from_array(fh["showers"], chunks=(rows, self.n_voxels)))
        return da.concatenate(energies), da.concatenate(showers)

    def close(self) -> None:
        """Close the files :meth:`to_dask` holds open (the readers close their own)."""
        for fh in self._dask_files:
            fh.close()
        self._dask_files = []

    def __enter__(self) -> ShardedDataset:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardedDataset({str(self.path)!r}, n={self.n}, shards={self.n_shards})"


def open_dataset(path: str | os.PathLike[str], geometry: CylindricalGeometry | None = None) -> ShowerSource:
    """Open generated showers for lazy reading: a folder of shards or one HDF5 file.

    A folder (the ``out`` of :func:`fastsim.distributed.generate`) gives a
    :class:`ShardedDataset` that reads its shards in order as one dataset; a
    file gives :class:`fastsim.dataset.ShowerFile`. Both are a
    :class:`fastsim.dataset.ShowerSource`: ``n``, ``n_voxels``,
    ``incident_energies``, ``iter_chunks`` and ``read``.

    Args:
        path: a folder of shards or a CaloChallenge HDF5 file.
        geometry: checked against the voxel count; None: the model's geometry
            (a folder) or the binning XML beside the file, else dataset 2 when
            the voxel count fits.

    Returns:
        An open shower source; use it in a ``with`` block.

    Raises:
        DataError: the path is missing, unreadable, not in the CaloChallenge
            layout, or an unfinished run.

    >>> with fastsim.open_dataset("showers/") as data:  # doctest: +SKIP
    ...     for energies, showers in data.iter_chunks(10_000):
    ...         ...
    """
    if Path(path).is_dir():
        return ShardedDataset(path, geometry)
    from fastsim.formats import open_hep  # a ROOT file or a hit list written by generate

    hep = open_hep(path, geometry)
    if hep is not None:
        return hep
    return open_showers(path, geometry=geometry)
