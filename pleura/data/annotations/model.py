"""What every annotation format is read into: shapes per media frame, frame tags, the label map, the notes.

Each reader (``cvat``, ``coco``, ``labelme``, ``maskpng``) turns its files into ``Item`` objects, one per media
file (a clip or a still image), holding the tool's shapes per frame of that file. Tracks are expanded to
per-frame shapes here (``expand_track``), so the rest of the import sees only shapes. The label map says how
the tool's label names become classes of a pleura schema and which class wins where shapes overlap.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pleura.labels import DIAGNOSES, Probe, Schema, StrEnum, get_schema

logger = logging.getLogger(__name__)


class AnnotationFormat(StrEnum):
    """The formats ``import_annotations`` reads (``--format``); members are their names as strings."""

    CVAT = "cvat"  # a CVAT task backup: task.json, annotations.json, data/
    CVAT_XML = "cvat-xml"  # CVAT for images 1.1 or CVAT for video 1.1 annotations.xml
    COCO = "coco"  # COCO 1.0 instance JSON
    LABELME = "labelme"  # Labelme JSON, one per image
    MASKS = "masks"  # folders of mask PNGs, indexed or RGB


FORMATS: tuple[str, ...] = tuple(f.value for f in AnnotationFormat)
#: shape kinds after reading: every format's shapes are one of these
ShapeKind = Literal["polygon", "polyline", "box", "ellipse", "points", "bitmap", "cvat_rle", "coco_rle", "labelmap"]
TAG_FIELDS = ("diagnosis", "patient_id", "probe", "labelled")
MAP_KEYS = ("schema", "labels", "priority", "tags", "colors", "values")


class AnnotationError(ValueError):
    """An import that cannot go on: a bad label map, an unreadable annotation file, nothing to import."""


@dataclass
class CvatRle:
    """A CVAT brush mask: run lengths (0s first, row-major) over a box of the frame."""

    counts: np.ndarray  # int64 run lengths, alternating background / foreground, background first
    left: int  # box position in the frame, pixels
    top: int
    width: int  # box size, pixels
    height: int


@dataclass
class CocoRle:
    """A COCO run-length mask over the whole image (column-major), compressed string or plain counts."""

    counts: str | list[int]  # the LEB128-like string of pycocotools, or plain run lengths (0s first)
    height: int
    width: int


@dataclass
class Bitmap:
    """A decoded bool mask placed at ``(left, top)`` of the frame (a Labelme ``mask`` shape)."""

    array: np.ndarray  # bool (h, w)
    left: int
    top: int


@dataclass
class LabelmapRef:
    """The pixels of one tool label in a mask PNG, read when the frame is drawn (never all PNGs at once)."""

    path: Path  # the mask PNG
    value: int | tuple[int, int, int]  # its index (indexed PNG) or RGB colour


@dataclass
class Shape:
    """One drawn shape of one frame, in the tool's pixel coordinates (x right, y down; pixel i spans [i, i+1))."""

    kind: ShapeKind
    label: str  # the tool's label name, mapped through the label map when drawn
    points: np.ndarray  # (K, 2) float x, y: polygon/polyline/points vertices; box: 2 corners; ellipse: centre, radii
    source: str  # the annotation file, for messages
    what: str  # e.g. 'shape 3 (polygon "aline")', for messages
    order: int = 0  # position in the file: later drawn wins within a class
    rotation: float = 0.0  # degrees clockwise about the centre (CVAT boxes and ellipses)
    occluded: bool = False  # the tool's flag; an occluded shape is drawn like any other
    data: CvatRle | CocoRle | Bitmap | LabelmapRef | None = None  # the mask of the bitmap kinds


@dataclass
class TrackShape:
    """One keyframe (or exported frame) of a track."""

    frame: int  # media frame index
    shape: Shape
    outside: bool = False  # the object leaves the view here: the track ends (until a later keyframe)


