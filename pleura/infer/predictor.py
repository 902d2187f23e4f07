"""``pleura.Predictor``: diagnosis, evidence and flags for an image, a clip or a DICOM file.

A file is streamed (``pleura.data.readers``): the scan area is found on the first frames, every frame is
cleaned with it and resized as the model was trained, frames go through the engine in batches, and each
gets calibrated class probabilities, its segmentation's biomarkers and an out-of-distribution flag (from its
image statistics and the classifier's pooled features of the same pass: ``pleura.postprocess.ood``). The clip's
diagnosis is the mean of its in-distribution frames' probabilities (all frames if none is).

Example:
    >>> predictor = Predictor("model.safetensors")  # a file written by ``pleura export model``
    >>> result = predictor.predict("clip.mp4")
    >>> result.diagnosis, result.probabilities
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pleura.data.cleaning import ScanArea, find_scan_area, fit_to_size, remove_overlays
from pleura.data.readers import Frame, ReadError, iter_frames
from pleura.infer.batch import run_frames
from pleura.infer.engine import make_engine
from pleura.labels import Probe, Schema, recorded_schema
from pleura.postprocess.biomarkers import frame_biomarkers
from pleura.postprocess.calibration import softmax
from pleura.postprocess.ood import OODDetector

AREA_FRAMES = 32  # frames read ahead to find a clip's scan area


class FramePredictions(NamedTuple):
    """What :meth:`Predictor.predict_frames` returns for N cleaned frames."""

    probabilities: np.ndarray  # (N, K) calibrated class probabilities
    labels: np.ndarray  # (N, S, S) uint8 segmentation label maps
    ood: np.ndarray  # (N,) bool: out of distribution (always False without a detector)
    ood_score: np.ndarray  # (N,) the detector's score (> 1: flagged; 0 without a detector)


@dataclass
class FrameResult:
    """One frame's prediction."""

    index: int  # position of the frame in the file
    time_s: float
    probabilities: dict[str, float]  # calibrated, sum to 1
    diagnosis: str
    biomarkers: dict[str, Any]  # from the frame's segmentation (``pleura.postprocess.biomarkers``)
    ood: bool  # not like the training frames (or no scan area): do not trust this frame
    ood_score: float  # max of image-statistics and network-feature distances / their thresholds; flagged > 1


@dataclass
class ClipResult:
    """A file's prediction: its frames and their aggregate."""

    path: str
    probabilities: dict[str, float]  # mean of the in-distribution frames' (all frames' if none is)
    diagnosis: str | None  # the most probable class; None when every frame is out of distribution (not LUS)
    biomarkers: dict[str, Any]  # max of counts and score, mean of fractions, any of flags over frames
    frames: list[FrameResult] = field(default_factory=list)
    ood_frames: int = 0
    probe: Probe | str = ""  # probe type detected from the scan area's shape ("" only for a result built empty)

    def to_dict(self, frames: bool = True) -> dict[str, Any]:
        """The result as JSON-ready data; ``frames=False`` leaves out the per-frame results."""
        d = asdict(self)
        if not frames:
            d.pop("frames")
        return d


