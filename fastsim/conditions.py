"""Condition values: constants, ranges, per-sample arrays and files; units; range checks.

A user states conditions (for the default model: the incident energy) as

- a constant: ``50_000`` (MeV) or ``"50GeV"``;
- a range sampled with the spec's law (uniform / log-uniform): ``"10GeV:1TeV"``,
  ``(10_000, 1_000_000)`` or :class:`Range`;
- per-sample values: a list or numpy array, or a file (``.npy``, ``.csv``, or an
  HDF5 file with an ``incident_energies`` dataset, or the condition's own dataset
  such as ``incident_theta``), in the spec's unit (MeV).

Angles (conditions in ``rad`` or ``deg``) take ``30deg``, ``0.5rad``, multiples of
pi (``pi``, ``2pi``, ``0.5pi``, ``pi/3``) and ranges such as ``0deg:60deg`` or
``-pi:pi``. Values of a periodic condition (spec ``period``) are wrapped into
[min, min + period) before they are checked, so ``-pi:pi`` samples a [0, 2 pi)
azimuth uniformly.

A categorical condition (spec ``categories``, e.g. the particle type) takes a
label or its code (``photon`` or ``22``), a comma list drawn with equal
probability (``electron,photon``), per-sample codes or labels, or a file of codes
(an HDF5 file's ``particle`` dataset); left out, every category is drawn equally.

:func:`plan_conditions` turns that into a :class:`ConditionPlan` for a run of
``n`` samples, checked against the spec's training ranges (an error, or a
:class:`~fastsim.errors.FastsimWarning` with ``allow_extrapolation=True``).
Sampled values come from the block-wise uniforms of :mod:`fastsim.prior`, so
they depend only on (seed, sample index).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fastsim._util import first_line, positive_int
from fastsim.errors import ArgumentError, ConditionError, FastsimWarning
from fastsim.spec import ConditionSpec, ModelSpec

__all__ = [
    "ANGLE_UNITS",
    "ENERGY_UNITS",
    "Choice",
    "ConditionPlan",
    "Constant",
    "Range",
    "Values",
    "energy_condition",
    "load_values",
    "parse_category",
    "parse_condition",
    "parse_quantity",
    "plan_conditions",
    "wrap",
]

#: Energy units and their size in MeV. A bare number is in the condition's own unit.
ENERGY_UNITS = {"ev": 1e-6, "kev": 1e-3, "mev": 1.0, "gev": 1e3, "tev": 1e6}
#: Angle units and their size in radians.
ANGLE_UNITS = {"rad": 1.0, "deg": math.pi / 180}
# Multiples of pi, in radians: "pi", "2pi", "0.5pi", "-pi", "pi/3", "2pi/3", "2*pi".
_PI = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)?)\s*\*?\s*pi\s*(?:/\s*(\d+\.?\d*|\.\d+))?\s*$", re.IGNORECASE)
_FILE_SUFFIXES = (".npy", ".csv", ".txt", ".h5", ".hdf5")
_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan)\s*([A-Za-z]*)\s*$",
                       re.IGNORECASE)
# A header field: text, not a mistyped number (which starts with a digit, sign or point).
_HEADER_FIELD = re.compile(r"""^["'A-Za-z_]""")
# Conditions reach the decoder as float32: values it cannot hold are refused, even when extrapolating.
_FLOAT32 = np.finfo(np.float32)
# Boundaries compared with a little slack: float32 round trips of e.g. 1 TeV must pass.
_RANGE_RTOL = 1e-6


@dataclass(frozen=True)
class Constant:
    """The same value for every sample."""

    value: float


@dataclass(frozen=True)
class Range:
    """Values drawn in [lo, hi] with ``sampling`` (None: the spec's law for that condition)."""

    lo: float
    hi: float
    sampling: str | None = None


@dataclass(frozen=True)
class Choice:
    """For a categorical condition: one of ``codes`` per sample, each equally likely."""

    codes: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class Values:
    """One value per sample, aligned with the samples of the run."""

    array: np.ndarray
    source: str = "array"


def _unit_scale(unit: str, condition_unit: str) -> float | None:
    """Factor from ``unit`` to ``condition_unit``; None if they are not comparable."""
    if unit.lower() == condition_unit.lower() or unit == "":
        return 1.0
    for table in (ENERGY_UNITS, ANGLE_UNITS):
        if unit.lower() in table and condition_unit.lower() in table:
            return table[unit.lower()] / table[condition_unit.lower()]
    return None


