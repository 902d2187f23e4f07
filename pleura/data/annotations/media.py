"""Find the media an annotation names: an image file, or a frame of a video.

Annotation tools name frames in several ways: the image's path (``images/scan1.png``), a bare stem
(``frame_000012`` in CVAT exports of a video task), or a video and a frame number. ``MediaFinder`` indexes
the media folders once and answers ``(file, frame index)`` for a name, or None.
"""

from __future__ import annotations

import re
from pathlib import Path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".dcm", ".dicom")
VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".avi", ".mpeg", ".mpg", ".mkv", ".webm", ".wmv", ".ogv", ".dcm", ".dicom")
_TRAILING = re.compile(r"(\d+)$")


def trailing_number(name: str) -> int | None:
    """The number at the end of a file stem (``frame_000012.png`` -> 12), or None."""
    m = _TRAILING.search(Path(name).stem if "." in Path(name).name else Path(name).name)
    return int(m.group(1)) if m else None


def is_video_name(path: Path) -> bool:
    """Whether ``path`` names a video by its extension (``VIDEO_EXTS``, any case); the file is not opened."""
    return path.suffix.lower() in VIDEO_EXTS


class MediaFinder:
    """Looks names up under media folders, or maps every name to a frame of one video."""

    def __init__(self, roots: list[Path], video: Path | None = None, exclude: Path | None = None) -> None:
        self.roots = [r for r in roots if r.is_dir()]
        self.video = video  # a single video every frame name refers to (CVAT video tasks, --media FILE)
        self.exclude = exclude.resolve() if exclude is not None else None  # a folder never searched (the masks)
        self._stems: dict[str, list[Path]] | None = None

    def _index(self) -> dict[str, list[Path]]:
        if self._stems is None:
            self._stems = {}
            for root in self.roots:
                for p in sorted(root.rglob("*")):
                    if self.exclude is not None and self.exclude in p.resolve().parents:
                        continue
                    if p.is_file() and not p.name.startswith("."):
                        rel = p.relative_to(root).with_suffix("").as_posix()
                        for key in {rel, p.stem}:
                            self._stems.setdefault(key, []).append(p)
        return self._stems

    def find(self, name: str, frame: int | None = None) -> tuple[Path, int] | None:
        """``(file, frame index)`` for an annotated frame called ``name``; ``frame`` is the tool's frame number."""
        if self.video is not None:
            index = frame if frame is not None else trailing_number(name)
            return (self.video, index) if index is not None else None
        clean = name.replace("\\", "/").lstrip("/")
        for root in self.roots:
            for cand in (root / clean, root / Path(clean).name):
                if cand.is_file() and not (self.exclude is not None and self.exclude in cand.resolve().parents):
                    return cand, 0
        stems = self._index()
        rel = Path(clean).with_suffix("").as_posix() if Path(clean).suffix else clean
        for key in (rel, Path(rel).name):
            hits = [p for p in stems.get(key, []) if p.suffix.lower() in IMAGE_EXTS or not p.suffix]
            if hits:
                return hits[0], 0
        # a frame of a video: "clip/000012", "clip_000012", "clip_frame_000012"
        number = trailing_number(rel)
        if number is not None:
            head = re.sub(r"[_\-. ]*(frame)?[_\-. ]*\d+$", "", rel)
            for key in (head, Path(head).name, Path(rel).parent.as_posix()):
                videos = [p for p in stems.get(key, []) if is_video_name(p)] if key and key != "." else []
                if videos:
                    return videos[0], number
        return None

    def videos(self) -> list[Path]:
        """The video files under the media folders."""
        return sorted({p for ps in self._index().values() for p in ps if is_video_name(p)})
