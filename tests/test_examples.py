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
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import fastsim
from fastsim.conditions import plan_conditions
from fastsim.errors import ConditionError, SpecError
from fastsim.geometry import CylindricalGeometry, Layer, default_geometry
from fastsim.prior import draw_latents
from fastsim.spec import FORMAT_CATEGORICAL, ConditionSpec, read_spec
from helpers.decoders import (
    ENERGY_CONDITION,
    INCIDENT_CONDITIONS,
    PERIODIC_FORMAT,
    PHI_CONDITION,
    RESPONSE,
    make_decoder,
    make_spec,
    spec_document,
)

# Every test here needs the C++ demo built or onnxruntime-node installed.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CPP_DIR = ROOT / "examples" / "cpp"
NODE_DIR = ROOT / "examples" / "node"
EXPORTED = ROOT / "exported"
BUNDLED = EXPORTED / "calo-electron.onnx"
RTOL = 1e-5

ANGLE = ConditionSpec("theta", "deg", 10.0, 80.0, "uniform")
# Energy, theta and phi as format 1 has them (no period), and as format 1.1 (phi periodic).
INCIDENT_FORMAT_1 = [{k: v for k, v in c.items() if k != "period"} for c in INCIDENT_CONDITIONS]
LOW_ENERGY = ConditionSpec("incident_energy", "MeV", 1_000.0, 50_000.0, "log-uniform")
# A categorical condition (format 1.2): the particle type, by label or PDG id.
PARTICLE = ConditionSpec("particle", "pdg", 11.0, 22.0, "categorical", categories=(("electron", 11), ("photon", 22)))

