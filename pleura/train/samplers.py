"""Training samplers, the same on every rank for a (seed, epoch): items drawn with given probabilities, and the
endless, restartable streams of a second batch per optimizer step (``train-cls --seg-data``, ``train-seg
--adapt-data``)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from pleura.data import LUSDataset
from pleura.train.distributed import DistEnv

SEG_STREAM_TAG = 14  # separates a stream's shuffles from the other draws of the same seed


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


class SegStream(Dataset):
    """An endless stream over a segmentation dataset: position ``p`` is item ``perm_c[i]`` of pass ``c``, where
    ``c, i = divmod(p, len(dataset))`` and ``perm_c`` is a shuffle seeded by ``(seed, c)``.

    Every pass visits every frame once in a new order; the frame's augmentation is seeded by ``(the dataset's
    seed, c, index)``, so a frame seen again gets another augmentation. Each position's frame depends only on
    these numbers (not on workers or on what was read before), which makes a stream restartable anywhere.
    """

    def __init__(self, dataset: LUSDataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def locate(self, position: int) -> tuple[int, int]:
        """``(pass, dataset index)`` of stream position ``position``."""
        cycle, i = divmod(int(position), len(self.dataset))
        if self._perm is None or self._perm[0] != cycle:
            rng = np.random.default_rng([self.seed, SEG_STREAM_TAG, cycle])
            self._perm = (cycle, rng.permutation(len(self.dataset)))
        return cycle, int(self._perm[1][i])

    def __getitem__(self, position: int) -> dict[str, Any]:
        cycle, index = self.locate(position)
        self.dataset.set_epoch(cycle)  # the augmentation's seed: (seed, pass, index)
        return self.dataset[index]


class StepSampler(Sampler[int]):
    """Stream positions of one rank, ``batch_size`` per optimizer step from step ``start`` on, without end.

    Step ``s`` of rank ``r`` takes positions ``(s * world_size + r) * batch_size`` onwards: the ranks' batches
    of a step are disjoint, and the batch of a step does not depend on where the stream was restarted.
    """

    def __init__(self, batch_size: int, env: DistEnv) -> None:
        self.batch_size, self.env, self.start = batch_size, env, 0

    def __iter__(self) -> Iterator[int]:
        step = self.start
        while True:
            base = (step * self.env.world_size + self.env.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            step += 1


class StepStream:
    """A second batch per optimizer step (``train-cls --seg-data``, ``train-seg --adapt-data``): an endless
    :class:`SegStream` read through a :class:`StepSampler`; ``batches(step)`` restarts it at optimizer step ``step``,
    so a resumed run reads what the straight one did."""

    def __init__(self, dataset: LUSDataset, seed: int, batch_size: int, env: DistEnv, workers: int, pin: bool) -> None:
        self.sampler = StepSampler(batch_size, env)
        self.loader = DataLoader(SegStream(dataset, seed), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=workers, pin_memory=pin)  # fmt: skip

    def batches(self, step: int) -> Iterator[dict[str, Any]]:
        """The stream's batches from optimizer step ``step`` on (a fresh iterator: its workers start anew)."""
        self.sampler.start = step
        return iter(self.loader)
