"""Block-wise random streams: the latents and sampled conditions of sample i depend only on (seed, i).

Samples are grouped in fixed blocks of :data:`BLOCK_SIZE`. Block ``b`` of a run
with seed ``s`` draws from its own streams, seeded by
``numpy.random.SeedSequence((s, b, stream))`` with one stream for latents and
one for the uniforms behind sampled conditions. Any batch size, thread count,
shard layout or resume point therefore sees the same numbers for the same
global sample index. Changing BLOCK_SIZE or the stream layout changes every
generated sample: treat them as part of the file format.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fastsim._util import positive_int

__all__ = ["BLOCK_SIZE", "MAX_SEED", "BlockStreams", "draw_latents", "draw_uniforms"]

BLOCK_SIZE = 1024
#: Seeds are stored as int64 attributes of the output files.
MAX_SEED = 2**63 - 1
_LATENT_STREAM, _CONDITION_STREAM = 0, 1


def _generator(seed: int, block: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence((seed, block, stream))))


class BlockStreams:
    """Draws rows [start, stop) of the latent and condition-uniform sequences for one seed.

    The most recent block is cached, so consecutive batches that do not align
    with block boundaries do not redraw it.
    """

    def __init__(self, seed: int, latent_dim: int, n_uniforms: int) -> None:
        self.seed = positive_int(seed, "seed", zero=True)  # an ArgumentError, which is a ValueError
        self.latent_dim, self.n_uniforms = latent_dim, n_uniforms
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def _block(self, block: int, stream: int) -> np.ndarray:
        key = (block, stream)
        cached = self._cache.get(key)
        if cached is None:
            rng = _generator(self.seed, block, stream)
            if stream == _LATENT_STREAM:
                cached = rng.standard_normal((BLOCK_SIZE, self.latent_dim), dtype=np.float32)
            else:
                cached = rng.random((BLOCK_SIZE, self.n_uniforms))
            # Keep only the newest block of each stream: memory stays flat.
            self._cache = {k: v for k, v in self._cache.items() if k[1] != stream}
            self._cache[key] = cached
        return cached

    def _rows(self, start: int, stop: int, stream: int, width: int, dtype: npt.DTypeLike) -> np.ndarray:
        out = np.empty((stop - start, width), dtype=dtype)
        pos = start
        while pos < stop:
            block, offset = divmod(pos, BLOCK_SIZE)
            take = min(BLOCK_SIZE - offset, stop - pos)
            out[pos - start:pos - start + take] = self._block(block, stream)[offset:offset + take]
            pos += take
        return out

    def latents(self, start: int, stop: int) -> np.ndarray:
        """Standard-normal latents for global samples [start, stop), float32 (stop-start, latent_dim)."""
        return self._rows(start, stop, _LATENT_STREAM, self.latent_dim, np.float32)

    def uniforms(self, start: int, stop: int) -> np.ndarray:
        """Uniforms on [0, 1) for sampled conditions, float64 (stop-start, n_uniforms)."""
        return self._rows(start, stop, _CONDITION_STREAM, self.n_uniforms, np.float64)


def draw_latents(seed: int, start: int, stop: int, latent_dim: int) -> np.ndarray:
    """Latents of global samples [start, stop) for ``seed`` (see :class:`BlockStreams`)."""
    return BlockStreams(seed, latent_dim, 0).latents(start, stop)


def draw_uniforms(seed: int, start: int, stop: int, n: int) -> np.ndarray:
    """Condition uniforms of global samples [start, stop) for ``seed``."""
    return BlockStreams(seed, 0, n).uniforms(start, stop)
