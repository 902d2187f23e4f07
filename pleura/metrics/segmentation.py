"""Segmentation metrics (confusion matrix -> IoU, Dice, precision, recall) and false-positive metrics.

Both metrics have one shape (MONAI's ``reset`` / ``update`` / ``aggregate``) and keep their state as
plain sums in one tensor, so a distributed evaluator can ``all_reduce`` it and load it back:

    seg = SegmentationMetrics(SPARSE.num_classes, SPARSE.names)
    fp = FalsePositiveMetrics()
    for batch in loader:
        pred = model(batch["image"]).argmax(1)         # (B, H, W) class indices
        seg.update(pred, batch["mask"])
        fp.update(pred, batch["mask"])                 # sparse-schema masks only
    print(summarise(seg.aggregate(), fp.aggregate()))

Masks are ``(B, H, W)`` or ``(H, W)`` integer class indices, as ``torch.Tensor`` or ``np.ndarray``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from pleura.labels import SPARSE, Schema
from pleura.report import fmt, markdown_table

__all__ = ["FalsePositiveMetrics", "SegmentationMetrics", "summarise"]


def _indices(x: Any, name: str, keep_device: bool = False) -> np.ndarray | torch.Tensor:
    """A class-index mask as a numpy array in its own integer dtype; a non-CPU tensor stays one if ``keep_device``."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex():
            raise ValueError(
                f"{name} should hold integer class indices, got dtype {x.dtype}; take logits.argmax(1) first"
            )
        x = x.detach()
        if keep_device and x.device.type != "cpu":
            return x
        return x.cpu().numpy()
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
            raise ValueError(
                f"{name} should hold integer class indices, got dtype {x.dtype}; "
                "take logits.argmax(1) (or round and cast) first"
            )
        return x
    raise TypeError(f"{name} should be a torch.Tensor or np.ndarray of class indices, got {type(x).__name__}")


