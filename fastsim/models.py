"""Finding models: bundled names, extra search folders, and paths.

A model argument is a path to an ``.onnx`` file or the name of a bundled model
(``"default"`` is :data:`DEFAULT_MODEL`). Names are looked up, in order, in the
folders of the ``FASTSIM_MODEL_PATH`` environment variable (``os.pathsep``
separated) and then among the bundled models: the package data
``fastsim.exported``, which is the repository's ``exported/`` folder installed
under that name (in a wheel and an editable install alike).

A model may keep tensors in external data files (ONNX's ``external_data``);
:func:`external_data_files` accepts only files inside the model's folder, so a
model cannot make the runtime read (and leak into its showers) any other file,
and :func:`model_sha256` covers those files too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from fastsim.errors import ModelError

__all__ = ["DEFAULT_MODEL", "BundledModel", "bundled_models", "external_data_files", "file_sha256", "model_dirs",
           "model_sha256", "resolve_model"]

DEFAULT_MODEL = "calo-electron"
MODEL_PATH_ENV = "FASTSIM_MODEL_PATH"
#: The package whose folder holds the bundled models (the repository's ``exported/``).
BUNDLED_PACKAGE = "fastsim.exported"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, read in 1 MiB blocks: identifies a model in specs, output files and manifests."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def external_data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The external data files of an ONNX model, each checked to lie inside the model's folder.

    Refused (a :class:`ModelError` naming the location): absolute locations,
    ``..`` components, and locations whose real path -- symlinks resolved --
    leaves the folder. Checked before ONNX Runtime sees the file.
    """
    from fastsim.spec import external_data_locations

    path = Path(path)
    folder = Path(os.path.realpath(path.parent if str(path.parent) else "."))
    files: list[Path] = []
    for location in dict.fromkeys(external_data_locations(path)):
        parts = set(PurePosixPath(location).parts) | set(PureWindowsPath(location).parts)
        if (not location or "\x00" in location or PurePosixPath(location).is_absolute()
                or PureWindowsPath(location).is_absolute() or PureWindowsPath(location).drive or ".." in parts):
            raise ModelError(f"model {str(path)!r}: external data location {location!r} is not a relative path "
                             "inside the model's folder; refusing to read it")
        real = Path(os.path.realpath(folder / location))
        if not real.is_relative_to(folder):
            raise ModelError(f"model {str(path)!r}: external data location {location!r} leads to {str(real)!r}, "
                             f"outside the model's folder {str(folder)!r} (a symlink); refusing to read it")
        if not real.is_file():
            raise ModelError(f"model {str(path)!r}: external data file {location!r} does not exist beside the model")
        files.append(real)
    return files


def model_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 identifying a model: its file's, or, with external data, of the file and each data file.

    For a model with external data it is the sha256 of the lines ``onnx <sha256>``
    and ``<location> <sha256>`` for each data file in order, so changing any of
    them changes the model's identity (in output files, manifests and resume checks).
    """
    own = file_sha256(path)
    files = external_data_files(path)
    if not files:
        return own
    folder = Path(os.path.realpath(Path(path).parent))
    lines = [f"onnx {own}"] + [f"{f.relative_to(folder).as_posix()} {file_sha256(f)}" for f in files]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class BundledModel:
    """A model found by name: its name, ONNX file and model card (if any)."""

    name: str
    path: Path
    card: Path | None


def _bundled_dirs() -> list[Path]:
    # fastsim.exported is the repository's exported/ folder, installed as a package (pyproject.toml).
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except ImportError:
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []


def model_dirs() -> list[Path]:
    """The folders searched for bundled models, in order: ``FASTSIM_MODEL_PATH``, then the package data."""
    extra = [Path(p) for p in os.environ.get(MODEL_PATH_ENV, "").split(os.pathsep) if p]
    return extra + _bundled_dirs()


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


def resolve_model(model: str | os.PathLike[str] = "default") -> Path:
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
        searched = ", ".join(str(d) for d in model_dirs()) or "nowhere: fastsim is not installed (pip install .)"
        raise ModelError(f"model: no bundled model is installed (looked for {name!r} in "
                         f"{searched}); pass --model PATH to an .onnx file")
    raise ModelError(f"model: unknown model {name!r}; bundled models: {', '.join(sorted(models))}")
