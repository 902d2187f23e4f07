"""What ``pleura segment`` writes: per-frame masks at the input's resolution, an overlay with a legend, and the
biomarkers with the severity score, for images, clips and DICOM files.

The frames go through ``Predictor.predict`` (the one prediction path); each model-size label map is mapped back
onto the frame as the file holds it (:func:`restore_mask`): the cleaning cropped the frame to its scan area's
box, scaled it by ``size / max(h, w)`` and placed it top-aligned and centred in a square, so the map is read
back through the same placement with nearest-neighbour sampling, and every pixel outside the scan area is 0.

For each input ``<name>`` (deduplicated) the output folder holds ``<name>/``:

- ``masks/frame_<index>.png``: indexed PNG (the schema's palette), one per predicted frame, input resolution;
- ``overlay.png`` (an image) or ``overlay.mp4`` (a clip): the frame with its classes tinted, and a legend;
- ``biomarkers.json`` (the clip's biomarkers, severity score and rule, and every frame's) and
  ``biomarkers.csv`` (one row per frame);

and for the batch ``segment.json`` (every file, its folder and severity, and the files that failed) and
``clips.csv`` (one row per file). Lengths ending ``_px`` are in pixels of the model's map (``map_size`` in the
JSON; ``map_pixel_mm`` gives their size when the input's pixel size is known).

The model is a classifier (its U-Net segments) or a segmentation U-Net alone (a ``train-seg`` run, a U-Net model
file, the shipped ``foundation-sparse-w16-128``); the latter has no diagnosis, so the files then say
``"has_diagnosis": false`` and carry no diagnosis and no out-of-distribution fields.

For exporting labels: :func:`frame_masks` gives ``(frame index, mask at the input's resolution)`` for a file,
and :func:`result_masks` the same from a ``ClipResult`` already predicted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pleura.atomic import finite, printable, write_text
from pleura.data.annotations import ExportFormat, ExportItem, ExportReport, export_labels
from pleura.data.cleaning import ScanArea
from pleura.data.readers import Frame, media_info
from pleura.infer.explain import AnnotatedVideo
from pleura.infer.predictor import ClipResult, FrameResult, Predictor, map_pixel_mm
from pleura.labels import Schema, SchemaName, convert, get_schema
from pleura.report import csv_text
from pleura.viz import UNTINTED, overlay

__all__ = ["SegmentWriter", "frame_masks", "restore_mask", "result_masks", "target_schema"]


LABELS_FOLDER = "labels"  # where --export-labels writes, beside the per-file folders


def restore_mask(labels: np.ndarray, area: ScanArea, size: int | None = None) -> np.ndarray:
    """A model-size label map back at the input frame's resolution: nearest neighbour through the cleaning's
    crop, scale and placement (``pleura.data.cleaning.fit_to_size``); 0 outside the scan area.

    Args:
        labels: ``(S, S)`` class indices, as the model predicted them on the cleaned frame.
        area: the clip's scan area (its mask has the input frame's shape).
        size: ``S``; ``None`` takes ``labels.shape[0]``.

    Returns:
        ``(H, W)`` uint8, the input frame's shape.
    """
    size = labels.shape[0] if size is None else size
    if labels.shape != (size, size):
        raise ValueError(f"labels should be a ({size}, {size}) map, got shape {labels.shape}")
    t, b, left, right = area.bbox
    h, w = b - t, right - left
    scale = size / max(h, w)
    nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    x0 = (size - nw) // 2
    rows = np.minimum(((np.arange(h) + 0.5) * nh / h).astype(int), nh - 1)
    cols = x0 + np.minimum(((np.arange(w) + 0.5) * nw / w).astype(int), nw - 1)
    out = np.zeros(area.mask.shape, dtype=np.uint8)
    out[t:b, left:right] = labels[rows[:, None], cols[None, :]]
    out[~area.mask] = 0
    return out


def target_schema(model_schema: Schema, schema: str | SchemaName | Schema | None) -> Schema:
    """The schema masks are written in: the model's (``None``) or a coarser one (``dense`` -> ``sparse``).

    Raises:
        ValueError: an unknown schema, or a finer one than the model's (labels only coarsen).
    """
    if schema is None:
        return model_schema
    try:
        wanted = get_schema(schema)
    except KeyError as e:
        raise ValueError(str(e).strip("'\"")) from None
    if wanted.name != model_schema.name:
        try:
            convert(np.zeros((1, 1), np.uint8), model_schema.name, wanted.name)
        except ValueError:
            raise ValueError(
                f"the model segments in the {model_schema.name!r} schema; masks can be written in it or a coarser "
                f"one, not in {wanted.name!r}"
            ) from None
    return wanted


def _in_schema(mask: np.ndarray, source: Schema, target: Schema) -> np.ndarray:
    return mask if source.name == target.name else convert(mask, source.name, target.name)


def result_masks(
    result: ClipResult, schema: str | SchemaName | Schema | None = None, model_schema: str | Schema = "dense"
) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame index, mask at the input's resolution)`` of every frame of a ``ClipResult`` that kept its label
    maps (``Predictor.predict(keep_labels=True)``, the default), in ``schema`` (default: the model's).

    Raises:
        ValueError: the result kept no label maps or no scan area.
    """
    if result.scan_area is None or any(f.labels is None for f in result.frames):
        raise ValueError(f"{printable(result.path)}: the result kept no label maps; predict with keep_labels=True")
    source = get_schema(model_schema)
    target = target_schema(source, schema)
    for f in result.frames:
        mask = restore_mask(f.labels, result.scan_area, result.map_size)  # type: ignore[arg-type]
        yield f.index, _in_schema(mask, source, target)


