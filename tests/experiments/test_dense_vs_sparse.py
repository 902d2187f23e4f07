"""The dense-vs-sparse experiment end to end on tiny simulated data: report, figures, cached reruns."""

from __future__ import annotations

import re

from pleura.experiments.dense_vs_sparse import DenseVsSparseConfig, run_experiment
from pleura.train.distributed import DistEnv


def test_dense_vs_sparse_experiment_end_to_end(tmp_path):
    cfg = DenseVsSparseConfig(seeds=(0, 1), train_clips=6, test_clips=3, size=64, epochs=1, width=4, depth=2)
    results = run_experiment(tmp_path, cfg, DistEnv())
    report = (tmp_path / "report.md").read_text()
    assert "simulated" in report and "| mean IoU |" in report
    for link in re.findall(r"\]\(([^)]+)\)", report):
        assert (tmp_path / link).exists(), link
    assert len(results["table"]["dense"]["mean_iou"]["values"]) == 2
    assert (tmp_path / "runs" / "sparse-seed1" / "eval.json").exists()
    # a rerun reuses data and finished runs
    before = (tmp_path / "runs" / "dense-seed0" / "summary.json").stat().st_mtime_ns
    run_experiment(tmp_path, cfg, DistEnv())
    assert (tmp_path / "runs" / "dense-seed0" / "summary.json").stat().st_mtime_ns == before
