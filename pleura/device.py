"""Picking the torch device for a ``--device`` option; shared by training (``pleura.train.distributed``) and
inference (``pleura.infer.predictor``), so inference does not depend on training."""

from __future__ import annotations

import torch


def pick_device(device: str = "auto", index: int = 0) -> torch.device:
    """The torch device for a ``--device`` option: ``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; choose auto, cpu or cuda")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(f"cuda:{index}") if use_cuda else torch.device("cpu")
