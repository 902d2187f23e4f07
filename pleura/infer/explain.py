"""Explanations a clinician can look at: a class-activation map, and the annotated clip ``predict`` writes.

The class-activation map is Grad-CAM (Selvaraju et al., ICCV 2017) on the classifier head's last block:
the block's feature maps weighted by the mean gradient of the class logit, rectified, upsampled to the
frame. It shows where the head looked; the segmentation shows what it saw there. The panels (frame,
segmentation overlay, heat map) are drawn by ``pleura.viz``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pleura.models import ReverseTransferClassifier


def class_activation_map(model: ReverseTransferClassifier, image: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM of ``class_index`` for one cleaned (H, W) uint8 frame, as (H, W) float in [0, 1]."""
    if not hasattr(model, "head"):  # a segmentation U-Net: no diagnosis to explain
        raise ValueError(f"Grad-CAM explains a diagnosis; a {type(model).__name__} has no diagnosis head")
    blocks = model.head.blocks
    if len(blocks) == 0:  # a head without conv blocks: the tap itself is the last feature map
        raise ValueError("this classifier's head has no conv blocks; Grad-CAM needs one")
    store: dict[str, torch.Tensor] = {}

    def hook(_m: torch.nn.Module, _i: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        store["a"] = out

    handle = blocks[-1].register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None].to(device)
        with torch.enable_grad():
            logits = model(x)
            logits[0, class_index].backward()
        a, g = store["a"], store["a"].grad
        cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=image.shape, mode="bilinear", align_corners=False)[0, 0].detach().cpu().numpy()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    peak = cam.max()
    return cam / peak if peak > 0 else cam


class AnnotatedVideo:
    """Streams annotated RGB frames into an MP4 (H.264 when available, else MPEG-4), under a temporary name
    that becomes ``path`` on ``close()``, so an interrupted run never leaves a half-written clip."""

    def __init__(self, path: str | Path, fps: float) -> None:
        import av

        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial.mp4")
        self.fps = max(1, round(fps))
        self.box = av.open(str(self.tmp), "w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.box.add_stream(codec, rate=self.fps)
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":  # encoding must keep up with prediction: fastest preset, good enough quality
            self.stream.options = {"preset": "ultrafast", "crf": "23"}
        self.started = False

    def add(self, rgb: np.ndarray) -> None:
        """Encode one ``(H, W, 3)`` uint8 RGB frame; the first sets the clip's size (odd sides cropped by a pixel)."""
        import av

        h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2  # yuv420p needs even sides
        if not self.started:
            self.stream.width, self.stream.height = w, h
            self.started = True
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        for packet in self.stream.encode(frame):
            self.box.mux(packet)

    def close(self) -> Path:
        """Finish the clip and rename it into place; on a failure (a full disk) nothing is left behind."""
        try:
            for packet in self.stream.encode():
                self.box.mux(packet)
            self.box.close()
            self.tmp.replace(self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the partial clip; never raises, so the error that caused the abort is the one reported."""
        with contextlib.suppress(Exception):
            self.box.close()
        self.tmp.unlink(missing_ok=True)
