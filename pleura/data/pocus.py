"""Import the POCUS lung-ultrasound dataset (Born et al. 2021) into a pleura manifest dataset.

The source folder holds clips and images, one per row of its ``manifest.csv`` (columns ``file``, ``cls``,
``type``, ``probe``, ``patient_id``, ``source_id``, ``license``, the pathology flags ...). Each file is read
(``pleura.data.readers``), frames are sampled at ``rate`` per second and capped per clip as the dataset's
authors do (3 per second, at most 30), cleaned (``pleura.data.cleaning``: scan area found, overlays
removed, resized keeping the aspect ratio) and written as PNG with one manifest row per frame, grouped by
the upstream ``patient_id``. A file that cannot be read is reported and skipped; the rest goes on. The
output folder appears only when complete.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pleura import __version__
from pleura.atomic import staged_folder
from pleura.data.cleaning import clean_clip
from pleura.data.readers import ReadError, iter_frames
from pleura.labels import PROBES, Probe
from pleura.parallel import parallel_map

logger = logging.getLogger(__name__)

#: upstream class folder -> pleura diagnosis; the other classes are kept out of the 3-class task
CLASS_MAP = {"covid": "covid", "pneumonia": "pneumonia", "normal": "normal"}
OTHER_CLASSES = ("viral_pneumonia", "uncertain")
SOURCE_COLUMNS = ("file", "cls", "type", "probe", "patient_id")
#: upstream columns carried into every frame row
CARRIED = ("source_id", "license", "source_url", "b_lines", "a_lines", "consolidations", "effusion", "pleural_irreg")
MANIFEST_COLUMNS = [
    "id", "image", "diagnosis", "clip_id", "patient_id", "probe", "probe_detected", "source_class", "file",
    "media", "frame", "time_s", *CARRIED, "source",
]  # fmt: skip
UPSTREAM = "https://github.com/jannisborn/covid19_ultrasound (folder data/; Born et al., Appl. Sci. 11:672, 2021)"


class PocusError(ValueError):
    """The POCUS source folder or the output folder cannot be used."""


@dataclass
class PocusImportConfig:
    """How frames are drawn from the POCUS files."""

    rate: float = 3.0  # frames per second sampled from clips (Born et al. sample 3 per second)
    max_per_clip: int = 30  # at most this many frames per clip (Born et al.: 30), evenly spread in time
    size: int = 256  # side of the square, cleaned output frames
    include_other: bool = False  # also import viral_pneumonia and uncertain files (not in the 3-class task)
    workers: int = 0  # processes; 0 means all cores

    def validate(self) -> None:
        """Check the options before any file is read; raises ``PocusError`` naming the bad option."""
        if not self.rate > 0:
            raise PocusError(f"--rate must be positive, got {self.rate}")
        if self.max_per_clip < 1:
            raise PocusError(f"--max-per-clip must be at least 1, got {self.max_per_clip}")
        if not 32 <= self.size <= 2048:
            raise PocusError(f"--size must be between 32 and 2048 pixels, got {self.size}")


@dataclass
class ImportReport:
    """What an import did: frames written per class and the files it could not read."""

    out: Path
    frames: int = 0
    files: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, one-line reason)
    excluded: int = 0  # files of classes outside the task, left out on purpose


def read_source_manifest(src: str | Path) -> list[dict[str, str]]:
    """Rows of the POCUS ``manifest.csv`` in ``src``, checked for the columns the import needs."""
    path = Path(src) / "manifest.csv"
    if not path.is_file():
        raise PocusError(f"{path}: not found; pass the POCUS folder that holds manifest.csv and the class folders")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in SOURCE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise PocusError(f"{path}: missing column(s) {', '.join(missing)}; is this the POCUS manifest?")
        rows = [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    if not rows:
        raise PocusError(f"{path}: no rows")
    return rows


def clip_id_of(row: dict[str, str]) -> str:
    """A stable, file-system-safe clip id from the source path (``covid/Cov-7453.mp4`` -> ``covid_Cov-7453``)."""
    stem = row["file"].rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.replace("/", "_"))


def select_files(rows: Sequence[dict[str, str]], cfg: PocusImportConfig) -> list[dict[str, str]]:
    """The source rows an import reads: the 3-class task's classes, plus viral/uncertain if asked for."""
    keep = set(CLASS_MAP) | (set(OTHER_CLASSES) if cfg.include_other else set())
    return [r for r in rows if r["cls"] in keep]


