"""The bundled models: ONNX files with their model cards, installed as the package data ``fastsim.exported``.

Nothing to import here; :mod:`fastsim.models` finds the files in this folder by name.
"""

__all__: list[str] = []
