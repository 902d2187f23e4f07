"""Model masks to editable labels for annotation tools (CVAT XML, COCO, Labelme), read back by ``import-annotations``.

Pre-labels for correction: ``pleura segment FILES --export-labels cvat|coco|labelme`` hands its masks (class
indices of one schema, at each frame's original resolution) to ``export_labels``, which writes them as polygons
on the original frame's pixel coordinates. An annotator corrects them in the tool, exports, and
``pleura data import-annotations`` reads the result with the label map written here.

Each connected region of a class becomes one polygon, traced along the pixel edges and simplified by
Douglas-Peucker (``polygons``); a region with holes becomes one keyhole polygon, so no fill rule fills its
holes. Every frame is checked before it is written: its polygons are drawn exactly as the importer draws them
(``importer.rasterise``: pixel centres inside, even-odd, the written label map's priority where polygons of
two classes overlap), and while a class's IoU with the mask is below ``min_iou`` the frame is simplified again
at ``RETRY`` times the tolerance, and below ``MIN_TOLERANCE`` not at all (the exact outline, IoU 1). So the
round trip export -> import gives
each frame's classes back at IoU >= ``min_iou`` at the original resolution, by construction, and
``ExportReport.worst_iou`` says what it was.

Layout of ``out_dir`` (one folder per video, one ``images/`` for all still images)::

    labels.json          label map for import-annotations --labels (class names as the tool's labels)
    cvat_labels.json     (cvat) the labels to paste into CVAT's "Raw" label editor when creating the task
    export.json          what was written, per folder the import command, the worst IoU
    <clip>/annotations.xml | annotations.json | frame_000012.json ...
    images/annotations.xml | annotations.json | <image stem>.json ...

Example:
    >>> from pleura.data.annotations.export import ExportItem, export_labels
    >>> item = ExportItem("clip.mp4", (1280, 720), [(12, mask12), (13, mask13)], frame_count=164)  # doctest: +SKIP
    >>> export_labels("cvat", "prelabels", [item], "sparse")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shlex
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pleura import __version__
from pleura.atomic import staged_folder, write_json, write_text
from pleura.data.annotations.importer import rasterise
from pleura.data.annotations.media import is_video_name
from pleura.data.annotations.model import AnnotationError, AnnotationFormat, LabelMap, Notes, Shape, safe_id
from pleura.data.annotations.polygons import group_boundaries, region_polygons
from pleura.labels import Schema, SchemaName, StrEnum, get_schema

logger = logging.getLogger(__name__)

STILLS = "images"  # the folder of the still images' labels
RETRY = 0.7  # a frame whose polygons miss min_iou is simplified again at this times the tolerance
MIN_TOLERANCE = 0.2  # below this the next try is the exact outline (tolerance 0)
LABELME_VERSION = "5.4.1"  # the Labelme file version written (the layout of 4.x and 5.x)


class ExportFormat(StrEnum):
    """The annotation formats ``export_labels`` writes; ``import_format`` is the importer's name for the same."""

    CVAT = "cvat"  # CVAT for video 1.1 XML (a clip), CVAT for images 1.1 XML (still images)
    COCO = "coco"  # COCO 1.0 instance JSON, one annotation per region, polygons
    LABELME = "labelme"  # one Labelme JSON per frame

    @property
    def import_format(self) -> AnnotationFormat:
        """The ``--format`` that ``pleura data import-annotations`` reads these files with."""
        return AnnotationFormat.CVAT_XML if self is ExportFormat.CVAT else AnnotationFormat(self.value)

    @classmethod
    def parse(cls, text: str | ExportFormat) -> ExportFormat:
        """The format ``text`` names; ``AnnotationError`` listing the valid names otherwise."""
        try:
            return cls(str(text).strip().lower())
        except ValueError:
            raise AnnotationError(f"unknown label format {str(text)!r}; choose one of: {', '.join(cls)}") from None


@dataclass
class FrameMask:
    """One frame's mask: class indices of the schema at the frame's original resolution, and optionally its image."""

    index: int  # media frame index (0 for a still image)
    mask: np.ndarray  # uint8 (height, width) class indices
    image: np.ndarray | None = None  # uint8 grey (height, width) or RGB: only for Labelme's imageData


