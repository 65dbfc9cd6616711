"""load() and Generator: shapes, conditions, reproducibility, devices, and bad input."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

import fastsim
from fastsim.conditions import Range, parse_quantity
from fastsim.errors import ArgumentError, ConditionError, ModelError, ProviderError, SpecError
from fastsim.prior import BLOCK_SIZE, draw_latents
from fastsim.spec import ConditionSpec
from helpers.decoders import ENERGY_CONDITION, RESPONSE, make_decoder


@pytest.fixture(scope="module")
def gen(toy_model):
    return fastsim.load(toy_model, device="cpu", threads=1)


def test_load_exposes_spec_provider_path_and_sha(gen, toy_model):
    assert gen.spec.latent_dim == 4 and gen.spec.n_voxels == 24
    assert gen.provider == "CPUExecutionProvider"
    assert gen.path == toy_model
    assert len(gen.sha256) == 64 and gen.sha256 == fastsim.load(toy_model, device="cpu").sha256


def test_generate_returns_float32_conditions_and_physical_showers(gen):
    conditions, showers = gen.generate(500, seed=1)
    assert conditions.shape == (500, 1) and conditions.dtype == np.float32
    assert showers.shape == (500, 24) and showers.dtype == np.float32
    assert (showers >= 0).all()
    energy = conditions[:, 0]
    assert energy.min() >= 1e3 and energy.max() <= 1e6
    # The toy decoder deposits 95% of E_inc minus sub-threshold voxels.
    assert np.allclose(showers.sum(1) / energy, RESPONSE, atol=1e-3)


def test_decode_is_one_session_run(gen):
    z = draw_latents(7, 0, 10, 4)
    c = np.full((10, 1), 5e4, np.float32)
    out = gen.decode(z, c)
    assert out.shape == (10, 24)
    with pytest.raises(ArgumentError, match=r"z: expected shape \(k, 4\)"):
        gen.decode(z[:, :3], c)
    with pytest.raises(ArgumentError, match=r"conditions: expected shape \(10, 1\)"):
        gen.decode(z, c[:5])


@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_same_showers_for_any_batch_size_and_threads(wide_model, threads):
    gen = fastsim.load(wide_model, device="cpu", threads=threads)
    n = 2 * BLOCK_SIZE + 100
    ref_c, ref_s = fastsim.load(wide_model, device="cpu", threads=1).generate(n, seed=11, batch_size=BLOCK_SIZE)
    for batch_size in (1, 37, 1000, 4096):
        conditions, showers = gen.generate(n, seed=11, batch_size=batch_size)
        assert np.array_equal(conditions, ref_c), batch_size
        assert np.array_equal(showers, ref_s), batch_size


def test_sample_depends_only_on_seed_and_global_index(gen):
    _, whole = gen.generate(3000, seed=5)
    _, tail = gen.generate(1000, seed=5, start=2000, batch_size=333)
    _, middle = gen.generate(10, seed=5, start=1020)
    assert np.array_equal(tail, whole[2000:])
    assert np.array_equal(middle, whole[1020:1030])
    _, other = gen.generate(3000, seed=6)
    assert not np.array_equal(other, whole)


def test_gpu_run_windows_are_fixed_by_the_global_index(wide_model):
    # The GPU path sends one session run per window; a resumed run or a shard must see the
    # same windows as an uninterrupted run. Exercised here with a CPU session taking the GPU path.
    class RecordingSession:
        """Passes runs through to the real session and records each run's window (first latent row, rows)."""

        def __init__(self, session):
            self.session, self.windows = session, []

        def run(self, outputs, feeds):
            z = feeds["z"]
            self.windows.append((z[0].tobytes(), len(z)))
            return self.session.run(outputs, feeds)

        def __getattr__(self, name):
            return getattr(self.session, name)

    gpu_path = fastsim.load(wide_model, device="cpu", threads=1)
    gpu_path.provider = "GPU-path-on-CPU"
    gpu_path.session = recorder = RecordingSession(gpu_path.session)
    batch = 1500  # runs of 2048 rows: windows [0, 2048), [2048, 4096), ...
    _, whole = gpu_path.generate(4096, seed=3, batch_size=batch)
    uninterrupted, recorder.windows = set(recorder.windows), []
    _, resumed = gpu_path.generate(4096 - batch, seed=3, batch_size=batch, start=batch)
    _, shard = gpu_path.generate(3072, seed=3, batch_size=batch, start=BLOCK_SIZE)
    assert len(uninterrupted) == 2 and set(recorder.windows) <= uninterrupted
    assert np.array_equal(resumed, whole[batch:])
    assert np.array_equal(shard, whole[BLOCK_SIZE:])


