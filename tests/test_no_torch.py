"""The runtime never imports torch or the training package: `import fastsim` and the CLI work without them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT, cli_env, runtime_modules

# Makes `import torch` / `import training` fail in the child, so a hidden import is an error
# even on machines where torch is installed, and records any attempt.
BLOCKER = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'training'):
            raise ImportError(f'{name} must not be imported by the fastsim runtime')
        return None
sys.meta_path.insert(0, Blocker())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True,
                          env=cli_env(), cwd=ROOT, timeout=120)


def test_import_fastsim_does_not_import_torch():
    result = _run("import fastsim, sys; print(sorted(m for m in sys.modules if m.startswith(('torch', 'training'))))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("module", sorted(runtime_modules()))
def test_every_runtime_module_imports_without_torch(module):
    result = _run(f"import fastsim.{module}, sys; "
                  "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'training')])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["--version"]])
def test_cli_help_does_not_import_torch(args):
    result = _run(
        "import sys; sys.argv = ['fastsim', *%r]\n"
        "from fastsim.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\n"
        "assert code == 0, code\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'training')]\n"
        "print('clean', file=sys.stderr)" % (args,)
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith("clean")


def test_generation_works_without_torch(toy_model, tmp_path):
    out = tmp_path / "o.h5"
    result = _run(
        f"import fastsim; g = fastsim.load({str(toy_model)!r}, device='cpu'); "
        f"print(g.write({str(out)!r}, 100, '50GeV')['n'])"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "100" and out.is_file()
