"""``pleura.Predictor``: diagnosis, evidence and flags for an image, a clip or a DICOM file.

A file is streamed (``pleura.data.readers``): the scan area is found on the first frames, every frame is
cleaned with it and resized as the model was trained, frames go through the engine in batches, and each
gets calibrated class probabilities, its segmentation (the label map, kept in the result), the map's
biomarkers and an out-of-distribution flag (from its image statistics and the classifier's pooled features of
the same pass: ``pleura.postprocess.ood``). The clip's diagnosis is the mean of its in-distribution frames'
probabilities (all frames if none is); its severity score (Soldati et al. 2020,
``pleura.postprocess.severity``) comes from the same frames' biomarkers.

A segmentation U-Net (a ``train-seg`` run, a model file ``save_model`` wrote with its ``schema`` and
``image_size``, or the shipped ``foundation-sparse-w16-128``) goes through the same path when asked for with
``require_diagnosis=False`` (what ``pleura segment`` does): masks, biomarkers and severity, and no diagnosis
(``ClipResult.has_diagnosis`` is False, ``diagnosis`` None, ``probabilities`` empty; no temperature, no OOD, and
no Grad-CAM, which explains a diagnosis).

Biomarkers are read from the model-size map, inside the clip's scan area (a frame with no echo texture there,
a blank one, has none: its biomarkers are "not found"); their ``_mm`` fields use the file's pixel size (a
DICOM's, or ``pixel_mm``) scaled to the map, and are ``None`` when it is unknown.

Example:
    >>> predictor = Predictor("model.safetensors")  # a file written by ``pleura export model``
    >>> result = predictor.predict("clip.mp4")
    >>> result.diagnosis, result.probabilities
    >>> segmenter = Predictor("foundation-sparse-w16-128", require_diagnosis=False)  # a shipped U-Net, by name
    >>> segmenter.predict("clip.mp4").severity  # masks and biomarkers; no diagnosis
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pleura.data.cleaning import ScanArea, find_scan_area, fit_to_size, remove_overlays
from pleura.data.readers import Frame, ReadError, iter_frames, media_info
from pleura.infer.batch import run_frames
from pleura.infer.engine import make_engine
from pleura.labels import Probe, Schema, recorded_schema
from pleura.postprocess.biomarkers import frame_biomarkers
from pleura.postprocess.calibration import softmax
from pleura.postprocess.ood import OODDetector, OODPolicy
from pleura.postprocess.severity import clip_severity

if TYPE_CHECKING:
    from torch import nn

AREA_FRAMES = 32  # frames read ahead to find a clip's scan area
BLANK_STD = 1.0  # grey-level std inside the scan area under which a cleaned frame is blank (no scan area)


class FramePredictions(NamedTuple):
    """What :meth:`Predictor.predict_frames` returns for N cleaned frames."""

    probabilities: np.ndarray | None  # (N, K) calibrated class probabilities; None: no diagnosis head (a U-Net)
    labels: np.ndarray  # (N, S, S) uint8 segmentation label maps
    ood: np.ndarray  # (N,) bool: out of distribution (always False without a detector)
    ood_score: np.ndarray  # (N,) the detector's score (> 1: flagged; 0 without a detector)


@dataclass
class FrameResult:
    """One frame's prediction."""

    index: int  # position of the frame in the file
    time_s: float
    probabilities: dict[str, float]  # calibrated, sum to 1; empty for a model with no diagnosis head
    diagnosis: str | None  # None only for a model with no diagnosis head
    biomarkers: dict[str, Any]  # from the frame's segmentation (``pleura.postprocess.biomarkers``)
    ood: bool  # not like the training frames (or no scan area): do not trust this frame
    ood_score: float  # max of image-statistics and network-feature distances / their thresholds; flagged > 1
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)  # (S, S) uint8 map, model's schema

    def to_dict(self, labels: bool = False) -> dict[str, Any]:
        """The frame as JSON-ready data; the label map only with ``labels=True`` (as nested lists)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "labels"}
        d["probabilities"], d["biomarkers"] = dict(self.probabilities), dict(self.biomarkers)
        if labels:
            d["labels"] = None if self.labels is None else self.labels.tolist()
        return d


@dataclass
class ClipResult:
    """A file's prediction: its frames and their aggregate."""

    path: str
    probabilities: dict[str, float]  # mean of the in-distribution frames' (all frames' if none is); {}: no head
    diagnosis: str | None  # the most probable class; None when every frame is out of distribution (not LUS) and the
    # predictor withholds it (OODPolicy.WITHHOLD, the default)
    biomarkers: dict[str, Any]  # max of counts and score, mean of fractions, any of flags over frames
    frames: list[FrameResult] = field(default_factory=list)
    ood_frames: int = 0
    probe: Probe | str = ""  # probe type detected from the scan area's shape ("" only for a result built empty)
    severity: int | None = None  # Soldati 0-3 of the in-distribution frames; None: no pleural line found
    severity_rule: str = ""  # the rule that gave it, in words
    pixel_mm: tuple[float, float] | None = None  # (row, col) mm per input pixel: the DICOM's, or as given
    scan_area: ScanArea | None = field(default=None, repr=False, compare=False)  # at the input's resolution
    map_size: int = 0  # side of the model's square label maps
    has_diagnosis: bool = True  # False: a segmentation model, no diagnosis head (no diagnosis, probabilities, OOD)

    @property
    def all_ood(self) -> bool:
        """Every frame is out of distribution: a diagnosis here (``OODPolicy.WARN``) is not to be trusted."""
        return bool(self.frames) and self.ood_frames == len(self.frames)

    def to_dict(self, frames: bool = True, labels: bool = False) -> dict[str, Any]:
        """The result as JSON-ready data; ``frames=False`` leaves out the per-frame results, ``labels=True``
        adds each frame's label map (large); the scan area is never included."""
        skip = {"frames", "scan_area"}
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        d["probabilities"], d["biomarkers"] = dict(self.probabilities), dict(self.biomarkers)
        if frames:
            d["frames"] = [r.to_dict(labels) for r in self.frames]
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
SourceHook = Callable[[FrameResult, Frame, ScanArea], None]


