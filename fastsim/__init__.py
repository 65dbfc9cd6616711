"""fastsim: machine-learned fast calorimeter simulation with ONNX Runtime."""

from fastsim._version import __version__

__all__ = ["__version__"]
