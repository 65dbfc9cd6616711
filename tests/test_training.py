"""The training pipeline end to end: simulate -> train -> export -> fastsim.load -> generate.

A tiny model on a few hundred reference showers, through the real command
line (``python -m training ...`` as subprocesses) and the real runtime, so
every contract between the parts is exercised: checkpoints that load with
``weights_only=True``, ``--resume``, the exported graph's inputs, outputs,
opset, IR version and spec, torch/ONNX Runtime parity, and the physics the
graph guarantees structurally (threshold, exact energy total, reproducible
voxel noise).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import fastsim  # noqa: E402
from fastsim.spec import SPEC_KEY, ModelSpec  # noqa: E402
from helpers import run_training  # noqa: E402

# Every test here simulates, trains or exports (through the real command line).
pytestmark = pytest.mark.slow

THRESHOLD = 0.01515
TINY_CONFIG = """
name = "tiny"
description = "test run"
[data]
e_min = 1000.0
e_max = 1000000.0
[model]
latent_dim = 4
hidden = 32
n_hidden = 2
encoder_hidden = 64
[train]
epochs = 2
batch_size = 64
fom_showers = 200
prior_fit_showers = 400
threads = 1
shape_weight = 20.0
u_weight = 200.0
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from training.simulate import write_dataset

    folder = tmp_path_factory.mktemp("showers")
    train, _ = write_dataset(folder / "train.h5", 400, "1GeV:1TeV", seed=1, compression=None, progress=False)
    val, _ = write_dataset(folder / "val.h5", 200, "1GeV:1TeV", seed=2, compression=None, progress=False)
    config = folder / "tiny.toml"
    config.write_text(TINY_CONFIG)
    return {"train": train, "val": val, "config": config}


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_training("train", "--config", str(data["config"]), "--data", str(data["train"]),
                     "--validation", str(data["val"]), "--out", str(out), "-q")
    assert result.returncode == 0, result.stderr
    assert "best figure of merit" in result.stdout
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("exported") / "tiny.onnx"
    result = run_training("export", str(run), "-o", str(path), "--version", "0.1.0")
    assert result.returncode == 0, result.stderr
    return {"path": path, "parity": json.loads(result.stdout.strip().splitlines()[-1])}


def test_train_writes_run_folder_with_curves(run):
    for name in ("config.json", "last.pt", "best.pt", "history.csv", "history.json", "history.png"):
        assert (run / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    for row in history:
        for key in ("train_loss", "val_loss", "val_shape", "val_kl", "fom"):
            assert np.isfinite(row[key]), key
        assert row["fom"] >= 0.0
    # Training must do something: the loss falls from the first epoch to the second.
    assert history[1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_checkpoints_load_with_weights_only(run, name):
    from training.train import physical_decoder_from_checkpoint

    checkpoint = torch.load(run / name, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] in (0, 1)
    assert checkpoint["noise_kappa"] > 10.0  # MeV: the sampling-calorimeter spread of the data
    decoder = physical_decoder_from_checkpoint(checkpoint)
    z = torch.randn(3, decoder.latent_dim)
    showers = decoder(z, torch.full((3, 1), 2e4))
    assert showers.shape == (3, 6480)
    assert "optimizer" in checkpoint if name == "last.pt" else "optimizer" not in checkpoint
    if name == "best.pt":  # the per-layer spot energies fitted to the data's sparsity after training
        spot_mev = decoder.spot_energy(torch.zeros(1, 1)).view(45, -1)[:, 0]
        assert checkpoint["spot_coeffs"].shape == (3, 45) and (spot_mev > 0.05).all()


def test_resume_continues_the_same_run(run, data, tmp_path):
    copy = tmp_path / "resumed"
    shutil.copytree(run, copy)
    before = json.loads((copy / "history.json").read_text())
    result = run_training("train", "--config", str(data["config"]), "--data", str(data["train"]),
                     "--validation", str(data["val"]), "--out", str(copy), "--resume", "--epochs", "3", "-q")
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout
    after = json.loads((copy / "history.json").read_text())
    assert [row["epoch"] for row in after] == [0, 1, 2]
    assert after[:2] == before  # the first two epochs are kept, not retrained


def test_exported_graph_holds_the_contract(exported, run):
    model = onnx.load(str(exported["path"]))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 9
    assert {op.domain: op.version for op in model.opset_import}[""] == 17
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.input, *model.graph.output]}
    spec = ModelSpec.from_json({p.key: p.value for p in model.metadata_props}[SPEC_KEY])
    assert spec.latent_dim == 4 + 2  # the VAE's latents + the voxel-noise seeds
    assert shapes == {"z": ["N", spec.latent_dim], "conditions": ["N", 1], "showers": ["N", 6480]}
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
               for v in [*model.graph.input, *model.graph.output])
    (condition,) = spec.conditions
    assert (condition.name, condition.unit, condition.min, condition.max, condition.sampling) == (
        "incident_energy", "MeV", 1000.0, 1e6, "log-uniform")
    assert spec.output.unit == "MeV" and spec.output.geometry["kind"] == "cylindrical"
    assert spec.producer == f"fastsim {fastsim.__version__}"
    assert spec.training["n_showers"] == 400 and spec.training["n_validation"] == 200
    assert spec.training["hyperparameters"]["model"]["hidden"] == 32
    assert spec.training["flops_per_shower"] > 0


