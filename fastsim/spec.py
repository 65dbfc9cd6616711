"""The model contract: what a fastsim decoder takes, returns and means.

This module defines :class:`ModelSpec` (the ``fastsim.spec`` JSON document of
docs/contract.md, format ``fastsim-decoder/1``, ``fastsim-decoder/1.1`` when a
condition is periodic, ``fastsim-decoder/1.2`` when one is categorical), reading it from an ONNX file's
``metadata_props`` or from a ``MODEL.onnx.json`` sidecar, writing it into a
model, and checking it against the graph's inputs and outputs.

Reading the metadata does not need ``onnx`` or a session: the ONNX file is a
protobuf ``ModelProto`` and the few top-level fields needed here are read
directly, which also lets us tell a non-ONNX file from a model early.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from fastsim.errors import ModelError, SpecError

__all__ = [
    "DEFAULT_IO_NAMES",
    "FORMAT",
    "FORMATS",
    "FORMAT_CATEGORICAL",
    "FORMAT_PERIODIC",
    "SAMPLING_LAWS",
    "SPEC_KEY",
    "ConditionSpec",
    "ModelSpec",
    "OutputSpec",
    "check_graph",
    "embed_spec",
    "external_data_locations",
    "read_metadata",
    "read_spec",
    "sidecar_path",
]

FORMAT = "fastsim-decoder/1"
#: Format 1.1 adds ``period`` to conditions; a spec uses it only when a condition is periodic,
#: so models without one keep format 1 and stay readable by 1.0 readers.
FORMAT_PERIODIC = "fastsim-decoder/1.1"
#: Format 1.2 adds ``categories`` to conditions (a discrete condition such as the particle
#: type); only specs with such a condition use it.
FORMAT_CATEGORICAL = "fastsim-decoder/1.2"
FORMATS = (FORMAT, FORMAT_PERIODIC, FORMAT_CATEGORICAL)
SPEC_KEY = "fastsim.spec"
SAMPLING_LAWS = ("uniform", "log-uniform", "categorical")
#: Contract role -> graph tensor name, for models that follow the contract's names.
DEFAULT_IO_NAMES = {"z": "z", "conditions": "conditions", "showers": "showers"}
_PRIOR_KINDS = ("standard_normal",)
_OUTPUT_DTYPES = ("float32", "float16")
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


def _fail(where: str, expected: str, given: Any) -> SpecError:
    return SpecError(f"spec: {where} must be {expected}, got {given!r}")


def _number(block: Mapping[str, Any], key: str, where: str) -> float:
    value = block.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(f"{where}.{key}", "a finite number", value)
    return float(value)


def _string(block: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = block.get(key, default)
    if not isinstance(value, str) or not value:
        raise _fail(f"{where}.{key}", "a non-empty string", value)
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, "a JSON object", value)
    return dict(value)


def _categories(value: Any, where: str) -> tuple[tuple[str, float], ...]:
    """JSON ``{"electron": 11, "photon": 22}`` as ``(label, code)`` pairs, in the document's order."""
    block = _mapping(value, where)
    for label, code in block.items():
        if isinstance(code, bool) or not isinstance(code, (int, float)) or not math.isfinite(code):
            raise _fail(f"{where}[{label!r}]", "a finite number", code)
    return tuple((label, float(code)) for label, code in block.items())


