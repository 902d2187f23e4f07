"""Save and load models as ``.safetensors`` weights plus a ``.json`` sidecar that rebuilds the architecture.

``model.safetensors`` holds the state dict (no pickle, so loading runs no code); ``model.json`` holds::

    {"format": "pleura-model", "format_version": 2, "pleura_version": "0.3.0",
     "architecture": "unet", "config": {...UNetConfig fields...}, "metadata": {...caller's...},
     "sha256": "<digest of the weights file and of every other field of this record>"}

The digest covers the weights *and* the architecture, config and metadata, so swapping the class names or
editing the temperature of a saved model is refused like a changed weights file. Loading checks the digest,
then every known field with bounds, then compares the config with the tensor shapes in the weights file's
header on a "meta" device (nothing allocated), and only then builds the model: a config asking for a huge
network is refused before any memory is taken. Both files are written atomically (a temporary file in the
same folder, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from pleura.atomic import write_bytes

FORMAT = "pleura-model"
FORMAT_VERSION = 2  # 2: the digest covers config and metadata too (version 1 covered only the weights)
TEMPERATURE_RANGE = (0.01, 100.0)  # a calibration temperature outside this is a broken or edited file
IMAGE_SIDE_RANGE = (16, 4096)  # frame side a saved model may declare, in pixels
WEIGHTS_SUFFIX = ".safetensors"


def _registry() -> dict:
    from pleura.models import MODELS  # the registry lives in the package; imported late to avoid a cycle

    return MODELS


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".json":  # the sidecar names the same model
        path = path.with_suffix(WEIGHTS_SUFFIX)
    if path.suffix != WEIGHTS_SUFFIX:
        raise ValueError(f"model path should end in {WEIGHTS_SUFFIX}, got {str(path)!r}; e.g. {path.stem}.safetensors")
    return path, path.with_suffix(".json")


def save_model(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``model``'s weights to ``path`` (``.safetensors``) and its config to ``path.with_suffix(".json")``.

    Args:
        model: a registered model (see ``pleura.models.MODELS``), e.g. a :class:`~pleura.models.UNet`.
        path: weights file, ending in ``.safetensors``; its folder is created if missing.
        metadata: JSON-serialisable facts to keep beside the weights (schema, epoch, metrics, ...).

    Returns:
        The weights path.

    Example:
        >>> save_model(model, "runs/a/model.safetensors", {"schema": "dense", "epoch": 12})
    """
    from pleura import __version__

    weights_path, json_path = _paths(path)
    names = [name for name, (cls, _) in _registry().items() if type(model) is cls]
    if not names:
        valid = ", ".join(f"{name} ({cls.__name__})" for name, (cls, _) in _registry().items())
        raise TypeError(f"save_model cannot save a {type(model).__name__}; registered architectures: {valid}")
    # safetensors wants dense, contiguous CPU tensors; channels-last weights are stored in the standard layout.
    tensors = {k: v.detach().to("cpu", copy=False).contiguous() for k, v in model.state_dict().items()}
    from safetensors.torch import save

    # one header entry only: safetensors writes its metadata map in hash order, so two entries would make the
    # bytes differ from save to save; pleura's format lives in the JSON sidecar
    blob = save(tensors, metadata={"format": "pt"})
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pleura_version": __version__,
        "architecture": names[0],
        "config": model.config.to_dict(),
        "metadata": metadata or {},
    }
    try:
        record = json.loads(json.dumps(record, allow_nan=False))  # as it will be read back (tuples as lists)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"save_model: metadata should be JSON-serialisable (str, numbers, lists, dicts): {err}"
        ) from None
    validate_metadata(record["metadata"], record["config"], weights_path.with_suffix(".json"))
    record["sha256"] = digest(blob, record)  # a changed weights file, config or metadata is refused
    text = json.dumps(record, indent=2) + "\n"
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(weights_path, blob)
    write_bytes(json_path, text.encode())
    return weights_path


