"""Segmentation scored on real frames with sparse expert labels (the cvat-lus clip of issue 14).

Real annotation exports draw *lines* (A-line, pleural line) and leave the rest as background, and they do
not draw every class on every frame: the cvat-lus clip has an A-line polygon on all 39 labelled frames but a
pleural-line polygon only on 17 of them, although the pleural line is visible on all. So each class is scored
on the frames where the expert drew it (``only_drawn=True``): elsewhere a correct prediction would count as a
false positive. Every prediction goes through the one prediction path (:func:`pleura.infer.batch.predict_dataset`)
and is mapped to the sparse schema first (a dense model's healthy and unhealthy pleural-line classes merge).

What :func:`score_real_segmentation` reports:

- ``pleural_line`` and ``a_line``: pixel Dice, IoU, precision and recall, summed over the frames scored;
- ``a_line`` false positives: connected components (8-connectivity) of predicted A-line that touch no true
  A-line pixel, per frame scored (:class:`~pleura.metrics.segmentation.FalsePositiveMetrics`);
- ``physics``: the share of predicted A-line components whose depth lies within ``tolerance`` (10 %) of a
  whole multiple ``k >= 2`` of the skin-to-pleura depth, ``|depth - k * pleura| <= tolerance * k * pleura``
  (A-lines are reverberations of the pleural line). Depths are in pixels from the top of the scan area (row
  0 of a cleaned frame), at pixel centres (row ``i`` lies at depth ``i + 0.5``): an A-line component's is its
  centroid's, the pleura's the mean of the frame's predicted pleural-line pixels. Components of a frame with no
  predicted pleural line cannot be judged and are counted apart (``unjudged``). ``truth_share`` applies the
  same rule to the expert masks, as a reference.

Example:
    >>> result = score_real_segmentation(model, "/tmp/cvat-lus128")  # a model, a model file or an engine
    >>> result["pleural_line"]["dice"], result["a_line"]["fp_components_per_frame"], result["physics"]["share"]
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from torch import nn

from pleura.data import image_size, read_manifest
from pleura.infer.batch import predict_dataset
from pleura.infer.engine import Engine, make_engine
from pleura.labels import SPARSE, convert
from pleura.metrics.segmentation import FalsePositiveMetrics, SegmentationMetrics

__all__ = ["PHYSICS_TOLERANCE", "a_line_depth_ratios", "consistent", "score_real_segmentation", "sparse_predictions"]

PHYSICS_TOLERANCE = 0.10  # an A-line within 10 % of k x the pleura's depth (k = 2, 3, ...) is consistent
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity, as FalsePositiveMetrics counts components
_A, _P = SPARSE.index("a_line"), SPARSE.index("pleural_line")


def _engine(engine_or_model: Engine | nn.Module | str | os.PathLike, data: str | Path) -> Engine:
    if isinstance(engine_or_model, Engine):
        return engine_or_model
    return make_engine(engine_or_model, "torch", image_size=image_size(data, read_manifest(data))[0])


def sparse_predictions(
    engine_or_model: Engine | nn.Module | str | os.PathLike,
    data: str | Path,
    rows: Sequence[dict[str, str]] | None = None,
    batch_size: int = 16,
) -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray]]:
    """Yield ``(batch, pred, truth)`` over a dataset with sparse masks: label maps in the sparse schema, (B, H, W).

    ``engine_or_model`` is an engine, a ``UNet`` / ``ReverseTransferClassifier`` or a model file (run in PyTorch
    at the dataset's image size). The model must record a label schema; its predictions are mapped to sparse.
    """
    engine = _engine(engine_or_model, data)
    if engine.schema is None:
        raise ValueError("the model records no label schema; it cannot be scored against sparse masks")
    for batch, out in predict_dataset(engine, data, rows, schema="sparse", batch_size=batch_size):
        if out.labels is None:  # pragma: no cover - every pleura engine has a segmentation
            raise ValueError("the engine returned no segmentation")
        yield batch, convert(out.labels, engine.schema, "sparse"), batch["mask"].numpy().astype(np.uint8)


def a_line_depth_ratios(labels: np.ndarray) -> np.ndarray:
    """Depths of the A-line components of one sparse label map, in multiples of its pleural line's depth.

    NaN for each component when the map has no pleural line; empty when it has no A-line. Depths at pixel
    centres from row 0 (the top of the scan area); see the module docstring.
    """
    rows = np.nonzero(labels == _P)[0]
    comp, n = ndimage.label(labels == _A, structure=_EIGHT)
    if n == 0:
        return np.zeros(0)
    centroid = np.asarray(ndimage.center_of_mass(comp > 0, comp, range(1, n + 1)), dtype=np.float64)
    if rows.size == 0:
        return np.full(n, np.nan)
    return (centroid[:, 0] + 0.5) / (rows.mean() + 0.5)


def consistent(ratios: np.ndarray, tolerance: float = PHYSICS_TOLERANCE) -> np.ndarray:
    """Whether each depth ratio lies within ``tolerance`` of a whole multiple ``k >= 2`` (relative to ``k``)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    near = [np.maximum(f(ratios), 2) for f in (np.floor, np.ceil)]  # the multiples on either side, at least 2
    return np.logical_or.reduce([np.abs(ratios - k) <= tolerance * k for k in near])


def _physics(ratios: list[np.ndarray], tolerance: float) -> dict[str, Any]:
    r = np.concatenate(ratios) if ratios else np.zeros(0)
    judged = r[~np.isnan(r)]
    good = int(consistent(judged, tolerance).sum())
    return {
        "share": good / judged.size if judged.size else float("nan"),
        "consistent": good,
        "judged": int(judged.size),
        "unjudged": int(r.size - judged.size),
        "median_ratio": float(np.median(judged)) if judged.size else float("nan"),
    }


def _binary(metrics: SegmentationMetrics) -> dict[str, Any]:
    m = metrics.aggregate()
    c = metrics.confusion.numpy()
    out = {k: m[k][1] for k in ("dice", "iou", "precision", "recall")}
    return out | {"true_pixels": int(c[1].sum()), "pred_pixels": int(c[:, 1].sum())}


def score_real_segmentation(
    engine_or_model: Engine | nn.Module | str | os.PathLike,
    data: str | Path,
    rows: Sequence[dict[str, str]] | None = None,
    only_drawn: bool = True,
    tolerance: float = PHYSICS_TOLERANCE,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Pleural-line and A-line scores, false-positive A-lines and physics consistency on a sparse-labelled dataset.

    Args:
        engine_or_model: an engine, a ``UNet`` / ``ReverseTransferClassifier`` or a model file.
        data: a manifest dataset with ``mask_sparse`` (``pleura data import-annotations``).
        rows: the rows to score (default: all).
        only_drawn: score each class on the frames whose truth has it (see the module docstring); ``False``
            scores every class on every frame.
        tolerance: the physics check's relative tolerance.

    Returns:
        ``frames``, ``schema``, ``pleural_line`` (``dice``, ``iou``, ``precision``, ``recall``, pixel counts,
        ``frames`` scored, ``frames_found``: frames of all with any predicted pleural line), ``a_line`` (the same
        and the false-positive component counts), ``physics`` (``share``, ``consistent``, ``judged``,
        ``unjudged``, ``median_ratio``, ``truth_share``, ``tolerance``). Undefined scores are NaN.
    """
    engine = _engine(engine_or_model, data)
    seg = {k: SegmentationMetrics(2, ("other", name)) for k, name in ((_P, "pleural_line"), (_A, "a_line"))}
    scored = dict.fromkeys(seg, 0)
    fp = FalsePositiveMetrics(("a_line",))
    ratios: list[np.ndarray] = []
    truth_ratios: list[np.ndarray] = []
    frames = found = 0
    for _batch, pred, truth in sparse_predictions(engine, data, rows, batch_size):
        frames += len(pred)
        found += int((pred == _P).any(axis=(1, 2)).sum())
        for k, metric in seg.items():
            keep = (truth == k).any(axis=(1, 2)) if only_drawn else np.ones(len(truth), dtype=bool)
            scored[k] += int(keep.sum())
            if keep.any():
                metric.update((pred[keep] == k).astype(np.uint8), (truth[keep] == k).astype(np.uint8))
                if k == _A:
                    fp.update(pred[keep], truth[keep])
        ratios += [a_line_depth_ratios(p) for p in pred]
        truth_ratios += [a_line_depth_ratios(t) for t in truth]
    fps = fp.aggregate()["a_line"]
    physics = _physics(ratios, tolerance) | {
        "truth_share": _physics(truth_ratios, tolerance)["share"],
        "tolerance": tolerance,
    }
    return {
        "frames": frames,
        "schema": engine.schema,
        "only_drawn": only_drawn,
        "pleural_line": _binary(seg[_P]) | {"frames": scored[_P], "frames_found": found},
        "a_line": _binary(seg[_A])
        | {"frames": scored[_A]}
        | {k: fps[k] for k in ("fp_components_per_frame", "fp_components", "pred_components", "true_components_hit")},
        "physics": physics,
    }
