"""One file a user keeps: a trained classifier with its calibration and out-of-distribution statistics.

``export_bundle(RUN, "model.safetensors")`` takes a ``train-cls`` run (one fold folder, or a k-fold run, of
which the fold with the best validation score is taken), fits a temperature on that fold's held-out
predictions, fits the OOD detector on frames of its training part, and saves the model as safetensors plus
JSON (``pleura.models.save_model``) with all of that in the JSON's metadata. ``pleura predict`` and
``pleura.Predictor`` take this file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pleura.data import read_manifest
from pleura.data.cleaning import clean_clip
from pleura.evaluate.calibration import expected_calibration_error, fit_temperature, scale_probabilities
from pleura.infer.ood import OODDetector
from pleura.models import save_model

BUNDLE_KIND = "pleura-predictor"


def _pick_fold(run: Path) -> Path:
    """The run itself if it is one trained fold, else its fold with the best validation score."""
    if (run / "best").is_dir():
        return run
    folds = sorted(p for p in run.glob("fold*") if (p / "best").is_dir() and (p / "summary.json").exists())
    if not folds:
        raise ValueError(f"{run}: not a train-cls run (no best/ checkpoint and no fold*/best/)")
    return max(folds, key=lambda p: json.loads((p / "summary.json").read_text()).get("best_val_score") or -1.0)


def export_bundle(run: str | Path, out: str | Path, ood_frames: int = 400, seed: int = 0) -> tuple[Path, dict]:
    """Write the predictor file ``out`` (``.safetensors`` plus its ``.json``) from a ``train-cls`` run.

    Returns:
        ``(weights path, metadata)``; the metadata holds ``temperature``, the held-out ECE before and after
        it, the ``ood`` detector, ``class_names``, ``schema`` and ``image_size``.
    """
    from pleura.train.checkpoint import read_checkpoint

    fold = _pick_fold(Path(run))
    model, _ = read_checkpoint(fold / "best")
    config = json.loads((fold / "config.json").read_text())
    data = Path(config["data"])
    meta: dict[str, Any] = {
        "kind": BUNDLE_KIND,
        "class_names": list(model.config.class_names),
        "schema": model.unet.config.schema or "dense",
        "image_size": list(config["image_size"]),
        "source_run": str(fold),
        "init": config["train"].get("init", ""),
        "temperature": 1.0,
    }
    held_out: set[str] = set()
    preds = fold / "test_predictions.csv"
    if preds.exists():
        with open(preds, newline="") as fh:
            rows = list(csv.DictReader(fh))
        held_out = {r["id"] for r in rows}
        prob = np.array([[float(r[f"p_{c}"]) for c in meta["class_names"]] for r in rows])
        y = np.array([int(r["label"]) for r in rows])
        t = fit_temperature(prob, y)
        meta.update(
            temperature=t,
            calibration_frames=len(y),
            ece_before=expected_calibration_error(prob, y),
            ece_after=expected_calibration_error(scale_probabilities(prob, t), y),
        )
    train_rows = [r for r in read_manifest(data) if r["id"] not in held_out]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(train_rows), size=min(ood_frames, len(train_rows)), replace=False)
    side = int(config["image_size"][0])
    # the detector sees frames as the predictor makes them: cleaned (scan area found, fitted to the model size)
    frames = (clean_clip(np.asarray(Image.open(data / train_rows[i]["image"]).convert("L")), side)[0][0] for i in pick)
    meta["ood"] = OODDetector.fit(frames).to_dict()
    return save_model(model, out, metadata=meta), meta
