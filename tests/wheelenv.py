"""A wheel of this checkout, built once per test session, and a fresh venv with it installed.

``built_wheel()`` runs ``pip wheel --no-deps`` on the repository; ``wheel_venv()``
makes a new virtual environment outside the source tree, installs the wheel with
its runtime dependencies (from pip's cache), and lets the heavy optional
dependencies (torch, onnx, matplotlib, scipy, uproot, ...) come from the
environment running the tests through a ``.pth`` line placed after the venv's
own site-packages, so the venv's ``fastsim`` and ``training`` are the wheel's.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

__all__ = ["REPO", "built_wheel", "venv_env", "wheel_venv"]

REPO = Path(__file__).resolve().parents[1]
# Top-level folders that are not source (generated, or environments), and caches anywhere.
_NOT_SOURCE = {".git", ".venv", "build", "dist", "data", "runs", "site", "showers", "report"}


def _not_source(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == REPO
    return {n for n in names if (top and n in _NOT_SOURCE) or n.endswith(".egg-info")
            or n in ("__pycache__", ".pytest_cache", "node_modules", "third_party", "build") or n.endswith(".h5")}


@functools.cache
def _scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fastsim-wheel-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@functools.cache
def built_wheel() -> Path:
    """The wheel of this checkout (``pip wheel --no-deps``), built once."""
    # Build from a clean copy: setuptools' in-tree build/ folder would keep stale files between builds.
    source = _scratch() / "source"
    shutil.copytree(REPO, source, ignore=_not_source)
    dist = _scratch() / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q", "-w", str(dist), str(source)],
         cwd=_scratch())
    (wheel,) = dist.glob("fastsim-*.whl")
    return wheel


@functools.cache
def wheel_venv() -> Path:
    """A fresh venv, outside the source tree, with the wheel and its runtime dependencies installed."""
    venv = _scratch() / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(built_wheel())],
         cwd=_scratch())
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # Heavy extras from the test environment, searched after the venv's own packages.
    ours = {sysconfig.get_path("purelib"), *site.getsitepackages()}
    (purelib / "zz_test_environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    return venv


def venv_env(venv: Path, **extra: str) -> dict[str, str]:
    """Environment for running the venv's commands: its bin first on PATH, no PYTHONPATH, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTSIM_MODEL_PATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               OMP_NUM_THREADS="1", **extra)
    return env
