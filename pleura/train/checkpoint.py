"""Training checkpoints as folders of safetensors + JSON, replaced atomically; never pickle.

A checkpoint folder holds ``model.safetensors`` + ``model.json`` (``pleura.models.save_model``), and for
resumable ones ``optimizer.safetensors`` (every tensor of the optimizer state) + ``state.json`` (epoch,
step, best score, optimizer hyperparameters, grad-scaler state). A folder is written under a temporary
name and renamed into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pleura.models import load_model, save_model

MODEL_FILE = "model.safetensors"


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


def write_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    metadata: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then rename over the old one)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, tmp / MODEL_FILE, metadata=metadata)
    if optimizer is not None:
        tensors, meta = optimizer_to_files(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
    if state is not None:
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def read_checkpoint(folder: Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model and metadata of a checkpoint folder (or of a ``model.safetensors`` path)."""
    path = Path(folder)
    path = path / MODEL_FILE if path.is_dir() else path
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint (expected a folder with {MODEL_FILE})")
    return load_model(path, map_location=map_location)


def read_training_state(
    folder: Path, optimizer: torch.optim.Optimizer, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load the optimizer state of a resumable checkpoint and return its ``state.json``."""
    folder = Path(folder)
    for name in ("optimizer.safetensors", "optimizer.json", "state.json"):
        if not (folder / name).exists():
            raise CheckpointError(f"{folder / name}: missing; this checkpoint cannot be resumed")
    tensors = load_file(str(folder / "optimizer.safetensors"), device=str(map_location))
    optimizer_from_files(optimizer, tensors, json.loads((folder / "optimizer.json").read_text()))
    return json.loads((folder / "state.json").read_text())
