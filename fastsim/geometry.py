"""Cylindrical voxel geometry, the CaloChallenge binning XML, and the material geometry file beside it.

A calorimeter is a stack of layers along the particle direction (the cylinder
axis); each layer is divided into radial rings (edges in mm) and ``n_alpha``
angular sectors, which may differ from layer to layer (CaloChallenge dataset 1).
Showers are flattened in (layer, alpha, radial) order, so a uniform geometry
reshapes to ``(N, n_layers, n_alpha, n_radial)``.

This module holds that layout: the :class:`Layer` and
:class:`CylindricalGeometry` types, their dictionary form (the model spec's
``geometry`` block), reading and writing the CaloChallenge binning XML
(``<Bins><Bin pid=".." name=".."><Layer id=".." r_edges=".." n_bin_alpha=".."/>``),
the default geometry shipped with the package (CaloChallenge dataset 2,
45 layers x 16 alpha x 9 radial = 6480 voxels), and the material geometry
(:class:`MaterialGeometry`): a small JSON file ``NAME.geometry.json`` beside
``NAME.xml`` giving each layer's medium, thickness (mm, X0 or lambda_int) and
sampling fraction, with passive slabs between them (docs/simulator.md).
:func:`load_detector` returns (binning, material) for a bundled dataset name
(``1-photons``, ``1-pions``, ``2``, ``3``) or a binning path.

As in the CaloChallenge's own reader, a layer written with ``r_edges="0"``
carries no voxels and is skipped; the ids of the others are kept
(``layer_ids``) and the skipped ones are written back as empty layers.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fastsim._util import AT_LEAST, atomic_write_text, positive_int
from fastsim.errors import DataError

__all__ = [
    "DATASET_BINNINGS",
    "DEFAULT_GEOMETRY_XML",
    "MATERIAL_FORMAT",
    "CylindricalGeometry",
    "GeometryError",
    "Layer",
    "MaterialGeometry",
    "MaterialLayer",
    "Medium",
    "PARTICLE_NAMES",
    "default_geometry",
    "load_detector",
    "material_path",
]

#: File name of the packaged default geometry (inside ``fastsim/data``).
DEFAULT_GEOMETRY_XML = "binning_dataset_2.xml"

_PARTICLE_PIDS = {"electron": 11, "positron": -11, "photon": 22, "pion": 211, "gamma": 22}
#: PDG id -> particle name (the first name of each id above).
PARTICLE_NAMES = {pid: name for name, pid in reversed(_PARTICLE_PIDS.items())}


class GeometryError(DataError, ValueError):
    """A geometry description (dict, XML, layer) is malformed."""


def _as_edges(r_edges: Any, where: str) -> tuple[float, ...]:
    try:
        edges = tuple(float(e) for e in r_edges)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{where}: r_edges must be a sequence of numbers, got {r_edges!r}") from exc
    if len(edges) < 2:
        raise GeometryError(f"{where}: r_edges needs at least 2 edges, got {len(edges)}: {edges!r}")
    arr = np.asarray(edges)
    if not np.all(np.isfinite(arr)) or arr[0] < 0:
        raise GeometryError(f"{where}: r_edges must be finite and >= 0 mm, got {edges!r}")
    if np.any(np.diff(arr) <= 0):
        raise GeometryError(f"{where}: r_edges must be strictly increasing, got {edges!r}")
    return edges


@dataclass(frozen=True)
class Layer:
    """One readout layer: radial ring edges in mm and the number of alpha sectors."""

    r_edges: tuple[float, ...]
    n_alpha: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "r_edges", _as_edges(self.r_edges, "Layer"))
        n_alpha = positive_int(self.n_alpha, "n_alpha", error=GeometryError, message=AT_LEAST, where="Layer")
        object.__setattr__(self, "n_alpha", n_alpha)

    @property
    def n_radial(self) -> int:
        """Number of radial rings."""
        return len(self.r_edges) - 1

    @property
    def n_voxels(self) -> int:
        """Voxels in this layer (n_alpha x n_radial)."""
        return self.n_alpha * self.n_radial

    @property
    def r_centres(self) -> np.ndarray:
        """Radial ring mid-points in mm, shape (n_radial,)."""
        edges = np.asarray(self.r_edges, dtype=np.float64)
        return 0.5 * (edges[:-1] + edges[1:])

    @property
    def alpha_centres(self) -> np.ndarray:
        """Alpha-sector centres on [-pi, pi], shape (n_alpha,)."""
        return -math.pi + (np.arange(self.n_alpha) + 0.5) * (2 * math.pi / self.n_alpha)


@dataclass(frozen=True)
class CylindricalGeometry:
    """Layers along the cylinder axis; voxels flattened in (layer, alpha, radial) order."""

    layers: tuple[Layer, ...]
    layer_thickness_mm: float = 3.4
    particle: str = "electron"
    #: The binning's id of each layer (CaloChallenge dataset 1 skips ids: 0, 1, 2, 3, 12); () means 0, 1, 2, ...
    layer_ids: tuple[int, ...] = ()
    _offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers:
            raise GeometryError("CylindricalGeometry: needs at least one layer with voxels, got none")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise GeometryError(f"CylindricalGeometry: layers[{i}] must be a Layer, got {type(layer).__name__}")
        thickness = float(self.layer_thickness_mm)
        if not (math.isfinite(thickness) and thickness > 0):
            raise GeometryError(f"CylindricalGeometry: layer_thickness_mm must be > 0, got {self.layer_thickness_mm!r}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "layer_thickness_mm", thickness)
        ids = tuple(self.layer_ids) or tuple(range(len(layers)))
        if len(ids) != len(layers) or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in ids):
            raise GeometryError(f"CylindricalGeometry: layer_ids must be {len(layers)} integers, got {self.layer_ids!r:.80}")
        ids = tuple(int(i) for i in ids)
        if ids[0] < 0 or any(b <= a for a, b in itertools.pairwise(ids)):
            raise GeometryError(f"CylindricalGeometry: layer_ids must be increasing and >= 0, got {ids!r:.80}")
        object.__setattr__(self, "layer_ids", ids)
        object.__setattr__(self, "_offsets", tuple(np.cumsum([0] + [la.n_voxels for la in layers]).tolist()))

    # -- sizes -------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_voxels(self) -> int:
        return self._offsets[-1]

    @property
    def uniform(self) -> bool:
        """True when every layer has the same radial edges and alpha count."""
        first = self.layers[0]
        return all(la == first for la in self.layers[1:])

    @property
    def depth_mm(self) -> float:
        """Total depth of the layer stack in mm."""
        return self.n_layers * self.layer_thickness_mm

    # -- layout ------------------------------------------------------------
    def layer_slices(self) -> list[slice]:
        """Slices of the flattened voxel vector, one per layer."""
        return [slice(a, b) for a, b in zip(self._offsets[:-1], self._offsets[1:])]

    def voxel_centres(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, r, alpha, layer) of every voxel centre, each of length n_voxels (mm, radians)."""
        r_parts, a_parts, l_parts = [], [], []
        for index, layer in enumerate(self.layers):
            alpha, r = np.meshgrid(layer.alpha_centres, layer.r_centres, indexing="ij")
            r_parts.append(r.ravel())
            a_parts.append(alpha.ravel())
            l_parts.append(np.full(layer.n_voxels, index, dtype=np.int64))
        r = np.concatenate(r_parts)
        alpha = np.concatenate(a_parts)
        return r * np.cos(alpha), r * np.sin(alpha), r, alpha, np.concatenate(l_parts)

    def reshape(self, showers: np.ndarray) -> np.ndarray:
        """View flat showers (N, n_voxels) as (N, n_layers, n_alpha, n_radial); uniform geometries only."""
        showers = np.asarray(showers)
        if not self.uniform:
            raise GeometryError("reshape: the geometry's layers have different binnings; use layer_slices() instead")
        if showers.ndim != 2 or showers.shape[1] != self.n_voxels:
            raise GeometryError(f"reshape: showers must have shape (N, {self.n_voxels}), got {showers.shape}")
        first = self.layers[0]
        return showers.reshape(showers.shape[0], self.n_layers, first.n_alpha, first.n_radial)

    # -- dictionary form (the spec's "geometry" block) ------------------------
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": "cylindrical",
            "layer_thickness_mm": self.layer_thickness_mm,
            "layers": [{"r_edges": list(la.r_edges), "n_alpha": la.n_alpha} for la in self.layers],
        }
        if self.layer_ids != tuple(range(self.n_layers)):
            data["layer_ids"] = list(self.layer_ids)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> CylindricalGeometry:
        if not isinstance(data, dict):
            raise GeometryError(f"geometry: expected a dict, got {type(data).__name__}")
        kind = data.get("kind", "cylindrical")
        if kind != "cylindrical":
            raise GeometryError(f"geometry.kind: expected 'cylindrical', got {kind!r}")
        raw_layers = data.get("layers")
        if not isinstance(raw_layers, (list, tuple)) or not raw_layers:
            raise GeometryError(f"geometry.layers: expected a non-empty list, got {raw_layers!r:.80}")
        layers = []
        for i, raw in enumerate(raw_layers):
            if not isinstance(raw, dict) or "r_edges" not in raw:
                raise GeometryError(f"geometry.layers[{i}]: expected {{'r_edges': [...], 'n_alpha': n}}, got {raw!r:.80}")
            try:
                layers.append(Layer(_as_edges(raw["r_edges"], f"geometry.layers[{i}]"), raw.get("n_alpha", 1)))
            except GeometryError as exc:
                raise GeometryError(f"geometry.layers[{i}]: {exc}") from None
        return cls(
            tuple(layers),
            layer_thickness_mm=data.get("layer_thickness_mm", 3.4),
            particle=data.get("particle", "electron"),
            layer_ids=tuple(data.get("layer_ids", ())),
        )

    # -- CaloChallenge binning XML --------------------------------------------
    @classmethod
    def from_xml(cls, source: str | os.PathLike[str], particle: str | None = None) -> CylindricalGeometry:
        """Read a CaloChallenge binning XML from a path or from the XML text itself.

        Layers with a single radial edge (``r_edges="0"``) carry no voxels and are
        skipped. When the file holds several ``Bin`` entries, ``particle`` picks one
        by name.
        """
        is_text = isinstance(source, str) and source.lstrip().startswith("<")
        where = "binning XML" if is_text else f"binning XML {os.fspath(source)!r}"
        try:
            root = ET.fromstring(os.fspath(source)) if is_text else ET.parse(os.fspath(source)).getroot()
        except FileNotFoundError:
            raise GeometryError(f"{where}: file not found") from None
        except (ET.ParseError, OSError) as exc:
            raise GeometryError(f"{where}: cannot parse: {exc}") from None

        bins = [el for el in root.iter() if any(child.tag == "Layer" for child in el)]
        if not bins:
            raise GeometryError(f"{where}: no <Layer> elements found")
        if particle is not None:
            chosen = [el for el in bins if el.get("name") == particle]
            if not chosen:
                names = sorted({str(el.get("name")) for el in bins})
                raise GeometryError(f"{where}: no Bin for particle {particle!r}; available: {', '.join(names)}")
            bins = chosen
        elif len(bins) > 1 and len({el.get("name") for el in bins}) > 1:
            names = sorted({str(el.get("name")) for el in bins})
            raise GeometryError(f"{where}: several particles ({', '.join(names)}); pass particle=")
        element = bins[0]

        layers, ids = [], []
        for position, child in enumerate(c for c in element if c.tag == "Layer"):
            lid = child.get("id", str(position))
            raw_edges = child.get("r_edges")
            if raw_edges is None:
                raise GeometryError(f"{where}: Layer id={lid} has no r_edges attribute")
            try:
                edges = [float(e) for e in raw_edges.replace(" ", "").split(",") if e != ""]
            except ValueError:
                raise GeometryError(f"{where}: Layer id={lid}: r_edges must be numbers, got {raw_edges!r}") from None
            if len(edges) <= 1:
                continue  # an empty layer, as the CaloChallenge reader treats it
            raw_alpha = child.get("n_bin_alpha", "1")
            try:
                n_alpha = int(raw_alpha)
            except ValueError:
                raise GeometryError(f"{where}: Layer id={lid}: n_bin_alpha must be an integer, got {raw_alpha!r}") from None
            try:
                layers.append(Layer(tuple(edges), n_alpha))
            except GeometryError as exc:
                raise GeometryError(f"{where}: Layer id={lid}: {exc}") from None
            try:
                ids.append(int(lid))
            except ValueError:
                raise GeometryError(f"{where}: Layer id must be an integer, got {lid!r}") from None
        if not layers:
            raise GeometryError(f"{where}: every layer is empty (r_edges=\"0\"); no voxels")
        thickness = element.get("layer_thickness_mm", "3.4")
        try:
            thickness_mm = float(thickness)
        except ValueError:
            raise GeometryError(f"{where}: layer_thickness_mm must be a number, got {thickness!r}") from None
        if any(b <= a for a, b in itertools.pairwise(ids)) or ids[0] < 0:
            raise GeometryError(f"{where}: Layer ids must be increasing and >= 0, got {ids}")
        return cls(tuple(layers), layer_thickness_mm=thickness_mm, particle=element.get("name", "electron"), layer_ids=tuple(ids))

    def to_xml_string(self) -> str:
        """The geometry as CaloChallenge binning XML text."""
        root = ET.Element("Bins")
        pid = _PARTICLE_PIDS.get(self.particle, 0)
        element = ET.SubElement(
            root,
            "Bin",
            {"pid": str(pid), "name": self.particle, "layer_thickness_mm": _fmt(self.layer_thickness_mm)},
        )
        by_id = dict(zip(self.layer_ids, self.layers))
        # ids the binning skips are written as empty layers, as the CaloChallenge files do
        for index in range(self.layer_ids[-1] + 1):
            layer = by_id.get(index)
            ET.SubElement(
                element,
                "Layer",
                {
                    "id": str(index),
                    "r_edges": ",".join(_fmt(e) for e in layer.r_edges) if layer else "0",
                    "n_bin_alpha": str(layer.n_alpha) if layer else "1",
                },
            )
        ET.indent(root, space="  ")
        return ET.tostring(root, encoding="unicode") + "\n"

    def to_xml(self, path: str | os.PathLike[str]) -> Path:
        """Write the binning XML to ``path`` (atomically: temporary name, then rename)."""
        return atomic_write_text(path, self.to_xml_string(), what="binning XML")