def _accepted_units(unit: str) -> tuple[str, str]:
    """(the units a condition in ``unit`` accepts, an example) for error messages."""
    if unit.lower() in ENERGY_UNITS:
        return "MeV, GeV, TeV", "'50GeV'"
    if unit.lower() in ANGLE_UNITS:
        return "rad, deg or multiples of pi: pi, 2pi, 0.5pi, pi/3", "'30deg'"
    return unit, "'1.5'"


def parse_quantity(text: str, unit: str = "MeV", *, argument: str = "energy") -> float:
    """Parse ``"50GeV"``, ``"50 GeV"`` or ``"5e4"`` into a number in ``unit`` (a bare number is in ``unit``).

    For angles: ``"30deg"``, ``"0.5rad"``, ``"pi/3"``, ``"2pi"``.
    """
    match = _QUANTITY.match(str(text))
    scale = _unit_scale(match.group(2), unit) if match else None
    if match is not None and scale is not None:
        return float(match.group(1)) * scale
    pi = _PI.match(str(text)) if unit.lower() in ANGLE_UNITS else None
    if pi is not None:
        factor = pi.group(1)
        factor = float(factor + "1" if factor in ("", "+", "-") else factor)
        divisor = float(pi.group(2)) if pi.group(2) else 1.0
        if divisor != 0:
            return factor * math.pi / divisor / ANGLE_UNITS[unit.lower()]
    units, example = _accepted_units(unit)
    raise ConditionError(f"{argument}: expected a number with an optional unit ({units}), e.g. {example}, "
                         f"got {text!r}")


def wrap(cond: ConditionSpec, values: Any) -> Any:
    """Values of a periodic condition moved into [min, min + period) (others unchanged)."""
    if cond.period is None:
        return values
    wrapped = cond.min + np.mod(np.asarray(values, dtype=np.float64) - cond.min, cond.period)
    # np.mod can round up to the period itself for values just below a multiple of it.
    wrapped = np.where(wrapped >= cond.min + cond.period, cond.min, wrapped)
    return float(wrapped) if np.ndim(wrapped) == 0 else wrapped


def load_values(path: str | os.PathLike[str], *, argument: str = "energy",
                dataset: str = "incident_energies") -> np.ndarray:
    """Read per-sample values from ``.npy``, ``.csv``/``.txt`` or HDF5 (the dataset ``dataset``)."""
    path = Path(path)
    if not path.is_file():
        raise ConditionError(f"{argument}: file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    values: np.ndarray
    try:
        if suffix == ".npy":
            if path.stat().st_size == 0:
                raise ConditionError(f"{argument}: file {str(path)!r} is empty (0 bytes), expected a .npy array")
            values = np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix in (".csv", ".txt"):
            values = _read_csv(path, argument)
        elif suffix in (".h5", ".hdf5"):
            values = _read_hdf5(path, argument, dataset)
        else:
            raise ConditionError(
                f"{argument}: file {str(path)!r} has an unknown type; expected .npy, .csv or .h5"
            )
    except ConditionError:
        raise
    except (OSError, ValueError, EOFError, TypeError, KeyError, RuntimeError) as exc:
        # EOFError: a truncated .npy (click would take it for Ctrl-D); the rest: numpy's and h5py's
        raise ConditionError(f"{argument}: cannot read values from {str(path)!r}: {first_line(exc)}") from None
    if values.dtype.fields is not None or values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number) \
            or np.issubdtype(values.dtype, np.complexfloating):
        raise ConditionError(f"{argument}: file {str(path)!r} holds {values.dtype} values, expected numbers")
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim not in (1, 2) or len(values) == 0:
        raise ConditionError(f"{argument}: file {str(path)!r} holds an array of shape {values.shape}, "
                             "expected one value per sample (N,) or (N, n_conditions)")
    return values