@dataclass(frozen=True)
class ConditionSpec:
    """One conditioning input: its name, physical unit, training range and sampling law.

    ``period`` (format 1.1) marks a periodic condition such as an azimuth: values
    are wrapped into [min, min + period) before they are checked and decoded.

    ``categories`` (format 1.2) marks a discrete condition such as the particle
    type: ``(label, code)`` pairs, e.g. ``(("electron", 11.0), ("photon", 22.0))``
    with PDG ids as codes. The decoder receives the code; ``min``/``max`` are the
    smallest and largest code and ``sampling`` is ``"categorical"`` (each category
    equally likely when the condition is sampled).
    """

    name: str
    unit: str
    min: float
    max: float
    sampling: str = "uniform"
    period: float | None = None
    categories: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        where = f"conditions[{self.name!r}]"
        if self.sampling not in SAMPLING_LAWS:
            raise _fail(f"{where}.sampling", f"one of {list(SAMPLING_LAWS)}", self.sampling)
        if self.categories is not None or self.sampling == "categorical":
            self._check_categories(where)
        if not (math.isfinite(self.min) and math.isfinite(self.max)) or not self.min < self.max:
            raise _fail(f"{where}.min/max", "finite with min < max", (self.min, self.max))
        if self.sampling == "log-uniform" and self.min <= 0:
            raise _fail(f"{where}.min", "> 0 for log-uniform sampling", self.min)
        if self.period is not None:
            period = self.period
            if isinstance(period, bool) or not isinstance(period, (int, float)) or not math.isfinite(period) \
                    or period <= 0:
                raise _fail(f"{where}.period", "a finite number > 0", period)
            # Slack for a range written as [0, 2*pi] with a rounded period.
            if self.max - self.min > period * (1 + 1e-12):
                raise _fail(f"{where}.period", f">= max - min = {self.max - self.min!r}", period)
            if self.sampling != "uniform":
                raise _fail(f"{where}.sampling", "'uniform' for a periodic condition", self.sampling)
            object.__setattr__(self, "period", float(period))

    def _check_categories(self, where: str) -> None:
        pairs = self.categories
        if self.sampling != "categorical":
            raise _fail(f"{where}.sampling", "'categorical' for a condition with categories", self.sampling)
        if not isinstance(pairs, tuple) or len(pairs) < 2:
            raise _fail(f"{where}.categories", "at least two categories {label: code}", pairs)
        labels = [label for label, _ in pairs]
        codes = [code for _, code in pairs]
        if any(not isinstance(label, str) or not label.strip() or ":" in label or "," in label for label in labels):
            raise _fail(f"{where}.categories", "labels that are non-empty strings without ':' or ','", labels)
        # Codes reach the decoder as float32: integers up to 2**24 are exact there.
        if any(isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c)
               or c != round(c) or abs(c) > 2**24 for c in codes):
            raise _fail(f"{where}.categories", "integer codes of magnitude <= 2**24", codes)
        if len({label.lower() for label in labels}) != len(labels) or len(set(codes)) != len(codes):
            raise _fail(f"{where}.categories", "distinct labels and distinct codes", dict(pairs))
        if (self.min, self.max) != (min(codes), max(codes)):
            raise _fail(f"{where}.min/max", f"the smallest and largest code ({min(codes):g}, {max(codes):g})",
                        (self.min, self.max))
        object.__setattr__(self, "categories", tuple((label, float(code)) for label, code in pairs))

    @property
    def codes(self) -> tuple[float, ...]:
        """The codes of a categorical condition, in spec order (empty for a continuous one)."""
        return tuple(code for _, code in self.categories or ())

    def code_of(self, label: str) -> float | None:
        """The code of a category by its label (case-insensitive), None if there is no such label."""
        for name, code in self.categories or ():
            if name.lower() == label.strip().lower():
                return code
        return None

    def category_list(self) -> str:
        """The categories as text for messages: ``electron (11), photon (22)``."""
        return ", ".join(f"{label} ({code:g})" for label, code in self.categories or ())

    def label_of(self, code: float) -> str:
        """The label of a category code (the code itself as text when it is not one)."""
        for name, value in self.categories or ():
            if value == code:
                return name
        return f"{code:g}"

    @classmethod
    def from_dict(cls, block: Any, index: int = 0) -> ConditionSpec:
        where = f"conditions[{index}]"
        block = _mapping(block, where)
        return cls(
            name=_string(block, "name", where),
            unit=_string(block, "unit", where),
            min=_number(block, "min", where),
            max=_number(block, "max", where),
            sampling=_string(block, "sampling", where, "uniform"),
            period=_number(block, "period", where) if "period" in block else None,
            categories=_categories(block["categories"], f"{where}.categories") if "categories" in block else None,
        )

    def to_dict(self) -> dict[str, Any]:
        block = {"name": self.name, "unit": self.unit, "min": self.min, "max": self.max,
                 "sampling": self.sampling}
        # Omitted when None: format-1 specs stay byte-identical.
        if self.period is not None:
            block["period"] = self.period
        if self.categories is not None:
            block["categories"] = {label: code for label, code in self.categories}
        return block


