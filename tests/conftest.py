"""Shared fixtures: one small simulated dataset per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pleura.simulate import SimulationConfig, write_dataset


@pytest.fixture(scope="session")
def sim_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 clips x 2 frames at 128 px, both probes, all diagnoses."""
    root = tmp_path_factory.mktemp("sim") / "ds"
    write_dataset(SimulationConfig(n=18, seed=7, size=128, frames=2, workers=2), root)
    return root
