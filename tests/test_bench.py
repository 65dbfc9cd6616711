"""Throughput measurement: FLOP counting, limits, sweeps, `fastsim bench`, the torch peer, run_all --smoke.

No timing is asserted: these tests check that the measurements are well
formed and computed from the right quantities (FLOPs from the real shapes,
fractions from the measured limit, the peer computing the same showers).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastsim import bench
from fastsim.errors import FastsimError, ModelError
from fastsim.spec import embed_spec
from helpers import ROOT, cli_env
from helpers.decoders import make_decoder, make_spec

sys.path.insert(0, str(ROOT / "benchmarks"))


def _graph_model(path: Path, nodes, initializers: dict[str, np.ndarray], *, latent_dim: int, n_voxels: int,
                 z_shape=None) -> Path:
    """A contract-shaped model around arbitrary nodes: inputs z, conditions; output showers."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, z_shape or ["N", latent_dim]),
         helper.make_tensor_value_info("conditions", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("showers", TensorProto.FLOAT, ["N", n_voxels])],
        [numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k)
         for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    embed_spec(model, make_spec(latent_dim=latent_dim, n_voxels=n_voxels))
    onnx.save(model, path)
    return path


# --- FLOPs per shower ------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", [0, 32])
@pytest.mark.parametrize("names", [None, {"z": "latent", "conditions": "energy", "showers": "deposits"}])
def test_model_flops_counts_every_matmul_at_its_real_shape(tmp_path, hidden, names):
    latent, voxels = 5, 40
    path = make_decoder(tmp_path / "toy.onnx", latent_dim=latent, n_voxels=voxels, hidden=hidden, names=names)
    expected = 2 * (1 * voxels + (latent * hidden + hidden * voxels if hidden else latent * voxels))
    flops = bench.model_flops(path)
    assert flops["flops_per_shower"] == expected
    assert flops["by_op"] == {"MatMul": expected}
    assert flops["uncounted_nodes"] == [] and flops["per_batch_flops"] == 0


def test_model_flops_gemm_transposed_conv_and_runtime_reshape(tmp_path):
    # z (N, 8) -> Gemm with transB (8 -> 12) -> Reshape to (N, 3, 4) via Shape arithmetic ->
    # Conv1d (3 -> 6 channels, kernel 3, pad 1) -> flatten (N, 24) -> MatMul (24 -> 30).
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["z", "W1", "b1"], ["h1"], transB=1),
        helper.make_node("Shape", ["h1"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "dims"], ["shape3"], axis=0),
        helper.make_node("Reshape", ["h1", "shape3"], ["h3"]),
        helper.make_node("Conv", ["h3", "Wc", "bc"], ["c"], pads=[1, 1]),
        helper.make_node("Reshape", ["c", "flat"], ["cf"]),
        helper.make_node("MatMul", ["cf", "W2"], ["showers"]),
    ]
    init = {"W1": rng.normal(size=(12, 8)), "b1": np.zeros(12), "zero": np.array([0], np.int64),
            "dims": np.array([3, 4], np.int64), "Wc": rng.normal(size=(6, 3, 3)), "bc": np.zeros(6),
            "flat": np.array([-1, 24], np.int64), "W2": rng.normal(size=(24, 30))}
    path = _graph_model(tmp_path / "mixed.onnx", nodes, init, latent_dim=8, n_voxels=30)
    flops = bench.model_flops(path)
    gemm, conv, matmul = 2 * 8 * 12, 2 * (6 * 4) * (3 * 3), 2 * 24 * 30
    assert flops["by_op"] == {"Gemm": gemm, "Conv": conv, "MatMul": matmul}
    assert flops["flops_per_shower"] == gemm + conv + matmul


