"""The int8 variant: ONNX Runtime dynamic quantisation of a decoder, with its spec kept."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import fastsim
from fastsim.spec import read_spec
from helpers import ROOT, cli_env
from helpers.decoders import make_decoder

sys.path.insert(0, str(ROOT / "benchmarks"))

from training.quantize import quantize_model


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def mlp_decoder(tmp_path_factory) -> Path:
    """A decoder whose work is in Gemm layers with constant weights, like the exported VAE decoder."""
    from synthetic_decoder import build_decoder

    return build_decoder(tmp_path_factory.mktemp("q") / "calo.onnx", hidden=(48, 64), n_layers=6, n_alpha=4,
                         n_radial=5, seed=3)


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_variant_keeps_the_contract_and_is_close_to_fp32(mlp_decoder, tmp_path, per_channel):
    out = quantize_model(mlp_decoder, tmp_path / "calo-int8.onnx", per_channel=per_channel)
    assert out == tmp_path / "calo-int8.onnx" and out.is_file()
    ops = _ops(out)
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "Gemm" not in ops
    model = onnx.load(str(out))
    assert model.ir_version <= 9
    # Standard ONNX operators only: any ONNX Runtime host (C++, Node) runs it.
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}

    parent, spec = read_spec(mlp_decoder), read_spec(out)
    assert spec.training["precision"] == "int8"
    quant = spec.training["quantization"]
    assert quant["parent"]["sha256"] == hashlib.sha256(mlp_decoder.read_bytes()).hexdigest()
    assert quant["weights"] == ("int8 per-channel" if per_channel else "int8 per-tensor")
    assert spec.metrics == {}  # the parent's metrics do not describe this file
    assert (spec.latent_dim, spec.conditions, spec.output) == (parent.latent_dim, parent.conditions, parent.output)

    fp32 = fastsim.load(mlp_decoder, device="cpu", threads=1)
    int8 = fastsim.load(out, device="cpu", threads=1)
    _, a = fp32.generate(512, seed=4)
    _, b = int8.generate(512, seed=4)
    assert a.shape == b.shape and b.dtype == np.float32 and (b >= 0).all()
    totals = np.abs(b.sum(1) - a.sum(1)) / a.sum(1)
    # Total energy (sigmoid head x E) survives 8-bit weights and activations;
    # a wrong scale or zero point would be off by tens of percent.
    assert np.median(totals) < 0.01 and totals.max() < 0.05
    assert not np.array_equal(a, b)  # and it is a different (quantised) computation


def test_quantize_in_place_leaves_no_partial_files(mlp_decoder, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(mlp_decoder.read_bytes())
    quantize_model(model, model)
    assert "MatMulInteger" in _ops(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert oct(model.stat().st_mode & 0o077) != "0o0"  # a normal file, not mkstemp's private mode


def test_quantize_refuses_an_already_reduced_model(mlp_decoder, tmp_path):
    once = quantize_model(mlp_decoder, tmp_path / "once.onnx")
    with pytest.raises(ValueError, match="fp32 decoder.*MatMulInteger"):
        quantize_model(once, tmp_path / "twice.onnx")
    assert not (tmp_path / "twice.onnx").exists()


def test_quantize_missing_source(tmp_path):
    with pytest.raises(ValueError, match="missing.onnx"):
        quantize_model(tmp_path / "missing.onnx", tmp_path / "out.onnx")


def test_quantize_command_line(tmp_path):
    src = make_decoder(tmp_path / "toy.onnx", latent_dim=4, n_voxels=30, hidden=16)
    out = tmp_path / "toy-int8.onnx"
    proc = subprocess.run([sys.executable, "-m", "training.quantize", str(src), str(out)],
                          capture_output=True, text=True, env=cli_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "int8" in proc.stdout and out.is_file()
    assert read_spec(out).training["precision"] == "int8"
    bad = subprocess.run([sys.executable, "-m", "training.quantize", str(tmp_path / "nope.onnx"), str(out)],
                         capture_output=True, text=True, env=cli_env(), cwd=ROOT)
    assert bad.returncode == 2 and "nope.onnx" in bad.stderr and "Traceback" not in bad.stderr
