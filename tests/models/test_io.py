"""save_model / load_model: safetensors + JSON round trip, the on-disk format, and the errors on tampered files."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pleura import __version__
from pleura.models import UNet, UNetConfig, create_model, load_model, save_model
from pleura.models.io import digest


def _model(**fields) -> UNet:
    torch.manual_seed(0)
    model = create_model("unet", **{"width": 4, "depth": 2, **fields})
    with torch.no_grad():  # non-trivial norm statistics, so the buffers are part of the round trip
        model(torch.randn(4, model.config.in_channels, 32, 32))
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[UNet, Path]:
    model = _model(schema="dense")
    return model, save_model(model, tmp_path / "run" / "model.safetensors", {"epoch": 3, "val_dice": 0.5})


def _edit_json(weights: Path, resign: bool = True, **changes) -> Path:
    """Change fields of the sidecar; ``resign`` recomputes the digest, as someone forging a file would, so the
    checks behind the digest are tested too."""
    json_path = weights.with_suffix(".json")
    record = json.loads(json_path.read_text())
    for key, value in changes.items():
        for part in ("config_", "metadata_"):
            if key.startswith(part):
                record[part[:-1]][key.removeprefix(part)] = value
                break
        else:
            record[key] = value
    if resign and "NaN" not in json.dumps(record):  # a NaN cannot be signed; the file is refused before that
        record["sha256"] = digest(weights.read_bytes(), record)
    json_path.write_text(json.dumps(record))
    return json_path


@pytest.mark.parametrize(
    "fields",
    [
        dict(norm="batch", upsample="transpose"),
        dict(norm="group", upsample="bilinear", depth=3, width=8, num_classes=4),
        dict(norm="instance", upsample="transpose", width=32, depth=1),
    ],
    ids=["batch-transpose", "group-bilinear", "instance-w32"],
)
def test_round_trip_gives_identical_outputs(tmp_path, fields):
    model = _model(**fields)
    path = save_model(model, tmp_path / "m.safetensors", {"note": "x"})
    loaded, metadata = load_model(path)
    assert metadata == {"note": "x"}
    assert isinstance(loaded, UNet) and loaded.config == model.config and not loaded.training
    x = torch.randn(2, 1, 48, 80)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_sidecar_json_content(saved):
    model, path = saved
    assert path == path.parent / "model.safetensors"
    record = json.loads(path.with_suffix(".json").read_text())
    assert record == {
        "format": "pleura-model",
        "format_version": 2,
        "pleura_version": __version__,
        "architecture": "unet",
        "config": model.config.to_dict(),
        "sha256": digest(path.read_bytes(), record),
        "metadata": {"epoch": 3, "val_dice": 0.5},
    }
    assert record["sha256"] != hashlib.sha256(path.read_bytes()).hexdigest()  # it covers more than the weights
    assert record["config"]["schema"] == "dense"


def test_tampered_weights_are_refused(saved, tmp_path):
    model, _ = saved
    other = tmp_path / "model.safetensors"
    save_model(model, other)
    blob = bytearray(other.read_bytes())
    blob[-1] ^= 0x01  # one flipped bit in the last weight
    other.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="checksum"):
        load_model(other)


def test_weights_file_is_safetensors(saved):
    model, path = saved
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])  # little-endian u64 header length, then a JSON header
    header = json.loads(raw[8 : 8 + header_len])
    assert set(header) - {"__metadata__"} == set(model.state_dict())
    tensors = load_file(path)
    assert set(tensors) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(tensors[key], value), key


def test_saving_the_same_model_twice_writes_the_same_bytes(saved, tmp_path):
    """Deterministic files: a refit of a shipped model's metadata leaves its weights file byte for byte."""
    model, path = saved
    for i in range(5):  # safetensors orders a header map of several entries differently from run to run
        again = save_model(model, tmp_path / f"again{i}" / "model.safetensors", {"epoch": 3, "val_dice": 0.5})
        assert again.read_bytes() == path.read_bytes()


