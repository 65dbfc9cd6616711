"""Helpers for the tests: the repository root, the runtime's modules and the environment for CLI subprocesses.

Toy decoders that honour (or break) the model contract are in
:mod:`helpers.decoders`; distorted shower samples and a small geometry for the
validation tests in :mod:`helpers.distortions`. Fixtures stay in ``conftest.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "cli_env", "runtime_modules"]

#: The repository's root folder.
ROOT = Path(__file__).resolve().parents[2]


def runtime_modules() -> set[str]:
    """Every module of the runtime, subpackages included, named below ``fastsim`` (``"io"``, ``"validation.plots"``)."""
    package = ROOT / "fastsim"
    names = set()
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[-1] != "__main__":
            names.add(".".join(parts))
    return names


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for CLI subprocesses: one thread each (2 shared cores), no stray model path."""
    env = {k: v for k, v in os.environ.items() if k != "FASTSIM_MODEL_PATH"}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def run_training(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m training ARGS`` from the repository root as a real subprocess, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
