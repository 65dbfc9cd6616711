"""Cylindrical voxel geometry and the CaloChallenge binning XML.

A calorimeter is a stack of layers along the particle direction (the cylinder
axis); each layer is divided into radial rings (edges in mm) and ``n_alpha``
angular sectors. Showers are flattened in (layer, alpha, radial) order, so a
uniform geometry reshapes to ``(N, n_layers, n_alpha, n_radial)``.

This module owns that layout: the :class:`Layer` and
:class:`CylindricalGeometry` types, their dictionary form (the model spec's
``geometry`` block), reading and writing the CaloChallenge binning XML
(``<Bins><Bin pid=".." name=".."><Layer id=".." r_edges=".." n_bin_alpha=".."/>``),
and the default geometry shipped with the package (CaloChallenge dataset 2,
45 layers x 16 alpha x 9 radial = 6480 voxels).

As in the CaloChallenge's own reader, a layer written with ``r_edges="0"``
carries no voxels and is skipped.
"""

from __future__ import annotations

import functools
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fastsim._util import atomic_write_text
from fastsim.errors import DataError

__all__ = [
    "CylindricalGeometry",
    "GeometryError",
    "Layer",
    "default_geometry",
    "DEFAULT_GEOMETRY_XML",
]

#: File name of the packaged default geometry (inside ``fastsim/data``).
DEFAULT_GEOMETRY_XML = "binning_dataset_2.xml"

_PARTICLE_PIDS = {"electron": 11, "positron": -11, "photon": 22, "pion": 211, "gamma": 22}


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
        n_alpha = self.n_alpha
        if isinstance(n_alpha, bool) or not isinstance(n_alpha, (int, np.integer)) or n_alpha < 1:
            raise GeometryError(f"Layer: n_alpha must be an integer >= 1, got {n_alpha!r}")
        object.__setattr__(self, "n_alpha", int(n_alpha))

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
        edges = np.asarray(self.r_edges)
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
        return {
            "kind": "cylindrical",
            "layer_thickness_mm": self.layer_thickness_mm,
            "layers": [{"r_edges": list(la.r_edges), "n_alpha": la.n_alpha} for la in self.layers],
        }

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
        )

    # -- CaloChallenge binning XML --------------------------------------------
    @classmethod
    def from_xml(cls, source: str | os.PathLike, particle: str | None = None) -> CylindricalGeometry:
        """Read a CaloChallenge binning XML from a path or from the XML text itself.

        Layers with a single radial edge (``r_edges="0"``) carry no voxels and are
        skipped. When the file holds several ``Bin`` entries, ``particle`` picks one
        by name.
        """
        is_text = isinstance(source, str) and source.lstrip().startswith("<")
        where = "binning XML" if is_text else f"binning XML {os.fspath(source)!r}"
        try:
            root = ET.fromstring(source) if is_text else ET.parse(os.fspath(source)).getroot()
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

        layers = []
        for child in element:
            if child.tag != "Layer":
                continue
            lid = child.get("id", "?")
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
        if not layers:
            raise GeometryError(f"{where}: every layer is empty (r_edges=\"0\"); no voxels")
        thickness = element.get("layer_thickness_mm", "3.4")
        try:
            thickness_mm = float(thickness)
        except ValueError:
            raise GeometryError(f"{where}: layer_thickness_mm must be a number, got {thickness!r}") from None
        return cls(tuple(layers), layer_thickness_mm=thickness_mm, particle=element.get("name", "electron"))

    def to_xml_string(self) -> str:
        """The geometry as CaloChallenge binning XML text."""
        root = ET.Element("Bins")
        pid = _PARTICLE_PIDS.get(self.particle, 0)
        element = ET.SubElement(
            root,
            "Bin",
            {"pid": str(pid), "name": self.particle, "layer_thickness_mm": _fmt(self.layer_thickness_mm)},
        )
        for index, layer in enumerate(self.layers):
            ET.SubElement(
                element,
                "Layer",
                {
                    "id": str(index),
                    "r_edges": ",".join(_fmt(e) for e in layer.r_edges),
                    "n_bin_alpha": str(layer.n_alpha),
                },
            )
        ET.indent(root, space="  ")
        return ET.tostring(root, encoding="unicode") + "\n"

    def to_xml(self, path: str | os.PathLike) -> Path:
        """Write the binning XML to ``path`` (atomically: temporary name, then rename)."""
        return atomic_write_text(path, self.to_xml_string(), what="binning XML")
        return path


def _fmt(value: float) -> str:
    # repr of a float round-trips exactly; drop a trailing ".0" for readability
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


@functools.lru_cache(maxsize=1)
def default_geometry() -> CylindricalGeometry:
    """CaloChallenge dataset 2: 45 layers x 16 alpha x 9 radial (6480 voxels), 3.4 mm layers."""
    text = resources.files("fastsim").joinpath("data", DEFAULT_GEOMETRY_XML).read_text(encoding="utf-8")
    return CylindricalGeometry.from_xml(text)
