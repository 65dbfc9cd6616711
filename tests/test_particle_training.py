"""Several particles in one model: mixing single-particle files, training with the particle as a
condition, exporting it as a categorical condition, and choosing it at generation (``--particle``)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastsim  # noqa: E402
from fastsim.errors import DataError, OutputError  # noqa: E402
from helpers import run_training  # noqa: E402
from training.mix import mix_datasets  # noqa: E402

MIXED_CONFIG = """
name = "tiny-mixed"
description = "test run: electrons and photons"
[data]
e_min = 1000.0
e_max = 1000000.0
particles = ["electron", "photon"]
[model]
architecture = "voxels"
latent_dim = 4
hidden = 32
n_hidden = 2
encoder_hidden = 32
[train]
epochs = 2
batch_size = 64
fom_showers = 100
prior_fit_showers = 200
threads = 1
"""


@pytest.fixture(scope="module")
def singles(tmp_path_factory) -> dict[str, Path]:
    from training.simulate import write_dataset

    folder = tmp_path_factory.mktemp("singles")
    out = {}
    for name, particle, n, seed in (("e", "electron", 300, 1), ("gamma", "photon", 200, 2),
                                    ("e_val", "electron", 100, 3), ("gamma_val", "photon", 100, 4)):
        out[name], _ = write_dataset(folder / f"{name}.h5", n, "1GeV:1TeV", seed=seed, particle=particle,
                                     compression=None, progress=False)
    return out


def test_mix_takes_blocks_in_turn_and_labels_each_shower(singles, tmp_path):
    mixed = mix_datasets([singles["e"], singles["gamma"]], tmp_path / "mixed.h5", block=64, compression=None)
    with h5py.File(singles["e"]) as e, h5py.File(singles["gamma"]) as g, h5py.File(mixed) as m:
        assert m["showers"].shape == (500, 6480) and m["particle"].shape == (500, 1)
        assert "particle" not in e and g["particle"][0, 0] == 22  # electrons are the simulator's default
        # 300 electrons and 200 photons, 64 rows in turn: the photons run out after 8 in the fourth turn.
        expected_particle = np.concatenate([np.full(64, 11), np.full(64, 22)] * 3
                                           + [np.full(64, 11), np.full(8, 22), np.full(44, 11)])
        assert np.array_equal(m["particle"][:, 0], expected_particle)
        np.testing.assert_array_equal(m["showers"][:64], e["showers"][:64])
        np.testing.assert_array_equal(m["showers"][64:128], g["showers"][:64])
        np.testing.assert_array_equal(m["incident_energies"][320:384], g["incident_energies"][128:192])
        np.testing.assert_array_equal(m["showers"][-44:], e["showers"][256:])
        assert "incident_theta" not in m  # no input has angles
    assert mixed.with_suffix(".xml").read_text() == singles["e"].with_suffix(".xml").read_text()
    assert fastsim.open_showers(mixed).n == 500


def test_mix_refuses_other_binnings_and_existing_outputs(singles, tmp_path):
    from fastsim.geometry import CylindricalGeometry, Layer
    from training.simulate import write_dataset

    small = CylindricalGeometry(tuple(Layer((0.0, 5.0, 10.0, 20.0), 8) for _ in range(4)))
    other, _ = write_dataset(tmp_path / "small.h5", 10, "10GeV", geometry=small, compression=None, progress=False)
    with pytest.raises(DataError, match="small.h5' has another binning than .*e.h5' \\(96 voxels, 6480 expected\\)"):
        mix_datasets([singles["e"], other], tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
    (tmp_path / "taken.h5").write_bytes(b"")
    with pytest.raises(OutputError, match="already exists"):
        mix_datasets([singles["e"], singles["gamma"]], tmp_path / "taken.h5")
    with pytest.raises(DataError, match="expected two or more shower files, got 1"):
        mix_datasets([singles["e"]], tmp_path / "one.h5")
    result = run_training("mix", singles["e"], tmp_path / "taken.h5", "-o", tmp_path / "out.h5")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "has no showers/incident_energies datasets" in result.stderr or "cannot open" in result.stderr
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "out.h5.partial").exists()


@pytest.mark.slow
def test_a_model_trained_on_mixed_particles_takes_the_particle_by_name(singles, tmp_path, run_fastsim):
    data = mix_datasets([singles["e"], singles["gamma"]], tmp_path / "train.h5", compression=None)
    val = mix_datasets([singles["e_val"], singles["gamma_val"]], tmp_path / "val.h5", compression=None)
    config = tmp_path / "mixed.toml"
    config.write_text(MIXED_CONFIG)
    run = tmp_path / "run"
    result = run_training("train", "--config", config, "--data", data, "--validation", val, "--out", run, "-q",
                          timeout=600)
    assert result.returncode == 0, result.stderr
    model = tmp_path / "mixed.onnx"
    result = run_training("export", run, "-o", model, "--version", "0.1.0")
    assert result.returncode == 0, result.stderr
    spec = fastsim.read_spec(model)
    assert spec.format == "fastsim-decoder/1.2"
    assert spec.condition("particle").categories == (("electron", 11.0), ("photon", 22.0))
    out = tmp_path / "photons.h5"
    result = run_fastsim("generate", "--model", model, "-n", 64, "--energy", "50GeV", "--particle", "photon",
                         "-o", out, "--seed", 4, "-q")
    assert result.returncode == 0, result.stderr
    gen = fastsim.load(model, device="cpu", threads=1)
    _, electrons = gen.generate(64, {"incident_energy": "50GeV", "particle": "electron"}, seed=4)
    _, photons = gen.generate(64, {"incident_energy": "50GeV", "particle": "photon"}, seed=4)
    with h5py.File(out) as fh:
        assert (fh["particle"][...] == 22).all()
        np.testing.assert_array_equal(fh["showers"][...], photons)
    assert not np.array_equal(electrons, photons)
