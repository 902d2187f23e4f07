"""``eval-seg``: score a trained segmentation run on a manifest dataset.

Dense and sparse models are compared on the same footing: every prediction is also mapped to the sparse
schema (background, A-line, B-line, pleural line) and scored against the sparse truth, including the
false-positive measures behind the seed paper's claim that dense labels reduce false positives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pleura.atomic import finite, write_json, write_text
from pleura.data import image_size, read_manifest
from pleura.infer.batch import predict_dataset
from pleura.infer.engine import TorchEngine
from pleura.labels import SPARSE, convert, get_schema
from pleura.metrics.segmentation import FalsePositiveMetrics, SegmentationMetrics, summarise
from pleura.models.checkpoint import CheckpointError, read_checkpoint


def load_segmenter(run: str | Path, checkpoint: str = "best", schema: str | None = None) -> tuple[torch.nn.Module, str]:
    """A run's segmentation model in eval mode and its schema; ``schema`` must match if given."""
    # a checkpoint folder itself, or a run's named checkpoint (read_checkpoint recovers one cut by a kill)
    folder = Path(run) if (Path(run) / "model.safetensors").is_file() else Path(run) / checkpoint
    model, _meta = read_checkpoint(folder)
    model_schema = model.config.schema
    if model_schema is None:
        raise CheckpointError(f"{folder}: the model records no label schema; it is not a segmentation checkpoint")
    if schema is not None and schema != model_schema:
        raise CheckpointError(
            f"{folder}: the checkpoint predicts the {model_schema!r} schema but {schema!r} was requested"
        )
    return model.eval(), model_schema


def evaluate_segmentation(
    run: str | Path, data: str | Path, checkpoint: str = "best", schema: str | None = None, batch_size: int = 16
) -> dict[str, Any]:
    """Score ``run`` on every frame of ``data``; writes ``RUN/eval.json`` and ``RUN/eval.md``."""
    run = Path(run)
    model, model_schema = load_segmenter(run, checkpoint, schema)
    rows = read_manifest(data)
    engine = TorchEngine(model, image_size=image_size(data, rows)[0], optimize=False)
    s = get_schema(model_schema)
    own = SegmentationMetrics(s.num_classes, class_names=list(s.names))
    sparse = SegmentationMetrics(SPARSE.num_classes, class_names=list(SPARSE.names))
    fp = FalsePositiveMetrics()
    for batch, out in predict_dataset(engine, data, rows, schema=model_schema, batch_size=batch_size):
        pred, truth = out.labels, batch["mask"].numpy().astype(np.uint8)
        own.update(pred, truth)
        pred_sparse, truth_sparse = convert(pred, model_schema, "sparse"), convert(truth, model_schema, "sparse")
        sparse.update(pred_sparse, truth_sparse)
        fp.update(pred_sparse, truth_sparse)
    result = finite(
        {
            "run": str(run),
            "data": str(Path(data).resolve()),
            "checkpoint": checkpoint,
            "schema": model_schema,
            "frames": len(rows),
            "metrics": own.aggregate(),
            "sparse_metrics": sparse.aggregate(),
            "false_positives": fp.aggregate(),
        }
    )
    write_json(run / "eval.json", result)
    write_text(run / "eval.md", eval_markdown(result))
    return result


def eval_markdown(result: dict[str, Any]) -> str:
    """The evaluation as markdown: the model's own schema, then sparse with false positives."""
    nan = float("nan")
    restore = lambda d: {k: [nan if v is None else v for v in x] if isinstance(x, list) else x for k, x in d.items()}  # noqa: E731
    fp = {k: {m: nan if v is None else v for m, v in d.items()} for k, d in result["false_positives"].items()}
    return (
        f"# Segmentation evaluation\n\nrun `{result['run']}` ({result['checkpoint']}), schema `{result['schema']}`, "
        f"{result['frames']} frames of `{result['data']}`\n\n"
        f"## In the model's schema ({result['schema']})\n\nmean IoU {result['metrics']['mean_iou']:.4f}\n\n"
        f"{summarise(restore(result['metrics']))}\n\n"
        f"## In the sparse schema, with false positives\n\nmean IoU {result['sparse_metrics']['mean_iou']:.4f}\n\n"
        f"{summarise(restore(result['sparse_metrics']), fp)}\n"
    )
