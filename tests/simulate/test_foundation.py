"""``scripts/foundation.sh``, the segmentation foundation's pretraining recipe, end to end at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pleura.evaluate.seg import load_segmenter

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "foundation.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    """Run the recipe with this interpreter; its completed process."""
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_recipe_runs_end_to_end_at_a_tiny_size(tmp_path):
    out = tmp_path / "f"
    tiny = ("--out", str(out), "--clips", "3", "--frames", "2", "--size", "64", "--epochs", "1", "--width", "4")
    proc = run(*tiny, "--workers", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "run" / "best" / "model.safetensors").is_file()
    config = json.loads((out / "data" / "dataset.json").read_text())["config"]
    assert config["randomize"] is True and config["probe"] == "mixed" and config["n"] == 3
    assert config["line_label_px"] == 4.0 and config["a_line_label_px"] == 5.25  # 8 and 10.5 px at 128, scaled
    assert load_segmenter(out / "run")[1] == "sparse"
    again = run(*tiny, "--workers", "1")  # the data are reused; the run folder is not overwritten silently
    assert "reusing the simulated set" in again.stdout
    assert again.returncode != 0 and "--overwrite" in again.stdout + again.stderr


@pytest.mark.parametrize(
    "args,message",
    [(["--bogus"], "unknown option --bogus"), (["--clips", "x"], "--clips must be a whole number"),
     (["--schema", "anatomy"], "--schema must be sparse or dense"), (["--out"], "--out needs a value")],
)  # fmt: skip
def test_bad_options_fail_with_one_line(args, message):
    proc = run(*args)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1