@dataclass
class Item:
    """One media file (a clip or an image) and its labels, by media frame index."""

    clip_id: str  # file-system-safe id, unique in the import
    media: Path | None  # the clip or image; None when it could not be found (``missing`` says why)
    source: str  # the annotation file (or folder) it comes from
    shapes: dict[int, list[Shape]] = field(default_factory=dict)  # media frame -> shapes
    tags: dict[int, list[str]] = field(default_factory=dict)  # media frame -> frame-level tag names
    labelled: set[int] = field(default_factory=set)  # frames labelled whatever their shapes (a mask PNG exists)
    names: tuple[str, ...] = ()  # other names the --meta CSV may use for the clip (task name, media file name)
    size: tuple[int, int] | None = None  # (width, height) the annotations were drawn on, when stated
    last_frame: int | None = None  # last media frame the task covers, when stated
    embedded: bytes | None = None  # image bytes stored in the annotation (Labelme imageData), if no file
    missing: str = ""  # why ``media`` is None

    def add(self, frame: int, shape: Shape) -> None:
        """Add a shape to media frame ``frame``."""
        self.shapes.setdefault(frame, []).append(shape)

    def add_tag(self, frame: int, name: str) -> None:
        """Add a frame-level tag name to media frame ``frame``."""
        self.tags.setdefault(frame, []).append(name)


@dataclass
class Notes:
    """What went wrong on the way, one line each: ``failed`` lost labels (skipped), ``warnings`` did not.

    Lines are logged at INFO (the command prints the report's lines once, at the end, not twice).
    """

    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, line)
    warnings: list[str] = field(default_factory=list)

    def fail(self, file: str, line: str) -> None:
        """Record (and log) a problem in ``file`` that lost labels: the affected labels are skipped."""
        logger.info("skipped: %s", line)
        self.failed.append((file, line))

    def warn(self, line: str) -> None:
        """Record (and log) a problem that lost no labels."""
        logger.info("%s", line)
        self.warnings.append(line)

    def extend(self, other: Notes) -> None:
        """Append another ``Notes``' lines (e.g. a worker's, one clip each) to these."""
        self.failed += other.failed
        self.warnings += other.warnings


def safe_id(text: str) -> str:
    """A file-system-safe id from a name (``study 1/clip.mp4`` -> ``study_1_clip``)."""
    stem = re.sub(r"\.[A-Za-z0-9]{2,5}$", "", text)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.replace("/", "_").replace("\\", "_")).strip("_.") or "clip"


def xy(values: Any, source: str, what: str) -> np.ndarray:
    """``x0, y0, x1, y1, ...`` (or ``[[x, y], ...]``) as a finite ``(K, 2)`` float array; ValueError otherwise."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 1:
        if a.size % 2:
            raise ValueError(f"{source}: {what}: odd number of coordinates ({a.size}); expected x, y pairs")
        a = a.reshape(-1, 2)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{source}: {what}: points of shape {a.shape}; expected x, y pairs")
    if not np.isfinite(a).all():
        raise ValueError(f"{source}: {what}: a coordinate is not a finite number")
    return a


def parse_probe(text: Any) -> Probe | None:
    """The probe ``text`` names, read by ``Probe.parse`` (linear, curvilinear, or its alias convex; any case);
    None when it names none."""
    try:
        return Probe.parse(str(text))
    except ValueError:
        return None


def _outline(points: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """The outline's vertices (a closed one ends where it starts) and each one's arc length as a fraction of it."""
    pts = np.concatenate([points, points[:1]]) if closed else points
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    return pts, (cum / cum[-1] if cum[-1] > 0 else np.linspace(0.0, 1.0, len(cum)))


def _arc(points: np.ndarray, closed: bool) -> np.ndarray:
    """Each vertex's arc length along the outline as a fraction of the whole (the first vertex at 0)."""
    frac = _outline(points, closed)[1]
    return frac[:-1] if closed else frac


def _sample(points: np.ndarray, closed: bool, at: np.ndarray) -> np.ndarray:
    """Points at fractions ``at`` of the outline's arc length (0: the first vertex)."""
    pts, frac = _outline(points, closed)
    return np.stack([np.interp(at, frac, pts[:, 0]), np.interp(at, frac, pts[:, 1])], axis=1)


