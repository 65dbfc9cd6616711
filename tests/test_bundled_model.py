"""The bundled default model: the file, its spec, its card, and its golden outputs.

``exported/calo-electron.onnx`` is what ``make generate`` and ``fastsim.load()``
use out of the box. These tests pin what a user relies on: that it loads as
the default, that its spec describes it (contract, training data, metrics),
that its model card quotes its true sha256, and that a fixed seed and energy
give the same showers as when it was shipped (golden values, also printed in
the card). A retrained or re-exported model must update the card and these
values together.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

import fastsim

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "exported" / "calo-electron.onnx"
CARD = REPO / "exported" / "calo-electron.md"
THRESHOLD = 0.01515

# fastsim.load("calo-electron", device="cpu").generate(4, 50 GeV, seed=2024):
# per-shower totals (MeV), voxels above threshold per shower, and the five
# largest voxels of shower 0 (index, MeV).
GOLDEN_SEED = 2024
GOLDEN_ENERGY_MEV = 50_000.0
GOLDEN_TOTALS = [48920.93, 47930.88, 47038.04, 49004.06]
GOLDEN_NONZERO = [935, 1039, 970, 1016]
GOLDEN_TOP_VOXELS = [(1296, 528.57721), (1377, 495.28912), (1575, 484.19867), (1836, 466.78201), (1530, 453.44931)]

pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="bundled model not exported yet")


@pytest.fixture(scope="module")
def generator():
    return fastsim.load("calo-electron", device="cpu", threads=1)


def test_default_model_is_the_bundled_one(generator):
    default = fastsim.load(device="cpu", threads=1)
    assert Path(default.path).resolve() == MODEL.resolve() == Path(generator.path).resolve()


def test_spec_describes_the_model(generator):
    spec = generator.spec
    assert spec.name == "calo-electron"
    assert spec.n_voxels == 6480 and spec.output.unit == "MeV"
    (condition,) = spec.conditions
    assert (condition.name, condition.unit, condition.min, condition.max, condition.sampling) == (
        "incident_energy", "MeV", 1000.0, 1e6, "log-uniform")
    assert spec.training["n_showers"] >= 100_000 and spec.training["n_validation"] >= 20_000
    assert spec.training["voxel_noise"]["kind"] == "gamma"
    assert spec.producer.startswith("fastsim ")
    # The validation figures travel with the model, with their reference-vs-reference baselines.
    for key in ("separation_power.e_ratio", "energy_bins.max_response_deviation", "classifier_auc.high_level"):
        assert set(spec.metrics[key]) == {"value", "reference"}
    assert len(spec.metrics["energy_bins"]) == 10


def test_card_quotes_the_files_sha256():
    digest = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert digest in CARD.read_text()


def test_card_plots_exist():
    plots = re.findall(r"\]\((calo-electron/[^)]+\.png)\)", CARD.read_text())
    assert plots
    for plot in plots:
        assert (REPO / "exported" / plot).is_file(), plot


def test_golden_values(generator):
    conditions, showers = generator.generate(4, GOLDEN_ENERGY_MEV, seed=GOLDEN_SEED)
    np.testing.assert_array_equal(conditions[:, 0], np.float32(GOLDEN_ENERGY_MEV))
    np.testing.assert_allclose(showers.sum(1), GOLDEN_TOTALS, rtol=1e-5)
    np.testing.assert_array_equal((showers > 0).sum(1), GOLDEN_NONZERO)
    top = np.argsort(showers[0])[::-1][:5]
    np.testing.assert_array_equal(top, [i for i, _ in GOLDEN_TOP_VOXELS])
    np.testing.assert_allclose(showers[0, top], [e for _, e in GOLDEN_TOP_VOXELS], rtol=1e-4)


def test_showers_look_physical(generator):
    energies = np.geomspace(1e3, 1e6, 7)
    conditions, showers = generator.generate(2100, np.repeat(energies, 300), seed=5)
    assert (showers >= 0).all() and not ((showers > 0) & (showers < THRESHOLD)).any()
    response = (showers.sum(1) / conditions[:, 0]).reshape(7, 300)
    # Mean response just below 1 (leakage) at every energy (300 showers: +-1 % at 1 GeV),
    # resolution falling with energy.
    assert ((response.mean(1) > 0.94) & (response.mean(1) < 1.02)).all()
    spread = response.std(1) / response.mean(1)
    assert spread[0] > 0.08 and spread[-1] < 0.03
    # Deeper showers at higher energy: the longitudinal centre moves back ~1 X0 per e-fold.
    layers = showers.reshape(2100, 45, -1).sum(2)
    centre = (layers * np.arange(45)).sum(1) / layers.sum(1)
    per_energy = centre.reshape(7, 300).mean(1)
    assert np.all(np.diff(per_energy) > 0)
