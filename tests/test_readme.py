"""The README runs as written: its commands and snippets, from an installed wheel, outside the source tree.

``bash`` blocks run line by line (backslash continuations joined) with bash, and
``python`` blocks with the venv's python, in README order, in one fresh working
folder, with a venv holding the built wheel first on PATH (``tests/wheelenv.py``),
so ``fastsim``, ``python -m training`` and the bundled model are the wheel's.
``console`` blocks are transcripts of checkout-only or cluster commands and are
not run here: the examples' commands are tested by ``test_examples.py``, the
benchmarks by ``test_bench.py``, Dask clusters by ``test_distributed.py``.

The exceptions are explicit, keyed by the README line (a test checks each key is
still in the README):

* ``SKIPPED``: lines and blocks not run, with the reason;
* ``SMALLER``: lines run with fewer showers or a tiny training configuration,
  so that the whole README runs in about a minute; everything else is unchanged.

Also here: the documentation site builds with warnings as errors, and nothing in
the repository points at notes outside it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from wheelenv import REPO, venv_env, wheel_venv

README = REPO / "README.md"

SKIPPED = {
    "pip install fastsim": "installing: the test installs the built wheel into its own venv",
    "pip install 'fastsim[root]'": "installing: uproot comes from the test environment",
    "pip install 'fastsim[plots,validate]'": "installing: the extras come from the test environment",
    "pip install 'fastsim[dask]'": "installing: the extras come from the test environment",
    "pip install torch==2.13.0 && pip install 'fastsim[train]'": "installing: torch comes from the test environment",
    "pip install 'fastsim[gpu]'": "installing: no GPU in the test environment",
    "make test": "this test runs inside `make test`",
    "from dask_jobqueue import SLURMCluster": "needs a batch system (dask-jobqueue); the same API runs on a "
                                              "LocalCluster in test_distributed.py",
}

TINY_CONFIG = """\
name = "tiny"
[model]
latent_dim = 4
hidden = 32
n_hidden = 2
encoder_hidden = 64
[train]
epochs = 1
batch_size = 64
fom_showers = 200
prior_fit_showers = 400
threads = 1
"""

SMALLER = {
    "make generate": "make -C {repo} generate N=200 OUT={cwd}/make-showers.h5",
    "python -m training simulate -n 10000 --seed 2 -o data/reference.h5":
        "python -m training simulate -n 1000 --seed 2 -o data/reference.h5",
    "fastsim validate generated.h5 data/reference.h5 -o report/":
        "fastsim validate generated.h5 data/reference.h5 -o report/ --metrics separation,energy-bins",
    "python -m training simulate -n 100000 --seed 1 -o data/train.h5":
        "python -m training simulate -n 400 --seed 1 -o data/train.h5",
    "python -m training simulate -n 20000 --seed 2 -o data/val.h5":
        "python -m training simulate -n 200 --seed 2 -o data/val.h5",
    "python -m training train --config calo-electron --data data/train.h5 --validation data/val.h5 "
    "--out runs/my-electron":
        "python -m training train --config tiny.toml --data data/train.h5 --validation data/val.h5 "
        "--out runs/my-electron -q",
    "fastsim generate -n 100000 --energy 1GeV:1TeV --shards 4 -o showers/":
        "fastsim generate -n 5000 --energy 1GeV:1TeV --shards 4 -o showers/",
    "fastsim validate showers/ data/reference.h5 -o report-shards/":
        "fastsim validate showers/ data/reference.h5 -o report-shards/ --metrics separation --no-plots",
}


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def bash_commands(body: str) -> list[str]:
    """The block's commands: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", "", body)
    commands = []
    for line in joined.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command and not command.startswith("#"):
            commands.append(" ".join(command.split()))
    return commands


def _skipped(text: str) -> bool:
    return any(text.startswith(key) for key in SKIPPED)


def test_every_exception_names_a_line_that_is_in_the_readme():
    blocks = readme_blocks(README.read_text())
    commands = [c for lang, body in blocks if lang == "bash" for c in bash_commands(body)]
    python_lines = [line.strip() for lang, body in blocks if lang == "python" for line in body.splitlines()]
    for key in SMALLER:
        assert key in commands, f"SMALLER key no longer in README.md: {key!r}"
    for key in SKIPPED:
        assert any(c.startswith(key) for c in commands) or any(line.startswith(key) for line in python_lines), key
    # The README has something to run, in each language.
    assert {"bash", "python", "console"} <= {lang for lang, _ in blocks}


@pytest.mark.slow
def test_readme_runs_as_written_from_the_installed_wheel(tmp_path):
    venv = wheel_venv()
    env = venv_env(venv)
    cwd = tmp_path / "first-day"
    cwd.mkdir()
    (cwd / "tiny.toml").write_text(TINY_CONFIG)
    ran = []
    for lang, body in readme_blocks(README.read_text()):
        if lang == "bash":
            for command in bash_commands(body):
                if _skipped(command):
                    continue
                command = SMALLER.get(command, command).format(repo=REPO, cwd=cwd)
                result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                                        timeout=600)
                assert result.returncode == 0, f"README command failed: {command}\n{result.stderr[-3000:]}"
                ran.append(command)
        elif lang == "python":
            if _skipped(body.lstrip()):
                continue
            result = subprocess.run([str(venv / "bin" / "python"), "-c", body], cwd=cwd, env=env,
                                    capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"README snippet failed:\n{body}\n{result.stderr[-3000:]}"
            ran.append(body)
    # What a first day leaves behind: the files the README promised, where it said.
    for name in ("showers.h5", "fixed.h5", "matched.h5", "showers.root", "showers.hits.h5", "data/reference.h5",
                 "report/metrics.json", "models/my-electron.onnx", "mine.h5", "showers/manifest.json",
                 "make-showers.h5"):
        assert (cwd / name).exists(), name
    assert not (REPO / "make-showers.h5").exists()
    assert len(ran) >= 20


def test_docs_site_builds_with_warnings_as_errors(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.is_file():
        pytest.skip("mkdocs is not installed (the docs/test extras)")
    result = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    # The API reference is generated from the docstrings, the CLI reference from the click commands.
    assert "fastsim.generator.Generator" in api and "iter_batches" in api
    assert "--allow-extrapolation" in (tmp_path / "site" / "cli" / "index.html").read_text()


def test_nothing_points_at_notes_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"\.\./shared|shared/(?:DESIGN|GFLASH|GPU)\.md|shared project notes|"
                         r"\b(?:DESIGN|GFLASH|GPU)\.md\b|\(issue \d+\)|\bissue #?\d+\b")
    hits = []
    for name in files:
        path = REPO / name
        if path.suffix not in (".md", ".py", ".cpp", ".hpp", ".mjs", ".toml", ".yml", ".cff", ".sh", ".txt") \
                or not path.is_file() or name == "tests/test_readme.py":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not hits, "\n".join(hits)
