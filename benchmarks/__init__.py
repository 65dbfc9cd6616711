"""Throughput and fidelity benchmarks of the fastsim runtime (run from the repository root: ``python -m benchmarks.run_all``)."""
__all__: list[str] = []
