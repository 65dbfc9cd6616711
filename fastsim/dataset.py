"""Reading shower files in the CaloChallenge HDF5 layout, lazily and validated.

A file holds ``incident_energies`` (N, 1) in MeV and ``showers`` (N, n_voxels) in
MeV, and may hold the per-shower incidence ``incident_theta`` (polar angle to the
layer normal) and ``incident_phi`` (azimuth, in the readout's alpha convention),
(N, 1) radians; a file without ``incident_theta`` is at normal incidence (theta 0)
and one without ``incident_phi`` has no azimuth. Every reader here returns energies
and showers in those shapes (as ``Generator.generate``
does): energies (k, 1) float64, showers (k, n_voxels) float32. This module holds
opening such a file, checking its structure up front (keys,
shapes, lengths, the voxel count against a geometry, the incident energies) and
streaming the showers in chunks, each checked as it is read for negative or
non-finite values. The real dataset-2 files are 100k x 6480, so nothing here reads
the whole showers dataset unless asked to.

Every problem is a :class:`fastsim.errors.DataError` naming the file and dataset.

:class:`ShowerSource` is what every reader of showers offers (a
:class:`ShowerFile` here, a folder of shards in :mod:`fastsim.shards`), so code
that consumes showers names that type, not a concrete reader.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import numpy as np

from fastsim._util import AT_LEAST, positive_int
from fastsim.errors import DataError
from fastsim.geometry import CylindricalGeometry, GeometryError, default_geometry

__all__ = [
    "CONDITION_KEYS",
    "DEFAULT_CHUNK_SIZE",
    "ShowerFile",
    "ShowerSource",
    "open_showers",
    "particle_column",
    "phi_column",
    "read_conditions",
    "row_range",
    "theta_column",
]

#: Showers per chunk when iterating (about 26 MB of float32 for 6480 voxels).
DEFAULT_CHUNK_SIZE = 1000

ENERGIES_KEY = "incident_energies"
SHOWERS_KEY = "showers"
THETA_KEY = "incident_theta"
PHI_KEY = "incident_phi"
#: Per-shower condition datasets a file may carry: condition name -> dataset name.
PARTICLE_KEY = "particle"
CONDITION_KEYS = {"theta": THETA_KEY, "phi": PHI_KEY, "particle": PARTICLE_KEY}

_Source = TypeVar("_Source", bound="ShowerSource")



def row_range(path: object, n: int, start: int, stop: int | None) -> tuple[int, int]:
    """``(start, stop)`` as integers within ``0:n`` (``stop`` None: ``n``), else a DataError naming ``path``."""
    stop = n if stop is None else stop
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError(f"{path}: {name} must be an integer, got {value!r}")
    if not 0 <= start <= stop <= n:
        raise DataError(f"{path}: rows {start}:{stop} are outside 0:{n}")
    return int(start), int(stop)


def read_conditions(f: Any, path: object, n: int) -> dict[str, np.ndarray]:
    """The per-shower conditions an open HDF5 file carries: ``{"theta": (N,), "phi": (N,)}`` float64 radians,
    and ``"particle"`` (N,) PDG ids.

    Only the datasets present are returned (they are small: one number per shower).
    Each must be numeric, of shape (N, 1) or (N,), and finite; theta must lie in
    [0, pi/2), particle ids must be integers. Anything else is a DataError naming
    ``path`` and the dataset.
    """
    import h5py

    out: dict[str, np.ndarray] = {}
    for name, key in CONDITION_KEYS.items():
        if key not in f:
            continue
        ds = f[key]
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
            raise DataError(f"{path}: {key!r} must be a numeric dataset, got {ds!r}")
        if not (ds.ndim == 1 or (ds.ndim == 2 and ds.shape[1] == 1)) or ds.shape[0] != n:
            raise DataError(f"{path}: dataset {key!r} must have shape ({n}, 1) (one angle per shower), got {ds.shape}")
        try:
            values = np.asarray(ds[()], dtype=np.float64).reshape(-1)
        except OSError as exc:
            raise DataError(f"{path}: cannot read dataset {key!r} ({exc})") from None
        bad = ~np.isfinite(values)
        if name == "theta":
            bad |= (values < 0) | (values >= np.pi / 2)
        elif name == "particle":
            bad |= np.isfinite(values) & (values != np.round(values))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            expected = {"theta": "finite angles in [0, pi/2) radians", "phi": "finite angles in radians",
                        "particle": "integer PDG ids"}[name]
            raise DataError(f"{path}: dataset {key!r} must hold {expected}; row {row} is {float(values[row])!r}")
        out[name] = values
    return out


def theta_column(conditions: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Polar angles (N, 1) float64 radians from a source's ``conditions``; zeros (normal incidence) without theta."""
    theta = conditions.get("theta")
    return (theta if theta is not None else np.zeros(n))[:, None]


def phi_column(conditions: dict[str, np.ndarray]) -> np.ndarray | None:
    """Azimuths (N, 1) float64 radians from a source's ``conditions``, or None without phi."""
    phi = conditions.get("phi")
    return None if phi is None else phi[:, None]


