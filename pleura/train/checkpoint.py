"""Training checkpoints as folders of safetensors + JSON that survive a kill at any point; never pickle.

A checkpoint folder holds ``model.safetensors`` + ``model.json`` (``pleura.models.save_model``), for
resumable ones ``optimizer.safetensors`` (every tensor of the optimizer state) + ``optimizer.json`` +
``state.json`` (epoch, step, best score, the metrics log, grad-scaler state), and last ``checkpoint.json``,
the marker: the size and sha256 of every other file. A save writes ``.NAME.tmp-PID`` (marker last), renames
``NAME`` to ``.NAME.old-PID``, renames the temporary folder to ``NAME`` and deletes the old one. A kill
between any two steps is undone by :func:`recover_checkpoint`: with ``NAME`` missing, the newest finished
copy beside it (marker present and every file matching it) becomes ``NAME``; every leftover is deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from pleura.models import load_model, save_model

MODEL_FILE = "model.safetensors"
MARKER = "checkpoint.json"  # written last: a folder without it (or whose files differ from it) is unfinished
MARKER_FORMAT = "pleura-checkpoint"
MARKER_VERSION = 1
_KINDS = ("tmp", "old")  # .NAME.tmp-PID: a save in progress; .NAME.old-PID: the folder a save replaces

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Load what ``optimizer_to_files`` wrote back into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync one file inside a temporary checkpoint folder (the marker, not a rename, finishes it)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (new files, renames) to disk where the OS allows it; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    """sha256 of a file, read in chunks so a large model does not need twice its size in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _side_path(folder: Path, kind: str) -> Path:
    """This process's temporary (``tmp``) or displaced (``old``) copy of ``folder``."""
    return folder.with_name(f".{folder.name}.{kind}-{os.getpid()}")


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
        if _sha256(path) != info.get("sha256"):
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


def recover_checkpoint(folder: Path) -> Path | None:
    """Undo a save that was killed at any point: if ``folder`` is missing, the newest finished copy beside it
    becomes ``folder``; then every leftover copy is deleted. Returns ``folder``, or None when there is none.

    An existing ``folder`` always wins: it only ever gets its name by the rename of a finished copy. Call this
    only where nothing else is saving into ``folder`` (the trainer does, before each save and on resume). A
    kill during recovery is undone by the next recovery.
    """
    folder = Path(folder)
    if not folder.exists():
        found = find_finished(folder)
        if found is not None:
            logger.warning("%s: missing after an interrupted save; restored from %s", folder, found.name)
            try:
                found.rename(folder)
            except OSError as err:
                raise CheckpointError(f"{folder}: cannot restore it from {found.name} ({err})") from None
            _fsync_dir(folder.parent)
    for path in leftovers(folder):
        logger.info("%s: deleting what an interrupted save left", path)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise CheckpointError(f"{path}: cannot delete this leftover of an interrupted save ({err})") from None
    return folder if folder.is_dir() else None


def write_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    metadata: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder so that a kill at any point leaves one :func:`recover_checkpoint` restores:
    a temporary folder finished by its marker, then ``folder -> .old``, ``.tmp -> folder``, delete ``.old``."""
    folder = Path(folder)
    recover_checkpoint(folder)  # a save killed earlier: restore folder and clear its leftovers first
    tmp = _side_path(folder, "tmp")
    tmp.mkdir(parents=True)
    save_model(model, tmp / MODEL_FILE, metadata=metadata)
    names = [MODEL_FILE, Path(MODEL_FILE).with_suffix(".json").name]
    if optimizer is not None:
        tensors, meta = optimizer_to_files(optimizer)
        _write_file(tmp / "optimizer.safetensors", save(tensors))
        _write_file(tmp / "optimizer.json", json.dumps(meta).encode())
        names += ["optimizer.safetensors", "optimizer.json"]
    if state is not None:
        _write_file(tmp / "state.json", json.dumps(state, indent=2).encode())
        names.append("state.json")
    files = {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in names}
    marker = {"format": MARKER_FORMAT, "format_version": MARKER_VERSION, "written_ns": time.time_ns(), "files": files}
    _write_file(tmp / MARKER, (json.dumps(marker, indent=2) + "\n").encode())
    _fsync_dir(tmp)
    old = _side_path(folder, "old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    _fsync_dir(folder.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _readable(folder: Path) -> Path:
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
        path = _readable(path)
    path = path / MODEL_FILE if path.is_dir() else path
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint (expected a folder with {MODEL_FILE})")
    return load_model(path, map_location=map_location)


def read_training_state(
    folder: Path, optimizer: torch.optim.Optimizer, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load the optimizer state of a resumable checkpoint and return its ``state.json``."""
    folder = _readable(Path(folder))
    for name in ("optimizer.safetensors", "optimizer.json", "state.json"):
        if not (folder / name).exists():
            raise CheckpointError(f"{folder / name}: missing; this checkpoint cannot be resumed")
    tensors = load_file(str(folder / "optimizer.safetensors"), device=str(map_location))
    optimizer_from_files(optimizer, tensors, json.loads((folder / "optimizer.json").read_text()))
    return json.loads((folder / "state.json").read_text())