def test_no_pickle_is_used(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_model must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("pickle.load", refuse)
    monkeypatch.setattr("pickle.loads", refuse)
    load_model(saved[1])


def test_writes_are_atomic_and_overwrite(saved):
    model, path = saved
    model.reset_head(2)
    save_model(model, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.json", "model.safetensors"]  # no temporaries
    loaded, metadata = load_model(path.with_suffix(".json"))  # the sidecar's path names the same model
    assert loaded.config.num_classes == 2 and metadata == {}


def test_channels_last_weights_load_back_channels_last(saved):
    loaded, _ = load_model(saved[1])
    assert loaded.stem[0].weight.is_contiguous(memory_format=torch.channels_last)  # width 4: NHWC level


def test_missing_files_are_named(saved):
    _, path = saved
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.json: model config not found"):
        load_model(path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: model weights not found"):
        load_model(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(format="something-else"), r"model\.json: format is 'something-else', expected 'pleura-model'"),
        (dict(format_version=1), r"model\.json: format_version 1 is not supported; this pleura reads version 2"),
        (dict(architecture="resnet"), r"model\.json: unknown architecture 'resnet'; valid: unet"),
        (dict(config_norm="layer"), r"model\.json: invalid config: .*norm 'layer' is unknown"),
        (dict(config_colour="red"), r"model\.json: config has unknown fields \['colour'\]; valid: in_channels"),
        (
            dict(config_num_classes=5),
            r"model\.safetensors: weights do not match the config .*shape mismatch: head\.weight is "
            r"\(8, 4, 1, 1\) in the file, \(5, 4, 1, 1\) for the config",
        ),
        (dict(config_depth=3), r"model\.safetensors: weights do not match .*missing keys: down\.2\.0\.weight"),
        (dict(config_depth=1), r"model\.safetensors: weights do not match .*unexpected keys: down\.1\.0\.weight"),
    ],
    ids=["format", "version", "architecture", "bad-value", "unknown-field", "shape", "missing-keys", "extra-keys"],
)
def test_tampered_json_gives_clear_errors(saved, changes, message):
    _edit_json(saved[1], **changes)
    with pytest.raises(ValueError, match=message):
        load_model(saved[1])


def test_json_that_is_not_json(saved):
    saved[1].with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match=r"model\.json: not valid JSON"):
        load_model(saved[1])


def test_corrupt_weights_are_named(saved):
    saved[1].write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match=r"model\.safetensors: the weights or model\.json do not match the checksum"):
        load_model(saved[1])
    _edit_json(saved[1])  # a forged digest over the corrupt file: the file itself is then named
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(saved[1])


def test_a_file_without_a_digest_is_refused(saved):
    record = json.loads(saved[1].with_suffix(".json").read_text())
    del record["sha256"]
    saved[1].with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"model\.json: 'sha256' should be a str"):
        load_model(saved[1])


@pytest.mark.parametrize(
    "changes",
    [
        dict(metadata_epoch=4),
        dict(metadata_class_names=["normal", "pneumonia", "covid"]),
        dict(config_width=100000),
        dict(config_schema="sparse"),
        dict(pleura_version="9.9"),
    ],
    ids=["metadata", "class-names", "width", "schema", "version"],
)
def test_any_edit_of_the_sidecar_is_refused(saved, changes):
    """The digest covers the config and the metadata, not only the weights (issue 12, defect 5)."""
    _edit_json(saved[1], resign=False, **changes)
    with pytest.raises(ValueError, match=r"model\.safetensors: the weights or model\.json do not match the checksum"):
        load_model(saved[1])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(metadata_temperature=-1), r"metadata 'temperature' should be a number in \[0\.01, 100\.0\], got -1"),
        (dict(metadata_temperature=float("nan")), r"model\.json: not valid JSON \(NaN is not a JSON number\)"),
        (dict(metadata_schema="sparse"), r"metadata schema 'sparse' is unknown or differs from the config's 'dense'"),
        (dict(metadata_image_size=[128]), r"metadata image_size should be \[height, width\] in 16\.\.4096"),
        (dict(metadata_class_names=["a", 3]), r"metadata 'class_names' should be a list of names"),
    ],
    ids=["temperature", "nan", "schema", "image-size", "class-names"],
)
def test_forged_metadata_is_checked_with_bounds(saved, changes, message):
    _edit_json(saved[1], **changes)
    with pytest.raises(ValueError, match=message):
        load_model(saved[1])


def test_a_huge_config_is_refused_before_any_allocation(saved, monkeypatch):
    """A forged config asking for a 360-GB network is compared with the file's shapes on the meta device."""
    _edit_json(saved[1], config_width=100000)
    with pytest.raises(ValueError, match=r"weights do not match the config .*shape mismatch"):
        load_model(saved[1])


def test_save_rejects_bad_arguments(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match=r"should end in \.safetensors, got '.*model\.pt'"):
        save_model(model, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"metadata .*JSON"):
        save_model(model, tmp_path / "model.safetensors", {"when": object()})
    with pytest.raises(TypeError, match=r"cannot save a Linear; registered architectures: unet \(UNet\)"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []  # nothing written on error


def test_map_location(saved):
    loaded, _ = load_model(saved[1], map_location=torch.device("cpu"))
    assert next(loaded.parameters()).device.type == "cpu"
    assert UNetConfig(**json.loads(saved[1].with_suffix(".json").read_text())["config"]) == loaded.config
