"""Training checkpoints as folders of safetensors + JSON that survive a kill at any point; never pickle.

A checkpoint folder holds ``model.safetensors`` + ``model.json`` (``pleura.models.save_model``), for
resumable ones ``optimizer.safetensors`` (every tensor of the optimizer state) + ``optimizer.json`` +
``state.json`` (epoch, step, best score, the metrics log, grad-scaler state), and last ``checkpoint.json``,
the marker: the size and sha256 of every other file. A save writes ``.NAME.tmp-PID`` (marker last), renames
``NAME`` to ``.NAME.old-PID``, renames the temporary folder to ``NAME`` and deletes the old one. A kill
between any two steps is undone by :func:`recover_checkpoint`: with ``NAME`` missing, the newest finished
copy beside it (marker present and every file matching it) becomes ``NAME``; every leftover is deleted.
Reading a checkpoint (and checking its marker) is ``pleura.models.checkpoint``, below training.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from pleura.models import save_model
from pleura.models.checkpoint import (
    MARKER,
    MARKER_FORMAT,
    MARKER_VERSION,
    MODEL_FILE,
    CheckpointError,
    file_sha256,
    find_finished,
    leftovers,
    readable_folder,
)

logger = logging.getLogger(__name__)


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


def _side_path(folder: Path, kind: str) -> Path:
    """This process's temporary (``tmp``) or displaced (``old``) copy of ``folder``."""
    return folder.with_name(f".{folder.name}.{kind}-{os.getpid()}")


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
    files = {n: {"bytes": (tmp / n).stat().st_size, "sha256": file_sha256(tmp / n)} for n in names}
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


def read_training_state(
    folder: Path, optimizer: torch.optim.Optimizer, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load the optimizer state of a resumable checkpoint and return its ``state.json``."""
    folder = readable_folder(Path(folder))
    for name in ("optimizer.safetensors", "optimizer.json", "state.json"):
        if not (folder / name).exists():
            raise CheckpointError(f"{folder / name}: missing; this checkpoint cannot be resumed")
    tensors = load_file(str(folder / "optimizer.safetensors"), device=str(map_location))
    optimizer_from_files(optimizer, tensors, json.loads((folder / "optimizer.json").read_text()))
    return json.loads((folder / "state.json").read_text())
