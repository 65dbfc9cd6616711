"""Reading a folder of shards needs the readers only, never the Dask orchestrator."""

from __future__ import annotations

import subprocess
import sys

import fastsim
from fastsim import distributed, shards
from helpers import ROOT, cli_env


def test_reading_shards_back_does_not_import_the_orchestrator(toy_model, tmp_path):
    out = tmp_path / "run"
    distributed.generate(toy_model, 2500, out, 20_000.0, shards=2, seed=5)
    code = (
        "import sys, fastsim\n"
        f"with fastsim.open_dataset({str(out)!r}) as data:\n"
        "    energies, showers = data.read(1000, 2100)\n"
        "    chunks = [len(e) for e, _ in data.iter_chunks(1000)]\n"
        "print(type(data).__name__, data.n_shards, showers.shape[0], chunks, float(energies[0, 0]))\n"
        "print('fastsim.distributed' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(),
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["ShardedDataset 2 1100 [1000, 1000, 500] 20000.0", "False"]


def test_the_reading_api_is_the_same_objects_everywhere():
    # Moved out of fastsim.distributed; every old import path still gives the same objects.
    assert fastsim.open_dataset is shards.open_dataset is distributed.open_dataset
    for name in ("ShardedDataset", "read_manifest", "shard_checksums", "MANIFEST_NAME", "DASK_HINT"):
        assert getattr(distributed, name) is getattr(shards, name), name
    assert distributed.ClusterError is fastsim.errors.ClusterError