def test_exported_graph_avoids_the_slow_elementwise_ops(exported):
    # The decoder is element-wise bound: on ONNX Runtime's CPU provider a Where over the
    # voxels cost ~10 float Muls and an int64 Mod ~8 (1.0.0's profile), so the export uses neither.
    ops = [node.op_type for node in onnx.load(str(exported["path"])).graph.node]
    assert "Where" not in ops and "Mod" not in ops
    assert "BitShift" not in ops  # ONNX Runtime's CUDA provider has no kernel for it
    assert ops.count("ThresholdedRelu") == 1 and ops.count("Transpose") == 1
    assert all(node.domain in ("", "ai.onnx") for node in onnx.load(str(exported["path"])).graph.node)


def test_export_parity_torch_vs_onnxruntime(exported, run):
    parity = exported["parity"]
    assert parity["max_rel_error_sum"] <= 1e-4
    # Typical voxels agree to float rounding; the few in sparse rings, where the Gamma
    # boost U^(1/k) has k ~ 1e-3, magnify it (see training.export.VOXEL_TOLERANCE).
    assert parity["mean_rel_error_voxel"] <= 1e-5 and parity["max_rel_error_voxel"] <= 1e-2
    # An occupancy draw at float-rounding distance from its boundary may flip; a handful in a million at most.
    assert parity["occupancy_flips"] <= 1e-5 * parity["voxels_compared"]
    # Independently: the same z and energies through torch and through fastsim's session.
    from training.train import load_checkpoint, physical_decoder_from_checkpoint

    decoder = physical_decoder_from_checkpoint(load_checkpoint(run / "best.pt"))
    energy = np.geomspace(1e3, 1e6, 40, dtype=np.float32)[:, None]
    z = np.random.default_rng(7).standard_normal((40, decoder.latent_dim)).astype(np.float32)
    with torch.no_grad():
        expected = decoder(torch.from_numpy(z), torch.from_numpy(energy)).numpy()
    got = fastsim.load(exported["path"], device="cpu", threads=1).decode(z, energy)
    np.testing.assert_allclose(got.sum(1), expected.sum(1), rtol=1e-4)
    clear = expected > 1.01 * THRESHOLD
    np.testing.assert_allclose(got[clear], expected[clear], rtol=1e-2)
    assert np.median(np.abs(got[clear] - expected[clear]) / expected[clear]) < 1e-5
    assert ((got > 0) == (expected > 0)).mean() > 0.9999  # the same voxels are occupied


