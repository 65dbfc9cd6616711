"""The exceptions and warnings fastsim raises.

Every error a user can cause (a bad argument, a bad file, a missing device) is a
:class:`FastsimError`; the CLI turns any of them into a one-line message and exit
status 2. Each subclass names the thing that was wrong, so callers can catch the
kind they care about.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ClusterError",
    "ConditionError",
    "DataError",
    "FastsimError",
    "FastsimWarning",
    "ModelError",
    "OutputError",
    "ProviderError",
    "SpecError",
]


class FastsimError(Exception):
    """Base class of every error fastsim raises for bad input."""


class ArgumentError(FastsimError, ValueError):
    """An argument has a bad value (e.g. ``n <= 0``, a negative seed, an unknown format)."""


class ModelError(FastsimError):
    """The model file is missing, unreadable, not ONNX, or not a known bundled name."""


class SpecError(FastsimError):
    """The model contract (``fastsim.spec``) is missing, malformed or disagrees with the graph."""


class ConditionError(FastsimError, ValueError):
    """Condition values (e.g. incident energies) are malformed or outside the training range."""


class DataError(FastsimError):
    """A shower data file is missing, unreadable or not in the CaloChallenge layout."""


class ProviderError(FastsimError):
    """The requested ONNX Runtime execution provider (device) is not available."""


class OutputError(FastsimError):
    """The output path cannot be written, already exists, or cannot be resumed."""


class ClusterError(FastsimError):
    """The Dask cluster cannot be reached or used, Dask is missing, or a shard kept failing."""


class FastsimWarning(UserWarning):
    """Something works but deserves attention, e.g. conditions extrapolated beyond training."""