def match_points(a: np.ndarray, b: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two outlines with different point counts as two of one count, point ``i`` of one matching point ``i`` of the
    other, so a track can move linearly between keyframes that differ in points.

    Both are resampled by arc length at the union of their vertices' arc-length fractions, so each keeps all
    its own vertices (the keyframes are drawn as drawn) and gains points on its edges. A polygon ``b`` is first
    turned to run the same way round as ``a`` and started at the vertex that fits ``a`` best (least squared
    distance over 32 points spaced evenly by arc length); a polyline ``b`` is reversed when that fits better.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    even = np.linspace(0.0, 1.0, 32, endpoint=not closed)
    ref = _sample(a, closed, even)
    if closed:
        area = [float(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(np.roll(p[:, 0], -1), p[:, 1])) for p in (a, b)]
        if area[0] * area[1] < 0:
            b = b[::-1]
        cost = [float(((_sample(np.roll(b, -j, axis=0), True, even) - ref) ** 2).sum()) for j in range(len(b))]
        b = np.roll(b, -int(np.argmin(cost)), axis=0)
    elif ((_sample(b[::-1], False, even) - ref) ** 2).sum() < ((_sample(b, False, even) - ref) ** 2).sum():
        b = b[::-1]
    at = np.unique(np.round(np.concatenate([_arc(a, closed), _arc(b, closed)]), 9))
    return _sample(a, closed, at), _sample(b, closed, at)


def expand_track(keys: list[TrackShape], last_frame: int | None, notes: Notes) -> list[tuple[int, Shape]]:
    """Per-frame shapes of a track: keyframes linearly interpolated between them, ``outside`` ending the track.

    Between two keyframes of the same kind and point count (polygon, polyline, points, box, ellipse) every
    point (and a box's rotation) moves linearly. Polygons and polylines whose keyframes differ in point count
    are first resampled by arc length to one count (``match_points``), then move the same way. Otherwise (a
    change of kind, ``points`` of different counts) the earlier shape is held and a note says so. After the
    last keyframe the track holds until ``last_frame`` (CVAT's rule: a track lasts until it goes outside).
    """
    keys = sorted(keys, key=lambda k: k.frame)
    out: list[tuple[int, Shape]] = []
    for i, key in enumerate(keys):
        if key.outside:
            continue
        nxt = keys[i + 1] if i + 1 < len(keys) else None
        end = nxt.frame - 1 if nxt is not None else (last_frame if last_frame is not None else key.frame)
        out.append((key.frame, key.shape))
        if end <= key.frame:
            continue
        a = key.shape
        b = nxt.shape if nxt is not None and not nxt.outside else None
        same = b is not None and a.kind == b.kind
        blend = same and a.kind in ("polygon", "polyline", "points", "box", "ellipse")
        pa, pb = a.points, b.points if b is not None else a.points
        if blend and pa.shape != pb.shape:
            if a.kind in ("polygon", "polyline") and len(pa) > 1 and len(pb) > 1:
                pa, pb = match_points(pa, pb, closed=a.kind == "polygon")
            else:
                blend = False
        if b is not None and not blend and a.kind not in ("cvat_rle", "coco_rle", "bitmap"):
            notes.warn(
                f"{a.source}: {a.what}: keyframes at frames {key.frame} and {nxt.frame} differ in kind or point "
                f"count ({a.points.shape[0]} vs {b.points.shape[0]}); frames between keep frame {key.frame}'s shape"
            )
        for f in range(key.frame + 1, end + 1):
            if blend:
                t = (f - key.frame) / (nxt.frame - key.frame)
                pts = (1 - t) * pa + t * pb
                rot = (1 - t) * a.rotation + t * b.rotation
                out.append((f, Shape(a.kind, a.label, pts, a.source, a.what, a.order, rot, a.occluded, a.data)))
            else:
                out.append((f, a))
    return out


def _rgb(value: Any, where: str) -> tuple[int, int, int]:
    """``"#24a573"`` or ``[36, 165, 115]`` as an RGB tuple."""
    if isinstance(value, str) and re.fullmatch(r"#?[0-9A-Fa-f]{6}", value.strip()):
        h = value.strip().lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    if isinstance(value, list | tuple) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value):
        return int(value[0]), int(value[1]), int(value[2])
    raise AnnotationError(f'{where}: colour {value!r}; expected "#rrggbb" or [r, g, b] with 0..255')