def test_seed_beyond_int64_is_refused_before_any_file(gen, tmp_path):
    with pytest.raises(ArgumentError, match=r"seed: expected a non-negative integer at most 9223372036854775807"):
        gen.write(tmp_path / "out.h5", 10, seed=2**64)
    assert list(tmp_path.iterdir()) == []


def test_latents_do_not_depend_on_how_conditions_are_given(gen):
    # Same seed, same energies given as a constant or as per-sample values: same showers.
    _, constant = gen.generate(300, 50_000, seed=2)
    _, values = gen.generate(300, np.full(300, 50_000.0), seed=2)
    _, named = gen.generate(300, seed=2, incident_energy="50GeV")
    assert np.array_equal(constant, values) and np.array_equal(constant, named)


def test_iter_batches_streams_fixed_size_chunks(gen):
    sizes = [len(s) for _, s in gen.iter_batches(2500, seed=3, batch_size=1000)]
    assert sizes == [1000, 1000, 500]
    streamed = np.concatenate([s for _, s in gen.iter_batches(2500, seed=3, batch_size=1000)])
    assert np.array_equal(streamed, gen.generate(2500, seed=3)[1])


def test_iter_batches_checks_arguments_before_the_first_batch(gen):
    with pytest.raises(ArgumentError, match="batch_size"):
        gen.iter_batches(10, batch_size=0)
    with pytest.raises(ArgumentError, match="seed"):
        gen.iter_batches(10, seed=-1)


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        (50_000, 50_000.0),
        ("50GeV", 50_000.0),
        ("50 GeV", 50_000.0),
        ("0.5TeV", 500_000.0),
        ("2e4", 20_000.0),
        ("20000MeV", 20_000.0),
    ],
)
def test_constant_energies_in_any_unit(gen, conditions, expected):
    conditions_out, _ = gen.generate(5, conditions)
    assert np.all(conditions_out == np.float32(expected))


@pytest.mark.parametrize("sampling", ["log-uniform", "uniform"])
def test_ranges_follow_the_sampling_law(gen, sampling):
    lo, hi = 1e4, 1e6
    conditions, _ = gen.generate(20_000, Range(lo, hi, sampling), seed=4)
    energy = conditions[:, 0].astype(np.float64)
    assert energy.min() >= lo and energy.max() <= hi
    median = np.median(energy)
    expected = math.sqrt(lo * hi) if sampling == "log-uniform" else (lo + hi) / 2
    assert abs(median / expected - 1) < 0.05


def test_string_and_tuple_ranges_use_the_spec_law(gen):
    a, _ = gen.generate(4000, "10GeV:1TeV", seed=9)
    b, _ = gen.generate(4000, (1e4, 1e6), seed=9)
    assert np.array_equal(a, b)
    # log-uniform (the spec's law): about half below the geometric mean 100 GeV
    assert abs(np.mean(a[:, 0] < 1e5) - 0.5) < 0.03


def test_default_conditions_cover_the_training_range(gen):
    conditions, _ = gen.generate(4000, seed=1)
    log_e = np.log10(conditions[:, 0])
    assert log_e.min() < 3.1 and log_e.max() > 5.9
    assert abs(np.mean(log_e < 4.5) - 0.5) < 0.03


@pytest.mark.parametrize("kind", ["list", "npy", "csv", "csv-header", "h5"])
def test_per_sample_energies_from_arrays_and_files(gen, tmp_path, kind):
    energies = np.geomspace(1e3, 1e6, 50)
    if kind == "list":
        source = list(energies)
    elif kind == "npy":
        source = tmp_path / "e.npy"
        np.save(source, energies)
    elif kind.startswith("csv"):
        source = tmp_path / "e.csv"
        header = "incident_energy\n" if kind == "csv-header" else ""
        source.write_text(header + "\n".join(f"{e:.17g}" for e in energies))
    else:
        source = tmp_path / "e.h5"
        with h5py.File(source, "w") as fh:
            fh["incident_energies"] = energies.reshape(-1, 1)
    conditions, showers = gen.generate(conditions=str(source) if kind != "list" else source)
    assert len(showers) == 50
    assert np.array_equal(conditions[:, 0], energies.astype(np.float32))