@dataclass
class ExportItem:
    """One media file (a clip or a still image) and its frames' masks, streamed: ``masks`` is read once."""

    media: str | Path  # the clip or image the masks belong to (its name is written into the labels)
    size: tuple[int, int] | None  # (width, height) of its frames; None: the first mask's
    masks: Iterable[FrameMask | tuple[int, np.ndarray]]  # (frame index, mask) pairs, in any order
    video: bool | None = None  # None: decided by the file's extension
    frame_count: int | None = None  # frames in the clip, when known (CVAT's task size; else the last frame + 1)
    name: str | None = None  # the name the tool knows a still image by; default: its path from the images' root


@dataclass
class ExportReport:
    """What ``export_labels`` wrote: frames, shapes, the worst per-class IoU, the folders and how to import them."""

    out: Path
    format: ExportFormat
    frames: int = 0  # frames written (empty ones included)
    empty: int = 0  # frames whose mask is all background: written without shapes; they import as unlabelled
    shapes: int = 0  # polygons written
    vertices: int = 0  # their vertices, all together
    per_class: dict[str, int] = field(default_factory=dict)  # frames holding each class
    worst_iou: float | None = None  # lowest per-class IoU of a frame drawn back as the importer draws it
    folders: list[dict[str, Any]] = field(default_factory=list)  # per folder: files, media, the import command
    failed: list[tuple[str, str]] = field(default_factory=list)  # (media, one line): frames or items not written


def export_label_map(schema: Schema) -> LabelMap:
    """The label map of an export: every class but background under its own name, lines over regions.

    Priority (highest first): the line classes (``a_line``, ``b_line``, pleural line), later ones in the schema
    first, then the other classes in reverse schema order. So where an annotator draws a line over a region
    without cutting it out, the line wins; and a simplified region can never eat into a thin line.
    """
    classes = list(schema.names[1:])  # background is where no shape is
    lines = [c for c in reversed(classes) if "line" in c]
    rest = [c for c in reversed(classes) if "line" not in c]
    return LabelMap(schema, {c: c for c in classes}, tuple(lines + rest), {}, {}, {}, "labels.json")


def frame_polygons(
    mask: np.ndarray, lmap: LabelMap, tolerance: float, min_iou: float
) -> tuple[list[tuple[int, np.ndarray]], float]:
    """``(class index, polygon)`` pairs of one mask, and the worst per-class IoU of drawing them back.

    Simplified at ``tolerance`` px, then at ``RETRY`` times less each time, until every class present reaches
    ``min_iou`` when drawn as the importer draws them; below ``MIN_TOLERANCE`` the next try is tolerance 0,
    the exact outline (IoU 1). An all-background mask has no polygons and IoU 1.
    """
    classes = [int(c) for c in np.unique(mask) if c != 0]
    if not classes:
        return [], 1.0
    traced = [(c, group_boundaries(mask == c)) for c in classes]  # traced once, simplified at each try
    t = max(0.0, float(tolerance))
    while True:
        # vertices rounded to 0.01 px as the files hold them, so what is checked is what is written
        polys = [(c, np.round(ring, 2)) for c, regions in traced for ring in region_polygons(regions, t)]
        worst = min(class_ious(mask, draw_back(polys, mask.shape, lmap), classes).values())
        if worst >= min_iou or t == 0.0:
            return polys, worst
        t = t * RETRY if t * RETRY >= MIN_TOLERANCE else 0.0


def draw_back(polys: list[tuple[int, np.ndarray]], shape: tuple[int, int], lmap: LabelMap) -> np.ndarray:
    """The mask ``import-annotations`` draws from these polygons (``importer.rasterise``, the map's priority)."""
    names = lmap.schema.names
    shapes = [
        Shape("polygon", names[c], ring.astype(np.float64), "export", f"polygon {k}", order=k)
        for k, (c, ring) in enumerate(polys)
    ]
    drawn = rasterise(shapes, (int(shape[0]), int(shape[1])), lmap, 1.0, "export", Notes())
    return drawn if drawn is not None else np.zeros(shape, dtype=np.uint8)


def class_ious(truth: np.ndarray, drawn: np.ndarray, classes: Iterable[int]) -> dict[int, float]:
    """IoU of each class between two masks (1.0 for a class in neither)."""
    any_class = (truth != 0) | (drawn != 0)
    rows, cols = np.nonzero(any_class.any(axis=1))[0], np.nonzero(any_class.any(axis=0))[0]
    if len(rows):  # the work is where either mask holds a class (background is never scored)
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        truth, drawn = truth[box], drawn[box]
    out = {}
    for c in classes:
        a, b = truth == c, drawn == c
        union = int((a | b).sum())
        out[int(c)] = float((a & b).sum()) / union if union else 1.0
    return out


