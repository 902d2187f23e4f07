"""Self-training on unlabelled real frames (noisy student / FixMatch-style), shared by ``train-seg --adapt-data`` and
``train-cls --adapt-weight``.

At each epoch start the U-Net is copied and frozen as the teacher (so a resumed run rebuilds the same teacher from
``last/``). Every step the teacher labels a batch of real frames where it is at least ``threshold`` sure, and the
student (the U-Net being trained) learns those labels on a strongly re-intensified view of the same frames.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from pleura.train.losses import pseudo_label_loss


def check_adapt(weight: float, threshold: float, *, allow_zero: bool) -> None:
    """Refuse a self-training weight that is not a finite number > 0 (>= 0 with ``allow_zero``: 0 turns it off)
    and a threshold outside (0, 1), in one line naming the option."""
    ok = isinstance(weight, int | float) and not isinstance(weight, bool) and math.isfinite(weight)
    if not ok or weight < 0 or (weight == 0 and not allow_zero):
        bound = ">= 0 (0: no self-training)" if allow_zero else "> 0"
        raise ValueError(f"adapt_weight should be a number {bound}, got {weight!r}")
    if not (isinstance(threshold, int | float) and 0 < threshold < 1):
        raise ValueError(f"adapt_threshold should be in (0, 1), got {threshold!r}")


@dataclass
class SelfTraining:
    """The teacher of the current epoch and the epoch's log of (loss, share of pixels kept)."""

    weight: float  # loss += weight * self-training loss
    threshold: float  # the teacher's probability a pixel needs to become a pseudo-label
    teacher: torch.nn.Module | None = None
    log: list[tuple[float, float]] = field(default_factory=list)

    def start_epoch(self, unet: torch.nn.Module) -> None:
        """Freeze a copy of ``unet`` as this epoch's teacher and clear the log."""
        self.teacher = copy.deepcopy(unet).eval().requires_grad_(False)
        self.log = []

    @torch.no_grad()
    def labels(self, image: torch.Tensor) -> torch.Tensor:
        """The teacher's class probabilities ``(N, C, H, W)`` for ``image`` (the weak view)."""
        if self.teacher is None:
            raise RuntimeError("SelfTraining.labels before start_epoch")
        return torch.softmax(self.teacher(image).float(), 1)

    def loss(self, student: torch.Tensor, teacher_prob: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """``weight`` times the pseudo-label loss of the student's logits on the strong view; logged."""
        adapt, kept = pseudo_label_loss(student, teacher_prob, self.threshold, weights)
        self.log.append((float(adapt.detach()), kept))
        return self.weight * adapt

    def info(self) -> dict[str, float]:
        """The epoch's mean self-training loss (``adapt_loss``) and share of real pixels labelled (``adapt_kept``);
        ``{}`` for an epoch without self-training."""
        if not self.log:
            return {}
        losses, kept = zip(*self.log, strict=True)
        return {"adapt_loss": float(np.mean(losses)), "adapt_kept": float(np.mean(kept))}
