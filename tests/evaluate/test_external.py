"""``eval-model``: external validation of a model file on a dataset it never saw."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score
from typer.testing import CliRunner

from pleura.cli import app
from pleura.evaluate.external import evaluate_model
from pleura.labels import DIAGNOSES
from pleura.models import load_model
from pleura.postprocess.calibration import scale_probabilities
from pleura.simulate import SimulationConfig, write_dataset
from pleura.train.cls import predict_rows


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another simulated set (other seed, so other patients) at the bundle's 128 px."""
    root = tmp_path_factory.mktemp("ext") / "ds"
    write_dataset(SimulationConfig(n=9, seed=99, size=128, frames=2, workers=2), root)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_scores_every_frame_calibrated_and_writes_what_it_links(bundle: Path, external: Path, tmp_path: Path) -> None:
    out = tmp_path / "ext-eval"
    result = evaluate_model(bundle, external, out, n_boot=50)
    rows = _rows(out / "test_predictions.csv")
    assert len(rows) == 18 and result["transfer"]["frames"] == 18
    # the file's temperature is applied to the model's own probabilities
    model, meta = load_model(bundle)
    from pleura.data import read_manifest

    raw = predict_rows(model, external, read_manifest(external))
    want = scale_probabilities(np.array([[p[f"p_{c}"] for c in DIAGNOSES] for p in raw]), meta["temperature"])
    got = np.array([[float(r[f"p_{c}"]) for c in DIAGNOSES] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the frame-level metric is scikit-learn's on the written predictions
    y = np.array([int(r["label"]) for r in rows])
    pooled = result["frame"]["pooled"]["balanced_accuracy"]
    assert pooled == pytest.approx(balanced_accuracy_score(y, got.argmax(1)))
    t = result["transfer"]
    assert 0 <= t["ood_frames"] <= 18 and 0 <= t["ece_calibrated"] <= 1 and 0 <= t["ece_uncalibrated"] <= 1
    assert sum(r["ood"] == "True" for r in rows) == t["ood_frames"]
    report = (out / "eval.md").read_text()
    assert "external validation" in report and "## Transfer" in report and "| metric | value |" in report
    for link in re.findall(r"\]\(([^)]+)\)", report):
        assert (out / link).exists(), link
    assert json.loads((out / "eval.json").read_text())["transfer"] == pytest.approx(t, nan_ok=True)


def test_refuses_unknown_labels_and_other_sizes_before_predicting(bundle: Path, external: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    text = (external / "manifest.csv").read_text()
    (bad / "manifest.csv").write_text(text.replace(",covid,", ",viral,", 1))
    (bad / "images").symlink_to(external / "images")
    with pytest.raises(ValueError, match="'viral' unknown to the classifier"):
        evaluate_model(bundle, bad, tmp_path / "o1")
    big = tmp_path / "big"
    write_dataset(SimulationConfig(n=3, seed=5, size=64, frames=1, workers=1), big)
    with pytest.raises(ValueError, match=r"frames are 64x64 px, .* expects 128x128"):
        evaluate_model(bundle, big, tmp_path / "o2")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_cli_prints_the_report_and_one_error_line(bundle: Path, external: Path, tmp_path: Path) -> None:
    args = ["eval-model", "--model", str(bundle), "--data", str(external), "--out", str(tmp_path / "o")]
    ok = CliRunner().invoke(app, [*args, "--n-boot", "20"])
    assert ok.exit_code == 0, ok.output
    assert "Frame level" in ok.output and "Out of distribution" in ok.output
    missing = CliRunner().invoke(
        app, ["eval-model", "--model", str(tmp_path / "none.safetensors"), "--data", str(external), "--out", "x"]
    )
    assert missing.exit_code == 2 and "model file not found" in missing.output


def test_keeps_an_earlier_evaluation_unless_told_to_replace_it(bundle: Path, external: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("earlier work")
    with pytest.raises(ValueError, match="output folder is not empty; pass --overwrite"):
        evaluate_model(bundle, external, out, n_boot=10)
    assert (out / "mine.txt").read_text() == "earlier work"
    evaluate_model(bundle, external, out, n_boot=10, overwrite=True)
    assert (out / "eval.md").exists() and not (out / "mine.txt").exists()
    assert not list(tmp_path.glob(".o.*"))  # no staging folder left behind
    args = ["eval-model", "--model", str(bundle), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]
    got = CliRunner().invoke(app, args)
    assert got.exit_code == 2 and "nope" in got.output
    with pytest.raises(ValueError, match="--n-boot should be at least 1"):
        evaluate_model(bundle, external, tmp_path / "o3", n_boot=0)


def test_the_onnx_engine_that_ships_and_torch_agree(bundle: Path, external: Path, tmp_path: Path) -> None:
    """eval-model validates what predict ships (ONNX Runtime); PyTorch gives the same probabilities and flags."""
    evaluate_model(bundle, external, tmp_path / "onnx", n_boot=5)
    evaluate_model(bundle, external, tmp_path / "torch", n_boot=5, engine="torch")
    onnx, torch_ = _rows(tmp_path / "onnx" / "test_predictions.csv"), _rows(tmp_path / "torch" / "test_predictions.csv")
    assert [r["id"] for r in onnx] == [r["id"] for r in torch_]
    for a, b in zip(onnx, torch_, strict=True):
        for c in ("covid", "pneumonia", "normal"):
            assert abs(float(a[f"p_{c}"]) - float(b[f"p_{c}"])) < 1e-4
        assert a["ood"] == b["ood"]
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        evaluate_model(bundle, external, tmp_path / "x", engine="tensorrt")


def test_every_command_predicts_through_the_one_path() -> None:
    """predict, eval-model, eval-seg and train-cls's held-out predictions all call pleura.infer.batch.run_frames."""
    import inspect

    from pleura.evaluate import external, seg
    from pleura.infer import batch, predictor
    from pleura.train import cls

    assert "run_frames(" in inspect.getsource(predictor.Predictor.predict_frames)
    for fn in (external.predict_file_model, seg.evaluate_segmentation, cls.predict_rows):
        assert "predict_dataset(" in inspect.getsource(fn), fn.__qualname__
    assert "run_frames(" in inspect.getsource(batch.predict_dataset)