# ---------------------------------------------------------------------------------------------------- writers


def _pts(ring: np.ndarray) -> str:
    return ";".join(f"{x:.2f},{y:.2f}" for x, y in ring.tolist())


def _flat(ring: np.ndarray) -> list[float]:
    return [float(v) for v in ring.ravel()]


class _Folder:
    """The labels of one folder: a clip (its frames) or the still images; written when ``finish`` is called."""

    def __init__(self, fmt: ExportFormat, tmp: Path, final: Path, folder: str, lmap: LabelMap, video: bool,
                 embed: bool) -> None:  # fmt: skip
        self.fmt, self.lmap, self.video, self.embed = fmt, lmap, video, embed
        self.dir, self.final, self.folder = tmp / folder, final / folder, folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.frames: list[tuple[str, int, tuple[int, int], list[tuple[int, np.ndarray]]]] = []  # name, index, size
        self.files: list[str] = []
        self.used: set[str] = set()
        self.media: list[str] = []

    def add(self, name: str, index: int, size: tuple[int, int], polys: list[tuple[int, np.ndarray]],
            image: np.ndarray | None) -> None:  # fmt: skip
        """Add one frame (Labelme writes its file now; CVAT and COCO keep the polygons for ``finish``)."""
        if self.fmt is ExportFormat.LABELME:
            self._labelme(name, index, size, polys, image)
        else:
            self.frames.append((name, index, size, polys))

    def _labelme(self, name: str, index: int, size: tuple[int, int], polys: list[tuple[int, np.ndarray]],
                 image: np.ndarray | None) -> None:  # fmt: skip
        names = self.lmap.schema.names
        stem = f"frame_{index:06d}" if self.video else safe_id(Path(name).stem)
        stem = _unique(stem, self.used)
        image_path = f"{stem}.png" if self.video else name  # a video's frame: an image file beside this JSON
        data = None
        if self.embed and image is not None:
            buf = io.BytesIO()
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
            data = base64.b64encode(buf.getvalue()).decode("ascii")
        shapes = [
            {"label": names[c], "points": ring.astype(float).tolist(), "group_id": None, "description": "",
             "shape_type": "polygon", "flags": {}, "mask": None}
            for c, ring in polys
        ]  # fmt: skip
        doc = {
            "version": LABELME_VERSION,
            "flags": {},
            "shapes": shapes,
            "imagePath": image_path,
            "imageData": data,
            "imageHeight": int(size[1]),
            "imageWidth": int(size[0]),
        }
        write_text(self.dir / f"{stem}.json", json.dumps(doc) + "\n")
        self.files.append(f"{self.folder}/{stem}.json")

    def finish(self, task: str, frame_count: int | None) -> None:
        """Write the folder's CVAT XML or COCO JSON (Labelme's files are written already)."""
        if self.fmt is ExportFormat.CVAT:
            text = self._cvat(task, frame_count)
            write_text(self.dir / "annotations.xml", text)
            self.files.append(f"{self.folder}/annotations.xml")
        elif self.fmt is ExportFormat.COCO:
            write_json(self.dir / "annotations.json", self._coco())
            self.files.append(f"{self.folder}/annotations.json")

    def _cvat(self, task: str, frame_count: int | None) -> str:
        names, schema = self.lmap.schema.names, self.lmap.schema
        root = ET.Element("annotations")
        ET.SubElement(root, "version").text = "1.1"
        meta = ET.SubElement(ET.SubElement(root, "meta"), "task")
        last = max((f for _, f, _, _ in self.frames), default=0)
        size = max(frame_count or 0, last + 1) if self.video else len(self.frames)
        for tag, value in (("name", task), ("size", size), ("mode", "interpolation" if self.video else "annotation"),
                           ("overlap", 0), ("start_frame", 0), ("stop_frame", max(0, size - 1)),
                           ("frame_filter", "")):  # fmt: skip
            ET.SubElement(meta, tag).text = str(value)
        labels = ET.SubElement(meta, "labels")
        for i, cls in enumerate(schema.classes[1:], start=1):
            lab = ET.SubElement(labels, "label")
            ET.SubElement(lab, "name").text = names[i]
            ET.SubElement(lab, "color").text = "#{:02x}{:02x}{:02x}".format(*cls.color)
            ET.SubElement(lab, "type").text = "polygon"
            ET.SubElement(lab, "attributes")
        if self.video and self.frames:
            w, h = self.frames[0][2]
            orig = ET.SubElement(meta, "original_size")
            ET.SubElement(orig, "width").text = str(w)
            ET.SubElement(orig, "height").text = str(h)
        if self.video:
            ET.SubElement(meta, "source").text = self.media[0] if self.media else task
            stop = size - 1
            k = 0
            for _, f, _, polys in sorted(self.frames, key=lambda x: x[1]):
                for c, ring in polys:
                    # CVAT for video holds shapes as tracks: a keyframe, and "outside" on the next frame
                    track = ET.SubElement(root, "track", id=str(k), label=names[c], source="auto")
                    k += 1
                    for frame, outside in ((f, 0), (f + 1, 1)):
                        if frame > stop:
                            break
                        ET.SubElement(track, "polygon", frame=str(frame), keyframe="1", outside=str(outside),
                                      occluded="0", points=_pts(ring), z_order="0")  # fmt: skip
        else:
            for i, (name, _, (w, h), polys) in enumerate(self.frames):
                image = ET.SubElement(root, "image", id=str(i), name=name, width=str(w), height=str(h))
                for c, ring in polys:
                    ET.SubElement(image, "polygon", label=names[c], source="auto", occluded="0", points=_pts(ring),
                                  z_order="0")  # fmt: skip
        ET.indent(root)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

    def _coco(self) -> dict[str, Any]:
        names = self.lmap.schema.names
        images, anns = [], []
        for i, (name, f, (w, h), polys) in enumerate(self.frames, start=1):
            file_name = f"frame_{f:06d}.png" if self.video else name  # CVAT's name for a video frame
            images.append({"id": i, "file_name": file_name, "width": int(w), "height": int(h), "license": 0,
                           "flickr_url": "", "coco_url": "", "date_captured": 0})  # fmt: skip
            for c, ring in polys:
                x0, y0 = ring.min(axis=0).tolist()
                x1, y1 = ring.max(axis=0).tolist()
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c),
                             "segmentation": [_flat(ring)], "area": abs(_area(ring)),
                             "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "iscrowd": 0,
                             "attributes": {"occluded": False}})  # fmt: skip
        info = {"contributor": "", "date_created": "", "description": f"pleura {__version__} pre-labels", "url": "",
                "version": "", "year": ""}  # fmt: skip
        return {
            "licenses": [{"name": "", "id": 0, "url": ""}],
            "info": info,
            "categories": [{"id": i, "name": names[i], "supercategory": ""} for i in range(1, len(names))],
            "images": images,
            "annotations": anns,
        }


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3`` ... when taken; the result is added to ``used``."""
    out, k = name, 1
    while out.lower() in used:
        k += 1
        out = f"{name}_{k}"
    used.add(out.lower())
    return out


def _frame_mask(entry: FrameMask | tuple[int, np.ndarray]) -> FrameMask:
    if isinstance(entry, FrameMask):
        return entry
    index, mask = entry
    return FrameMask(index, mask)


def _check_mask(fm: FrameMask, size: tuple[int, int], schema: Schema) -> str | None:
    """Why a frame's mask cannot be written (None when it can)."""
    w, h = size
    if not isinstance(fm.index, int | np.integer) or int(fm.index) < 0:
        return f"frame {fm.index!r} is not a frame index (0, 1, ...)"
    m = np.asarray(fm.mask)
    if m.shape != (h, w):
        return f"frame {fm.index}: mask of shape {m.shape}, expected the frame's (height, width) = ({h}, {w})"
    if m.size and (not np.issubdtype(m.dtype, np.integer) or int(m.min()) < 0 or int(m.max()) >= schema.num_classes):
        return (
            f"frame {fm.index}: mask values {int(m.min())}..{int(m.max())} are not class indices of schema "
            f"{schema.name!r} (0..{schema.num_classes - 1})"
        )
    return None


