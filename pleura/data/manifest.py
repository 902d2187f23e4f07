"""Read a manifest dataset: a folder holding ``manifest.csv``, one row per frame.

Path columns (``image``, ``mask_<schema>``) are relative to the folder. Only ``id``, ``image``,
``diagnosis`` and ``clip_id`` are required; ``patient_id`` defaults to ``clip_id``, a ``probe`` is read as a
``pleura.labels.Probe`` (``convex`` becomes ``curvilinear``), and every other column (masks, simulator
parameters) is optional and passed through as a string.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from pleura.labels import Probe

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "image", "diagnosis", "clip_id")


class ManifestError(ValueError):
    """A manifest dataset that cannot be read: a missing or malformed ``manifest.csv`` or a file it names."""


def manifest_path(path: str | Path) -> Path:
    """The ``manifest.csv`` of ``path``, which is either a dataset folder or the csv file itself."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """Read and validate a manifest.

    Args:
        path: the dataset folder or its ``manifest.csv``.

    Returns:
        One dict per row, column name to string value, in file order; ``patient_id`` is filled from
        ``clip_id`` where the column is absent or the cell empty; a non-empty ``probe`` is a ``Probe``.

    Raises:
        ManifestError: one line naming the file and the problem (no such file, no rows, missing
            required columns, empty required cells, duplicate ids, an unknown probe).

    Example:
        >>> rows = read_manifest("data/sim")  # doctest: +SKIP
        >>> rows[0]["image"]  # doctest: +SKIP
        'images/c0000_f000.png'
    """
    csv_path = manifest_path(path)
    if not csv_path.is_file():
        hint = f"the folder has no {MANIFEST_NAME}" if csv_path.parent.is_dir() else "no such file or folder"
        raise ManifestError(f"{csv_path}: {hint}; pass a dataset folder holding {MANIFEST_NAME} or the csv itself")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        if not columns:
            raise ManifestError(f"{csv_path}: file is empty; expected a header row with {', '.join(REQUIRED_COLUMNS)}")
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(
                f"{csv_path}: missing required column(s) {', '.join(missing)}; "
                f"a manifest needs {', '.join(REQUIRED_COLUMNS)}"
            )
        reader.fieldnames = columns
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise ManifestError(f"{csv_path}: no rows below the header; a manifest needs one row per frame")

    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        empty = [c for c in REQUIRED_COLUMNS if not row[c]]
        if empty:
            raise ManifestError(f"{csv_path}: line {line} has empty {', '.join(empty)}; every row needs a value there")
        if row["id"] in seen:
            raise ManifestError(
                f"{csv_path}: duplicate id {row['id']!r} on lines {seen[row['id']]} and {line}; ids must be unique"
            )
        seen[row["id"]] = line
        if not row.get("patient_id"):
            row["patient_id"] = row["clip_id"]
        if row.get("probe"):
            try:
                row["probe"] = Probe.parse(row["probe"])
            except ValueError as e:
                raise ManifestError(f"{csv_path}: line {line}: {e}, or leave the cell empty") from None
    logger.debug("read %d rows from %s", len(rows), csv_path)
    return rows