def map_scan_area(area: ScanArea, size: int) -> np.ndarray:
    """The scan area as the model sees it: cropped and resized like the frames (``fit_to_size``), bool (S, S)."""
    return fit_to_size(area.mask.astype(np.uint8) * 255, area, size) >= 128


def map_pixel_mm(pixel_mm: tuple[float, float] | None, area: ScanArea, size: int) -> tuple[float, float] | None:
    """(row, col) mm per pixel of the model's map, from the input's: the crop is scaled by ``size / max(h, w)``."""
    if pixel_mm is None:
        return None
    t, b, left, right = area.bbox
    factor = max(b - t, right - left) / size
    return pixel_mm[0] * factor, pixel_mm[1] * factor


def model_source(model: str | Path) -> Path:
    """``model`` as a path: the name of a shipped model (``pleura.models.PRETRAINED``) gives its file, so commands
    and ``Predictor`` take names; any other path (an existing file or folder wins over a name) is kept."""
    from pleura.models import PRETRAINED, pretrained

    path = Path(model)
    return pretrained(str(model)) if not path.exists() and str(model) in PRETRAINED else path


def segmentation_run(path: str | Path) -> Path | None:
    """The best checkpoint folder of a ``train-seg`` run (``RUN/best``, holding a U-Net), or ``None`` when ``path``
    is not one (a file, a ``train-cls`` run, anything else): how a run folder is told from a classifier run."""
    from pleura.models.checkpoint import MODEL_FILE, readable_folder

    path = Path(path)
    if not path.is_dir():
        return None
    best = readable_folder(path / "best")  # a killed save leaves a finished copy beside it
    try:  # routing only: load_model checks the digest and everything else when the model is read
        record = json.loads((best / MODEL_FILE).with_suffix(".json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return best if isinstance(record, dict) and record.get("architecture") == "unet" else None


def no_diagnosis_message(path: str | Path) -> str:
    """The one line that refuses a segmentation model where a diagnosis is needed (``predict``, ``serve``)."""
    return (
        f"{path} is a segmentation model with no diagnosis head; use pleura segment (Python: require_diagnosis=False)"
    )


def _read_model(path: Path) -> tuple[nn.Module, dict[str, Any], int | None]:
    """The model, its metadata and the frame side it records (``None``: none) of a model file or a ``train-seg``
    run folder; a U-Net from a run (the folder, or its checkpoint's model file) takes the run's ``config.json``
    image size, which the checkpoints leave out."""
    from pleura.models import UNet, load_model
    from pleura.models.checkpoint import MARKER, read_checkpoint

    run: Path | None = None
    if path.is_dir():
        best = segmentation_run(path)
        if best is None:
            raise ValueError(
                f"{path}: not a train-seg run (no best/model.safetensors holding a U-Net); pass a model file "
                "(pleura export model writes one from a train-cls run)"
            )
        model, meta = read_checkpoint(best)
        run = path
    else:
        model, meta = load_model(path)
        if (path.parent / MARKER).is_file():  # a training checkpoint's model file: RUN/best/model.safetensors
            run = path.parent.parent
    size = meta.get("image_size")
    if not size and run is not None and isinstance(model, UNet):
        size = _run_image_size(run)
    return model, meta, int(size[0]) if size else None


def _run_image_size(run: Path) -> list[int] | None:
    """The ``image_size`` a training run's ``config.json`` records (checked like a model file's), or ``None``."""
    from pleura.models.io import validate_metadata

    config = run / "config.json"
    if not config.is_file():
        return None
    try:
        record = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{config}: unreadable ({err})") from None
    size = record.get("image_size") if isinstance(record, dict) else None
    validate_metadata({"image_size": size}, {}, config)  # the bounds a model file's size has
    return size


def _file_pixel_mm(path: Path) -> tuple[float, float] | None:
    """The pixel size a file states (a DICOM's calibrated region or PixelSpacing); ``None`` for other files."""
    try:
        return media_info(path).pixel_spacing_mm
    except ReadError:  # reading the frames says what is wrong with the file
        return None


class Predictor:
    """Predicts files with a model exported by ``pleura export model`` (or any saved classifier), or, with
    ``require_diagnosis=False``, segments them with a U-Net.

    Args:
        model: the ``.safetensors`` model file (its ``.json`` beside it), a shipped model's name, or a
            ``train-seg`` run folder (its ``best/`` checkpoint, at its ``config.json``'s image size).
        engine: ``onnx`` (ONNX Runtime, the model exported in memory; 1.2-1.7x faster here) or ``torch``.
        batch_size: frames per engine call.
        rate: frames per second predicted from clips (10 by default: lung sliding and B-lines change
            slower than that, and it keeps a 2-core CPU ahead of real time); ``None`` predicts every frame.
        max_frames: stop after this many frames of a file.
        device: where the ``torch`` engine runs: ``auto`` (CUDA when present, under bfloat16 autocast),
            ``cpu`` or ``cuda``. The ``onnx`` engine runs on the CPU; it refuses ``cuda``.
        require_diagnosis: refuse a model with no diagnosis head (a segmentation U-Net: every caller that shows a
            diagnosis); ``False`` takes one, whose results have ``has_diagnosis`` False (``pleura segment``).

    Attributes:
        has_diagnosis: the model has a diagnosis head; without one ``class_names`` is empty and ``temperature``
            and ``ood`` are ``None``.
        tta: test-time augmentation: each frame's probabilities are the mean of the frame's and its left-right
            mirror's (one more engine pass; POCUS clips put the probe's marker on either side). The masks, biomarkers
            and OOD flags come from the frame as it is. Video balanced accuracy on POCUS (3 seeds, 5 folds): 0.732
            without, 0.760 with (``benchmarks/bench_pocus_levers.py``).
        ood_policy: a file whose every frame is out of distribution gets no diagnosis (``withhold``, the default)
            or the diagnosis of all its frames (``warn``: ``ClipResult.all_ood`` tells it apart).
    """

    def __init__(
        self,
        model: str | Path,
        engine: str = "onnx",
        batch_size: int = 8,
        rate: float | None = 10.0,
        max_frames: int | None = None,
        device: str = "auto",
        *,
        require_diagnosis: bool = True,
        tta: bool = False,
        ood_policy: OODPolicy | str = OODPolicy.WITHHOLD,
    ) -> None:
        from pleura.device import pick_device
        from pleura.models import ReverseTransferClassifier, UNet

        self.path = model_source(model)
        self.tta = tta
        self.ood_policy = OODPolicy.parse(ood_policy)
        self.model, self.meta, size = _read_model(self.path)
        self.has_diagnosis = isinstance(self.model, ReverseTransferClassifier)
        self.temperature: float | None = None
        self.ood: OODDetector | None = None
        if self.has_diagnosis:
            self.size = size or 256
            self.class_names: tuple[str, ...] = tuple(self.model.config.class_names)
            self.schema: Schema = recorded_schema(self.model.unet.config.schema, self.path)  # no default: refused
            self.temperature = float(self.meta.get("temperature", 1.0))
            features = self.model.head.num_features
            try:
                self.ood = OODDetector.from_dict(self.meta["ood"], features) if "ood" in self.meta else None
            except ValueError as err:
                raise ValueError(f"{self.path}: {err}") from None
        elif not isinstance(self.model, UNet):
            raise ValueError(f"{self.path}: a {type(self.model).__name__}, not a classifier or a segmentation U-Net")
        elif require_diagnosis:
            raise ValueError(no_diagnosis_message(self.path))
        else:
            if size is None:
                raise ValueError(
                    f"{self.path}: the U-Net records no image_size (the frame side it was trained on); save it with "
                    'metadata {"schema": ..., "image_size": [S, S]}, or pass its train-seg run folder'
                )
            self.size, self.class_names = size, ()
            self.schema = recorded_schema(self.model.config.schema, self.path)
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
        ``prob`` is ``None`` for a model with no diagnosis head.
        """
        x = images.astype(np.float32)[:, None] / 255.0
        out = run_frames(self.engine, x)
        prob = None if out.logits is None else softmax(out.logits, self.temperature)
        if self.tta and prob is not None:  # the mirror's probabilities averaged in; everything else as it is
            prob = (prob + softmax(self.engine.run(np.ascontiguousarray(x[..., ::-1])).logits, self.temperature)) / 2
        if self.ood is not None:
            ood, score = self.ood.flags(images, out.features)
        else:
            ood, score = np.zeros(len(images), bool), np.zeros(len(images))
        return FramePredictions(prob, out.labels, ood, score)

    def predict(
        self,
        path: str | Path,
        on_frame: FrameHook | None = None,
        *,
        on_source: SourceHook | None = None,
        pixel_mm: float | tuple[float, float] | None = None,
        keep_labels: bool = True,
    ) -> ClipResult:
        """Predict one file; ``on_frame(result, cleaned image, label map)`` is called for every frame
        (overlays, video writing) while it streams, and ``on_source(result, decoded frame, scan area)`` with
        the frame as the file holds it (what ``pleura segment`` maps its masks back onto).

        Args:
            path: an image, clip or DICOM file.
            on_frame: hook on the cleaned, model-size frame and its label map.
            on_source: hook on the original frame and the clip's scan area (at the input's resolution).
            pixel_mm: mm per input pixel, a number or ``(row, col)``; ``None`` takes a DICOM's own (other
                files state none: the ``_mm`` biomarkers are then ``None``).
            keep_labels: keep each frame's label map in ``FrameResult.labels`` (a clip's worth of
                model-size maps in memory); ``False`` drops them after the hooks.

        Raises:
            ReadError: the file cannot be read (one line naming it).
            ValueError: ``pixel_mm`` is not a positive size.
        """
        path = Path(path)
        spacing = _file_pixel_mm(path) if pixel_mm is None else _pair(pixel_mm)
        results: list[FrameResult] = []
        probe: Probe | str = ""
        area: ScanArea | None = None
        area_map = np.zeros((self.size, self.size), bool)
        map_mm: tuple[float, float] | None = None
        stream = self._clean(iter_frames(path, fps=self.rate, max_frames=self.max_frames))
        while batch := list(itertools.islice(stream, self.batch_size)):
            if batch[0][2] is not area:  # the clip's scan area (found once): as the model sees it
                area = batch[0][2]
                probe, area_map = area.probe, map_scan_area(area, self.size)
                map_mm = map_pixel_mm(spacing, area, self.size)
            images = np.stack([b[1] for b in batch])
            prob, labels, flags, scores = self.predict_frames(images)
            probs = [None] * len(batch) if prob is None else prob
            for (frame, image, _), p, lab, flag, score in zip(batch, probs, labels, flags, scores, strict=True):
                probabilities, diagnosis = self._diagnosis(p)
                blank = not area_map.any() or float(image[area_map].std()) < BLANK_STD
                inside = np.zeros_like(area_map) if blank else area_map
                markers = frame_biomarkers(lab, self.schema, pixel_mm=map_mm, scan_area=inside)
                results.append(
                    FrameResult(
                        index=frame.index, time_s=round(frame.time_s, 3),
                        probabilities=probabilities, diagnosis=diagnosis, biomarkers=markers.to_dict(),
                        ood=bool(flag), ood_score=float(score), labels=lab,
                    )
                )  # fmt: skip
                if on_frame is not None:
                    on_frame(results[-1], image, lab)
                if on_source is not None:
                    on_source(results[-1], frame, area)
                if not keep_labels:
                    results[-1].labels = None
        if not results:
            raise ReadError(f"{path}: no frames to predict")
        good = [r for r in results if not r.ood] or results  # with none in distribution: all of them (OODPolicy)
        all_ood = all(r.ood for r in results)
        rows = [[r.probabilities[c] for c in self.class_names] for r in good]
        probabilities, diagnosis = self._diagnosis(np.mean(rows, axis=0) if self.has_diagnosis else None)
        severity = clip_severity([r.biomarkers for r in good], [r.index for r in good])
        return ClipResult(
            path=str(path),
            probabilities=probabilities,
            diagnosis=None if all_ood and self.ood_policy is OODPolicy.WITHHOLD else diagnosis,
            biomarkers=aggregate_biomarkers([r.biomarkers for r in good]),
            frames=results,
            ood_frames=sum(r.ood for r in results),
            probe=probe,
            severity=severity.score,
            severity_rule=severity.rule,
            pixel_mm=spacing,
            scan_area=area,
            map_size=self.size,
            has_diagnosis=self.has_diagnosis,
        )

    def _diagnosis(self, prob: np.ndarray | None) -> tuple[dict[str, float], str | None]:
        """Named probabilities and the most probable class of one ``(K,)`` row; ``({}, None)`` without a head."""
        if prob is None:
            return {}, None
        named = {c: float(v) for c, v in zip(self.class_names, prob, strict=True)}
        return named, self.class_names[int(np.argmax(prob))]


def _pair(pixel_mm: float | tuple[float, float]) -> tuple[float, float]:
    """``(row, col)`` mm from a number or a pair, checked positive and finite."""
    pair = (pixel_mm, pixel_mm) if np.isscalar(pixel_mm) else tuple(pixel_mm)  # type: ignore[arg-type]
    if len(pair) != 2 or not all(np.isfinite(float(v)) and float(v) > 0 for v in pair):
        raise ValueError(f"pixel_mm should be a positive size in mm (a number or a (row, col) pair), got {pixel_mm!r}")
    return float(pair[0]), float(pair[1])
