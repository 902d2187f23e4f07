"""Reverse-transfer classification: k-fold training, held-out predictions, eval-cls, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from kit import Interrupt, simulated, strip_timing
from safetensors.torch import load_file
from typer.testing import CliRunner

from pleura.cli import app
from pleura.labels import DIAGNOSES
from pleura.models import ClassifierConfig, UNet, UNetConfig
from pleura.simulate import SimulationConfig, write_dataset
from pleura.train.cls import (
    BalancedSampler,
    ClsTrainConfig,
    ClsTrainer,
    running_stats_kept,
    train_kfold,
)
from pleura.train.distributed import DistEnv
from pleura.train.loop import TrainError
from pleura.train.samplers import SegStream, StepSampler
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


# ------------------------------------------------------------------ --seg-data (issue 14, item 1)
TINY_CLS = {"batch_size": 4, "patience": 100, "model": ClassifierConfig(unet=UNetConfig(width=4, depth=2))}


@pytest.fixture(scope="module")
def seg_set(tmp_path_factory) -> Path:
    """Simulated frames with masks at the classification frames' size (64 px), another simulation seed."""
    return simulated(tmp_path_factory, "segdata", n=6, seed=9, size=64, frames=2, workers=1)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_seg_data_adds_its_weighted_loss_to_every_step(setup, seg_set, tmp_path):
    """With a learning rate too small to move the weights, the two runs see the same classification loss at every
    step, so their training losses differ by exactly seg_weight x the segmentation loss logged."""
    data, _, _ = setup
    still = {**TINY_CLS, "model": ClassifierConfig(dropout=0.0, unet=UNetConfig(width=4, depth=2))}
    base = ClsTrainConfig(epochs=1, lr=1e-12, **still)
    ClsTrainer(base, data, tmp_path / "plain", DistEnv()).fit()
    cfg = ClsTrainConfig(epochs=1, lr=1e-12, seg_data=str(seg_set), seg_weight=0.7, **still)
    summary = ClsTrainer(cfg, data, tmp_path / "seg", DistEnv()).fit()
    (plain,), (seg,) = _records(tmp_path / "plain"), _records(tmp_path / "seg")
    assert "train_seg_loss" not in plain and seg["train_seg_loss"] > 0.1
    assert seg["train_loss"] - plain["train_loss"] == pytest.approx(0.7 * seg["train_seg_loss"], rel=1e-4)
    assert plain["val_balanced_accuracy"] == seg["val_balanced_accuracy"]
    for key in ("val_seg_loss", "val_seg_mean_iou", "val_seg_pleural_line_dice", "val_seg_a_line_dice"):
        assert key not in plain and seg[key] is not None and np.isfinite(seg[key]), key
    config = json.loads((tmp_path / "seg" / "config.json").read_text())
    assert config["train"]["seg_data"] == str(seg_set) and config["train"]["seg_weight"] == 0.7
    assert config["seg_data"]["schema"] == "dense" and config["seg_data"]["train_frames"] > 0  # scratch: dense
    assert config["seg_data"]["train_frames"] + config["seg_data"]["val_frames"] == 12
    saved = json.loads((tmp_path / "seg" / "summary.json").read_text())
    assert saved["segmentation"] == summary["segmentation"]
    assert saved["segmentation"]["mean_iou"] == seg["val_seg_mean_iou"] and saved["segmentation"]["epoch"] == 1


def test_resume_with_seg_data_is_exact(setup, seg_set, tmp_path):
    """A frozen first epoch, then one with the segmentation stream: killed after epoch 1 and resumed, the run ends
    with the weights and log of the straight run (the stream restarts at the step the checkpoint records)."""
    data, _, sparse = setup
    cfg = ClsTrainConfig(init=f"sparse:{sparse}", epochs=2, freeze_epochs=1, seg_data=str(seg_set), **TINY_CLS)
    straight = ClsTrainer(cfg, data, tmp_path / "straight", DistEnv())
    straight.fit()
    assert (
        2 * straight.seg_stream.sampler.start == straight.scheduler.last_epoch > 0
    )  # epoch 2 drew from its first step
    with pytest.raises(KeyboardInterrupt):
        ClsTrainer(cfg, data, tmp_path / "cut", DistEnv(), progress=Interrupt(after=1)).fit()
    ClsTrainer(cfg, data, tmp_path / "cut", DistEnv()).fit(resume=True)
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = strip_timing(tmp_path / "straight" / "metrics.jsonl")
    assert records == strip_timing(tmp_path / "cut" / "metrics.jsonl")
    assert records[0]["train_seg_loss"] is None and records[1]["train_seg_loss"] > 0
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["seg_data"]["schema"] == "sparse"
    other = ClsTrainConfig(init=f"sparse:{sparse}", epochs=2, freeze_epochs=1, seg_data=str(seg_set), seg_weight=0.2,
                           **TINY_CLS)  # fmt: skip
    with pytest.raises(TrainError, match=r"seg_weight=0.5 but seg_weight=0.2 was requested"):
        ClsTrainer(other, data, tmp_path / "cut", DistEnv()).fit(resume=True)


