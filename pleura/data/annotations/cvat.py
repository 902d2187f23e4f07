"""CVAT: task backups (``task.json`` + ``annotations.json`` + ``data/``) and CVAT for images / video 1.1 XML.

Frame numbers in CVAT are the task's own (0 .. size - 1); the media frame is ``start_frame + number * step``
(``data.start_frame`` and ``frame_filter: step=N`` of the task). Shapes: rectangles (with rotation),
polygons, polylines, points, ellipses and brush masks (RLE); tracks are expanded frame by frame
(``model.expand_track``); tags are frame-level. Cuboids and skeletons are reported and skipped.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from pleura.data.annotations.media import MediaFinder, is_video_name
from pleura.data.annotations.model import (
    AnnotationError,
    CvatRle,
    Item,
    Notes,
    Shape,
    TrackShape,
    expand_track,
    finite_int,
    safe_id,
    xy,
)

logger = logging.getLogger(__name__)

UNSUPPORTED = ("cuboid", "skeleton", "cuboid_3d")


def read_json(path: Path) -> Any:
    """A JSON file, or an AnnotationError naming it (missing, unreadable, malformed)."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise AnnotationError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: cannot read ({e})") from None


def frame_step(frame_filter: Any) -> int:
    """The step of a CVAT ``frame_filter`` (``"step=3"`` -> 3; empty -> 1)."""
    text = str(frame_filter or "").strip()
    if text.startswith("step="):
        return max(1, finite_int(text[5:], 1))
    return 1


# ---------------------------------------------------------------------------------------------------- task backups


def find_backups(src: Path) -> list[Path]:
    """The task folders (holding ``task.json``) at ``src`` or one level below it."""
    if (src / "task.json").is_file() or (src / "annotations.json").is_file():
        return [src]
    return sorted(p for p in src.iterdir() if p.is_dir() and (p / "task.json").is_file()) if src.is_dir() else []


def read_cvat_backup(src: Path, media: Path | None, notes: Notes) -> list[Item]:
    """Items of the CVAT task backup(s) at ``src`` (a task folder, or a folder of task folders)."""
    tasks = find_backups(src)
    if not tasks:
        raise AnnotationError(
            f"{src}: no CVAT task backup here (a folder with task.json, annotations.json and data/); "
            "unzip the backup and pass its folder"
        )
    items: list[Item] = []
    for task in tasks:
        try:
            items += _read_backup(task, media, notes)
        except AnnotationError as e:
            if len(tasks) == 1:
                raise
            notes.fail(str(task), str(e))
    return items


def _manifest(data: Path) -> tuple[str, list[dict[str, Any]]]:
    """CVAT's ``data/manifest.jsonl``: ("video" or "images", its entries); ("", []) when absent."""
    path = data / "manifest.jsonl"
    if not path.is_file():
        return "", []
    kind, entries = "", []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "type" in obj:
            kind = obj["type"]
        elif "properties" in obj or "name" in obj:
            entries.append(obj.get("properties", obj))
    return kind, entries


def _read_backup(task: Path, media: Path | None, notes: Notes) -> list[Item]:
    info = read_json(task / "task.json") if (task / "task.json").is_file() else {}
    ann_path = task / "annotations.json"
    jobs = read_json(ann_path)
    if isinstance(jobs, dict):
        jobs = [jobs]
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise AnnotationError(f"{ann_path}: expected a list of jobs with tags, shapes and tracks")
    data = info.get("data") or {}
    start, step = finite_int(data.get("start_frame"), 0), frame_step(data.get("frame_filter"))
    stop = data.get("stop_frame")
    name = str(info.get("name") or task.name)
    last_rel = (finite_int(stop) - start) // step if stop is not None else None  # the task's last frame number
    kind, entries = _manifest(task / "data")
    source = str(ann_path)

    video: Path | None = None
    missing = ""
    if media is not None and media.is_file():
        video, kind = media, "video"
    elif kind == "video" or (kind == "" and _videos(task / "data")):
        wanted = entries[0].get("name") if entries else None
        roots = [media] if media is not None else [task / "data"]
        video = next((r / wanted for r in roots if wanted and (r / wanted).is_file()), None)
        if video is None:
            found = [v for r in roots for v in _videos(r)]
            video = found[0] if len(found) == 1 else None
        if video is None:
            where = " or ".join(str(r) for r in roots)
            missing = f"missing video {wanted or '(unnamed)'} under {where}; pass --media FILE"
        kind = "video"

    def media_frame(rel: int) -> int:
        return start + rel * step

    if kind == "video":
        width, height = (entries[0].get("resolution") or [None, None]) if entries else (None, None)
        vname = video.name if video is not None else str(entries[0].get("name") if entries else name)
        item = Item(
            clip_id=safe_id(Path(vname).stem),
            media=video,
            source=source,
            names=(name, vname, Path(vname).stem, task.name),
            size=(int(width), int(height)) if width and height else None,
            last_frame=int(stop) if stop is not None else None,
            missing=missing,
        )
        _fill(jobs, source, notes, lambda rel: (item, media_frame(rel)), last_rel)
        return [item]

    # an image task: the n-th image of the task's list is frame n
    finder = MediaFinder([media] if media is not None else [task / "data"])
    names = [f"{e.get('name', '')}{e.get('extension', '')}" for e in entries]
    by_path: dict[Path, Item] = {}
    unresolved: dict[int, Item] = {}

    def locate(rel: int) -> tuple[Item, int] | None:
        idx = media_frame(rel)
        label = names[idx] if 0 <= idx < len(names) else f"frame {rel}"
        hit = finder.find(label) if 0 <= idx < len(names) else None
        if hit is None:
            if rel not in unresolved:
                why = (
                    f"frame {rel} is beyond the task's {len(names)} images"
                    if not 0 <= idx < len(names)
                    else "missing image"
                )
                unresolved[rel] = Item(safe_id(label), None, source, names=(label,), missing=f"{why} {label}")
            return unresolved[rel], 0
        path, _ = hit
        if path not in by_path:
            by_path[path] = Item(safe_id(Path(label).with_suffix("").as_posix()), path, source, names=(label,))
        return by_path[path], 0

    _fill(jobs, source, notes, locate, last_rel)
    return [*by_path.values(), *unresolved.values()]


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_video_name(p)) if folder.is_dir() else []


