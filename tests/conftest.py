"""Fixtures: toy decoders that honour the model contract, and a runner for the real CLI.

Plain helpers (``ROOT``, ``cli_env``, the decoder builders) are in the ``helpers`` package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env
from helpers.decoders import make_decoder


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small contract-honouring decoder: latent 4, one condition (incident_energy, 1 GeV-1 TeV), 24 voxels."""
    return make_decoder(tmp_path_factory.mktemp("models") / "toy.onnx", latent_dim=4, n_voxels=24)


@pytest.fixture(scope="session")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger decoder (latent 16, hidden 64, 6480 voxels like CaloChallenge dataset 2)."""
    return make_decoder(tmp_path_factory.mktemp("models") / "wide.onnx", latent_dim=16, n_voxels=6480,
                        hidden=64, seed=1)


@pytest.fixture()
def run_fastsim():
    """Run ``python -m fastsim.cli ARGS`` as a real subprocess; returns the CompletedProcess."""

    def run(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fastsim.cli", *map(str, args)],
            cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout,
        )

    return run
