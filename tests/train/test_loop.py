"""The learning-rate schedule (torch's LambdaLR) gives the warm-up + cosine rates of the hand-written loop."""

from __future__ import annotations

import math

import pytest
import torch

from pleura.train.distributed import DistEnv
from pleura.train.loop import LoopConfig, Trainer, warmup_cosine


def _old_factor(step: int, total: int, warmup: int) -> float:
    """The multiplier the loop computed by hand before it used torch.optim.lr_scheduler."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _trainer(tmp_path, lr: float = 2e-3) -> Trainer:
    trainer = Trainer(LoopConfig(lr=lr), tmp_path, tmp_path / "run", DistEnv())
    head, body = torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)
    trainer.optimizer = torch.optim.AdamW(
        [{"params": head.parameters(), "lr": lr}, {"params": body.parameters(), "lr": lr * 0.1}]
    )
    trainer.base_lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    return trainer


def _run(trainer: Trainer, start: int, stop: int, total: int, warmup: int) -> list[list[float]]:
    """The rates of steps ``start .. stop - 1`` (what each optimizer step used), stepping as the loop does."""
    trainer.scheduler = trainer.make_scheduler(total, warmup, start)
    rates = []
    for _ in range(start, stop):
        rates.append([g["lr"] for g in trainer.optimizer.param_groups])
        trainer.optimizer.step()
        trainer.scheduler.step()
    return rates


@pytest.mark.parametrize(("total", "warmup"), [(300, 20), (250, 0), (7, 7), (40, 1)])
def test_scheduler_gives_the_old_rates_at_every_step(tmp_path, total, warmup):
    trainer = _trainer(tmp_path)
    rates = _run(trainer, 0, total + 5, total, warmup)  # a few steps past the end stay at 0
    for step, got in enumerate(rates):
        want = [base * _old_factor(step, total, warmup) for base in trainer.base_lrs]
        assert got == want, step  # bit-identical, not only within 1e-12: LambdaLR computes base * factor too
        assert warmup_cosine(step, total, warmup) == _old_factor(step, total, warmup)
    assert rates[0][0] == pytest.approx(2e-3 / warmup if warmup else 2e-3)
    if warmup < total:
        assert rates[total] == [0.0, 0.0]  # the cosine ends at zero


def test_a_resumed_schedule_continues_from_the_step_whatever_rate_the_optimizer_state_held(tmp_path):
    total, warmup, cut = 300, 20, 137
    straight = _run(_trainer(tmp_path), 0, total, total, warmup)
    resumed = _trainer(tmp_path)
    state = _trainer(tmp_path)  # an optimizer state saved mid-run (its rates are the last step's) ...
    _run(state, 0, cut, total, warmup)
    saved = state.optimizer.state_dict()
    for group in saved["param_groups"]:
        group.pop("initial_lr")  # ... or by a pleura from before the scheduler, which stored no initial_lr
    resumed.optimizer.load_state_dict(saved)
    assert _run(resumed, cut, total, total, warmup) == straight[cut:]
