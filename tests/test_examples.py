"""The embedding examples (examples/cpp, examples/node) against the Python runtime.

Each example is built/installed once per session, fed the same latents and
conditions as ``Generator.decode`` (through files, so the random streams need
not match) and must agree within 1e-5 relative. They must also read the spec
the way fastsim/spec.py does and fail with one clear line on bad input.
Skipped, with the reason, only where a compiler, cmake, node/npm or the
network to the Debian mirror / npm registry is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastsim
from fastsim.errors import SpecError
from fastsim.geometry import CylindricalGeometry, Layer, default_geometry
from fastsim.spec import ConditionSpec, read_spec
from helpers.decoders import ENERGY_CONDITION, RESPONSE, make_decoder, make_spec

# Every test here needs the C++ demo built or onnxruntime-node installed.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CPP_DIR = ROOT / "examples" / "cpp"
NODE_DIR = ROOT / "examples" / "node"
BUNDLED = ROOT / "exported" / "calo-electron.onnx"
RTOL = 1e-5

ANGLE = ConditionSpec("theta", "deg", 10.0, 80.0, "uniform")
LOW_ENERGY = ConditionSpec("incident_energy", "MeV", 1_000.0, 50_000.0, "log-uniform")

# Contract variants (make_decoder arguments); every host must agree with Python on each.
MODELS = {
    "toy": dict(latent_dim=4, n_voxels=24, hidden=8),
    "two-conditions-renamed": dict(latent_dim=6, n_voxels=90, hidden=16, conditions=[ENERGY_CONDITION, ANGLE],
                                   names={"z": "latent", "conditions": "cond", "showers": "energies"}),
    "sidecar-spec": dict(latent_dim=3, n_voxels=10, embed=False, sidecar=True),
    # Up to 50 GeV, so that no voxel overflows float16 (max 65504).
    "fp16-output": dict(latent_dim=4, n_voxels=24, hidden=8, output_dtype="float16", conditions=[LOW_ENERGY]),
    "bundled": None,
}


def _env_without_library_path() -> dict:
    """The binaries must run from their rpath alone."""
    return {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120,
                          env=_env_without_library_path(), **kwargs)


@pytest.fixture(scope="session")
def cpp_demo(tmp_path_factory) -> Path:
    """examples/cpp/build.sh into a session build dir (headers cached in examples/cpp/third_party)."""
    missing = [tool for tool in ("cmake", "c++", "apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"C++ example needs {', '.join(missing)} on PATH")
    build_dir = tmp_path_factory.mktemp("cpp-build")
    result = subprocess.run([str(CPP_DIR / "build.sh"), str(build_dir)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHON": sys.executable})
    if result.returncode == 75:
        pytest.skip("C++ example: no network to the Debian mirror for the ONNX Runtime headers: "
                    + result.stderr.strip().splitlines()[-1])
    if result.returncode != 0:
        pytest.fail(f"examples/cpp/build.sh failed ({result.returncode}):\n{result.stderr[-4000:]}")
    binary = Path(result.stdout.strip().splitlines()[-1])
    assert binary.is_file()
    return binary


@pytest.fixture(scope="session")
def node_script() -> Path:
    """examples/node with onnxruntime-node installed by `npm install --ignore-scripts`."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Node example needs {', '.join(missing)} on PATH")
    if not (NODE_DIR / "node_modules" / "onnxruntime-node" / "package.json").is_file():
        offline = "Node example: no network to the npm registry for onnxruntime-node"
        try:
            result = subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund",
                                     "--fetch-timeout=30000", "--fetch-retries=1"],
                                    cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip(offline + " (npm install timed out)")
        if result.returncode != 0:
            network = re.search(r"\b(ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH)\b",
                                result.stderr)
            if network:
                pytest.skip(f"{offline} ({network.group(1)})")
            pytest.fail(f"npm install failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return NODE_DIR / "generate.mjs"


@pytest.fixture(scope="session", params=list(MODELS))
def model(request, tmp_path_factory) -> Path:
    if MODELS[request.param] is None:
        if not BUNDLED.is_file():
            pytest.skip(f"bundled model {BUNDLED.relative_to(ROOT)} not exported yet")
        return BUNDLED
    return make_decoder(tmp_path_factory.mktemp("models") / f"{request.param}.onnx", seed=3,
                        name=request.param, **MODELS[request.param])


def _inputs(spec, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Latents and in-range conditions, drawn independently of every host's own streams."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, spec.latent_dim), dtype=np.float32)
    columns = []
    for cond in spec.conditions:
        if cond.sampling == "log-uniform":
            columns.append(np.exp(rng.uniform(np.log(cond.min), np.log(cond.max), n)))
        else:
            columns.append(rng.uniform(cond.min, cond.max, n))
    conditions = np.stack(columns, axis=1).astype(np.float32)
    conditions[0] = [cond.min for cond in spec.conditions]  # the range ends are accepted
    conditions[-1] = [cond.max for cond in spec.conditions]
    return z, conditions


def _write_inputs(tmp_path: Path, z: np.ndarray, conditions: np.ndarray) -> tuple[Path, Path]:
    z_file, c_file = tmp_path / "z.f32", tmp_path / "conditions.f32"
    z.astype("<f4").tofile(z_file)
    conditions.astype("<f4").tofile(c_file)
    return z_file, c_file


def _assert_same_showers(host: np.ndarray, reference: np.ndarray) -> None:
    reference = reference.astype(np.float32)
    assert host.shape == reference.shape
    assert np.all(np.isfinite(host)) and np.all(host >= 0)
    assert reference.sum() > 0  # the comparison is not between two empty outputs
    np.testing.assert_allclose(host, reference, rtol=RTOL, atol=0)


# --- parity with Generator.decode --------------------------------------------------------

@pytest.mark.parametrize("batch", [50, 4096])
def test_cpp_matches_python_decode(cpp_demo, model, batch, tmp_path):
    generator = fastsim.load(model, device="cpu", threads=1)
    n = 16 if model == BUNDLED else 123  # 123 = 50 + 50 + 23: uneven final batch
    z, conditions = _inputs(generator.spec, n, seed=11)
    z_file, c_file = _write_inputs(tmp_path, z, conditions)
    out = tmp_path / "showers.bin"
    result = _run([cpp_demo, model, "--latents", z_file, "--conditions", c_file, "--batch", batch,
                   "--threads", 1, "--out", out])
    assert result.returncode == 0, result.stderr
    showers = np.fromfile(out, dtype="<f4").reshape(n, generator.spec.n_voxels)
    _assert_same_showers(showers, generator.decode(z, conditions))
    assert not Path(f"{out}.tmp").exists()


def test_node_matches_python_decode(node_script, model, tmp_path):
    generator = fastsim.load(model, device="cpu", threads=1)
    n = 16 if model == BUNDLED else 77
    z, conditions = _inputs(generator.spec, n, seed=12)
    z_file, c_file = _write_inputs(tmp_path, z, conditions)
    out = tmp_path / "showers.bin"
    result = _run(["node", node_script, model, "--latents", z_file, "--conditions", c_file, "--threads", 1,
                   "--out", out])
    assert result.returncode == 0, result.stderr
    showers = np.fromfile(out, dtype="<f4").reshape(n, generator.spec.n_voxels)
    _assert_same_showers(showers, generator.decode(z, conditions))


def test_cpp_reads_the_spec_like_python(cpp_demo, model):
    spec = read_spec(model)
    result = _run([cpp_demo, model, "--info"])
    assert result.returncode == 0, result.stderr
    info = result.stdout
    assert f"name        {spec.name} {spec.version} (fastsim-decoder/1)" in info
    assert f"latent_dim  {spec.latent_dim} " in info
    assert f"output      {spec.io_names['showers']}: {spec.n_voxels} voxels, MeV, {spec.output.dtype}" in info
    lines = [line for line in info.splitlines() if line.startswith("condition ")]
    assert len(lines) == spec.n_conditions
    for line, cond in zip(lines, spec.conditions):
        name, bounds = line.split()[1], line.split("[")[1].split("]")[0]
        assert name == cond.name
        assert [float(b) for b in bounds.split(",")] == pytest.approx([cond.min, cond.max], rel=1e-5)
    assert "CPUExecutionProvider" in info


# --- the C++ demo drawing its own latents --------------------------------------------------

@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_decoder(tmp_path_factory.mktemp("toy") / "toy.onnx", latent_dim=4, n_voxels=24, hidden=8)


def test_cpp_generate_is_reproducible_and_independent_of_batch(cpp_demo, toy, tmp_path):
    def generate(seed, batch):
        out = tmp_path / f"s{seed}-b{batch}.bin"
        result = _run([cpp_demo, toy, "--n", 300, "--energy", "1GeV:1TeV", "--seed", seed, "--batch", batch,
                       "--threads", 1, "--out", out])
        assert result.returncode == 0, result.stderr
        return np.fromfile(out, dtype="<f4").reshape(300, 24)

    first = generate(seed=5, batch=4096)
    assert np.array_equal(first, generate(seed=5, batch=4096))
    # Same latents and energies; only the kernels' batch-dependent rounding may differ.
    np.testing.assert_allclose(generate(seed=5, batch=7), first, rtol=RTOL)
    assert np.abs(generate(seed=6, batch=4096) - first).max() > 0.1 * first.max()
    totals = first.sum(axis=1)  # the toy deposits 95% of E: 1 GeV..1 TeV gives 950 MeV..950 GeV
    assert totals.min() >= 0.9 * RESPONSE * 1e3 and totals.max() <= RESPONSE * 1e6
    assert totals.max() / totals.min() > 10  # energies really span the range


@pytest.mark.parametrize("energy, mev", [("50000", 5e4), ("50GeV", 5e4), ("1TeV", 1e6)])
def test_cpp_energy_is_in_mev_and_output_in_mev(cpp_demo, toy, tmp_path, energy, mev):
    out = tmp_path / "showers.bin"
    result = _run([cpp_demo, toy, "--n", 40, "--energy", energy, "--batch", 16, "--json", "--out", out])
    assert result.returncode == 0, result.stderr
    showers = np.fromfile(out, dtype="<f4").reshape(40, 24)
    # The toy decoder deposits RESPONSE * E, minus voxels under its 1 keV threshold.
    np.testing.assert_allclose(showers.sum(axis=1), RESPONSE * mev, rtol=1e-4)
    summary = json.loads(result.stdout)
    assert summary["n"] == 40 and summary["provider"] == "CPUExecutionProvider"
    assert summary["mean_total_energy_mev"] == pytest.approx(RESPONSE * mev, rel=1e-4)


# --- failures: one line, exit status 2, no output file ------------------------------------

def _assert_clean_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def broken(tmp_path_factory, toy) -> dict:
    root = tmp_path_factory.mktemp("broken")
    wrong_width = make_spec(latent_dim=5, n_voxels=24)  # graph has latent_dim 4
    return {
        "no-spec": make_decoder(root / "nospec.onnx", latent_dim=4, n_voxels=24, embed=False),
        "wrong-width": make_decoder(root / "wrong.onnx", latent_dim=4, n_voxels=24, spec=wrong_width),
        "not-onnx": (root / "garbage.onnx", root.joinpath("garbage.onnx").write_text("not a model"))[0],
    }


@pytest.mark.parametrize("case, arguments, needles", [
    ("missing", ["{missing}", "--energy", "5GeV"], ["does not exist", "missing.onnx"]),
    ("not-onnx", ["{not-onnx}", "--energy", "5GeV"], ["cannot be loaded by ONNX Runtime", "garbage.onnx"]),
    ("no-spec", ["{no-spec}", "--energy", "5GeV"], ["fastsim.spec", "nospec.onnx.json"]),
    ("wrong-width", ["{wrong-width}", "--energy", "5GeV"], ["does not match its spec", "latent_dim is 5"]),
    ("above-range", ["{toy}", "--energy", "5TeV"], ["incident_energy", "[1000, 1e+06] MeV", "5e+06"]),
    ("below-range", ["{toy}", "--energy", "10"], ["incident_energy", "got 10"]),
    ("no-energy", ["{toy}"], ["incident_energy", "--energy"]),
    ("bad-energy", ["{toy}", "--energy", "fifty"], ["--energy", "fifty"]),
    ("unknown-condition", ["{toy}", "--energy", "5GeV", "--condition", "phi=1"], ["'phi'", "incident_energy"]),
    ("zero-batch", ["{toy}", "--energy", "5GeV", "--batch", "0"], ["--batch", "positive"]),
    ("cuda-not-built", ["{toy}", "--energy", "5GeV", "--device", "cuda"], ["cuda", "FASTSIM_WITH_CUDA"]),
    ("unknown-option", ["{toy}", "--energy", "5GeV", "--bogus"], ["--bogus"]),
])
def test_cpp_fails_cleanly(cpp_demo, toy, broken, tmp_path, case, arguments, needles):
    paths = {"toy": toy, "missing": tmp_path / "missing.onnx", **broken}
    out = tmp_path / "showers.bin"
    result = _run([cpp_demo, *(a.format(**paths) for a in arguments), "--n", 10, "--out", out])
    _assert_clean_failure(result, *needles)
    assert not out.exists() and not Path(f"{out}.tmp").exists()


def test_cpp_rejects_input_files_of_the_wrong_size(cpp_demo, toy, tmp_path):
    z_file, c_file = _write_inputs(tmp_path, np.zeros((10, 3), np.float32), np.full((10, 1), 5e4, np.float32))
    result = _run([cpp_demo, toy, "--latents", z_file, "--conditions", c_file])
    _assert_clean_failure(result, "--latents", "rows of 4 float32 values")


@pytest.mark.parametrize("field, value, needle", [
    ("format", "fastsim-decoder/2", "format"),
    ("latent_dim", 0, "latent_dim"),
    ("conditions", [], "conditions"),
    ("conditions", [{"name": "incident_energy", "unit": "MeV", "min": 10.0, "max": 1.0}], "min/max"),
    ("conditions", [{"name": "incident_energy", "unit": "MeV", "min": 1.0, "max": 9.0, "sampling": "normal"}],
     "sampling"),
    ("output", {"name": "showers", "unit": "MeV", "n_voxels": 24, "dtype": "int8"}, "output.dtype"),
    ("prior", {"kind": "uniform"}, "prior.kind"),
])
def test_cpp_rejects_a_bad_spec_like_python(cpp_demo, tmp_path, field, value, needle):
    model = make_decoder(tmp_path / "m.onnx", latent_dim=4, n_voxels=24, embed=False)
    doc = make_spec(latent_dim=4, n_voxels=24).to_dict()
    doc[field] = value
    sidecar = Path(f"{model}.json")
    sidecar.write_text(json.dumps(doc))
    with pytest.raises(SpecError, match=re.escape(needle)):
        read_spec(model)
    result = _run([cpp_demo, model, "--energy", "5GeV"])
    _assert_clean_failure(result, "spec: ", needle, "m.onnx.json")


@pytest.mark.parametrize("case, arguments, needles", [
    ("missing", ["{missing}", "--energy", "5GeV"], ["does not exist", "missing.onnx"]),
    ("no-spec", ["{no-spec}", "--energy", "5GeV"], ["fastsim.spec", "nospec.onnx.json"]),
    ("above-range", ["{toy}", "--energy", "5TeV"], ["incident_energy", "[1000, 1000000] MeV"]),
    ("bad-energy", ["{toy}", "--energy", "fifty"], ["--energy", "fifty"]),
])
def test_node_fails_cleanly(node_script, toy, broken, tmp_path, case, arguments, needles):
    paths = {"toy": toy, "missing": tmp_path / "missing.onnx", **broken}
    out = tmp_path / "showers.bin"
    result = _run(["node", node_script, *(a.format(**paths) for a in arguments), "--n", 10, "--out", out])
    _assert_clean_failure(result, *needles)
    assert not out.exists()


# --- voxel positions for a Geant4 host ------------------------------------------------------

@pytest.mark.parametrize("geometry", [
    default_geometry(),
    CylindricalGeometry(layers=(Layer((0.0, 2.0, 5.0), 4), Layer((0.0, 1.0, 3.0, 6.0), 2)), layer_thickness_mm=5.0),
], ids=["dataset-2", "non-uniform"])
def test_cpp_voxel_centres_match_python_geometry(cpp_demo, tmp_path, geometry):
    model = make_decoder(tmp_path / "geo.onnx", latent_dim=4, n_voxels=geometry.n_voxels,
                         geometry=geometry.to_dict())
    out = tmp_path / "centres.f64"
    result = _run([cpp_demo, model, "--voxel-centres", out])
    assert result.returncode == 0, result.stderr
    depth, r, alpha = np.fromfile(out, dtype="<f8").reshape(geometry.n_voxels, 3).T
    _, _, r_ref, alpha_ref, layer = geometry.voxel_centres()
    np.testing.assert_allclose(r, r_ref, rtol=1e-12)
    np.testing.assert_allclose(alpha, alpha_ref, rtol=1e-12)
    np.testing.assert_allclose(depth, (layer + 0.5) * geometry.layer_thickness_mm, rtol=1e-12)


def test_cpp_rejects_a_geometry_that_does_not_fit_the_output(cpp_demo, tmp_path):
    model = make_decoder(tmp_path / "geo.onnx", latent_dim=4, n_voxels=24, geometry=default_geometry().to_dict())
    _assert_clean_failure(_run([cpp_demo, model, "--info"]), "output.geometry", "n_voxels = 24", "6480")


def test_node_help_prints_usage_and_exits_0():
    if shutil.which("node") is None:
        pytest.skip("Node example needs node on PATH")
    # --help needs no installed binding: it works before `npm install`.
    result = _run(["node", NODE_DIR / "generate.mjs", "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: node generate.mjs MODEL.onnx")
    for option in ("--n N", "--energy E", "--out FILE", "--latents FILE", "--allow-extrapolation"):
        assert option in result.stdout
    assert result.stderr == ""


def test_cpp_help_states_the_measured_default_batch(cpp_demo):
    result = _run([cpp_demo, "--help"])
    assert result.returncode == 0
    assert "--batch B              showers per Run (default 64" in result.stdout


@pytest.mark.slow
def test_build_against_an_existing_onnxruntime_install(cpp_demo, tmp_path):
    """onnxruntime_ROOT (an EL9/CVMFS-style prefix) replaces the Debian packages: no apt, no download."""
    import onnxruntime

    headers = CPP_DIR / "third_party" / "usr" / "include"  # fetched by the cpp_demo build
    library = max((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.*.*.*"))
    prefix = tmp_path / "onnxruntime"
    (prefix / "lib").mkdir(parents=True)
    (prefix / "include").symlink_to(headers / "onnxruntime", target_is_directory=True)
    (prefix / "lib" / library.name).symlink_to(library)
    empty = tmp_path / "no-third-party"  # nothing cached: a download would show
    env = {**_env_without_library_path(), "onnxruntime_ROOT": str(prefix), "nlohmann_json_ROOT": str(headers.parent),
           "FASTSIM_THIRD_PARTY": str(empty), "PYTHON": "/nonexistent/python"}
    result = subprocess.run([str(CPP_DIR / "build.sh"), str(tmp_path / "build")], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"ONNX Runtime from onnxruntime_ROOT={prefix}" in result.stderr
    assert "fetching" not in result.stderr and not empty.exists()
    binary = Path(result.stdout.strip().splitlines()[-1])
    info = _run([binary, BUNDLED, "--info"])
    assert info.returncode == 0, info.stderr
    assert "calo-electron" in info.stdout


def test_build_refuses_an_onnxruntime_root_without_headers(tmp_path):
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("C++ example needs cmake and c++ on PATH")
    result = subprocess.run([str(CPP_DIR / "build.sh"), str(tmp_path / "build")], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "onnxruntime_ROOT": str(tmp_path)})
    assert result.returncode == 2
    assert f"onnxruntime_ROOT={tmp_path}: no include/onnxruntime_cxx_api.h" in result.stderr
    assert not (tmp_path / "build").exists()
