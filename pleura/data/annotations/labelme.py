"""Labelme: one JSON per image (``imagePath``, ``shapes``, ``flags``, optional ``imageData``).

Shape types: ``polygon``, ``rectangle``, ``circle`` (centre and a point on the rim), ``line`` and ``linestrip``
(polylines, drawn with ``--thickness``), ``point`` (a disk ``--thickness`` across) and ``mask`` (a base64 PNG
over the box of its two points). Image-level ``flags`` that are true become frame tags. A JSON that cannot be
read is reported and the others are imported.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pleura.data.annotations.cvat import read_json
from pleura.data.annotations.media import MediaFinder, trailing_number
from pleura.data.annotations.model import AnnotationError, Bitmap, Item, Notes, Shape, finite_int, safe_id, xy

KINDS = {"polygon": "polygon", "rectangle": "box", "line": "polyline", "linestrip": "polyline", "point": "points",
         "points": "points", "circle": "ellipse", "mask": "bitmap"}  # fmt: skip


def read_labelme(src: Path, media: Path | None, notes: Notes) -> list[Item]:
    """Items of the Labelme JSON file ``src`` or of every ``*.json`` under the folder ``src``."""
    files = [src] if src.is_file() else sorted(src.rglob("*.json"))
    if not files:
        raise AnnotationError(f"{src}: no Labelme .json files here")
    video = media if media is not None and media.is_file() else None
    roots = [media] if media is not None and media.is_dir() else []
    items: dict[Any, Item] = {}
    for path in files:
        source = str(path)
        try:
            doc = read_json(path)
        except AnnotationError as e:
            notes.fail(source, str(e))
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
            notes.fail(source, f"{source}: not a Labelme file (no shapes list); skipped")
            continue
        image_path = str(doc.get("imagePath") or "")
        if video is not None:
            frame = trailing_number(image_path) if image_path else None
            frame = frame if frame is not None else trailing_number(path.stem)
            if frame is None:
                notes.fail(source, f"{source}: no frame number in imagePath {image_path!r} or the file name; skipped")
                continue
            key, media_path, clip = video, video, video.stem
        else:
            frame = 0
            hit = MediaFinder([path.parent, *roots]).find(image_path) if image_path else None
            media_path = hit[0] if hit else None
            key = media_path or path
            clip = Path(image_path).stem if image_path else path.stem
        if key not in items:
            embedded = None
            if media_path is None and doc.get("imageData"):
                try:
                    embedded = base64.b64decode(doc["imageData"], validate=False)
                except (binascii.Error, ValueError):
                    embedded = None
            items[key] = Item(
                safe_id(clip),
                media_path,
                source,
                names=(clip, Path(image_path).name, path.stem),
                embedded=embedded,
                missing="" if media_path or embedded else f"missing image {image_path!r} (and no imageData)",
            )
        item = items[key]
        if video is None and doc.get("imageWidth") and doc.get("imageHeight"):
            item.size = (finite_int(doc["imageWidth"]), finite_int(doc["imageHeight"]))
        for name, on in (doc.get("flags") or {}).items():
            if on:
                item.add_tag(frame, str(name))
        for k, s in enumerate(doc["shapes"], start=1):
            if not isinstance(s, dict):
                continue
            label = str(s.get("label") or "")
            kind = str(s.get("shape_type") or "polygon")
            what = f'shape {k} ({kind} "{label}")'
            try:
                item.add(frame, labelme_shape(s, kind, label, source, what, k))
            except ValueError as e:
                notes.fail(source, f"{source}: {e}; skipped")
    return list(items.values())


def labelme_shape(s: dict[str, Any], kind: str, label: str, source: str, what: str, order: int) -> Shape:
    """One Labelme shape as a ``Shape`` (ValueError for an unknown type or bad points)."""
    if kind not in KINDS:
        raise ValueError(f"{what}: unknown shape_type {kind!r}; supported: {', '.join(KINDS)}")
    if not label:
        raise ValueError(f"{what}: no label")
    pts = xy(s.get("points") or [], source, what)
    need = {"polygon": 3, "rectangle": 2, "circle": 2, "line": 2, "linestrip": 2, "mask": 2}.get(kind, 1)
    if len(pts) < need:
        raise ValueError(f"{what}: needs at least {need} points, got {len(pts)}")
    if kind == "rectangle":
        return Shape("box", label, pts[:2], source, what, order)
    if kind == "circle":
        r = float(np.hypot(*(pts[1] - pts[0])))
        return Shape("ellipse", label, np.array([pts[0], [r, r]]), source, what, order)
    if kind == "mask":
        try:
            raw = base64.b64decode(s.get("mask") or "", validate=False)
            with Image.open(io.BytesIO(raw)) as im:
                bits = np.asarray(im.convert("L")) > 0
        except (OSError, ValueError, binascii.Error):
            raise ValueError(f"{what}: its mask is not a base64 PNG") from None
        left, top = (round(v) for v in pts.min(axis=0))
        return Shape("bitmap", label, pts[:2], source, what, order, data=Bitmap(bits, left, top))
    return Shape(KINDS[kind], label, pts, source, what, order)  # type: ignore[arg-type]