def _check_shapes(pred_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> None:
    if len(pred_shape) not in (2, 3):
        hint = "; for (B, C, H, W) logits take argmax(1) first" if len(pred_shape) == 4 else ""
        raise ValueError(f"pred should be (B, H, W) or (H, W) class indices, got shape {tuple(pred_shape)}{hint}")
    if tuple(pred_shape) != tuple(target_shape):
        raise ValueError(
            f"pred and target should have the same shape, got pred {tuple(pred_shape)} and target {tuple(target_shape)}"
        )


def nan_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` in float64, NaN where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


class SegmentationMetrics:
    """Confusion-matrix metrics for semantic segmentation, accumulated over batches.

    The state is a ``(num_classes, num_classes)`` int64 confusion matrix, rows = truth, columns =
    prediction. From it, per class ``c`` with ``TP = C[c, c]``, ``FP = sum(C[:, c]) - TP`` and
    ``FN = sum(C[c, :]) - TP``:

    - ``iou = TP / (TP + FP + FN)``, ``dice = 2 TP / (2 TP + FP + FN)`` (NaN when the class is absent
      from both truth and prediction),
    - ``precision = TP / (TP + FP)`` (NaN when the class is never predicted),
    - ``recall = TP / (TP + FN)`` (NaN when the class is absent from the truth),
    - ``mean_iou`` / ``mean_dice``: mean over the classes present in the truth or the prediction
      (the non-NaN entries), NaN if there are none,
    - ``pixel_accuracy = trace(C) / sum(C)``.

    Args:
        num_classes: number of classes; indices are ``0 .. num_classes - 1``.
        class_names: one name per class; defaults to ``class_0``, ``class_1``, ...
        ignore_index: target value whose pixels are left out (e.g. ``255``). If it is a valid class index,
            that class's row is empty, its scores are NaN and it is left out of the means.

    Example:
        >>> m = SegmentationMetrics(2, ("background", "line"))
        >>> m.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 1]]))
        >>> m.aggregate()["iou"]
        [0.5, 0.6666666666666666]
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes should be a positive int, got {num_classes!r}")
        if class_names is None:
            class_names = [f"class_{i}" for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.num_classes = num_classes
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.ignore_index = ignore_index
        self._confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Clear the accumulated confusion matrix."""
        self._confusion.zero_()

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch of ``(B, H, W)`` or ``(H, W)`` predicted and true class indices."""
        p = _indices(pred, "pred", keep_device=True)
        t = _indices(target, "target", keep_device=True)
        _check_shapes(tuple(p.shape), tuple(t.shape))
        device = next((x.device for x in (p, t) if isinstance(x, torch.Tensor)), None)
        if device is not None:  # an accelerator tensor: count there (numpy is the faster path on the CPU)
            p, t = (torch.as_tensor(x, device=device).reshape(-1).to(torch.int64) for x in (p, t))
        else:
            p, t = p.reshape(-1), t.reshape(-1)
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        n = self.num_classes
        for name, x in (("pred", p), ("target", t)):
            lo, hi = (int(x.min()), int(x.max())) if x.shape[0] else (0, 0)
            if lo < 0 or hi >= n:
                ignore = (
                    f" or ignore_index {self.ignore_index}"
                    if name == "target" and self.ignore_index is not None
                    else ""
                )
                raise ValueError(
                    f"{name} holds class indices {lo}..{hi}, expected 0..{n - 1}{ignore} (num_classes={n})"
                )
        if device is not None:
            counts = torch.bincount(t * n + p, minlength=n * n).cpu()
        else:
            idx = t.astype(np.int64) * n + p.astype(np.int64, copy=False)
            counts = torch.from_numpy(np.bincount(idx, minlength=n * n))
        self._confusion += counts.reshape(n, n)

    @property
    def confusion(self) -> torch.Tensor:
        """A copy of the ``(num_classes, num_classes)`` int64 confusion matrix (rows truth, columns prediction)."""
        return self._confusion.clone()

    def load_confusion(self, confusion: torch.Tensor | np.ndarray) -> None:
        """Replace the state, e.g. with an ``all_reduce``-summed :attr:`confusion` from every rank."""
        c = torch.as_tensor(confusion).detach().cpu()
        n = self.num_classes
        if tuple(c.shape) != (n, n):
            raise ValueError(f"confusion should have shape ({n}, {n}), got {tuple(c.shape)}")
        if c.is_floating_point() and not bool(torch.all(c == c.round())):
            raise ValueError("confusion should hold whole pixel counts, got non-integer values")
        if bool((c < 0).any()):
            raise ValueError("confusion should hold non-negative pixel counts, got negative values")
        self._confusion = c.to(torch.int64).clone()

    def aggregate(self) -> dict[str, Any]:
        """Per-class and mean scores from the accumulated confusion matrix; see the class docstring."""
        c = self._confusion.numpy().astype(np.float64)
        tp = np.diag(c)
        fp = c.sum(axis=0) - tp
        fn = c.sum(axis=1) - tp
        iou = nan_div(tp, tp + fp + fn)
        dice = nan_div(2 * tp, 2 * tp + fp + fn)
        precision = nan_div(tp, tp + fp)
        recall = nan_div(tp, tp + fn)
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            for a in (iou, dice, precision, recall):
                a[self.ignore_index] = np.nan
        present = ~np.isnan(iou)
        return {
            "class_names": list(self.class_names),
            "iou": iou.tolist(),
            "dice": dice.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "support": c.sum(axis=1).astype(np.int64).tolist(),
            "mean_iou": float(iou[present].mean()) if present.any() else math.nan,
            "mean_dice": float(dice[present].mean()) if present.any() else math.nan,
            "pixel_accuracy": float(nan_div(tp.sum(), c.sum())),
        }


class FalsePositiveMetrics:
    """False-positive detections of line artifacts, on sparse-schema masks.

    Map dense predictions first (``convert(pred, "dense", "sparse")``). For each class in ``class_names``,
    with connected components from ``scipy.ndimage.label`` (8-connectivity by default) in each frame:

    - ``fp_pixel_rate``: over the frames whose truth has no pixel of the class, predicted pixels of the class
      divided by all pixels of those frames; NaN if every frame has the class.
    - ``fp_components``: predicted components that overlap (share at least one pixel with) no true pixel of
      the class; ``fp_components_per_frame`` divides by all frames seen.
    - ``component_precision``: predicted components that overlap the truth / all predicted components.
    - ``component_recall``: true components overlapped by at least one predicted pixel / all true components.
    - counts: ``frames``, ``frames_without_class``, ``pred_components``, ``true_components``,
      ``true_components_hit``.

    Args:
        class_names: classes to score, looked up in ``schema``.
        schema: schema of the masks; class indices must lie in ``0 .. schema.num_classes - 1``.
        min_size: predicted components with fewer pixels than this are deleted from the prediction before
            anything is counted (pixel rate included), like a small-blob clean-up; ``0`` or ``1`` keeps all.
            The truth is never filtered.
        connectivity: ``8`` (diagonal neighbours join a component) or ``4``.

    Example:
        >>> fp = FalsePositiveMetrics(("b_line",))
        >>> pred, true = np.zeros((1, 3, 4), dtype=np.uint8), np.zeros((1, 3, 4), dtype=np.uint8)
        >>> true[0, :, 0] = pred[0, :2, 0] = pred[0, 1, 3] = SPARSE.index("b_line")
        >>> fp.update(pred, true)  # one predicted B-line on the true one, one apart
        >>> fp.aggregate()["b_line"]["fp_components_per_frame"]
        1.0
    """

    _SUMS = (
        "frames_without_class",
        "fp_pixels",
        "pixels_without_class",
        "pred_components",
        "fp_components",
        "true_components",
        "true_components_hit",
    )

    def __init__(
        self,
        class_names: Sequence[str] = ("a_line", "b_line", "pleural_line"),
        schema: Schema = SPARSE,
        min_size: int = 0,
        connectivity: int = 8,
    ) -> None:
        if isinstance(class_names, str):
            class_names = (class_names,)
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity should be 4 or 8, got {connectivity!r}")
        if min_size < 0:
            raise ValueError(f"min_size should be >= 0 pixels, got {min_size}")
        self.schema = schema
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.class_indices = tuple(schema.index(n) for n in self.class_names)  # KeyError lists valid names
        self.min_size = int(min_size)
        self.connectivity = connectivity
        # 2-D neighbourhood in the middle slice of a 3-D structure: frames of a batch never connect.
        plane = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
        self._structure = np.zeros((3, 3, 3), dtype=bool)
        self._structure[1] = plane
        self._state = torch.zeros(self.state_size, dtype=torch.float64)

    @property
    def state_size(self) -> int:
        """Length of :meth:`state`: the frame count, then ``len(_SUMS)`` sums per class."""
        return 1 + len(self._SUMS) * len(self.class_names)

    def reset(self) -> None:
        """Clear the accumulated sums."""
        self._state.zero_()

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch of ``(B, H, W)`` or ``(H, W)`` predicted and true sparse-schema class indices."""
        p = _indices(pred, "pred")
        t = _indices(target, "target")
        _check_shapes(p.shape, t.shape)
        if p.ndim == 2:
            p, t = p[None], t[None]
        n = self.schema.num_classes
        for name, x in (("pred", p), ("target", t)):
            if x.size and (x.min() < 0 or x.max() >= n):
                raise ValueError(
                    f"{name} holds class indices {x.min()}..{x.max()}, expected 0..{n - 1} of schema "
                    f"{self.schema.name!r} ({', '.join(self.schema.names)}); map dense masks with "
                    'convert(mask, "dense", "sparse") first'
                )
        sums = np.zeros((len(self.class_names), len(self._SUMS)), dtype=np.float64)
        for row, k in enumerate(self.class_indices):
            sums[row] = self._class_sums(p == k, t == k)
        self._state[0] += p.shape[0]
        self._state[1:] += torch.from_numpy(sums.reshape(-1))

    def _class_sums(self, pred: np.ndarray, true: np.ndarray) -> list[float]:
        """The ``_SUMS`` of one class for boolean ``(B, H, W)`` masks."""
        pred_lab, n_pred = ndimage.label(pred, structure=self._structure)
        if self.min_size > 1 and n_pred:
            keep = np.bincount(pred_lab.ravel(), minlength=n_pred + 1) >= self.min_size
            keep[0] = False
            pred = keep[pred_lab]
            pred_lab = np.where(pred, pred_lab, 0)
            n_pred = int(keep.sum())
        true_lab, n_true = ndimage.label(true, structure=self._structure)
        empty = ~true.any(axis=(1, 2))  # (B,) frames without the class in truth
        pred_hit = np.unique(pred_lab[true & pred])  # predicted components overlapping the truth
        true_hit = np.unique(true_lab[true & pred])
        return [
            float(empty.sum()),
            float(pred[empty].sum()),
            float(empty.sum() * pred.shape[1] * pred.shape[2]),
            float(n_pred),
            float(n_pred - pred_hit.size),
            float(n_true),
            float(true_hit.size),
        ]

    def state(self) -> torch.Tensor:
        """A copy of the raw sums as a 1-D float64 tensor (frame count, then per class ``_SUMS``), for all_reduce."""
        return self._state.clone()

    def load_state(self, state: torch.Tensor | np.ndarray) -> None:
        """Replace the sums, e.g. with an ``all_reduce``-summed :meth:`state` from every rank."""
        s = torch.as_tensor(state).detach().cpu().to(torch.float64)
        if tuple(s.shape) != (self.state_size,):
            raise ValueError(
                f"state should be a 1-D tensor of {self.state_size} sums (1 + {len(self._SUMS)} x "
                f"{len(self.class_names)} classes), got shape {tuple(s.shape)}"
            )
        self._state = s.clone()

    def aggregate(self) -> dict[str, dict[str, float]]:
        """Per-class false-positive scores and counts; see the class docstring."""
        frames = int(self._state[0])
        sums = self._state[1:].reshape(len(self.class_names), len(self._SUMS)).numpy()
        out: dict[str, dict[str, float]] = {}
        for name, row in zip(self.class_names, sums, strict=True):
            s = {k: int(v) for k, v in zip(self._SUMS, row, strict=True)}
            out[name] = {
                "fp_pixel_rate": float(nan_div(s["fp_pixels"], s["pixels_without_class"])),
                "fp_components_per_frame": float(nan_div(s["fp_components"], frames)),
                "fp_components": s["fp_components"],
                "frames": frames,
                "frames_without_class": s["frames_without_class"],
                "fp_pixels": s["fp_pixels"],
                "pred_components": s["pred_components"],
                "true_components": s["true_components"],
                "true_components_hit": s["true_components_hit"],
                "component_precision": float(nan_div(s["pred_components"] - s["fp_components"], s["pred_components"])),
                "component_recall": float(nan_div(s["true_components_hit"], s["true_components"])),
            }
        return out


def summarise(seg: dict[str, Any], fp: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown table of per-class IoU, Dice, precision, recall and the false-positive columns.

    Args:
        seg: :meth:`SegmentationMetrics.aggregate` output.
        fp: :meth:`FalsePositiveMetrics.aggregate` output; its classes are matched to ``seg``'s by name and
            any it has that ``seg`` lacks get rows of their own.
    """
    fp = fp or {}
    head = ["class", "IoU", "Dice", "precision", "recall"]
    if fp:
        head += ["FP pixel rate", "FP comp./frame", "FP comp.", "comp. recall"]
    rows = []
    names = list(seg["class_names"]) + [n for n in fp if n not in seg["class_names"]]
    for name in names:
        row = [name]
        if name in seg["class_names"]:
            i = seg["class_names"].index(name)
            row += [fmt(seg[k][i], ".4f") for k in ("iou", "dice", "precision", "recall")]
        else:
            row += [""] * 4
        if fp:
            f = fp.get(name)
            row += (
                [
                    fmt(f["fp_pixel_rate"], ".3g"),
                    fmt(f["fp_components_per_frame"], ".3f"),
                    fmt(f["fp_components"], ".0f"),
                    fmt(f["component_recall"], ".3f"),
                ]
                if f
                else [""] * 4
            )
        rows.append(row)
    mean = ["**mean**", fmt(seg["mean_iou"], ".4f"), fmt(seg["mean_dice"], ".4f"), "", ""]
    rows.append(mean + [""] * (len(head) - len(mean)))
    table = markdown_table(head, rows, padded_rule=True)
    return f"{table}\n\npixel accuracy {fmt(seg['pixel_accuracy'], '.4f')}"