@pytest.mark.parametrize(
    ("conditions", "error", "message"),
    [
        (float("nan"), ConditionError, "finite"),
        (np.array([1e4, np.inf]), ConditionError, "finite.*index 1"),
        (-5.0, ConditionError, "must be > 0"),
        (np.array([1e4, 0.0]), ConditionError, "must be > 0"),
        ("2TeV", ConditionError, r"outside the model's training range \[1000, 1e\+06\] MeV"),
        ("100MeV:1TeV", ConditionError, "outside the model's training range"),
        ("1TeV:10GeV", ConditionError, "lo < hi"),
        ("50 furlongs", ConditionError, "expected a number with an optional unit"),
        ("1GeV:2GeV:3GeV", ConditionError, "LO:HI"),
        ("missing.npy", ConditionError, "does not exist"),
        ({"angle": 1.0}, ConditionError, r"unknown condition\(s\) \['angle'\]"),
        (np.ones((10, 2)) * 1e4, ConditionError, "2 columns"),
        (object(), ConditionError, "expected a number"),
    ],
)
def test_bad_conditions_are_clear_errors(gen, conditions, error, message):
    n = 10 if not isinstance(conditions, np.ndarray) or conditions.ndim != 1 else len(conditions)
    with pytest.raises(error, match=message):
        gen.generate(n, conditions)


def test_per_sample_count_must_match_n(gen):
    with pytest.raises(ConditionError, match="3 per-sample values given for n=5"):
        gen.generate(5, [1e4, 2e4, 3e4])


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_n_must_be_a_positive_integer(gen, n):
    with pytest.raises(ArgumentError, match="n: expected a positive integer"):
        gen.generate(n)


def test_extrapolation_is_a_warning_when_allowed(gen):
    with pytest.warns(fastsim.FastsimWarning, match="outside the model's training range.*extrapolating"):
        conditions, showers = gen.generate(5, "2TeV", allow_extrapolation=True)
    assert np.all(conditions == 2e6) and (showers >= 0).all()


def test_parse_quantity_converts_units():
    assert parse_quantity("1TeV") == 1e6 and parse_quantity("15keV") == pytest.approx(0.015)
    assert parse_quantity("3", "GeV") == 3 and parse_quantity("3000MeV", "GeV") == 3
    with pytest.raises(ConditionError, match="rad"):
        parse_quantity("3GeV", "rad", argument="angle")


def test_multi_condition_model(tmp_path):
    angle = ConditionSpec("angle", "rad", 0.1, 1.0, "uniform")
    path = make_decoder(tmp_path / "two.onnx", conditions=[ENERGY_CONDITION, angle])
    gen = fastsim.load(path, device="cpu")
    conditions, showers = gen.generate(2000, seed=3, incident_energy="50GeV")
    assert conditions.shape == (2000, 2) and showers.shape == (2000, 24)
    assert np.all(conditions[:, 0] == 5e4)
    assert conditions[:, 1].min() >= 0.1 and conditions[:, 1].max() <= 1.0
    assert abs(np.median(conditions[:, 1]) - 0.55) < 0.03  # uniform
    both, _ = gen.generate(3, {"incident_energy": 1e4, "angle": 0.5})
    assert np.array_equal(both, np.tile(np.float32([1e4, 0.5]), (3, 1)))
    table, _ = gen.generate(conditions=np.array([[1e4, 0.2], [2e4, 0.3]]))
    assert np.array_equal(table, np.float32([[1e4, 0.2], [2e4, 0.3]]))
    # A scalar or --energy style value sets the energy; the angle is still sampled.
    with pytest.raises(ConditionError, match="angle: values span"):
        gen.generate(3, {"angle": 2.0})


def test_float16_model_returns_float32(tmp_path):
    gen = fastsim.load(make_decoder(tmp_path / "half.onnx", output_dtype="float16"), device="cpu")
    _, showers = gen.generate(100, 5e4)
    assert showers.dtype == np.float32
    assert np.allclose(showers.sum(1), RESPONSE * 5e4, rtol=1e-2)


def test_sidecar_model_with_mapped_names_generates(tmp_path, toy_model):
    names = {"z": "latent", "conditions": "energy", "showers": "deposits"}
    path = make_decoder(tmp_path / "foreign.onnx", names=names, sidecar=True)
    _, showers = fastsim.load(path, device="cpu").generate(300, seed=8)
    # Same weights and seed as the toy model: the mapping changes names, not numbers.
    assert np.array_equal(showers, fastsim.load(toy_model, device="cpu").generate(300, seed=8)[1])


def test_spec_argument_forms(tmp_path):
    path = make_decoder(tmp_path / "bare.onnx", embed=False)
    with pytest.raises(SpecError, match="--spec"):
        fastsim.load(path, device="cpu")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(fastsim.read_spec(make_decoder(tmp_path / "with.onnx")).to_json())
    for spec in (spec_file, str(spec_file), fastsim.ModelSpec.from_file(spec_file),
                 fastsim.ModelSpec.from_file(spec_file).to_dict()):
        assert fastsim.load(path, spec=spec, device="cpu").spec.n_voxels == 24


