"""COCO 1.0 instance JSON: ``images``, ``annotations`` (polygons, RLE or boxes) and ``categories``.

Segmentations are polygon lists (each drawn, their union is the object), uncompressed RLE (``counts`` a list)
or compressed RLE (``counts`` the pycocotools string), both column-major over the whole image; an annotation
without a segmentation is drawn as its ``bbox`` (x, y, width, height). pycocotools is not needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pleura.data.annotations.cvat import read_json
from pleura.data.annotations.media import MediaFinder
from pleura.data.annotations.model import AnnotationError, CocoRle, Item, Notes, Shape, finite_int, safe_id, xy


def find_coco(src: Path) -> Path:
    """The COCO JSON: ``src`` itself, or the only ``.json`` in ``src`` or ``src/annotations``."""
    if src.is_file():
        return src
    found = [p for d in (src, src / "annotations") if d.is_dir() for p in sorted(d.glob("*.json"))]
    if len(found) == 1:
        return found[0]
    raise AnnotationError(
        f"{src}: {'several' if found else 'no'} COCO .json files here"
        f"{': pass one of ' + ', '.join(p.name for p in found[:4]) if found else ''}"
    )


def read_coco(src: Path, media: Path | None, notes: Notes) -> list[Item]:
    """Items of a COCO instance JSON (``src``: the file or its folder); images under ``--media`` or beside it."""
    path = find_coco(src)
    source = str(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationError(f"{path}: expected a COCO object with images, annotations and categories")
    cats = {c.get("id"): str(c.get("name")) for c in data.get("categories") or [] if isinstance(c, dict)}
    images = {im.get("id"): im for im in data["images"] if isinstance(im, dict)}
    if media is not None and media.is_file():
        finder = MediaFinder([], video=media)
    else:
        roots = [media] if media is not None else [path.parent, path.parent / "images", path.parent.parent / "images"]
        finder = MediaFinder(roots)
    items: dict[Any, Item] = {}  # media path (or missing name) -> item
    located: dict[Any, tuple[Item, int]] = {}

    def locate(image_id: Any) -> tuple[Item, int]:
        if image_id in located:
            return located[image_id]
        im = images[image_id]
        name = str(im.get("file_name") or image_id)
        hit = finder.find(name)
        key: Any = hit[0] if hit else ("missing", name)
        if key not in items:
            clip = hit[0].stem if hit and finder.video is not None else Path(name).with_suffix("").as_posix()
            items[key] = Item(
                safe_id(clip),
                hit[0] if hit else None,
                source,
                names=(name, Path(name).name),
                missing="" if hit else f"missing image {name}; pass --media DIR (or FILE for a video's frames)",
            )
        item = items[key]
        if finder.video is None and im.get("width") and im.get("height"):
            item.size = (finite_int(im["width"]), finite_int(im["height"]))
        located[image_id] = (item, hit[1] if hit else 0)
        return located[image_id]

    for order, ann in enumerate(data.get("annotations") or [], start=1):
        if not isinstance(ann, dict):
            continue
        aid = ann.get("id", order)
        cat = cats.get(ann.get("category_id"))
        what = f'annotation {aid} ("{cat}")'
        if ann.get("image_id") not in images:
            notes.fail(source, f"{source}: {what}: image_id {ann.get('image_id')!r} is not in images; skipped")
            continue
        if cat is None:
            cat_id = ann.get("category_id")
            notes.fail(source, f"{source}: {what}: category_id {cat_id!r} is not in categories; skipped")
            continue
        item, frame = locate(ann["image_id"])
        occluded = bool((ann.get("attributes") or {}).get("occluded"))
        try:
            for shape in coco_shapes(ann, cat, source, what, order, images[ann["image_id"]], occluded):
                item.add(frame, shape)
        except (ValueError, TypeError) as e:
            notes.fail(source, f"{source}: {e}; skipped")
    return list(items.values())


def coco_shapes(
    ann: dict[str, Any], label: str, source: str, what: str, order: int, image: dict[str, Any], occluded: bool
) -> list[Shape]:
    """The shapes of one COCO annotation: its polygons, its RLE mask, or its box."""
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        size = seg.get("size") or [image.get("height"), image.get("width")]
        h, w = finite_int(size[0]), finite_int(size[1])
        counts = seg.get("counts")
        if not isinstance(counts, str | list) or h <= 0 or w <= 0:
            raise ValueError(f"{what}: RLE needs counts (a string or a list) and size [height, width]")
        rle = CocoRle(counts if isinstance(counts, str) else [int(c) for c in counts], h, w)
        box = np.array([[0, 0], [w, h]], dtype=float)
        return [Shape("coco_rle", label, box, source, what, order, 0.0, occluded, rle)]
    if isinstance(seg, list) and seg:
        polys = seg if isinstance(seg[0], list) else [seg]
        out = []
        for k, poly in enumerate(polys):
            pts = xy(poly, source, what)
            if len(pts) < 3:
                raise ValueError(f"{what}: polygon {k} has {len(pts)} points, needs at least 3")
            out.append(Shape("polygon", label, pts, source, what, order, 0.0, occluded))
        return out
    bbox = ann.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4:
        x, y, w, h = (float(v) for v in bbox)
        pts = xy([[x, y], [x + w, y + h]], source, what)
        return [Shape("box", label, pts, source, what, order, 0.0, occluded)]
    raise ValueError(f"{what}: no segmentation (polygons or RLE) and no bbox")