def frame_masks(
    predictor: Predictor, path: str | Path, schema: str | SchemaName | Schema | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame index, mask at the input's resolution)`` for each predicted frame of ``path`` (the frames the
    predictor's ``rate`` and ``max_frames`` pick), in ``schema`` (default: the model's): what a label export needs.

    The file is predicted when called (model-size maps kept in memory); each full-resolution mask is made as the
    iteration reaches it.

    Raises:
        ReadError: the file cannot be read.
        ValueError: a schema the model's masks cannot be written in.
    """
    target = target_schema(predictor.schema, schema)
    result = predictor.predict(path)
    return result_masks(result, target, predictor.schema)


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A legend font about ``height`` pixels high (Pillow's bundled font; its bitmap font where FreeType lacks)."""
    try:
        return ImageFont.load_default(size=height)
    except (TypeError, OSError, ImportError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def legend(schema: Schema, width: int) -> np.ndarray:
    """A strip naming the tinted classes with their colours, ``width`` pixels wide, (h, width, 3) uint8."""
    shown = [c for c in schema.classes if c.name not in UNTINTED]
    text_h = max(10, min(28, width // 48))
    font = _font(text_h)
    pad, box = text_h // 2, text_h
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [box + pad + int(probe.textlength(c.name, font=font)) + 2 * pad for c in shown]
    rows, x = 1, pad
    for w_item in widths:  # wrap onto as many rows as the width needs
        if x + w_item > width and x > pad:
            rows, x = rows + 1, pad
        x += w_item
    canvas = Image.new("RGB", (width, rows * (box + pad) + pad), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x, y = pad, pad
    for c, w_item in zip(shown, widths, strict=True):
        if x + w_item > width and x > pad:
            x, y = pad, y + box + pad
        draw.rectangle((x, y, x + box - 1, y + box - 1), fill=tuple(c.color))
        draw.text((x + box + pad, y + box // 2), c.name, fill=(255, 255, 255), font=font, anchor="lm")
        x += w_item
    return np.asarray(canvas)


def overlay_with_legend(image: np.ndarray, mask: np.ndarray, schema: Schema) -> np.ndarray:
    """The grey frame with its classes tinted (``pleura.viz.overlay``) above a legend, (H + h, W, 3) uint8."""
    return np.concatenate([overlay(image, mask, schema), legend(schema, image.shape[1])], axis=0)


def _save_indexed(mask: np.ndarray, palette: np.ndarray, path: Path) -> None:
    img = Image.fromarray(mask, mode="P")
    img.putpalette(palette.flatten().tolist())
    img.save(path, compress_level=3)


class SegmentWriter:
    """Segments files one by one into ``out`` (a folder per file, written under a hidden name and renamed when
    complete, so a file that fails half-way leaves nothing); ``close()`` writes the batch's tables.

    Args:
        out: the output folder (in ``pleura segment`` a staged one: ``pleura.atomic.staged_folder``).
        predictor: the model: a classifier, or a segmentation U-Net (``Predictor(..., require_diagnosis=False)``).
        schema: the schema of the masks written (default: the model's; a coarser one is converted).
        video: write ``overlay.mp4`` for a clip (else only its masks and biomarkers).
        pixel_mm: mm per input pixel for files that state none (a DICOM's own wins when this is ``None``).
    """

    def __init__(
        self,
        out: str | Path,
        predictor: Predictor,
        schema: str | SchemaName | Schema | None = None,
        video: bool = True,
        pixel_mm: float | tuple[float, float] | None = None,
    ) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.predictor, self.video, self.pixel_mm = predictor, video, pixel_mm
        self.schema = target_schema(predictor.schema, schema)
        self.results: list[tuple[str, ClipResult]] = []
        self.names: set[str] = set()

    def _name(self, path: Path) -> str:
        name, k = path.stem or path.name, 1
        while name in self.names or name in {"segment", "clips", LABELS_FOLDER}:
            k += 1
            name = f"{path.stem}-{k}"
        self.names.add(name)
        return name

    def segment(self, path: str | Path) -> ClipResult:
        """Segment ``path`` into its folder; raises ``ReadError`` (or ``ValueError``) for a bad file, leaving
        no folder behind."""
        path = Path(path)
        name = self._name(path)
        tmp = self.out / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "masks").mkdir(parents=True)
        palette, model_schema = self.schema.palette(), self.predictor.schema
        state: dict[str, Any] = {"movie": None, "first": None}

        def on_source(r: FrameResult, frame: Frame, area: ScanArea) -> None:
            if r.labels is None:  # pragma: no cover - predict keeps them until the hooks ran
                raise RuntimeError("the predictor dropped the label map before the hook")
            mask = _in_schema(restore_mask(r.labels, area, self.predictor.size), model_schema, self.schema)
            _save_indexed(mask, palette, tmp / "masks" / f"frame_{r.index:06d}.png")
            panel = overlay_with_legend(frame.image, mask, self.schema)
            if state["first"] is None:
                state["first"] = (r, panel)
            elif self.video:
                if state["movie"] is None:  # a second frame: a clip
                    first_r, first_panel = state["first"]
                    dt = r.time_s - first_r.time_s
                    state["movie"] = AnnotatedVideo(tmp / "overlay.mp4", fps=1.0 / dt if dt > 0 else 10.0)
                    state["movie"].add(first_panel)
                state["movie"].add(panel)
            r.labels = None  # the mask is written: keep no clip's worth of maps in memory

        try:
            result = self.predictor.predict(path, on_source=on_source, pixel_mm=self.pixel_mm, keep_labels=True)
            if state["movie"] is not None:
                state["movie"].close()
            elif len(result.frames) == 1 or not self.video:
                Image.fromarray(state["first"][1]).save(tmp / "overlay.png")
            self._tables(result, tmp)
            final = self.out / name
            tmp.rename(final)
        except BaseException:
            if state["movie"] is not None:
                state["movie"].abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.results.append((name, result))
        return result

    def _diagnosis(self, result: ClipResult) -> dict[str, Any]:
        """The clip's diagnosis and out-of-distribution count, or nothing for a model with no diagnosis head."""
        return {"diagnosis": result.diagnosis, "ood_frames": result.ood_frames} if self.predictor.has_diagnosis else {}

    def _ood(self, frame: FrameResult) -> dict[str, Any]:
        """A frame's out-of-distribution flag, or nothing for a model with no diagnosis head (no detector)."""
        return {"ood": frame.ood} if self.predictor.has_diagnosis else {}

    def _tables(self, result: ClipResult, folder: Path) -> None:
        """``biomarkers.json`` and ``biomarkers.csv`` of one file."""
        area = result.scan_area
        map_mm = map_pixel_mm(result.pixel_mm, area, result.map_size) if area is not None else None
        doc = {
            "file": printable(result.path),
            "model": printable(self.predictor.path),
            "schema": self.schema.name,
            "model_schema": self.predictor.schema.name,
            "frame_size": list(area.mask.shape) if area is not None else None,  # (rows, cols) of the masks
            "scan_box": list(area.bbox) if area is not None else None,  # (top, bottom, left, right)
            "probe": result.probe,
            "map_size": result.map_size,
            "pixel_mm": list(result.pixel_mm) if result.pixel_mm else None,
            "map_pixel_mm": list(map_mm) if map_mm else None,
            "severity": result.severity,
            "severity_rule": result.severity_rule,
            "has_diagnosis": result.has_diagnosis,
            **self._diagnosis(result),
            "biomarkers": result.biomarkers,
            "frames": [
                {
                    "index": f.index,
                    "time_s": f.time_s,
                    **self._ood(f),
                    "mask": f"masks/frame_{f.index:06d}.png",
                    "biomarkers": f.biomarkers,
                }
                for f in result.frames
            ],
        }
        write_text(folder / "biomarkers.json", json.dumps(finite(doc), indent=2) + "\n")
        rows = [{"frame": f.index, "time_s": f.time_s, **self._ood(f), **f.biomarkers} for f in result.frames]
        write_text(folder / "biomarkers.csv", csv_text(rows))

    def export_labels(self, fmt: ExportFormat | str, final_out: str | Path | None = None) -> ExportReport:
        """Write the masks written so far as editable labels for an annotation tool (``labels/`` in ``out``: CVAT,
        COCO or Labelme polygons on the original frame coordinates, with the label map that imports them back).

        The masks are read back from the PNGs ``segment`` wrote, one frame at a time. ``final_out``: where ``out``
        will be once renamed (the import commands in ``labels/export.json`` name it).
        """
        items = []
        for name, result in self.results:
            masks = sorted((self.out / name / "masks").glob("frame_*.png"))
            info = media_info(result.path)
            items.append(
                ExportItem(
                    Path(result.path),
                    (info.width, info.height),
                    ((int(m.stem.removeprefix("frame_")), np.asarray(Image.open(m))) for m in masks),
                    video=info.kind != "image" and (info.n_frames or 2) > 1,
                    frame_count=info.n_frames,
                )
            )
        final = Path(final_out) / LABELS_FOLDER if final_out is not None else None
        return export_labels(fmt, self.out / LABELS_FOLDER, items, self.schema, final_dir=final)

    def close(self, failed: list[tuple[Path, str]] | None = None) -> None:
        """Write ``segment.json`` (every file, its folder and severity; the failures) and ``clips.csv``."""
        files = [
            {"file": printable(r.path), "folder": name, "frames": len(r.frames),
             **({"ood_frames": r.ood_frames} if self.predictor.has_diagnosis else {}),
             "severity": r.severity, "severity_rule": r.severity_rule}
            for name, r in self.results
        ]  # fmt: skip
        doc = {
            "model": printable(self.predictor.path),
            "has_diagnosis": self.predictor.has_diagnosis,
            "schema": self.schema.name,
            "classes": list(self.schema.names),
            "files": files,
            "failed": [{"file": printable(p), "error": printable(e)} for p, e in failed or []],
        }
        write_text(self.out / "segment.json", json.dumps(finite(doc), indent=2) + "\n")
        rows = [{**f, "probe": r.probe, **r.biomarkers} for f, (_, r) in zip(files, self.results, strict=True)]
        write_text(self.out / "clips.csv", csv_text(rows))