def test_adapt_weight_adds_its_weighted_self_training_loss_to_every_step(setup, tmp_path):
    """Self-training on the batch's own frames: with weights too small to move, the runs with and without it differ
    in training loss by exactly adapt_weight x the self-training loss logged; the classification is untouched."""
    data, _, _ = setup
    still = {**TINY_CLS, "model": ClassifierConfig(dropout=0.0, unet=UNetConfig(width=4, depth=2))}
    ClsTrainer(ClsTrainConfig(epochs=1, lr=1e-12, **still), data, tmp_path / "plain", DistEnv()).fit()
    cfg = ClsTrainConfig(epochs=1, lr=1e-12, adapt_weight=0.3, adapt_threshold=0.01, **still)  # random U-Net: unsure
    ClsTrainer(cfg, data, tmp_path / "adapt", DistEnv()).fit()
    (plain,), (adapt,) = _records(tmp_path / "plain"), _records(tmp_path / "adapt")
    assert "adapt_loss" not in plain and adapt["adapt_loss"] > 0 and 0 < adapt["adapt_kept"] <= 1
    assert adapt["train_loss"] - plain["train_loss"] == pytest.approx(0.3 * adapt["adapt_loss"], rel=1e-4)
    assert plain["val_balanced_accuracy"] == adapt["val_balanced_accuracy"]


def test_resume_with_adapt_weight_is_exact_and_frozen_epochs_do_not_adapt(setup, seg_set, tmp_path):
    """A frozen first epoch (no self-training: nothing it could change), then one with it beside the --seg-data
    stream: killed after epoch 1 and resumed, the run ends as the straight one did (the teacher is the epoch's
    starting U-Net, rebuilt from ``last/``), and its weights differ from the same run without self-training."""
    data, _, sparse = setup
    base = {"init": f"sparse:{sparse}", "epochs": 2, "freeze_epochs": 1, "seg_data": str(seg_set), **TINY_CLS}
    cfg = ClsTrainConfig(adapt_weight=1.0, adapt_threshold=0.5, **base)
    ClsTrainer(cfg, data, tmp_path / "straight", DistEnv()).fit()
    with pytest.raises(KeyboardInterrupt):
        ClsTrainer(cfg, data, tmp_path / "cut", DistEnv(), progress=Interrupt(after=1)).fit()
    ClsTrainer(cfg, data, tmp_path / "cut", DistEnv()).fit(resume=True)
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = strip_timing(tmp_path / "straight" / "metrics.jsonl")
    assert records == strip_timing(tmp_path / "cut" / "metrics.jsonl")
    assert "adapt_loss" not in records[0] and records[1]["adapt_loss"] > 0 and records[1]["train_seg_loss"] > 0
    ClsTrainer(ClsTrainConfig(**base), data, tmp_path / "plain", DistEnv()).fit()
    plain = load_file(str(tmp_path / "plain" / "last" / "model.safetensors"))
    assert any(not torch.equal(a[k], plain[k]) for k in a if k.startswith("unet."))
    with pytest.raises(TrainError, match=r"adapt_weight=1.0 but adapt_weight=0.5 was requested"):
        ClsTrainer(ClsTrainConfig(adapt_weight=0.5, adapt_threshold=0.5, **base), data, tmp_path / "cut",
                   DistEnv()).fit(resume=True)  # fmt: skip


def test_bad_adapt_weight_or_tap_is_refused(setup, tmp_path):
    data, _, _ = setup
    for kwargs, match in (({"adapt_weight": -1.0}, "adapt_weight should be a number >= 0"),
                          ({"adapt_weight": float("nan")}, "adapt_weight"),
                          ({"adapt_weight": 0.5, "adapt_threshold": 1.0}, "adapt_threshold")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            ClsTrainConfig(**kwargs)
    cfg = ClsTrainConfig(adapt_weight=0.5, model=ClassifierConfig(tap="bottleneck"), epochs=1)
    with pytest.raises(TrainError, match="--adapt-weight needs a tap that runs the decoder"):
        ClsTrainer(cfg, data, tmp_path / "run", DistEnv()).fit()
    result = runner.invoke(app, ["train-cls", "--data", str(data), "--out", str(tmp_path / "cli"), "--adapt-weight",
                                 "0.5", "--adapt-threshold", "1"])  # fmt: skip
    assert result.exit_code == 2 and "adapt_threshold should be in (0, 1)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "cli").exists()


def test_the_segmentation_stream_is_a_function_of_seed_step_and_rank(seg_set):
    """Every pass of the stream visits every frame once; ranks draw disjoint batches; restarting at a step gives
    the batches a stream running from step 0 reaches there."""
    from pleura.data import LUSDataset

    ds = LUSDataset(seg_set, "dense")
    stream = SegStream(ds, seed=3)
    n = len(ds)
    assert sorted(stream.locate(p)[1] for p in range(n)) == list(range(n))
    assert [stream.locate(p)[1] for p in range(n)] != [stream.locate(p)[1] for p in range(n, 2 * n)]
    assert [stream.locate(p)[0] for p in (0, n - 1, n, 3 * n)] == [0, 0, 1, 3]

    def positions(rank: int, start: int, steps: int) -> list[int]:
        sampler = StepSampler(batch_size=3, env=DistEnv(rank=rank, world_size=2))
        sampler.start = start
        it = iter(sampler)
        return [next(it) for _ in range(3 * steps)]

    r0, r1 = positions(0, 0, 4), positions(1, 0, 4)
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(24))
    assert positions(0, 2, 2) == r0[6:] and positions(1, 3, 1) == r1[9:]
    assert torch.equal(stream[7]["image"], SegStream(LUSDataset(seg_set, "dense"), seed=3)[7]["image"])


