"""The ``fastsim`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastsim
from fastsim.io import find_partial, partial_progress, read_output
from fastsim.models import bundled_models
from helpers import cli_env
from helpers.decoders import make_decoder, make_spec


def test_version_and_help(run_fastsim):
    version = run_fastsim("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"fastsim {fastsim.__version__}"
    top = run_fastsim("--help")
    assert top.returncode == 0
    for command in ("generate", "info", "models"):
        assert command in top.stdout
    generate = run_fastsim("generate", "--help")
    for option in ("--energy", "--model", "--spec", "--seed", "--batch-size", "--device", "--threads",
                   "--format", "--compression", "--resume", "--force", "--quiet", "--json", "$ fastsim generate"):
        assert option in generate.stdout


def test_generate_json_summary_and_file_match_the_api(run_fastsim, toy_model, tmp_path):
    out = tmp_path / "showers.h5"
    result = run_fastsim("generate", "-n", 3000, "--energy", "10GeV:1TeV", "--model", toy_model, "--seed", 7,
                         "--batch-size", 500, "--threads", 1, "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n"] == 3000 and summary["seed"] == 7 and summary["output"] == str(out)
    assert summary["provider"] == "CPUExecutionProvider" and summary["model"] == "toy-decoder"
    assert summary["showers_per_s"] > 0 and summary["seconds"] > 0
    energies, showers = read_output(out)
    expected = fastsim.load(toy_model, device="cpu").generate(3000, "10GeV:1TeV", seed=7)
    assert np.array_equal(energies, expected[0]) and np.array_equal(showers, expected[1])


def test_summary_line_and_no_progress_bar_without_a_terminal(run_fastsim, toy_model, tmp_path):
    result = run_fastsim("generate", "-n", 50, "--model", toy_model, "-o", tmp_path / "a.npz")
    assert result.returncode == 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrote 50 showers to ")
    quiet = run_fastsim("generate", "-n", 50, "--model", toy_model, "-o", tmp_path / "b.npz", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_energy_file_sets_n(run_fastsim, toy_model, tmp_path):
    energies = np.array([1e3, 5e4, 2.5e5, 1e6])
    np.save(tmp_path / "e.npy", energies)
    result = run_fastsim("generate", "--energy", tmp_path / "e.npy", "--model", toy_model,
                         "-o", tmp_path / "o.h5", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n"] == 4
    assert np.array_equal(read_output(tmp_path / "o.h5")[0][:, 0], energies.astype(np.float32))


def test_models_made_elsewhere_via_sidecar_or_spec_option(run_fastsim, toy_model, tmp_path):
    names = {"z": "latent", "conditions": "energy", "showers": "deposits"}
    foreign = make_decoder(tmp_path / "foreign.onnx", names=names, sidecar=True)
    bare = make_decoder(tmp_path / "bare.onnx", embed=False)
    spec_file = tmp_path / "bare-spec.json"
    spec_file.write_text(make_spec().to_json())
    expected = fastsim.load(toy_model, device="cpu").generate(200, "20GeV:200GeV", seed=4)[1]
    for args in (["--model", foreign], ["--model", bare, "--spec", spec_file]):
        out = tmp_path / f"{args[1].stem}.h5"
        result = run_fastsim("generate", "-n", 200, "--energy", "20GeV:200GeV", "--seed", 4, "-o", out, *args)
        assert result.returncode == 0, result.stderr
        assert np.array_equal(read_output(out)[1], expected)
    missing = run_fastsim("generate", "-n", 5, "--model", bare, "-o", tmp_path / "x.h5")
    assert missing.returncode == 2 and "--spec FILE" in missing.stderr


def test_info_shows_spec_tensors_and_providers(run_fastsim, toy_model):
    result = run_fastsim("info", toy_model, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["spec"]["latent_dim"] == 4 and doc["spec"]["output"]["n_voxels"] == 24
    assert [i["name"] for i in doc["inputs"]] == ["z", "conditions"]
    assert doc["outputs"][0]["name"] == "showers" and "CPUExecutionProvider" in doc["providers"]
    text = run_fastsim("info", toy_model)
    assert text.returncode == 0
    assert "toy-decoder 0.0.1" in text.stdout and "incident_energy [1000, 1e+06] MeV, log-uniform" in text.stdout
    assert "providers available:" in text.stdout


def test_models_lists_models_on_the_search_path(run_fastsim, tmp_path):
    make_decoder(tmp_path / "calo-electron.onnx", name="calo-electron")
    (tmp_path / "calo-electron.md").write_text("# card")
    result = run_fastsim("models", "--json", env=cli_env(FASTSIM_MODEL_PATH=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["calo-electron"]["default"] and rows["calo-electron"]["card"].endswith("calo-electron.md")
    text = run_fastsim("models", env=cli_env(FASTSIM_MODEL_PATH=str(tmp_path)))
    assert "calo-electron (default)" in text.stdout
    gen = run_fastsim("generate", "-n", 5, "-o", tmp_path / "d.h5", env=cli_env(FASTSIM_MODEL_PATH=str(tmp_path)))
    assert gen.returncode == 0, gen.stderr


def test_default_model_or_a_clear_message(run_fastsim, tmp_path):
    result = run_fastsim("generate", "-n", 5, "--energy", "1GeV:1TeV", "-o", tmp_path / "s.h5", "--force")
    if any(m.name == "calo-electron" for m in bundled_models()):
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 2
        assert result.stderr.startswith("fastsim: error: model: no bundled model is installed")
        assert not (tmp_path / "s.h5").exists()


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "text.onnx").write_text("definitely not a protobuf")
    (folder / "broken.json").write_text("{not json")
    make_decoder(folder / "mismatch.onnx", spec=make_spec(latent_dim=6, n_voxels=24))
    gev = {"name": "incident_energy", "unit": "GeV", "min": 1.0, "max": 1000.0, "sampling": "log-uniform"}
    make_decoder(folder / "gev.onnx", spec=make_spec(conditions=[gev]))
    (folder / "existing.h5").write_bytes(b"keep me")
    (folder / "plainfile").write_text("")
    return folder


BAD_INPUTS = [
    # (arguments after `generate`, words the one-line message must contain)
    (["--model", "no-such-model"], "model"),
    (["--model", "{bad}/absent.onnx"], "does not exist"),
    (["--model", "{bad}/text.onnx"], "not an ONNX model"),
    (["--model", "{bad}/mismatch.onnx"], "spec latent_dim is 6"),
    (["--model", "{toy}", "--spec", "{bad}/broken.json"], "not valid JSON"),
    (["--model", "{toy}", "--spec", "{bad}/nope.json"], "cannot be read"),
    (["--model", "{toy}", "-n", "0"], "'-n' / '--n-showers': 0 is not in the range x>=1"),
    (["--model", "{toy}", "-n", "-5"], "'-n' / '--n-showers': -5 is not in the range x>=1"),
    (["--model", "{toy}", "-n", "ten"], "'ten' is not a valid integer"),
    (["--model", "{toy}", "--energy", "50 parsecs"], "--energy: incident_energy: expected a number with an optional"),
    (["--model", "{toy}", "--energy", "1GeV:"], "expected a number"),
    (["--model", "{toy}", "--energy", "nan"], "finite"),
    (["--model", "{toy}", "--energy", "-5GeV"], "must be > 0"),
    (["--model", "{toy}", "--energy", "5TeV"], "outside the model's training range"),
    (["--model", "{toy}", "--energy", "{bad}/missing.npy"], "does not exist"),
    (["--model", "{toy}", "--device", "cuda"], "available providers"),
    (["--model", "{toy}", "--device", "gpu"], "'gpu' is not one of"),
    (["--model", "{toy}", "--shards", "1", "--device", "cuda"], "available providers"),
    (["--model", "{toy}", "--seed", str(2**64)], "'--seed': 18446744073709551616 is not in the range"),
    (["--model", "{bad}/gev.onnx", "--energy", "50GeV"], "store energies in MeV"),
    (["--model", "{toy}", "--compression", "zstd"], "compression"),
    (["--model", "{toy}", "--resume"], "no partial run of"),
    (["--model", "{toy}", "-o", "{bad}/no-such-dir/out.h5"], "does not exist"),
    (["--model", "{toy}", "-o", "{bad}/plainfile/out.h5"], "is not a folder"),
    (["--model", "{toy}", "-o", "{bad}/existing.h5"], "already exists; pass --force"),
    (["--model", "{toy}", "-o", "{bad}/out.txt"], "cannot tell the format"),
]


@pytest.mark.parametrize(("args", "words"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_leaves_no_file(run_fastsim, toy_model, bad_models, tmp_path,
                                                           args, words):
    import onnxruntime as ort

    if "cuda" in args and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA-enabled onnxruntime is installed")
    args = [a.format(bad=bad_models, toy=toy_model) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.h5")]
    if "-n" not in args:
        args += ["-n", "10"]
    before = sorted(p.name for p in bad_models.iterdir())
    result = run_fastsim("generate", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fastsim: error: ") and words in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no output and no partial file
    assert sorted(p.name for p in bad_models.iterdir()) == before
    if "existing.h5" in " ".join(args):
        assert (bad_models / "existing.h5").read_bytes() == b"keep me"


def test_n_is_required_without_an_energy_file(run_fastsim, toy_model, tmp_path):
    result = run_fastsim("generate", "--model", toy_model, "--energy", "50GeV", "-o", tmp_path / "o.h5")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "-n/--n-showers is required unless --energy FILE" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_info_of_a_bad_model_is_one_line(run_fastsim, bad_models):
    result = run_fastsim("info", bad_models / "text.onnx")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not an ONNX model" in result.stderr


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """A decoder for a run that is killed midway (small batches into compressed chunks keep it busy)."""
    return make_decoder(tmp_path_factory.mktemp("slow") / "slow.onnx", latent_dim=8, n_voxels=256, hidden=32)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_resume_after_an_interrupted_run_is_bitwise_identical(slow_model, tmp_path, run_fastsim, stop):
    out = tmp_path / "killed.h5"
    n = 24_000  # long enough that the signal lands mid-run on a loaded machine
    common = ["--model", str(slow_model), "--energy", "1GeV:1TeV", "--seed", "21", "-n", str(n),
              "--compression", "gzip:1", "-o", str(out)]
    # At the lowest priority, so that on a loaded machine this test's polling still gets to run.
    process = subprocess.Popen(["nice", "-n", "19", sys.executable, "-m", "fastsim.cli", "generate", *common,
                                "--batch-size", "64", "--threads", "1", "--quiet"],
                               env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               # A shell starts background jobs with SIGINT ignored, and the child would
                               # inherit that: give it the default, as a terminal's Ctrl-C finds it.
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240  # a nice-19 process on a loaded 2-core machine may wait long
    try:
        # Let the run go on in short steps, held (SIGSTOP) while its progress is read, so that
        # the signal lands mid-run however loaded the machine is.
        while True:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the run made no progress"
            process.send_signal(signal.SIGSTOP)
            if partial_progress(out) >= 640:
                break
            process.send_signal(signal.SIGCONT)
            time.sleep(0.005)
    finally:
        process.send_signal(stop)
        process.send_signal(signal.SIGCONT)
        _, stderr = process.communicate()
    if stop == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:  # Ctrl-C: a clean stop with a hint, the partial run kept
        assert process.returncode == 130
        assert stderr.decode().strip() == "fastsim: interrupted; run the same command with --resume to continue"
    done = partial_progress(out)
    assert 640 <= done < n and done % 64 == 0 and not out.exists()

    # Refusals leave the partial run alone.
    different = run_fastsim("generate", *[("22" if a == "21" else a) for a in common], "--resume")
    assert different.returncode == 2 and "seed is 21 in the file, 22 now" in different.stderr
    again = run_fastsim("generate", *common)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert partial_progress(out) == done

    resumed = run_fastsim("generate", *common, "--batch-size", "4096", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == done and summary["generated"] == n - done
    assert out.is_file() and find_partial(out) is None

    reference = tmp_path / "reference.h5"
    full = run_fastsim("generate", *common[:-1], str(reference), "--batch-size", "3000", "--quiet")
    assert full.returncode == 0, full.stderr
    got, expected = read_output(out), read_output(reference)
    for a, b in zip(got, expected, strict=False):
        assert a.shape == b.shape and a.tobytes() == b.tobytes()