def test_model_flops_separates_work_done_once_per_batch(tmp_path):
    # A weight-only product (W @ V, the same for every batch) is not per-shower work.
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["Wa", "Wb"], ["W"]), helper.make_node("MatMul", ["z", "W"], ["showers"])]
    path = _graph_model(tmp_path / "once.onnx", nodes, {"Wa": rng.normal(size=(6, 7)), "Wb": rng.normal(size=(7, 9))},
                        latent_dim=6, n_voxels=9)
    flops = bench.model_flops(path)
    assert flops["flops_per_shower"] == 2 * 6 * 9
    assert flops["per_batch_flops"] == 2 * 6 * 7 * 9


def test_model_flops_of_a_file_that_is_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="bad.onnx"):
        bench.model_flops(bad)


# --- limits ----------------------------------------------------------------------------------

def test_sgemm_limit_is_the_best_numpy_kernel_on_the_requested_threads():
    limit = bench.sgemm_limit(1, size=128, repeats=2)
    assert limit["threads"] == 1 and limit["size"] == 128
    rates = {name: v["flop_per_s"] for name, v in limit["variants"].items()}
    assert "default" in rates and all(r > 0 for r in rates.values())
    assert limit["flop_per_s"] == max(rates.values())
    assert limit["variants"]["default"]["blas"].get("threads") in (None, 1)


def test_compute_limit_takes_the_higher_of_numpy_and_onnxruntime():
    limit = bench.compute_limit(1, size=128, repeats=2)
    assert limit["flop_per_s"] == max(limit["numpy"]["flop_per_s"], limit["onnxruntime"]["flop_per_s"])
    with pytest.raises(FastsimError, match="threads"):
        bench.sgemm_limit(0)


# --- sweeps ----------------------------------------------------------------------------------

def test_sweep_points_cover_the_grid_and_fraction_uses_the_given_limit(toy_model):
    flops = bench.model_flops(toy_model)["flops_per_shower"]
    points = bench.sweep(toy_model, batch_sizes=[1, 8, 32], threads=[1, 2], min_time=0.0,
                         limits={1: 1e9, 2: 2e9}, flops_per_shower=flops)
    assert [(p.threads, p.batch_size) for p in points] == [(1, 1), (1, 8), (1, 32), (2, 1), (2, 8), (2, 32)]
    for p in points:
        assert p.showers_per_s > 0 and p.calls >= 3 and p.skipped is None
        assert p.us_per_shower == pytest.approx(1e6 / p.showers_per_s)
        assert p.fraction_of_limit == pytest.approx(p.showers_per_s * flops / {1: 1e9, 2: 2e9}[p.threads])
        assert p.extra["provider"] == "CPUExecutionProvider"


def test_sweep_skips_batches_that_do_not_fit_the_memory_budget(wide_model):
    points = bench.sweep(wide_model, batch_sizes=[4, 1024], threads=[1], min_time=0.0, max_memory=10 * 2**20)
    assert points[0].showers_per_s > 0 and points[0].skipped is None
    assert points[1].showers_per_s is None and "GiB" in points[1].skipped
    assert "skipped" in bench.format_table(points).splitlines()[-1]


def test_sweep_needs_every_precision_variant_beside_the_model(tmp_path, toy_model):
    model = shutil.copyfile(toy_model, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="m-int8.onnx"):
        bench.sweep(model, batch_sizes=[1], threads=[1], precisions=["fp32", "int8"], min_time=0.0)
    shutil.copyfile(toy_model, tmp_path / "m-int8.onnx")
    points = bench.sweep(model, batch_sizes=[2], threads=[1], precisions=["fp32", "int8"], min_time=0.0)
    assert [p.precision for p in points] == ["fp32", "int8"]


@pytest.mark.parametrize("precision, suffix", [("fp32", "m.onnx"), ("int8", "m-int8.onnx"), ("fp16", "m-fp16.onnx")])
def test_variant_path_naming(precision, suffix):
    assert bench.variant_path("/models/m.onnx", precision) == Path("/models") / suffix


def test_variant_path_rejects_unknown_precision():
    with pytest.raises(FastsimError, match="precision.*fp64"):
        bench.variant_path("m.onnx", "fp64")