def aggregate_biomarkers(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Clip biomarkers from frame ones: a zone is scored by its worst view (max of counts and score), flags
    are raised if any frame raises them, fractions are averaged over frames that have them."""
    out: dict[str, Any] = {}
    for key in items[0] if items else ():
        values = [v[key] for v in items if v[key] is not None]
        if not values:
            out[key] = None
        elif isinstance(values[0], bool):
            out[key] = any(values)
        elif isinstance(values[0], int):
            out[key] = int(max(values))
        else:
            finite = [float(v) for v in values if np.isfinite(v)]
            out[key] = float(np.mean(finite)) if finite else float("nan")
    return out


FrameHook = Callable[[FrameResult, np.ndarray, np.ndarray], None]


class Predictor:
    """Predicts files with a model exported by ``pleura export model`` (or any saved classifier).

    Args:
        model: the ``.safetensors`` model file (its ``.json`` beside it).
        engine: ``onnx`` (ONNX Runtime, the model exported in memory; 1.2-1.7x faster here) or ``torch``.
        batch_size: frames per engine call.
        rate: frames per second predicted from clips (10 by default: lung sliding and B-lines change
            slower than that, and it keeps a 2-core CPU ahead of real time); ``None`` predicts every frame.
        max_frames: stop after this many frames of a file.
        device: where the ``torch`` engine runs: ``auto`` (CUDA when present, under bfloat16 autocast),
            ``cpu`` or ``cuda``. The ``onnx`` engine runs on the CPU; it refuses ``cuda``.
    """

    def __init__(
        self,
        model: str | Path,
        engine: str = "onnx",
        batch_size: int = 8,
        rate: float | None = 10.0,
        max_frames: int | None = None,
        device: str = "auto",
    ) -> None:
        from pleura.device import pick_device
        from pleura.models import ReverseTransferClassifier, load_model

        self.path = Path(model)
        self.model, self.meta = load_model(self.path)
        if not isinstance(self.model, ReverseTransferClassifier):
            raise ValueError(f"{self.path}: a {type(self.model).__name__}, not a classifier; export a train-cls run")
        self.size = int((self.meta.get("image_size") or [256])[0])
        self.class_names = tuple(self.model.config.class_names)
        self.schema: Schema = recorded_schema(self.model.unet.config.schema, self.path)  # no default: refused
        self.temperature = float(self.meta.get("temperature", 1.0))
        features = self.model.head.num_features
        try:
            self.ood = OODDetector.from_dict(self.meta["ood"], features) if "ood" in self.meta else None
        except ValueError as err:
            raise ValueError(f"{self.path}: {err}") from None
        if engine == "onnx" and device == "cuda":
            raise ValueError("the onnx engine runs on the CPU; use --engine torch for --device cuda")
        target = pick_device(device)
        if engine == "torch":
            self.model.to(target)
        self.engine = make_engine(self.model, engine, image_size=self.size)
        self.batch_size, self.rate, self.max_frames = batch_size, rate, max_frames

    def _clean(self, frames: Iterator[Frame]) -> Iterator[tuple[Frame, np.ndarray, ScanArea]]:
        """Cleaned model-size frames, the scan area found once on the first ``AREA_FRAMES`` frames."""
        head = list(itertools.islice(frames, AREA_FRAMES))
        if not head:
            return
        area = find_scan_area(np.stack([f.image for f in head]))
        for f in itertools.chain(head, frames):
            yield f, fit_to_size(remove_overlays(f.image, area=area), area, self.size), area

    def predict_frames(self, images: np.ndarray) -> FramePredictions:
        """Probabilities, label maps and OOD flags of cleaned frames (N, S, S) uint8, from one engine pass.

        Unpacks as ``prob, labels, ood, ood_score``; ``prob, labels = result[:2]`` as before the OOD flags.
        """
        out = run_frames(self.engine, images.astype(np.float32)[:, None] / 255.0)
        prob = softmax(out.logits, self.temperature)
        if self.ood is not None:
            ood, score = self.ood.flags(images, out.features)
        else:
            ood, score = np.zeros(len(images), bool), np.zeros(len(images))
        return FramePredictions(prob, out.labels, ood, score)

    def predict(self, path: str | Path, on_frame: FrameHook | None = None) -> ClipResult:
        """Predict one file; ``on_frame(result, cleaned image, label map)`` is called for every frame
        (overlays, video writing) while it streams.

        Raises:
            ReadError: the file cannot be read (one line naming it).
        """
        path = Path(path)
        results: list[FrameResult] = []
        probe: Probe | str = ""
        stream = self._clean(iter_frames(path, fps=self.rate, max_frames=self.max_frames))
        while batch := list(itertools.islice(stream, self.batch_size)):
            probe = batch[0][2].probe
            images = np.stack([b[1] for b in batch])
            prob, labels, flags, scores = self.predict_frames(images)
            for (frame, image, _), p, lab, flag, score in zip(batch, prob, labels, flags, scores, strict=True):
                k = int(np.argmax(p))
                results.append(
                    FrameResult(
                        index=frame.index, time_s=round(frame.time_s, 3),
                        probabilities={c: float(v) for c, v in zip(self.class_names, p, strict=True)},
                        diagnosis=self.class_names[k], biomarkers=frame_biomarkers(lab, self.schema).to_dict(),
                        ood=bool(flag), ood_score=float(score),
                    )
                )  # fmt: skip
                if on_frame is not None:
                    on_frame(results[-1], image, lab)
        if not results:
            raise ReadError(f"{path}: no frames to predict")
        good = [r for r in results if not r.ood] or results  # a file with no in-distribution frame gets no diagnosis
        mean = np.mean([[r.probabilities[c] for c in self.class_names] for r in good], axis=0)
        return ClipResult(
            path=str(path),
            probabilities={c: float(v) for c, v in zip(self.class_names, mean, strict=True)},
            diagnosis=None
            if good is results and all(r.ood for r in results)
            else self.class_names[int(np.argmax(mean))],
            biomarkers=aggregate_biomarkers([r.biomarkers for r in good]),
            frames=results,
            ood_frames=sum(r.ood for r in results),
            probe=probe,
        )