def _read_csv(path: Path, argument: str) -> np.ndarray:
    """Rows of numbers separated by commas, or else by white space; ``#`` comments and blank lines skipped.

    The first row may be a header only when it is recognisably text: it starts
    with a letter, quote or underscore and holds no number (``energy``,
    ``"E [MeV]"``). A row that looks numeric but does not parse (``5e4x``) is an
    error naming its line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConditionError(f"{argument}: file {str(path)!r} is not a text (UTF-8) CSV file") from None
    rows = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise ConditionError(f"{argument}: file {str(path)!r} holds no values (it is empty or only comments)")
    comma = any("," in line for _, line in rows)

    def fields(line: str) -> list[str]:
        return [f.strip() for f in line.split(",")] if comma else line.split()

    first = rows[0][1]
    if _HEADER_FIELD.match(first) and not any(_is_float(f) for f in fields(first)):
        rows = rows[1:]
        if not rows:
            raise ConditionError(f"{argument}: file {str(path)!r} has a header line and no values")
    values = []
    width = None
    for number, line in rows:
        items = fields(line)
        try:
            row = [float(item) for item in items]
        except ValueError:
            bad = next(item for item in items if not _is_float(item))
            raise ConditionError(f"{argument}: file {str(path)!r} line {number}: {bad!r} is not a number "
                                 f"(read {line[:60]!r})") from None
        if width is not None and len(row) != width:
            raise ConditionError(f"{argument}: file {str(path)!r} line {number} has {len(row)} values, the lines "
                                 f"before it {width} (separated by {'commas' if comma else 'white space'})")
        width = len(row)
        values.append(row)
    return np.asarray(values, dtype=np.float64)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_hdf5(path: Path, argument: str, name: str = "incident_energies") -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as fh:
        if name not in fh:
            raise ConditionError(f"{argument}: HDF5 file {str(path)!r} has no {name!r} dataset "
                                 f"(it has {sorted(fh.keys())})")
        data = fh[name]
        if not isinstance(data, h5py.Dataset):
            raise ConditionError(f"{argument}: {name!r} in HDF5 file {str(path)!r} is a "
                                 f"{type(data).__name__.lower()}, expected a dataset of numbers")
        if data.dtype.fields is not None or data.dtype.kind not in "iuf":
            raise ConditionError(f"{argument}: {name!r} in HDF5 file {str(path)!r} holds {data.dtype} "
                                 "values, expected numbers")
        return np.asarray(data[...], dtype=np.float64)


def parse_condition(value: Any, unit: str = "MeV", *, argument: str = "energy",
                    dataset: str = "incident_energies") -> Constant | Range | Values:
    """Interpret one condition as a Constant, Range or per-sample Values.

    Strings: ``"50GeV"`` (constant), ``"10GeV:1TeV"`` (range) or a file path
    (an HDF5 file's values are its dataset ``dataset``).
    A tuple ``(lo, hi)`` is a range; a list or array is one value per sample.
    """
    if isinstance(value, (Constant, Range, Values)):
        return value
    if isinstance(value, os.PathLike):
        return Values(np.asarray(load_values(value, argument=argument, dataset=dataset)), source=os.fspath(value))
    if isinstance(value, str):
        text = value.strip()
        if text.lower().endswith(_FILE_SUFFIXES) or os.path.isfile(text):
            return Values(np.asarray(load_values(text, argument=argument, dataset=dataset)), source=text)
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 2:
                raise ConditionError(f"{argument}: expected a range LO:HI like '10GeV:1TeV', got {value!r}")
            return Range(parse_quantity(parts[0], unit, argument=argument),
                         parse_quantity(parts[1], unit, argument=argument))
        return Constant(parse_quantity(text, unit, argument=argument))
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ConditionError(f"{argument}: a tuple means a range (lo, hi), got {len(value)} items")
        lo, hi = (parse_quantity(v, unit, argument=argument) if isinstance(v, str) else _as_float(v, argument)
                  for v in value)
        return Range(lo, hi)
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return Constant(float(value))
    if isinstance(value, (list, np.ndarray)):
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
            raise ConditionError(f"{argument}: expected numbers, got an array of {array.dtype}")
        if array.ndim == 0:
            return Constant(float(array))
        return Values(array)
    raise ConditionError(
        f"{argument}: expected a number, 'LO:HI', (lo, hi), an array or a file, got {type(value).__name__}"
    )


def parse_category(value: Any, cond: ConditionSpec, *, argument: str | None = None) -> Constant | Choice | Values:
    """Interpret a categorical condition's value: a label or code, a comma list, per-sample values or a file.

    >>> from fastsim.spec import ConditionSpec
    >>> particle = ConditionSpec("particle", "pdg", 11, 22, "categorical",
    ...                          categories=(("electron", 11), ("photon", 22)))
    >>> parse_category("photon", particle)
    Constant(value=22.0)
    >>> parse_category("electron,photon", particle)
    Choice(codes=(11.0, 22.0))
    """
    argument = argument or cond.name
    if isinstance(value, (Constant, Choice, Values)):
        return value
    if isinstance(value, Range):
        raise ConditionError(f"{argument}: a categorical condition takes a category, not a range; "
                             f"expected one of {cond.category_list()} or a comma list of them")
    if isinstance(value, os.PathLike):
        return Values(np.asarray(load_values(value, argument=argument, dataset=cond.name)), source=os.fspath(value))
    if isinstance(value, str):
        text = value.strip()
        if text.lower().endswith(_FILE_SUFFIXES) or os.path.isfile(text):
            return Values(np.asarray(load_values(text, argument=argument, dataset=cond.name)), source=text)
        codes = tuple(_category_code(cond, item, argument) for item in text.split(","))
        if len(set(codes)) != len(codes):
            raise ConditionError(f"{argument}: a category is listed twice in {value!r}")
        return Constant(codes[0]) if len(codes) == 1 else Choice(codes)
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return Constant(float(value))
    if isinstance(value, (list, np.ndarray)):
        array = np.asarray(value)
        if array.dtype.kind in "US":
            array = np.array([_category_code(cond, str(item), argument) for item in array.ravel()])
        elif not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
            raise ConditionError(f"{argument}: expected categories (labels or codes), got an array of {array.dtype}")
        return Constant(float(array)) if array.ndim == 0 else Values(array)
    raise ConditionError(f"{argument}: expected one of {cond.category_list()}, a comma list of them, per-sample "
                         f"values or a file, got {type(value).__name__}")


def _category_code(cond: ConditionSpec, item: str, argument: str) -> float:
    """A category's code from its label or its code written as a number."""
    code = cond.code_of(item)
    if code is None and _is_float(item.strip()) and float(item) in cond.codes:
        code = float(item)
    if code is None:
        raise ConditionError(f"{argument}: expected one of {cond.category_list()}, got {item.strip()!r}")
    return code


def _as_float(value: Any, argument: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConditionError(f"{argument}: expected a number, got {value!r}") from None


def energy_condition(spec: ModelSpec) -> ConditionSpec:
    """The condition an energy option (``--energy``) sets: ``incident_energy``, else the first in an energy unit."""
    for cond in spec.conditions:
        if cond.name == "incident_energy":
            return cond
    for cond in spec.conditions:
        if cond.unit.lower() in ENERGY_UNITS:
            return cond
    return spec.conditions[0]


@dataclass(frozen=True, eq=False)
class ConditionPlan:
    """How each condition of a run of ``n`` samples gets its values.

    ``sources[j]`` is the Constant, Range, Choice or Values of ``spec.conditions[j]``;
    ``offset`` is the position of this plan's first sample within the run it
    was planned for (non-zero after :meth:`subset`, e.g. when resuming).
    """

    spec: ModelSpec
    sources: tuple[Constant | Range | Choice | Values, ...]
    n: int
    offset: int = 0

    def values(self, uniforms: np.ndarray, local_start: int, local_stop: int) -> np.ndarray:
        """Conditions for samples [local_start, local_stop) of this plan, float32 (k, n_conditions).

        ``uniforms`` are the prior's condition uniforms for the same samples,
        shape (k, n_conditions); only ranged and chosen conditions use them.
        """
        k = local_stop - local_start
        out = np.empty((k, len(self.sources)), dtype=np.float64)
        for j, (cond, source) in enumerate(zip(self.spec.conditions, self.sources, strict=False)):
            if isinstance(source, Constant):
                out[:, j] = source.value
            elif isinstance(source, Range):
                u = uniforms[:, j]
                if (source.sampling or cond.sampling) == "log-uniform":
                    lo, hi = math.log(source.lo), math.log(source.hi)
                    out[:, j] = np.exp(lo + u * (hi - lo))
                else:
                    out[:, j] = wrap(cond, source.lo + u * (source.hi - source.lo))
            elif isinstance(source, Choice):
                pick = np.minimum((uniforms[:, j] * len(source.codes)).astype(np.int64), len(source.codes) - 1)
                out[:, j] = np.asarray(source.codes)[pick]
            else:
                begin = self.offset + local_start
                out[:, j] = source.array[begin:begin + k]
        return out.astype(np.float32)

    def subset(self, offset: int) -> ConditionPlan:
        """The plan for samples [offset, n) of this one (resuming after ``offset`` samples)."""
        if not 0 <= offset <= self.n:
            raise ValueError(f"offset {offset} outside [0, {self.n}]")
        return ConditionPlan(self.spec, self.sources, self.n - offset, self.offset + offset)

    def describe(self) -> dict[str, dict[str, Any]]:
        """A JSON-able description that identifies the conditions (per-sample arrays by sha256)."""
        doc: dict[str, dict[str, Any]] = {}
        for cond, source in zip(self.spec.conditions, self.sources, strict=False):
            if isinstance(source, Constant):
                doc[cond.name] = {"kind": "constant", "value": source.value, "unit": cond.unit}
            elif isinstance(source, Range):
                doc[cond.name] = {"kind": "range", "lo": source.lo, "hi": source.hi, "unit": cond.unit,
                                  "sampling": source.sampling or cond.sampling}
            elif isinstance(source, Choice):
                doc[cond.name] = {"kind": "choice", "values": list(source.codes), "unit": cond.unit,
                                  "labels": [cond.label_of(code) for code in source.codes]}
            else:
                part = np.ascontiguousarray(source.array[self.offset:self.offset + self.n], dtype=np.float64)
                doc[cond.name] = {"kind": "values", "n": int(part.shape[0]), "unit": cond.unit,
                                  "sha256": hashlib.sha256(part.tobytes()).hexdigest()}
        return doc


def _range_span(cond: ConditionSpec, source: Range) -> np.ndarray:
    """The ends of the values a range gives, after wrapping (a periodic range may cross the seam)."""
    if cond.period is None:
        return np.array([source.lo, source.hi])
    width = source.hi - source.lo
    if width > cond.period * (1 + 1e-12):
        raise ConditionError(f"{cond.name}: a range of a periodic condition must be at most one period "
                             f"({cond.period:g} {cond.unit}) long, got {source.lo:g}:{source.hi:g} ({width:g})")
    lo = wrap(cond, source.lo)
    if lo + width <= cond.min + cond.period:
        return np.array([lo, lo + width])
    # Across the seam: values from lo up to the period's end, and from min on.
    return np.array([cond.min, lo + width - cond.period, lo, cond.min + cond.period])


def _check_values(cond: ConditionSpec, values: np.ndarray, argument: str, allow_extrapolation: bool) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        index = int(np.argmin(finite))
        raise ConditionError(f"{argument}: values must be finite, got {values[index]} at index {index}")
    magnitude = np.abs(values)
    # Overflow to inf, or underflow to 0 or a subnormal: the decoder would see another value.
    unfit = (magnitude > _FLOAT32.max) | ((magnitude > 0) & (magnitude < _FLOAT32.smallest_normal))
    if unfit.any():
        index = int(np.argmax(unfit))
        raise ConditionError(f"{argument}: {values[index]:g} {cond.unit} at index {index} cannot be held in "
                             f"float32 (the decoder's input type: magnitudes {_FLOAT32.smallest_normal:.4g} to "
                             f"{_FLOAT32.max:.4g}); this is not allowed even with extrapolation")
    is_energy = cond.unit.lower() in ENERGY_UNITS
    if is_energy and (values <= 0).any():
        index = int(np.argmax(values <= 0))
        raise ConditionError(f"{argument}: energies must be > 0 {cond.unit}, got {values[index]} at index {index}")
    if cond.categories is not None:
        outside = ~np.isin(values, np.asarray(cond.codes))
        if outside.any():
            index = int(np.argmax(outside))
            raise ConditionError(f"{argument}: {values[index]:g} at index {index} is not a category of the model; "
                                 f"expected one of {cond.category_list()}")
        return
    lo, hi = float(values.min()), float(values.max())
    slack = _RANGE_RTOL * max(abs(cond.min), abs(cond.max))
    if lo < cond.min - slack or hi > cond.max + slack:
        message = (f"{argument}: values span [{lo:g}, {hi:g}] {cond.unit}, outside the model's training "
                   f"range [{cond.min:g}, {cond.max:g}] {cond.unit}")
        if not allow_extrapolation:
            raise ConditionError(message + "; pass allow_extrapolation=True (CLI: --allow-extrapolation) "
                                           "to extrapolate")
        warnings.warn(message + "; extrapolating", FastsimWarning, stacklevel=4)


def plan_conditions(
    spec: ModelSpec,
    conditions: Any = None,
    n: int | None = None,
    *,
    allow_extrapolation: bool = False,
) -> ConditionPlan:
    """Plan the conditions of a run of ``n`` samples (``n`` may be None when per-sample values give it).

    ``conditions`` is None (every condition sampled over its training range),
    one condition's value (applied to the energy condition, see
    :func:`energy_condition`), a (n, n_conditions) array, or a mapping from
    condition names to values.
    """
    if isinstance(conditions, ConditionPlan):
        if n is not None and n != conditions.n:
            raise ConditionError(f"conditions: the plan is for {conditions.n} samples, asked for n={n}")
        return conditions
    named: dict[str, Any] = {}
    if conditions is None:
        pass
    elif isinstance(conditions, Mapping):
        unknown = sorted(set(conditions) - set(spec.condition_names))
        if unknown:
            raise ConditionError(f"conditions: unknown condition(s) {unknown}; the model takes "
                                 f"{list(spec.condition_names)}")
        named = dict(conditions)
    else:
        parsed = parse_condition(conditions, energy_condition(spec).unit, argument=energy_condition(spec).name)
        if isinstance(parsed, Values) and parsed.array.ndim == 2:
            if parsed.array.shape[1] != spec.n_conditions:
                raise ConditionError(f"conditions: array has {parsed.array.shape[1]} columns, the model takes "
                                     f"{spec.n_conditions} ({list(spec.condition_names)})")
            named = {c.name: Values(parsed.array[:, j], parsed.source) for j, c in enumerate(spec.conditions)}
        else:
            named = {energy_condition(spec).name: parsed}

    sources = []
    energy = energy_condition(spec).name
    for cond in spec.conditions:
        # An HDF5 file gives energies as CaloChallenge's incident_energies, other conditions by name.
        dataset = "incident_energies" if cond.name == energy else cond.name
        source: Constant | Range | Choice | Values
        if cond.categories is not None:
            source = parse_category(named[cond.name], cond) if cond.name in named else Choice(cond.codes)
        elif cond.name in named:
            source = parse_condition(named[cond.name], cond.unit, argument=cond.name, dataset=dataset)
        else:
            source = Range(cond.min, cond.max)
        if isinstance(source, Values) and source.array.ndim != 1:
            shape = source.array.shape
            columns = f" ({shape[1]} columns)" if len(shape) == 2 else ""
            raise ConditionError(f"{cond.name}: expected one value per sample (N,), got shape {shape}{columns}")
        if cond.period is not None:
            if isinstance(source, Constant) and math.isfinite(source.value):
                source = Constant(wrap(cond, source.value))
            elif isinstance(source, Values) and np.issubdtype(source.array.dtype, np.number):
                finite = np.isfinite(source.array).all()  # non-finite values are reported by the range check
                source = Values(wrap(cond, source.array) if finite else source.array, source.source)
        sources.append(source)

    lengths = {len(s.array) for s in sources if isinstance(s, Values)}
    if len(lengths) > 1:
        raise ConditionError(f"conditions: per-sample arrays differ in length {sorted(lengths)}")
    if n is None:
        if not lengths:
            raise ArgumentError("n: the number of samples is required unless per-sample conditions give it")
        n = lengths.pop()
    elif lengths and lengths != {n}:
        raise ConditionError(f"conditions: {lengths.pop()} per-sample values given for n={n} samples")
    n = positive_int(n, "n")

    for cond, source in zip(spec.conditions, sources, strict=False):
        if isinstance(source, Constant):
            _check_values(cond, np.array([source.value]), cond.name, allow_extrapolation)
        elif isinstance(source, Range):
            sampling = source.sampling or cond.sampling
            if not source.lo < source.hi:
                raise ConditionError(f"{cond.name}: range must have lo < hi, got {source.lo:g}:{source.hi:g}")
            if sampling not in ("uniform", "log-uniform"):
                raise ConditionError(f"{cond.name}: sampling must be 'uniform' or 'log-uniform', got {sampling!r}")
            _check_values(cond, _range_span(cond, source), cond.name, allow_extrapolation)
        elif isinstance(source, Choice):
            _check_values(cond, np.asarray(source.codes), cond.name, allow_extrapolation)
        else:
            _check_values(cond, np.asarray(source.array, dtype=np.float64), cond.name, allow_extrapolation)
    return ConditionPlan(spec, tuple(sources), int(n))
