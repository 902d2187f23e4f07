"""Small helpers the tests share (importable from any test: pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pleura.simulate import SimulationConfig, write_dataset


def simulated(factory: pytest.TempPathFactory, name: str, **config: object) -> Path:
    """A simulated manifest dataset in a fresh temporary folder (``config``: ``SimulationConfig`` fields)."""
    root = factory.mktemp(name) / "ds"
    write_dataset(SimulationConfig(**config), root)
    return root


class Interrupt:
    """A progress reporter that raises KeyboardInterrupt at the end of epoch ``after``, like Ctrl-C."""

    def __init__(self, after: int) -> None:
        self.after = after

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, n: int, **info: float) -> None:
        pass

    def end_epoch(self, record: dict) -> None:
        if record["epoch"] >= self.after:
            raise KeyboardInterrupt


def strip_timing(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` without their timings, to compare two runs."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        for key in ("images_per_s", "epoch_seconds"):
            r.pop(key)
    return rows