def test_mismatched_spec_fails_on_load(tmp_path):
    from helpers.decoders import make_spec

    path = make_decoder(tmp_path / "m.onnx", spec=make_spec(latent_dim=8, n_voxels=100))
    with pytest.raises(SpecError, match="width 4, spec latent_dim is 8.*width 24, spec output.n_voxels is 100"):
        fastsim.load(path, device="cpu")


@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_unavailable_gpu_is_an_error_listing_providers(toy_model, device):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA-enabled onnxruntime is installed")
    with pytest.raises(ProviderError, match=f"device '{device}' needs .*available providers: .*CPUExecutionProvider"):
        fastsim.load(toy_model, device=device)


def test_auto_reports_the_provider_it_picked(toy_model):
    import onnxruntime as ort

    gen = fastsim.load(toy_model, device="auto")
    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() \
        else "CPUExecutionProvider"
    assert gen.provider == expected


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"device": "gpu"}, ProviderError, "device: expected one of"),
    ({"threads": 0}, ProviderError, "threads: expected a positive integer"),
])
def test_bad_session_arguments(toy_model, kwargs, error, message):
    with pytest.raises(error, match=message):
        fastsim.load(toy_model, **kwargs)


def test_model_lookup_by_name_and_env_path(tmp_path, monkeypatch, toy_model):
    from fastsim.models import bundled_models, resolve_model

    folder = tmp_path / "zoo"
    make_decoder(folder / "calo-electron.onnx")
    (folder / "calo-electron.md").write_text("# card")
    make_decoder(folder / "tiny.onnx", n_voxels=8)
    monkeypatch.setenv("FASTSIM_MODEL_PATH", str(folder))
    assert resolve_model("tiny") == folder / "tiny.onnx"
    assert resolve_model("default") == folder / "calo-electron.onnx"
    found = {m.name: m for m in bundled_models()}
    assert found["calo-electron"].card == folder / "calo-electron.md"
    assert fastsim.load("tiny", device="cpu").spec.n_voxels == 8
    with pytest.raises(ModelError, match="unknown model 'nope'; bundled models: .*tiny"):
        fastsim.load("nope")
    assert resolve_model(str(toy_model)) == toy_model


def test_missing_or_broken_model_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        fastsim.load(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    with pytest.raises(ModelError, match="not an ONNX model"):
        fastsim.load(junk)
    with pytest.raises(ModelError, match="not a file"):
        fastsim.load(tmp_path / ".." / tmp_path.name / "")


@pytest.fixture()
def cuda_listed_but_unusable(monkeypatch):
    """This onnxruntime lists CUDA but cannot run it, as with onnxruntime-gpu and missing CUDA libraries."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA-enabled onnxruntime is installed")
    import fastsim.session

    monkeypatch.setattr(fastsim.session, "available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])


# Faking the provider list makes onnxruntime warn that CUDA is not really there; that is the point.
UNAVAILABLE = pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")


@UNAVAILABLE
def test_cuda_that_cannot_start_is_an_error_not_a_cpu_run(toy_model, cuda_listed_but_unusable):
    with pytest.raises(ProviderError, match="device 'cuda': CUDAExecutionProvider could not start"):
        fastsim.load(toy_model, device="cuda")


@UNAVAILABLE
def test_auto_says_when_cuda_cannot_start_and_uses_the_cpu(toy_model, cuda_listed_but_unusable):
    with pytest.warns(fastsim.FastsimWarning, match="CUDAExecutionProvider could not start.*using the CPU"):
        gen = fastsim.load(toy_model, device="auto")
    assert gen.provider == "CPUExecutionProvider"


def test_a_graph_that_fails_at_run_time_is_a_model_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from fastsim.spec import embed_spec
    from helpers.decoders import make_spec

    # Declares [N, 24] showers but reshapes the N conditions to [-1, 24]: fails unless 24 divides N.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["conditions", "shape"], ["showers"])],
        "broken",
        inputs=[helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4]),
                helper.make_tensor_value_info("conditions", TensorProto.FLOAT, ["N", 1])],
        outputs=[helper.make_tensor_value_info("showers", TensorProto.FLOAT, ["N", 24])],
        initializer=[helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 24])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    embed_spec(model, make_spec())
    onnx.save(model, tmp_path / "broken.onnx")
    gen = fastsim.load(tmp_path / "broken.onnx", device="cpu")
    with pytest.raises(ModelError, match="failed to decode a batch of 2048: .*cannot be reshaped"):
        gen.generate(10)