def test_seg_batches_leave_the_running_statistics_alone():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(num_classes=4, width=4, depth=2, schema="sparse")).train()
    before = {k: v.clone() for k, v in unet.state_dict().items() if "running" in k}
    with running_stats_kept(unet):
        unet(torch.rand(2, 1, 32, 32)).sum().backward()
    assert all(torch.equal(before[k], unet.state_dict()[k]) for k in before)
    assert all(p.grad is not None for p in unet.parameters())
    unet(torch.rand(2, 1, 32, 32))  # outside the context the statistics move again
    assert not all(torch.equal(before[k], unet.state_dict()[k]) for k in before)


def test_seg_data_of_another_size_or_weight_is_refused_before_training(setup, tmp_path_factory, tmp_path):
    data, dense, _ = setup
    small = simulated(tmp_path_factory, "small", n=2, seed=1, size=96, frames=1, workers=1)
    cfg = ClsTrainConfig(init=f"dense:{dense}", epochs=1, seg_data=str(small))
    with pytest.raises(TrainError, match=r"--seg-data frames must have the training frames' size, 64x64, but this "
                                         r"one is 96x96; make them at that size \(pleura simulate"):  # fmt: skip
        train_kfold(cfg, data, tmp_path / "run", DistEnv(), folds=3)
    with pytest.raises(TrainError, match="--seg-data is not a folder"):
        train_kfold(ClsTrainConfig(seg_data=str(tmp_path / "none")), data, tmp_path / "run", DistEnv(), folds=3)
    assert not (tmp_path / "run").exists()
    for weight in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="seg_weight should be a number > 0 with seg_data"):
            ClsTrainConfig(seg_data=str(small), seg_weight=weight)
    ClsTrainConfig(seg_weight=0.0)  # no seg_data: the weight is not used

    result = runner.invoke(app, ["train-cls", "--data", str(data), "--out", str(tmp_path / "cli"), "--init", "dense",
                                 "--init-run", str(dense), "--seg-data", str(small), "--folds", "3"])  # fmt: skip
    assert result.exit_code != 0 and "must have the training frames' size, 64x64" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "cli").exists()
    result = runner.invoke(app, ["train-cls", "--data", str(data), "--out", str(tmp_path / "cli"), "--seg-data",
                                 str(small), "--seg-weight", "0"])  # fmt: skip
    assert result.exit_code == 2 and "should be a number > 0" in result.output


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_cls_with_seg_data(setup, seg_set, tmp_path, torchrun_cpu):
    data, _, _ = setup
    run = tmp_path / "ddp"
    torchrun_cpu(
        "train-cls", "--data", str(data), "--out", str(run), "--init", "scratch", "--folds", "3", "--epochs", "2",
        "--batch-size", "2", "--freeze-epochs", "1", "--seg-data", str(seg_set), "--seg-weight", "0.5",
    )  # fmt: skip
    summary = json.loads((run / "fold0" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_identical"]
    assert np.isfinite(summary["segmentation"]["mean_iou"])
    records = _records(run / "fold0")
    assert records[0]["train_seg_loss"] is None and records[1]["train_seg_loss"] > 0


def test_a_sparse_init_from_the_shipped_foundation(tmp_path):
    """--init sparse --init-run foundation-sparse-w16-128: the diagnosis starts from the shipped segmentation U-Net
    (its 128-px frames: a dataset of another size is refused with the sizes named)."""
    from pleura.models import pretrained
    from pleura.train.cls import check_init_run, init_weights

    assert init_weights(Path("foundation-sparse-w16-128")) == pretrained("foundation-sparse-w16-128")
    check_init_run(Path("foundation-sparse-w16-128"), "sparse", (128, 128))
    with pytest.raises(TrainError, match="names a dense run, but this run learned 'sparse'"):
        check_init_run(Path("foundation-sparse-w16-128"), "dense", (128, 128))
    with pytest.raises(TrainError, match="trained on 128x128 images but this dataset has 64x64"):
        check_init_run(Path("foundation-sparse-w16-128"), "sparse", (64, 64))
    with pytest.raises(TrainError, match=r"nothing\.safetensors: not a train-seg run"):
        check_init_run(tmp_path / "nothing.safetensors", "sparse", (128, 128))