def test_measure_decode_iobinding_writes_the_decoded_showers(toy_model):
    # The bound-output path must run the model, not time an empty call: the
    # same inputs through run() give the same showers as through the binding.
    import onnxruntime as ort

    from fastsim.spec import read_spec

    spec = read_spec(toy_model)
    session = ort.InferenceSession(str(toy_model), providers=["CPUExecutionProvider"])
    feeds = bench.decode_inputs(spec, 16, seed=0)
    expected = session.run(None, feeds)[0]
    out = np.zeros_like(expected)
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    binding.bind_output("showers", "cpu", 0, np.float32, out.shape, out.ctypes.data)
    session.run_with_iobinding(binding)
    np.testing.assert_array_equal(out, expected)
    figures = bench.measure_decode(session, spec, 16, min_time=0.0)
    assert figures["showers_per_s"] > 0 and figures["calls"] >= 3
    # The "keep on device" path (an OrtValue output) works on the CPU provider too.
    on_device = bench.measure_decode(session, spec, 16, output_device="cpu", min_time=0.0)
    assert on_device["showers_per_s"] > 0


def test_decode_inputs_follow_the_spec_ranges_and_sampling():
    spec = make_spec(latent_dim=3)
    feeds = bench.decode_inputs(spec, 5000, seed=2)
    assert feeds["z"].shape == (5000, 3) and feeds["z"].dtype == np.float32
    energies = feeds["conditions"][:, 0]
    assert energies.min() >= 1_000.0 and energies.max() <= 1_000_000.0
    # Log-uniform over three decades: about a third of the draws per decade.
    assert 0.3 < np.mean(energies < 10_000.0) < 0.37


def test_run_document_is_complete_and_json_ready(toy_model):
    doc = bench.run(toy_model, batch_sizes="2,4", threads="1", min_time=0.0, limit_size=64, generator_n=2000)
    text = json.dumps(doc, allow_nan=False)  # strict JSON: no NaN anywhere
    assert json.loads(text)["kind"] == "fastsim-bench/1"
    assert doc["model"]["flops_per_shower"] == bench.model_flops(toy_model)["flops_per_shower"]
    assert set(doc["limits"]) == {"1"} and doc["limits"]["1"]["flop_per_s"] > 0
    assert [p["batch_size"] for p in doc["points"]] == [2, 4]
    for p in doc["points"]:
        expected = p["showers_per_s"] * doc["model"]["flops_per_shower"] / doc["limits"]["1"]["flop_per_s"]
        assert p["fraction_of_limit"] == pytest.approx(expected)
    assert doc["best"]["showers_per_s"] == max(p["showers_per_s"] for p in doc["points"])
    (rate,) = doc["generator"]
    assert rate["fraction_of_limit"] == pytest.approx(
        rate["showers_per_s"] * doc["model"]["flops_per_shower"] / doc["limits"]["1"]["flop_per_s"])
    for key in ("cpu", "physical_cores", "loadavg", "versions"):
        assert key in doc["machine"]


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_sizes": "0,4"}, "batch sizes"),
    ({"batch_sizes": "a"}, "batch sizes"),
    ({"threads": "-1"}, "threads"),
    ({"precisions": "fp8"}, "precision"),
    ({"device": "tpu"}, "device"),
])
def test_run_rejects_bad_arguments_by_name(toy_model, kwargs, message):
    with pytest.raises(FastsimError, match=message):
        bench.run(toy_model, limit=False, **kwargs)


# --- the CLI -----------------------------------------------------------------------------------

