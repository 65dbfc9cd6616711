"""Throughput and fidelity benchmarks of the fastsim runtime.

Run them from the repository root as modules, e.g. ``python -m benchmarks.run_all``.
"""

__all__: list[str] = []