@dataclass(frozen=True)
class OutputSpec:
    """The decoder's output: deposited energy per voxel, its unit, width, geometry and dtype."""

    name: str = "showers"
    unit: str = "MeV"
    n_voxels: int = 0
    geometry: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.n_voxels, bool) or not isinstance(self.n_voxels, int) or self.n_voxels <= 0:
            raise _fail("output.n_voxels", "a positive integer", self.n_voxels)
        if self.dtype not in _OUTPUT_DTYPES:
            raise _fail("output.dtype", f"one of {list(_OUTPUT_DTYPES)}", self.dtype)

    @classmethod
    def from_dict(cls, block: Any) -> OutputSpec:
        block = _mapping(block, "output")
        return cls(
            name=_string(block, "name", "output", "showers"),
            unit=_string(block, "unit", "output", "MeV"),
            n_voxels=block.get("n_voxels"),
            geometry=_mapping(block.get("geometry", {}), "output.geometry"),
            dtype=_string(block, "dtype", "output", "float32"),
        )

    def to_dict(self) -> dict[str, Any]:
        block = {"name": self.name, "unit": self.unit, "n_voxels": self.n_voxels,
                 "geometry": copy.deepcopy(self.geometry)}
        if self.dtype != "float32":
            block["dtype"] = self.dtype
        return block


