"""``experiment pocus`` end to end on a tiny fake POCUS tree: every stage runs and the report is complete."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from kit import simulated

from pleura.experiments.dense_vs_sparse import DenseVsSparseConfig
from pleura.experiments.pocus import PocusExperimentConfig, dataset_summary, run_pocus
from pleura.train.distributed import init_distributed


@pytest.mark.slow
def test_pocus_experiment_tiny(fake_pocus: Path, tmp_path: Path, tmp_path_factory) -> None:
    src = fake_pocus
    seg = DenseVsSparseConfig(seeds=(0,), train_clips=6, test_clips=3, size=64, epochs=1, width=4, depth=2,
                              style="pocus")  # fmt: skip
    cfg = PocusExperimentConfig(seg=seg, max_per_clip=3, folds=3, cls_epochs=2, freeze_epochs=1, batch_size=4)
    out = tmp_path / "exp"
    # a labelled stand-in for the real cvat-lus clip (a manifest dataset with masks is used as it is)
    labelled = simulated(tmp_path_factory, "labelled", n=2, seed=3, size=64, frames=2, workers=1)
    results = run_pocus(src, out, cfg, init_distributed("cpu"), real_seg=labelled)
    assert set(results["classification"]) == {"dense", "sparse", "scratch"}
    for row in results["classification"].values():
        assert 0.0 <= row["clip_balanced_accuracy"]["mean"] <= 1.0
    assert set(results["domain_gap"]) == {"pocus (pretraining data)", "physics"}  # with and without the style
    for gap in results["domain_gap"].values():
        assert 0.0 <= gap["auc"] <= 1.0 and len(gap["top"]) == 5 and gap["mean_d"] >= 0
    flags = results["flags"]["dense"]["b_lines"]
    assert flags["clips_flagged"] == 3 and flags["clips_unflagged"] == 6  # covid clips are flagged; images unknown
    assert sum(s["clips"] for s in results["by_source"]["dense"].values()) == 12  # 9 clips + 3 images
    report = (out / "report.md").read_text()
    assert "POCOVID-Net" in report and "Sim-to-real gap" in report
    for link in re.findall(r"\]\(([^)]+)\)", report):
        assert (out / link).exists(), link
    assert json.loads((out / "results.json").read_text())["data"]["covid"]["patients"] == 3
    assert json.loads((out / "data" / "import.json").read_text())["failed"][0]["file"] == "normal/broken.mp4"

    # every variant, scratch too, fine-tuned with the pretraining's simulated frames as --seg-data
    sim_train = out / "segmentation" / "data" / "train"
    for init in ("dense", "sparse", "scratch"):
        fold = out / "classification" / f"{init}-seed0" / "fold0"
        train = json.loads((fold / "config.json").read_text())["train"]
        assert train["seg_data"] == str(sim_train) and train["seg_weight"] == 0.5
        assert json.loads((fold / "summary.json").read_text())["segmentation"]["epoch"] >= 1
    check = results["segmentation_check"]
    assert check["real_data"] == str(labelled) and check["sim_data"] == str(out / "segmentation" / "data" / "test")
    assert check["variants"]["scratch"]["before"] is None and check["variants"]["dense"]["before"] is not None
    for init, v in check["variants"].items():
        assert len(v["folds"]) == 3, init
        for where, keys in (("sim", ("mean_iou", "pleural_line_dice", "a_line_dice")),
                            ("real", ("pleural_line_dice", "a_line_dice", "fp_a_line_per_frame"))):  # fmt: skip
            mean = v["after"][where]["mean_iou" if where == "sim" else "fp_a_line_per_frame"][0]
            assert mean >= 0, (init, where)
            assert set(v["folds"][0][where]) == set(keys)
    assert "## Segmentation before and after fine-tuning" in report and "real pleural-line Dice" in report
    assert "pretrained U-Net (before)" in report and "scratch included" in report


@pytest.mark.slow
def test_pocus_foundation_variant(fake_pocus: Path, tmp_path: Path) -> None:
    """The foundation variant starts from a U-Net model file (its own width), fine-tunes with randomised, banded
    simulated frames as --seg-data, and is scored before (the file) and after (each fold)."""
    from pleura.models import UNet, UNetConfig, save_model

    foundation = tmp_path / "found.safetensors"
    unet = UNet(UNetConfig(num_classes=4, width=6, depth=2, schema="sparse"))
    save_model(unet, foundation, {"kind": "segmentation", "schema": "sparse", "image_size": [64, 64]})
    seg = DenseVsSparseConfig(seeds=(0,), train_clips=4, test_clips=2, size=64, epochs=1, width=4, depth=2)
    cfg = PocusExperimentConfig(seg=seg, max_per_clip=2, folds=2, cls_epochs=1, freeze_epochs=0, batch_size=4,
                                inits=("foundation",), foundation=str(foundation), foundation_seg_clips=2)  # fmt: skip
    out = tmp_path / "exp"
    results = run_pocus(fake_pocus, out, cfg, init_distributed("cpu"))
    assert set(results["classification"]) == {"foundation"}
    train = json.loads((out / "classification" / "foundation-seed0" / "fold0" / "config.json").read_text())["train"]
    assert train["init"] == f"sparse:{foundation}" and train["model"]["unet"]["width"] == 6
    sim = json.loads((Path(train["seg_data"]) / "dataset.json").read_text())["config"]
    assert sim["randomize"] is True and sim["line_label_px"] == 4.0 and sim["n"] == 2  # 8 px at 128 -> 4 at 64
    check = results["segmentation_check"]["variants"]["foundation"]
    assert check["before"] is not None and len(check["folds"]) == 2
    report = (out / "report.md").read_text()
    assert "| foundation |" in report and "width 6" in report and "randomised simulated frames" in report


def test_pocus_config_rejects_unknown_variants_and_widths() -> None:
    with pytest.raises(ValueError, match="unknown variants"):
        PocusExperimentConfig(inits=("dense", "imagenet"))
    with pytest.raises(ValueError, match="unknown variants"):
        PocusExperimentConfig(inits=())
    with pytest.raises(ValueError, match="width"):
        PocusExperimentConfig(seg=DenseVsSparseConfig(width=0))
    for weight in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="seg_weight should be a number >= 0"):
            PocusExperimentConfig(seg_weight=weight)
    with pytest.raises(ValueError, match="seeds"):
        PocusExperimentConfig(seed=1)  # the pretraining would run with seed 0
    with pytest.raises(ValueError, match="freeze_epochs"):
        PocusExperimentConfig(cls_epochs=2, freeze_epochs=2)
    with pytest.raises(ValueError, match="foundation_seg_clips"):
        PocusExperimentConfig(foundation_seg_clips=0)


def test_pocus_cli_usage_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pleura.cli import app

    args = ["experiment", "pocus", "--data", str(tmp_path), "--out", str(tmp_path / "x"), "--inits", "dense,foo"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "unknown variants" in result.output
    result = CliRunner().invoke(app, ["experiment", "pocus", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--data" in result.output  # no guessed path to ../shared
    assert not (tmp_path / "x").exists()  # refused before any work


def test_dataset_summary_counts_a_patient_with_two_diagnoses_once() -> None:
    table = (("covid", "a", "p1"), ("covid", "b", "p2"), ("normal", "c", "p1"), ("pneumonia", "d", "p3"))
    rows = [{"diagnosis": d, "clip_id": c, "patient_id": p} for d, c, p in table]
    summary = dataset_summary(rows)
    assert summary["patients"] == 3 and summary["covid"] == {"frames": 2, "clips": 2, "patients": 2}
    assert summary["normal"]["patients"] == 1 and summary["pneumonia"]["clips"] == 1
