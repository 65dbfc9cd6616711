"""The core runtime imports none of scipy, scikit-learn, Dask or matplotlib.

They belong to extras (``validate``, ``dask``, ``plots``) and are imported only
where those features are used. The validation layer (the package
``fastsim.validation``) is the one place that may import them; everything else,
``import fastsim`` included, must work in an environment without them. So must the
package itself and its numpy-only modules (``features``, ``classifier``): they
import no extra either. The child processes block these imports, so a hidden one
fails even where they are installed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT, cli_env, runtime_modules

#: Packages of the optional extras, blocked in the child processes.
EXTRAS = ("scipy", "sklearn", "dask", "distributed", "matplotlib")
#: The package of the validation layer, behind the validate and plots extras.
VALIDATION_LAYER = "validation"
#: Its modules that need no extra (numpy only), checked like the core; importing one runs
#: the package's ``__init__``, so that imports no extra either.
VALIDATION_NUMPY_ONLY = {"validation.features", "validation.classifier"}

BLOCKER = f"""
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {EXTRAS!r}:
            raise ImportError(f'{{name}} must not be imported by the fastsim core')
        return None
sys.meta_path.insert(0, Blocker())
"""
LOADED = f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({EXTRAS!r})))"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True,
                          env=cli_env(), cwd=ROOT, timeout=120)


def _core_modules() -> list[str]:
    layer = {name for name in runtime_modules() if name.split(".")[0] == VALIDATION_LAYER}
    return sorted(runtime_modules() - layer)


def test_the_core_leaves_out_the_validation_layer_only():
    # A module added to the runtime is in the core unless it is in the validation package.
    assert "distributed" in _core_modules() and "shards" in _core_modules()
    assert runtime_modules() >= {VALIDATION_LAYER, "validation.metrics", "validation.plots", *VALIDATION_NUMPY_ONLY}


def test_import_fastsim_imports_no_extra():
    result = _run("import fastsim, sys\n" + LOADED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("module", _core_modules() + sorted(VALIDATION_NUMPY_ONLY))
def test_every_core_module_imports_no_extra(module):
    result = _run(f"import fastsim.{module}, sys\n" + LOADED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_sharded_run_without_a_cluster_and_reading_it_back_need_no_dask(toy_model, tmp_path):
    out = tmp_path / "run"
    result = _run(
        "import fastsim, sys\n"
        "from fastsim import distributed\n"
        f"summary = distributed.generate({str(toy_model)!r}, 3000, {str(out)!r}, 50_000.0, shards=2, seed=3)\n"
        f"with fastsim.open_dataset({str(out)!r}) as data:\n"
        "    energies, showers = data.read()\n"
        "print(summary['shards'], showers.shape[0], float(energies.min()))\n" + LOADED
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["2 3000 50000.0", "[]"]
