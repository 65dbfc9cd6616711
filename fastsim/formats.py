"""Showers in the formats HEP hosts read: ROOT trees (via uproot) and sparse hit lists.

This module writes generated showers as

* a **ROOT file** (``-o showers.root``, ``--format root``; needs the ``root``
  extra, i.e. uproot): a TTree ``showers`` with one entry per shower, a
  ``float64`` branch per condition (``incident_energy``, MeV) and the voxel
  energies as the fixed-size branch ``voxel_energy`` (``float[n_voxels]``,
  MeV, flattened in (layer, alpha, radial) order); a TTree ``voxels`` with each
  voxel's ``voxel``, ``layer``, ``x``, ``y``, ``z``, ``r``, ``alpha`` (mm,
  radians; z at the layer's mid-depth); and ``TObjString`` entries
  ``fastsim_units`` (JSON: the unit of every branch), ``fastsim_spec`` (the
  model's spec) and ``fastsim_run`` (JSON: model, sha256, seed, conditions,
  fastsim version);
* a **hit list** (``-o showers.hits.h5``, ``--format hits``): HDF5 with one row
  per voxel with energy, as a fast-simulation hit maker consumes them:
  ``hits/event``, ``hits/voxel``, ``hits/energy`` (MeV), ``hits/x``,
  ``hits/y``, ``hits/z`` (mm), ``hits/layer``; ``events/incident_energies``
  (N, 1) MeV and ``events/hit_offsets`` (N + 1: event i's hits are rows
  ``hit_offsets[i]:hit_offsets[i + 1]``), each other condition as
  ``events/NAME`` (N, 1) float64 (e.g. ``events/incident_theta``); the same ``voxels/...`` table; every
  dataset carries its ``unit`` attribute, the file the spec and run attributes.

Both are written under a temporary name in the output folder and renamed when
complete, and both read back (:func:`open_hep`) as shower sources with
``n``, ``n_voxels``, ``incident_energies`` (N, 1), ``iter_chunks`` and
``read``, so ``fastsim validate`` takes them like an HDF5 file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fastsim._util import AT_LEAST, atomic_path, positive_int
from fastsim.errors import ArgumentError, DataError, OutputError

__all__ = [
    "HEP_FORMATS",
    "HitFile",
    "RootShowerFile",
    "check_hep_output",
    "hep_format",
    "open_hep",
    "voxel_table",
    "write_hep",
]

#: The formats of this module, by their ``--format`` name.
HEP_FORMATS = ("root", "hits")
HITS_FORMAT = "fastsim-hits/1"
ROOT_HINT = "pip install 'fastsim[root]'"
TREE = "showers"
VOXEL_BRANCH = "voxel_energy"
_VOXEL_UNITS = {"voxel": "", "layer": "", "x": "mm", "y": "mm", "z": "mm", "r": "mm", "alpha": "rad"}


def hep_format(path: str | os.PathLike[str], fmt: str | None = None) -> str | None:
    """``"root"`` or ``"hits"`` when ``path``/``fmt`` asks for one of this module's formats, else ``None``."""
    if fmt is not None:
        return fmt if fmt in HEP_FORMATS else None
    name = Path(path).name.lower()
    if name.endswith(".root"):
        return "root"
    if name.endswith(".hits.h5"):
        return "hits"
    return None


def _require_uproot() -> Any:
    try:
        import uproot
    except ImportError:
        raise ArgumentError(f"output: ROOT files need uproot, which is not installed; "
                            f"install it with {ROOT_HINT}") from None
    return uproot


