"""The one prediction path: frames through an engine, and a manifest dataset through that.

Every command that predicts goes through :func:`run_frames`: ``predict`` (``Predictor``, on cleaned frames
of files), ``eval-model`` and ``eval-seg`` (through :func:`predict_dataset`, on a manifest dataset) and the
held-out predictions of ``train-cls``. So what is validated is what ships: the same engine call, the same
segmentation fallback for the ``bottleneck`` tap, the same label maps.

Example:
    >>> engine = make_engine(model, "onnx", image_size=128)
    >>> for batch, out in predict_dataset(engine, "data/pocus128"):
    ...     out.logits, out.labels, out.features  # (B, K), (B, H, W) uint8, (B, F)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pleura.data.dataset import LUSDataset
from pleura.infer.engine import Engine


@dataclass
class FrameOutputs:
    """A batch of frames through an engine: what every prediction path reads."""

    logits: np.ndarray | None  # (B, K) class logits; None for a segmentation-only U-Net
    labels: np.ndarray | None  # (B, H, W) uint8 segmentation label maps (argmax over the classes)
    features: np.ndarray | None  # (B, F) the classifier head's pooled features (the OOD detector's input)


def run_frames(engine: Engine, x: np.ndarray) -> FrameOutputs:
    """Run float32 frames ``x`` (B, C, H, W) in [0, 1] through ``engine``, with the label maps of the same pass.

    A classifier with the ``bottleneck`` tap never runs its decoder; its label maps (the explanation) then come
    from the engine's PyTorch model, the only place that fallback lives.
    """
    out = engine.run(x)
    seg = out.seg_logits
    if seg is None and engine.source is not None and hasattr(engine.source, "unet"):
        with torch.inference_mode():
            device = next(engine.source.parameters()).device
            seg = engine.source.unet(torch.from_numpy(np.ascontiguousarray(x)).to(device)).float().cpu().numpy()
    labels = None if seg is None else seg.argmax(axis=1).astype(np.uint8)
    return FrameOutputs(out.logits, labels, out.features)


def predict_dataset(
    engine: Engine,
    data: str | Path,
    rows: Sequence[dict[str, str]] | None = None,
    schema: str | None = None,
    batch_size: int = 16,
) -> Iterator[tuple[dict[str, Any], FrameOutputs]]:
    """Yield ``(batch, outputs)`` over the frames of a manifest dataset (all rows, or ``rows``), in order.

    ``batch`` is the dataset's collated batch (``id``, ``clip_id``, ``patient_id``, ``label``, and ``mask``
    when ``schema`` is given); the frames are read as the dataset gives them (already cleaned by the import or
    the simulator).
    """
    dataset = LUSDataset(data, schema, rows=rows)
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield batch, run_frames(engine, batch["image"].numpy())