def test_generate_through_fastsim(exported):
    generator = fastsim.load(exported["path"], device="cpu", threads=1)
    conditions, showers = generator.generate(60, seed=3)
    assert showers.shape == (60, 6480) and showers.dtype == np.float32
    assert np.isfinite(showers).all() and (showers >= 0).all()
    # The voxel threshold is in the graph: nothing between 0 and 15.15 keV.
    assert not ((showers > 0) & (showers < THRESHOLD)).any()
    response = showers.sum(1) / conditions[:, 0]
    assert (response > 0.3).all() and (response < 1.5).all()
    # Voxel noise gives showers a sparse, spiky look like the data, not a smooth mean.
    assert 0.005 < (showers > 0).mean() < 0.9
    again = generator.generate(60, seed=3)[1]
    np.testing.assert_array_equal(showers, again)
    assert not np.array_equal(showers, generator.generate(60, seed=4)[1])


def test_total_energy_is_the_response_head_whatever_the_noise(run):
    from training.train import load_checkpoint, physical_decoder_from_checkpoint

    decoder = physical_decoder_from_checkpoint(load_checkpoint(run / "best.pt"))
    d = decoder.vae.config.latent_dim
    energy = torch.tensor([[1e3], [3e4], [1e6]])
    z = torch.randn(3, decoder.latent_dim, generator=torch.Generator().manual_seed(0))
    z_other_noise = z.clone()
    z_other_noise[:, d:] += 1.0
    with torch.no_grad():
        mean, total = decoder.mean_showers(z[:, :d], energy)
        a, b = decoder(z, energy), decoder(z_other_noise, energy)
    torch.testing.assert_close(a.sum(1, keepdim=True), total, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(b.sum(1, keepdim=True), total, rtol=1e-5, atol=0.0)
    assert not torch.equal(a, b)  # the noise seeds move energy between voxels...
    torch.testing.assert_close(mean.sum(1, keepdim=True), total, rtol=1e-5, atol=0.0)  # ...around this mean


class _NumpyU32:
    """uint32 arithmetic on numpy uint32 arrays: native wrap-around, an independent implementation."""

    @staticmethod
    def _u32(y):
        return np.uint32(y) if isinstance(y, int) else y

    def mul(self, x, y):
        return x * self._u32(y)

    def add(self, x, y):
        return x + self._u32(y)

    @staticmethod
    def shr(x, k):
        return x >> np.uint32(k)


def test_noise_hash_is_exact_uint32_arithmetic():
    from training.model import _TorchU32, noise_words

    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 2**32, (64, 1), dtype=np.uint64) for _ in range(2))
    voxel_add = rng.integers(0, 2**31, 2000, dtype=np.uint64)
    voxel_mul = rng.integers(0, 2**30, 2000, dtype=np.uint64) * 2 + 1
    with np.errstate(over="ignore"):
        expected = noise_words(_NumpyU32(), *(x.astype(np.uint32) for x in (a, b, voxel_add, voxel_mul)))
    got = noise_words(_TorchU32, *(torch.from_numpy(x.astype(np.int64)) for x in (a, b, voxel_add, voxel_mul)))
    assert len(got) == len(expected) == 2
    for word, want in zip(got, expected):
        np.testing.assert_array_equal(word.numpy(), want.astype(np.int64))
        u = want / 2.0**32  # uniform on [0, 1): mean 1/2, variance 1/12, no visible pattern
        assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    assert abs(np.corrcoef(expected[0].ravel(), expected[1].ravel())[0, 1]) < 0.012  # 4 sigma at 128k pairs
    # Seeds one quantum apart give unrelated words (the per-shower rounds are nonlinear).
    with np.errstate(over="ignore"):
        nearby = noise_words(_NumpyU32(), (a + 1).astype(np.uint32), b.astype(np.uint32),
                             voxel_add.astype(np.uint32), voxel_mul.astype(np.uint32))
    assert abs(np.corrcoef(expected[0].ravel(), nearby[0].ravel())[0, 1]) < 0.012


