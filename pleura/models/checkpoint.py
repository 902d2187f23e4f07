"""Reading checkpoint folders (safetensors + JSON, never pickle), including one that a killed save left behind.

A checkpoint folder holds ``model.safetensors`` + ``model.json`` (``pleura.models.save_model``), for
resumable ones the optimizer and training state, and last ``checkpoint.json``, the marker: the size and
sha256 of every other file. ``pleura.train.checkpoint`` writes them so that a kill at any point leaves
either ``NAME`` or a finished copy beside it (``.NAME.tmp-PID``, ``.NAME.old-PID``); :func:`read_checkpoint`
reads ``NAME``, or while it is missing, the newest finished copy, and moves nothing. Inference reads
checkpoints through this module, so it does not depend on training.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from pleura.models.io import load_model

MODEL_FILE = "model.safetensors"
MARKER = "checkpoint.json"  # written last: a folder without it (or whose files differ from it) is unfinished
MARKER_FORMAT = "pleura-checkpoint"
MARKER_VERSION = 1
_KINDS = ("tmp", "old")  # .NAME.tmp-PID: a save in progress; .NAME.old-PID: the folder a save replaces

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks so a large model does not need twice its size in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def leftovers(folder: Path) -> list[Path]:
    """The ``.NAME.tmp-*`` and ``.NAME.old-*`` entries beside ``folder`` that a killed save can leave."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return []
    prefixes = tuple(f".{folder.name}.{kind}-" for kind in _KINDS)
    return sorted(p for p in folder.parent.iterdir() if p.name.startswith(prefixes))


def verify_checkpoint(folder: Path) -> dict[str, Any]:
    """Check that ``folder`` is a finished save: its marker is there and every file has the size and hash it
    lists. Returns the marker; raises ``CheckpointError`` naming the folder and what is wrong."""
    folder = Path(folder)
    marker = folder / MARKER
    if not marker.is_file():
        raise CheckpointError(f"{folder}: no {MARKER}; the save that wrote this folder did not finish")
    try:
        record = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{marker}: unreadable ({err}); the save did not finish") from None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or record.get("format") != MARKER_FORMAT or MODEL_FILE not in files:
        raise CheckpointError(f"{marker}: not a {MARKER_FORMAT} marker listing {MODEL_FILE}")
    for name, info in files.items():
        path = folder / name
        if not isinstance(info, dict) or Path(name).name != name:
            raise CheckpointError(f"{marker}: bad entry for {name!r}")
        if not path.is_file():
            raise CheckpointError(f"{path}: missing, though {MARKER} lists it")
        if path.stat().st_size != info.get("bytes"):
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, {MARKER} says {info.get('bytes')}")
        if file_sha256(path) != info.get("sha256"):
            raise CheckpointError(f"{path}: contents differ from the sha256 in {MARKER}")
    return record


def _finished(path: Path, displaced: bool) -> float | None:
    """When ``path``, a leftover copy, was finished (marker time), or None when it is not a usable checkpoint.

    A displaced (``.old-*``) copy was the checkpoint folder itself, so one without a marker (saved by a pleura
    before markers) still counts when its model loads; a ``.tmp-*`` copy counts only with a valid marker.
    """
    try:
        return float(verify_checkpoint(path).get("written_ns", 0))
    except CheckpointError as err:
        if (path / MARKER).exists() or not displaced:
            logger.info("%s", err)
            return None
    try:
        load_model(path / MODEL_FILE)
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        logger.info("%s: not a usable checkpoint (%s)", path, err)
        return None
    return -1.0  # unmarked: only when no marked copy exists


def find_finished(folder: Path) -> Path | None:
    """The newest finished copy of ``folder`` that a killed save left beside it (read-only), or None."""
    folder = Path(folder)
    old = f".{folder.name}.old-"
    scored = [
        (t, p) for p in leftovers(folder) if p.is_dir() and (t := _finished(p, p.name.startswith(old))) is not None
    ]
    return max(scored)[1] if scored else None


def readable_folder(folder: Path) -> Path:
    """``folder``, or while it is missing after a killed save, the finished copy beside it (nothing is moved)."""
    if folder.exists():
        return folder
    found = find_finished(folder)
    if found is not None:
        logger.warning(
            "%s: missing after an interrupted save; reading %s (resume the run to restore it)", folder, found
        )
        return found
    return folder


def read_checkpoint(folder: Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model and metadata of a checkpoint folder (or of a ``model.safetensors`` path)."""
    path = Path(folder)
    if path.suffix != ".safetensors":
        path = readable_folder(path)
    path = path / MODEL_FILE if path.is_dir() else path
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint (expected a folder with {MODEL_FILE})")
    return load_model(path, map_location=map_location)