def test_cli_bench_prints_the_table_and_writes_json(run_fastsim, toy_model, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_fastsim("bench", toy_model, "--batch-sizes", "1,8", "--threads", "1,2", "--min-time", "0",
                       "--no-limit", "--generate-n", "3000", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "| precision | threads | batch | showers/s | µs/shower | fraction of limit |" in proc.stdout
    assert "model FLOPs per shower" in proc.stdout
    assert "generate(3000) in memory, 2 thread(s):" in proc.stdout
    doc = json.loads(out.read_text())
    assert [(p["threads"], p["batch_size"]) for p in doc["points"]] == [(1, 1), (1, 8), (2, 1), (2, 8)]
    assert all(p["fraction_of_limit"] is None for p in doc["points"])  # --no-limit: no fraction
    assert [(g["threads"], g["n"]) for g in doc["generator"]] == [(1, 3000), (2, 3000)]
    assert all(g["showers_per_s"] > 0 and g["us_per_shower"] == pytest.approx(1e6 / g["showers_per_s"])
               for g in doc["generator"])


def test_cli_bench_json_with_limit(run_fastsim, toy_model):
    proc = run_fastsim("bench", toy_model, "--batch-sizes", "4", "--threads", "1", "--min-time", "0",
                       "--limit-size", "128", "--generate-n", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["points"][0]["fraction_of_limit"] > 0
    assert doc["limits"]["1"]["source"]
    assert "generator" not in doc  # --generate-n 0 skips it


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "0"], "batch sizes"),
    (["--precision", "int8"], "toy-int8.onnx"),
    (["--threads", "two"], "threads"),
    (["--device", "gpu"], "--device"),
])
def test_cli_bench_bad_input_is_one_line_exit_2(run_fastsim, toy_model, args, message):
    proc = run_fastsim("bench", toy_model, "--no-limit", "--min-time", "0", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_cli_bench_unknown_model(run_fastsim, tmp_path):
    proc = run_fastsim("bench", tmp_path / "missing.onnx", "--no-limit")
    assert proc.returncode == 2 and "missing.onnx" in proc.stderr


# --- the torch peer ------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden, names", [(0, None), (16, None), (16, {"z": "a", "conditions": "b", "showers": "c"})])
def test_torch_peer_computes_the_same_showers_as_onnxruntime(tmp_path, hidden, names):
    from torch_peer import check_parity

    from fastsim.spec import read_spec

    path = make_decoder(tmp_path / "m.onnx", latent_dim=6, n_voxels=50, hidden=hidden, names=names)
    feeds = bench.decode_inputs(read_spec(path), 64, seed=4)
    parity = check_parity(path, feeds)
    assert parity["max_rel_diff_total"] < 1e-5
    assert parity["max_rel_diff_voxel_above_1MeV"] < 1e-4  # float32 rounding, not a different function


def test_torch_peer_matches_the_calochallenge_shaped_decoder(tmp_path):
    # The synthetic decoder has the trained model's op set: Gemm, Softmax, Reshape, Where, ...
    from synthetic_decoder import build_decoder
    from torch_peer import check_parity

    from fastsim.spec import read_spec

    path = build_decoder(tmp_path / "synthetic.onnx", hidden=(32,), n_layers=5, n_alpha=4, n_radial=3)
    parity = check_parity(path, bench.decode_inputs(read_spec(path), 32, seed=5))
    assert parity["max_rel_diff_total"] < 1e-5
    assert parity["max_rel_diff_voxel_above_1MeV"] < 1e-4


def test_torch_peer_runs_uint32_hash_arithmetic_bit_exactly(tmp_path):
    # The bundled model's voxel noise is uint32 arithmetic (Mul/Add wrap modulo 2^32, Div);
    # torch has no uint32 kernels, so the peer must emulate it exactly.
    import torch
    from torch_peer import TorchDecoder

    nodes = [
        helper.make_node("Mul", ["z", "scale"], ["zs"]),
        helper.make_node("Floor", ["zs"], ["zf"]),
        helper.make_node("Cast", ["zf"], ["zi"], to=TensorProto.INT64),
        helper.make_node("Add", ["zi", "offset"], ["zo"]),
        helper.make_node("Cast", ["zo"], ["u"], to=TensorProto.UINT32),
        helper.make_node("Mul", ["u", "big"], ["m"]),          # wraps
        helper.make_node("Add", ["m", "big"], ["a"]),          # wraps
        helper.make_node("BitShift", ["a", "sixteen"], ["s"], direction="RIGHT"),
        helper.make_node("Mul", ["s", "s"], ["sq"]),           # wraps
        helper.make_node("BitShift", ["sq", "three"], ["l"], direction="LEFT"),  # drops high bits
        helper.make_node("Div", ["l", "sixty_k"], ["d"]),      # exact floor division, a right shift
        helper.make_node("Add", ["d", "a"], ["h"]),
        helper.make_node("Cast", ["h"], ["showers"], to=TensorProto.FLOAT),
    ]
    inits = {"scale": np.array(65536.0, np.float32), "offset": np.array(2**24, np.int64),
             "big": np.array(0x85EBCA6B, np.uint32), "sixteen": np.array(16, np.uint32),
             "three": np.array(3, np.uint32), "sixty_k": np.array(65536, np.uint32)}
    path = _graph_model(tmp_path / "hash.onnx", nodes, inits, latent_dim=8, n_voxels=8)
    import onnxruntime as ort

    z = np.random.default_rng(2).standard_normal((32, 8)).astype(np.float32) * 100
    c = np.ones((32, 1), np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"z": z, "conditions": c})[0]
    with torch.inference_mode():
        got = TorchDecoder(path)(torch.from_numpy(z), torch.from_numpy(c)).numpy()
    assert expected.max() > 2**31  # the words use all 32 bits
    np.testing.assert_array_equal(got, expected)


