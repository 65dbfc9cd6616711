"""A categorical condition (the particle type): spec format 1.2, labels or PDG ids, equal draws, CLI --particle."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import fastsim
from fastsim.conditions import Choice, Constant, Range, Values, parse_category, plan_conditions
from fastsim.errors import ConditionError, SpecError
from fastsim.spec import FORMAT_CATEGORICAL, FORMAT_PERIODIC, ConditionSpec, ModelSpec, read_spec
from helpers.decoders import ENERGY_CONDITION, PHI_CONDITION, make_decoder, make_spec

PARTICLE = ConditionSpec("particle", "pdg", 11.0, 22.0, "categorical", categories=(("electron", 11), ("photon", 22)))
N = 64


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory):
    """A toy decoder with incident_energy and particle (electron 11, photon 22)."""
    return make_decoder(tmp_path_factory.mktemp("models") / "mixed.onnx", conditions=(ENERGY_CONDITION, PARTICLE))


@pytest.fixture(scope="module")
def gen(mixed_model):
    return fastsim.load(mixed_model, device="cpu", threads=1)


# --- the spec --------------------------------------------------------------------------------

def test_a_spec_with_categories_says_format_1_2_and_round_trips(mixed_model):
    spec = read_spec(mixed_model)
    assert spec.format == FORMAT_CATEGORICAL == "fastsim-decoder/1.2"
    particle = spec.condition("particle")
    assert particle.categories == (("electron", 11.0), ("photon", 22.0)) and particle.codes == (11.0, 22.0)
    assert particle.to_dict()["categories"] == {"electron": 11.0, "photon": 22.0}
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert particle.code_of(" Photon ") == 22.0 and particle.code_of("pion") is None
    assert particle.label_of(11.0) == "electron" and particle.label_of(211.0) == "211"
    # A periodic and a categorical condition together: 1.2 holds both.
    both = make_spec(conditions=(ENERGY_CONDITION, PHI_CONDITION.__class__.from_dict(
        {**PHI_CONDITION.to_dict(), "period": PHI_CONDITION.period}), PARTICLE))
    assert both.format == FORMAT_CATEGORICAL


@pytest.mark.parametrize(("block", "message"), [
    ({"categories": {"electron": 11}}, "categories must be at least two categories"),
    ({"categories": {"electron": 11, "photon": 22.5}, "max": 22.5}, "categories must be integer codes"),
    ({"categories": {"electron": 11, "Electron": 22}}, "categories must be distinct labels and distinct codes"),
    ({"categories": {"electron": 11, "photon": 11}, "max": 11}, "distinct labels and distinct codes"),
    ({"categories": {"electron": 11, "photon": 22}, "max": 211}, "min/max must be the smallest and largest code"),
    ({"categories": {"electron": 11, "photon": 22}, "sampling": "uniform"}, "sampling must be 'categorical'"),
    ({"categories": {"e,gamma": 11, "photon": 22}}, "labels that are non-empty strings without ':' or ','"),
    ({"categories": ["electron", "photon"]}, "categories must be a JSON object"),
    ({"categories": {"electron": "11", "photon": 22}}, "categories['electron'] must be a finite number"),
])
def test_bad_categories_are_refused_naming_the_key(block, message):
    base = {"name": "particle", "unit": "pdg", "min": 11, "max": 22, "sampling": "categorical"}
    with pytest.raises(SpecError, match="^spec: conditions") as info:
        ConditionSpec.from_dict({**base, **block})
    assert message in str(info.value)


def test_a_categorical_spec_declared_as_format_1_1_is_refused():
    doc = make_spec(conditions=(ENERGY_CONDITION, PARTICLE)).to_dict()
    with pytest.raises(SpecError, match="format must be 'fastsim-decoder/1.2' for categorical conditions "
                                        r"\['particle'\]"):
        ModelSpec.from_dict({**doc, "format": FORMAT_PERIODIC})


# --- values ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("photon", Constant(22.0)),
    ("ELECTRON", Constant(11.0)),
    ("22", Constant(22.0)),
    (11, Constant(11.0)),
    ("electron, photon", Choice((11.0, 22.0))),
    ("22,electron", Choice((22.0, 11.0))),
])
def test_a_category_by_label_or_code(value, expected):
    assert parse_category(value, PARTICLE) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("pion", "particle: expected one of electron (11), photon (22), got 'pion'"),
    ("211", "particle: expected one of electron (11), photon (22), got '211'"),
    ("electron,electron", "particle: a category is listed twice in 'electron,electron'"),
    (Range(11, 22), "particle: a categorical condition takes a category, not a range"),
    ({"photon"}, "particle: expected one of electron (11), photon (22), a comma list of them"),
])
def test_a_bad_category_names_the_condition_and_the_choices(value, message):
    with pytest.raises(ConditionError) as info:
        parse_category(value, PARTICLE)
    assert str(info.value).startswith(message)


def test_per_sample_labels_become_codes_and_unknown_codes_are_refused(gen):
    values = parse_category(["photon", "electron", "photon"], PARTICLE)
    assert isinstance(values, Values) and values.array.tolist() == [22.0, 11.0, 22.0]
    with pytest.raises(ConditionError, match=r"^particle: 211 at index 2 is not a category of the model; "
                                             r"expected one of electron \(11\), photon \(22\)$"):
        plan_conditions(gen.spec, {"particle": np.array([11, 22, 211])})
    # Extrapolation has no meaning for a category.
    with pytest.raises(ConditionError, match="is not a category"):
        plan_conditions(gen.spec, {"particle": 13}, n=4, allow_extrapolation=True)


def test_left_out_or_listed_categories_are_drawn_equally_and_reproducibly(gen):
    conditions, _ = gen.generate(4000, {"incident_energy": "50GeV"}, seed=5)
    codes = conditions[:, 1]
    assert set(np.unique(codes)) == {11.0, 22.0}
    assert 0.47 < np.mean(codes == 22.0) < 0.53  # 4,000 fair draws: sigma 0.008
    again, _ = gen.generate(4000, {"incident_energy": "50GeV", "particle": "electron,photon"}, seed=5)
    assert np.array_equal(conditions, again)


def test_the_particle_changes_the_showers_and_only_through_its_code(gen):
    electrons = gen.generate(N, {"incident_energy": "50GeV", "particle": "electron"}, seed=1)
    photons = gen.generate(N, {"incident_energy": "50GeV", "particle": 22}, seed=1)
    assert (electrons[0][:, 1] == 11).all() and (photons[0][:, 1] == 22).all()
    assert not np.array_equal(electrons[1], photons[1])
    by_label = gen.generate(N, {"incident_energy": "50GeV", "particle": ["photon"] * N}, seed=1)
    assert np.array_equal(by_label[1], photons[1])


# --- the CLI ---------------------------------------------------------------------------------

def test_cli_particle_lands_in_the_file_and_reads_back(run_fastsim, mixed_model, tmp_path):
    out = tmp_path / "photons.h5"
    result = run_fastsim("generate", "--model", mixed_model, "--energy", "50GeV", "--particle", "photon",
                         "-n", N, "-o", out, "--seed", 2, "-q")
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as fh:
        assert fh["particle"].shape == (N, 1) and (fh["particle"][...] == 22).all()
        showers = fh["showers"][...]
    mixed = tmp_path / "mixed.h5"
    assert run_fastsim("generate", "--model", mixed_model, "--particle", "electron,photon", "-n", 500,
                       "-o", mixed, "--seed", 2, "-q").returncode == 0
    again = tmp_path / "again.h5"
    result = run_fastsim("generate", "--model", mixed_model, "--energy", mixed, "--particle", mixed,
                         "-o", again, "--seed", 2, "-q")
    assert result.returncode == 0, result.stderr
    with h5py.File(mixed) as ref, h5py.File(again) as new:
        assert set(np.unique(ref["particle"][...])) == {11.0, 22.0}
        for key in ("incident_energies", "particle", "showers"):
            assert np.array_equal(ref[key][...], new[key][...]), key
    _, api = fastsim.load(mixed_model, device="cpu", threads=1).generate(
        N, {"incident_energy": "50GeV", "particle": "photon"}, seed=2)
    assert np.array_equal(showers, api)


@pytest.mark.parametrize(("args", "message"), [
    (["--particle", "pion"], "--particle: particle: expected one of electron (11), photon (22), got 'pion'"),
    (["--particle", "11:22"], "--particle: particle: expected one of electron (11), photon (22), got '11:22'"),
    (["--particle", "photon", "--condition", "particle=11"],
     "Invalid value for '--condition particle': condition 'particle' is already set by --particle"),
])
def test_cli_particle_errors_name_the_flag(run_fastsim, mixed_model, tmp_path, args, message):
    result = run_fastsim("generate", "--model", mixed_model, "-n", 10, "-o", tmp_path / "x.h5", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("fastsim: error: ") and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_particle_for_a_model_without_it(run_fastsim, toy_model, tmp_path):
    result = run_fastsim("generate", "--model", toy_model, "-n", 10, "-o", tmp_path / "x.h5", "--particle", "photon")
    assert result.returncode == 2
    assert "Invalid value for '--particle': the model has no condition 'particle'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_info_lists_the_categories(run_fastsim, mixed_model):
    result = run_fastsim("info", mixed_model)
    assert result.returncode == 0, result.stderr
    assert "condition   particle {electron (11), photon (22)} pdg, categorical" in result.stdout
    assert "format      fastsim-decoder/1.2" in result.stdout
