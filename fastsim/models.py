"""Finding models: bundled names, extra search folders, and paths.

A model argument is a path to an ``.onnx`` file or the name of a bundled model
(``"default"`` is :data:`DEFAULT_MODEL`). Names are looked up, in order, in the
folders of the ``FASTSIM_MODEL_PATH`` environment variable (``os.pathsep``
separated), in ``fastsim/exported/`` inside an installed wheel (setup.py copies
the repository's ``exported/`` there), and in the repository's ``exported/``
folder next to an editable install.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from fastsim.errors import ModelError

__all__ = ["DEFAULT_MODEL", "BundledModel", "bundled_models", "file_sha256", "model_dirs", "resolve_model"]

DEFAULT_MODEL = "calo-electron"
MODEL_PATH_ENV = "FASTSIM_MODEL_PATH"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB blocks: identifies a model in specs, output files and manifests."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class BundledModel:
    """A model found by name: its name, ONNX file and model card (if any)."""

    name: str
    path: Path
    card: Path | None


def model_dirs() -> list[Path]:
    """The folders searched for bundled models, in order."""
    package = Path(__file__).resolve().parent
    extra = [Path(p) for p in os.environ.get(MODEL_PATH_ENV, "").split(os.pathsep) if p]
    return extra + [package / "exported", package.parent / "exported"]


def bundled_models() -> list[BundledModel]:
    """Every model found in :func:`model_dirs` (the first folder holding a name wins)."""
    found: dict[str, BundledModel] = {}
    for folder in model_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.onnx")):
            card = path.with_suffix(".md")
            found.setdefault(path.stem, BundledModel(path.stem, path, card if card.is_file() else None))
    return list(found.values())


def _looks_like_path(model: str) -> bool:
    return model.endswith(".onnx") or os.sep in model or (os.altsep is not None and os.altsep in model)


def resolve_model(model: str | os.PathLike = "default") -> Path:
    """The ONNX file for a bundled name, ``"default"``, or a path."""
    is_path = isinstance(model, str) and (_looks_like_path(model) or Path(model).is_file())
    if isinstance(model, os.PathLike) or is_path:
        path = Path(model)
        if not path.exists():
            raise ModelError(f"model: file {str(path)!r} does not exist")
        if not path.is_file():
            raise ModelError(f"model: {str(path)!r} is not a file")
        return path
    if not isinstance(model, str) or not model:
        raise ModelError(f"model: expected a bundled model name or a path to an .onnx file, got {model!r}")
    name = DEFAULT_MODEL if model == "default" else model
    models = {m.name: m for m in bundled_models()}
    if name in models:
        return models[name].path
    if not models:
        raise ModelError(f"model: no bundled model is installed (looked for {name!r} in "
                         f"{', '.join(str(d) for d in model_dirs())}); pass --model PATH to an .onnx file")
    raise ModelError(f"model: unknown model {name!r}; bundled models: {', '.join(sorted(models))}")