def test_torch_peer_refuses_operators_it_does_not_implement(tmp_path):
    from torch_peer import TorchDecoder

    nodes = [helper.make_node("MatMul", ["z", "W"], ["h"]), helper.make_node("Hardmax", ["h"], ["showers"])]
    path = _graph_model(tmp_path / "odd.onnx", nodes, {"W": np.ones((4, 6))}, latent_dim=4, n_voxels=6)
    with pytest.raises(NotImplementedError, match="Hardmax"):
        TorchDecoder(path)


# --- the whole benchmark in smoke mode -------------------------------------------------------------

@pytest.mark.slow  # every benchmark part in a child process, the torch peer included
def test_run_all_smoke_produces_well_formed_results(wide_model, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), str(wide_model), "--smoke", "--out", str(out),
         "--tmp-dir", str(tmp_path)],
        capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "throughput.json").read_text())
    assert set(doc["parts"]) == {"decode", "torch", "reference", "generate", "tuning"}
    assert not [k for k, v in doc["parts"].items() if "error" in v]
    for part in doc["parts"].values():
        assert part["command"].startswith("python ") and "machine" in part
    h = doc["headline"]
    assert 0 < h["best_fp32"]["fraction_of_limit"] and h["best_fp32"]["showers_per_s"] > 0
    assert h["generator"]["showers_per_s"] > 0 and h["generator"]["n"] == 1024
    assert h["vs_torch"]["ratio_best_vs_best"] > 0 and h["int8"]["speedup_vs_fp32"] > 0
    assert set(h["vs_torch"]["by_threads"]) == {"1"}
    assert set(h["vs_reference"]["speedup_by_threads"]) >= {"1"}
    assert [r["n"] for r in h["generate"]["peak_rss"]] == [1000, 10000]
    assert all(r["peak_rss_mib"] > 10 for r in h["generate"]["peak_rss"])
    assert doc["parts"]["torch"]["parity"]["max_rel_diff_total"] < 1e-4
    assert doc["gpu"].startswith("not measured")
    markdown = (out / "throughput.md").read_text()
    assert "| measurement | figure | target | status |" in markdown and "smoke mode" in markdown
    assert "## Decode throughput against batch size" in markdown
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.json"))  # per-part files are folded in and removed
    assert not list(tmp_path.glob("fastsim-bench-*"))  # the HDF5 scratch folder is cleaned up
    assert math.isfinite(doc["headline"]["generate"]["hdf5_vs_memory"])


# --- the runtime's CPU decode path (micro-batched runs on worker threads) ----------------------------