def _command(src: Path, fmt: ExportFormat, labels: Path, media: Path | None) -> str:
    args = ["pleura", "data", "import-annotations", str(src), "--format", str(fmt.import_format), "--labels",
            str(labels)]  # fmt: skip
    if media is not None:
        args += ["--media", str(media)]
    return shlex.join([*args, "--out", "DATASET"])


def export_labels(
    fmt: ExportFormat | str,
    out_dir: str | Path,
    items: Iterable[ExportItem],
    schema: Schema | SchemaName | str,
    *,
    tolerance: float = 1.0,
    min_iou: float = 0.97,
    embed_images: bool = False,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    final_dir: str | Path | None = None,
) -> ExportReport:
    """Write masks as editable polygons for an annotation tool, with the label map that imports them back.

    Args:
        fmt: ``cvat`` (CVAT for video 1.1 XML per clip, CVAT for images 1.1 XML for still images), ``coco``
            (COCO 1.0 instance JSON) or ``labelme`` (one JSON per frame).
        out_dir: the folder to write; it appears only when complete (``atomic.staged_folder``).
        items: one ``ExportItem`` per clip or image; each item's masks are read once, one frame at a time.
        schema: the schema of the masks' class indices.
        tolerance: the largest distance (pixels) a polygon may cut from the traced pixel outline; for a
            frame, lowered (``RETRY`` times at each try, then 0) until every class reaches ``min_iou``.
        min_iou: per class and frame, the IoU of the polygons drawn back (as the importer draws them) with the
            mask.
        embed_images: Labelme only: store each frame's image (``FrameMask.image``) as ``imageData``.
        overwrite: replace a non-empty ``out_dir``.
        progress: called with 1 after each frame.
        final_dir: where ``out_dir`` will be once the caller moves it (``out_dir`` inside a staged folder): the
            import commands written name it. Default: ``out_dir``.

    Returns:
        The report; frames and items that could not be written are listed in ``failed`` (one line each,
        naming the media and the frame) and the rest is written.

    Raises:
        AnnotationError: a bad option, an ``out_dir`` that is not empty (without ``overwrite``), or nothing
            that could be written.
    """
    fmt = ExportFormat.parse(fmt)
    try:
        sch = get_schema(schema)
    except KeyError as e:
        raise AnnotationError(str(e.args[0])) from None
    if not 0.0 <= tolerance <= 50.0:
        raise AnnotationError(f"tolerance must be between 0 and 50 pixels, got {tolerance}")
    if not 0.0 < min_iou <= 1.0:
        raise AnnotationError(f"min_iou must be in (0, 1], got {min_iou}")
    out = Path(out_dir)
    final = Path(final_dir).absolute() if final_dir is not None else out.absolute()
    lmap = export_label_map(sch)
    report = ExportReport(out=out, format=fmt)
    per_class: Counter[str] = Counter()
    used_folders: set[str] = {STILLS}
    with staged_folder(out, overwrite, error=AnnotationError) as tmp:
        still_items: list[tuple[ExportItem, Path]] = []
        for item in items:
            media = Path(item.media)
            video = item.video if item.video is not None else is_video_name(media)
            if video:
                folder = _Folder(fmt, tmp, final, _unique(safe_id(media.stem), used_folders), lmap, True, embed_images)
                folder.media.append(media.name)
                n = _export_item(item, media, media.name, folder, lmap, tolerance, min_iou, report, per_class,
                                 progress)  # fmt: skip
                if n:
                    folder.finish(media.stem, item.frame_count)
                    report.folders.append(_folder_entry(folder, fmt, final, media, n))
                else:
                    _remove(folder.dir)
            else:
                still_items.append((item, media))
        if still_items:
            root = _common_root([m for _, m in still_items])
            stills = _Folder(fmt, tmp, final, STILLS, lmap, False, embed_images)
            names: set[str] = set()
            total = 0
            for item, media in still_items:
                name = item.name or _rel_name(media, root)
                if name.lower() in names:
                    report.failed.append((str(media), f"{media}: another image is named {name!r} already; skipped "
                                                      "(give it ExportItem.name)"))  # fmt: skip
                    continue
                names.add(name.lower())
                image_name = os.path.relpath(media.absolute(), stills.final) if fmt is ExportFormat.LABELME else name
                total += _export_item(item, media, image_name, stills, lmap, tolerance, min_iou, report, per_class,
                                      progress)  # fmt: skip
            if total:
                stills.finish(STILLS, None)
                report.folders.append(_folder_entry(stills, fmt, final, root, total))
            else:
                _remove(stills.dir)
        if not report.frames:
            first = f": {report.failed[0][1]}" if report.failed else ""
            raise AnnotationError(f"{out}: no frame could be exported ({len(report.failed)} problem(s){first})")
        report.per_class = dict(sorted(per_class.items()))
        write_json(tmp / "labels.json", lmap.to_json())
        if fmt is ExportFormat.CVAT:
            raw = [{"name": c.name, "color": "#{:02x}{:02x}{:02x}".format(*c.color), "type": "polygon",
                    "attributes": []} for c in sch.classes[1:]]  # fmt: skip
            write_json(tmp / "cvat_labels.json", raw)
        write_json(
            tmp / "export.json",
            {
                "pleura_version": __version__,
                "format": str(fmt),
                "import_format": str(fmt.import_format),
                "schema": sch.name,
                "tolerance": tolerance,
                "min_iou": min_iou,
                "frames": report.frames,
                "empty_frames": report.empty,
                "shapes": report.shapes,
                "vertices": report.vertices,
                "frames_per_class": report.per_class,
                "worst_iou": report.worst_iou,
                "folders": report.folders,
                "failed": [{"media": m, "error": e} for m, e in report.failed],
            },
        )
    return report


