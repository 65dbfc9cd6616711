"""Shared fixtures: toy decoders that honour the model contract, and a runner for the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from decoders import make_decoder

ROOT = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for CLI subprocesses: one thread each (2 shared cores), no stray model path."""
    env = {k: v for k, v in os.environ.items() if k != "FASTSIM_MODEL_PATH"}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory) -> Path:
    """A small contract-honouring decoder: latent 4, one condition (incident_energy, 1 GeV-1 TeV), 24 voxels."""
    return make_decoder(tmp_path_factory.mktemp("models") / "toy.onnx", latent_dim=4, n_voxels=24)


@pytest.fixture(scope="session")
def wide_model(tmp_path_factory) -> Path:
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
