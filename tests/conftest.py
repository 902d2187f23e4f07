"""Shared fixtures: one small simulated dataset per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pleura.simulate import SimulationConfig, write_dataset


@pytest.fixture(scope="session")
def sim_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 clips x 2 frames at 128 px, both probes, all diagnoses."""
    root = tmp_path_factory.mktemp("sim") / "ds"
    write_dataset(SimulationConfig(n=18, seed=7, size=128, frames=2, workers=2), root)
    return root


def _torchrun_cpu(*pleura_args: str, nproc: int = 2, timeout: int = 600) -> None:
    """Run ``pleura ARGS`` under torchrun with ``nproc`` CPU processes (gloo); fail with its stderr."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "pleura", *pleura_args, "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture
def torchrun_cpu():
    """``torchrun_cpu(*args)``: run ``pleura ARGS`` under torchrun with 2 CPU processes."""
    return _torchrun_cpu