def check_hep_output(path: str | os.PathLike[str], fmt: str, *, force: bool = False, resume: bool = False,
                     compression: str | None = None) -> Path:
    """Cheap checks before a model is loaded: the name fits the format, the folder is writable, nothing in the way."""
    path = Path(path)
    if compression is not None:
        raise ArgumentError(f"compression: {fmt} output chooses its own compression; got {compression!r}, "
                            "drop --compression")
    if resume:
        raise ArgumentError(f"resume: only HDF5 output (.h5) can be resumed; {fmt} output is written in one go")
    if fmt == "root":
        if path.suffix.lower() != ".root":
            raise ArgumentError(f"output: ROOT output needs a name ending in .root, got {str(path)!r}")
        _require_uproot()
    elif path.suffix.lower() not in (".h5", ".hdf5"):
        raise ArgumentError(f"output: a hit list is HDF5; expected a name ending in .h5 (e.g. showers.hits.h5), "
                            f"got {str(path)!r}")
    from fastsim.io import check_output_folder

    check_output_folder(path)
    if path.is_dir():
        raise OutputError(f"output: {str(path)!r} is a folder, expected a file name")
    if path.exists() and not force:
        raise OutputError(f"output: {str(path)!r} already exists; pass --force to overwrite")
    return path


def voxel_table(geometry: Any) -> dict[str, np.ndarray]:
    """Per voxel id: ``voxel``, ``layer``, ``x``, ``y``, ``z``, ``r``, ``alpha`` (mm, rad; z at mid-layer)."""
    x, y, r, alpha, layer = geometry.voxel_centres()
    return {"voxel": np.arange(geometry.n_voxels, dtype=np.int32), "layer": layer.astype(np.int32),
            "x": x, "y": y, "z": (layer + 0.5) * geometry.layer_thickness_mm, "r": r, "alpha": alpha}


def _geometry(spec: Any) -> Any:
    from fastsim.geometry import CylindricalGeometry, GeometryError, default_geometry

    if spec.output.geometry:
        try:
            return CylindricalGeometry.from_dict(spec.output.geometry)
        except GeometryError:
            pass
    default = default_geometry()
    return default if default.n_voxels == spec.n_voxels else None


def write_hep(generator: Any, path: str | os.PathLike[str], n: int | None = None, conditions: Any = None, *,
              fmt: str | None = None, seed: int = 0, batch_size: int = 2048, force: bool = False,
              on_batch: Callable[[int], object] | None = None) -> dict[str, Any]:
    """Generate showers with ``generator`` into a ROOT file or a hit list (see the module docstring).

    Args:
        generator: A loaded :class:`fastsim.Generator`.
        path: The output file.
        n: Number of showers (optional when ``conditions`` gives one value per shower).
        conditions: What :meth:`fastsim.Generator.plan` takes (or a plan it made).
        fmt: ``"root"`` or ``"hits"``; default from the name (``.root``, ``.hits.h5``).
        seed: The random seed; the showers are those of ``generator.generate`` with it.
        batch_size: Showers per ONNX Runtime call, and per ROOT basket.
        force: Replace an existing file.
        on_batch: Called with the number of showers in each finished batch.

    Returns:
        A summary: n, seconds, showers_per_s, provider, output, format, seed, model, model_sha256.

    Raises:
        ArgumentError, OutputError: Bad output name, format or folder, or uproot missing.
    """
    import time

    from fastsim import __version__

    fmt = hep_format(path, fmt)
    if fmt is None:
        raise ArgumentError(f"format: expected one of {list(HEP_FORMATS)} or a .root / .hits.h5 name, "
                            f"got {str(path)!r}")
    path = check_hep_output(path, fmt, force=force)
    plan = generator.plan(n, conditions)
    spec = generator.spec
    geometry = _geometry(spec)
    if fmt == "hits" and geometry is None:
        raise OutputError(f"output: a hit list needs the voxel geometry, and model {spec.name!r} has none in its spec")
    run = {"model": spec.name, "model_version": spec.version, "model_sha256": generator.sha256, "seed": int(seed),
           "conditions": plan.describe(), "n": int(plan.n), "producer": f"fastsim {__version__}"}
    batches = generator.iter_batches(conditions=plan, seed=seed, batch_size=batch_size)
    began = time.perf_counter()
    writer = _write_root if fmt == "root" else _write_hits
    with atomic_path(path) as tmp:
        writer(tmp, batches, spec, geometry, run, on_batch)
    seconds = time.perf_counter() - began
    return {"n": plan.n, "generated": plan.n, "resumed_from": 0, "seconds": round(seconds, 6),
            "showers_per_s": round(plan.n / seconds, 3) if seconds > 0 else None, "provider": generator.provider,
            "output": str(path), "format": fmt, "seed": int(seed), "model": spec.name,
            "model_sha256": generator.sha256, "conditions": plan.describe()}