@dataclass(frozen=True)
class LabelMap:
    """How the tool's label names become classes of one pleura schema, and which class wins on overlap."""

    schema: Schema  # the target schema
    labels: dict[str, str | None]  # tool label -> class name; None: ignored on purpose (no warning)
    priority: tuple[str, ...]  # class names, highest first; unlisted classes rank below, background lowest
    tags: dict[str, dict[str, Any] | None]  # frame tag -> fields it sets (diagnosis, patient_id, probe, labelled)
    colors: dict[tuple[int, int, int], str]  # RGB colour -> tool label (RGB mask PNGs)
    values: dict[int, str]  # index -> tool label (indexed mask PNGs)
    source: str = "the label map"  # the file it came from

    def index(self, label: str) -> int | None:
        """Class index of a tool label, or None when it is unmapped or ignored."""
        name = self.labels.get(label)
        return None if name is None else self.schema.index(name)

    def mapped(self, label: str) -> bool:
        """Whether a tool label maps to a class (False when unlisted or ignored on purpose)."""
        return self.labels.get(label) is not None

    def ranks(self) -> np.ndarray:
        """Rank of every class index (higher wins): the ``priority`` list first, then the schema's order."""
        n = self.schema.num_classes
        base = np.arange(n, dtype=np.int64)  # default: a later class in the schema wins, background (0) lowest
        listed = [self.schema.index(c) for c in self.priority]
        rank = base.copy()
        for pos, idx in enumerate(listed):
            rank[idx] = 2 * n - pos  # above every unlisted class
        return rank

    def tag_fields(self, tag: str) -> dict[str, Any] | None:
        """Fields set by a frame tag: the map's entry, or a diagnosis or probe named by the tag itself."""
        if tag in self.tags:
            return self.tags[tag]
        low = tag.strip().lower()
        if low in DIAGNOSES:
            return {"diagnosis": low}
        probe = parse_probe(low)
        return {"probe": probe} if probe is not None else None

    def tag_known(self, tag: str) -> bool:
        """Whether a frame tag is listed in the map or names a diagnosis or probe itself (else it is warned about)."""
        return tag in self.tags or self.tag_fields(tag) is not None

    def to_json(self) -> dict[str, Any]:
        """The map as JSON-ready data in the label-map file's layout (colours as ``#rrggbb``), to record the import."""
        return {
            "schema": self.schema.name,
            "labels": self.labels,
            "priority": list(self.priority),
            "tags": self.tags,
            "colors": {"#{:02x}{:02x}{:02x}".format(*c): n for c, n in self.colors.items()},
            "values": {str(k): v for k, v in self.values.items()},
        }


