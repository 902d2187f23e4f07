"""Reverse-transfer classification: k-fold training, held-out predictions, eval-cls, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from pleura.cli import app
from pleura.labels import DIAGNOSES
from pleura.models import ClassifierConfig, UNetConfig
from pleura.simulate import SimulationConfig, write_dataset
from pleura.train.cls import BalancedSampler, ClsTrainConfig, train_kfold
from pleura.train.distributed import DistEnv
from pleura.train.loop import TrainError
from pleura.train.seg import SegTrainConfig, SegTrainer

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cls")
    write_dataset(SimulationConfig(n=18, seed=4, size=64, frames=2, workers=1), root / "ds")
    for schema in ("dense", "sparse"):
        cfg = SegTrainConfig(schema=schema, epochs=1, model=UNetConfig(width=4, depth=2), batch_size=4)
        SegTrainer(cfg, root / "ds", root / schema, DistEnv()).fit()
    return root / "ds", root / "dense", root / "sparse"


def test_kfold_predicts_every_frame_once_from_a_model_that_reused_the_segmenter(setup, tmp_path):
    data, dense, _ = setup
    cfg = ClsTrainConfig(init=f"dense:{dense}", epochs=1, batch_size=4, freeze_epochs=1)
    train_kfold(cfg, data, tmp_path / "run", DistEnv(), folds=3)
    ids, patients_by_fold = [], []
    for k in range(3):
        with open(tmp_path / "run" / f"fold{k}" / "test_predictions.csv") as fh:
            rows = list(csv.DictReader(fh))
        ids += [r["id"] for r in rows]
        patients_by_fold.append({r["patient_id"] for r in rows})
        probs = np.array([[float(r[f"p_{c}"]) for c in DIAGNOSES] for r in rows])
        assert {"bm_b_line_count", "bm_aeration_score", "bm_pleural_line_unhealthy_fraction"} <= set(rows[0])
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    with open(data / "manifest.csv") as fh:
        assert sorted(ids) == sorted(r["id"] for r in csv.DictReader(fh))
    assert all(a.isdisjoint(b) for i, a in enumerate(patients_by_fold) for b in patients_by_fold[i + 1 :])
    # one epoch on a frozen body: the classifier's U-Net still holds the segmenter's weights
    seg = load_file(str(dense / "best" / "model.safetensors"))
    cls = load_file(str(tmp_path / "run" / "fold0" / "best" / "model.safetensors"))
    assert all(torch.equal(seg[k], cls[f"unet.{k}"]) for k in seg)

    result = runner.invoke(app, ["eval-cls", "--run", str(tmp_path / "run"), "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ev["folds"] == 3 and len(ev["clip"]["per_fold"]) == 3
    assert sum(map(sum, ev["frame"]["pooled"]["confusion"])) == len(ids)
    assert sum(map(sum, ev["clip"]["pooled"]["confusion"])) == 18
    assert "Clip level" in (tmp_path / "run" / "eval.md").read_text()
    assert set(ev["biomarkers_by_diagnosis"]["b_line_count"]) == set(DIAGNOSES)
    with open(tmp_path / "run" / "clip_biomarkers.csv") as fh:
        clips = list(csv.DictReader(fh))
    assert len(clips) == 18 and {"b_line_count", "aeration_score", "p_covid"} <= set(clips[0])
    assert "Biomarkers read from the model's segmentation" in (tmp_path / "run" / "eval.md").read_text()


def test_bad_input_is_refused_before_any_training(setup, tmp_path):
    data, dense, sparse = setup
    bad = [
        (f"sparse:{dense}", "names a sparse run, but this run learned 'dense'"),
        (f"dense:{sparse}", "names a dense run, but this run learned 'sparse'"),
        (f"dense:{tmp_path / 'none'}", "not a train-seg run"),
        ("densest:x", "expected dense:RUN, sparse:RUN or scratch"),
    ]
    for init, message in bad:
        with pytest.raises(TrainError, match=message):
            train_kfold(ClsTrainConfig(init=init, epochs=1), data, tmp_path / "run", DistEnv(), folds=3)
    with pytest.raises(ValueError, match="needs at least 9 groups per class"):
        train_kfold(ClsTrainConfig(epochs=1), data, tmp_path / "run", DistEnv(), folds=9)
    assert not (tmp_path / "run").exists()


def test_unknown_labels_and_one_class_datasets_are_refused(setup, tmp_path):
    data, _, _ = setup
    shutil.copytree(data, tmp_path / "ds")
    with open(tmp_path / "ds" / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["diagnosis"] = "tuberculosis"

    def write(selected: list[dict]) -> None:
        with open(tmp_path / "ds" / "manifest.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(selected)

    write(rows)
    with pytest.raises(TrainError, match="'tuberculosis' unknown to the classifier"):
        train_kfold(ClsTrainConfig(epochs=1), tmp_path / "ds", tmp_path / "run", DistEnv(), folds=3)
    write([r for r in rows if r["diagnosis"] == "covid"])
    with pytest.raises(ValueError, match="one class"):
        train_kfold(ClsTrainConfig(epochs=1), tmp_path / "ds", tmp_path / "run", DistEnv(), folds=3)
    assert not (tmp_path / "run").exists()


def test_balanced_sampler_draws_classes_equally_and_shards_ranks():
    labels = [0] * 80 + [1] * 15 + [2] * 5
    counts = np.zeros(3)
    for epoch in range(20):
        s = BalancedSampler(labels, DistEnv(), seed=1)
        s.set_epoch(epoch)
        counts += np.bincount(np.array(labels)[list(s)], minlength=3)
    assert counts.min() / counts.max() > 0.8
    r0 = list(BalancedSampler(labels, DistEnv(rank=0, world_size=2), seed=1))
    r1 = list(BalancedSampler(labels, DistEnv(rank=1, world_size=2), seed=1))
    assert len(r0) == len(r1) == 50 and r0 != r1


@pytest.mark.slow
def test_auxiliary_segmentation_loss_trains_and_needs_a_decoder_tap(setup, tmp_path):
    data, _, sparse = setup
    cfg = ClsTrainConfig(init=f"sparse:{sparse}", epochs=1, batch_size=4, aux_seg_weight=0.5)
    summary = train_kfold(cfg, data, tmp_path / "aux", DistEnv(), folds=3)
    assert all(np.isfinite(s["best_val_score"]) for s in summary)
    config = json.loads((tmp_path / "aux" / "fold0" / "config.json").read_text())
    assert config["train"]["aux_seg_weight"] == 0.5
    bad = ClsTrainConfig(
        init=f"sparse:{sparse}", epochs=1, model=ClassifierConfig(tap="bottleneck"), aux_seg_weight=0.5
    )
    with pytest.raises(TrainError, match="needs a tap that runs the decoder"):
        train_kfold(bad, data, tmp_path / "bad", DistEnv(), folds=3)


@pytest.mark.slow
def test_kfold_resume_keeps_finished_folds(setup, tmp_path):
    data, _, _ = setup
    cfg = ClsTrainConfig(
        init="scratch", epochs=1, batch_size=4, model=ClassifierConfig(unet=UNetConfig(width=4, depth=2))
    )
    train_kfold(cfg, data, tmp_path / "run", DistEnv(), folds=3)
    stamp = (tmp_path / "run" / "fold1" / "test_predictions.csv").stat().st_mtime_ns
    (tmp_path / "run" / "fold2" / "test_predictions.csv").unlink()  # as if interrupted in fold 2
    train_kfold(cfg, data, tmp_path / "run", DistEnv(), folds=3, resume=True)
    assert (tmp_path / "run" / "fold1" / "test_predictions.csv").stat().st_mtime_ns == stamp
    assert (tmp_path / "run" / "fold2" / "test_predictions.csv").exists()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_cls(setup, tmp_path, torchrun_cpu):
    data, _, _ = setup
    run = tmp_path / "ddp"
    torchrun_cpu(
        "train-cls", "--data", str(data), "--out", str(run), "--init", "scratch",
        "--folds", "3", "--epochs", "1", "--batch-size", "2", "--freeze-epochs", "1",
    )  # fmt: skip
    for k in range(3):
        summary = json.loads((run / f"fold{k}" / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["ranks_identical"]
        assert len(set(summary["rank_val_score"])) == 1
        assert (run / f"fold{k}" / "test_predictions.csv").exists()