def _write_root(tmp: Path, batches: Iterator[tuple[np.ndarray, np.ndarray]], spec: Any, geometry: Any,
                run: dict[str, Any],
                on_batch: Callable[[int], object] | None) -> None:
    uproot = _require_uproot()
    names = list(spec.condition_names)
    units = {name: cond.unit for name, cond in zip(names, spec.conditions, strict=True)}
    units[VOXEL_BRANCH] = spec.output.unit
    with uproot.recreate(tmp) as root:
        types: dict[str, Any] = {name: np.float64 for name in names}
        types[VOXEL_BRANCH] = (np.float32, (spec.n_voxels,))
        tree = root.mktree(TREE, types, title=f"fastsim showers of {spec.name} {spec.version} "
                                              f"(energies in {spec.output.unit})")
        for conds, showers in batches:
            conds = np.asarray(conds, dtype=np.float64).reshape(len(showers), -1)
            branch = {name: conds[:, i] for i, name in enumerate(names)}
            branch[VOXEL_BRANCH] = np.ascontiguousarray(showers, dtype=np.float32)
            tree.extend(branch)
            if on_batch is not None:
                on_batch(len(showers))
        if geometry is not None:
            table = voxel_table(geometry)
            root.mktree("voxels", {k: v.dtype for k, v in table.items()},
                        title="voxel id -> layer and centre (mm, rad); z at mid-layer")
            root["voxels"].extend(table)
            units.update({f"voxels.{k}": u for k, u in _VOXEL_UNITS.items() if u})
        root["fastsim_units"] = json.dumps(units)
        root["fastsim_spec"] = spec.to_json()
        root["fastsim_run"] = json.dumps(run)


def _write_hits(tmp: Path, batches: Iterator[tuple[np.ndarray, np.ndarray]], spec: Any, geometry: Any,
                run: dict[str, Any],
                on_batch: Callable[[int], object] | None) -> None:
    import h5py

    from fastsim.conditions import energy_condition

    table = voxel_table(geometry)
    energy_column = list(spec.condition_names).index(energy_condition(spec).name)
    n = run["n"]
    with h5py.File(tmp, "w") as fh:
        fh.attrs.update({"fastsim.format": HITS_FORMAT, "fastsim.spec": spec.to_json(),
                         **{f"fastsim.{k}": (json.dumps(v) if isinstance(v, dict) else v) for k, v in run.items()}})
        voxels = fh.create_group("voxels")
        for key, values in table.items():
            voxels.create_dataset(key, data=values).attrs["unit"] = _VOXEL_UNITS[key]
        events = fh.create_group("events")
        energies = events.create_dataset("incident_energies", (n, 1), dtype="float32")
        energies.attrs["unit"] = spec.conditions[energy_column].unit
        # The other conditions (e.g. incident_theta, incident_phi) beside the energies, as in the .h5 layout.
        others = {j: events.create_dataset(c.name, (n, 1), dtype="float64")
                  for j, c in enumerate(spec.conditions) if j != energy_column}
        for j, dataset in others.items():
            dataset.attrs["unit"] = spec.conditions[j].unit
        offsets = events.create_dataset("hit_offsets", (n + 1,), dtype="int64")
        offsets.attrs["unit"] = ""
        hits = fh.create_group("hits")
        columns = {"event": "int64", "voxel": "int32", "energy": "float32", "x": "float32", "y": "float32",
                   "z": "float32", "layer": "int16"}
        hit_sets = {}
        for key, dtype in columns.items():
            hit_sets[key] = hits.create_dataset(key, (0,), maxshape=(None,), dtype=dtype, chunks=(1 << 16,),
                                                compression="gzip", compression_opts=1, shuffle=True)
            hit_sets[key].attrs["unit"] = spec.output.unit if key == "energy" else _VOXEL_UNITS.get(key, "")
        first, total = 0, 0
        offsets[0] = 0
        for conds, showers in batches:
            k = len(showers)
            conds = np.asarray(conds).reshape(k, -1)
            energies[first:first + k] = conds[:, energy_column:energy_column + 1]
            for j, dataset in others.items():
                dataset[first:first + k] = conds[:, j:j + 1].astype(np.float64)
            rows, voxel = np.nonzero(showers)
            new = {"event": rows + first, "voxel": voxel, "energy": showers[rows, voxel],
                   "x": table["x"][voxel], "y": table["y"][voxel], "z": table["z"][voxel],
                   "layer": table["layer"][voxel]}
            for key, values in new.items():
                hit_sets[key].resize((total + len(rows),))
                hit_sets[key][total:] = values
            offsets[first + 1:first + k + 1] = total + np.cumsum(np.bincount(rows, minlength=k))
            first, total = first + k, total + len(rows)
            if on_batch is not None:
                on_batch(k)


