"""Benchmark scripts that read finished runs: run on tiny runs, their figures checked against the package's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pocus_levers_mean_pooling_reproduces_eval_cls(bundle: Path, tmp_path: Path) -> None:
    """``bench_pocus_levers.py``'s ``mean`` rows predict each fold's held-out frames again and pool them per clip as
    ``eval-cls`` does, so its per-fold video balanced accuracy is eval-cls's; mirroring gives other, valid numbers."""
    from pleura.evaluate.cls import evaluate_classification

    run = bundle.parent / "run"  # the session's tiny 2-fold train-cls run on simulated clips
    ev = evaluate_classification(run)
    out = tmp_path / "levers.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pocus_levers.py"), str(run), "--out",
                           str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = json.loads(out.read_text())["runs"][str(run)]
    got = [f["balanced_accuracy"] for f in scores["mean"]]
    assert got == pytest.approx(ev["clip"]["folds"]["balanced_accuracy"]["values"], abs=1e-6)
    for how in ("tta", "geometric"):
        assert len(scores[how]) == 2 and all(0.0 <= f["balanced_accuracy"] <= 1.0 for f in scores[how])
    assert "| tta |" in proc.stdout