def _export_item(
    item: ExportItem,
    media: Path,
    name: str,
    folder: _Folder,
    lmap: LabelMap,
    tolerance: float,
    min_iou: float,
    report: ExportReport,
    per_class: Counter[str],
    progress: Callable[[int], None] | None,
) -> int:
    """Trace and add one item's frames to its folder; the number of frames added."""
    src = str(media)
    seen: set[int] = set()
    added = 0
    size = (int(item.size[0]), int(item.size[1])) if item.size is not None else None
    try:
        for entry in item.masks:
            fm = _frame_mask(entry)
            if size is None and np.ndim(fm.mask) == 2:
                size = (int(np.shape(fm.mask)[1]), int(np.shape(fm.mask)[0]))  # the first mask's: all alike
            why = _check_mask(fm, size or (0, 0), lmap.schema)
            if why is None and int(fm.index) in seen:
                why = f"frame {fm.index} comes twice; the first is kept"
            if why is None and not folder.video and int(fm.index) != 0:
                why = f"frame {fm.index} of a still image (its only frame is 0); pass video=True for a clip"
            if why is not None:
                report.failed.append((src, f"{src}: {why}; skipped"))
                logger.info("skipped: %s: %s", src, why)
                continue
            index = int(fm.index)
            seen.add(index)
            mask = np.asarray(fm.mask).astype(np.uint8, copy=False)
            polys, worst = frame_polygons(mask, lmap, tolerance, min_iou)
            folder.add(name, index, size or (0, 0), polys, fm.image)
            added += 1
            report.frames += 1
            report.shapes += len(polys)
            report.vertices += sum(len(p) for _, p in polys)
            report.empty += not polys
            for c in sorted({c for c, _ in polys}):
                per_class[lmap.schema.names[c]] += 1
            report.worst_iou = worst if report.worst_iou is None else min(report.worst_iou, worst)
            if progress is not None:
                progress(1)
    except (ValueError, OSError) as e:
        report.failed.append((src, f"{src}: reading its masks failed after {added} frame(s) ({e}); the frames "
                                   "before are exported"))  # fmt: skip
    return added