def _fmt(value: float) -> str:
    # repr of a float round-trips exactly; drop a trailing ".0" for readability
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


@functools.lru_cache(maxsize=1)
def default_geometry() -> CylindricalGeometry:
    """CaloChallenge dataset 2: 45 layers x 16 alpha x 9 radial (6480 voxels), 3.4 mm layers."""
    text = resources.files("fastsim").joinpath("data").joinpath(DEFAULT_GEOMETRY_XML).read_text(encoding="utf-8")
    return CylindricalGeometry.from_xml(text)


# --------------------------------------------------------------------------- material geometry
#: Format tag of a material geometry file (the JSON file shipped beside a binning XML).
MATERIAL_FORMAT = "fastsim-geometry/1"
#: Suffix that turns a binning XML's path into its material geometry file's path.
MATERIAL_SUFFIX = ".geometry.json"
#: Bundled CaloChallenge binnings by dataset name (files inside ``fastsim/data``).
DATASET_BINNINGS = {
    "1-photons": "binning_dataset_1_photons.xml",
    "1-pions": "binning_dataset_1_pions.xml",
    "2": "binning_dataset_2.xml",
    "3": "binning_dataset_3.xml",
}

_MEDIUM_KEYS = {
    "x0_mm": "radiation length X0",
    "lambda_mm": "nuclear interaction length lambda_int",
    "moliere_mm": "Moliere radius R_M",
    "critical_mev": "critical energy E_c",
    "z_eff": "effective atomic number",
    "sampling_frequency": "F_s = X0 / sampling period",
    "e_over_mip": "electron / mip response ratio",
    "stochastic": "stochastic term a (sigma/E = a / sqrt(E/GeV))",
    "constant": "constant term b",
    "threshold_mev": "voxel threshold on the output scale",
}