@pytest.mark.parametrize(("n_voxels", "rows"), [(6480, 64), (368, 1024), (40500, 16), (533, 512), (1, 1024),
                                                  (10**6, 16)])
def test_cpu_run_rows_keep_a_run_near_the_cache_sized_voxel_count(n_voxels, rows):
    from fastsim.generator import CPU_RUN_CELLS, cpu_run_rows
    from fastsim.prior import BLOCK_SIZE

    got = cpu_run_rows(n_voxels)
    assert got == rows
    # A power of two dividing the block (the run grid), at least 16 rows, at most the cache-sized count
    # unless 16 rows already exceed it, and no half of what it could be.
    assert BLOCK_SIZE % got == 0 and got >= 16 and got & (got - 1) == 0
    assert got * n_voxels <= CPU_RUN_CELLS or got == 16
    assert got == BLOCK_SIZE or 2 * got * n_voxels > CPU_RUN_CELLS


@pytest.mark.parametrize(("model", "threads"), [("wide", 1), ("wide", 2), ("wide", 3), ("calo-photon-d1", 2)])
def test_cpu_decode_in_small_runs_on_workers_gives_the_bits_of_one_large_run(wide_model, model, threads):
    import onnxruntime as ort

    import fastsim
    from fastsim.prior import BLOCK_SIZE

    model = wide_model if model == "wide" else model
    gen = fastsim.load(model, device="cpu", threads=threads)
    assert gen.workers == threads and gen.session.get_session_options().intra_op_num_threads == 1
    feeds = bench.decode_inputs(gen.spec, 2 * BLOCK_SIZE, seed=6)
    single = ort.InferenceSession(str(gen.path), providers=["CPUExecutionProvider"])
    expected = single.run(None, feeds)[0]
    got = gen.decode(feeds["z"], feeds["conditions"])
    np.testing.assert_array_equal(got, expected)
    # generate() decodes through the same path: same bits for any batch size.
    _, a = gen.generate(3000, seed=2, batch_size=1000)
    _, b = fastsim.load(model, device="cpu", threads=1).generate(3000, seed=2, batch_size=2048)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("start, n, batch_size", [(0, 4096, 2048), (100, 3000, 1024), (1500, 700, 4000)])
def test_device_batches_are_the_host_batches_on_the_session_device(wide_model, start, n, batch_size):
    # The GPU path's logic (IO binding, fixed-shape runs on the block grid, cutting the
    # edge runs) checked on the CPU provider: same rows, same bits, DLPack out.
    import fastsim
    from fastsim.prior import BLOCK_SIZE

    gen = fastsim.load(wide_model, device="cpu", threads=2)
    assert gen.device_type == "cpu"
    _, expected = gen.generate(n, seed=8, start=start)
    got_conditions, got, sizes = [], [], []
    for conditions, showers in gen.iter_device_batches(n, seed=8, start=start, batch_size=batch_size):
        assert showers.device_name() == "cpu" and showers.shape()[1] == gen.spec.n_voxels
        array = np.from_dlpack(showers)  # zero-copy view through DLPack
        assert len(conditions) == len(array)
        got.append(array)
        sizes.append(len(array))
    np.testing.assert_array_equal(np.concatenate(got), expected)
    run_rows = -(-batch_size // BLOCK_SIZE) * BLOCK_SIZE
    assert all(size == run_rows for size in sizes[1:-1])  # interior batches: one fixed shape


def test_torch_peer_handles_omitted_optional_inputs(tmp_path):
    # Exported graphs write Clip(x, "", max): an optional input left out by an empty name.
    from torch_peer import check_parity

    from fastsim.spec import read_spec

    # Also ConstantOfShape with its value in raw_data, as torch.onnx.export writes it.
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], np.array([1.5], np.float32).tobytes(), raw=True)
    nodes = [helper.make_node("MatMul", ["z", "W"], ["h"]), helper.make_node("Exp", ["h"], ["e"]),
             helper.make_node("Clip", ["e", "", "hi"], ["c"]), helper.make_node("Shape", ["c"], ["shape"]),
             helper.make_node("ConstantOfShape", ["shape"], ["ones"], value=one),
             helper.make_node("Mul", ["c", "ones"], ["c2"]), helper.make_node("Mul", ["c2", "conditions"], ["showers"])]
    path = _graph_model(tmp_path / "clip.onnx", nodes, {"W": np.linspace(-1, 1, 24).reshape(4, 6),
                                                         "hi": np.array(2.0, np.float32)}, latent_dim=4, n_voxels=6)
    parity = check_parity(path, bench.decode_inputs(read_spec(path), 16, seed=1))
    assert parity["max_rel_diff_total"] < 1e-6