def _folder_entry(folder: _Folder, fmt: ExportFormat, final: Path, media: Path, frames: int) -> dict[str, Any]:
    """The ``export.json`` entry of a folder, with the command that imports it back."""
    src = final / folder.folder
    if fmt is not ExportFormat.LABELME:
        src = src / ("annotations.xml" if fmt is ExportFormat.CVAT else "annotations.json")
    media_arg = media.absolute()
    if fmt is ExportFormat.LABELME and not folder.video:
        media_arg = None  # Labelme's imagePath already leads to each image
    return {
        "folder": folder.folder,
        "kind": "video" if folder.video else "images",
        "media": str(media.absolute()),
        "frames": frames,
        "files": len(folder.files),
        "import": _command(src, fmt, final / "labels.json", media_arg),
    }


def _common_root(paths: list[Path]) -> Path:
    """The deepest folder holding all the images."""
    parents = [str(p.absolute().parent) for p in paths]
    return Path(os.path.commonpath(parents)) if parents else Path(".")


def _rel_name(media: Path, root: Path) -> str:
    """An image's name as the tool should know it: its path below ``root``, with ``/``."""
    try:
        return media.absolute().relative_to(root).as_posix()
    except ValueError:
        return media.name


def _remove(folder: Path) -> None:
    """Remove an empty folder made for an item with no frame written."""
    for p in sorted(folder.rglob("*"), reverse=True):
        if p.is_dir():
            p.rmdir()
        else:
            p.unlink()
    folder.rmdir()