@dataclass(frozen=True)
class ModelSpec:
    """The ``fastsim.spec`` document: everything a host needs to drive a decoder.

    ``io_names`` maps the contract's roles ``z``, ``conditions`` and ``showers``
    to the graph's tensor names, for models exported elsewhere with other names.
    """

    latent_dim: int
    conditions: tuple[ConditionSpec, ...]
    output: OutputSpec
    name: str = "unnamed"
    version: str = "0.0.0"
    prior: dict[str, Any] = field(default_factory=lambda: {"kind": "standard_normal"})
    io_names: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_IO_NAMES))
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    producer: str = ""
    format: str | None = None

    def __post_init__(self) -> None:
        listed = self.conditions if isinstance(self.conditions, tuple) else ()
        periodic = [c.name for c in listed if c.period is not None]
        categorical = [c.name for c in listed if c.categories is not None]
        needed = FORMAT_CATEGORICAL if categorical else FORMAT_PERIODIC if periodic else FORMAT
        if self.format is None:
            object.__setattr__(self, "format", needed)  # the lowest format that holds the spec
        if self.format not in FORMATS:
            raise _fail("format", f"one of {list(FORMATS)}", self.format)
        if self.format == FORMAT and periodic:
            raise _fail("format", f"{FORMAT_PERIODIC!r} for periodic conditions {periodic} (format 1 has no "
                        "'period')", self.format)
        if self.format != FORMAT_CATEGORICAL and categorical:
            raise _fail("format", f"{FORMAT_CATEGORICAL!r} for categorical conditions {categorical} (format "
                        f"{self.format!r} has no 'categories')", self.format)
        if isinstance(self.latent_dim, bool) or not isinstance(self.latent_dim, int) or self.latent_dim <= 0:
            raise _fail("latent_dim", "a positive integer", self.latent_dim)
        if not isinstance(self.conditions, tuple) or not self.conditions:
            raise _fail("conditions", "a non-empty list of conditions", self.conditions)
        names = [c.name for c in self.conditions]
        if len(set(names)) != len(names):
            raise _fail("conditions", "uniquely named", names)
        if self.prior.get("kind") not in _PRIOR_KINDS:
            raise _fail("prior.kind", f"one of {list(_PRIOR_KINDS)}", self.prior.get("kind"))
        unknown = set(self.io_names) - set(DEFAULT_IO_NAMES)
        if unknown:
            raise _fail("io_names", f"keys among {sorted(DEFAULT_IO_NAMES)}", sorted(unknown))
        # Fill in the roles a partial mapping leaves out, so lookups never fail.
        object.__setattr__(self, "io_names", {**DEFAULT_IO_NAMES, **self.io_names})

    @property
    def n_conditions(self) -> int:
        return len(self.conditions)

    @property
    def n_voxels(self) -> int:
        return self.output.n_voxels

    @property
    def condition_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.conditions)

    def condition(self, name: str) -> ConditionSpec:
        for cond in self.conditions:
            if cond.name == name:
                return cond
        raise KeyError(name)

    @classmethod
    def from_dict(cls, doc: Any) -> ModelSpec:
        """Build a spec from the parsed JSON document, naming the first bad key."""
        doc = _mapping(doc, "document")
        for key in ("latent_dim", "conditions", "output"):
            if key not in doc:
                raise SpecError(f"spec: missing required key {key!r}")
        raw_conditions = doc["conditions"]
        if not isinstance(raw_conditions, Sequence) or isinstance(raw_conditions, (str, bytes)):
            raise _fail("conditions", "a list of objects", raw_conditions)
        version = doc.get("version", "0.0.0")
        return cls(
            format=doc.get("format"),
            name=_string(doc, "name", "spec", "unnamed"),
            version=str(version),
            latent_dim=doc["latent_dim"],
            prior=_mapping(doc.get("prior", {"kind": "standard_normal"}), "prior"),
            conditions=tuple(ConditionSpec.from_dict(c, i) for i, c in enumerate(raw_conditions)),
            output=OutputSpec.from_dict(doc["output"]),
            io_names=_mapping(doc.get("io_names", {}), "io_names"),
            training=_mapping(doc.get("training", {}), "training"),
            metrics=_mapping(doc.get("metrics", {}), "metrics"),
            producer=str(doc.get("producer", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "latent_dim": self.latent_dim,
            "prior": copy.deepcopy(self.prior),
            "conditions": [c.to_dict() for c in self.conditions],
            "output": self.output.to_dict(),
            "training": copy.deepcopy(self.training),
            "metrics": copy.deepcopy(self.metrics),
            "producer": self.producer,
        }
        # The contract's key set stays as in docs/contract.md unless a mapping is needed.
        if self.io_names != DEFAULT_IO_NAMES:
            doc["io_names"] = dict(self.io_names)
        return doc

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SpecError(f"spec: not valid JSON ({exc})") from None
        return cls.from_dict(doc)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ModelSpec:
        """Read a spec JSON file (a sidecar or ``--spec FILE``)."""
        path = Path(path)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise SpecError(f"spec file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
        try:
            return cls.from_json(text)
        except SpecError as exc:
            raise SpecError(f"{exc} (in {str(path)!r})") from None

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (the dataclass is frozen)."""
        doc = self.to_dict()
        doc["io_names"] = dict(self.io_names)
        for key, value in changes.items():
            doc[key] = value.to_dict() if hasattr(value, "to_dict") else value
        if "conditions" in changes and "format" not in changes:
            del doc["format"]  # new conditions: the format they need
        if "conditions" in changes:
            doc["conditions"] = [c.to_dict() if hasattr(c, "to_dict") else c for c in changes["conditions"]]
        return ModelSpec.from_dict(doc)


# --- reading the ONNX file ---------------------------------------------------------------

def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) of a protobuf message's top-level fields."""
    # The value is an int for wire type 0, a memoryview for wire type 2, None otherwise:
    # typed Any as callers tell them apart by the wire type, which mypy cannot narrow on.
    value: int | memoryview | None
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = None, pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield number, wire, value


# ModelProto field numbers (onnx.proto): ir_version = 1, graph = 7, metadata_props = 14.
_IR_VERSION, _GRAPH, _METADATA_PROPS = 1, 7, 14


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the ``metadata_props`` of an ONNX file, raising ModelError if it is not ONNX."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {str(path)!r} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"model file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    metadata: dict[str, str] = {}
    seen_ir = seen_graph = False
    try:
        for number, wire, value in _fields(memoryview(data)):
            if number == _IR_VERSION and wire == 0:
                seen_ir = True
            elif number == _GRAPH and wire == 2:
                seen_graph = True
            elif number == _METADATA_PROPS and wire == 2:
                entry = {n: bytes(v).decode("utf-8") for n, w, v in _fields(value) if w == 2}
                metadata[entry.get(1, "")] = entry.get(2, "")
    except (ValueError, UnicodeDecodeError):
        seen_ir = False
    if not (seen_ir and seen_graph):
        raise ModelError(f"model file {str(path)!r} is not an ONNX model (no ModelProto with a graph)")
    return metadata


# Where TensorProtos can sit (onnx.proto field numbers): ModelProto.graph 7 and .functions 25;
# GraphProto.node 1, .initializer 5, .sparse_initializer 15; NodeProto.attribute 5;
# AttributeProto.t 5, .g 6, .tensors 10, .graphs 11, .sparse_tensor 22, .sparse_tensors 23;
# SparseTensorProto.values 1, .indices 2; FunctionProto.node 7; TensorProto.external_data 13.
_GRAPH_TENSORS, _GRAPH_SPARSE, _GRAPH_NODES = 5, 15, 1
_NODE_ATTRIBUTES = 5
_ATTR_TENSOR, _ATTR_SPARSE = (5, 10), (22, 23)
_ATTR_GRAPHS = (6, 11)
_MODEL_FUNCTIONS, _FUNCTION_NODES = 25, 7
_TENSOR_EXTERNAL_DATA = 13
_MAX_NESTING = 64


def external_data_locations(path: str | os.PathLike[str]) -> list[str]:
    """The ``location`` of every tensor stored as external data in an ONNX file, in file order.

    Read from the protobuf without onnx: initializers, sparse initializers and
    tensors in node attributes, in the main graph, subgraphs and functions.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"model file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    found: list[str] = []

    def tensor(buf: memoryview) -> None:
        for number, wire, value in _fields(buf):
            if number == _TENSOR_EXTERNAL_DATA and wire == 2:
                entry = {n: bytes(v).decode("utf-8", "replace") for n, w, v in _fields(value) if w == 2}
                if entry.get(1) == "location":
                    found.append(entry.get(2, ""))

    def sparse(buf: memoryview) -> None:
        for number, wire, value in _fields(buf):
            if number in (1, 2) and wire == 2:
                tensor(value)

    def nodes(buf: memoryview, field: int, depth: int) -> None:
        for number, wire, value in _fields(buf):
            if number != field or wire != 2:
                continue
            for a_number, a_wire, attribute in _fields(value):
                if a_number != _NODE_ATTRIBUTES or a_wire != 2:
                    continue
                for t_number, t_wire, item in _fields(attribute):
                    if t_wire != 2:
                        continue
                    if t_number in _ATTR_TENSOR:
                        tensor(item)
                    elif t_number in _ATTR_SPARSE:
                        sparse(item)
                    elif t_number in _ATTR_GRAPHS:
                        graph(item, depth + 1)

    def graph(buf: memoryview, depth: int) -> None:
        if depth > _MAX_NESTING:
            raise ValueError("subgraphs nested too deeply")
        for number, wire, value in _fields(buf):
            if wire != 2:
                continue
            if number == _GRAPH_TENSORS:
                tensor(value)
            elif number == _GRAPH_SPARSE:
                sparse(value)
        nodes(buf, _GRAPH_NODES, depth)

    try:
        for number, wire, value in _fields(memoryview(data)):
            if number == _GRAPH and wire == 2:
                graph(value, 0)
            elif number == _MODEL_FUNCTIONS and wire == 2:
                nodes(value, _FUNCTION_NODES, 0)
    except ValueError as exc:
        raise ModelError(f"model file {str(path)!r} is not a readable ONNX model ({exc})") from None
    return found


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """The sidecar spec for ``MODEL.onnx`` is ``MODEL.onnx.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def read_spec(path: str | os.PathLike[str], sidecar: str | os.PathLike[str] | None = None) -> ModelSpec:
    """Read a model's spec: an explicit ``sidecar`` file, else the embedded entry, else ``MODEL.onnx.json``."""
    metadata = read_metadata(path)
    if sidecar is not None:
        return ModelSpec.from_file(sidecar)
    if SPEC_KEY in metadata:
        try:
            return ModelSpec.from_json(metadata[SPEC_KEY])
        except SpecError as exc:
            raise SpecError(f"{exc} (in the {SPEC_KEY!r} metadata of {str(path)!r})") from None
    implicit = sidecar_path(path)
    if implicit.is_file():
        return ModelSpec.from_file(implicit)
    raise SpecError(
        f"model {str(path)!r} has no {SPEC_KEY!r} metadata and no sidecar {implicit.name!r}; "
        "pass the spec with --spec FILE (Python: spec=...)"
    )


def embed_spec(model: Any, spec: ModelSpec) -> Any:
    """Write ``spec`` into an ``onnx.ModelProto``'s metadata (replacing any previous one); returns it."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != SPEC_KEY]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    entry = model.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, spec.to_json()
    return model


# --- checking the spec against the graph -------------------------------------------------

def _dim_ok(actual: Any, expected: int | None) -> bool:
    """A graph dimension matches if it is symbolic/unknown or equals the expected size."""
    if expected is None or not isinstance(actual, int) or actual <= 0:
        return True
    return actual == expected


def check_graph(spec: ModelSpec, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
    """Check the spec against the graph's inputs/outputs (objects with name, shape, type).

    Every disagreement is collected and reported in one SpecError.
    """
    problems: list[str] = []
    graph_inputs = {arg.name: arg for arg in inputs}
    graph_outputs = {arg.name: arg for arg in outputs}
    expected = [
        ("input", "z", graph_inputs, spec.latent_dim, ("float32",)),
        ("input", "conditions", graph_inputs, spec.n_conditions, ("float32",)),
        ("output", "showers", graph_outputs, spec.n_voxels, (spec.output.dtype,)),
    ]
    for kind, role, available, width, dtypes in expected:
        name = spec.io_names[role]
        arg = available.get(name)
        if arg is None:
            problems.append(f"{kind} {name!r} (role {role!r}) not in graph {kind}s {sorted(available)}")
            continue
        shape = list(arg.shape) if arg.shape is not None else None
        if shape is None or len(shape) != 2:
            problems.append(f"{kind} {name!r} has shape {shape}, expected rank 2 [N, {width}]")
        elif isinstance(shape[0], int) and shape[0] > 0:
            problems.append(f"{kind} {name!r} has a fixed batch dimension {shape[0]}, expected a dynamic one")
        if shape is not None and len(shape) == 2 and not _dim_ok(shape[1], width):
            what = {"z": "latent_dim", "conditions": "number of conditions", "showers": "output.n_voxels"}[role]
            problems.append(f"{kind} {name!r} has width {shape[1]}, spec {what} is {width}")
        dtype = _ORT_DTYPES.get(arg.type, arg.type)
        if dtype not in dtypes:
            problems.append(f"{kind} {name!r} has dtype {dtype}, expected {' or '.join(dtypes)}")
    extra = sorted(set(graph_inputs) - {spec.io_names["z"], spec.io_names["conditions"]})
    if extra:
        problems.append(f"graph has inputs the contract does not feed: {extra}")
    if problems:
        raise SpecError("model does not match its spec: " + "; ".join(problems))
