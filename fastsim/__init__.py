"""fastsim: machine-learned fast calorimeter simulation with ONNX Runtime.

``fastsim.load(model).generate(n, conditions)`` samples showers from an exported
decoder; the ``fastsim`` command line does the same into HDF5 files.
"""

from fastsim._version import __version__
from fastsim.errors import (
    ArgumentError,
    ConditionError,
    DataError,
    FastsimError,
    FastsimWarning,
    ModelError,
    OutputError,
    ProviderError,
    SpecError,
)
from fastsim.generator import Generator, load
from fastsim.models import bundled_models
from fastsim.spec import ModelSpec, read_spec

__all__ = [
    "ArgumentError",
    "ConditionError",
    "DataError",
    "FastsimError",
    "FastsimWarning",
    "Generator",
    "ModelError",
    "ModelSpec",
    "OutputError",
    "ProviderError",
    "SpecError",
    "__version__",
    "bundled_models",
    "load",
    "read_spec",
]
