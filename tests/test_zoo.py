"""The model zoo: every bundled model beside the default, with its card and golden values.

Each entry pins what a user relies on: the conditions the model takes (names,
units, ranges), its voxel count, that it loads and decodes through the
public API, and four showers of a fixed seed (golden values: totals, counts
of voxels above threshold, the five largest voxels of the first shower), so
a change of the file, the runtime or ONNX Runtime that moves a shower shows
up here. The card must exist and state every headline metric.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import fastsim
from fastsim.models import bundled_models

REPO = Path(__file__).resolve().parents[1]
EXPORTED = REPO / "exported"
GOLDEN_SEED = 2024

ZOO = {
    "calo-egamma-d2": {
        "conditions": [("incident_energy", "MeV", 1e3, 1e6, "log-uniform"),
                       ("particle", "pdg", 11.0, 22.0, "categorical")],
        "n_voxels": 6480,
        "golden_conditions": {"incident_energy": 50_000.0, "particle": 22.0},
        "totals": [50718.4, 50157.36, 49045.25, 49487.21],
        "nonzero": [1116, 1074, 1008, 1045],
        "top_voxels": [(1521, 420.29684), (2142, 385.55301), (2088, 374.97339), (1863, 350.25974),
                       (1764, 338.80325)],
    },
    "calo-electron-inclined": {
        "conditions": [("incident_energy", "MeV", 1e3, 1e6, "log-uniform"),
                       ("incident_theta", "rad", 0.0, math.pi / 3, "uniform"),
                       ("incident_phi", "rad", 0.0, 2 * math.pi, "uniform")],
        "n_voxels": 6480,
        "golden_conditions": {"incident_energy": 50_000.0, "incident_theta": 0.5, "incident_phi": 1.0},
        "totals": [49268.27, 48799.09, 50141.3, 48922.57],
        "nonzero": [1189, 1001, 997, 1088],
        "top_voxels": [(1521, 437.20007), (1044, 329.37402), (1350, 315.10071), (1377, 309.92545),
                       (1197, 298.06079)],
    },
    "calo-electron-d3": {
        "conditions": [("incident_energy", "MeV", 1e3, 1e6, "log-uniform")],
        "n_voxels": 40500,
        "golden_conditions": {"incident_energy": 50_000.0},
        "totals": [50690.76, 50026.79, 49049.95, 49448.83],
        "nonzero": [2823, 2634, 2756, 2782],
        "top_voxels": [(8370, 198.07996), (9342, 188.20418), (6858, 188.01346), (6840, 183.69722),
                       (14544, 183.46875)],
    },
    "calo-photon-d1": {
        "conditions": [("incident_energy", "MeV", 1e3, 1e6, "log-uniform")],
        "n_voxels": 368,
        "golden_conditions": {"incident_energy": 50_000.0},
        "totals": [47971.33, 50275.55, 50651.58, 49152.3],
        "nonzero": [273, 286, 306, 296],
        "top_voxels": [(246, 1317.83044), (207, 1302.11975), (303, 1193.15686), (170, 1188.98608),
                       (284, 1174.8313)],
    },
}


@pytest.fixture(scope="module", params=sorted(ZOO))
def zoo_model(request):
    name = request.param
    return name, ZOO[name], fastsim.load(EXPORTED / f"{name}.onnx", device="cpu", threads=1)


def test_every_bundled_model_is_in_the_zoo_with_a_card():
    names = {model.name for model in bundled_models()}
    assert names == set(ZOO) | {"calo-electron"}
    for name in ZOO:
        card = EXPORTED / f"{name}.md"
        assert card.is_file(), f"{name} has no model card"
        text = card.read_text()
        for needle in ("classifier_auc.high_level", "classifier_auc.voxel", "reference vs reference", "Golden values",
                       "Training"):
            assert needle.lower() in text.lower(), f"{card.name} does not state {needle!r}"
        # Lean repository: a few MB per model.
        assert (EXPORTED / f"{name}.onnx").stat().st_size < 5_000_000


def test_spec_declares_the_conditions(zoo_model):
    name, entry, generator = zoo_model
    spec = generator.spec
    assert spec.name == name
    got = [(c.name, c.unit, c.min, c.max, c.sampling) for c in spec.conditions]
    assert len(got) == len(entry["conditions"])
    for (g_name, g_unit, g_min, g_max, g_law), (name_, unit, lo, hi, law) in zip(got, entry["conditions"],
                                                                                 strict=True):
        assert (g_name, g_unit, g_law) == (name_, unit, law)
        assert g_min == pytest.approx(lo, rel=1e-6) and g_max == pytest.approx(hi, rel=1e-6)
    assert spec.n_voxels == entry["n_voxels"]
    assert spec.metrics.get("classifier_auc.high_level"), "the spec embeds the validation metrics"


def test_golden_values(zoo_model):
    _, entry, generator = zoo_model
    conditions, showers = generator.generate(4, entry["golden_conditions"], seed=GOLDEN_SEED)
    for j, cond in enumerate(generator.spec.conditions):
        np.testing.assert_allclose(conditions[:, j], np.float32(entry["golden_conditions"][cond.name]), rtol=1e-6)
    np.testing.assert_allclose(showers.sum(1), entry["totals"], rtol=2e-6)
    assert [int(x) for x in (showers > 0).sum(1)] == entry["nonzero"]
    first = showers[0]
    top = np.argsort(first)[::-1][:5]
    assert [int(i) for i in top] == [i for i, _ in entry["top_voxels"]]
    np.testing.assert_allclose(first[top], [v for _, v in entry["top_voxels"]], rtol=1e-5)


def test_showers_are_physical_over_the_whole_range(zoo_model):
    _, _, generator = zoo_model
    conditions, showers = generator.generate(2000, seed=11)
    energy = conditions[:, 0].astype(np.float64)
    response = showers.sum(1) / energy
    assert (showers >= 0).all() and np.isfinite(showers).all()
    # Sampling calorimeters of the reference simulator contain 85-100 % of the energy on average.
    assert 0.8 < float(np.median(response)) < 1.02
    assert float(response.max()) < 1.5
    threshold = generator.spec.training["voxel_threshold_mev"]
    assert ((showers == 0) | (showers >= threshold * (1 - 1e-6))).all()
    assert math.isclose(float(np.log(energy).mean()), 0.5 * (np.log(1e3) + np.log(1e6)), rel_tol=0.02)


def test_the_particle_model_starts_photon_showers_deeper():
    # A photon converts after ~9/7 X0 (the reference: +1.5 layers of 45 at 10-100 GeV); the particle condition
    # must carry that, not only relabel the showers.
    generator = fastsim.load(EXPORTED / "calo-egamma-d2.onnx", device="cpu", threads=1)
    assert generator.spec.condition("particle").categories == (("electron", 11.0), ("photon", 22.0))
    centres = {}
    for particle in ("electron", "photon"):
        _, showers = generator.generate(2000, {"incident_energy": "50GeV", "particle": particle}, seed=5)
        layers = showers.reshape(len(showers), 45, -1).sum(2)
        centres[particle] = float(((layers * np.arange(45)).sum(1) / layers.sum(1)).mean())
    assert 1.0 < centres["photon"] - centres["electron"] < 2.0, centres