def _import_file(task: tuple[Path, dict[str, str], PocusImportConfig, Path]) -> tuple[list[dict[str, Any]], str]:
    """Read, sample, clean and write one source file (runs in a worker); returns its rows or an error line."""
    src, row, cfg, tmp = task
    path = src / row["file"]
    clip_id = clip_id_of(row)
    try:  # upstream says "convex" where pleura (and the simulator) say curvilinear; a blank stays blank
        probe: Probe | str = Probe.parse(row["probe"]) if row["probe"] else ""
    except ValueError as e:
        return [], f"{path}: {e}"
    try:
        frames = sample_evenly(list(iter_frames(path, fps=_rate(row, cfg))), cfg.max_per_clip)
        if not frames:
            raise ReadError(f"{path}: no frames could be decoded")
        cleaned, area = clean_clip(np.stack([f.image for f in frames]), cfg.size)
    except (ReadError, ValueError, OSError) as e:
        return [], str(e).splitlines()[0] if str(e) else f"{path}: {type(e).__name__}"
    rows = []
    diagnosis = CLASS_MAP.get(row["cls"], row["cls"])
    for frame, image in zip(frames, cleaned, strict=True):
        fid = f"{clip_id}_{frame.index:05d}"
        Image.fromarray(image, mode="L").save(tmp / "images" / f"{fid}.png", compress_level=3)
        rows.append(
            {
                "id": fid, "image": f"images/{fid}.png", "diagnosis": diagnosis, "clip_id": clip_id,
                "patient_id": f"pocus-{row['patient_id'] or clip_id}",
                "probe": probe, "probe_detected": area.probe, "source_class": row["cls"],
                "file": row["file"], "media": row.get("type", ""), "frame": frame.index,
                "time_s": round(frame.time_s, 3), **{k: row.get(k, "") for k in CARRIED}, "source": "pocus",
            }
        )  # fmt: skip
    return rows, ""


def _rate(row: dict[str, str], cfg: PocusImportConfig) -> float:
    """The sampling rate, lowered for long clips so that about ``max_per_clip`` frames span the whole clip
    (sampling stays streamed: never more than the cap's worth of frames is held)."""
    try:
        seconds = float(row.get("n_frames") or 0) / float(row.get("fps") or 0)
    except (ValueError, ZeroDivisionError):
        return cfg.rate
    return min(cfg.rate, cfg.max_per_clip / seconds) if seconds > 0 else cfg.rate


def sample_evenly(items: list, cap: int) -> list:
    """At most ``cap`` of ``items``, evenly spread, first and last kept (the whole list when it is short)."""
    if len(items) <= cap:
        return items
    keep = np.unique(np.round(np.linspace(0, len(items) - 1, cap)).astype(int))
    return [items[i] for i in keep]


def import_pocus(
    src: str | Path,
    out: str | Path,
    cfg: PocusImportConfig | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    files: Sequence[str] | None = None,
) -> ImportReport:
    """Import the POCUS folder ``src`` into the manifest dataset ``out``.

    Args:
        src: the POCUS folder (``manifest.csv`` plus class folders), read in place and never copied.
        out: output dataset folder; replaced only when the new one is complete.
        cfg: sampling, size and class choices.
        overwrite: replace a non-empty ``out``.
        progress: called with 1 after each source file, for a progress bar.
        files: import only these ``file`` entries of the source manifest (tests, subsets).

    Returns:
        The report; failed files are listed there and in ``import.json`` with a one-line reason each.
    """
    cfg = cfg or PocusImportConfig()
    cfg.validate()
    src, out = Path(src), Path(out)
    source_rows = read_source_manifest(src)
    if files is not None:
        wanted = set(files)
        source_rows = [r for r in source_rows if r["file"] in wanted]
    chosen = select_files(source_rows, cfg)
    report = ImportReport(out=out, files=len(chosen), excluded=len(source_rows) - len(chosen))
    all_rows: list[dict[str, Any]] = []
    with staged_folder(out, overwrite, ["images"], error=PocusError) as tmp:
        tasks = [(src, r, cfg, tmp) for r in chosen]
        for (_, row, _, _), (rows, error) in zip(
            tasks, parallel_map(_import_file, tasks, cfg.workers or os.cpu_count() or 1), strict=True
        ):
            if error:
                logger.warning("skipped %s", error)
                report.failed.append((row["file"], error))
            all_rows.extend(rows)
            if progress is not None:
                progress(1)
        if not all_rows:
            raise PocusError(f"{src}: no frame could be imported ({len(report.failed)} file(s) failed)")
        with open(tmp / "manifest.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(all_rows)
        counts = Counter(r["diagnosis"] for r in all_rows)
        report.frames, report.per_class = len(all_rows), dict(sorted(counts.items()))
        meta = {
            "pleura_version": __version__,
            "source": "pocus",
            "source_folder": str(src.resolve()),
            "upstream": UPSTREAM,
            "config": asdict(cfg),
            "files": sorted(files) if files is not None else None,  # a subset, when one was asked for
            "frames": report.frames,
            "frames_per_class": report.per_class,
            "clips": len({r["clip_id"] for r in all_rows}),
            "patients": len({r["patient_id"] for r in all_rows}),
            "failed": [{"file": f, "error": e} for f, e in report.failed],
            "excluded_files": report.excluded,
            "probe_agreement": probe_agreement(all_rows),
        }
        (tmp / "import.json").write_text(json.dumps(meta, indent=2) + "\n")
    return report


def probe_agreement(rows: Sequence[dict[str, Any]]) -> float | None:
    """Fraction of clips whose probe type detected from the image matches the source's label."""
    clips = {r["clip_id"]: (r["probe"], r["probe_detected"]) for r in rows}
    labelled = [a == b for a, b in clips.values() if a in PROBES]
    return float(np.mean(labelled)) if labelled else None


def is_pocus_source(path: str | Path) -> bool:
    """Whether ``path`` is a POCUS source folder (its manifest has ``file`` and ``cls`` columns)."""
    path = Path(path) / "manifest.csv"
    if not path.is_file():
        return False
    with open(path, newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), [])
    return "file" in header and "cls" in header