def _fill(jobs: list[dict[str, Any]], source: str, notes: Notes, locate: Any, last: int | None) -> None:
    """Add the shapes, tracks and tags of CVAT jobs (JSON) to the items ``locate(task frame)`` returns.

    ``last`` is the task's last frame number: a track not ended by ``outside`` lasts until it.
    """
    order = 0
    for j, job in enumerate(jobs):
        for t in job.get("tags") or []:
            where = locate(finite_int(t.get("frame"), -1))
            if where is not None and t.get("label"):
                where[0].add_tag(where[1], str(t["label"]))
        for s in job.get("shapes") or []:
            order += 1
            rel, shape = _read_shape(
                s, source, f'job {j} shape {order} ({s.get("type")} "{s.get("label")}")', order, notes
            )
            if shape is not None:
                it, f = locate(rel)
                it.add(f, shape)
        for k, track in enumerate(job.get("tracks") or []):
            keys: list[TrackShape] = []
            for s in track.get("shapes") or []:
                order += 1
                s = {**s, "label": track.get("label")}
                what = f'job {j} track {k} ({s.get("type")} "{track.get("label")}")'
                rel, shape = _read_shape(s, source, what, order, notes)
                if shape is not None:
                    keys.append(TrackShape(rel, shape, bool(s.get("outside"))))
            for rel, shape in expand_track(keys, last, notes):  # in task frames; then to media frames
                it, f = locate(rel)
                it.add(f, shape)
            if track.get("elements"):
                notes.fail(source, f"{source}: job {j} track {k}: skeleton tracks are not supported; skipped")


def _read_shape(s: dict[str, Any], source: str, what: str, order: int, notes: Notes) -> tuple[int, Shape | None]:
    """``(task frame, shape)`` of a CVAT JSON shape or track key; a shape that cannot be drawn is noted (one
    line naming the file, frame and shape) and comes back as None."""
    rel = finite_int(s.get("frame"), -1)
    try:
        return rel, json_shape(s, source, what, order)
    except ValueError as e:
        notes.fail(source, f"{source}: frame {rel}: {e}")
        return rel, None