def test_profile_shares_add_up_and_name_the_matrix_products(toy_model, tmp_path):
    import bench_profile

    doc = bench_profile.measure(str(toy_model), rows=8, runs=3, top=5)
    shares = [row["share"] for row in doc["op_types"]]
    assert abs(sum(shares) - 1.0) < 0.01 and shares == sorted(shares, reverse=True)
    ops = {row["op"] for row in doc["op_types"]}
    assert ops & bench_profile.MATRIX_OPS and 0.0 < doc["matrix_share"] <= 1.0
    assert doc["nodes"] >= len(doc["top_nodes"]) > 0 and doc["us_per_shower_profiled"] > 0
    markdown = bench_profile.render_markdown(doc)
    assert "| operator | share of kernel time | nodes |" in markdown


def test_zoo_benchmark_times_every_bundled_model_against_the_default(tmp_path):
    from fastsim.generator import cpu_run_rows
    from fastsim.models import DEFAULT_MODEL, bundled_models

    out = tmp_path / "zoo.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_zoo", "--smoke", "--json-out", str(out),
                           "--md-out", str(tmp_path / "zoo.md")],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    rows = {row["model"]: row for row in result["results"]}
    assert set(rows) == {m.name for m in bundled_models()}
    assert rows[DEFAULT_MODEL]["ratio_to_default"] == 1.0
    for row in rows.values():
        assert row["ns_per_voxel"] > 0
        assert row["us_per_shower"] * 1000 == pytest.approx(row["ns_per_voxel"] * row["n_voxels"], rel=1e-9)
        assert row["rows_per_call"] == cpu_run_rows(row["n_voxels"])  # each at the runtime's own run size
    assert "ns / voxel / core" in (tmp_path / "zoo.md").read_text()


def test_run_size_comparison_decodes_the_same_showers_at_each_size(toy_model):
    from benchmarks.bench_zoo import compare_run_sizes

    result = compare_run_sizes([str(toy_model)], [16, 64], rounds=2, min_time=0.0)
    assert result["showers_per_call"] == 64
    timings = result["us_per_shower"][str(toy_model)]
    assert set(timings) == {16, 64} and all(us > 0 for us in timings.values())


def test_symmetric_bound_keeps_rings_and_conditions_and_shuffles_sectors(tmp_path):
    import h5py

    from benchmarks.bench_symmetric_bound import symmetrise
    from helpers.distortions import small_geometry

    geometry = small_geometry()
    rng = np.random.default_rng(3)
    showers = rng.gamma(0.5, 2.0, (50, geometry.n_voxels)).astype(np.float32)
    source, out = tmp_path / "ref.h5", tmp_path / "sym.h5"
    with h5py.File(source, "w") as f:
        f["incident_energies"] = np.full((50, 1), 1e4)
        f["incident_theta"] = np.linspace(0, 1, 50)[:, None]
        f["showers"] = showers
    assert symmetrise(source, out, geometry, chunk=16) == 50
    with h5py.File(out) as f:
        shuffled = f["showers"][:]
        np.testing.assert_array_equal(f["incident_theta"][:], np.linspace(0, 1, 50)[:, None])
    a, b = geometry.reshape(showers), geometry.reshape(shuffled)
    np.testing.assert_allclose(np.sort(b, axis=2), np.sort(a, axis=2))  # the same values in each ring
    assert not np.array_equal(a, b)
