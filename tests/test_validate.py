"""The validation protocol: known answers, sensitivity to distortions, the report folder and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from fastsim.errors import DataError
from fastsim.features import compute_features
from fastsim.validate import ALL_GROUPS, quick_figure_of_merit, validate, write_report
from helpers import cli_env
from helpers.distortions import broaden, scale_energy, small_geometry
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


# ----------------------------------------------------------------------------- known answers


def test_identical_samples_score_perfectly(reference):
    result = validate(reference, reference, GEOMETRY, kpd_batch_size=1000)
    assert set(result["groups"]) == set(ALL_GROUPS)
    for key, entry in result["metrics"].items():
        if key.startswith(("separation_power.", "wasserstein.", "energy_bins.")):
            assert entry["value"] == 0.0, key
    # Bootstrap batches of one pool: FPD and KPD are zero within their errors.
    fpd, fpd_ref = values(result, "fpd")
    assert fpd < 0.2 * fpd_ref
    kpd = result["metrics"]["kpd"]
    assert abs(kpd["value"]) <= 3 * kpd["error"] + 1e-6
    for key in ("classifier_auc.high_level", "classifier_auc.voxel"):
        assert abs(result["metrics"][key]["value"] - 0.5) < 0.05, key
    assert quick_figure_of_merit(reference, reference, GEOMETRY) == 0.0
    # The per-energy-bin table compares each bin with itself.
    for row in result["energy_bins"]:
        assert row["response_ratio"] == row["resolution_ratio"] == 1.0
        assert row["n_reference"] == row["n_generated"] > 200


def test_samples_from_the_same_simulator_score_like_the_reference_split(reference, other_seed):
    result = validate(other_seed, reference, GEOMETRY, kpd_batch_size=1000)
    # The reference column is computed on halves: its finite-sample floor is about
    # twice that of the full-size comparison, so a perfect surrogate stays below it.
    for key, entry in result["metrics"].items():
        if key.startswith(("separation_power.", "wasserstein.")):
            assert 0.0 < entry["value"] < 1.5 * entry["reference"] + 1e-4, key
    fpd, fpd_ref = values(result, "fpd")
    assert fpd < 1.5 * fpd_ref
    kpd = result["metrics"]["kpd"]
    assert kpd["value"] < 3 * kpd["error"] + 1e-5
    for key in ("classifier_auc.high_level", "classifier_auc.voxel"):
        value, baseline = values(result, key)
        assert abs(value - 0.5) < 0.06 and abs(baseline - 0.5) < 0.06, key
    for row in result["energy_bins"]:
        error = np.hypot(row["response_error_reference"], row["response_error_generated"]) / row["response_reference"]
        assert abs(row["response_ratio"] - 1.0) < 4 * error
        assert row["resolution_ratio"] == pytest.approx(1.0, abs=0.25)


def test_an_energy_scale_is_detected_and_grows_with_the_distortion(reference, other_seed):
    energies, showers = other_seed
    groups = ("separation", "energy-bins", "classifier")
    factors = (1.0, 1.02, 1.05, 1.1)
    results = [validate((energies, scale_energy(showers, f)), reference, GEOMETRY, groups) for f in factors]
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
        validate((energies, broaden(showers, GEOMETRY, f)), reference, GEOMETRY, groups) for f in (0.0, 0.05, 0.15, 0.3)
    ]
    for key in ("separation_power.width_x", "separation_power.width_r", "fpd", "classifier_auc.high_level"):
        series = [r["metrics"][key]["value"] for r in results]
        assert series == sorted(series), key
    width_x, baseline = values(results[2], "separation_power.width_x")
    assert width_x > 5 * baseline
    assert results[2]["metrics"]["classifier_auc.high_level"]["value"] > 0.8
    # Broadening moves energy outward without changing its sum.
    e_ratio, e_ratio_ref = values(results[3], "separation_power.e_ratio")
    assert e_ratio < 1.5 * e_ratio_ref


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
    assert on_disk["generated"]["n_showers"] == 800 and on_disk["reference"]["n_showers"] == 1600
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
    assert proc.stdout.startswith("| metric | generated vs reference | reference vs reference |")
    assert "| separation_power.width_x |" in proc.stdout


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