# Contract variants (make_decoder arguments); every host must agree with Python on each.
MODELS = {
    "toy": dict(latent_dim=4, n_voxels=24, hidden=8),
    "two-conditions-renamed": dict(latent_dim=6, n_voxels=90, hidden=16, conditions=[ENERGY_CONDITION, ANGLE],
                                   names={"z": "latent", "conditions": "cond", "showers": "energies"}),
    "sidecar-spec": dict(latent_dim=3, n_voxels=10, embed=False, sidecar=True),
    # Up to 50 GeV, so that no voxel overflows float16 (max 65504).
    "fp16-output": dict(latent_dim=4, n_voxels=24, hidden=8, output_dtype="float16", conditions=[LOW_ENERGY]),
    "incident-angles": dict(latent_dim=5, n_voxels=30, hidden=8, conditions=INCIDENT_FORMAT_1),
    "incident-angles-periodic": dict(latent_dim=5, n_voxels=30, hidden=8, conditions=list(INCIDENT_CONDITIONS)),
    # Format 1.2: a categorical condition next to a periodic one.
    "energy-phi-particle": dict(latent_dim=5, n_voxels=30, hidden=8, conditions=[ENERGY_CONDITION, PHI_CONDITION,
                                                                               PARTICLE]),
    # Every bundled model, including those exported after this test was written.
    **{f"exported-{path.stem}": path for path in sorted(EXPORTED.glob("*.onnx"))},
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
    if isinstance(MODELS[request.param], Path):
        return MODELS[request.param]
    return make_decoder(tmp_path_factory.mktemp("models") / f"{request.param}.onnx", seed=3,
                        name=request.param, **MODELS[request.param])


def _spec_document(model: Path) -> dict:
    """The spec JSON as the hosts read it: the fastsim.spec metadata, else the sidecar."""
    proto = onnx.load(str(model), load_external_data=False)
    text = {p.key: p.value for p in proto.metadata_props}.get("fastsim.spec")
    return json.loads(text if text is not None else Path(f"{model}.json").read_text())


def _python_generator(model: Path, tmp_path: Path) -> fastsim.Generator:
    """``fastsim.load(model)``; for a format-1.1 spec the Python runtime cannot read yet, the
    same graph with the spec's periods removed (decode never wraps, so its output is the same)."""
    try:
        return fastsim.load(model, device="cpu", threads=1)
    except SpecError as error:
        if PERIODIC_FORMAT not in str(error):
            raise
    proto = onnx.load(str(model))
    doc = _spec_document(model)
    doc["format"] = "fastsim-decoder/1"
    for condition in doc["conditions"]:
        condition.pop("period", None)
    for entry in proto.metadata_props:
        if entry.key == "fastsim.spec":
            entry.value = json.dumps(doc)
    twin = tmp_path / f"{model.stem}-format-1.onnx"
    onnx.save(proto, str(twin))
    return fastsim.load(twin, device="cpu", threads=1)


def _inputs(spec, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Latents and in-range conditions, drawn independently of every host's own streams."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, spec.latent_dim), dtype=np.float32)
    columns = []
    for cond in spec.conditions:
        if cond.categories is not None:
            columns.append(rng.choice(np.asarray(cond.codes), n))
        elif cond.sampling == "log-uniform":
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
    generator = _python_generator(model, tmp_path)
    n = 16 if model.parent == EXPORTED else 123  # 123 = 50 + 50 + 23: uneven final batch
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
    generator = _python_generator(model, tmp_path)
    n = 16 if model.parent == EXPORTED else 77
    z, conditions = _inputs(generator.spec, n, seed=12)
    z_file, c_file = _write_inputs(tmp_path, z, conditions)
    out = tmp_path / "showers.bin"
    result = _run(["node", node_script, model, "--latents", z_file, "--conditions", c_file, "--threads", 1,
                   "--out", out])
    assert result.returncode == 0, result.stderr
    showers = np.fromfile(out, dtype="<f4").reshape(n, generator.spec.n_voxels)
    _assert_same_showers(showers, generator.decode(z, conditions))


def test_cpp_reads_the_spec_like_python(cpp_demo, model, tmp_path):
    spec = _python_generator(model, tmp_path).spec
    doc = _spec_document(model)
    result = _run([cpp_demo, model, "--info"])
    assert result.returncode == 0, result.stderr
    info = result.stdout
    assert f"name        {spec.name} {spec.version} ({doc.get('format', 'fastsim-decoder/1')})" in info
    assert f"latent_dim  {spec.latent_dim} " in info
    assert f"output      {spec.io_names['showers']}: {spec.n_voxels} voxels, MeV, {spec.output.dtype}" in info
    lines = [line for line in info.splitlines() if line.startswith("condition ")]
    assert len(lines) == spec.n_conditions
    for line, cond, block in zip(lines, spec.conditions, doc["conditions"], strict=True):
        name, bounds = line.split()[1], line.split("[")[1].split("]")[0]
        assert name == cond.name
        assert [float(b) for b in bounds.split(",")] == pytest.approx([cond.min, cond.max], rel=1e-5)
        assert f"({cond.sampling}" in line
        if "period" in block:
            assert float(line.split("period ")[1].split(")")[0]) == pytest.approx(block["period"], rel=1e-5)
        else:
            assert "period" not in line
        if cond.categories is not None:
            assert line.endswith(": " + ", ".join(f"{label} ({code:g})" for label, code in cond.categories) + ")")
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
    ("unknown-angle", ["{toy}", "--energy", "5GeV", "--theta", "30deg"], ["--theta", "'incident_theta'",
                                                                        "its conditions: incident_energy"]),
    ("bad-energy", ["{toy}", "--energy", "fifty"], ["--energy", "fifty"]),
    ("unknown-condition", ["{toy}", "--energy", "5GeV", "--condition", "phi=1"],
     ["--condition phi", "'phi'", "incident_energy"]),
    ("energy-twice", ["{toy}", "--energy", "5GeV", "--condition", "incident_energy=5000"],
     ["--condition incident_energy", "already given by --energy"]),
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


# --- conditions by flag: --energy, --theta, --phi, --condition; the rest drawn ------------

HOSTS = ["cpp", "node"]


@pytest.fixture(scope="module")
def angles(tmp_path_factory) -> Path:
    """The multi-condition toy: energy (log-uniform), theta in [0, pi/3], phi periodic on [0, 2 pi)."""
    return make_decoder(tmp_path_factory.mktemp("angles") / "angles.onnx", latent_dim=5, n_voxels=30, hidden=8,
                        conditions=list(INCIDENT_CONDITIONS), seed=3)


def _host_command(request, host: str) -> list:
    if host == "cpp":
        return [request.getfixturevalue("cpp_demo")]
    return ["node", request.getfixturevalue("node_script")]


def _generate(request, host: str, model: Path, tmp_path: Path, *flags,
              z: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run a host with its own conditions from flags on known latents (``z``, default 37 rows of
    its own); (z, conditions used, showers)."""
    spec = _spec_document(model)
    if z is None:
        z = np.random.default_rng(21).standard_normal((37, spec["latent_dim"]), dtype=np.float32)
    n = len(z)
    z_file, c_out, out = tmp_path / f"z-{host}.f32", tmp_path / f"c-{host}.f32", tmp_path / f"s-{host}.f32"
    z.astype("<f4").tofile(z_file)
    result = _run([*_host_command(request, host), model, "--n", n, "--latents", z_file, "--threads", 1,
                   "--conditions-out", c_out, "--out", out, *flags])
    assert result.returncode == 0, result.stderr
    conditions = np.fromfile(c_out, dtype="<f4").reshape(n, len(spec["conditions"]))
    showers = np.fromfile(out, dtype="<f4").reshape(n, spec["output"]["n_voxels"])
    assert not Path(f"{c_out}.tmp").exists()
    return z, conditions, showers


@pytest.mark.parametrize("host", HOSTS)
def test_theta_and_phi_in_degrees_wrap_and_decode_like_python(request, host, angles, tmp_path):
    z, conditions, showers = _generate(request, host, angles, tmp_path, "--energy", "50GeV", "--theta", "30deg",
                                       "--phi", "370deg")
    # 370 deg is 10 deg after wrapping into phi's period [0, 2 pi).
    np.testing.assert_allclose(conditions, np.tile([5e4, 0.5236, 0.1745], (len(z), 1)), rtol=2e-4)
    np.testing.assert_allclose(conditions[:, 1:], np.tile([math.pi / 6, math.pi / 18], (len(z), 1)), rtol=1e-6)
    _assert_same_showers(showers, _python_generator(angles, tmp_path).decode(z, conditions))


@pytest.mark.parametrize("host", HOSTS)
def test_condition_flag_takes_the_spec_unit_and_wraps_negative_phi(request, host, angles, tmp_path):
    _, conditions, _ = _generate(request, host, angles, tmp_path, "--condition", "incident_energy=2500",
                                 "--condition", "incident_theta=0.25", "--condition", "incident_phi=-1")
    np.testing.assert_allclose(conditions[0], [2500.0, 0.25, 2 * math.pi - 1], rtol=1e-6)
    assert np.array_equal(conditions, np.tile(conditions[0], (len(conditions), 1)))


@pytest.mark.parametrize("host", HOSTS)
def test_conditions_not_given_are_drawn_over_their_range(request, host, angles, tmp_path):
    z, conditions, showers = _generate(request, host, angles, tmp_path, "--theta", "0.5rad", "--seed", 4)
    energy, theta, phi = conditions.T
    assert np.all(theta == np.float32(0.5))
    assert energy.min() >= 1e3 and energy.max() <= 1e6
    assert energy.max() / energy.min() > 20  # log-uniform over three decades, not one value
    assert phi.min() >= 0 and phi.max() < 2 * math.pi and phi.max() - phi.min() > math.pi
    assert len(np.unique(energy)) == len(z) and len(np.unique(phi)) == len(z)  # per shower
    _assert_same_showers(showers, _python_generator(angles, tmp_path).decode(z, conditions))
    # The draws follow --seed.
    _, again, _ = _generate(request, host, angles, tmp_path, "--theta", "0.5rad", "--seed", 4)
    assert np.array_equal(again, conditions)
    _, other, _ = _generate(request, host, angles, tmp_path, "--theta", "0.5rad", "--seed", 5)
    assert not np.array_equal(other[:, 0], conditions[:, 0])


def test_cpp_energy_only_model_draws_its_energy_when_none_is_given(cpp_demo, toy, tmp_path):
    c_out = tmp_path / "c.f32"
    result = _run([cpp_demo, toy, "--n", 200, "--conditions-out", c_out])
    assert result.returncode == 0, result.stderr
    energy = np.fromfile(c_out, dtype="<f4")
    assert energy.shape == (200,)
    assert energy.min() >= 1e3 and energy.max() <= 1e6 and energy.max() / energy.min() > 100
    # Log-uniform: as many showers below sqrt(1e3 * 1e6) as above it (within 4 sigma).
    assert abs(np.mean(energy < math.sqrt(1e9)) - 0.5) < 4 * 0.5 / math.sqrt(200)


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("flags, needles", [
    (["--theta", "90deg"], ["--theta", "incident_theta", "[0, 1.047", "1.570", "90deg"]),
    (["--theta", "-0.1"], ["--theta", "incident_theta", "-0.1"]),
    (["--theta", "30grad"], ["--theta", "30grad"]),
    (["--condition", "incident_psi=1"], ["--condition incident_psi", "incident_energy, incident_theta, incident_phi"]),
    (["--phi", "1rad", "--condition", "incident_phi=1"], ["--condition incident_phi", "already given by --phi"]),
    (["--particle", "photon"], ["--particle", "'particle'", "incident_energy, incident_theta, incident_phi"]),
])
def test_bad_condition_flags_fail_naming_the_flag(request, host, angles, tmp_path, flags, needles):
    out = tmp_path / "showers.bin"
    result = _run([*_host_command(request, host), angles, "--n", 10, "--out", out, *flags])
    _assert_clean_failure(result, *needles)
    assert not out.exists()


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("format_, period, needles", [
    ("fastsim-decoder/1", 2 * math.pi, ["conditions['incident_phi'].period", PERIODIC_FORMAT]),
    (PERIODIC_FORMAT, -1.0, ["conditions['incident_phi'].period", "a finite number > 0"]),
    (PERIODIC_FORMAT, math.pi, ["conditions['incident_phi'].period", "at least max - min"]),
    ("fastsim-decoder/2", 2 * math.pi, ["format", "fastsim-decoder/2"]),
])
def test_hosts_refuse_a_bad_period_or_format(request, host, tmp_path, format_, period, needles):
    model = make_decoder(tmp_path / "m.onnx", latent_dim=5, n_voxels=30, conditions=INCIDENT_FORMAT_1, embed=False)
    doc = spec_document(make_spec(latent_dim=5, n_voxels=30, conditions=INCIDENT_FORMAT_1))
    doc["format"] = format_
    doc["conditions"][2]["period"] = period
    Path(f"{model}.json").write_text(json.dumps(doc))
    result = _run([*_host_command(request, host), model, "--energy", "5GeV", "--n", 10])
    _assert_clean_failure(result, "spec: ", *needles)


def test_periodic_spec_is_format_1_1_and_the_others_format_1(angles, toy):
    periodic, plain = _spec_document(angles), _spec_document(toy)
    assert periodic["format"] == PERIODIC_FORMAT
    assert [c.get("period") for c in periodic["conditions"]] == [None, None, 2 * math.pi]
    assert plain["format"] == "fastsim-decoder/1" and "period" not in plain["conditions"][0]


# --- a categorical condition (format 1.2): --particle, --condition particle=..., drawn ------

SEED = 4


@pytest.fixture(scope="module")
def particles(tmp_path_factory) -> Path:
    """The categorical toy: energy (log-uniform) and particle {electron: 11, photon: 22}."""
    return make_decoder(tmp_path_factory.mktemp("particles") / "particles.onnx", latent_dim=5, n_voxels=30,
                        hidden=8, conditions=(ENERGY_CONDITION, PARTICLE), seed=3)


@pytest.fixture(scope="module")
def particles_twin(tmp_path_factory) -> Path:
    """The same columns with particle as a plain uniform condition on [0, 1]: a host draws it from the
    same per-shower uniform it draws a category from, so its conditions show the uniforms themselves."""
    uniform = ConditionSpec("particle", "1", 0.0, 1.0, "uniform")
    return make_decoder(tmp_path_factory.mktemp("particles-twin") / "twin.onnx", latent_dim=5, n_voxels=30,
                        hidden=8, conditions=(ENERGY_CONDITION, uniform), seed=3)


def _seeded(request, host: str, model: Path, tmp_path: Path, *flags) -> tuple[np.ndarray, np.ndarray]:
    """A host run with --seed SEED on the latents Python's prior draws for SEED: (conditions, showers)."""
    z = draw_latents(SEED, 0, 37, _spec_document(model)["latent_dim"])
    _, conditions, showers = _generate(request, host, model, tmp_path, "--seed", SEED, *flags, z=z)
    return conditions, showers


def _drawn_like_python(particles_model: Path, named: dict, host_uniforms: np.ndarray) -> np.ndarray:
    """The particle codes Python's ConditionPlan draws from the given per-shower uniforms."""
    plan = plan_conditions(read_spec(particles_model), named, len(host_uniforms))
    uniforms = np.column_stack([np.zeros(len(host_uniforms)), host_uniforms.astype(np.float64)])
    return plan.values(uniforms, 0, len(host_uniforms))[:, 1]


def _python_generate(model: Path, n: int, conditions: dict) -> tuple[np.ndarray, np.ndarray]:
    return fastsim.load(model, device="cpu", threads=1).generate(n, conditions, seed=SEED)


def test_categorical_spec_is_format_1_2(particles):
    doc = _spec_document(particles)
    assert doc["format"] == FORMAT_CATEGORICAL == "fastsim-decoder/1.2"
    assert doc["conditions"][1]["sampling"] == "categorical"
    assert doc["conditions"][1]["categories"] == {"electron": 11.0, "photon": 22.0}


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("flags", [
    ["--particle", "photon"],
    ["--particle", "Photon"],
    ["--particle", "22"],
    ["--condition", "particle=photon"],
], ids=["label", "label-case", "code", "condition-flag"])
def test_particle_by_label_or_code_decodes_like_python(request, host, particles, tmp_path, flags):
    conditions, showers = _seeded(request, host, particles, tmp_path, "--energy", "50GeV", *flags)
    np.testing.assert_array_equal(conditions, np.tile(np.float32([5e4, 22.0]), (len(conditions), 1)))
    expected_conditions, expected = _python_generate(particles, len(conditions),
                                                     {"incident_energy": 5e4, "particle": "photon"})
    np.testing.assert_array_equal(conditions, expected_conditions)
    _assert_same_showers(showers, expected)


@pytest.mark.parametrize("host", HOSTS)
def test_a_comma_list_draws_each_shower_category_like_python(request, host, particles, particles_twin, tmp_path):
    conditions, showers = _seeded(request, host, particles, tmp_path, "--energy", "50GeV",
                                  "--particle", "electron,photon")
    codes = conditions[:, 1]
    assert np.all(conditions[:, 0] == np.float32(5e4))
    assert set(np.unique(codes)) == {11.0, 22.0}  # per shower: 37 showers of one kind are 2**-36 likely
    # The host's uniform for each shower, through Python's rule, gives the host's category.
    twin, _ = _seeded(request, host, particles_twin, tmp_path, "--energy", "50GeV")
    assert np.all((twin[:, 1] >= 0) & (twin[:, 1] < 1))
    np.testing.assert_array_equal(codes, _drawn_like_python(particles, {"incident_energy": 5e4,
                                                                         "particle": "electron,photon"}, twin[:, 1]))
    # The list's order is the rule's: the same uniforms, the other code.
    swapped, _ = _seeded(request, host, particles, tmp_path, "--energy", "50GeV", "--particle", "photon, ELECTRON")
    np.testing.assert_array_equal(swapped[:, 1], np.where(codes == 11, 22, 11))
    expected_conditions, expected = _python_generate(particles, len(codes),
                                                     {"incident_energy": 5e4, "particle": codes})
    np.testing.assert_array_equal(conditions, expected_conditions)
    _assert_same_showers(showers, expected)


@pytest.mark.parametrize("host", HOSTS)
def test_particle_left_out_is_drawn_over_all_categories_like_python(request, host, particles, particles_twin,
                                                                     tmp_path):
    conditions, showers = _seeded(request, host, particles, tmp_path)
    energy, codes = conditions.T
    assert set(np.unique(codes)) == {11.0, 22.0}
    assert energy.min() >= 1e3 and energy.max() <= 1e6 and len(np.unique(energy)) == len(energy)
    twin, _ = _seeded(request, host, particles_twin, tmp_path)
    np.testing.assert_array_equal(energy, twin[:, 0])  # one uniform per drawn condition, as for a range
    np.testing.assert_array_equal(codes, _drawn_like_python(particles, {}, twin[:, 1]))
    # Left out is the same as every category listed in the spec's order.
    listed, _ = _seeded(request, host, particles, tmp_path, "--particle", "electron,photon")
    np.testing.assert_array_equal(listed, conditions)
    expected_conditions, expected = _python_generate(particles, len(codes),
                                                     {"incident_energy": energy, "particle": codes})
    np.testing.assert_array_equal(conditions, expected_conditions)
    _assert_same_showers(showers, expected)


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("flags, needles, python_value", [
    (["--particle", "pion"], ["--particle", "'particle'", "electron (11), photon (22)", "got 'pion'"], "pion"),
    (["--particle", "electron, pion"], ["--particle", "got 'pion'"], "electron, pion"),
    (["--condition", "particle=211"], ["--condition particle", "electron (11), photon (22)", "211"], "211"),
    (["--particle", "15", "--allow-extrapolation"], ["--particle", "electron (11), photon (22)", "15"], "15"),
    (["--particle", "electron,11"], ["--particle", "'particle'", "twice", "electron,11"], "electron,11"),
    (["--particle", "11:22"], ["--particle", "got '11:22'"], "11:22"),
    (["--particle", "photon", "--condition", "particle=11"], ["--condition particle", "already given by --particle"],
     None),
], ids=["unknown-label", "unknown-in-list", "unknown-code", "no-extrapolation", "twice", "range", "given-twice"])
def test_bad_category_flags_fail_naming_the_flag(request, host, particles, tmp_path, flags, needles, python_value):
    out = tmp_path / "showers.bin"
    result = _run([*_host_command(request, host), particles, "--n", 10, "--out", out, *flags])
    _assert_clean_failure(result, *needles)
    assert not out.exists()
    if python_value is not None:  # Python refuses the same value
        with pytest.raises(ConditionError, match="particle"):
            fastsim.load(particles, device="cpu", threads=1).plan(10, {"particle": python_value},
                                                                  allow_extrapolation=True)


@pytest.mark.parametrize("host", HOSTS)
def test_a_conditions_file_with_a_code_that_is_no_category_is_refused(request, host, particles, tmp_path):
    z_file, c_file = _write_inputs(tmp_path, np.zeros((4, 5), np.float32), np.float32([[5e4, 11], [5e4, 15]] * 2))
    result = _run([*_host_command(request, host), particles, "--latents", z_file, "--conditions", c_file,
                   "--allow-extrapolation"])
    _assert_clean_failure(result, "condition 'particle'", "electron (11), photon (22)", "15")


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("change, needles, python_needle", [
    ({"format": PERIODIC_FORMAT}, ["conditions['particle'].categories", "fastsim-decoder/1.2", PERIODIC_FORMAT],
     "'fastsim-decoder/1.2' for categorical conditions ['particle']"),
    ({"format": "fastsim-decoder/1"}, ["conditions['particle'].categories", "fastsim-decoder/1.2"],
     "'fastsim-decoder/1.2' for categorical conditions ['particle']"),
    ({"categories": {"electron": 11}}, ["conditions['particle'].categories", "at least two categories"],
     "categories must be at least two categories"),
    ({"sampling": "categorical", "categories": None}, ["conditions['particle'].categories", "at least two"],
     "categories must be at least two categories"),
    ({"categories": {"electron": 11, "photon": 22.5}, "max": 22.5}, ["integer codes of magnitude <= 2**24"],
     "categories must be integer codes"),
    ({"categories": {"electron": 11, "Electron": 22}}, ["distinct labels and distinct codes"],
     "distinct labels and distinct codes"),
    ({"categories": {"e,gamma": 11, "photon": 22}}, ["labels that are non-empty strings without ':' or ','"],
     "labels that are non-empty strings without ':' or ','"),
    ({"max": 211}, ["conditions['particle'].min/max", "the smallest and largest code (11, 22)"],
     "min/max must be the smallest and largest code (11, 22)"),
    ({"sampling": "uniform"}, ["conditions['particle'].sampling", "'categorical' for a condition with categories"],
     "sampling must be 'categorical'"),
    ({"categories": ["electron", "photon"]}, ["conditions[1].categories", "a JSON object"],
     "conditions[1].categories must be a JSON object"),
    ({"categories": {"electron": "11", "photon": 22}}, ["conditions[1].categories['electron']", "a finite number"],
     "categories['electron'] must be a finite number"),
], ids=["format-1.1", "format-1", "one-category", "no-categories", "non-integer", "same-label", "comma-label",
        "max-not-a-code", "not-categorical", "not-an-object", "code-not-a-number"])
def test_hosts_refuse_bad_categories_like_python(request, host, tmp_path, change, needles, python_needle):
    conditions = (ENERGY_CONDITION, PARTICLE)
    model = make_decoder(tmp_path / "m.onnx", latent_dim=5, n_voxels=30, conditions=conditions, embed=False)
    doc = spec_document(make_spec(latent_dim=5, n_voxels=30, conditions=conditions))
    block = doc["conditions"][1]
    if "format" in change:
        doc["format"] = change["format"]
    block.update({k: v for k, v in change.items() if k != "format"})
    if block.get("categories", ...) is None:
        del block["categories"]
    Path(f"{model}.json").write_text(json.dumps(doc))
    with pytest.raises(SpecError, match=re.escape(python_needle)):
        read_spec(model)
    result = _run([*_host_command(request, host), model, "--energy", "5GeV", "--n", 10])
    _assert_clean_failure(result, "spec: ", *needles)


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
