"""fastsim: machine-learned fast calorimeter simulation with ONNX Runtime.

``fastsim.load(model).generate(n, conditions)`` samples showers from an exported
decoder; the ``fastsim`` command line does the same into HDF5 files.
"""

from fastsim._version import __version__
from fastsim.dataset import ShowerFile, open_showers
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
from fastsim.geometry import CylindricalGeometry, Layer, default_geometry
from fastsim.models import bundled_models
from fastsim.shards import open_dataset
from fastsim.spec import ModelSpec, read_spec

__all__ = [
    "ArgumentError",
    "ConditionError",
    "CylindricalGeometry",
    "DataError",
    "FastsimError",
    "FastsimWarning",
    "Generator",
    "Layer",
    "ModelError",
    "ModelSpec",
    "OutputError",
    "ProviderError",
    "ShowerFile",
    "SpecError",
    "__version__",
    "bundled_models",
    "default_geometry",
    "load",
    "open_dataset",
    "open_showers",
    "read_spec",
]