def particle_column(conditions: dict[str, np.ndarray], n: int, default: float = 11.0) -> np.ndarray:
    """PDG ids (N, 1) float64 from a source's ``conditions``; ``default`` (electrons) for a file without them."""
    particle = conditions.get("particle")
    return (particle if particle is not None else np.full(n, float(default)))[:, None]


class ShowerSource(Protocol):
    """Showers read lazily from storage: a shower file or a folder of shards.

    Rows are showers; energies are MeV; ``conditions`` holds the per-shower
    incidence angles the source carries (``theta``, ``phi``: (N,) radians,
    only those present). ``iter_chunks`` and ``read`` yield
    ``(energies (k,) float64, showers (k, n_voxels) float32)``. A source is a
    context manager that closes what it holds open.
    """

    path: Path
    geometry: CylindricalGeometry | None

    @property
    def n(self) -> int: ...

    @property
    def n_voxels(self) -> int: ...

    @property
    def incident_energies(self) -> np.ndarray: ...

    @property
    def conditions(self) -> dict[str, np.ndarray]: ...

    @property
    def attrs(self) -> dict[str, Any]: ...

    def __len__(self) -> int: ...

    def iter_chunks(self, chunk_size: int = ..., start: int = 0,
                    stop: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def read(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...

    def __enter__(self: _Source) -> _Source: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class ShowerFile:
    """An open CaloChallenge shower file; use :func:`open_showers` to make one."""

    def __init__(self, path: str | os.PathLike[str], geometry: CylindricalGeometry | None = None) -> None:
        import h5py

        self.path = Path(path)
        self._file: Any = None  # an h5py.File while open (h5py has no type hints)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such shower file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        try:
            self._open(geometry)
        except BaseException:
            self.close()
            raise

    def _open(self, geometry: CylindricalGeometry | None) -> None:
        import h5py

        f = self._file
        missing = [key for key in (ENERGIES_KEY, SHOWERS_KEY) if key not in f]
        if missing:
            present = ", ".join(sorted(f.keys())) or "nothing"
            raise DataError(
                f"{self.path}: missing dataset {' and '.join(repr(m) for m in missing)} "
                f"(CaloChallenge layout needs {ENERGIES_KEY!r} and {SHOWERS_KEY!r}; found {present})"
            )
        for key in (ENERGIES_KEY, SHOWERS_KEY):
            if not isinstance(f[key], h5py.Dataset) or f[key].dtype.kind not in "fiu":
                raise DataError(f"{self.path}: {key!r} must be a numeric dataset, got {f[key]!r}")
        self._showers = f[SHOWERS_KEY]
        energies_ds = f[ENERGIES_KEY]

        if self._showers.ndim != 2:
            raise DataError(f"{self.path}: dataset {SHOWERS_KEY!r} must be 2-D (N, n_voxels), "
                            f"got shape {self._showers.shape}")
        if not (energies_ds.ndim == 1 or (energies_ds.ndim == 2 and energies_ds.shape[1] == 1)):
            raise DataError(f"{self.path}: dataset {ENERGIES_KEY!r} must have shape (N, 1), got {energies_ds.shape}")
        if energies_ds.shape[0] != self._showers.shape[0]:
            raise DataError(
                f"{self.path}: datasets disagree in length: {ENERGIES_KEY!r} has {energies_ds.shape[0]} rows, "
                f"{SHOWERS_KEY!r} has {self._showers.shape[0]}"
            )
        try:
            energies = np.asarray(energies_ds[()], dtype=np.float64).reshape(-1)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read dataset {ENERGIES_KEY!r} ({exc})") from None
        bad = np.flatnonzero(~(np.isfinite(energies) & (energies > 0)))
        if bad.size:
            raise DataError(
                f"{self.path}: dataset {ENERGIES_KEY!r} must hold finite energies > 0 MeV; "
                f"row {bad[0]} is {energies[bad[0]]!r} ({bad.size} bad rows)"
            )
        self._energies = energies
        self._shape = (int(self._showers.shape[0]), int(self._showers.shape[1]))
        self._conditions = read_conditions(f, self.path, self._shape[0])

        self.geometry = geometry if geometry is not None else self._find_geometry()
        if self.geometry is not None and self.geometry.n_voxels != self.n_voxels:
            raise DataError(
                f"{self.path}: dataset {SHOWERS_KEY!r} has {self.n_voxels} voxels per shower, "
                f"the geometry has {self.geometry.n_voxels}"
            )

    def _find_geometry(self) -> CylindricalGeometry | None:
        # the binning XML beside the file, as the simulator writes it, else dataset 2 if it fits
        candidates = []
        named = self._file.attrs.get("binning")
        if isinstance(named, (str, bytes)):
            candidates.append(self.path.parent / (named.decode() if isinstance(named, bytes) else named))
        candidates.append(self.path.with_suffix(".xml"))
        for xml in candidates:
            if xml.is_file():
                try:
                    return CylindricalGeometry.from_xml(xml)
                except GeometryError:
                    continue
        default = default_geometry()
        return default if default.n_voxels == self.n_voxels else None

    # -- sizes -------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of showers."""
        return self._shape[0]

    def __len__(self) -> int:
        return self.n

    @property
    def n_voxels(self) -> int:
        """Voxels per shower."""
        return self._shape[1]

    @property
    def incident_energies(self) -> np.ndarray:
        """Incident energies (N, 1) float64 in MeV (read and checked when the file was opened)."""
        return self._energies[:, None]

    @property
    def conditions(self) -> dict[str, np.ndarray]:
        """The per-shower conditions the file carries, ``{"theta": (N,), "phi": (N,)}`` radians (read when opened).

        Only those present: a file without ``incident_theta`` is at normal
        incidence, one without ``incident_phi`` has no azimuth.
        """
        return dict(self._conditions)

    @property
    def incident_theta(self) -> np.ndarray:
        """Polar angles (N, 1) float64 radians; zeros (normal incidence) when the file has no ``incident_theta``."""
        return theta_column(self._conditions, self.n)

    @property
    def incident_phi(self) -> np.ndarray | None:
        """Azimuths (N, 1) float64 radians, or None when the file has no ``incident_phi``."""
        return phi_column(self._conditions)

    @property
    def attrs(self) -> dict[str, Any]:
        """The file's HDF5 attributes (seed, generator, ...), as a plain dict."""
        if self._file is None:
            raise DataError(f"{self.path}: the file is closed")
        return dict(self._file.attrs)

    # -- reading -----------------------------------------------------------
    def _range(self, start: int, stop: int | None) -> tuple[int, int]:
        return row_range(self.path, self.n, start, stop)

    def _read_rows(self, lo: int, hi: int) -> np.ndarray:
        if self._file is None:
            raise DataError(f"{self.path}: the file is closed")
        try:
            block = np.asarray(self._showers[lo:hi], dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path}: cannot read dataset {SHOWERS_KEY!r} rows {lo}:{hi} ({exc})") from None
        finite = np.isfinite(block)
        if not finite.all():
            row = lo + int(np.argwhere(~finite)[0, 0])
            raise DataError(f"{self.path}: dataset {SHOWERS_KEY!r} has a non-finite value in row {row}")
        if (block < 0).any():
            row = lo + int(np.argwhere(block < 0)[0, 0])
            raise DataError(f"{self.path}: dataset {SHOWERS_KEY!r} has a negative energy in row {row}")
        return block

    def iter_chunks(
        self, chunk_size: int = DEFAULT_CHUNK_SIZE, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield the showers of rows ``start:stop`` in chunks, each checked as it is read.

        Args:
            chunk_size: rows per chunk (>= 1); the last chunk may be shorter.
            start: first row.
            stop: row after the last; None: the end of the file.

        Returns:
            An iterator of (energies (k, 1) float64 MeV, showers (k, n_voxels) float32 MeV).

        Raises:
            DataError: a bound is not an integer or outside ``0:n``, ``chunk_size``
                is below 1, the file is closed, or a chunk holds a non-finite or
                negative value.
        """
        chunk_size = positive_int(chunk_size, "chunk_size", error=DataError, message=AT_LEAST, where=str(self.path))
        start, stop = self._range(start, stop)
        for lo in range(start, stop, chunk_size):
            hi = min(lo + chunk_size, stop)
            yield self._energies[lo:hi, None].copy(), self._read_rows(lo, hi)

    def read(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` at once.

        Args:
            start: first row.
            stop: row after the last; None: the end of the file.

        Returns:
            (energies (k, 1) float64 MeV, showers (k, n_voxels) float32 MeV).

        Raises:
            DataError: as :meth:`iter_chunks`.
        """
        start, stop = self._range(start, stop)
        return self._energies[start:stop, None].copy(), self._read_rows(start, stop)

    # -- lifetime ----------------------------------------------------------
    def close(self) -> None:
        """Close the HDF5 file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ShowerFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._file is None:
            return "ShowerFile(closed)"
        return f"ShowerFile({str(self.path)!r}, n={self.n}, n_voxels={self.n_voxels})"


def open_showers(path: str | os.PathLike[str], geometry: CylindricalGeometry | None = None) -> ShowerFile:
    """Open a CaloChallenge shower file for lazy, validated reading.

    Args:
        path: a CaloChallenge HDF5 file.
        geometry: checked against the voxel count; None: the binning XML beside
            the file (or dataset 2, when the voxel count fits) when found.

    Returns:
        An open :class:`ShowerFile`; use it in a ``with`` block.

    Raises:
        DataError: the file is missing or unreadable, not in the CaloChallenge
            layout, or its energies or voxel count are wrong.

    >>> with open_showers("data/electrons_train.h5") as f:  # doctest: +SKIP
    ...     for energies, showers in f.iter_chunks(1000):
    ...         ...
    """
    return ShowerFile(path, geometry)
