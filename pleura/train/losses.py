"""Segmentation losses: class-weighted cross-entropy plus soft Dice."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(counts: np.ndarray, mode: str = "sqrt_inverse", max_ratio: float = 50.0) -> torch.Tensor:
    """Per-class loss weights from pixel counts; classes never seen get weight 0.

    Args:
        counts: ``(C,)`` pixel counts of each class in the training masks.
        mode: ``none`` (1 for every seen class), ``inverse`` (1 / frequency) or ``sqrt_inverse``
            (1 / sqrt(frequency), gentler: thin classes like A-lines gain without drowning the rest).
        max_ratio: cap on the largest over the smallest weight.

    Returns:
        ``(C,)`` float32 weights with mean 1 over the seen classes.
    """
    modes = ("none", "inverse", "sqrt_inverse")
    if mode not in modes:
        raise ValueError(f"unknown class weighting {mode!r}; choose one of: {', '.join(modes)}")
    counts = np.asarray(counts, dtype=np.float64)
    seen = counts > 0
    if not seen.any():
        raise ValueError("no labelled pixels: the training masks are empty")
    freq = np.where(seen, counts / counts.sum(), 1.0)
    w = {"none": np.ones_like(freq), "inverse": 1 / freq, "sqrt_inverse": 1 / np.sqrt(freq)}[mode]
    w = np.minimum(w, w[seen].min() * max_ratio)
    w = np.where(seen, w / w[seen].mean(), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """1 - weighted mean soft Dice over classes, pooled over the batch.

    Args:
        logits: ``(B, C, H, W)`` raw scores.
        target: ``(B, H, W)`` class indices.
        weights: ``(C,)``; classes with weight 0 are left out.
    """
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1.0) / (denom + 1.0)
    w = torch.ones(num_classes, device=logits.device) if weights is None else weights.to(logits.device)
    return 1 - (w * dice).sum() / w.sum().clamp_min(1e-8)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, dice_weight: float
) -> torch.Tensor:
    """Cross-entropy (class-weighted) plus ``dice_weight`` times the soft Dice loss."""
    w = None if weights is None else weights.to(logits.device)
    ce = F.cross_entropy(logits.float(), target, weight=w)
    return ce + dice_weight * soft_dice_loss(logits, target, w) if dice_weight else ce


def pseudo_label_loss(
    logits: torch.Tensor, teacher_prob: torch.Tensor, threshold: float, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """Self-training loss: cross-entropy of the student's ``logits`` against the teacher's most likely class, on the
    pixels where the teacher's probability reaches ``threshold`` (FixMatch's confidence mask), class-weighted.

    Returns:
        The loss (0 when no pixel is confident) and the share of pixels kept as pseudo-labels.
    """
    confidence, target = teacher_prob.max(1)
    keep = (confidence >= threshold).float()
    w = None if weights is None else weights.to(logits.device)
    ce = F.cross_entropy(logits.float(), target, weight=w, reduction="none")  # w[target] * CE
    norm = keep * (w[target] if w is not None else 1.0)
    return (ce * keep).sum() / norm.sum().clamp_min(1e-6), float(keep.mean())
