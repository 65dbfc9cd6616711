"""The validation protocol: known answers, sensitivity to distortions, the report folder and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from fastsim.errors import DataError
from fastsim.validation import ALL_GROUPS, FLOOR_METHODS, quick_figure_of_merit, validate, write_report
from fastsim.validation.features import compute_features
from helpers import cli_env
from helpers.distortions import broaden, drop_small_deposits, scale_energy, scale_layer, small_geometry
from training.simulate import simulate

GEOMETRY = small_geometry()  # 12 layers x 8 alpha x 6 rings = 576 voxels
ENERGIES = "1GeV:100GeV"
N = 3000


@pytest.fixture(scope="module")
def reference():
    return simulate(N, ENERGIES, seed=1, geometry=GEOMETRY)


@pytest.fixture(scope="module")
def other_seed():
    return simulate(N, ENERGIES, seed=2, geometry=GEOMETRY)


def write_h5(path, energies, showers, geometry=GEOMETRY):
    with h5py.File(path, "w") as f:
        f["incident_energies"] = np.asarray(energies)[:, None]
        f["showers"] = showers
    geometry.to_xml(path.with_suffix(".xml"))
    return path


def values(result, key):
    entry = result["metrics"][key]
    return entry["value"], entry["reference"]


def pull(entry):
    """(value - floor) in units of their combined error."""
    return (entry["value"] - entry["reference"]) / np.hypot(entry["error"], entry["reference_error"])


# ----------------------------------------------------------------------------- known answers


def test_identical_samples_score_perfectly(reference):
    # The classifiers are left out: with every shower in both classes, a classifier
    # memorises the training copies and scores their test twins the other way round.
    groups = tuple(g for g in ALL_GROUPS if not g.startswith("classifier"))
    result = validate(reference, reference, GEOMETRY, groups, kpd_batch_size=1000)
    # Arrays say nothing of the particle: there is nothing to bin per particle.
    assert set(result["groups"]) == set(groups) - {"particle-bins"}
    for key, entry in result["metrics"].items():
        if key.startswith(("separation_power.", "wasserstein.", "energy_bins.")):
            assert entry["value"] == 0.0, key
    # Bootstrap batches of one pool: FPD and KPD are zero within their errors.
    fpd, fpd_ref = values(result, "fpd")
    assert fpd < 0.2 * fpd_ref
    kpd = result["metrics"]["kpd"]
    assert abs(kpd["value"]) <= 3 * kpd["error"] + 1e-6
    assert quick_figure_of_merit(reference, reference, GEOMETRY) == 0.0
    # The per-energy-bin table compares each bin with itself.
    for row in result["energy_bins"]:
        assert row["response_ratio"] == row["resolution_ratio"] == 1.0
        assert row["n_reference"] == row["n_generated"] > 200


@pytest.mark.parametrize("with_floor_file", [False, True])
def test_a_sample_of_the_same_simulator_sits_at_the_floor_within_its_error(reference, other_seed, with_floor_file):
    floor = simulate(N, ENERGIES, seed=3, geometry=GEOMETRY) if with_floor_file else None
    groups = ALL_GROUPS if not with_floor_file else ("separation", "wasserstein", "energy-bins", "classifier-voxel")
    result = validate(other_seed, reference, GEOMETRY, groups, kpd_batch_size=1000, floor_reference=floor)
    method = "independent" if with_floor_file else "bootstrap"
    assert result["floor"]["method"] == method
    pulls = []
    for key, entry in result["metrics"].items():
        if key.startswith(("separation_power.", "wasserstein.", "energy_bins.")):
            assert entry["floor_method"] == method, key
            assert entry["error"] > 0 and entry["reference_error"] > 0, key
            pulls.append(pull(entry))
            assert abs(pull(entry)) < 3.5, key
    # The pulls scatter around zero (the floor is not biased to one side) with about unit spread.
    assert abs(np.mean(pulls)) < 0.8 and 0.2 < np.std(pulls) < 1.6
    for key in ("classifier_auc.high_level", "classifier_auc.voxel")[with_floor_file:]:
        entry = result["metrics"][key]
        assert abs(entry["value"] - 0.5) < 3 * entry["error"]
        assert abs(entry["reference"] - 0.5) < 3 * entry["reference_error"]
        assert entry["converged"] and entry["reference_converged"], key
        assert entry["floor_method"] == ("independent" if with_floor_file else "halves")
    if not with_floor_file:
        fpd = result["metrics"]["fpd"]
        assert fpd["value"] < fpd["reference"] + 3 * np.hypot(fpd["error"], fpd["reference_error"])
    for row in result["energy_bins"]:
        assert abs(row["response_ratio"] - 1.0) < 4 * row["response_ratio_error"]
        assert abs(row["resolution_ratio"] - 1.0) < 4 * row["resolution_ratio_error"]


def test_the_bootstrap_floor_matches_independent_samples_of_the_same_size():
    # The floor a perfect surrogate scores: the mean separation power of independent
    # same-size pairs, against the bias-corrected bootstrap of one reference.
    n = 2000
    samples = [simulate(n, ENERGIES, seed=20 + i, geometry=GEOMETRY) for i in range(8)]
    pairs = [validate(samples[i], samples[i + 1], GEOMETRY, groups=("separation",)) for i in range(0, 8, 2)]
    boot = validate(samples[0], samples[1], GEOMETRY, groups=("separation",), n_bootstrap=40)["metrics"]
    for key, entry in boot.items():
        truth = np.mean([p["metrics"][key]["value"] for p in pairs])
        spread = np.std([p["metrics"][key]["value"] for p in pairs], ddof=1) / 2  # of a mean of 4
        # Measured residual bias of the corrected bootstrap: within 10 % (docs/validation.md).
        assert abs(entry["reference"] - truth) < 0.12 * truth + 2.5 * spread, key
        assert entry["floor_method"] == "bootstrap"


def test_floor_methods_follow_the_inputs_and_are_recorded(reference, other_seed):
    groups = ("separation", "energy-bins")
    energies, showers = other_seed
    split = validate((energies[:1000], showers[:1000]), reference, GEOMETRY, groups)
    assert split["floor"]["method"] == "split" and split["floor"]["rows"] == [2000, 3000]
    assert split["reference"]["n_showers"] == 2000  # the rest of the reference is the floor sample
    assert {e["floor_method"] for e in split["metrics"].values()} == {"split"}
    own = validate(other_seed, reference, GEOMETRY, groups, floor_reference=(energies, showers))
    # A floor sample identical to the generated one scores exactly what it does.
    for entry in own["metrics"].values():
        assert entry["reference"] == entry["value"] and entry["floor_method"] == "independent"
    assert set(FLOOR_METHODS) == {"independent", "split", "bootstrap", "halves"}
    with pytest.raises(DataError, match="floor_reference: expected at least as many showers as the generated"):
        validate(other_seed, reference, GEOMETRY, groups, floor_reference=(energies[:100], showers[:100]))


@pytest.fixture(scope="module")
def fixed_energy():
    """At one incident energy, so that a few per cent stands out of the shower-to-shower spread."""
    return simulate(6000, "20GeV", seed=5, geometry=GEOMETRY), simulate(3000, "20GeV", seed=6, geometry=GEOMETRY)


def test_five_per_cent_in_one_layer_is_the_worst_feature(fixed_energy):
    reference, (energies, showers) = fixed_energy
    plain = validate((energies, showers), reference, GEOMETRY, ("separation",))
    distorted = validate((energies, scale_layer(showers, GEOMETRY, 8, 1.05)), reference, GEOMETRY, ("separation",))
    layer = distorted["per_layer"]["separation_power.layer_energy"]
    excess = (layer["value"][8] - layer["reference"][8]) / np.hypot(layer["error"][8], layer["reference_error"][8])
    assert excess > 3
    worst = distorted["worst_features"][0]
    assert (worst["feature"], worst["layer"]) == ("layer_energy", 8) and worst["ratio"] > 10
    assert plain["per_layer"]["separation_power.layer_energy"]["value"][8] < layer["value"][8] / 5


def test_missing_small_deposits_are_seen_by_the_separation_power_and_the_voxel_classifier(fixed_energy):
    reference, (energies, showers) = fixed_energy
    thinned = drop_small_deposits(showers, 0.05)
    assert 0.02 < 1 - (thinned > 0).sum() / (showers > 0).sum() < 0.06  # a few per cent of the voxels
    groups = ("separation", "classifier-voxel")
    plain = validate((energies, showers), reference, GEOMETRY, groups)["metrics"]
    distorted = validate((energies, thinned), reference, GEOMETRY, groups)["metrics"]
    assert abs(pull(plain["separation_power.voxel_energy"])) < 3
    assert pull(distorted["separation_power.voxel_energy"]) > 20
    assert abs(pull(plain["classifier_auc.voxel"])) < 3
    assert pull(distorted["classifier_auc.voxel"]) > 3 and distorted["classifier_auc.voxel"]["value"] > 0.55
    assert distorted["classifier_auc.voxel"]["converged"]


def test_results_are_deterministic(reference, other_seed):
    run = [validate(other_seed, reference, GEOMETRY, ("separation", "wasserstein", "classifier-voxel"), n_max=600)
           for _ in range(2)]
    assert run[0]["metrics"] == run[1]["metrics"] and run[0]["per_layer"] == run[1]["per_layer"]


def test_an_energy_scale_is_detected_and_grows_with_the_distortion(reference, other_seed):
    energies, showers = other_seed
    groups = ("separation", "energy-bins", "classifier")
    factors = (1.0, 1.02, 1.05, 1.1)
    results = [validate((energies, scale_energy(showers, f)), reference, GEOMETRY, groups, n_bootstrap=3)
               for f in factors]
    sp = [r["metrics"]["separation_power.e_ratio"]["value"] for r in results]
    auc = [r["metrics"]["classifier_auc.high_level"]["value"] for r in results]
    fom = [quick_figure_of_merit((energies, scale_energy(showers, f)), reference, GEOMETRY) for f in factors]
    assert sp == sorted(sp) and auc == sorted(auc) and fom == sorted(fom)
    baseline = results[0]["metrics"]["separation_power.e_ratio"]["reference"]
    assert sp[2] > baseline and sp[3] > 2 * baseline
    assert auc[0] < 0.55 < auc[2] < auc[3]
    # The response table sees the 5 % scale in every energy bin; the relative resolution does not change.
    for unscaled, scaled in zip(results[0]["energy_bins"], results[2]["energy_bins"]):
        assert scaled["response_ratio"] / unscaled["response_ratio"] == pytest.approx(1.05, abs=2e-3)
        assert scaled["resolution_ratio"] == pytest.approx(unscaled["resolution_ratio"], abs=0.01)
    deviation = [r["metrics"]["energy_bins.max_response_deviation"]["value"] for r in results]
    assert deviation == sorted(deviation) and deviation[2] > 0.05


def test_broader_showers_are_detected_and_grow_with_the_distortion(reference, other_seed):
    energies, showers = other_seed
    groups = ("separation", "fpd", "classifier")
    results = [
        validate((energies, broaden(showers, GEOMETRY, f)), reference, GEOMETRY, groups, n_bootstrap=5)
        for f in (0.0, 0.05, 0.15, 0.3)
    ]
    for key in ("separation_power.width_x", "separation_power.width_r", "fpd", "classifier_auc.high_level"):
        series = [r["metrics"][key]["value"] for r in results]
        assert series == sorted(series), key
    width_x, baseline = values(results[2], "separation_power.width_x")
    assert width_x > 5 * baseline
    assert results[2]["metrics"]["classifier_auc.high_level"]["value"] > 0.8
    # Broadening moves energy outward without changing its sum.
    assert abs(pull(results[3]["metrics"]["separation_power.e_ratio"])) < 3


def test_quick_figure_of_merit_reuses_precomputed_reference_features(reference, other_seed):
    features = compute_features(reference, GEOMETRY)
    direct = quick_figure_of_merit(other_seed, reference, GEOMETRY)
    assert quick_figure_of_merit(other_seed, features, GEOMETRY) == direct
    assert 0.0 < direct < 0.05


# ----------------------------------------------------------------------------- inputs


def test_files_are_read_with_the_geometry_beside_them(tmp_path, reference, other_seed):
    ref = write_h5(tmp_path / "ref.h5", *reference)
    gen = write_h5(tmp_path / "gen.h5", *other_seed)
    from_files = validate(gen, ref, groups=("separation",), n_max=1000)
    from_arrays = validate(
        (other_seed[0][:1000], other_seed[1][:1000]), (reference[0][:1000], reference[1][:1000]), GEOMETRY,
        groups=("separation",),
    )
    assert from_files["geometry"] == {"n_layers": 12, "n_voxels": 576}
    assert from_files["metrics"] == from_arrays["metrics"]
    assert from_files["generated"] == {"source": str(gen), "n_showers": 1000}


def test_files_on_different_geometries_are_an_error(tmp_path, reference):
    other = small_geometry(n_layers=10)
    energies, showers = simulate(200, ENERGIES, seed=3, geometry=other)
    gen = write_h5(tmp_path / "gen.h5", energies, showers, other)
    ref = write_h5(tmp_path / "ref.h5", *reference)
    with pytest.raises(DataError, match="geometries disagree"):
        validate(gen, ref, groups=("separation",))
    with pytest.raises(DataError, match="480 voxels"):
        validate((energies, showers), reference, GEOMETRY, groups=("separation",))


@pytest.mark.parametrize("energy", ["10GeV:1TeV", "1GeV:10GeV", "50GeV"])
def test_different_energy_ranges_are_an_error(reference, energy):
    generated = simulate(300, energy, seed=4, geometry=GEOMETRY)
    with pytest.raises(DataError, match="energies span .* not comparable"):
        validate(generated, reference, GEOMETRY, groups=("separation",))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"groups": ("separation", "chi2")}, "groups: expected some of"),
        ({"groups": ()}, "groups: expected some of"),
        ({"n_max": 0}, "n_max: expected a positive number"),
        ({"n_max": 80, "groups": ("classifier",)}, "classifier tests need at least 50"),
    ],
)
def test_bad_options_are_clear_errors(reference, kwargs, match):
    with pytest.raises(DataError, match=match):
        validate(reference, reference, GEOMETRY, **kwargs)


# ----------------------------------------------------------------------------- the report folder


def test_report_folder_holds_strict_json_markdown_and_plots(tmp_path, reference, other_seed):
    out = tmp_path / "report"
    energies, showers = other_seed
    result = write_report((energies[:800], scale_energy(showers[:800], 1.05)), reference, out, GEOMETRY, n_max=1600,
                          kpd_batch_size=500)
    on_disk = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert on_disk == result
    # 1600 reference showers, twice the generated: the last 800 are the floor sample.
    assert on_disk["generated"]["n_showers"] == 800 and on_disk["reference"]["n_showers"] == 800
    assert on_disk["floor"]["method"] == "split" and on_disk["floor"]["rows"] == [800, 1600]
    report = (out / "report.md").read_text()
    assert "| separation_power.e_ratio |" in report and "| E_inc [GeV] |" in report
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted([
        "response_resolution.png", "longitudinal_profile.png", "radial_profile.png", "shapes.png",
        "layer_energies.png", "voxel_energy.png", "separation_power_per_layer.png",
    ])
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def h5_pair(tmp_path_factory, reference, other_seed):
    folder = tmp_path_factory.mktemp("cli")
    return write_h5(folder / "gen.h5", *other_seed), write_h5(folder / "ref.h5", *reference)


def test_cli_validate_prints_json_and_writes_the_report(run_fastsim, h5_pair, tmp_path):
    gen, ref = h5_pair
    out = tmp_path / "rep"
    proc = run_fastsim("validate", gen, ref, "-o", out, "-n", "1000", "--metrics", "separation,energy-bins",
                       "--no-plots", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["groups"] == ["separation", "energy-bins"]
    assert doc["reference"]["n_showers"] == 1000
    assert json.loads((out / "metrics.json").read_text()) == doc
    assert not list(out.glob("*.png"))


def test_cli_validate_prints_a_table(run_fastsim, h5_pair, tmp_path):
    gen, ref = h5_pair
    proc = run_fastsim("validate", gen, ref, "-o", tmp_path / "rep", "-n", "600", "--metrics", "separation",
                       "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("| metric | generated vs reference | floor (same sizes) | value / floor |")
    assert "| separation_power.width_x |" in proc.stdout


def test_cli_validate_with_a_floor_reference_reports_progress_and_the_method(run_fastsim, h5_pair, tmp_path):
    gen, ref = h5_pair
    floor = write_h5(tmp_path / "floor.h5", *simulate(700, ENERGIES, seed=9, geometry=GEOMETRY))
    out = tmp_path / "rep"
    proc = run_fastsim("validate", gen, ref, "-o", f"{out}/", "-n", "600", "--metrics", "separation,energy-bins",
                       "--floor-reference", floor, "--bootstrap", "5", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["floor"]["method"] == "independent" and doc["floor"]["source"] == str(floor)
    assert doc["floor"]["n_bootstrap"] == 5
    assert "| independent |" in proc.stdout and "| feature | layer |" in proc.stdout
    stages = [line for line in proc.stderr.splitlines() if line.startswith("validate: ")]
    assert [line.split(":")[1].strip() for line in stages if line.endswith(" s")] == [
        "features", "separation", "energy-bins"]
    assert f"report written to {out}/ (" in proc.stderr and "//" not in proc.stderr
    quiet = run_fastsim("validate", gen, ref, "-o", out, "-n", "600", "--metrics", "energy-bins", "--no-plots", "-q")
    assert quiet.returncode == 0 and "validate: " not in quiet.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "chi2"], "groups: expected some of"),
        (["--geometry", "__other_xml__"], "has 576 voxels per shower, the geometry has 480"),
        (["-n", "60"], "classifier tests need at least 50"),
    ],
)
def test_cli_validate_bad_input_is_one_line_and_exit_2(run_fastsim, h5_pair, tmp_path, args, message):
    gen, ref = h5_pair
    small_geometry(n_layers=10).to_xml(tmp_path / "other.xml")
    args = [str(tmp_path / "other.xml") if a == "__other_xml__" else a for a in args]
    proc = run_fastsim("validate", gen, ref, "-o", tmp_path / "rep", *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastsim: error:") and message in lines[0]
    assert not (tmp_path / "rep" / "metrics.json").exists()


def test_cli_validate_without_matplotlib_says_how_to_install_it(h5_pair, tmp_path):
    gen, ref = h5_pair
    # A real subprocess in which `import matplotlib` fails, as in an install without the plots extra.
    code = ("import sys; sys.modules['matplotlib'] = None; from fastsim.cli import main; "
            f"main(['validate', {str(gen)!r}, {str(ref)!r}, '-o', {str(tmp_path / 'rep')!r}, '-n', '200', "
            "'--metrics', 'separation'])")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "pip install 'fastsim[plots]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "rep").exists()
