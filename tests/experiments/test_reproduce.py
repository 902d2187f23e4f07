"""``pleura reproduce`` end to end on a tiny configuration: every file its report links to exists."""

from __future__ import annotations

import re

import pytest

from pleura.experiments.dense_vs_sparse import DenseVsSparseConfig
from pleura.experiments.reproduce import INITS, ReproduceConfig, paired_differences, run_reproduce
from pleura.train.distributed import DistEnv


def test_reproduce_runs_end_to_end_and_links_only_existing_files(tmp_path):
    seg = DenseVsSparseConfig(seeds=(0,), train_clips=9, test_clips=3, size=64, epochs=1, width=4, depth=2)
    cfg = ReproduceConfig(seg=seg, folds=3, cls_epochs=1)
    results = run_reproduce(tmp_path, cfg, DistEnv())
    report = (tmp_path / "report.md").read_text()
    assert "simulated" in report and "Ranking by frame-level balanced accuracy" in report
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert len(links) >= 5
    for link in links:
        assert (tmp_path / link).exists(), link
    for link in re.findall(r"\]\(([^)]+)\)", (tmp_path / "segmentation" / "report.md").read_text()):
        assert (tmp_path / "segmentation" / link).exists(), link
    assert set(results["classification"]) == set(INITS)
    assert results["paired"]["dense-sparse"]["folds"] == 3 and "| dense - sparse |" in report
    for init in INITS:
        assert (tmp_path / "classification" / f"{init}-seed0" / "eval.json").exists()
    # the training time every stage recorded is summed, so a resumed or cached study still states its cost
    assert set(results["training_s"]) == {"segmentation", *INITS}
    assert all(v > 0 for v in results["training_s"].values())
    assert "Training time recorded by the stages: segmentation" in report
    again = run_reproduce(tmp_path, cfg, DistEnv())  # every stage cached: nothing retrains
    assert again["training_s"] == results["training_s"] and again["seconds"] < results["seconds"]
    seg_report = (tmp_path / "segmentation" / "report.md").read_text()  # rewritten by the cached call
    assert f"segmentation {results['training_s']['segmentation'] / 60:.1f} min" in seg_report


def test_reproduce_cli_refuses_bad_seeds_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from pleura.cli import app

    for bad, why in (("0,x", "comma-separated integers"), ("1,1", "no seed twice"), (",", "at least one seed")):
        got = CliRunner().invoke(app, ["reproduce", "--quick", "--seeds", bad, "--out", str(tmp_path / "r")])
        assert got.exit_code == 2 and why in got.output, got.output
    assert not (tmp_path / "r").exists()


def test_paired_differences_pair_folds_within_each_seed():
    def ev(*values):
        return {"frame": {"folds": {"balanced_accuracy": {"values": list(values)}}}}

    evals = {"dense": [ev(0.6, 0.7, 0.5), ev(0.9, 0.4, 0.4)], "sparse": [ev(0.5, 0.7, 0.4), ev(0.5, 0.5, 0.5)]}
    d = paired_differences(evals, "dense", "sparse")
    assert d["seed_differences"] == pytest.approx([0.2 / 3, 0.2 / 3])
    assert d["mean"] == pytest.approx(0.2 / 3) and d["std_over_seeds"] == pytest.approx(0.0)
    assert (d["folds_higher"], d["folds_tied"], d["folds"]) == (3, 1, 6)
    assert (d["seeds_higher"], d["seeds"]) == (2, 2)