def load_label_map(path: str | Path, schema: str | None = None) -> LabelMap:
    """Read and check a label map (JSON; YAML when PyYAML is installed).

    Keys: ``labels`` (tool name -> class name, or null to ignore it quietly), optional ``schema`` (``sparse``,
    ``dense`` or ``anatomy``; default sparse, or ``schema`` given here), ``priority`` (class names, highest
    first), ``tags`` (tag name -> ``{"diagnosis": ..., "patient_id": ..., "probe": ..., "labelled": true}``),
    ``colors`` (tool name -> ``"#rrggbb"``, for RGB mask PNGs) and ``values`` (tool name -> index, for indexed
    mask PNGs).
    """
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AnnotationError(f"{where}: label map not found; pass --labels MAP.json") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{where}: cannot read the label map ({e})") from None
    raw = _parse_map(text, path)
    if not isinstance(raw, dict) or not isinstance(raw.get("labels"), dict):
        raise AnnotationError(
            f'{where}: expected an object with "labels": {{"tool label": "pleura class", ...}}; '
            f'e.g. {{"schema": "sparse", "labels": {{"aline": "a_line", "lungslidingpresent": "pleural_line"}}}}'
        )
    unknown = sorted(set(raw) - set(MAP_KEYS))
    if unknown:
        raise AnnotationError(f"{where}: unknown key(s) {', '.join(unknown)}; a label map has {', '.join(MAP_KEYS)}")
    name = raw.get("schema") or schema or "sparse"
    if schema and raw.get("schema") and raw["schema"] != schema:
        raise AnnotationError(f"{where}: maps onto schema {raw['schema']!r} but --schema {schema} was given")
    try:
        sch = get_schema(str(name))
    except KeyError as e:
        raise AnnotationError(f"{where}: {e.args[0]}") from None
    labels: dict[str, str | None] = {}
    for tool, cls in raw["labels"].items():
        if cls is not None and (not isinstance(cls, str) or cls not in sch.names):
            raise AnnotationError(
                f"{where}: label {tool!r} maps to {cls!r}, which schema {sch.name!r} lacks; "
                f"classes: {', '.join(sch.names)} (or null to ignore it)"
            )
        labels[str(tool)] = cls
    priority = tuple(raw.get("priority") or ())
    bad = [c for c in priority if c not in sch.names]
    if bad or len(set(priority)) != len(priority):
        raise AnnotationError(
            f"{where}: priority {list(priority)} has unknown or repeated classes {bad}; "
            f"list classes of schema {sch.name!r} once each, highest first"
        )
    tags: dict[str, dict[str, Any] | None] = {}
    for tag, fields in (raw.get("tags") or {}).items():
        if fields is not None and (not isinstance(fields, dict) or set(fields) - set(TAG_FIELDS)):
            raise AnnotationError(
                f"{where}: tag {tag!r} maps to {fields!r}; expected an object with some of {', '.join(TAG_FIELDS)} "
                'e.g. {"diagnosis": "normal"} (or null to ignore it)'
            )
        if fields and "probe" in fields:
            probe = parse_probe(fields["probe"])
            if probe is None:
                raise AnnotationError(
                    f"{where}: tag {tag!r} sets probe {fields['probe']!r}; expected {', '.join(Probe)} (or convex)"
                )
            fields = {**fields, "probe": probe}
        tags[str(tag)] = fields
    colors = {_rgb(v, f"{where}: colors[{k!r}]"): str(k) for k, v in (raw.get("colors") or {}).items()}
    values: dict[int, str] = {}
    for k, v in (raw.get("values") or {}).items():
        if not isinstance(v, int) or not 0 <= v <= 65535:
            raise AnnotationError(f"{where}: values[{k!r}] is {v!r}; expected a mask index 0..65535")
        values[v] = str(k)
    return LabelMap(sch, labels, priority, tags, colors, values, where)


def _parse_map(text: str, path: Path) -> Any:
    """JSON, or YAML when the file is not JSON and PyYAML is installed."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        json_error = e
    if path.suffix.lower() in (".yaml", ".yml") or not text.lstrip().startswith(("{", "[")):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise AnnotationError(
                f"{path}: not JSON, and PyYAML is not installed to read YAML; write the label map as JSON "
                "(or pip install pyyaml)"
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise AnnotationError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    raise AnnotationError(
        f"{path}: not valid JSON (line {json_error.lineno}, column {json_error.colno}: {json_error.msg})"
    )


def count_names(items: list[Item]) -> tuple[Counter[str], Counter[str], dict[str, set[tuple[str, int]]]]:
    """Shapes per tool label, tags per tag name, and the (clip, frame) pairs of every label."""
    shapes: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    frames: dict[str, set[tuple[str, int]]] = {}
    for item in items:
        for f, ss in item.shapes.items():
            for s in ss:
                shapes[s.label] += 1
                frames.setdefault(s.label, set()).add((item.clip_id, f))
        for f, ts in item.tags.items():
            for t in ts:
                tags[t] += 1
                frames.setdefault(f"tag:{t}", set()).add((item.clip_id, f))
    return shapes, tags, frames


def finite_int(value: Any, default: int = 0) -> int:
    """``value`` as an int (``"3"``, ``3.0``), ``default`` when absent or not a number."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return default
    return int(f) if math.isfinite(f) else default
