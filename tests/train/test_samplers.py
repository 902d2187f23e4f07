"""WeightedSampler: the draws follow the weights, are reproducible per (seed, epoch) and shard over ranks."""

from __future__ import annotations

import numpy as np
import pytest

from pleura.train.distributed import DistEnv
from pleura.train.samplers import WeightedSampler


def test_draws_follow_the_weights_and_repeat_for_a_seed_and_epoch():
    weights = np.r_[np.full(100, 0.5 / 100), np.full(900, 0.5 / 900)]  # two datasets, half the draws each
    sampler = WeightedSampler(weights, DistEnv(), seed=3)
    draws = np.array(list(sampler))
    assert len(draws) == 1000
    assert abs((draws < 100).mean() - 0.5) < 0.06  # unweighted, the small set would get 10%
    assert list(sampler) == draws.tolist()
    sampler.set_epoch(1)
    assert list(sampler) != draws.tolist()


def test_ranks_split_one_draw():
    weights = np.ones(10)
    parts = [list(WeightedSampler(weights, DistEnv(rank=r, world_size=2), seed=0)) for r in range(2)]
    whole = np.random.default_rng([0, 0]).choice(10, size=10, p=weights / 10)
    assert parts[0] == whole[0::2].tolist() and parts[1] == whole[1::2].tolist()


@pytest.mark.parametrize("bad", [[], [0.0, 0.0], [1.0, -1.0], [float("nan")]])
def test_bad_weights_are_refused(bad):
    with pytest.raises(ValueError, match="sampling weights"):
        WeightedSampler(bad, DistEnv())
