"""Build a manifest dataset from annotation-tool labels: cleaned frames, indexed masks, ``manifest.csv``.

Only labelled frames become rows: a frame with at least one shape of a mapped label, a mask PNG, or a tag
mapped to ``{"labelled": true}``; an unlabelled frame is unknown, not empty. Each clip is streamed once, in
order: its scan area is found on its first ``AREA_FRAMES`` frames as ``predict`` does, every labelled frame is
cleaned (``remove_overlays``, ``fit_to_size``) and its shapes are drawn at the frame's own resolution, then
given exactly the frame's crop and resize (nearest), so a mask never drifts from its frame. Where shapes of
different classes overlap, the class ranked higher wins (the map's ``priority``, else the later class of the
schema; background lowest); within a class, later drawn shapes are drawn last.

Problems are reported one line each, naming the file and the shape or frame, and the rest is imported; they
are listed in the report and in ``import.json``. The output folder appears only when complete.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pleura import __version__
from pleura.atomic import check_output, staged_folder, write_json
from pleura.data.annotations.coco import read_coco
from pleura.data.annotations.cvat import read_cvat_backup, read_cvat_xml
from pleura.data.annotations.labelme import read_labelme
from pleura.data.annotations.maskpng import read_mask_folder, read_png_labels
from pleura.data.annotations.media import is_video_name
from pleura.data.annotations.model import (
    FORMATS,
    AnnotationError,
    AnnotationFormat,
    Item,
    LabelMap,
    LabelmapRef,
    Notes,
    Shape,
    count_names,
    load_label_map,
    parse_probe,
    safe_id,
)
from pleura.data.annotations.raster import (
    fit_area_mask,
    fit_geometry,
    fit_mask_to_size,
    outside_frame,
    scan_lines,
    shape_pixels,
)
from pleura.data.cleaning import ScanArea, find_scan_area, fit_to_size, remove_overlays
from pleura.data.readers import Frame, ReadError, iter_frames, media_info, to_gray_uint8
from pleura.labels import DENSE, DIAGNOSES, densify
from pleura.parallel import parallel_map

logger = logging.getLogger(__name__)

AREA_FRAMES = 32  # frames a clip's scan area is found on: the first ones, as pleura.infer.predictor does
UNKNOWN = "unknown"  # diagnosis of a frame nobody gave one (the manifest needs a value; LUSDataset reads it as -1)
META_FIELDS = ("diagnosis", "patient_id", "probe")
META_COLUMNS = (*META_FIELDS, "clip_id")  # clip_id: the clip a still image was taken from
#: a still image's clip from its id (its path without extension): ``clip7_000012``, ``scan-3_frame_12`` -> the
#: part before the frame number; an id without a separated trailing number is its own clip
CLIP_PATTERN = r"(?P<clip>.+?)[_\-. ]+(?:frame|frm|f)?[_\-. ]*\d+"
MAX_NAME_LINES = 10  # unmapped names warned one line each; the rest in one line (all in import.json)
MANIFEST_COLUMNS = [
    "id", "image", "diagnosis", "clip_id", "patient_id", "probe", "probe_detected", "file", "frame", "time_s",
    "shapes", "classes", "annotations", "source",
]  # fmt: skip
_THICKNESS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(px|mm)\s*$", re.IGNORECASE)


@dataclass
class AnnotationImportConfig:
    """How annotations become a manifest dataset."""

    format: AnnotationFormat = "cvat"  # the tool's export: cvat (task backup), cvat-xml, coco, labelme, masks
    schema: str | None = None  # target schema; None: the label map's (default sparse)
    densify: bool = False  # also write dense masks, from the sparse ones and each frame's diagnosis
    strict: bool = False  # refuse label or tag names the map does not list (default: warn and ignore them)
    size: int = 256  # side of the square cleaned frames and masks, pixels
    thickness: str = "3px"  # polylines' width and points' diameter: "3px" (frame pixels) or "1.0mm" (DICOM only)
    workers: int = 0  # processes (one clip each); 0 means all cores
    clip_pattern: str = "auto"  # still images' clip from their ids: "auto" (CLIP_PATTERN), "none", or a regex

    def validate(self) -> None:
        """Check the options before any file is read; raises ``AnnotationError`` naming the bad option."""
        if self.format not in FORMATS:
            raise AnnotationError(f"--format {self.format!r} is not one of {', '.join(FORMATS)}")
        if not 32 <= self.size <= 2048:
            raise AnnotationError(f"--size must be between 32 and 2048 pixels, got {self.size}")
        parse_thickness(self.thickness)
        if self.workers < 0:
            raise AnnotationError(f"--workers must be 0 (all cores) or more, got {self.workers}")
        clip_regex(self.clip_pattern)


def clip_regex(pattern: str) -> re.Pattern[str] | None:
    """The compiled ``--clip-pattern`` ("auto": ``CLIP_PATTERN``; "none": None); AnnotationError when it is not a
    regular expression with a group (named ``clip``, or the first) that gives the clip."""
    if pattern.strip().lower() == "none":
        return None
    text = CLIP_PATTERN if pattern.strip().lower() == "auto" else pattern
    try:
        regex = re.compile(text)
    except re.error as e:
        raise AnnotationError(f"--clip-pattern {pattern!r} is not a regular expression ({e})") from None
    if regex.groups < 1:
        raise AnnotationError(
            f"--clip-pattern {pattern!r} has no group; mark the clip's part of an image id with (?P<clip>...), "
            r"e.g. (?P<clip>.+)_\d+ (or pass auto or none)"
        )
    return regex


def still_clip(item: Item, regex: re.Pattern[str] | None) -> str | None:
    """The clip a still image was taken from, by its id (``clip7_000012`` -> ``clip7``); None for a video, for an
    id the pattern does not match, and without a pattern."""
    if regex is None or (item.media is not None and is_video_name(item.media)):
        return None
    m = regex.fullmatch(item.clip_id)
    if m is None:
        return None
    part = m.group("clip") if "clip" in regex.groupindex else m.group(1)
    return safe_id(part) if part else None


@dataclass
class ImportReport:
    """What an import did: rows written, classes seen, and what it skipped or warned about."""

    out: Path
    frames: int = 0  # rows written (labelled frames)
    clips: int = 0  # media files with at least one row
    per_class: dict[str, int] = field(default_factory=dict)  # frames whose mask holds each class
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, one line): labels that were skipped
    warnings: list[str] = field(default_factory=list)  # lines about what was imported with a change
    unmapped: dict[str, int] = field(default_factory=dict)  # tool label or tag -> shapes or tags ignored


def parse_thickness(text: str) -> tuple[float, str]:
    """``"3px"`` -> (3.0, "px"), ``"1.0mm"`` -> (1.0, "mm"); AnnotationError for anything else."""
    m = _THICKNESS.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise AnnotationError(f"--thickness {text!r}: expected a positive width with a unit, e.g. 3px or 1.0mm")
    return float(m.group(1)), m.group(2).lower()


def read_meta(path: str | Path) -> dict[str, dict[str, str]]:
    """The ``--meta`` CSV: ``clip`` (a clip id, media file name or task name) -> diagnosis, patient_id, probe,
    and clip_id (the clip a still image belongs to: images of one clip_id stay together in splits)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            if "clip" not in columns or not set(columns) & set(META_COLUMNS):
                raise AnnotationError(
                    f"{path}: columns {', '.join(columns) or '(none)'}; expected clip and some of "
                    f"{', '.join(META_COLUMNS)}"
                )
            reader.fieldnames = columns
            rows = [{k: (v or "").strip() for k, v in r.items() if k} for r in reader]
    except FileNotFoundError:
        raise AnnotationError(f"{path}: --meta file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise AnnotationError(f"{path}: cannot read the --meta CSV ({e})") from None
    out: dict[str, dict[str, str]] = {}
    for line, r in enumerate(rows, start=2):
        if not r.get("clip"):
            raise AnnotationError(f"{path}: line {line} has an empty clip")
        if r["clip"] in out:
            raise AnnotationError(f"{path}: clip {r['clip']!r} appears twice (line {line})")
        fields = {k: r[k] for k in META_COLUMNS if r.get(k)}
        if "probe" in fields:
            probe = parse_probe(fields["probe"])
            if probe is None:
                raise AnnotationError(
                    f"{path}: line {line}: probe {fields['probe']!r}; expected linear, curvilinear or convex"
                )
            fields["probe"] = str(probe)
        if "clip_id" in fields:
            fields["clip_id"] = safe_id(fields["clip_id"])
        out[r["clip"]] = fields
    return out


def read_items(fmt: str, src: Path, media: Path | None, lmap: LabelMap, notes: Notes) -> list[Item]:
    """The items of ``src`` read by the reader of ``fmt``."""
    if fmt == "cvat":
        return read_cvat_backup(src, media, notes)
    if fmt == "cvat-xml":
        return read_cvat_xml(src, media, notes)
    if fmt == "coco":
        return read_coco(src, media, notes)
    if fmt == "labelme":
        return read_labelme(src, media, notes)
    if fmt == "masks":
        return read_mask_folder(src, media, lmap, notes)
    raise AnnotationError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")


def _unique_ids(items: list[Item]) -> list[Item]:
    """Merge items of the same media file and make clip ids unique (``clip``, ``clip_2``, ...)."""
    merged: dict[Any, Item] = {}
    for it in items:
        key = it.media.resolve() if it.media is not None else ("missing", it.source, it.clip_id, it.missing)
        if key in merged:
            dst = merged[key]
            for f, ss in it.shapes.items():
                dst.shapes.setdefault(f, []).extend(ss)
            for f, ts in it.tags.items():
                dst.tags.setdefault(f, []).extend(ts)
            dst.labelled |= it.labelled
        else:
            merged[key] = it
    seen: Counter[str] = Counter()
    for it in merged.values():
        seen[it.clip_id] += 1
        if seen[it.clip_id] > 1:
            it.clip_id = f"{it.clip_id}_{seen[it.clip_id]}"
    return list(merged.values())


def _fields_of_tags(tags: list[str], lmap: LabelMap) -> tuple[dict[str, Any], list[str]]:
    """Fields the tags set, and the fields they set to conflicting values."""
    values: dict[str, set[Any]] = {}
    for t in tags:
        for k, v in (lmap.tag_fields(t) or {}).items():
            values.setdefault(k, set()).add(v)
    fields = {k: next(iter(v)) for k, v in values.items() if len(v) == 1}
    return fields, sorted(k for k, v in values.items() if len(v) > 1)


@dataclass
class _Plan:
    """One clip's work: the frames to write, their shapes and row fields."""

    item: Item
    frames: dict[int, tuple[list[Shape], dict[str, str]]]  # media frame -> (mapped shapes, row fields)


def plan_items(
    items: list[Item],
    lmap: LabelMap,
    meta: dict[str, dict[str, str]],
    notes: Notes,
    clips: re.Pattern[str] | None = None,
) -> list[_Plan]:
    """Which frames of which clips become rows, with their mapped shapes and clip, diagnosis, patient and probe.

    A row's ``clip_id`` (what splits keep together) is the media file's id, except for a still image: the
    ``--meta`` CSV's ``clip_id``, else the part of its id that ``clips`` (``--clip-pattern``) marks, so frames
    of one clip saved as images (``clip7_000012.png``) are one clip. ``patient_id`` defaults to the clip.
    """
    plans = []
    only_unmapped = 0
    used_meta: set[str] = set()
    grouped: Counter[str] = Counter()  # stills grouped into a clip by the pattern: clip -> images
    for item in items:
        keys = [item.clip_id, *item.names] + ([item.media.name, item.media.stem] if item.media else [])
        meta_key = next((k for k in keys if k in meta), None)
        clip_meta = meta.get(meta_key, {}) if meta_key else {}
        if meta_key:
            used_meta.add(meta_key)
        clip = clip_meta.get("clip_id") or still_clip(item, clips)
        clip_tags, clip_conflicts = _fields_of_tags([t for ts in item.tags.values() for t in ts], lmap)
        frames: dict[int, tuple[list[Shape], dict[str, str]]] = {}
        for f in sorted(set(item.shapes) | item.labelled | set(item.tags)):
            shapes = [s for s in item.shapes.get(f, []) if lmap.mapped(s.label)]
            tag_fields, conflicts = _fields_of_tags(item.tags.get(f, []), lmap)
            for k in conflicts:
                notes.warn(f"{item.source}: frame {f}: tags {item.tags[f]} conflict on {k}; {k} taken from the clip")
            labelled = bool(shapes) or f in item.labelled or bool(tag_fields.get("labelled"))
            if not labelled:
                only_unmapped += bool(item.shapes.get(f))
                continue
            fields = {"diagnosis": UNKNOWN, "patient_id": clip or item.clip_id, "probe": "",
                      "clip_id": clip or item.clip_id}  # fmt: skip
            for k in META_FIELDS:  # frame tag > --meta CSV > the clip's tags (when they agree) > default
                if k in tag_fields:
                    fields[k] = str(tag_fields[k])
                elif k in clip_meta:
                    fields[k] = clip_meta[k]
                elif k in clip_tags and k not in clip_conflicts:
                    fields[k] = str(clip_tags[k])
            frames[f] = (shapes, fields)
        if frames:
            plans.append(_Plan(item, frames))
            if clip and "clip_id" not in clip_meta:
                grouped[clip] += 1
    if grouped:
        shown = ", ".join(f"{c} ({n})" for c, n in sorted(grouped.items())[:MAX_NAME_LINES])
        more = f" and {len(grouped) - MAX_NAME_LINES} more" if len(grouped) > MAX_NAME_LINES else ""
        notes.warn(
            f"{sum(grouped.values())} still image(s) grouped into {len(grouped)} clip(s) by their names "
            f"(--clip-pattern): {shown}{more}; splits keep each clip together (--clip-pattern none: one clip each)"
        )
    if only_unmapped:
        notes.warn(f"{only_unmapped} frame(s) hold only unmapped or ignored labels: not imported (unlabelled here)")
    for k in sorted(set(meta) - used_meta):
        ids = ", ".join(p.item.clip_id for p in plans)
        notes.warn(f"--meta: clip {k!r} matches no imported clip (clip ids: {ids})")
    return plans


def _check_names(items: list[Item], lmap: LabelMap, strict: bool, notes: Notes) -> dict[str, int]:
    """Warn once per label or tag name the map lacks (with counts); with ``strict`` refuse them all."""
    shapes, tags, frames = count_names(items)
    found: list[tuple[str, int, str]] = []  # (key in import.json, count, line)
    for name, n in sorted(shapes.items()):
        if name not in lmap.labels:
            line = (
                f'label "{name}" is not in {lmap.source}: {n} shape(s) on {len(frames[name])} frame(s) ignored; '
                'map it under "labels" (or to null to ignore it quietly)'
            )
            found.append((name, n, line))
    for name, n in sorted(tags.items()):
        if not lmap.tag_known(name):
            line = (
                f'tag "{name}" is not in {lmap.source}: {n} tag(s) ignored; map it under "tags", '
                f'e.g. {{"{name}": {{"diagnosis": "normal"}}}} (or to null)'
            )
            found.append((f"tag:{name}", n, line))
    shown, rest = found[:MAX_NAME_LINES], found[MAX_NAME_LINES:]
    more = (
        f"{len(rest)} more names are not in {lmap.source} ({sum(n for _, n, _ in rest)} shape(s) or tag(s)): "
        "all are listed under unmapped in import.json"
    )  # e.g. the anti-aliased edge colours of RGB masks
    if strict and found:
        lines = "; ".join(line for _, _, line in shown) + (f"; {more}" if rest else "")
        raise AnnotationError(f"--strict: {len(found)} name(s) not in the label map: {lines}")
    for _, _, line in shown:
        notes.warn(line)
    if rest:
        notes.warn(more)
    return {key: n for key, n, _ in found}


def import_annotations(
    src: str | Path,
    out: str | Path,
    labels: str | Path,
    cfg: AnnotationImportConfig | None = None,
    media: str | Path | None = None,
    meta: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import the annotations at ``src`` into the manifest dataset ``out``.

    Args:
        src: the export (folder or file; a ``.zip`` is unpacked to a temporary folder first).
        out: output dataset folder; replaced only when the new one is complete.
        labels: the label map (JSON, or YAML with PyYAML), see ``model.load_label_map``.
        cfg: format, schema, size, thickness, densify, strict.
        media: the video (file) or the folder of media, when they are not where the export says.
        meta: a CSV with ``clip`` and some of ``diagnosis,patient_id,probe,clip_id`` columns.
        overwrite: replace a non-empty ``out``.
        progress: ``progress(advance, total)``: (0, clips) once every check has passed and the work starts,
            then (1, clips) after each clip or image.

    Raises:
        AnnotationError: nothing can be imported (malformed or empty export, no labelled frame), a bad
            label map, option or ``--meta`` file, names the map lacks with ``strict``, or ``densify``
            without a diagnosis.
    """
    cfg = cfg or AnnotationImportConfig()
    cfg.validate()
    src, out = Path(src), Path(out)
    check_output(out, overwrite, AnnotationError)
    lmap = load_label_map(labels, cfg.schema)
    if cfg.densify and lmap.schema.name != "sparse":
        raise AnnotationError(f"--densify makes dense masks from sparse ones; the label map is {lmap.schema.name!r}")
    meta_rows = read_meta(meta) if meta is not None else {}
    if not src.exists():
        raise AnnotationError(f"{src}: no such file or folder")
    media_path = Path(media) if media is not None else None
    if media_path is not None and not media_path.exists():
        raise AnnotationError(f"{media_path}: --media: no such file or folder")
    with _unpacked(src) as root:
        notes = Notes()
        items = _unique_ids(read_items(cfg.format, root, media_path, lmap, notes))
        unmapped = _check_names(items, lmap, cfg.strict, notes)
        plans = plan_items(items, lmap, meta_rows, notes, clip_regex(cfg.clip_pattern))
        if not plans:
            n_shapes = sum(len(s) for it in items for s in it.shapes.values())
            n_tags = sum(len(t) for it in items for t in it.tags.values())
            what = "is empty: no shapes, tracks or tags" if not n_shapes and not n_tags else (
                f"has no labelled frame with a mapped label ({n_shapes} shape(s), {n_tags} tag(s); "
                f"labels mapped: {', '.join(k for k, v in lmap.labels.items() if v) or 'none'})"
            )  # fmt: skip
            fails = f"; {len(notes.failed)} problem(s): {notes.failed[0][1]}" if notes.failed else ""
            raise AnnotationError(f"{src}: the export {what}{fails}")
        if cfg.densify:
            _check_diagnoses(plans)
        report = ImportReport(out=out, unmapped=unmapped)
        schemas = [lmap.schema.name] + (["dense"] if cfg.densify else [])
        rows: list[dict[str, Any]] = []
        with staged_folder(out, overwrite, ["images", *(f"masks/{s}" for s in schemas)], error=AnnotationError) as tmp:
            tasks = [(p, lmap, cfg, tmp, root) for p in plans]
            workers = cfg.workers or os.cpu_count() or 1
            if progress is not None:
                progress(0, len(tasks))
            geometry: dict[str, Any] = {}
            for (plan, *_), (clip_rows, clip_notes, geo) in zip(
                tasks, parallel_map(_import_clip, tasks, workers), strict=True
            ):
                rows += clip_rows
                notes.extend(clip_notes)
                if clip_rows and geo is not None:
                    geometry[plan.item.clip_id] = geo
                if progress is not None:
                    progress(1, len(tasks))
            if not rows:
                first = f": {notes.failed[0][1]}" if notes.failed else ""
                raise AnnotationError(f"{src}: no frame could be imported ({len(notes.failed)} problem(s){first})")
            columns = MANIFEST_COLUMNS[:6] + [f"mask_{s}" for s in schemas] + MANIFEST_COLUMNS[6:]
            with open(tmp / "manifest.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
            per_class: Counter[str] = Counter(c for r in rows for c in r["classes"].split(";") if c)
            report.frames, report.clips = len(rows), len({r["clip_id"] for r in rows})
            report.per_class = dict(sorted(per_class.items()))
            report.failed, report.warnings = notes.failed, notes.warnings
            write_json(
                tmp / "import.json",
                {
                    "pleura_version": __version__,
                    "source": "annotations",
                    "format": cfg.format,
                    "source_path": str(src.resolve()),
                    "media": str(media_path.resolve()) if media_path else None,
                    "meta": str(Path(meta).resolve()) if meta else None,
                    "config": asdict(cfg),
                    "label_map": lmap.to_json(),
                    "schema_classes": list(lmap.schema.names),
                    "frames": report.frames,
                    "clips": report.clips,
                    "frames_per_class": report.per_class,
                    "diagnoses": dict(Counter(r["diagnosis"] for r in rows)),
                    "unmapped": unmapped,
                    "failed": [{"file": f, "error": e} for f, e in notes.failed],
                    "warnings": notes.warnings,
                    "geometry": geometry,
                },
            )
    return report


def _check_diagnoses(plans: list[_Plan]) -> None:
    """``--densify`` needs every frame's diagnosis (healthy or not decides the dense classes)."""
    lacking = sorted({p.item.clip_id for p in plans for _, f in p.frames.values() if f["diagnosis"] not in DIAGNOSES})
    if lacking:
        shown = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
        raise AnnotationError(
            f"--densify needs each frame's diagnosis ({', '.join(DIAGNOSES)}); clip(s) {shown} have none: give it "
            'in --meta CSV (clip,diagnosis) or as frame tags mapped in the label map ("tags": {"d_normal": '
            '{"diagnosis": "normal"}})'
        )


class _unpacked:  # noqa: N801 - a context manager used like a function
    """``src`` itself, or a zip unpacked into a temporary folder (removed afterwards)."""

    def __init__(self, src: Path) -> None:
        self.src, self.tmp = src, None

    def __enter__(self) -> Path:
        if not (self.src.is_file() and zipfile.is_zipfile(self.src)):
            return self.src
        self.tmp = tempfile.TemporaryDirectory(prefix="pleura-annotations-")
        try:
            with zipfile.ZipFile(self.src) as z:
                z.extractall(self.tmp.name)  # zipfile drops absolute paths and ".." from member names
        except (zipfile.BadZipFile, OSError) as e:
            self.tmp.cleanup()
            raise AnnotationError(f"{self.src}: cannot unpack the zip ({e})") from None
        root = Path(self.tmp.name)
        inner = [p for p in root.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        return inner[0] if len(inner) == 1 and inner[0].is_dir() else root

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


# ---------------------------------------------------------------------------------------------------- one clip


def _frames(item: Item) -> Iterator[Frame]:
    """The item's frames, decoded one at a time (an embedded Labelme image is one frame)."""
    if item.media is not None:
        yield from iter_frames(item.media)
        return
    assert item.embedded is not None
    try:
        with Image.open(io.BytesIO(item.embedded)) as im:
            yield Frame(0, 0.0, to_gray_uint8(im))
    except (OSError, ValueError) as e:
        raise ReadError(f"{item.source}: imageData cannot be decoded ({e})") from None


def _thickness_px(item: Item, shapes: list[Shape], cfg: AnnotationImportConfig) -> float:
    """Polyline width in frame pixels; mm needs the pixel spacing, which only DICOM states."""
    value, unit = parse_thickness(cfg.thickness)
    if unit == "px" or not any(s.kind in ("polyline", "points") for s in shapes):
        return value
    spacing = media_info(item.media).pixel_spacing_mm if item.media is not None else None
    if not spacing:
        n = sum(s.kind in ("polyline", "points") for s in shapes)
        raise ValueError(
            f"--thickness {cfg.thickness} needs the pixel spacing, which only DICOM files state, and "
            f"{item.media or item.source} has none; its {n} polyline/point shape(s) need --thickness in px (e.g. 3px)"
        )
    return value / float(np.mean(spacing))


def rasterise(
    shapes: list[Shape], frame_shape: tuple[int, int], lmap: LabelMap, thickness: float, where: str, notes: Notes
) -> np.ndarray | None:
    """A class-index mask of one frame from its shapes (None when none could be drawn).

    Shapes are drawn in order of rank (the label map's priority), then file order, so a higher class wins
    where shapes overlap and a later shape of the same class is drawn over an earlier one.
    """
    h, w = frame_shape
    ranks = lmap.ranks()
    pngs: dict[Path, np.ndarray] = {}

    def read_png(ref: LabelmapRef) -> np.ndarray:
        if ref.path not in pngs:
            pngs[ref.path] = read_png_labels(ref.path, lmap)
        return pngs[ref.path]

    drawn: list[tuple[int, int, int, np.ndarray]] = []
    for s in shapes:
        cls = lmap.index(s.label)
        assert cls is not None
        if outside_frame(s, frame_shape):
            notes.fail(s.source, f"{s.source}: {where}: {s.what} lies wholly outside the {w}x{h} frame; skipped")
            continue
        try:
            bits, lost = shape_pixels(s, frame_shape, thickness, read_png)
        except (ValueError, OSError) as e:
            notes.fail(s.source, f"{s.source}: {where}: {s.what}: {e}; skipped")
            continue
        if not bits.any():
            notes.fail(s.source, f"{s.source}: {where}: {s.what} covers no pixel of the {w}x{h} frame; skipped")
            continue
        if lost:
            notes.warn(f"{s.source}: {where}: {s.what} is partly outside the {w}x{h} frame; clipped to it")
        drawn.append((int(ranks[cls]), s.order, cls, bits))
    if not drawn:
        return None
    mask = np.zeros(frame_shape, dtype=np.uint8)
    for _, _, cls, bits in sorted(drawn, key=lambda d: (d[0], d[1])):
        mask[bits] = cls
    return mask


def _import_clip(
    task: tuple[_Plan, LabelMap, AnnotationImportConfig, Path, Path],
) -> tuple[list[dict], Notes, dict[str, Any] | None]:
    """Stream one clip (or image), write its labelled frames and masks (runs in a worker).

    Returns its rows, its notes and its geometry (``clip_geometry``; None when no frame was read).
    """
    plan, lmap, cfg, tmp, root = task
    item, notes = plan.item, Notes()
    geometry = None
    wanted = dict(plan.frames)
    label = str(item.media or item.source)
    if item.media is None and item.embedded is None:
        notes.fail(item.source, f"{item.source}: {item.missing}; its {len(wanted)} labelled frame(s) skipped")
        return [], notes, None
    if item.last_frame is not None:
        for f in [f for f in wanted if f > item.last_frame]:
            notes.fail(item.source, f"{item.source}: frame {f} is beyond the task's last frame {item.last_frame}; "
                                    f"its {len(wanted.pop(f)[0])} shape(s) skipped")  # fmt: skip
    for f in [f for f in wanted if f < 0]:
        notes.fail(item.source, f"{item.source}: frame {f} is not a frame number; skipped")
        wanted.pop(f)
    if not wanted:
        return [], notes, None
    try:
        thickness = _thickness_px(item, [s for ss, _ in wanted.values() for s in ss], cfg)
    except (ValueError, ReadError) as e:
        notes.fail(item.source, f"{label}: {e}")
        return [], notes, None
    schema = lmap.schema
    fill = schema.names.index("outside_scan") if "outside_scan" in schema.names else 0
    rows: list[dict[str, Any]] = []
    seen = 0
    try:
        stream = _frames(item)
        head = []
        for frame in stream:
            head.append(frame)
            if len(head) == AREA_FRAMES:
                break
        if not head:
            raise ReadError(f"{label}: no frames")
        area = find_scan_area(np.stack([f.image for f in head]))
        geometry = clip_geometry(area, head[0].image.shape, cfg.size)
        beams = None
        last = max(wanted)
        for frame in _chain(head, stream):
            seen = frame.index + 1
            if frame.index in wanted:
                shapes, fields = wanted.pop(frame.index)
                row = _write_frame(item, frame, shapes, fields, area, lmap, cfg, thickness, fill, tmp, root, notes)
                if row is not None:
                    if cfg.densify:
                        if beams is None:
                            beams = scan_lines(fit_area_mask(area, cfg.size), area.probe)
                        _write_dense(tmp, row, fields["diagnosis"], beams)
                    rows.append(row)
            if frame.index >= last:
                break
        stream.close()
    except ReadError as e:
        notes.fail(item.source, f"{e}; {len(wanted)} labelled frame(s) of it not imported")
        return rows, notes, geometry
    for f in sorted(wanted):
        n = len(wanted[f][0])
        line = f"{item.source}: frame {f} is beyond {label}'s {seen} frame(s); its {n} shape(s) skipped"
        notes.fail(item.source, line)
    return rows, notes, geometry


def clip_geometry(area: ScanArea, frame_shape: tuple[int, int], size: int) -> dict[str, Any]:
    """Where a clip's cleaned frames come from: ``out = (src - (left, top)) * scale + (offset_x, 0)``."""
    t, b, left, right = area.bbox
    nh, nw, x0 = fit_geometry(area, size)
    return {
        "frame_size": [int(frame_shape[1]), int(frame_shape[0])],  # width, height of the source frames
        "bbox": {"top": t, "bottom": b, "left": left, "right": right},  # scan area, exclusive ends
        "scale_x": nw / (right - left),  # output pixels per source pixel
        "scale_y": nh / (b - t),
        "offset_x": x0,  # the crop is centred horizontally and aligned to the top
        "probe": area.probe,
    }


def _chain(head: list[Frame], rest: Iterator[Frame]) -> Iterator[Frame]:
    yield from head
    head.clear()  # the look-ahead frames are not held once passed
    yield from rest


def _write_frame(
    item: Item,
    frame: Frame,
    shapes: list[Shape],
    fields: dict[str, str],
    area: ScanArea,
    lmap: LabelMap,
    cfg: AnnotationImportConfig,
    thickness: float,
    fill: int,
    tmp: Path,
    root: Path,
    notes: Notes,
) -> dict[str, Any] | None:
    """Clean one frame, draw and fit its mask, write both PNGs; its manifest row (None if nothing was drawn)."""
    where = f"frame {frame.index}"
    h, w = frame.image.shape
    drawn_shape = (item.size[1], item.size[0]) if item.size and item.size != (w, h) else (h, w)
    if shapes:
        mask = rasterise(shapes, drawn_shape, lmap, thickness, where, notes)
        if mask is None:
            notes.fail(item.source, f"{item.source}: {where}: none of its {len(shapes)} shape(s) could be drawn; "
                                    "frame skipped")  # fmt: skip
            return None
    else:  # labelled as empty (a mask PNG of background, a "labelled" tag)
        mask = np.zeros(drawn_shape, dtype=np.uint8)
    if drawn_shape != (h, w):
        if abs(drawn_shape[0] / h - drawn_shape[1] / w) > 0.02 * drawn_shape[1] / w:
            notes.fail(item.source, f"{item.source}: {where}: labels drawn on {drawn_shape[1]}x{drawn_shape[0]} but "
                                    f"{item.media} is {w}x{h}, another shape; frame skipped")  # fmt: skip
            return None
        mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
    image = fit_to_size(remove_overlays(frame.image, area=area), area, cfg.size)
    fitted = fit_mask_to_size(mask, area, cfg.size, fill)
    fid = f"{item.clip_id}_{frame.index:05d}"
    Image.fromarray(image, mode="L").save(tmp / "images" / f"{fid}.png", compress_level=3)
    schema = lmap.schema
    _save_mask(fitted, tmp / "masks" / schema.name / f"{fid}.png", schema.palette())
    present = [schema.names[i] for i in np.unique(fitted).tolist() if i != 0]
    return {
        "id": fid,
        "image": f"images/{fid}.png",
        "diagnosis": fields["diagnosis"],
        "clip_id": fields.get("clip_id") or item.clip_id,
        "patient_id": fields["patient_id"] or item.clip_id,
        "probe": fields["probe"] or str(area.probe),
        f"mask_{schema.name}": f"masks/{schema.name}/{fid}.png",
        "probe_detected": str(area.probe),
        "file": _rel(item.media, root) if item.media else item.source,
        "frame": frame.index,
        "time_s": round(frame.time_s, 3),
        "shapes": len(shapes),
        "classes": ";".join(present),
        "annotations": _rel(Path(item.source), root),
        "source": "annotations",
    }


def _write_dense(tmp: Path, row: dict[str, Any], diagnosis: str, beams: tuple[np.ndarray, np.ndarray]) -> None:
    """The dense mask of a row, from its sparse one and the frame's diagnosis (``pleura.labels.densify``)."""
    with Image.open(tmp / row["mask_sparse"]) as im:
        sparse = np.asarray(im)
    dense = densify(sparse, diagnosis, beam_rc=beams)
    rel = f"masks/dense/{row['id']}.png"
    _save_mask(dense, tmp / rel, DENSE.palette())
    row["mask_dense"] = rel


def _save_mask(mask: np.ndarray, path: Path, palette: np.ndarray) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(palette.ravel().tolist())
    img.save(path, compress_level=3)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
