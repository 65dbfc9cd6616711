"""fastsim's training side: the reference simulator, data, the VAE, training and export.

This package may import :mod:`fastsim` (geometry, the model contract); :mod:`fastsim`
never imports it. The simulator (:mod:`training.simulate`) is numpy only; the modules
that train and export the surrogate need the ``train`` extra (torch, onnx). Run it as
``python -m training simulate | train | export``.
"""

__all__: list[str] = []
