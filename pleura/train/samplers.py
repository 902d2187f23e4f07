"""Training samplers that draw items with given probabilities, the same on every rank for a (seed, epoch)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from pleura.train.distributed import DistEnv


class WeightedSampler(Sampler[int]):
    """Draws as many items per epoch as ``weights`` holds, item ``i`` with probability ``weights[i] / sum``,
    with replacement, reproducible from ``(seed, epoch)`` and sharded over ranks.

    Used to mix datasets with sampling weights (``train-seg --data A --data B --data-weights 0.5,0.5``).
    """

    def __init__(self, weights: Sequence[float], env: DistEnv, seed: int = 0) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("sampling weights should be finite, non-negative and not all zero")
        self.p = w / w.sum()
        self.env, self.seed, self.epoch = env, seed, 0
        self.per_rank = math.ceil(len(w) / env.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch ``__iter__`` draws for (the loop calls it before each epoch), so every rank draws alike."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        draw = rng.choice(len(self.p), size=self.per_rank * self.env.world_size, p=self.p)
        return iter(draw[self.env.rank :: self.env.world_size].tolist())