# ----------------------------------------------------------------------------- reading back


class _Showers:
    """Chunked reading shared by the two readers: ``_rows(lo, hi)`` gives dense float32 showers."""

    path: Path
    geometry: Any
    _energies: np.ndarray  # (N,) float64 MeV
    n_voxels: int

    @property
    def n(self) -> int:
        """Number of showers."""
        return len(self._energies)

    def __len__(self) -> int:
        return self.n

    @property
    def incident_energies(self) -> np.ndarray:
        """Incident energies (N, 1) float64 in MeV."""
        return self._energies[:, None]

    @property
    def conditions(self) -> dict[str, np.ndarray]:
        """Per-shower incidence angles: none are read back from these formats (normal incidence)."""
        return {}

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        raise NotImplementedError

    def _range(self, start: int, stop: int | None) -> tuple[int, int]:
        from fastsim.dataset import row_range

        return row_range(self.path, self.n, start, stop)

    def read(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows start:stop at once: (energies (k, 1) float64, showers (k, n_voxels) float32)."""
        start, stop = self._range(start, stop)
        return self._energies[start:stop, None].copy(), self._rows(start, stop)

    def iter_chunks(self, chunk_size: int = 1000, start: int = 0,
                    stop: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (energies (k, 1) float64, showers (k, n_voxels) float32) for rows start:stop."""
        chunk_size = positive_int(chunk_size, "chunk_size", error=DataError, message=AT_LEAST, where=str(self.path))
        start, stop = self._range(start, stop)
        for lo in range(start, stop, chunk_size):
            hi = min(lo + chunk_size, stop)
            yield self._energies[lo:hi, None].copy(), self._rows(lo, hi)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.iter_chunks()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the file."""


def _spec_geometry(spec_json: str | None, n_voxels: int, path: Path, geometry: Any) -> Any:
    if geometry is not None:
        if geometry.n_voxels != n_voxels:
            raise DataError(f"{path}: {n_voxels} voxels per shower, the geometry has {geometry.n_voxels}")
        return geometry
    if spec_json:
        from fastsim.spec import ModelSpec

        try:
            return _geometry(ModelSpec.from_json(spec_json))
        except (ValueError, DataError):
            pass
    from fastsim.geometry import default_geometry

    default = default_geometry()
    return default if default.n_voxels == n_voxels else None


class RootShowerFile(_Showers):
    """A ROOT file written by :func:`write_hep` (``showers`` tree), read with uproot."""

    def __init__(self, path: str | os.PathLike[str], geometry: Any = None) -> None:
        uproot = _require_uproot()
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such ROOT file")
        try:
            self._file = uproot.open(self.path)
            self._tree = self._file[TREE]
            self._energies = np.asarray(self._tree["incident_energy"].array(library="np"), dtype=np.float64)
            self.n_voxels = int(self._tree[VOXEL_BRANCH].interpretation.inner_shape[0])
            spec_json = str(self._file["fastsim_spec"]) if "fastsim_spec" in self._file else None
        except (OSError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise DataError(f"{self.path}: not a fastsim ROOT file (a {TREE!r} tree with 'incident_energy' and "
                            f"{VOXEL_BRANCH!r} branches): {exc}") from None
        self.geometry = _spec_geometry(spec_json, self.n_voxels, self.path, geometry)

    @property
    def attrs(self) -> dict[str, Any]:
        """The run record (model, sha256, seed, conditions, producer) and the units."""
        doc = json.loads(str(self._file["fastsim_run"])) if "fastsim_run" in self._file else {}
        if "fastsim_units" in self._file:
            doc["units"] = json.loads(str(self._file["fastsim_units"]))
        return doc

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        block = self._tree[VOXEL_BRANCH].array(entry_start=lo, entry_stop=hi, library="np")
        return np.asarray(block, dtype=np.float32).reshape(hi - lo, self.n_voxels)

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return f"RootShowerFile({str(self.path)!r}, n={self.n}, n_voxels={self.n_voxels})"


class HitFile(_Showers):
    """A hit list written by :func:`write_hep`; chunks are the dense showers rebuilt from the hits."""

    def __init__(self, path: str | os.PathLike[str], geometry: Any = None) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such hit file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        fh = self._file
        if fh.attrs.get("fastsim.format") != HITS_FORMAT:
            self._file.close()
            raise DataError(f"{self.path}: not a fastsim hit list (attribute 'fastsim.format' is not {HITS_FORMAT!r})")
        self._energies = np.asarray(fh["events/incident_energies"][()], dtype=np.float64).reshape(-1)
        self._offsets = np.asarray(fh["events/hit_offsets"][()], dtype=np.int64)
        self.n_voxels = int(fh["voxels/voxel"].shape[0])
        self.geometry = _spec_geometry(fh.attrs.get("fastsim.spec"), self.n_voxels, self.path, geometry)

    @property
    def attrs(self) -> dict[str, Any]:
        """The file's attributes (format, spec, model, seed, ...)."""
        return dict(self._file.attrs)

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        first, last = int(self._offsets[lo]), int(self._offsets[hi])
        event = self._file["hits/event"][first:last] - lo
        voxel = self._file["hits/voxel"][first:last]
        dense = np.zeros((hi - lo, self.n_voxels), dtype=np.float32)
        dense[event, voxel] = self._file["hits/energy"][first:last]
        return dense

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return f"HitFile({str(self.path)!r}, n={self.n}, n_voxels={self.n_voxels})"


def open_hep(path: str | os.PathLike[str], geometry: Any = None) -> RootShowerFile | HitFile | None:
    """Open a ROOT file or hit list written by :func:`write_hep`; ``None`` for any other path.

    >>> with open_hep("showers.root") as data:        # doctest: +SKIP
    ...     energies, showers = data.read(0, 100)     # (100, 1) and (100, n_voxels), MeV
    """
    fmt = hep_format(path)
    if fmt is None and Path(path).suffix.lower() in (".h5", ".hdf5") and Path(path).is_file():
        import h5py

        try:
            with h5py.File(path, "r") as fh:
                fmt = "hits" if fh.attrs.get("fastsim.format") == HITS_FORMAT else None
        except OSError:
            fmt = None
    if fmt == "root":
        return RootShowerFile(path, geometry)
    if fmt == "hits":
        return HitFile(path, geometry)
    return None
