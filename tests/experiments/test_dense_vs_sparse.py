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


def test_dense_vs_sparse_on_given_datasets(tmp_path):
    """Your own datasets (here simulated ones stand in for imported labels) replace the simulator's."""
    import csv

    import pytest

    from pleura.simulate import SimulationConfig, write_dataset

    for name, seed in (("mine", 5), ("held", 6)):
        write_dataset(SimulationConfig(n=4, seed=seed, size=64, frames=1, workers=1), tmp_path / name)
    cfg = DenseVsSparseConfig(seeds=(0,), epochs=1, width=4, depth=2, train_data=str(tmp_path / "mine"),
                              test_data=str(tmp_path / "held"))  # fmt: skip
    results = run_experiment(tmp_path / "out", cfg, DistEnv())
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**The data are imported**" in report and str(tmp_path / "held") in report
    assert results["test_frames"] == 4 and not (tmp_path / "out" / "data").exists()  # nothing simulated
    with pytest.raises(ValueError, match="give both --train-data and --test-data"):
        DenseVsSparseConfig(train_data=str(tmp_path / "mine"))
    rows = list(csv.DictReader((tmp_path / "held" / "manifest.csv").open()))
    with (tmp_path / "held" / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "mask_dense"])
        w.writeheader()
        w.writerows({k: v for k, v in r.items() if k != "mask_dense"} for r in rows)
    with pytest.raises(ValueError, match="held: no mask_dense column"):
        run_experiment(tmp_path / "out2", cfg, DistEnv())
