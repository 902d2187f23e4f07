"""``export model`` of a run with no test fold (``train-cls --folds 1``): the temperature comes from a k-fold run of
the same recipe, and the file is a working predictor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pleura.infer.bundle import export_bundle
from pleura.models import ClassifierConfig, UNetConfig, load_model
from pleura.train.cls import ClsTrainConfig, train_kfold
from pleura.train.distributed import DistEnv


@pytest.fixture(scope="module")
def all_data_run(sim_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny classifier trained on every row of the simulated set (``--folds 1``)."""
    run = tmp_path_factory.mktemp("all") / "run"
    cfg = ClsTrainConfig(epochs=1, batch_size=8, model=ClassifierConfig(unet=UNetConfig(width=4, depth=2)))
    train_kfold(cfg, sim_dataset, run, DistEnv(), folds=1)
    return run


def test_one_fold_trains_on_every_row_and_predicts_nothing(all_data_run: Path, sim_dataset: Path) -> None:
    config = json.loads((all_data_run / "fold0" / "config.json").read_text())
    rows = (sim_dataset / "manifest.csv").read_text().count("\n") - 1
    assert config["train_frames"] + config["val_frames"] == rows  # no test fold held out
    assert not (all_data_run / "fold0" / "test_predictions.csv").exists()
    assert json.loads((all_data_run / "kfold.json").read_text())["folds"] == 1


def test_calibration_from_a_kfold_run(all_data_run: Path, bundle: Path, tmp_path: Path) -> None:
    kfold = bundle.parent / "run"  # the session's 2-fold run of the same tiny recipe
    path, meta = export_bundle(all_data_run, tmp_path / "m.safetensors", ood_frames=24, calibration=kfold)
    held_out = sum((f / "test_predictions.csv").read_text().count("\n") - 1 for f in kfold.glob("fold*"))
    assert meta["calibration_frames"] == held_out and meta["calibration_run"] == str(kfold)
    assert meta["temperature"] > 0 and meta["ece_after"] <= meta["ece_before"] + 1e-9
    _, loaded = load_model(path)
    assert loaded["temperature"] == pytest.approx(meta["temperature"]) and "ood" in loaded

    # without --calibration the run has no held-out predictions: temperature 1, no ECE claimed
    _, plain = export_bundle(all_data_run, tmp_path / "p.safetensors", ood_frames=24)
    assert plain["temperature"] == 1.0 and "ece_before" not in plain
    with pytest.raises(ValueError, match="its own held-out predictions"):
        export_bundle(kfold, tmp_path / "k.safetensors", ood_frames=24, calibration=kfold)
    with pytest.raises(ValueError, match="no fold"):
        export_bundle(all_data_run, tmp_path / "e.safetensors", ood_frames=24, calibration=tmp_path)


def test_cli_folds_one_and_calibration(all_data_run: Path, bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pleura.cli import app

    out = tmp_path / "cli.safetensors"
    args = ["export", "model", str(all_data_run), "--out", str(out), "--calibration", str(bundle.parent / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["metadata"]["calibration_run"] == str(bundle.parent / "run")
    result = CliRunner().invoke(app, ["train-cls", "--data", str(tmp_path), "--out", str(tmp_path / "x"),
                                      "--folds", "0"])  # fmt: skip
    assert result.exit_code == 2 and "--folds" in result.output
