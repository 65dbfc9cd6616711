"""Build hook: ship the bundled models of ``exported/`` inside the wheel, as ``fastsim/exported/``.

Everything else about the package is in pyproject.toml. An editable install
finds ``exported/`` next to the package and needs no copy.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

EXPORTED = Path(__file__).resolve().parent / "exported"
PATTERNS = ("*.onnx", "*.onnx.json", "*.md")


class build_py_with_models(build_py):
    """build_py that also copies exported/*.onnx (+ sidecar specs and model cards) into the package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False) or not EXPORTED.is_dir():
            return
        target = Path(self.build_lib) / "fastsim" / "exported"
        target.mkdir(parents=True, exist_ok=True)
        for pattern in PATTERNS:
            for source in sorted(EXPORTED.glob(pattern)):
                shutil.copy2(source, target / source.name)


setup(cmdclass={"build_py": build_py_with_models})