def test_noise_hash_never_merges_distinct_shower_states():
    # Every step after the seeds is a permutation of uint32, so two showers share their
    # noise only if their seeds collide (a squaring step would merge h and h + 2^31).
    from training.model import _rotate16, _scramble, noise_words

    ops = _NumpyU32()
    x = np.arange(0, 2**32, 1021, dtype=np.uint64).astype(np.uint32)  # 4.2M distinct words
    with np.errstate(over="ignore"):
        assert len(np.unique(_scramble(ops, x, 0x85EBCA6B))) == len(x)
        assert len(np.unique(_rotate16(ops, x))) == len(x)
        # Initial states 5K + 9, that + 2^31 (which a squaring would merge), and neighbours.
        a = np.array([[5], [5], [6], [5]], dtype=np.uint32)
        b = np.array([[9], [9 + 2**31], [9], [10]], dtype=np.uint32)
        words = noise_words(ops, a, b, np.arange(8, dtype=np.uint32), np.arange(8, dtype=np.uint32) * 2 + 1)
    for word in words:
        assert len({tuple(row) for row in word}) == 4


def test_voxel_sampler_keeps_occupancy_mean_and_variance(run):
    # Every layer gets the same nine ring means; per ring, a voxel must be empty with
    # probability exp(-mean / e_s), and keep the mean and the variance kappa * mean.
    from training.train import load_checkpoint, physical_decoder_from_checkpoint

    decoder = physical_decoder_from_checkpoint(load_checkpoint(run / "best.pt"))
    n, n_layers, n_alpha = 3000, decoder.vae.n_layers, decoder.vae.n_alpha
    # Spot energies from 1 to 8 MeV across the layers, below kappa as in the data (a spot
    # energy above kappa would force a variance mean * e_s > kappa * mean).
    decoder.spot_coeffs = torch.zeros(3, n_layers)
    decoder.spot_coeffs[0] = torch.log(torch.linspace(1.0, 8.0, n_layers))
    means = torch.tensor(np.geomspace(0.05, 500.0, decoder.vae.n_radial), dtype=torch.float32)
    ring_mean = means.repeat(n_layers).expand(n, -1)
    c = torch.zeros(n, 1)
    gen = torch.Generator().manual_seed(0)
    pairs = (n, (decoder.vae.n_voxels + 1) // 2)
    uniforms = (1.0 - torch.rand(pairs, generator=gen), torch.rand(pairs, generator=gen),
                torch.rand((n, n_alpha, ring_mean.shape[1]), generator=gen))
    with torch.no_grad():
        total = ring_mean.sum(1, keepdim=True) * n_alpha
        x = decoder.sample_voxels(ring_mean, total, c, uniforms).double().view(n * n_alpha, n_layers, -1)
        spot = decoder.spot_energy(c[:1]).double().view(n_layers, -1)
    empty = (x == 0).double().mean(0)
    np.testing.assert_allclose(empty.numpy(), torch.exp(-means.double() / spot).numpy(), atol=0.01)
    pooled = x.transpose(0, 1).reshape(-1, decoder.vae.n_radial)  # all layers together
    kappa = decoder.noise_kappa
    mean, var = pooled.mean(0).numpy(), pooled.var(0).numpy()
    tolerance = 5 * np.sqrt(kappa * means.numpy() / pooled.shape[0])  # 5 sigma of the sample mean
    assert (np.abs(mean - means.numpy()) < tolerance + 0.005 * means.numpy()).all(), (mean, means)
    dense = means.numpy() >= 5.0
    np.testing.assert_allclose(var[dense], kappa * means.numpy()[dense], rtol=0.08)


def test_fp16_variant_matches_fp32_totals(run, exported, tmp_path):
    path = tmp_path / "tiny-fp16.onnx"
    result = run_training("export", str(run), "-o", str(path), "--version", "0.1.0", "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(path))
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    gemm_weights = [node.input[1] for node in model.graph.node if node.op_type == "Gemm"]
    assert gemm_weights and all(initializers[w] == onnx.TensorProto.FLOAT16 for w in gemm_weights)
    assert path.stat().st_size < exported["path"].stat().st_size
    half = fastsim.load(path, device="cpu", threads=1)
    assert half.spec.training["precision"] == "fp16"
    full = fastsim.load(exported["path"], device="cpu", threads=1)
    energy = np.geomspace(1e3, 1e6, 30, dtype=np.float32)[:, None]
    z = np.random.default_rng(1).standard_normal((30, full.spec.latent_dim)).astype(np.float32)
    np.testing.assert_allclose(half.decode(z, energy).sum(1), full.decode(z, energy).sum(1), rtol=2e-3)


def test_response_fit_recovers_known_mean_and_spread():
    from training.data import ResponseFit

    rng = np.random.default_rng(0)
    c = rng.uniform(-1, 1, 40000)
    mean, sigma = -0.02 - 0.01 * c, np.exp(-3.0 - 1.2 * c)
    fit = ResponseFit.fit(c, mean + sigma * rng.standard_normal(c.size))
    grid = np.linspace(-0.9, 0.9, 7)
    np.testing.assert_allclose(fit.mean(grid), -0.02 - 0.01 * grid, atol=0.004)
    np.testing.assert_allclose(fit.sigma(grid), np.exp(-3.0 - 1.2 * grid), rtol=0.06)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "nope.h5", "--out", "{tmp}/r"], "--data"),
        (["train", "--config", "{tmp}/bad.toml", "--data", "{train}", "--out", "{tmp}/r"], "unknown key(s) ['widht']"),
        (["export", "{tmp}", "-o", "{tmp}/m.onnx", "--version", "0.1.0"], "no checkpoint"),
        (["export", "{run}", "-o", "{tmp}/m.txt", "--version", "0.1.0"], "ending in .onnx"),
        (["export", "{run}", "-o", "{tmp}/m.onnx", "--version", "0.1.0", "--precision", "fp8"], "--precision"),
        (["export", "{run}", "-o", "{tmp}/m.onnx"], "Missing option '--version'"),
        (["export", "{run}", "-o", "{tmp}/m.onnx", "--version", "1.0"], "expected MAJOR.MINOR.PATCH"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, data, run):
    (tmp_path / "bad.toml").write_text("[model]\nwidht = 3\n")
    args = [a.format(tmp=tmp_path, train=data["train"], run=run) for a in args]
    result = run_training(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert message in lines[0]
    assert not list(tmp_path.glob("*.onnx"))  # nothing half-written


def test_metrics_summary_keeps_metrics_baselines_and_sample_sizes(tmp_path):
    from fastsim.geometry import default_geometry
    from fastsim.validation import write_report
    from training.export import metrics_summary
    from training.simulate import simulate

    reference = simulate(300, "10GeV:100GeV", seed=1)
    generated = simulate(200, "10GeV:100GeV", seed=2)
    write_report(generated, reference, tmp_path, default_geometry(), groups=("separation", "energy-bins"), plots=False)
    summary = metrics_summary(tmp_path / "metrics.json")
    assert summary["n_generated"] == 200 and summary["n_reference"] == 300
    entry = summary["separation_power.e_ratio"]
    assert entry["value"] > 0 and entry["reference"] > 0
    assert len(summary["energy_bins"]) >= 1 and "response_ratio" in summary["energy_bins"][0]


def test_export_refuses_to_overwrite_without_force(exported, run, tmp_path):
    path = tmp_path / "tiny.onnx"
    shutil.copy(exported["path"], path)
    before = path.read_bytes()
    result = run_training("export", str(run), "-o", str(path), "--version", "0.2.0")
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert path.read_bytes() == before  # untouched
    forced = run_training("export", str(run), "-o", str(path), "--version", "0.2.0", "--force")
    assert forced.returncode == 0, forced.stderr
    assert fastsim.read_spec(path).version == "0.2.0"
