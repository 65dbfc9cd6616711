"""Several conditions by name, with units: angles, periodic wrap, spec format 1.1, CLI flags and output datasets."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

import fastsim
from fastsim.conditions import Constant, Range, parse_condition, parse_quantity, plan_conditions, wrap
from fastsim.errors import ConditionError, OutputError, SpecError
from fastsim.io import partial_progress
from fastsim.models import bundled_models
from fastsim.spec import FORMAT, FORMAT_PERIODIC, SPEC_KEY, ConditionSpec, ModelSpec, read_metadata, read_spec
from helpers.decoders import ENERGY_CONDITION, INCLINED_CONDITIONS, PHI_CONDITION, make_decoder, make_spec

PI = math.pi
THETA_MAX = 1.0471975511965976  # 60 deg
N = 64


@pytest.fixture(scope="module")
def inclined_model(tmp_path_factory):
    """A toy decoder with incident_energy (MeV), incident_theta (rad, 0-60 deg), incident_phi (rad, periodic)."""
    return make_decoder(tmp_path_factory.mktemp("models") / "inclined.onnx", conditions=INCLINED_CONDITIONS)


@pytest.fixture(scope="module")
def gen(inclined_model):
    return fastsim.load(inclined_model, device="cpu", threads=1)


# --- units -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "unit", "expected"), [
    ("30deg", "rad", PI / 6),
    ("30 deg", "rad", PI / 6),
    ("0.5rad", "rad", 0.5),
    ("0.5", "rad", 0.5),  # a bare number is in the condition's unit
    ("pi", "rad", PI),
    ("2pi", "rad", 2 * PI),
    ("2*pi", "rad", 2 * PI),
    ("0.5pi", "rad", PI / 2),
    ("pi/3", "rad", PI / 3),
    ("2pi/3", "rad", 2 * PI / 3),
    ("-pi", "rad", -PI),
    ("60", "deg", 60.0),
    ("pi/2", "deg", 90.0),
    ("1rad", "deg", 180 / PI),
    ("50GeV", "MeV", 50_000.0),  # energies as before
    ("2TeV", "GeV", 2_000.0),
])
def test_quantities_in_angle_and_energy_units(text, unit, expected):
    assert parse_quantity(text, unit, argument="x") == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(("text", "unit", "accepted"), [
    ("10GeV", "rad", "rad, deg or multiples of pi"),
    ("30 furlongs", "rad", "rad, deg or multiples of pi"),
    ("pi/0", "rad", "rad, deg or multiples of pi"),
    ("pipi", "rad", "rad, deg or multiples of pi"),
    ("30deg", "MeV", "MeV, GeV, TeV"),
    ("pi", "MeV", "MeV, GeV, TeV"),
])
def test_a_wrong_unit_names_the_condition_and_the_accepted_units(text, unit, accepted):
    with pytest.raises(ConditionError, match=f"^incident_theta: expected a number with an optional unit "
                                             f"\\({accepted}.*got '{text}'"):
        parse_quantity(text, unit, argument="incident_theta")


@pytest.mark.parametrize(("text", "lo", "hi"), [
    ("0deg:60deg", 0.0, THETA_MAX),
    ("0:2pi", 0.0, 2 * PI),
    ("-pi:pi", -PI, PI),
    ("pi/6:0.25pi", PI / 6, PI / 4),
])
def test_angle_ranges(text, lo, hi):
    parsed = parse_condition(text, "rad", argument="incident_phi")
    assert isinstance(parsed, Range)
    assert (parsed.lo, parsed.hi) == (pytest.approx(lo, rel=1e-15, abs=0), pytest.approx(hi, rel=1e-15, abs=0))


# --- periodic wrap ---------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (0.0, 0.0),
    (PI, PI),
    (-PI / 2, 3 * PI / 2),
    (7 * PI / 2, 3 * PI / 2),
    (2 * PI, 0.0),  # the period's end is its start
    (-4 * PI, 0.0),
])
def test_constants_of_a_periodic_condition_are_wrapped(value, expected):
    spec = make_spec(conditions=INCLINED_CONDITIONS)
    plan = plan_conditions(spec, {"incident_phi": value}, 4)
    assert plan.sources[2] == Constant(pytest.approx(expected, abs=1e-12))
    assert wrap(PHI_CONDITION, value) == pytest.approx(expected, abs=1e-12)
    assert wrap(ENERGY_CONDITION, -5.0) == -5.0  # not periodic: unchanged


def test_arrays_of_a_periodic_condition_are_wrapped(gen):
    phi = np.array([-PI / 2, 0.25, 2 * PI + 0.5, -2 * PI, 9.0])
    conditions, _ = gen.generate(conditions={"incident_phi": phi}, seed=1)
    expected = np.array([3 * PI / 2, 0.25, 0.5, 0.0, 9.0 - 2 * PI], dtype=np.float32)
    np.testing.assert_allclose(conditions[:, 2], expected, rtol=1e-6)


def test_a_range_across_the_seam_is_sampled_then_wrapped(gen):
    conditions, _ = gen.generate(2000, {"incident_phi": "-pi/2:pi/2"}, seed=2)
    phi = conditions[:, 2].astype(np.float64)
    assert phi.min() >= 0 and phi.max() <= 2 * PI
    low, high = phi <= PI / 2 + 1e-6, phi >= 3 * PI / 2 - 1e-6
    assert (low | high).all()  # nothing in the half circle the range leaves out
    assert 0.45 < low.mean() < 0.55  # uniform in the given interval: half each side of the seam
    # The same uniforms as a range that does not cross: shifted by pi/2, then wrapped.
    plain, _ = gen.generate(2000, {"incident_phi": "0:pi"}, seed=2)
    np.testing.assert_allclose(wrap(PHI_CONDITION, plain[:, 2] - PI / 2), phi, atol=2e-6)


@pytest.mark.parametrize("text", ["0:3pi", "-pi:1.01pi", "-10:10"])
def test_a_range_longer_than_one_period_is_refused(gen, text):
    with pytest.raises(ConditionError, match="^incident_phi: a range of a periodic condition must be at most one "
                                             "period"):
        gen.plan(10, {"incident_phi": text})


def test_a_seam_crossing_range_outside_a_partial_training_range_is_refused():
    half = ConditionSpec("incident_phi", "rad", 0.0, PI, "uniform", period=2 * PI)
    spec = make_spec(conditions=[ENERGY_CONDITION, half])
    assert plan_conditions(spec, {"incident_phi": "-2pi:-1.5pi"}, 4).sources[1] == Range(-2 * PI, -1.5 * PI)
    with pytest.raises(ConditionError, match="incident_phi: values span .* outside the model's training range"):
        plan_conditions(spec, {"incident_phi": "-0.1:0.1"}, 4)


# --- spec format 1.1 -------------------------------------------------------------------------

def test_a_periodic_spec_is_format_1_1_and_round_trips():
    spec = make_spec(conditions=INCLINED_CONDITIONS)
    assert spec.format == FORMAT_PERIODIC == "fastsim-decoder/1.1"
    doc = json.loads(spec.to_json())
    assert [c.get("period") for c in doc["conditions"]] == [None, None, 2 * PI]
    assert "period" not in doc["conditions"][0] and "period" not in doc["conditions"][1]
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()
    assert again.condition("incident_phi").period == 2 * PI


def test_a_one_condition_spec_is_unchanged_format_1():
    doc = json.loads(make_spec().to_json())
    assert doc["format"] == FORMAT == "fastsim-decoder/1"
    assert doc["conditions"] == [{"name": "incident_energy", "unit": "MeV", "min": 1_000.0, "max": 1_000_000.0,
                                  "sampling": "log-uniform"}]
    # Non-periodic angles need no new format either.
    assert make_spec(conditions=INCLINED_CONDITIONS[:2]).format == FORMAT


@pytest.mark.skipif(not bundled_models(), reason="no bundled model installed")
def test_the_bundled_models_spec_is_byte_identical_after_a_round_trip():
    path = next(m.path for m in bundled_models() if m.name == "calo-electron")  # the default, format 1
    text = read_metadata(path)[SPEC_KEY]
    assert read_spec(path).format == FORMAT and read_spec(path).to_json() == text


def _doc(**phi):
    doc = json.loads(make_spec(conditions=INCLINED_CONDITIONS).to_json())
    doc["conditions"][2].update(phi)
    return doc


@pytest.mark.parametrize(("change", "message"), [
    ({"format": "fastsim-decoder/1"},
     r"format must be 'fastsim-decoder/1.1' for periodic conditions \['incident_phi'\]"),
    ({"format": "fastsim-decoder/2"},
     r"format must be one of \['fastsim-decoder/1', 'fastsim-decoder/1.1', 'fastsim-decoder/1.2'\]"),
    ({"phi": {"period": 0}}, r"conditions\['incident_phi'\].period must be a finite number > 0, got 0"),
    ({"phi": {"period": -6.0}}, r"period must be a finite number > 0, got -6"),
    ({"phi": {"period": "2pi"}}, r"conditions\[2\].period must be a finite number, got '2pi'"),
    ({"phi": {"period": 3.0}}, r"period must be >= max - min = 6.28318530717958.*, got 3"),
    ({"phi": {"sampling": "log-uniform", "min": 0.1}}, r"sampling must be 'uniform' for a periodic condition"),
])
def test_bad_periodic_specs_are_refused(change, message):
    doc = _doc(**change.pop("phi", {}))
    doc.update(change)
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_dict(doc)


def test_format_1_1_without_a_periodic_condition_is_accepted_and_a_missing_format_is_inferred():
    doc = json.loads(make_spec().to_json())
    assert ModelSpec.from_dict({**doc, "format": FORMAT_PERIODIC}).format == FORMAT_PERIODIC
    periodic = _doc()
    del periodic["format"]
    assert ModelSpec.from_dict(periodic).format == FORMAT_PERIODIC


# --- the API ---------------------------------------------------------------------------------

def test_three_conditions_through_the_api(gen):
    conditions, showers = gen.generate(N, {"incident_energy": "50GeV", "incident_theta": "30deg",
                                           "incident_phi": "-pi/2"}, seed=5)
    expected = np.array([50_000.0, PI / 6, 3 * PI / 2], dtype=np.float32)
    assert conditions.shape == (N, 3) and (conditions == expected).all()
    assert showers.shape == (N, 24) and (showers >= 0).all()
    # The toy decoder deposits 0.95 of the energy (voxels under 1 keV dropped).
    np.testing.assert_allclose(showers.sum(axis=1), 0.95 * 50_000, rtol=1e-3)
    again, same = gen.generate(N, {"incident_energy": 50_000, "incident_theta": PI / 6, "incident_phi": 1.5 * PI},
                               seed=5)
    assert np.array_equal(again, conditions) and np.array_equal(same, showers)
    _, other = gen.generate(N, {"incident_energy": 50_000, "incident_theta": PI / 6, "incident_phi": 1.5 * PI},
                            seed=6)
    assert not np.array_equal(other, showers)


def test_conditions_not_given_are_sampled_over_the_training_range(gen):
    conditions, _ = gen.generate(2000, {"incident_energy": "50GeV"}, seed=3)
    theta, phi = conditions[:, 1], conditions[:, 2]
    assert 0 <= theta.min() < 0.05 and THETA_MAX - 0.05 < theta.max() <= np.float32(THETA_MAX)
    assert 0 <= phi.min() < 0.05 and 2 * PI - 0.05 < phi.max() <= np.float32(2 * PI)
    assert abs(theta.mean() - THETA_MAX / 2) < 0.03 and abs(phi.mean() - PI) < 0.15  # uniform


def test_hdf5_and_npz_store_each_condition_by_name_and_npy_refuses(gen, tmp_path):
    gen.write(tmp_path / "o.h5", N, {"incident_theta": "0deg:60deg", "incident_phi": "-pi:pi"}, seed=4)
    conditions, showers = gen.generate(N, {"incident_theta": "0deg:60deg", "incident_phi": "-pi:pi"}, seed=4)
    with h5py.File(tmp_path / "o.h5") as fh:
        assert {k: (fh[k].shape, fh[k].dtype.str) for k in fh} == {
            "incident_energies": ((N, 1), "<f4"), "incident_theta": ((N, 1), "<f8"),
            "incident_phi": ((N, 1), "<f8"), "conditions": ((N, 3), "<f4"), "showers": ((N, 24), "<f4")}
        assert np.array_equal(fh["incident_energies"][:, 0], conditions[:, 0])
        assert np.array_equal(fh["incident_theta"][:, 0], conditions[:, 1].astype(np.float64))
        assert np.array_equal(fh["incident_phi"][:, 0], conditions[:, 2].astype(np.float64))
        assert np.array_equal(fh["showers"][...], showers)
        assert fh["incident_phi"][...].min() >= 0 and fh["incident_phi"][...].max() <= np.float32(2 * PI)
    gen.write(tmp_path / "o.npz", N, {"incident_theta": "0deg:60deg", "incident_phi": "-pi:pi"}, seed=4)
    with np.load(tmp_path / "o.npz") as archive:
        assert sorted(archive.files) == ["conditions", "incident_energies", "incident_phi", "incident_theta",
                                         "showers"]
        assert archive["incident_theta"].shape == (N, 1) and archive["incident_theta"].dtype == np.float64
        assert np.array_equal(archive["incident_phi"][:, 0], conditions[:, 2].astype(np.float64))
    with pytest.raises(OutputError, match=r"a \.npy file holds the showers and energies only, but the model has "
                                          r"conditions \['incident_energy', 'incident_theta', 'incident_phi'\]"):
        gen.write(tmp_path / "o.npy", N, seed=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5", "o.npz"]


def test_resume_with_three_conditions_is_bitwise_identical(gen, tmp_path):
    args = {"conditions": {"incident_theta": "0:pi/3", "incident_phi": "-pi:pi"}, "seed": 8}
    gen.write(tmp_path / "whole.h5", 2500, **args)
    path = tmp_path / "r.h5"
    original = gen._decoded

    def interrupted(*a, **kw):  # a Ctrl-C after the first session run, as in test_io
        for i, run in enumerate(original(*a, **kw)):
            if i == 1:
                raise KeyboardInterrupt
            yield run

    gen._decoded = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            gen.write(path, 2500, batch_size=256, **args)
    finally:
        del gen._decoded
    assert partial_progress(path) == 1024
    assert gen.write(path, 2500, resume=True, **args)["resumed_from"] == 1024
    with h5py.File(path) as done, h5py.File(tmp_path / "whole.h5") as whole:
        for key in ("incident_energies", "incident_theta", "incident_phi", "conditions", "showers"):
            assert np.array_equal(done[key][...], whole[key][...]), key


# --- the CLI ---------------------------------------------------------------------------------

def test_cli_constants_and_ranges_land_in_the_file_wrapped(run_fastsim, inclined_model, tmp_path):
    out = tmp_path / "c.h5"
    result = run_fastsim("generate", "--model", inclined_model, "--energy", "50GeV", "--theta", "30deg",
                         "--phi", "-pi/2", "-n", N, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as fh:
        assert fh["incident_theta"].shape == (N, 1) and fh["incident_phi"].shape == (N, 1)
        assert (fh["incident_energies"][...] == np.float32(50_000)).all()
        assert (fh["incident_theta"][...] == float(np.float32(PI / 6))).all()
        assert (fh["incident_phi"][...] == float(np.float32(1.5 * PI))).all()
    ranged = tmp_path / "r.h5"
    result = run_fastsim("generate", "--model", inclined_model, "--energy", "10GeV:1TeV", "--theta", "0deg:60deg",
                         "--condition", "incident_phi=-pi:pi", "-n", 500, "-o", ranged, "--seed", 3, "-q")
    assert result.returncode == 0, result.stderr
    with h5py.File(ranged) as fh:
        energy, theta, phi = (fh[k][:, 0] for k in ("incident_energies", "incident_theta", "incident_phi"))
        showers = fh["showers"][...]
    assert energy.min() >= 10_000 and energy.max() <= 1_000_000
    assert theta.min() >= 0 and theta.max() <= np.float32(THETA_MAX) and theta.max() > 0.9
    assert phi.min() >= 0 and phi.max() <= np.float32(2 * PI) and phi.min() < 0.1 and phi.max() > 6.1
    api, api_showers = fastsim.load(inclined_model, device="cpu", threads=1).generate(
        500, {"incident_energy": "10GeV:1TeV", "incident_theta": "0deg:60deg", "incident_phi": "-pi:pi"}, seed=3)
    assert np.array_equal(theta, api[:, 1]) and np.array_equal(showers, api_showers)


def test_cli_reproduces_a_reference_files_conditions(run_fastsim, inclined_model, tmp_path):
    reference = tmp_path / "ref.h5"
    assert run_fastsim("generate", "--model", inclined_model, "-n", 300, "-o", reference, "--seed", 9,
                       "-q").returncode == 0
    again = tmp_path / "again.h5"
    result = run_fastsim("generate", "--model", inclined_model, "--energy", reference, "--theta", reference,
                         "--phi", reference, "-o", again, "--seed", 9, "-q")
    assert result.returncode == 0, result.stderr
    with h5py.File(reference) as ref, h5py.File(again) as new:
        for key in ("incident_energies", "incident_theta", "incident_phi", "conditions", "showers"):
            assert np.array_equal(ref[key][...], new[key][...]), key


@pytest.mark.parametrize(("args", "message"), [
    (["--theta", "10GeV"], "--theta: incident_theta: expected a number with an optional unit (rad, deg or "
                           "multiples of pi"),
    (["--theta", "70deg"], "--theta: incident_theta: values span [1.22173, 1.22173] rad, outside the model's "
                           "training range [0, 1.0472] rad"),
    (["--phi", "0:3pi"], "--phi: incident_phi: a range of a periodic condition must be at most one period"),
    (["--condition", "incident_theta"], "Invalid value for '--condition': expected NAME=VALUE"),
    (["--condition", "incident_psi=1"], "Invalid value for '--condition incident_psi': the model has no condition "
                                        "'incident_psi'; its conditions are ['incident_energy', 'incident_theta', "
                                        "'incident_phi']"),
    (["--theta", "1", "--condition", "incident_theta=1"], "Invalid value for '--condition incident_theta': "
                                                          "condition 'incident_theta' is already set by --theta"),
])
def test_cli_condition_errors_name_the_flag(run_fastsim, inclined_model, tmp_path, args, message):
    result = run_fastsim("generate", "--model", inclined_model, "-n", 10, "-o", tmp_path / "x.h5", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("fastsim: error: ") and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--theta", "--phi"])
def test_cli_a_flag_for_a_condition_the_model_lacks(run_fastsim, toy_model, tmp_path, flag):
    result = run_fastsim("generate", "--model", toy_model, "-n", 10, "-o", tmp_path / "x.h5", flag, "0.1")
    assert result.returncode == 2
    assert f"Invalid value for '{flag}': the model has no condition" in result.stderr
    assert "its conditions are ['incident_energy']" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_extrapolation_of_theta_warns(run_fastsim, inclined_model, tmp_path):
    out = tmp_path / "x.h5"
    result = run_fastsim("generate", "--model", inclined_model, "-n", 10, "-o", out, "--theta", "70deg",
                         "--allow-extrapolation", "-q")
    assert result.returncode == 0, result.stderr
    assert "fastsim: warning: incident_theta: values span [1.22173, 1.22173] rad" in result.stderr
    with h5py.File(out) as fh:
        np.testing.assert_allclose(fh["incident_theta"][...], np.radians(70), rtol=1e-7)


def test_cli_shards_take_the_condition_flags(run_fastsim, inclined_model, tmp_path):
    out = tmp_path / "shards"
    result = run_fastsim("generate", "--model", inclined_model, "-n", 2048, "--shards", 2, "-o", out,
                         "--theta", "pi/6", "--phi", "7pi/2", "-q")
    assert result.returncode == 0, result.stderr
    for name in ("shard-00000.h5", "shard-00001.h5"):
        with h5py.File(out / name) as fh:
            assert fh["incident_theta"].shape == (1024, 1)
            assert (fh["incident_theta"][...] == float(np.float32(PI / 6))).all()
            assert (fh["incident_phi"][...] == float(np.float32(1.5 * PI))).all()
    bad = run_fastsim("generate", "--model", inclined_model, "-n", 2048, "--shards", 2, "-o", tmp_path / "bad",
                      "--theta", "2rad")
    assert bad.returncode == 2 and "--theta: incident_theta: values span [2, 2] rad" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_cli_info_shows_units_ranges_laws_and_periods(run_fastsim, inclined_model):
    result = run_fastsim("info", inclined_model)
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("condition")]
    assert lines == [
        "condition   incident_energy [1000, 1e+06] MeV, log-uniform",
        "condition   incident_theta [0, 1.0472] rad, uniform",
        "condition   incident_phi [0, 6.28319] rad, uniform, periodic (period 6.28319 rad)",
    ]
    assert "format      fastsim-decoder/1.1" in result.stdout


@pytest.mark.parametrize("fmt", ["hits", "root"])
def test_hep_formats_hold_every_condition(tmp_path, fmt):
    from fastsim.formats import write_hep
    from fastsim.geometry import CylindricalGeometry, Layer

    if fmt == "root":
        pytest.importorskip("uproot")
    geometry = CylindricalGeometry((Layer((0.0, 2.0, 5.0), 2), Layer((0.0, 4.0, 8.0), 2)), layer_thickness_mm=3.0)
    path = make_decoder(tmp_path / "geo.onnx", n_voxels=geometry.n_voxels, conditions=INCLINED_CONDITIONS,
                        geometry=geometry.to_dict())
    gen = fastsim.load(path, device="cpu", threads=1)
    asked = {"incident_energy": "20GeV", "incident_theta": "0:pi/3", "incident_phi": "-pi:pi"}
    conditions, _ = gen.generate(N, asked, seed=2)
    out = tmp_path / ("o.hits.h5" if fmt == "hits" else "o.root")
    write_hep(gen, out, N, asked, fmt=fmt, seed=2)
    if fmt == "hits":
        with h5py.File(out) as fh:
            events = fh["events"]
            assert events["incident_theta"].shape == (N, 1) and events["incident_theta"].attrs["unit"] == "rad"
            assert np.array_equal(events["incident_theta"][:, 0], conditions[:, 1].astype(np.float64))
            assert np.array_equal(events["incident_phi"][:, 0], conditions[:, 2].astype(np.float64))
            assert np.array_equal(events["incident_energies"][:, 0], conditions[:, 0])
    else:
        import uproot

        with uproot.open(out) as root:
            tree = root["showers"]
            for j, name in enumerate(("incident_energy", "incident_theta", "incident_phi")):
                assert np.array_equal(tree[name].array(library="np"), conditions[:, j].astype(np.float64)), name
