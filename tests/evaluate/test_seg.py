"""eval-seg (pleura.evaluate.seg), end to end on tiny simulated data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pleura.cli import app
from pleura.evaluate.seg import evaluate_segmentation, load_segmenter
from pleura.labels import SPARSE
from pleura.models import UNetConfig
from pleura.models.checkpoint import CheckpointError
from pleura.simulate import SimulationConfig, write_dataset
from pleura.train.distributed import DistEnv
from pleura.train.seg import SegTrainConfig, SegTrainer

runner = CliRunner(env={"COLUMNS": "400"})


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ev")
    data = root / "ds"
    write_dataset(SimulationConfig(n=6, seed=2, size=64, workers=1), data)
    cfg = SegTrainConfig(schema="dense", epochs=1, model=UNetConfig(width=4, depth=2), batch_size=4)
    SegTrainer(cfg, data, root / "run", DistEnv()).fit()
    return root / "run", data


def test_eval_seg_scores_in_both_schemas_and_writes_files(dense_run):
    run, data = dense_run
    result = runner.invoke(app, ["eval-seg", "--run", str(run), "--data", str(data)])
    assert result.exit_code == 0, result.output
    ev = json.loads((run / "eval.json").read_text())
    assert ev["schema"] == "dense" and ev["frames"] == 6
    assert ev["sparse_metrics"]["class_names"] == list(SPARSE.names)
    assert set(ev["false_positives"]) == {"a_line", "b_line", "pleural_line"}
    assert "false positives" in (run / "eval.md").read_text()
    # the sparse scores are those of the dense predictions mapped down: recompute pixel accuracy
    model, _ = load_segmenter(run)
    from pleura.data import LUSDataset
    from pleura.labels import convert

    ds = LUSDataset(data, "sparse")
    hits = total = 0
    for i in range(len(ds)):
        with torch.no_grad():
            pred = model(ds[i]["image"][None]).argmax(1)[0].numpy().astype(np.uint8)
        hits += (convert(pred, "dense", "sparse") == ds[i]["mask"].numpy()).sum()
        total += pred.size
    assert ev["sparse_metrics"]["pixel_accuracy"] == pytest.approx(hits / total)


def test_eval_seg_refuses_a_checkpoint_of_another_schema(dense_run):
    run, data = dense_run
    with pytest.raises(CheckpointError, match="predicts the 'dense' schema but 'sparse' was requested"):
        evaluate_segmentation(run, data, schema="sparse")
    result = runner.invoke(app, ["eval-seg", "--run", str(run / "nowhere"), "--data", str(data)])
    assert result.exit_code == 2 and "nowhere" in result.output and "does not exist" in result.output