@dataclass(frozen=True)
class Medium:
    """A calorimeter medium's constants (lengths in mm, energies in MeV); see docs/simulator.md."""

    name: str
    x0_mm: float
    lambda_mm: float
    moliere_mm: float
    critical_mev: float
    z_eff: float
    sampling_frequency: float = 1.0
    e_over_mip: float = 1.0
    stochastic: float = 0.0
    constant: float = 0.0
    threshold_mev: float = 0.0


@dataclass(frozen=True)
class MaterialLayer:
    """One slab of the stack along the layer normal: a readout layer (``binning_id``) or passive material."""

    name: str
    medium: Medium
    thickness_mm: float
    binning_id: int | None = None
    sampling_fraction: float = 0.0

    @property
    def thickness_x0(self) -> float:
        return self.thickness_mm / self.medium.x0_mm

    @property
    def thickness_lambda(self) -> float:
        return self.thickness_mm / self.medium.lambda_mm

    @property
    def readout(self) -> bool:
        return self.binning_id is not None


@dataclass(frozen=True)
class MaterialGeometry:
    """The material a binning's layers are made of: slabs in depth order, media, the shower medium.

    Read from the small JSON file beside a binning XML (``NAME.geometry.json`` beside
    ``NAME.xml``); ``readout_layers`` must match the binning's layers one to one.
    """

    name: str
    version: str
    layers: tuple[MaterialLayer, ...]
    shower_medium: Medium
    description: str = ""
    sources: tuple[str, ...] = ()

    @property
    def readout_layers(self) -> tuple[MaterialLayer, ...]:
        return tuple(layer for layer in self.layers if layer.readout)

    @property
    def depth_x0(self) -> float:
        return float(sum(layer.thickness_x0 for layer in self.layers))

    @property
    def depth_lambda(self) -> float:
        return float(sum(layer.thickness_lambda for layer in self.layers))

    def check_binning(self, binning: CylindricalGeometry, where: str = "geometry file") -> None:
        """Raise GeometryError unless the readout layers are the binning's layers (same count, same ids)."""
        ids = tuple(layer.binning_id for layer in self.readout_layers)
        if len(ids) != binning.n_layers:
            raise GeometryError(
                f"{where}: {len(ids)} readout layers {list(ids)}, but the binning has {binning.n_layers} "
                f"layers with voxels (ids {list(binning.layer_ids)})"
            )
        if ids != binning.layer_ids:
            raise GeometryError(f"{where}: readout layer ids {list(ids)} differ from the binning's {list(binning.layer_ids)}")

    @classmethod
    def uniform(cls, binning: CylindricalGeometry, medium: Medium, sampling_fraction: float = 0.0) -> MaterialGeometry:
        """Every readout layer ``binning.layer_thickness_mm`` of one medium, nothing passive."""
        layers = tuple(
            MaterialLayer(f"layer {i}", medium, binning.layer_thickness_mm, i, sampling_fraction) for i in binning.layer_ids
        )
        return cls(f"uniform {medium.name}", "1", layers, medium)

    # -- JSON -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, where: str = "geometry file") -> MaterialGeometry:
        if not isinstance(data, dict):
            raise GeometryError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != MATERIAL_FORMAT:
            raise GeometryError(f"{where}: format must be {MATERIAL_FORMAT!r}, got {data.get('format')!r}")
        for key in ("name", "version"):
            if not isinstance(data.get(key), str) or not data.get(key):
                raise GeometryError(f"{where}: {key} must be a non-empty string, got {data.get(key)!r}")
        raw_media = data.get("media")
        if not isinstance(raw_media, dict) or not raw_media:
            raise GeometryError(f"{where}: media must be an object of named media, got {raw_media!r:.80}")
        media = {name: _medium(name, raw, f"{where}: media.{name}") for name, raw in raw_media.items()}
        shower = data.get("shower_medium")
        if shower not in media:
            raise GeometryError(f"{where}: shower_medium must name one of the media ({', '.join(media)}), got {shower!r}")
        raw_layers = data.get("layers")
        if not isinstance(raw_layers, list) or not raw_layers:
            raise GeometryError(f"{where}: layers must be a non-empty list, got {raw_layers!r:.80}")
        layers = tuple(_material_layer(raw, media, f"{where}: layers[{i}]") for i, raw in enumerate(raw_layers))
        ids = [layer.binning_id for layer in layers if layer.binning_id is not None]  # the readout layers
        if not ids:
            raise GeometryError(f"{where}: no readout layer (a layer with a binning id)")
        if any(b <= a for a, b in itertools.pairwise(ids)):
            raise GeometryError(f"{where}: readout layer ids must increase with depth, got {ids}")
        sources = data.get("sources", [])
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise GeometryError(f"{where}: sources must be a list of strings, got {sources!r:.80}")
        return cls(str(data["name"]), str(data["version"]), layers, media[shower], str(data.get("description", "")), tuple(sources))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MaterialGeometry:
        """Read a material geometry JSON file; a missing or malformed file is a GeometryError naming it."""
        where = f"geometry file {os.fspath(path)!r}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GeometryError(f"{where}: file not found") from None
        except OSError as exc:
            raise GeometryError(f"{where}: cannot read ({exc.strerror or exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GeometryError(f"{where}: not JSON: {exc}") from None
        return cls.from_dict(data, where)

    def to_dict(self) -> dict[str, Any]:
        media: dict[str, Medium] = {}
        for layer in self.layers:
            media.setdefault(layer.medium.name, layer.medium)
        media.setdefault(self.shower_medium.name, self.shower_medium)
        return {
            "format": MATERIAL_FORMAT,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "sources": list(self.sources),
            "shower_medium": self.shower_medium.name,
            "media": {name: {k: getattr(m, k) for k in _MEDIUM_KEYS} for name, m in media.items()},
            "layers": [
                {"name": la.name, "id": la.binning_id, "medium": la.medium.name, "thickness_mm": la.thickness_mm,
                 **({"sampling_fraction": la.sampling_fraction} if la.readout else {})}
                for la in self.layers
            ],
        }

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"


def _number(raw: dict[str, Any], key: str, where: str, positive: bool = True, default: float | None = None) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
        value <= 0 if positive else value < 0
    ):
        raise GeometryError(f"{where}: {key} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _medium(name: str, raw: Any, where: str) -> Medium:
    if not isinstance(raw, dict):
        raise GeometryError(f"{where}: expected an object, got {raw!r:.80}")
    unknown = set(raw) - set(_MEDIUM_KEYS) - {"comment"}
    if unknown:
        raise GeometryError(f"{where}: unknown keys {sorted(unknown)}; expected {', '.join(_MEDIUM_KEYS)}")
    positive = ("x0_mm", "lambda_mm", "moliere_mm", "critical_mev", "z_eff")
    values = {k: _number(raw, k, where) for k in positive}
    defaults = {"sampling_frequency": 1.0, "e_over_mip": 1.0, "stochastic": 0.0, "constant": 0.0, "threshold_mev": 0.0}
    for key, default in defaults.items():
        values[key] = _number(raw, key, where, positive=key in ("sampling_frequency", "e_over_mip"), default=default)
    return Medium(name, **values)


def _material_layer(raw: Any, media: dict[str, Medium], where: str) -> MaterialLayer:
    if not isinstance(raw, dict):
        raise GeometryError(f"{where}: expected an object, got {raw!r:.80}")
    unknown = set(raw) - {"name", "id", "medium", "thickness_mm", "thickness_x0", "thickness_lambda", "sampling_fraction", "comment"}
    if unknown:
        raise GeometryError(f"{where}: unknown keys {sorted(unknown)}")
    medium = media.get(raw["medium"]) if "medium" in raw else None
    if medium is None:
        raise GeometryError(f"{where}: medium must name one of the media ({', '.join(media)}), got {raw.get('medium')!r}")
    given = [k for k in ("thickness_mm", "thickness_x0", "thickness_lambda") if k in raw]
    if len(given) != 1:
        raise GeometryError(f"{where}: give exactly one of thickness_mm, thickness_x0, thickness_lambda, got {given or 'none'}")
    value = _number(raw, given[0], where)
    scale = {"thickness_mm": 1.0, "thickness_x0": medium.x0_mm, "thickness_lambda": medium.lambda_mm}[given[0]]
    binning_id = raw.get("id")
    if binning_id is not None and (isinstance(binning_id, bool) or not isinstance(binning_id, int) or binning_id < 0):
        raise GeometryError(f"{where}: id must be the binning layer id (an integer >= 0) or null, got {binning_id!r}")
    fraction = 0.0
    if binning_id is not None:
        fraction = _number(raw, "sampling_fraction", where)
        if fraction > 1:
            raise GeometryError(f"{where}: sampling_fraction must be in (0, 1], got {fraction!r}")
    return MaterialLayer(str(raw.get("name", "")), medium, value * scale, binning_id, fraction)


def material_path(binning_path: str | os.PathLike[str]) -> Path:
    """The material geometry file that belongs beside a binning XML: ``NAME.xml`` -> ``NAME.geometry.json``."""
    path = Path(binning_path)
    return path.with_name(path.stem + MATERIAL_SUFFIX)


def load_detector(source: str | os.PathLike[str], particle: str | None = None) -> tuple[CylindricalGeometry, MaterialGeometry]:
    """(binning, material) of a bundled dataset name (``1-photons``, ``1-pions``, ``2``, ``3``) or a binning XML path.

    A path needs its material geometry file beside it (``NAME.geometry.json``); the file's
    readout layers must be the binning's layers. Errors are GeometryErrors naming the file.
    """
    text = os.fspath(source)
    if text in DATASET_BINNINGS:
        folder = resources.files("fastsim").joinpath("data")
        xml_text = folder.joinpath(DATASET_BINNINGS[text]).read_text(encoding="utf-8")
        binning = CylindricalGeometry.from_xml(xml_text, particle)
        json_name = Path(DATASET_BINNINGS[text]).stem + MATERIAL_SUFFIX
        material = MaterialGeometry.from_dict(
            json.loads(folder.joinpath(json_name).read_text(encoding="utf-8")), f"geometry file {json_name!r}"
        )
        material.check_binning(binning, f"geometry file {json_name!r}")
        return binning, material
    path = Path(text)
    if path.suffix.lower() != ".xml":
        raise GeometryError(
            f"binning: expected a dataset name ({', '.join(DATASET_BINNINGS)}) or a binning .xml file, got {text!r}"
        )
    if not path.is_file():
        raise GeometryError(f"binning XML {text!r}: file not found")
    binning = CylindricalGeometry.from_xml(path, particle)
    beside = material_path(path)
    if not beside.is_file():
        raise GeometryError(f"binning XML {text!r}: its geometry file {str(beside)!r} (materials per layer) is missing")
    material = MaterialGeometry.from_file(beside)
    material.check_binning(binning, f"geometry file {str(beside)!r}")
    return binning, material
