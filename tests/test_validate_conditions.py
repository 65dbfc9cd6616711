"""Validation in bins of the incidence: reading theta and phi, the theta-bins and inclined-shape groups, the CLI."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from fastsim.dataset import open_showers
from fastsim.errors import DataError
from fastsim.geometry import load_detector
from fastsim.shards import MANIFEST_FORMAT, MANIFEST_NAME, open_dataset
from fastsim.validation.comparison import ALL_GROUPS, _condition_groups, format_particle_table, validate
from helpers.distortions import small_geometry
from training.simulate import simulate

GEOMETRY = small_geometry()  # 12 layers x 8 alpha x 6 rings = 576 voxels
ENERGIES = "1GeV:100GeV"
N = 2400
GROUPS = ("theta-bins", "inclined-shape")


def write_h5(path, energies, showers, theta=None, phi=None, geometry=GEOMETRY, xml=True):
    with h5py.File(path, "w") as f:
        f["incident_energies"] = np.asarray(energies)[:, None]
        f["showers"] = showers
        if theta is not None:
            f["incident_theta"] = np.asarray(theta)[:, None]
        if phi is not None:
            f["incident_phi"] = np.asarray(phi)[:, None]
    if xml:
        geometry.to_xml(path.with_suffix(".xml"))
    return path


def inclined(n, seed, geometry=GEOMETRY, **kwargs):
    """(energies, showers, theta, phi) from the reference simulator, theta 0-60 deg, phi 0-2 pi."""
    return simulate(n, ENERGIES, seed=seed, geometry=geometry, theta="0deg:60deg", phi="0:2pi", return_angles=True,
                    **kwargs)


@pytest.fixture(scope="module")
def samples():
    """Three independent inclined samples: the reference, a second reference (the 'model') and a floor sample."""
    return {name: inclined(N, seed) for name, seed in (("ref", 11), ("other", 12), ("floor", 13))}


@pytest.fixture(scope="module")
def files(tmp_path_factory, samples):
    folder = tmp_path_factory.mktemp("inclined")
    return {name: write_h5(folder / f"{name}.h5", *sample) for name, sample in samples.items()}


def pull(entry):
    return (entry["value"] - entry["reference"]) / math.hypot(entry["error"], entry["reference_error"])


# ----------------------------------------------------------------------------- reading


def test_readers_expose_theta_and_phi_and_default_to_normal_incidence(tmp_path, samples, files):
    energies, showers, theta, phi = samples["ref"]
    with open_showers(files["ref"]) as f:
        assert set(f.conditions) == {"theta", "phi"}
        np.testing.assert_array_equal(f.incident_theta[:, 0], theta)
        np.testing.assert_array_equal(f.incident_phi[:, 0], phi)
        assert f.incident_theta.shape == (N, 1)
        assert theta.min() >= 0.0 and theta.max() <= math.radians(60)
    plain = write_h5(tmp_path / "plain.h5", energies[:50], showers[:50])
    with open_showers(plain) as f:
        assert f.conditions == {} and f.incident_phi is None
        np.testing.assert_array_equal(f.incident_theta, np.zeros((50, 1)))
    bad = write_h5(tmp_path / "bad.h5", energies[:50], showers[:50], theta=np.full(50, 2.0))
    with pytest.raises(DataError, match=r"'incident_theta' must hold finite angles in \[0, pi/2\).*row 0 is 2.0"):
        open_showers(bad)
    short = write_h5(tmp_path / "short.h5", energies[:50], showers[:50], phi=phi[:49])
    with pytest.raises(DataError, match=r"'incident_phi' must have shape \(50, 1\).*got \(49, 1\)"):
        open_showers(short)


def test_a_folder_of_shards_exposes_the_conditions_of_its_shards(tmp_path, samples):
    energies, showers, theta, phi = samples["ref"]
    ranges = [(0, 700), (700, 1500), (1500, N)]
    entries = []
    for index, (start, stop) in enumerate(ranges):
        write_h5(tmp_path / f"shard-{index}.h5", energies[start:stop], showers[start:stop], theta[start:stop],
                 phi[start:stop] if index != 1 else None, xml=False)
        entries.append({"index": index, "start": start, "stop": stop, "file": f"shard-{index}.h5", "status": "done"})
    manifest = {"format": MANIFEST_FORMAT, "n": N, "shards": entries,
                "spec": {"output": {"n_voxels": GEOMETRY.n_voxels, "geometry": GEOMETRY.to_dict()}}}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with open_dataset(tmp_path) as data:
        # phi is missing from one shard, so the run as a whole has none; theta is in every shard.
        assert set(data.conditions) == {"theta"} and data.incident_phi is None
        np.testing.assert_array_equal(data.incident_theta[:, 0], theta)
        np.testing.assert_array_equal(data.incident_energies[:, 0], energies)


def test_all_runs_the_incidence_groups_only_when_both_files_carry_theta(tmp_path, samples, files):
    energies, showers, _, _ = samples["other"]
    plain = write_h5(tmp_path / "plain.h5", energies, showers)
    with open_showers(files["ref"]) as ref, open_showers(files["other"]) as gen, open_showers(plain) as flat:
        both = _condition_groups(ALL_GROUPS, True, {"generated": gen, "reference": ref, "floor_reference": None})
        assert set(GROUPS) <= set(both) and "particle-bins" not in both
        one = _condition_groups(ALL_GROUPS, True, {"generated": flat, "reference": ref, "floor_reference": None})
        assert not set(GROUPS) & set(one) and "energy-bins" in one
    # Asked for by name, a file without the reference's angles is an error, not a silent normal incidence.
    with pytest.raises(DataError, match="generated: expected a dataset 'incident_theta' as the reference has one"):
        validate(plain, files["ref"], groups=GROUPS)


# ----------------------------------------------------------------------------- known answers


@pytest.fixture(scope="module")
def null_result(files):
    """An independent sample of the same simulator against the reference, floor from a third sample."""
    return validate(files["other"], files["ref"], groups=GROUPS, floor_reference=files["floor"])


def test_an_independent_reference_shows_small_deviations_and_separation_powers_at_the_floor(null_result):
    rows = null_result["theta_bins"]
    assert len(rows) == 6 and rows[0]["theta_low_deg"] == pytest.approx(0.0, abs=0.5)
    assert rows[-1]["theta_high_deg"] == pytest.approx(60.0, abs=0.5)
    assert sum(r["n_reference"] for r in rows) == sum(r["n_generated"] for r in rows) == N
    for row in rows:
        for kind in ("response", "resolution"):
            deviation, error = row[f"{kind}_deviation_pct"], row[f"{kind}_deviation_error_pct"]
            assert abs(deviation) < 4 * error and error < (3.0 if kind == "response" else 10.0)
            assert row[f"floor_{kind}_deviation_pct"] is not None
    shape = null_result["inclined_shape"]
    assert shape["layers"] == list(range(12)) and len(shape["theta_bins"]) == 6
    for row in [*shape["theta_bins"], shape["overall"]]:
        for name in ("centre_u", "centre_v", "width_u", "width_v"):
            entry = row[name]
            assert entry["value"] < 0.05 and abs(pull(entry)) < 3.5, (row.get("theta_low_deg"), name)
    for name in ("centre_u", "centre_v", "width_u", "width_v"):
        entry = null_result["metrics"][f"inclined_shape.{name}"]
        assert entry["floor_method"] == "independent" and entry["value"] < 0.01
        assert len(null_result["per_layer"][f"inclined_shape.{name}"]["value"]) == 12


def test_a_shape_rotated_by_a_wrong_phi_stands_far_above_the_floor(samples, files, null_result, tmp_path):
    energies, showers, theta, phi = samples["other"]
    wrong = write_h5(tmp_path / "wrong.h5", energies, showers, theta, np.mod(phi + math.pi / 2, 2 * math.pi))
    result = validate(wrong, files["ref"], groups=("inclined-shape",), floor_reference=files["floor"])
    for name in ("centre_u", "centre_v", "width_u", "width_v"):
        entry = result["metrics"][f"inclined_shape.{name}"]
        assert entry["value"] > 5 * entry["reference"] and pull(entry) > 10, name
        # The same showers with their true azimuth sit at the floor (the null test above).
        assert null_result["metrics"][f"inclined_shape.{name}"]["value"] < entry["value"] / 4
    bins = result["inclined_shape"]["theta_bins"]
    # Near normal incidence the shower is round and the rotation is invisible; at 50-60 deg it is glaring.
    assert abs(pull(bins[0]["width_u"])) < 4
    assert bins[-1]["width_u"]["value"] > 5 * bins[-1]["width_u"]["reference"]
    assert [b["centre_u"]["value"] for b in bins][1:] == sorted(b["centre_u"]["value"] for b in bins[1:])


def test_three_per_cent_more_energy_in_one_theta_bin_is_seen_in_that_bin_only(samples, files, tmp_path):
    energies, showers, theta, phi = samples["other"]
    edges = np.linspace(samples["ref"][2].min(), samples["ref"][2].max(), 7)
    chosen = (theta >= edges[3]) & (theta < edges[4])
    scaled = np.array(showers)
    scaled[chosen] *= np.float32(1.03)
    plain = validate(files["other"], files["ref"], groups=("theta-bins",))
    distorted = validate(write_h5(tmp_path / "scaled.h5", energies, scaled, theta, phi), files["ref"],
                         groups=("theta-bins",))
    for i, (before, after) in enumerate(zip(plain["theta_bins"], distorted["theta_bins"], strict=True)):
        change = (1 + after["response_deviation_pct"] / 100) / (1 + before["response_deviation_pct"] / 100)
        assert change == pytest.approx(1.03 if i == 3 else 1.0, abs=1e-3), i
        assert after["resolution_deviation_pct"] == pytest.approx(before["resolution_deviation_pct"], abs=0.3), i
    # Against an exact copy of the reference the deviation is the 3 % alone, in that bin alone.
    energies, showers, theta, phi = samples["ref"]
    copy = np.array(showers)
    copy[(theta >= edges[3]) & (theta < edges[4])] *= np.float32(1.03)
    own = validate(write_h5(tmp_path / "own.h5", energies, copy, theta, phi), files["ref"], groups=("theta-bins",))
    deviations = [row["response_deviation_pct"] for row in own["theta_bins"]]
    assert deviations[3] == pytest.approx(3.0, abs=0.1)
    assert all(d == 0.0 for i, d in enumerate(deviations) if i != 3)
    assert own["metrics"]["theta_bins.max_response_deviation"]["value"] == pytest.approx(0.03, abs=1e-3)


# ----------------------------------------------------------------------------- geometries and the CLI


def test_dataset_1_geometry_skips_single_sector_layers(run_fastsim, tmp_path):
    binning, material = load_detector("1-photons")  # layers of 1, 10, 10, 1, 1 sectors and 8-19 rings
    gen, ref = (write_h5(tmp_path / f"{name}.h5", *inclined(400, seed, binning, material=material,
                                                             particle="photon"), xml=False)
                for name, seed in (("gen", 21), ("ref", 22)))
    out = tmp_path / "rep"
    proc = run_fastsim("validate", gen, ref, "-o", out, "--geometry", "1-photons", "--metrics",
                       "theta-bins,inclined-shape", "--no-plots", "--bootstrap", "5")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["geometry"] == {"n_layers": 5, "n_voxels": 368}
    assert doc["inclined_shape"]["layers"] == [1, 2]
    assert len(doc["per_layer"]["inclined_shape.width_v"]["value"]) == 2
    assert all(doc["metrics"][f"inclined_shape.{q}"]["value"] is not None
               for q in ("centre_u", "centre_v", "width_u", "width_v"))


def test_cli_runs_the_incidence_groups_by_default_and_prints_the_theta_table(run_fastsim, files, tmp_path):
    out = tmp_path / "rep"
    proc = run_fastsim("validate", files["other"], files["ref"], "-o", out, "-n", "600", "--no-plots",
                       "--bootstrap", "3", "--classifier-showers", "100", "--voxel-classifier-showers", "100",
                       "--floor-reference", files["floor"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert set(GROUPS) <= set(doc["groups"])
    assert doc["conditions"]["generated"] == doc["conditions"]["reference"] == ["phi", "theta"]
    stdout = proc.stdout
    summary, theta_table = stdout.index("| metric |"), stdout.index("| θ [deg] | N ref | N gen |")
    assert summary < stdout.index("| E_inc [GeV] |") < theta_table < stdout.index("| θ [deg] | N gen | centre_u |")
    assert stdout[theta_table:].count("\n| ") >= 7 and "| inclined_shape.width_u |" in stdout
    report = (out / "report.md").read_text()
    assert "## Response and resolution per theta bin" in report and "## Shower shape in the track frame" in report


# ----------------------------------------------------------------------------- per particle


def mixed(path, seed, photon_scale=1.0, n=1200):
    """Electrons then photons on the small geometry with a particle dataset; photon showers scaled by photon_scale."""
    e_energy, e_showers = simulate(n, ENERGIES, seed=seed, geometry=GEOMETRY)
    g_energy, g_showers = simulate(n, ENERGIES, seed=seed + 100, geometry=GEOMETRY, particle="photon")
    write_h5(path, np.concatenate([e_energy, g_energy]), np.concatenate([e_showers, g_showers * photon_scale]))
    with h5py.File(path, "a") as f:
        f["particle"] = np.repeat([11, 22], n).astype(np.int32)[:, None]
    return path


def test_particle_bins_find_a_response_shift_in_one_particle_only(tmp_path):
    ref, floor = mixed(tmp_path / "ref.h5", 21), mixed(tmp_path / "floor.h5", 22)
    shifted = mixed(tmp_path / "gen.h5", 23, photon_scale=1.05)
    result = validate(shifted, ref, groups=("particle-bins",), floor_reference=floor)
    rows = {int(row["particle"]): row for row in result["particle_bins"]}
    assert set(rows) == {11, 22} and rows[22]["n_reference"] == rows[22]["n_generated"] == 1200
    electron, photon = rows[11], rows[22]
    assert abs(electron["response_deviation_pct"]) < 4 * electron["response_deviation_error_pct"]
    assert photon["response_deviation_pct"] == pytest.approx(5.0, abs=4 * photon["response_deviation_error_pct"])
    assert photon["response_deviation_pct"] > 2.0  # well outside the floor's spread at these sizes
    assert abs(photon["floor_response_deviation_pct"]) < 2.0
    assert result["metrics"]["particle_bins.max_response_deviation"]["value"] == pytest.approx(
        photon["response_ratio"] - 1.0)
    table = format_particle_table(result).splitlines()
    assert table[0].startswith("| particle | N ref | N gen |") and len(table) == 4
    assert table[2].startswith("| electron (11) | 1200 | 1200 |") and table[3].startswith("| photon (22) | 1200 |")


def test_all_runs_particle_bins_only_when_both_files_carry_particle(tmp_path, files):
    ref = mixed(tmp_path / "ref.h5", 31, n=100)
    with open_showers(ref) as a, open_showers(mixed(tmp_path / "gen.h5", 32, n=100)) as b, \
            open_showers(files["ref"]) as plain:
        assert "particle-bins" in _condition_groups(ALL_GROUPS, True, {"generated": b, "reference": a,
                                                                      "floor_reference": None})
        assert "particle-bins" not in _condition_groups(ALL_GROUPS, True, {"generated": plain, "reference": a,
                                                                          "floor_reference": None})
        # Named, with no input that says which particle a shower is: nothing to bin, left out.
        assert _condition_groups(("energy-bins", "particle-bins"), False, {"generated": plain, "reference": plain,
                                                                          "floor_reference": None}) == ("energy-bins",)
    with pytest.raises(DataError, match="generated: expected a dataset 'particle' \\(PDG ids; the group "
                                        "particle-bins compares per particle\\), got none"):
        validate(files["ref"], ref, groups=("particle-bins",))