def json_shape(s: dict[str, Any], source: str, what: str, order: int) -> Shape | None:
    """A CVAT JSON shape as a ``Shape``; None (after a ValueError) for kinds pleura cannot draw."""
    kind = str(s.get("type", ""))
    label = s.get("label")
    if not label:
        raise ValueError(f"{what}: no label name (label_id only? export a task backup, which names labels)")
    label = str(label)
    pts = s.get("points") or []
    occluded, rot = bool(s.get("occluded")), float(s.get("rotation") or 0.0)
    if kind in UNSUPPORTED or s.get("elements"):
        raise ValueError(f"{what}: {kind or 'skeleton'} shapes are not supported (polygons, polylines, boxes, ...)")
    if kind == "mask":
        if len(pts) < 5:
            raise ValueError(f"{what}: a mask needs run lengths and left, top, right, bottom; got {len(pts)} numbers")
        left, top, right, bottom = (round(v) for v in pts[-4:])
        rle = CvatRle(np.asarray(pts[:-4], dtype=np.int64), left, top, right - left + 1, bottom - top + 1)
        return Shape("cvat_rle", label, np.array([[left, top], [right + 1, bottom + 1]], float), source, what,
                     order, 0.0, occluded, rle)  # fmt: skip
    a = xy(pts, source, what)
    if kind == "rectangle":
        if len(a) != 2:
            raise ValueError(f"{what}: a rectangle needs 2 corners, got {len(a)} points")
        return Shape("box", label, a, source, what, order, rot, occluded)
    if kind == "ellipse":
        if len(a) != 2:
            raise ValueError(f"{what}: an ellipse needs centre and corner (4 numbers), got {len(a)} points")
        centre, corner = a
        radii = np.abs(corner - centre)
        return Shape("ellipse", label, np.stack([centre, radii]), source, what, order, rot, occluded)
    if kind in ("polygon", "polyline", "points"):
        need = {"polygon": 3, "polyline": 2, "points": 1}[kind]
        if len(a) < need:
            raise ValueError(f"{what}: a {kind} needs at least {need} points, got {len(a)}")
        return Shape(kind, label, a, source, what, order, rot, occluded)
    raise ValueError(f"{what}: unknown shape type {kind!r}")


# ---------------------------------------------------------------------------------------------------- XML 1.1


def find_xml(src: Path) -> Path:
    """The CVAT XML file: ``src`` itself, ``src/annotations.xml`` or the only ``*.xml`` in ``src``."""
    if src.is_file():
        return src
    if (src / "annotations.xml").is_file():
        return src / "annotations.xml"
    found = sorted(src.glob("*.xml")) if src.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise AnnotationError(
        f"{src}: no annotations.xml{' (several .xml files: pass one)' if found else ''}; "
        "export the task as CVAT for images 1.1 or CVAT for video 1.1 and unzip it"
    )


def _points(text: str | None, source: str, what: str) -> np.ndarray:
    try:
        pairs = [tuple(float(v) for v in p.split(",")) for p in (text or "").split(";") if p.strip()]
    except ValueError:
        raise ValueError(f'{what}: points "{(text or "")[:40]}" are not "x,y;x,y;..." numbers') from None
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f'{what}: points "{(text or "")[:40]}" are not "x,y;x,y;..." pairs')
    return xy(pairs, source, what)


def xml_shape(el: ET.Element, label: str, source: str, what: str, order: int) -> Shape:
    """A CVAT XML shape element as a ``Shape`` (ValueError for what cannot be drawn)."""
    kind, a = el.tag, el.attrib
    occluded, rot = a.get("occluded") == "1", float(a.get("rotation") or 0.0)
    try:
        if kind == "box":
            pts = np.array([[float(a["xtl"]), float(a["ytl"])], [float(a["xbr"]), float(a["ybr"])]])
            return Shape("box", label, xy(pts, source, what), source, what, order, rot, occluded)
        if kind == "ellipse":
            pts = np.array([[float(a["cx"]), float(a["cy"])], [float(a["rx"]), float(a["ry"])]])
            return Shape("ellipse", label, xy(pts, source, what), source, what, order, rot, occluded)
        if kind == "mask":
            counts = np.array([int(v) for v in a["rle"].replace(",", " ").split()], dtype=np.int64)
            left, top, w, h = (round(float(a[k])) for k in ("left", "top", "width", "height"))
            rle = CvatRle(counts, left, top, w, h)
            box = np.array([[left, top], [left + w, top + h]], dtype=float)
            return Shape("cvat_rle", label, box, source, what, order, 0.0, occluded, rle)
    except KeyError as e:
        raise ValueError(f"{what}: attribute {e.args[0]} missing") from None
    except ValueError:
        raise ValueError(f"{what}: an attribute is not a number") from None
    if kind in ("polygon", "polyline", "points"):
        pts = _points(a.get("points"), source, what)
        need = {"polygon": 3, "polyline": 2, "points": 1}[kind]
        if len(pts) < need:
            raise ValueError(f"{what}: a {kind} needs at least {need} points, got {len(pts)}")
        return Shape(kind, label, pts, source, what, order, rot, occluded)
    raise ValueError(f"{what}: {kind} shapes are not supported (polygons, polylines, boxes, ellipses, masks, points)")


