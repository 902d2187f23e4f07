"""One file a user keeps: a trained classifier with its calibration and out-of-distribution statistics.

``export_bundle(RUN, "model.safetensors")`` takes a ``train-cls`` run (one fold folder, or a k-fold run, of
which the fold with the best validation score is taken), fits a temperature on that fold's held-out
predictions, fits the OOD detector on frames of its training part, and saves the model as safetensors plus
JSON (``pleura.models.save_model``) with all of that in the JSON's metadata. ``pleura predict`` and
``pleura.Predictor`` take this file. ``refit_ood`` refits the detector of an existing file on the frames of
chosen patients, with the same fitting code (``fit_ood``).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from pleura.data import read_manifest
from pleura.data.cleaning import clean_clip
from pleura.labels import recorded_schema
from pleura.models import save_model
from pleura.postprocess.calibration import expected_calibration_error, fit_temperature, scale_probabilities
from pleura.postprocess.ood import OODDetector

BUNDLE_KIND = "pleura-predictor"
OOD_BATCH = 32  # frames per forward pass when computing pooled features for the OOD fit
log = logging.getLogger(__name__)


def _pick_fold(run: Path) -> Path:
    """The run itself if it is one trained fold, else its fold with the best validation score."""
    if (run / "best").is_dir():
        return run
    folds = sorted(p for p in run.glob("fold*") if (p / "best").is_dir() and (p / "summary.json").exists())
    if not folds:
        raise ValueError(f"{run}: not a train-cls run (no best/ checkpoint and no fold*/best/)")
    return max(folds, key=lambda p: json.loads((p / "summary.json").read_text()).get("best_val_score") or -1.0)


def _read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a ``test_predictions.csv``."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def cleaned_frames(data: Path, rows: Sequence[dict[str, str]], side: int) -> np.ndarray:
    """Dataset frames as the predictor makes them: cleaned (scan area found, fitted to ``side``), (N, side, side)."""
    out = np.empty((len(rows), side, side), np.uint8)
    for i, r in enumerate(rows):
        out[i] = clean_clip(np.asarray(Image.open(data / r["image"]).convert("L")), side)[0][0]
    return out


def pooled_features(model: nn.Module, frames: np.ndarray) -> np.ndarray | None:
    """The classifier head's pooled features (N, F) of cleaned frames (N, S, S) uint8, as the predictor's
    engines compute them (``None`` for a model without a head)."""
    from pleura.infer.engine import TorchEngine

    engine = TorchEngine(model, image_size=frames.shape[-1])
    parts = [
        engine.run(frames[i : i + OOD_BATCH, None].astype(np.float32) / 255.0).features
        for i in range(0, len(frames), OOD_BATCH)
    ]
    return None if not parts or parts[0] is None else np.concatenate(parts)


def fit_ood(
    model: nn.Module,
    frames: np.ndarray,
    groups: Sequence[str] | None = None,
    calib_frames: np.ndarray | None = None,
    **options: Any,
) -> OODDetector:
    """The OOD detector of ``model`` fitted on cleaned real training frames (N, S, S) and their pooled features.

    Thresholds come from ``calib_frames`` (frames of other patients) if given, else from distances cross-fitted
    over ``groups`` (the patient or clip id of each frame); ``options`` go to :meth:`OODDetector.fit`.
    """
    calib_features = None if calib_frames is None else pooled_features(model, calib_frames)
    return OODDetector.fit(
        frames, pooled_features(model, frames), groups=groups, calib_frames=calib_frames,
        calib_features=calib_features, **options,
    )  # fmt: skip


def refit_ood(
    model_path: str | Path,
    dataset_dir: str | Path,
    train_ids: Collection[str],
    calib_ids: Collection[str] | None = None,
    out_path: str | Path | None = None,
    *,
    group: str = "patient_id",
    **options: Any,
) -> tuple[Path, dict]:
    """Refit the OOD detector of a predictor file on real frames and save the file again (weights unchanged).

    Args:
        model_path: the predictor's ``.safetensors`` (its ``.json`` beside it).
        dataset_dir: a manifest dataset of real frames (``pleura data import-pocus``'s output).
        train_ids: values of ``group`` (patients) whose frames the detector's statistics are fitted on: the
            model's training patients, never the patients it is evaluated on.
        calib_ids: patients whose frames set the thresholds (disjoint from ``train_ids``); ``None``
            cross-fits them over ``train_ids`` (each part of the patients scored by statistics fitted without
            it), which uses every training patient once as held out.
        out_path: where to write; ``None`` rewrites ``model_path``.
        group: the manifest column the ids are values of.
        **options: passed to :meth:`OODDetector.fit` (``quantile``, ``margin``, ``network_margin``, ``folds``).

    Returns:
        ``(weights path, metadata)`` as written by ``save_model``; the weights file keeps its exact bytes.
    """
    from pleura.models import load_model

    model, meta = load_model(model_path)
    data = Path(dataset_dir)
    rows = read_manifest(data)
    train_ids, calib = set(train_ids), set(calib_ids or ())
    if train_ids & calib:
        raise ValueError(f"train_ids and calib_ids share {len(train_ids & calib)} {group} value(s); keep them apart")
    train_rows = [r for r in rows if r.get(group) in train_ids]
    calib_rows = [r for r in rows if r.get(group) in calib]
    if not train_rows or (calib_ids is not None and not calib_rows):
        raise ValueError(
            f"{data}: no frames of the given {group} values ({len(train_rows)} to fit, {len(calib_rows)} to "
            f"calibrate); pass values of the manifest's {group!r} column"
        )
    side = int((meta.get("image_size") or [256])[0])
    frames = cleaned_frames(data, train_rows, side)
    calib_frames = cleaned_frames(data, calib_rows, side) if calib_ids is not None else None
    detector = fit_ood(model, frames, [r[group] for r in train_rows], calib_frames, **options)
    meta = {**meta, "ood": detector.to_dict()}
    meta["ood_data"] = {
        "dataset": data.name, "group": group, "fit_groups": len(train_ids), "calib_groups": len(calib),
        "fit_frames": len(train_rows), "calib_frames": len(calib_rows),
        "thresholds": "calibration groups" if calib_ids is not None else "cross-fitted over the fit groups",
    }  # fmt: skip
    log.info(
        "refitted the OOD detector of %s on %d frames (%d %s values): image threshold %.3g, network threshold %s",
        model_path, len(frames), len(train_ids), group, detector.image.threshold,
        f"{detector.network.threshold:.3g}" if detector.network else "none",
    )  # fmt: skip
    return _save_keeping_weights(model, Path(model_path), Path(out_path or model_path), meta), meta


def _save_keeping_weights(model: nn.Module, source: Path, out: Path, meta: dict) -> Path:
    """``save_model(model, out, metadata=meta)``, checking the weights file stays byte-identical to ``source``'s
    (the same tensors, and ``save_model`` writes deterministic bytes), so refitting the detector leaves a shipped
    weights file untouched."""
    original = source.with_suffix(".safetensors").read_bytes()
    path = save_model(model, out, metadata=meta)
    if path.read_bytes() != original:
        log.warning("%s: saved with the same tensors, but its bytes differ from %s's", path, source)
    return path


def export_bundle(
    run: str | Path, out: str | Path, ood_frames: int = 400, seed: int = 0, calibration: str | Path | None = None
) -> tuple[Path, dict]:
    """Write the predictor file ``out`` (``.safetensors`` plus its ``.json``) from a ``train-cls`` run.

    ``calibration``: for a run trained without a test fold (e.g. on all the data), a k-fold run of the same recipe
    whose pooled held-out predictions (``fold*/test_predictions.csv``) fit the temperature: how that recipe's models
    are calibrated on patients they never saw. A fold with its own held-out predictions uses those.

    Returns:
        ``(weights path, metadata)``; the metadata holds ``temperature``, the held-out ECE before and after
        it, the ``ood`` detector (fitted by ``fit_ood`` on at most ``ood_frames`` frames of the fold's training
        part, thresholds cross-fitted by the run's group column), ``class_names``, ``schema`` and ``image_size``.
    """
    from pleura.models.checkpoint import read_checkpoint

    fold = _pick_fold(Path(run))
    model, _ = read_checkpoint(fold / "best")
    config = json.loads((fold / "config.json").read_text())
    data = Path(config["data"])
    meta: dict[str, Any] = {
        "kind": BUNDLE_KIND,
        "class_names": list(model.config.class_names),
        "schema": recorded_schema(model.unet.config.schema, fold / "best").name,
        "image_size": list(config["image_size"]),
        "source_run": str(fold),
        "init": config["train"].get("init", ""),
        "temperature": 1.0,
    }
    own = fold / "test_predictions.csv"
    files = [own] if own.exists() else []
    if calibration is not None:
        if files:
            raise ValueError(f"{fold}: has its own held-out predictions; --calibration is for a run with no test fold")
        files = sorted(Path(calibration).glob("fold*/test_predictions.csv"))
        if not files:
            raise ValueError(f"{calibration}: no fold*/test_predictions.csv (pass a k-fold train-cls run)")
        meta["calibration_run"] = str(calibration)
    rows = [r for f in files for r in _read_csv(f)]
    held_out = {r["id"] for r in rows} if own.exists() else set()
    if rows:
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
    pick = sorted(rng.choice(len(train_rows), size=min(ood_frames, len(train_rows)), replace=False))
    rows = [train_rows[i] for i in pick]
    group = config["train"].get("group") or "patient_id"
    group = group if all(r.get(group) for r in rows) else "clip_id"
    frames = cleaned_frames(data, rows, int(config["image_size"][0]))
    meta["ood"] = fit_ood(model, frames, [r[group] for r in rows]).to_dict()
    return save_model(model, out, metadata=meta), meta
