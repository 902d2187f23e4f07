"""Segmentation training: capacity, checkpoints, exact resume, torchrun with gloo, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kit import Interrupt, simulated, strip_timing
from PIL import Image
from safetensors.torch import load_file

from pleura.data import LUSDataset, default_augmentation, strong_augmentation
from pleura.metrics.segmentation import SegmentationMetrics
from pleura.models import UNet, UNetConfig
from pleura.models.checkpoint import read_checkpoint
from pleura.simulate import SimulationConfig, write_dataset
from pleura.train import checkpoint as ckpt
from pleura.train.distributed import DistEnv
from pleura.train.losses import class_weights, pseudo_label_loss, segmentation_loss
from pleura.train.seg import SegTrainConfig, SegTrainer, TrainError

TINY = {"model": UNetConfig(width=4, depth=2), "batch_size": 4, "epochs": 3, "augment": True, "patience": 100}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return simulated(tmp_path_factory, "seg", n=10, seed=11, size=64, frames=1, workers=1)


@pytest.mark.slow
def test_a_tiny_model_overfits_four_frames(tmp_path):
    root = tmp_path / "four"
    write_dataset(SimulationConfig(n=4, seed=5, size=64, probe="linear", classes=("covid", "normal"), workers=1), root)
    ds = LUSDataset(root, "dense")
    x = torch.stack([ds[i]["image"] for i in range(4)])
    y = torch.stack([ds[i]["mask"] for i in range(4)])
    torch.manual_seed(0)
    model = UNet(UNetConfig(num_classes=8, width=8, depth=3))
    counts = np.bincount(y.numpy().ravel(), minlength=8)
    weights = class_weights(counts)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(250):
        opt.zero_grad()
        segmentation_loss(model(x), y, weights, dice_weight=1.0).backward()
        opt.step()
    model.eval()
    metrics = SegmentationMetrics(8)
    with torch.no_grad():
        metrics.update(model(x).argmax(1), y)
    assert metrics.aggregate()["mean_iou"] > 0.9


def test_checkpoint_round_trip_keeps_model_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = UNet(UNetConfig(num_classes=4, width=4, depth=2, schema="sparse"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(2, 1, 32, 32)).sum().backward()
    opt.step()
    ckpt.write_checkpoint(tmp_path / "last", model, {"schema": "sparse"}, opt, {"epoch": 3})
    again, _meta = read_checkpoint(tmp_path / "last")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    opt2 = torch.optim.AdamW(again.parameters(), lr=1e-3)
    state = ckpt.read_training_state(tmp_path / "last", opt2)
    assert state == {"epoch": 3}
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        for key, value in s1["state"][pid].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(s2["state"][pid][key]))
    assert s1["param_groups"] == s2["param_groups"]
    assert not list(tmp_path.glob(".*"))  # no temporary folder left


def test_resume_after_an_interruption_gives_the_same_weights(tiny_data, tmp_path):
    cfg = SegTrainConfig(schema="dense", **TINY)
    SegTrainer(cfg, tiny_data, tmp_path / "straight", DistEnv()).fit()
    with pytest.raises(KeyboardInterrupt):
        SegTrainer(cfg, tiny_data, tmp_path / "cut", DistEnv(), progress=Interrupt(after=1)).fit()
    assert json.loads((tmp_path / "cut" / "last" / "state.json").read_text())["epoch"] == 1
    SegTrainer(cfg, tiny_data, tmp_path / "cut", DistEnv()).fit(resume=True)
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert strip_timing(tmp_path / "straight" / "metrics.jsonl") == strip_timing(tmp_path / "cut" / "metrics.jsonl")
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and (tmp_path / "cut" / "best" / "model.safetensors").exists()


def test_run_folder_and_resume_are_guarded(tiny_data, tmp_path):
    run = tmp_path / "run"
    cfg = SegTrainConfig(schema="dense", **{**TINY, "epochs": 1})
    SegTrainer(cfg, tiny_data, run, DistEnv()).fit()
    before = (run / "last" / "model.safetensors").read_bytes()
    with pytest.raises(TrainError, match="not empty; pass --resume"):
        SegTrainer(cfg, tiny_data, run, DistEnv()).fit()
    with pytest.raises(TrainError, match=r"config.json: the run was trained with schema='dense' but schema='sparse'"):
        SegTrainer(SegTrainConfig(schema="sparse", **{**TINY, "epochs": 1}), tiny_data, run, DistEnv()).fit(resume=True)
    assert (run / "last" / "model.safetensors").read_bytes() == before


def _copy_dataset(src: Path, dst: Path) -> list[dict]:
    import shutil

    shutil.copytree(src, dst)
    with open(dst / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


def test_a_mask_with_an_unknown_class_is_named_before_training(tiny_data, tmp_path):
    data = tmp_path / "bad"
    rows = _copy_dataset(tiny_data, data)
    bad = data / rows[-1]["mask_dense"]
    mask = np.array(Image.open(bad))
    mask[0, 0] = 42
    Image.fromarray(mask, mode="L").save(bad)  # grayscale PNG keeps the raw index
    with pytest.raises(ValueError, match=rf"{bad.name}: class index 42 is not in schema 'dense'"):
        SegTrainer(SegTrainConfig(schema="dense", **TINY), data, tmp_path / "run", DistEnv()).fit()
    assert not (tmp_path / "run" / "last").exists()


def test_an_image_of_another_size_than_its_mask_is_named(tiny_data, tmp_path):
    data = tmp_path / "bad"
    rows = _copy_dataset(tiny_data, data)
    img = data / rows[0]["image"]
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(img)
    with pytest.raises(ValueError, match="must match its image"):
        SegTrainer(SegTrainConfig(schema="sparse", **TINY), data, tmp_path / "run", DistEnv()).fit()


def test_empty_or_missing_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "manifest.csv").write_text("")
    for data in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ValueError, match=str(data.name)):
            SegTrainer(SegTrainConfig(**TINY), data, tmp_path / "run", DistEnv()).fit()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_end_identical(tiny_data, tmp_path, torchrun_cpu):
    run = tmp_path / "ddp"
    torchrun_cpu(
        "train-seg", "--data", str(tiny_data), "--out", str(run), "--schema", "sparse",
        "--width", "4", "--depth", "2", "--batch-size", "2", "--epochs", "2",
    )  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ranks_identical"] and len(set(summary["rank_digests"])) == 1
    assert len(set(summary["rank_val_score"])) == 1  # metrics are reduced over ranks
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # only rank 0 writes
    assert json.loads((run / "config.json").read_text())["world_size"] == 2


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    return simulated(tmp_path_factory, "seg-other", n=6, seed=12, size=64, frames=1, workers=1)


def test_two_datasets_train_together_with_sampling_weights(tiny_data, other_data, tmp_path):
    cfg = SegTrainConfig(**{**TINY, "epochs": 1, "augment": False}, data_weights=(0.9, 0.1))
    trainer = SegTrainer(cfg, [tiny_data, other_data], tmp_path / "run", DistEnv())
    trainer.fit()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    sizes = [s["train_frames"] for s in config["sources"]]
    assert [Path(s["data"]) for s in config["sources"]] == [tiny_data.resolve(), other_data.resolve()]
    assert config["train_frames"] == sum(sizes) and config["train"]["data_weights"] == [0.9, 0.1]
    draws = np.array(list(trainer.make_sampler(None)))  # the mix the weights ask for, not the sets' sizes
    assert abs((draws < sizes[0]).mean() - 0.9) < 0.2 and len(draws) == sum(sizes)
    with pytest.raises(TrainError, match="gives 1 weights for 2 datasets"):
        SegTrainer(SegTrainConfig(**TINY, data_weights=(1.0,)), [tiny_data, other_data], tmp_path / "x", DistEnv())


def test_datasets_of_other_sizes_or_without_the_schema_are_named(tiny_data, tmp_path):
    small = tmp_path / "small"
    write_dataset(SimulationConfig(n=2, seed=1, size=96, frames=1, workers=1), small)
    with pytest.raises(TrainError, match=r"small: frames are 96x96 px but .* are 64x64"):
        SegTrainer(SegTrainConfig(**TINY), [tiny_data, small], tmp_path / "run", DistEnv()).fit()
    rows = list(csv.DictReader((small / "manifest.csv").open()))
    with (small / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "mask_dense"])
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k != "mask_dense"} for r in rows)
    with pytest.raises(TrainError, match="no mask_dense column"):
        SegTrainer(SegTrainConfig(**TINY, schema="dense"), small, tmp_path / "run2", DistEnv()).fit()


def test_init_from_a_run_of_another_schema_keeps_the_body_and_replaces_the_head(tiny_data, tmp_path):
    dense = tmp_path / "dense"
    SegTrainer(SegTrainConfig(**{**TINY, "epochs": 1}, schema="dense"), tiny_data, dense, DistEnv()).fit()
    source, _ = read_checkpoint(dense / "best")
    cfg = SegTrainConfig(**{**TINY, "epochs": 1, "lr": 1e-12}, schema="sparse", init=str(dense))
    SegTrainer(cfg, tiny_data, tmp_path / "tuned", DistEnv()).fit()
    tuned, _ = read_checkpoint(tmp_path / "tuned" / "last")
    assert tuned.config.num_classes == 4 and tuned.config.schema == "sparse"
    stem = "stem.block.0.weight" if "stem.block.0.weight" in tuned.state_dict() else next(iter(tuned.state_dict()))
    assert torch.allclose(tuned.state_dict()[stem], source.state_dict()[stem], atol=1e-6)  # lr ~0: body kept
    with pytest.raises(TrainError, match="its U-Net has width=4 but width=8 was asked"):
        SegTrainer(SegTrainConfig(model=UNetConfig(width=8, depth=2), init=str(dense)), tiny_data, tmp_path / "w",
                   DistEnv()).fit()  # fmt: skip


def test_cli_mixes_datasets_and_starts_from_a_model_file(tiny_data, other_data, tmp_path):
    from typer.testing import CliRunner

    from pleura.cli import app

    runner = CliRunner(env={"COLUMNS": "300"})
    base = ["train-seg", "--width", "4", "--depth", "2", "--epochs", "1", "--batch-size", "4"]
    first = runner.invoke(app, [*base, "--data", str(tiny_data), "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    model_file = tmp_path / "a" / "best" / "model.safetensors"
    args = [
        *base,
        "--data",
        str(tiny_data),
        "--data",
        str(other_data),
        "--data-weights",
        "1,3",
        "--init",
        str(model_file),
    ]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert len(config["sources"]) == 2 and config["init"] == str(model_file.resolve())
    bad = runner.invoke(app, [*base, "--data", str(tiny_data), "--data-weights", "x", "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "--data-weights must be comma-separated numbers" in bad.output


def test_the_shipped_foundation_is_a_sparse_unet_that_train_seg_starts_from(tiny_data, tmp_path):
    """The segmentation foundation ships in the package; --init takes its name (another schema: a fresh head)."""
    from pleura.models import load_model, pretrained

    model, meta = load_model(pretrained("foundation-sparse-w16-128"))
    assert isinstance(model, UNet) and model.config.schema == "sparse" and meta["image_size"] == [128, 128]
    assert (model.config.width, model.config.depth) == (16, 4) and "foundation.sh" in meta["recipe"]
    cfg = SegTrainConfig(**{**TINY, "epochs": 1, "model": UNetConfig(width=16, depth=4)}, schema="dense",
                         init="foundation-sparse-w16-128")  # fmt: skip
    SegTrainer(cfg, tiny_data, tmp_path / "tuned", DistEnv()).fit()
    tuned, _ = read_checkpoint(tmp_path / "tuned" / "last")
    assert tuned.config.schema == "dense" and tuned.config.num_classes == 8
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["init"] == "foundation-sparse-w16-128"


def test_pseudo_label_loss_learns_only_the_teachers_confident_pixels():
    """The loss is the class-weighted cross-entropy on the pixels whose teacher probability reaches the threshold,
    computed here by hand; no confident pixel gives 0, not NaN."""
    torch.manual_seed(0)
    logits, teacher = torch.randn(2, 3, 4, 4), torch.softmax(3 * torch.randn(2, 3, 4, 4), 1)
    weights = torch.tensor([0.5, 1.0, 2.0])
    loss, kept = pseudo_label_loss(logits, teacher, 0.8, weights)
    conf, target = teacher.max(1)
    keep = conf >= 0.8
    assert 0 < keep.sum() < keep.numel() and kept == pytest.approx(float(keep.float().mean()))
    ce = -torch.log_softmax(logits, 1).gather(1, target[:, None])[:, 0] * weights[target]
    assert float(loss) == pytest.approx(float(ce[keep].sum() / weights[target][keep].sum()), rel=1e-5)
    zero, none_kept = pseudo_label_loss(logits, torch.full_like(teacher, 1 / 3), 0.9, weights)
    assert float(zero) == 0.0 and none_kept == 0.0


def test_the_strong_view_changes_intensities_not_geometry(tiny_data):
    """``strong`` adds a second view of the same (flipped, zoomed) frame: the same scan area, other intensities,
    reproducible from (seed, epoch, index)."""
    ds = LUSDataset(tiny_data, None, transform=default_augmentation(None), seed=3, strong=strong_augmentation())
    a, b = ds[2], ds[2]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["strong"], b["strong"])
    assert torch.equal(a["strong"] > 0, a["image"] > 0) and not torch.allclose(a["strong"], a["image"], atol=1e-3)
    assert torch.equal(LUSDataset(tiny_data, None, transform=default_augmentation(None), seed=3)[2]["image"],
                       a["image"])  # fmt: skip


def test_self_training_on_unlabelled_frames_logs_resumes_and_names_bad_folders(tiny_data, other_data, tmp_path):
    """``adapt_data`` adds a self-training loss on frames without masks (here other simulated frames standing in for
    real ones): it changes the weights, logs the loss and the share of confident pixels, resumes bit-identically
    (the teacher is the epoch's starting model, rebuilt from ``last/``), and a folder of another size is named."""
    cfg = SegTrainConfig(schema="sparse", **TINY, adapt_data=str(other_data), adapt_threshold=0.4)
    SegTrainer(cfg, tiny_data, tmp_path / "straight", DistEnv()).fit()
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["adapt_loss"] > 0 and 0 < r["adapt_kept"] <= 1 for r in records)
    info = json.loads((tmp_path / "straight" / "config.json").read_text())["adapt_data"]
    assert info["frames"] == 6 and Path(info["folder"]) == other_data.resolve()
    SegTrainer(SegTrainConfig(schema="sparse", **TINY), tiny_data, tmp_path / "plain", DistEnv()).fit()
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    plain = load_file(str(tmp_path / "plain" / "last" / "model.safetensors"))
    assert any(not torch.equal(a[k], plain[k]) for k in a)

    with pytest.raises(KeyboardInterrupt):
        SegTrainer(cfg, tiny_data, tmp_path / "cut", DistEnv(), progress=Interrupt(after=2)).fit()
    SegTrainer(cfg, tiny_data, tmp_path / "cut", DistEnv()).fit(resume=True)
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert strip_timing(tmp_path / "straight" / "metrics.jsonl") == strip_timing(tmp_path / "cut" / "metrics.jsonl")

    small = tmp_path / "small"
    write_dataset(SimulationConfig(n=2, seed=1, size=96, frames=1, workers=1), small)
    bad = SegTrainConfig(schema="sparse", **TINY, adapt_data=str(small))
    with pytest.raises(TrainError, match=r"small/.*--adapt-data frames must have the training frames' size, 64x64"):
        SegTrainer(bad, tiny_data, tmp_path / "bad", DistEnv()).fit()
    for kwargs, match in (({"adapt_weight": 0}, "adapt_weight"), ({"adapt_threshold": 1.0}, "adapt_threshold")):
        with pytest.raises(ValueError, match=match):
            SegTrainConfig(**kwargs)