def read_cvat_xml(src: Path, media: Path | None, notes: Notes) -> list[Item]:
    """Items of a CVAT for images or CVAT for video 1.1 XML file (``src``: the file or its folder)."""
    path = find_xml(src)
    source = str(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise AnnotationError(f"{path}: not well-formed XML (line {line}, column {col}); re-export it") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e})") from None
    if root.tag != "annotations":
        raise AnnotationError(f"{path}: the root element is <{root.tag}>, not <annotations>; is this a CVAT XML?")
    meta = root.find("meta/task")
    if meta is None:
        meta = root.find("meta/job")
    meta = meta if meta is not None else ET.Element("task")
    start, step = finite_int(meta.findtext("start_frame"), 0), frame_step(meta.findtext("frame_filter"))
    stop = meta.findtext("stop_frame")
    task_name = meta.findtext("name") or path.parent.name
    size_w, size_h = meta.findtext("original_size/width"), meta.findtext("original_size/height")
    tracks = root.findall("track")
    size = finite_int(meta.findtext("size"), 0)
    last_rel = size - 1 if size else ((finite_int(stop) - start) // step if stop else None)
    video_task = bool(tracks) or meta.findtext("mode") == "interpolation"

    roots = [media] if media is not None and media.is_dir() else [path.parent, path.parent / "images"]
    video = media if media is not None and media.is_file() else None
    if video is None and video_task:
        named = meta.findtext("source")
        cands = [r / named for r in roots if named and (r / named).is_file()] if named else []
        cands = cands or [v for r in roots for v in _videos(r)]
        video = cands[0] if len(set(cands)) == 1 else None
        frames_saved = MediaFinder(roots).find("frame_000000") is not None  # "CVAT for video" with images
        if video is None and tracks and not frames_saved:
            missing = f"missing video for the tracks of {path.name}: none (or several) beside it; pass --media FILE"
            item = Item(safe_id(task_name), None, source, names=(task_name,), missing=missing)
            _xml_images(root, source, notes, lambda name, rel: (item, start + rel * step))
            _xml_tracks(tracks, source, notes, lambda rel: (item, start + rel * step), last_rel)
            return [item]

    if video is not None:
        item = Item(
            safe_id(video.stem),
            video,
            source,
            names=(task_name, video.name, video.stem),
            size=(int(size_w), int(size_h)) if size_w and size_h else None,
            last_frame=finite_int(stop) if stop is not None else None,
        )
        _xml_images(root, source, notes, lambda name, rel: (item, start + rel * step))
        _xml_tracks(tracks, source, notes, lambda rel: (item, start + rel * step), last_rel)
        return [item]

    finder = MediaFinder(roots)
    by_path: dict[Path, Item] = {}
    lost: dict[str, Item] = {}

    def locate(name: str, rel: int) -> tuple[Item, int]:
        hit = finder.find(name)
        if hit is None:
            if name not in lost:
                where = " or ".join(str(r) for r in roots)
                lost[name] = Item(safe_id(name), None, source, names=(name,),
                                  missing=f"missing image {name} under {where}; pass --media DIR")  # fmt: skip
            return lost[name], 0
        p, f = hit
        if p not in by_path:
            by_path[p] = Item(safe_id(Path(name).with_suffix("").as_posix()), p, source, names=(name, p.name))
        return by_path[p], f

    _xml_images(root, source, notes, locate)
    # the frames of a video task exported as images (frame_000000.png ...): each frame is a still of its own
    _xml_tracks(tracks, source, notes, lambda rel: locate(f"frame_{rel:06d}", rel), last_rel)
    return [*by_path.values(), *lost.values()]


def _xml_images(root: ET.Element, source: str, notes: Notes, locate: Any) -> None:
    order = 0
    for image in root.iter("image"):
        rel = finite_int(image.get("id"), -1)
        name = image.get("name") or f"frame {rel}"
        it, f = locate(name, rel)
        w, h = image.get("width"), image.get("height")
        if w and h and it.size is None:
            it.size = (finite_int(w), finite_int(h))
        for el in image:
            order += 1
            label = el.get("label") or ""
            what = f'<{el.tag}> {order} "{label}" of image {name}'
            if el.tag == "tag":
                it.add_tag(f, label)
                continue
            if not label:
                notes.fail(source, f"{source}: {what}: no label attribute; skipped")
                continue
            try:
                it.add(f, xml_shape(el, label, source, what, order))
            except ValueError as e:
                notes.fail(source, f"{source}: {e}")


def _xml_tracks(tracks: list[ET.Element], source: str, notes: Notes, locate: Any, last: int | None) -> None:
    order = 100_000_000
    for track in tracks:
        label = track.get("label") or ""
        keys: list[TrackShape] = []
        for el in track:
            order += 1
            rel = finite_int(el.get("frame"), -1)
            what = f'track {track.get("id")} <{el.tag}> "{label}" at frame {rel}'
            try:
                shape = xml_shape(el, label, source, what, order)
            except ValueError as e:
                notes.fail(source, f"{source}: {e}")
                continue
            keys.append(TrackShape(rel, shape, el.get("outside") == "1"))
        for rel, shape in expand_track(keys, last, notes):  # in task frames; then to media frames
            it, f = locate(rel)
            it.add(f, shape)
