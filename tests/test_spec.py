"""The model contract: ModelSpec JSON round trips, metadata and sidecars, checks against the graph."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest

from fastsim.errors import ModelError, SpecError
from fastsim.spec import (
    FORMAT,
    SPEC_KEY,
    ConditionSpec,
    ModelSpec,
    check_graph,
    embed_spec,
    read_metadata,
    read_spec,
)
from helpers.decoders import ENERGY_CONDITION, make_decoder, make_model, make_spec

DOCUMENT = {
    "format": "fastsim-decoder/1",
    "name": "calo-electron",
    "version": "1.0.0",
    "latent_dim": 16,
    "prior": {"kind": "standard_normal"},
    "conditions": [{"name": "incident_energy", "unit": "MeV", "min": 1000.0, "max": 1000000.0,
                    "sampling": "log-uniform"}],
    "output": {"name": "showers", "unit": "MeV", "n_voxels": 6480,
               "geometry": {"kind": "cylindrical", "layer_thickness_mm": 3.4,
                            "layers": [{"r_edges": [0.0, 4.65, 9.3], "n_alpha": 16}]}},
    "training": {"data": "sim.h5", "n_showers": 100000, "epochs": 30, "seed": 1},
    "metrics": {"auc": 0.61},
    "producer": "fastsim 0.1.0",
}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_design_document_round_trips_exactly():
    spec = ModelSpec.from_json(json.dumps(DOCUMENT))
    assert spec.latent_dim == 16 and spec.n_voxels == 6480 and spec.n_conditions == 1
    assert spec.conditions[0] == ConditionSpec("incident_energy", "MeV", 1e3, 1e6, "log-uniform")
    assert spec.io_names == {"z": "z", "conditions": "conditions", "showers": "showers"}
    # The contract's key set is kept as in docs/contract.md: no io_names key unless names are mapped.
    assert json.loads(spec.to_json()) == DOCUMENT
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_io_names_are_written_only_when_mapped():
    spec = ModelSpec.from_dict({**DOCUMENT, "io_names": {"z": "latent"}})
    assert spec.io_names == {"z": "latent", "conditions": "conditions", "showers": "showers"}
    assert json.loads(spec.to_json())["io_names"]["z"] == "latent"
    assert ModelSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"format": "fastsim-decoder/2"}, "format"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": "16"}, "latent_dim"),
        ({"latent_dim": True}, "latent_dim"),
        ({"prior": {"kind": "uniform"}}, "prior.kind"),
        ({"conditions": []}, "conditions"),
        ({"conditions": "incident_energy"}, "conditions"),
        ({"conditions": [{**DOCUMENT["conditions"][0], "min": 2e6}]}, "min/max"),
        ({"conditions": [{**DOCUMENT["conditions"][0], "sampling": "gaussian"}]}, "sampling"),
        ({"conditions": [{**DOCUMENT["conditions"][0], "min": 0.0}]}, "min"),
        ({"conditions": [{**DOCUMENT["conditions"][0], "max": float("nan")}]}, "max"),
        ({"conditions": [{"name": "incident_energy", "unit": "MeV", "min": 1.0}]}, "max"),
        ({"conditions": DOCUMENT["conditions"] * 2}, "uniquely named"),
        ({"output": {"name": "showers", "unit": "MeV", "n_voxels": -1}}, "n_voxels"),
        ({"output": {"name": "showers", "unit": "MeV", "n_voxels": 10, "dtype": "int8"}}, "dtype"),
        ({"io_names": {"x": "y"}}, "io_names"),
    ],
)
def test_malformed_documents_name_the_bad_key(change, named):
    with pytest.raises(SpecError, match="spec") as info:
        ModelSpec.from_dict({**DOCUMENT, **change})
    assert named in str(info.value)


@pytest.mark.parametrize("missing", ["latent_dim", "conditions", "output"])
def test_missing_required_keys_are_named(missing):
    doc = {k: v for k, v in DOCUMENT.items() if k != missing}
    with pytest.raises(SpecError, match=f"missing required key '{missing}'"):
        ModelSpec.from_dict(doc)


def test_invalid_json_is_a_spec_error():
    with pytest.raises(SpecError, match="not valid JSON"):
        ModelSpec.from_json("{latent_dim: 3")


def test_embedded_spec_is_read_back(tmp_path):
    spec = make_spec(latent_dim=3, n_voxels=10, name="embedded")
    path = make_decoder(tmp_path / "m.onnx", latent_dim=3, n_voxels=10, spec=spec)
    assert read_spec(path) == spec
    assert json.loads(read_metadata(path)[SPEC_KEY])["format"] == FORMAT


def test_embed_spec_replaces_a_previous_entry_and_keeps_others():
    model = make_model(latent_dim=3, n_voxels=10)
    entry = model.metadata_props.add()
    entry.key, entry.value = "author", "me"
    embed_spec(model, make_spec(latent_dim=3, n_voxels=10, name="first"))
    embed_spec(model, make_spec(latent_dim=3, n_voxels=10, name="second"))
    keys = [p.key for p in model.metadata_props]
    assert sorted(keys) == ["author", SPEC_KEY]
    assert json.loads(dict((p.key, p.value) for p in model.metadata_props)[SPEC_KEY])["name"] == "second"


def test_sidecar_with_name_mapping(tmp_path):
    names = {"z": "latent", "conditions": "energy", "showers": "deposits"}
    path = make_decoder(tmp_path / "foreign.onnx", names=names, sidecar=True)
    assert SPEC_KEY not in read_metadata(path)
    spec = read_spec(path)
    assert spec.io_names == names
    session = _session(path)
    check_graph(spec, session.get_inputs(), session.get_outputs())


def test_explicit_spec_file_overrides_embedded(tmp_path):
    path = make_decoder(tmp_path / "m.onnx", name="embedded")
    other = tmp_path / "other.json"
    other.write_text(make_spec(name="explicit").to_json())
    assert read_spec(path).name == "embedded"
    assert read_spec(path, sidecar=other).name == "explicit"


def test_model_without_any_spec_says_how_to_give_one(tmp_path):
    path = make_decoder(tmp_path / "bare.onnx", embed=False)
    with pytest.raises(SpecError, match="no 'fastsim.spec' metadata and no sidecar 'bare.onnx.json'.*--spec"):
        read_spec(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty|not an ONNX model"),
        (b"this is plain text, not a protobuf", "not an ONNX model"),
        (b"\x08\x08\x3a\xff\xff\xff\x0f", "not an ONNX model"),  # ir_version then a graph field cut short
    ],
)
def test_non_onnx_files_are_model_errors(tmp_path, content, message):
    path = tmp_path / "junk.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        read_spec(path)


def test_truncated_model_is_a_model_error(tmp_path):
    good = make_decoder(tmp_path / "good.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match="not an ONNX model"):
        read_spec(cut)


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        read_metadata(tmp_path / "nope.onnx")


def test_every_disagreement_is_reported_in_one_error(tmp_path):
    wrong = make_spec(latent_dim=5, n_voxels=30, conditions=[ENERGY_CONDITION, ConditionSpec("angle", "rad", 0, 1)])
    path = make_decoder(tmp_path / "m.onnx", latent_dim=4, n_voxels=24, spec=wrong)
    session = _session(path)
    with pytest.raises(SpecError) as info:
        check_graph(read_spec(path), session.get_inputs(), session.get_outputs())
    message = str(info.value)
    assert "input 'z' has width 4, spec latent_dim is 5" in message
    assert "input 'conditions' has width 1, spec number of conditions is 2" in message
    assert "output 'showers' has width 24, spec output.n_voxels is 30" in message


def test_wrong_names_dtype_and_batch_axis_are_reported(tmp_path):
    path = make_decoder(tmp_path / "m.onnx", names={"z": "noise"}, output_dtype="float16",
                        spec=make_spec())  # spec expects 'z' and float32
    session = _session(path)
    with pytest.raises(SpecError) as info:
        check_graph(read_spec(path), session.get_inputs(), session.get_outputs())
    message = str(info.value)
    assert "input 'z' (role 'z') not in graph inputs ['conditions', 'noise']" in message
    assert "output 'showers' has dtype float16, expected float32" in message
    assert "graph has inputs the contract does not feed: ['noise']" in message

    fixed = tmp_path / "fixed.onnx"
    model = make_model(batch_dim=8)
    embed_spec(model, make_spec())
    onnx.save(model, fixed)
    session = _session(fixed)
    with pytest.raises(SpecError, match="fixed batch dimension 8"):
        check_graph(read_spec(fixed), session.get_inputs(), session.get_outputs())


def test_float16_output_is_accepted_when_declared(tmp_path):
    path = make_decoder(tmp_path / "half.onnx", output_dtype="float16")
    session = _session(path)
    check_graph(read_spec(path), session.get_inputs(), session.get_outputs())


def test_replace_returns_a_checked_copy():
    spec = ModelSpec.from_dict(DOCUMENT)
    renamed = spec.replace(name="other", metrics={"auc": 0.55})
    assert (renamed.name, renamed.metrics, renamed.latent_dim) == ("other", {"auc": 0.55}, 16)
    assert spec.name == "calo-electron"
    with pytest.raises(SpecError, match="latent_dim"):
        spec.replace(latent_dim=-3)