def digest(weights: bytes, record: dict) -> str:
    """SHA-256 over the weights file and the record's fields other than the digest itself, canonically encoded."""
    fields_ = {k: v for k, v in record.items() if k != "sha256"}
    canonical = json.dumps(fields_, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return hashlib.sha256(hashlib.sha256(weights).digest() + canonical).hexdigest()


def _number(meta: dict, key: str, low: float, high: float, where: Path) -> None:
    value = meta.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{where}: metadata {key!r} should be a number in [{low}, {high}], got {value!r}")


def validate_metadata(meta: dict, config: dict, where: Path) -> None:
    """Check the metadata fields pleura itself reads (temperature, class names, schema, image size) with bounds.

    Other keys are the caller's and pass unchecked; a field that disagrees with the config is refused.
    """
    _number(meta, "temperature", *TEMPERATURE_RANGE, where)
    names = meta.get("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{where}: metadata 'class_names' should be a list of names, got {names!r}")
        if "class_names" in config and list(config["class_names"]) != names:
            raise ValueError(
                f"{where}: metadata class_names {names} differ from the config's {list(config['class_names'])}"
            )
    schema = meta.get("schema")
    if schema is not None:
        from pleura.labels import SCHEMAS

        own = (config.get("unet") or config).get("schema")
        if schema not in SCHEMAS or (own is not None and own != schema):
            raise ValueError(
                f"{where}: metadata schema {schema!r} is unknown or differs from the config's {own!r}; "
                f"schemas: {', '.join(SCHEMAS)}"
            )
    size = meta.get("image_size")
    if size is not None:
        low, high = IMAGE_SIDE_RANGE
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in size)
        ):
            raise ValueError(f"{where}: metadata image_size should be [height, width] in {low}..{high}, got {size!r}")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _read_record(json_path: Path) -> dict:
    if not json_path.is_file():
        raise FileNotFoundError(
            f"{json_path}: model config not found; save_model writes it beside the weights, so copy both files"
        )
    try:
        record = json.loads(json_path.read_text(), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{json_path}: not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        got = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{json_path}: format is {got!r}, expected {FORMAT!r} (a file written by save_model)")
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{json_path}: format_version {record.get('format_version')!r} is not supported; this pleura reads "
            f"version {FORMAT_VERSION} (the file says pleura {record.get('pleura_version')!r}); use that version, "
            "or export the model again with this one"
        )
    for key, kind in (("architecture", str), ("config", dict), ("metadata", dict), ("sha256", str)):
        if not isinstance(record.get(key), kind):
            raise ValueError(f"{json_path}: {key!r} should be a {kind.__name__}, got {record.get(key)!r}")
    return record


def _check_weights(weights_path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming the keys or shapes where ``state`` differs from the model's ``expected``."""
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} is {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} for the config"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            problems.append(f"{what}: {', '.join(items[:5])}{more}")
    if problems:
        raise ValueError(
            f"{weights_path}: weights do not match the config in {weights_path.with_suffix('.json')} ("
            + "; ".join(problems)
            + "); the two files come from different models, keep the pair save_model wrote together"
        )


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model` and load its weights; no pickle is involved.

    Args:
        path: the ``.safetensors`` weights file (or its ``.json`` sidecar).
        map_location: device to put the model on.

    Returns:
        ``(model, metadata)``: the model in eval mode, and the ``metadata`` dict given to ``save_model``.

    Example:
        >>> model, meta = load_model("runs/a/model.safetensors")
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    weights_path, json_path = _paths(path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: model weights not found")
    record = _read_record(json_path)
    blob = weights_path.read_bytes()
    if digest(blob, record) != record["sha256"]:
        raise ValueError(
            f"{weights_path}: the weights or {json_path.name} do not match the checksum in {json_path.name} (a file "
            "was changed or swapped after saving); refusing to load it"
        )
    registry = _registry()
    if record["architecture"] not in registry:
        raise ValueError(f"{json_path}: unknown architecture {record['architecture']!r}; valid: {', '.join(registry)}")
    model_cls, config_cls = registry[record["architecture"]]
    valid_fields = [f.name for f in fields(config_cls)]
    unknown = sorted(set(record["config"]) - set(valid_fields))
    if unknown:
        raise ValueError(f"{json_path}: config has unknown fields {unknown}; valid: {', '.join(valid_fields)}")
    try:
        config = config_cls(**record["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{json_path}: invalid config: {err}") from None
    validate_metadata(record["metadata"], record["config"], json_path)
    try:
        state = load(blob)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({err})") from None
    with torch.device("meta"):  # shapes only: a config that asks for a huge network allocates nothing here
        skeleton = model_cls(config)
    _check_weights(weights_path, state, skeleton.state_dict())
    model = model_cls(config)
    model.load_state_dict(state)  # copies into the parameters, keeping their (channels-last) layout
    return model.to(map_location).eval(), record["metadata"]
