"""Folders of mask PNGs: one mask per labelled image or video frame, indexed or RGB.

Layout: masks under ``SRC/masks`` (or ``SRC`` itself), media under ``--media`` (or ``SRC/images``, or
``SRC``). A mask ``scan1.png`` (or ``scan1_mask.png``) belongs to the image ``scan1.*``; a mask
``clip/000012.png`` or ``clip_000012.png`` to frame 12 of the video ``clip.*``. Indexed masks (palette,
grey or 16-bit) map each value to a tool label through the label map's ``values`` (default: the value
itself, as a string: ``{"labels": {"1": "a_line"}}``); RGB masks through its ``colors``. Value 0 and black
are background unless mapped. Every mask file marks its frame as labelled, even an all-background one.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from pleura.data.annotations.media import MediaFinder
from pleura.data.annotations.model import AnnotationError, Item, LabelMap, LabelmapRef, Notes, Shape, safe_id

MASK_SUFFIX = re.compile(r"[_\-.](mask|masks|label|labels|seg|gt)$", re.IGNORECASE)


def read_png_labels(path: Path, lmap: LabelMap) -> np.ndarray:
    """A mask PNG as indices ``(H, W)`` or RGB ``(H, W, 3)``: RGB when the map has ``colors``, else indices."""
    with Image.open(path) as im:
        if lmap.colors:
            return np.asarray(im.convert("RGB"))
        if im.mode in ("RGB", "RGBA"):
            raise ValueError(f"{path}: an RGB mask, but the label map has no colors; add colors to {lmap.source}")
        return np.asarray(im if im.mode in ("P", "L", "I", "I;16") or im.mode.startswith("I;") else im.convert("L"))


def read_mask_folder(src: Path, media: Path | None, lmap: LabelMap, notes: Notes) -> list[Item]:
    """Items of a folder of mask PNGs and the media they label."""
    mask_root = src / "masks" if (src / "masks").is_dir() else src
    if not mask_root.is_dir():
        raise AnnotationError(f"{src}: not a folder; pass the folder holding masks/ (and images/)")
    video = media if media is not None and media.is_file() else None
    media_roots = [media] if media is not None and media.is_dir() else [src / "images", src]
    same = mask_root.resolve() in [r.resolve() for r in media_roots if r.is_dir()]
    pngs = [p for p in sorted(mask_root.rglob("*.png")) if not same or MASK_SUFFIX.search(p.stem)]
    if not pngs:
        hint = " (masks beside their images need a _mask suffix: scan1_mask.png)" if same else ""
        raise AnnotationError(f"{mask_root}: no mask PNGs here{hint}")
    roots = [] if video else [r for r in media_roots if r.resolve() != mask_root.resolve()]
    finder = MediaFinder(roots, video, exclude=None if same else mask_root)
    items: dict[Path | str, Item] = {}
    for path in pngs:
        source = str(path)
        rel = MASK_SUFFIX.sub("", path.relative_to(mask_root).with_suffix("").as_posix())
        hit = finder.find(rel)
        key: Path | str = hit[0] if hit else rel
        if key not in items:
            clip = hit[0].stem if hit and (video or hit[1]) else rel
            missing = "" if hit else f"no image or video for mask {path.name} (looked for {rel}.* under the media)"
            items[key] = Item(safe_id(clip), hit[0] if hit else None, source, names=(clip, rel), missing=missing)
        item, frame = items[key], hit[1] if hit else 0
        try:
            labels = read_png_labels(path, lmap)
        except (OSError, ValueError) as e:
            notes.fail(source, str(e) if source in str(e) else f"{source}: cannot read the mask ({e}); skipped")
            continue
        item.labelled.add(frame)
        item.size = (labels.shape[1], labels.shape[0])
        for value, name in _present(labels, lmap):
            item.add(frame, Shape("labelmap", name, np.zeros((0, 2)), source, f'mask value {value} "{name}"',
                                  data=LabelmapRef(path, value)))  # fmt: skip
    return list(items.values())


def _present(labels: np.ndarray, lmap: LabelMap) -> list[tuple[int | tuple[int, int, int], str]]:
    """(value, tool label) of every non-background value or colour in a mask."""
    out: list[tuple[int | tuple[int, int, int], str]] = []
    if labels.ndim == 3:
        colours = np.unique(labels.reshape(-1, 3), axis=0)
        for c in map(tuple, colours.tolist()):
            name = lmap.colors.get(c)  # type: ignore[arg-type]
            if name is None and c == (0, 0, 0):
                continue
            out.append((c, name or "#{:02x}{:02x}{:02x}".format(*c)))  # type: ignore[arg-type]
        return out
    for v in np.unique(labels).tolist():
        name = lmap.values.get(int(v)) or (str(v) if lmap.values == {} else None)
        if v == 0 and int(v) not in lmap.values and "0" not in lmap.labels:
            continue
        out.append((int(v), name or f"value {v}"))
    return out
