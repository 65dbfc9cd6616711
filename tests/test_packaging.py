"""The built wheel: what it contains, and that it works installed outside the source tree.

A user who runs ``pip install fastsim`` gets the bundled models (package data
``fastsim/exported/``), the CaloChallenge binning, the ``fastsim`` and
``fastsim-train`` commands, and the ``training`` package with its configs
(``pip install 'fastsim[train]'`` adds torch and onnx); the benchmarks run as
``python -m benchmarks.run_all`` from a checkout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest
from wheelenv import REPO, built_wheel, venv_env, wheel_venv

from fastsim.models import file_sha256


@pytest.fixture(scope="module")
def wheel_names():
    with zipfile.ZipFile(built_wheel()) as archive:
        return set(archive.namelist())


def test_wheel_contains_the_bundled_models_and_their_cards(wheel_names):
    bundled = sorted(p.name for p in (REPO / "exported").glob("*.onnx"))
    assert bundled, "no bundled model in exported/"
    for name in bundled:
        assert f"fastsim/exported/{name}" in wheel_names
        assert f"fastsim/exported/{name[:-5]}.md" in wheel_names
    with zipfile.ZipFile(built_wheel()) as archive:
        for name in bundled:  # the very bytes of exported/, not a stale copy
            assert archive.read(f"fastsim/exported/{name}") == (REPO / "exported" / name).read_bytes()
    assert "fastsim/data/binning_dataset_2.xml" in wheel_names


def test_wheel_ships_the_validation_package(wheel_names):
    for name in ("__init__.py", "comparison.py", "features.py", "metrics.py", "classifier.py", "plots.py"):
        assert f"fastsim/validation/{name}" in wheel_names, name


def test_wheel_ships_training_its_configs_and_the_license(wheel_names):
    for name in ("training/__main__.py", "training/export.py", "training/simulate.py",
                 "training/configs/calo-electron.toml"):
        assert name in wheel_names, name
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in wheel_names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names)


def test_wheel_metadata_declares_extras_and_commands(wheel_names):
    with zipfile.ZipFile(built_wheel()) as archive:
        (meta_name,) = [n for n in wheel_names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(meta_name).decode())
        (entry_name,) = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = archive.read(entry_name).decode()
    extras = set(meta.get_all("Provides-Extra"))
    assert {"train", "root", "docs", "dask", "validate", "plots", "gpu"} <= extras
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("torch") and 'extra == "train"' in r for r in requires)
    assert any(r.startswith("uproot") and 'extra == "root"' in r for r in requires)
    assert meta["License-Expression"] == "Apache-2.0"
    assert "fastsim = fastsim.cli:main" in entry_points
    assert "fastsim-train = training.__main__:main" in entry_points


@pytest.mark.slow
def test_installed_wheel_finds_its_models_and_runs_training_outside_the_tree(tmp_path):
    venv = wheel_venv()
    env = venv_env(venv)

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    where = run("python", "-c", "import fastsim, training; print(fastsim.__file__); print(training.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(str(REPO) not in line for line in where.stdout.splitlines()), where.stdout
    models = run("fastsim", "models", "--json")
    assert models.returncode == 0, models.stderr
    (entry,) = [m for m in json.loads(models.stdout) if m["name"] == "calo-electron"]
    assert str(venv) in entry["path"] and entry["path"].endswith("fastsim/exported/calo-electron.onnx")
    assert file_sha256(entry["path"]) == file_sha256(REPO / "exported" / "calo-electron.onnx")
    # The wheel user's first training step: simulate into a folder that does not exist yet.
    simulate = run("fastsim-train", "simulate", "-n", "20", "--seed", "1", "-o", "data/t.h5", "-q")
    assert simulate.returncode == 0, simulate.stderr
    assert (tmp_path / "data" / "t.h5").is_file()
    config = run("python", "-m", "training", "train", "--config", "calo-electron", "--data", "nope.h5", "--out", "r")
    assert config.returncode == 2 and "--data" in config.stderr  # the bundled config name resolved


def test_benchmarks_run_as_a_module_without_path_edits():
    result = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--reference-data" in result.stdout
    assert "sys.path" not in (REPO / "benchmarks" / "run_all.py").read_text()
