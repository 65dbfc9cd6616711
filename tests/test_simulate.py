"""The reference simulator: physics properties of both methods, their agreement, reproducibility, the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastsim.dataset import open_showers
from fastsim.errors import ConditionError, OutputError
from fastsim.geometry import CylindricalGeometry, Layer, default_geometry
from training.simulate import (
    BLOCK_SIZE,
    METHODS,
    SIW,
    EnergyRule,
    gamma_cdf,
    iter_simulate,
    parse_energy,
    simulate,
    write_dataset,
)

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = default_geometry()
X0_PER_LAYER = GEOMETRY.layer_thickness_mm / SIW.x0_mm


def _response(energies, showers):
    return showers.sum(axis=1, dtype=np.float64) / energies


def _profile_peak(showers):
    """Depth (X0) of the maximum of the mean longitudinal profile, parabola through the top 3 layers."""
    profile = GEOMETRY.reshape(showers).sum(axis=(2, 3), dtype=np.float64).mean(axis=0)
    k = int(profile.argmax())
    y0, y1, y2 = profile[k - 1 : k + 2]
    return (k + 0.5 + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)) * X0_PER_LAYER


_SCANS: dict[str, dict] = {}


def _scan(method):
    """1500 showers at each of five energies (GeV), seed 11, made once per method."""
    if method not in _SCANS:
        _SCANS[method] = {e: simulate(1500, f"{e}GeV", seed=11, method=method) for e in (2, 5, 10, 20, 50)}
    return _SCANS[method]


@pytest.fixture(scope="module", params=METHODS)
def scan(request):
    return _scan(request.param)


# ---------------------------------------------------------------------------- physics
def test_response_is_just_below_one(scan):
    for e_gev, (energies, showers) in scan.items():
        response = _response(energies, showers).mean()
        assert 0.95 < response < 1.0, (e_gev, response)


def test_resolution_stochastic_term(scan):
    # sigma^2 - b^2 = a^2 / E with the 1 % constant term; fit a^2 by least squares in 1/E
    inv_e = np.array([1.0 / e for e in scan])
    rel_var = np.array([np.var(r := _response(*scan[e])) / r.mean() ** 2 for e in scan])
    a2 = np.sum(inv_e * (rel_var - SIW.constant**2)) / np.sum(inv_e**2)
    assert 0.150 < np.sqrt(a2) < 0.185
    # and each point is within 10 % of 16.5 %/sqrt(E) (+) 1 %
    expected = np.sqrt(0.165**2 * inv_e + 0.01**2)
    np.testing.assert_allclose(np.sqrt(rel_var), expected, rtol=0.1)


@pytest.mark.parametrize("method", METHODS)
def test_depth_of_maximum_grows_one_x0_per_e_fold(method):
    _, low = simulate(800, "1GeV", seed=3, method=method)
    _, high = simulate(160, "1TeV", seed=3, method=method)
    t_low, t_high = _profile_peak(low), _profile_peak(high)
    slope = (t_high - t_low) / np.log(1000.0)
    assert 0.9 < slope < 1.1
    # and where GFlash puts it: T = ln(E/E_c) - 0.812 - 0.43 (sampling correction)
    assert t_low == pytest.approx(np.log(1000 / SIW.critical_mev) - 1.238, abs=0.35)
    assert t_high == pytest.approx(np.log(1e6 / SIW.critical_mev) - 1.238, abs=0.35)


def test_ninety_percent_within_one_moliere_radius(scan):
    _, showers = scan[20]
    rings = GEOMETRY.reshape(showers).sum(axis=(0, 1, 2), dtype=np.float64)
    inner = rings[:2].sum() / rings.sum()  # r < 9.3 mm, R_M = 9.5 mm
    assert 0.86 < inner < 0.94
    # the energy per ring falls with radius (core, then the tail)
    assert np.all(np.diff(rings) < 0)


def test_longitudinal_shape_fluctuates_shower_by_shower(scan):
    # the correlated (ln T, ln alpha) fluctuations move the centre of gravity by ~1 X0;
    # spot and sampling noise alone would give a few tenths of that
    _, showers = scan[50]
    layers = GEOMETRY.reshape(showers).sum(axis=(2, 3), dtype=np.float64)
    cog = (layers * (np.arange(45) + 0.5)).sum(axis=1) / layers.sum(axis=1) * X0_PER_LAYER
    assert 0.7 < cog.std() < 1.3
    # showers that start late also peak late: first-layers energy anticorrelates with depth
    early = layers[:, :5].sum(axis=1) / layers.sum(axis=1)
    assert np.corrcoef(early, cog)[0, 1] < -0.5


@pytest.mark.parametrize("method", METHODS)
def test_sparsity_falls_with_energy(method):
    sparsity = [(simulate(128, e, seed=2, method=method)[1] == 0).mean() for e in ("1GeV", "10GeV", "100GeV", "1TeV")]
    assert np.all(np.diff(sparsity) < -0.02), sparsity
    assert sparsity[0] > 0.95 and sparsity[-1] < 0.6


def test_threshold_and_output_types(scan):
    energies, showers = scan[2]
    assert energies.dtype == np.float64 and showers.dtype == np.float32
    assert showers.shape == (1500, 6480)
    hits = showers[showers > 0]
    assert hits.min() >= SIW.threshold_mev
    assert np.all(showers >= 0) and np.all(np.isfinite(showers))


def _zscore(a, b):
    """(mean a - mean b) / its standard error, per column, for two independent samples of showers."""
    return (a.mean(axis=0) - b.mean(axis=0)) / np.sqrt(a.var(axis=0) / len(a) + b.var(axis=0) / len(b))


def _shower_features(energies, showers):
    """Per shower: E_tot/E_inc, layer fractions, ring fractions in three depth bands, hit voxels."""
    voxels = GEOMETRY.reshape(showers).astype(np.float64) / energies[:, None, None, None]
    layers = voxels.sum(axis=(2, 3))
    bands = [voxels[:, :6], voxels[:, 6:14], voxels[:, 14:]]  # before, around, after the maximum
    rings = np.concatenate([band.sum(axis=(1, 2)) for band in bands], axis=1)
    return layers.sum(axis=1), layers, rings, (showers > 0).sum(axis=1).astype(np.float64)


def test_spots_and_binned_methods_agree_statistically():
    # binned draws the voxel spot counts directly; it must be the spot-by-spot simulator in
    # distribution. Independent draws (the sampling noise differs), so compare in standard errors:
    # a radial profile taken at the wrong depth (tau off by 17 %) gives |z| > 10 here.
    spots, binned = _scan("spots"), _scan("binned")
    width_ratios = []
    for e_gev in spots:
        a, b = _shower_features(*spots[e_gev]), _shower_features(*binned[e_gev])
        response_a, response_b = a[0], b[0]
        assert abs(_zscore(response_a, response_b)) < 4.5, (e_gev, response_a.mean(), response_b.mean())
        width_ratios.append(response_a.std() / response_b.std())
        assert 0.88 < width_ratios[-1] < 1.12, (e_gev, width_ratios[-1])
        used = b[1].mean(axis=0) > 1e-3  # layers holding energy
        assert np.abs(_zscore(a[1][:, used], b[1][:, used])).max() < 4.5, e_gev  # mean longitudinal profile
        assert np.abs(_zscore(a[2], b[2])).max() < 4.5, e_gev  # mean radial profile, per depth band
        assert abs(_zscore(a[3], b[3])) < 4.5, e_gev  # hit voxels: the spot granularity
    assert abs(np.mean(np.log(width_ratios))) < 0.05, width_ratios


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ConditionError, match="method: expected one of spots, binned, got 'exact'"):
        simulate(1, "1GeV", method="exact")


def test_gamma_cdf_matches_scipy():
    from scipy.special import gammainc

    rng = np.random.default_rng(0)
    a = rng.uniform(1.05, 15, (50, 1))
    x = np.concatenate([np.zeros((50, 1)), rng.uniform(0, 1, (50, 1)) * rng.uniform(0, 150, (50, 200))], axis=1)
    np.testing.assert_allclose(gamma_cdf(a, x), gammainc(a, x), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- energies
def test_log_uniform_energies_cover_the_range():
    energies, _ = simulate(512, "1GeV:1TeV", seed=4, method="binned")  # energies: the same for both methods
    assert energies.min() >= 1e3 and energies.max() <= 1e6
    logs = np.log10(energies / 1e3)
    assert abs(logs.mean() - 1.5) < 0.1 and abs(logs.std() - 3 / np.sqrt(12)) < 0.1


def test_list_energies_cycle_by_index():
    energies, _ = simulate(5, "10GeV,20GeV,30GeV", seed=0, start=4)
    assert energies.tolist() == [20e3, 30e3, 10e3, 20e3, 30e3]


@pytest.mark.parametrize(
    ("text", "rule"),
    [("50GeV", EnergyRule("fixed", (5e4,))), ("2000", EnergyRule("fixed", (2e3,))),
     ("1 GeV : 1TeV", EnergyRule("log-uniform", (1e3, 1e6))), ("1GeV,0.5TeV", EnergyRule("list", (1e3, 5e5)))],
)
def test_parse_energy(text, rule):
    assert parse_energy(text) == rule


@pytest.mark.parametrize(
    ("text", "message"),
    [("5XeV", "unknown unit 'XeV'"), ("fast", "cannot read 'fast'"), ("1TeV:1GeV", "low < high"),
     ("1MeV", "between 100 MeV and 1e\\+07 MeV"), ("1:2:3", "LOW:HIGH"), ("nan", "cannot read 'nan'"),
     (float("nan"), "between"), ([1e3, float("inf")], "between"), ([], "needs >= 1 values"),
     (["10GeV", None], "expected numbers in MeV"), (None, "expected a string")],
)
def test_bad_energies_are_clear_errors(text, message):
    with pytest.raises(ConditionError, match=message):
        simulate(1, text)


# ---------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("method", METHODS)
def test_same_seed_is_bitwise_identical_and_seeds_differ(method):
    a = simulate(40, "1GeV:1TeV", seed=9, method=method)
    b = simulate(40, "1GeV:1TeV", seed=9, method=method)
    c = simulate(40, "1GeV:1TeV", seed=10, method=method)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert (a[1] != c[1]).mean() > 0.05


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk_size", [1, 50, BLOCK_SIZE, 333])
def test_any_chunking_gives_the_same_showers(chunk_size, method):
    n = 2 * BLOCK_SIZE + 77
    energies, showers = simulate(n, "1GeV:100GeV", seed=5, method=method)
    chunks = list(iter_simulate(n, "1GeV:100GeV", seed=5, chunk_size=chunk_size, method=method))
    assert np.array_equal(np.concatenate([c[0] for c in chunks]), energies)
    assert np.array_equal(np.concatenate([c[1] for c in chunks]), showers)
    # a window anywhere reproduces the same rows
    _, window = simulate(60, "1GeV:100GeV", seed=5, start=BLOCK_SIZE - 20, method=method)
    assert np.array_equal(window, showers[BLOCK_SIZE - 20 : BLOCK_SIZE + 40])


@pytest.mark.parametrize("method", METHODS)
def test_other_uniform_geometries_are_supported(method):
    coarse = CylindricalGeometry(tuple(Layer((0.0, 10.0, 20.0, 80.0), 4) for _ in range(30)), layer_thickness_mm=4.0)
    energies, showers = simulate(256, "20GeV", seed=1, geometry=coarse, method=method)
    assert showers.shape == (256, coarse.n_voxels)
    # 80 mm and 28 X0 contain nearly everything: 1 within the 0.25 % standard error of the mean
    assert 0.98 < _response(energies, showers).mean() < 1.008


def test_non_uniform_binnings_need_the_spots_method():
    mixed = CylindricalGeometry((Layer((0.0, 5.0, 40.0), 1), *tuple(Layer((0.0, 2.0, 10.0, 80.0), 8) for _ in range(30))))
    energies, showers = simulate(64, "10GeV", seed=1, geometry=mixed)
    assert showers.shape == (64, 2 + 30 * 24)
    assert 0.97 < _response(energies, showers).mean() < 1.01
    with pytest.raises(ConditionError, match="method: binned supports .* non-uniform binning .* use method spots"):
        simulate(1, "1GeV", geometry=mixed, method="binned")


# ---------------------------------------------------------------------------- writer and command
def test_write_dataset_is_the_simulation_and_reads_back(tmp_path):
    h5, xml = write_dataset(tmp_path / "e.h5", 300, "1GeV:1TeV", seed=2, chunk_size=70, progress=False)
    assert xml == tmp_path / "e.xml" and CylindricalGeometry.from_xml(xml) == GEOMETRY
    energies, showers = simulate(300, "1GeV:1TeV", seed=2)
    with open_showers(h5) as f:
        assert f.geometry == GEOMETRY and f.attrs["seed"] == 2 and f.attrs["method"] == "spots"
        got_e, got_s = f.read()
    assert np.array_equal(got_e, energies.reshape(-1, 1)) and np.array_equal(got_s, showers)  # readers give (N, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.geometry.json", "e.h5", "e.xml"]
    with pytest.raises(OutputError, match="already exists"):
        write_dataset(h5, 3, progress=False)
    (tmp_path / "other.xml").write_text("<Bins/>")
    with pytest.raises(OutputError, match="other.xml already exists with other content"):
        write_dataset(tmp_path / "other.h5", 3, progress=False)
    with pytest.raises(OutputError, match="expected an HDF5 file name"):
        write_dataset(tmp_path / "binning.xml", 3, progress=False)
    # an identical binning file already there is fine
    (tmp_path / "e2.xml").write_text(xml.read_text())
    write_dataset(tmp_path / "e2.h5", 3, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "e.geometry.json", "e.h5", "e.xml", "e2.geometry.json", "e2.h5", "e2.xml", "other.xml"]


def _run(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("method", [None, "binned"])
def test_simulate_command_writes_file_and_binning(tmp_path, method):
    out = tmp_path / "sim.h5"
    extra = ["--method", method] if method else []
    result = _run("simulate", "-n", "150", "--seed", "7", "--energy", "10GeV,100GeV", "-o", str(out), "--chunk-size", "64", *extra, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sim.xml").is_file()
    energies, showers = simulate(150, "10GeV,100GeV", seed=7, method=method or "spots")  # spots is the default
    with open_showers(out) as f:
        got_e, got_s = f.read()
        assert f.attrs["method"] == (method or "spots")
    assert np.array_equal(got_e, energies.reshape(-1, 1)) and np.array_equal(got_s, showers)  # readers give (N, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["-n", "0"], "'-n' / '--n-showers'"), (["-n", "5", "--energy", "3 bananas"], "energy: "),
     (["-n", "5", "--energy", "1GeV:20TeV"], "between 100 MeV"), (["-n", "5", "--seed", "-1"], "--seed"),
     (["-n", "5", "--chunk-size", "0"], "--chunk-size"), (["-n", "5", "--method", "exact"], "'--method'")],
)
def test_simulate_command_bad_input_is_one_line_exit_2(tmp_path, args, message):
    out = tmp_path / "bad.h5"
    result = _run("simulate", *args, "-o", str(out), cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_simulate_command_refuses_to_overwrite(tmp_path):
    out = tmp_path / "x.h5"
    out.write_bytes(b"precious")
    result = _run("simulate", "-n", "3", "-o", str(out), cwd=ROOT)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert out.read_bytes() == b"precious"


def test_benchmark_smoke_records_figures(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_simulate.py"), "--smoke", "--out-dir", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "simulate.json").read_text())
    for method in METHODS:
        row = record["results"][method]["log_uniform_1GeV_1TeV"]
        assert row["showers_per_s_best"] > 0 and 20_000 < row["mean_spots_per_shower"] < 40_000
    assert {"numpy", "cpu_count", "loadavg_at_start", "loadavg_at_end"} <= set(record["machine"])
    kinds = {(k["dataset"], k["particle"], k["theta"], k["method"]): k for k in record["kinds"]}
    assert ("3", "electron", "0", "spots") in kinds and ("2", "electron", "0deg:60deg", "spots") in kinds
    assert all(k["showers_per_s_best"] > 0 and k["n_voxels"] in (368, 533, 6480, 40500) for k in kinds.values())
    markdown = (tmp_path / "simulate.md").read_text()
    assert "showers/s" in markdown and "| spots | log-uniform 1 GeV-1 TeV |" in markdown


# ---------------------------------------------------------------------------- particles, angles, datasets (command)
def test_simulate_command_photons_on_dataset_1_with_angles(tmp_path):
    import h5py

    out = tmp_path / "new" / "folder" / "photons.h5"  # the folder is created
    result = _run("simulate", "-n", "40", "--seed", "3", "--particle", "22", "--dataset", "1-photons",
                  "--energy", "10GeV", "--theta", "10deg:50deg", "--phi", "0:2pi", "--substructure", "-o", str(out), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["photons.geometry.json", "photons.h5", "photons.xml"]
    with h5py.File(out) as f:
        assert f["showers"].shape == (40, 368) and f["incident_energies"].shape == (40, 1)
        theta, phi = f["incident_theta"][:, 0], f["incident_phi"][:, 0]
        assert f["particle"].shape == (40, 1) and np.all(f["particle"][:] == 22)
        assert f.attrs["particle"] == "photon" and f.attrs["substructure"] and f.attrs["geometry"] == "photons.geometry.json"
        assert "calochallenge-1-photons" in f.attrs["geometry_json"] and f.attrs["binning_xml"].startswith("<Bins>")
        showers = f["showers"][:]
    assert np.all((theta >= np.radians(10)) & (theta <= np.radians(50))) and np.all((phi >= 0) & (phi <= 2 * np.pi))
    # the same showers as the library call, and the files beside it load as a detector again
    from fastsim.geometry import load_detector

    binning, material = load_detector(out.with_suffix(".xml"))
    assert binning.n_voxels == 368 and binning.layer_ids == (0, 1, 2, 3, 12) and binning.particle == "photon"
    _, expected = simulate(40, "10GeV", seed=3, geometry=binning, material=material, particle="photon",
                           theta="10deg:50deg", phi="0:2pi", substructure=True)
    assert np.array_equal(showers, expected)
    with open_showers(out) as f:
        assert f.geometry.n_voxels == 368


def test_simulate_command_default_writes_no_angle_or_particle_columns(tmp_path):
    import h5py

    out = tmp_path / "e.h5"
    assert _run("simulate", "-n", "3", "--energy", "5GeV", "-o", str(out), cwd=ROOT).returncode == 0
    with h5py.File(out) as f:
        assert sorted(f) == ["incident_energies", "showers"]  # as CaloChallenge dataset 2
        assert f.attrs["particle_pdg"] == 11 and f.attrs["theta"] == "fixed 0 rad"


def _binning_beside(tmp_path, geometry_file):
    xml = tmp_path / "mine.xml"
    xml.write_text((ROOT / "fastsim" / "data" / "binning_dataset_1_photons.xml").read_text())
    if geometry_file:
        text = (ROOT / "fastsim" / "data" / geometry_file).read_text()
        (tmp_path / "mine.geometry.json").write_text(text)
    return xml


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--particle", "kaon"], "'--particle': particle: expected electron (11), positron (-11) or photon (22), got 'kaon'"),
     (["--particle", "211"], "'--particle': particle: charged pions (211) are not simulated"),
     (["--particle", "pi-"], "charged pions (pi-) are not simulated"),
     (["--theta", "95deg"], "'--theta': theta: expected angles between 0 deg and 80 deg, got 95 deg"),
     (["--theta", "-5deg:30deg"], "'--theta': theta: expected angles between 0 deg and 80 deg, got -5 deg"),
     (["--phi", "3turns"], "'--phi': phi: unknown unit 'turns'"),
     (["--phi", "7rad"], "'--phi': phi: expected angles between -360 deg and 360 deg"),
     (["--dataset", "4"], "'--binning': binning: expected a dataset name (1-photons, 1-pions, 2, 3)"),
     (["--method", "binned", "--particle", "photon"], "'--method': method: binned supports"),
     (["--method", "binned", "--dataset", "1-photons"], "non-uniform binning")],
)
def test_simulate_command_bad_particle_angle_binning_one_line_exit_2(tmp_path, args, message):
    out = tmp_path / "sub" / "bad.h5"
    result = _run("simulate", "-n", "5", *args, "-o", str(out), cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # no file, not even the output folder


@pytest.mark.parametrize(
    ("geometry_file", "message"),
    [(None, "its geometry file '{dir}/mine.geometry.json' (materials per layer) is missing"),
     ("binning_dataset_1_pions.geometry.json",
      "geometry file '{dir}/mine.geometry.json': 7 readout layers [0, 1, 2, 3, 12, 13, 14], but the binning has 5 "
      "layers with voxels (ids [0, 1, 2, 3, 12])"),
     ("binning_dataset_2.geometry.json", "45 readout layers")],
)
def test_simulate_command_binning_without_matching_geometry_file(tmp_path, geometry_file, message):
    xml = _binning_beside(tmp_path, geometry_file)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out" / "bad.h5"
    result = _run("simulate", "-n", "5", "--binning", str(xml), "-o", str(out), cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'--binning'" in lines[0] and message.format(dir=tmp_path) in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
