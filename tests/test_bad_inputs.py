"""A corpus of bad and odd inputs, made in a temporary folder, each with its expected outcome (issue 12).

Every case runs the command line as a user would. Bad media, model files and training data must give one clean
line naming the file and exit 1 or 2, with the rest of a batch finished; odd but valid media must be predicted
(exit 0) with the same output on a second run. No case may end in a traceback, and no input may change.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pleura.cli import app
from pleura.data.synthetic import write_clip, write_dicom
from pleura.models.io import digest

SIDE = 128


def _frame(seed: int = 0) -> np.ndarray:
    """A lung-ultrasound-like grey frame (a bright band over speckle), so valid cases look like the training data."""
    rng = np.random.default_rng(seed)
    img = rng.gamma(2.0, 30.0, (SIDE, SIDE)).clip(0, 255)
    img[30:34] = 230
    return img.astype(np.uint8)


def _png(path: Path, array: np.ndarray, **kw) -> Path:
    Image.fromarray(array).save(path, format="PNG", **kw)
    return path


def _mp4(path: Path, n: int = 4, codec: str = "mpeg4", fmt: str | None = None) -> Path:
    return write_clip(path, [_frame(k) for k in range(n)], codec=codec, container=fmt)


def _dicom(path: Path, frames: int = 3, pixels: bool = True, photometric: str = "MONOCHROME2") -> Path:
    data = np.stack([_frame(k) for k in range(frames)]) if pixels else np.zeros((frames, SIDE, SIDE, 0), np.uint8)
    return write_dicom(path, data, photometric)


def _png_bomb(path: Path, side: int = 13000) -> Path:
    """A PNG whose header claims side x side RGBA pixels, with a few kilobytes of deflated rows behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    rows = zlib.compress(b"\0" * (side * 4 + 1) * 64, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _valid_png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_frame()).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Case:
    """One input: how to make it, what the command is, and what must come out."""

    id: str
    make: Callable[[Path], Path]  # writes the input into the folder given, returns its path
    code: int  # expected exit code: 0 predicted, 1 a bad file in a batch, 2 refused before any work
    text: str = ""  # a phrase the one error line must hold (besides the file name)
    command: str = "predict"  # predict: the input and a good frame; model: --model INPUT; train: --data INPUT


# --- bad media: one line naming the file, exit 1, the good frame beside it still predicted
BAD_MEDIA = [
    Case("empty-png", lambda d: _write(d / "empty.png", b""), 1, "empty"),
    Case("random-bytes-png", lambda d: _write(d / "random.png", np.random.default_rng(0).bytes(5000)), 1),
    Case("truncated-png", lambda d: _write(d / "cut.png", _valid_png_bytes()[:300]), 1),
    Case("text-as-mp4", lambda d: _write(d / "notes.mp4", b"not a clip at all\n" * 20), 1),
    Case("truncated-mp4", lambda d: _write(d / "cut.mp4", _mp4(d / "full.mp4").read_bytes()[:700]), 1),
    Case("empty-dicom", lambda d: _write(d / "empty.dcm", b""), 1),
    Case("dicom-without-pixels", lambda d: _dicom(d / "nopix.dcm", pixels=False), 1),
    Case("html-as-jpg", lambda d: _write(d / "page.jpg", b"<!doctype html><html><body>hi</body></html>"), 1),
    Case("zip-as-png", lambda d: _write(d / "archive.png", b"PK\x03\x04" + bytes(200)), 1),
    Case("png-bomb", lambda d: _png_bomb(d / "bomb.png"), 1, "pixels"),
    Case("fifo", lambda d: (os.mkfifo(d / "pipe.png"), d / "pipe.png")[1], 1, "not a regular file"),
    Case("broken-link", lambda d: (os.symlink(d / "gone.png", d / "link.png"), d / "link.png")[1], 1),
    Case("missing-file", lambda d: d / "absent.png", 1, "no such file"),
    Case("folder-without-media", lambda d: (d / "docs").mkdir() or _write(d / "docs" / "a.txt", b"x").parent, 1),
]

# --- odd but valid media: predicted, exit 0, the same output twice
VALID_MEDIA = [
    Case("grey-png", lambda d: _png(d / "grey.png", _frame()), 0),
    Case("rgb-png", lambda d: _png(d / "rgb.png", np.repeat(_frame()[..., None], 3, 2)), 0),
    Case(
        "rgba-png",
        lambda d: _png(
            d / "rgba.png", np.dstack([np.repeat(_frame()[..., None], 3, 2), np.full((SIDE, SIDE), 255, np.uint8)])
        ),
        0,
    ),
    Case("palette-png", lambda d: _png(d / "pal.png", np.asarray(Image.fromarray(_frame()).convert("P"))), 0),
    Case("16-bit-png", lambda d: _png(d / "deep.png", _frame().astype(np.uint16) * 16), 0),
    Case("cmyk-jpeg", lambda d: (Image.fromarray(_frame()).convert("CMYK").save(d / "c.jpg"), d / "c.jpg")[1], 0),
    Case(
        "progressive-jpeg", lambda d: (Image.fromarray(_frame()).save(d / "p.jpg", progressive=True), d / "p.jpg")[1], 0
    ),
    Case("bmp", lambda d: (Image.fromarray(_frame()).save(d / "b.bmp"), d / "b.bmp")[1], 0),
    Case("tiny-16px", lambda d: _png(d / "tiny.png", _frame()[:16, :16]), 0),
    Case("wide-1000x100", lambda d: _png(d / "wide.png", np.tile(_frame(), (1, 8))[:100, :1000]), 0),
    Case("one-frame-mp4", lambda d: _mp4(d / "one.mp4", n=1), 0),
    Case("mjpeg-avi", lambda d: _mp4(d / "m.avi", codec="mjpeg"), 0),
    Case("multiframe-dicom", lambda d: _dicom(d / "multi.dcm"), 0),
    Case("monochrome1-dicom", lambda d: _dicom(d / "inv.dcm", frames=1, photometric="MONOCHROME1"), 0),
    Case("png-without-suffix", lambda d: _write(d / "scan", _valid_png_bytes()), 0),
    Case("png-named-jpg", lambda d: _write(d / "wrong.jpg", _valid_png_bytes()), 0),
    Case("upper-case-suffix", lambda d: _png(d / "SCAN.PNG", _frame()), 0),
    Case("markup-name", lambda d: _png(d / "scan [copy][b]x.png", _frame()), 0),
    Case("unicode-name", lambda d: _png(d / "lunge_\u00fc_\u80ba.png", _frame()), 0),
    Case("non-utf8-name", lambda d: Path(os.fsdecode(_png_raw(d, b"caf\xe9.png"))), 0),
    Case("dash-name", lambda d: _png(d / "-x.png", _frame()), 0),
    Case("folder-of-media", lambda d: (d / "f").mkdir() or _png(d / "f" / "a.png", _frame()).parent, 0),
]


def _png_raw(folder: Path, name: bytes) -> bytes:
    path = os.fsencode(folder) + b"/" + name
    with open(path, "wb") as fh:
        fh.write(_valid_png_bytes())
    return path


def _forged(change: Callable[[dict], None], resign: bool = True) -> Callable[[Path], Path]:
    """A copy of the test model whose sidecar ``change`` edits, re-signed (a forger's file) unless ``resign`` is off."""

    def make(folder: Path) -> Path:
        src = Path(os.environ["PLEURA_TEST_BUNDLE"])
        weights = folder / "model.safetensors"
        weights.write_bytes(src.read_bytes())
        record = json.loads(src.with_suffix(".json").read_text())
        change(record)
        if resign:
            record["sha256"] = digest(weights.read_bytes(), record)
        weights.with_suffix(".json").write_text(json.dumps(record))
        return weights

    return make


def _set(path: str, value: object) -> Callable[[dict], None]:
    def change(record: dict) -> None:
        *keys, last = path.split(".")
        node = record
        for k in keys:
            node = node[k]
        node[last] = value

    return change


def _flip_weights(folder: Path) -> Path:
    weights = _forged(lambda r: None)(folder)
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x10
    weights.write_bytes(bytes(blob))
    return weights


def _truncate_weights(folder: Path) -> Path:
    weights = _forged(lambda r: None)(folder)
    weights.write_bytes(weights.read_bytes()[:1000])
    return weights


def _pickle_model(folder: Path) -> Path:
    """A pickle (torch.save) under the weights' name, with a sidecar re-signed over it: it must never be unpickled."""
    weights = _forged(lambda r: None)(folder)
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    weights.write_bytes(buf.getvalue())
    record = json.loads(weights.with_suffix(".json").read_text())
    record["sha256"] = digest(weights.read_bytes(), record)
    weights.with_suffix(".json").write_text(json.dumps(record))
    return weights


def _no_sidecar(folder: Path) -> Path:
    weights = _forged(lambda r: None)(folder)
    weights.with_suffix(".json").unlink()
    return weights


# --- model files: refused before any prediction, exit 2, one line
MODELS = [
    Case("flipped-weight-bit", _flip_weights, 2, "checksum", "model"),
    Case("truncated-weights", _truncate_weights, 2, "checksum", "model"),
    Case("pickle-as-weights", _pickle_model, 2, "not a readable safetensors file", "model"),
    Case(
        "class-names-swapped",
        _forged(_set("metadata.class_names", ["normal", "pneumonia", "covid"]), False),
        2,
        "checksum",
        "model",
    ),
    Case("temperature-edited", _forged(_set("metadata.temperature", 0.5), False), 2, "checksum", "model"),
    Case("forged-negative-temperature", _forged(_set("metadata.temperature", -1)), 2, "temperature", "model"),
    Case("forged-huge-width", _forged(_set("config.unet.width", 100000)), 2, "do not match the config", "model"),
    Case(
        "forged-class-names",
        _forged(_set("metadata.class_names", ["normal", "pneumonia", "covid"])),
        2,
        "differ from the config",
        "model",
    ),
    Case("forged-ood-threshold", _forged(_set("metadata.ood.threshold", 1e9)), 2, "threshold", "model"),
    Case("old-format-version", _forged(_set("format_version", 1)), 2, "format_version 1", "model"),
    Case("no-sidecar", _no_sidecar, 2, "model config not found", "model"),
    Case("folder-not-a-run", lambda d: (d / "notarun").mkdir() or d / "notarun", 2, "not a train-cls run", "model"),
]


def _manifest(folder: Path, text: str, image: bool = False) -> Path:
    data = folder / "ds"
    data.mkdir()
    (data / "manifest.csv").write_text(text)
    if image:
        (data / "images").mkdir()
        _png(data / "images" / "a.png", _frame())
    return data


# --- training data: refused with one line, exit 2
TRAINING = [
    Case("empty-folder", lambda d: (d / "ds").mkdir() or d / "ds", 2, "manifest.csv", "train"),
    Case("empty-manifest", lambda d: _manifest(d, ""), 2, "empty", "train"),
    Case("manifest-missing-columns", lambda d: _manifest(d, "id,foo\n1,2\n"), 2, "missing", "train"),
    Case("manifest-garbage", lambda d: _manifest(d, "\x00\x01\x02 binary"), 2, "manifest.csv", "train"),
    Case("data-is-a-file", lambda d: _write(d / "data.csv", b"id\n"), 2, "is a file", "train"),
]

CASES = BAD_MEDIA + VALID_MEDIA + MODELS + TRAINING


@pytest.fixture(autouse=True)
def _bundle_path(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLEURA_TEST_BUNDLE", str(bundle))


def _digests(folder: Path) -> dict[bytes, str]:
    out = {}
    for root, _, names in os.walk(os.fsencode(folder)):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path):
                with open(path, "rb") as fh:
                    out[path] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _invoke(args: list[str]) -> tuple[int, str]:
    res = CliRunner(env={"COLUMNS": "400"}).invoke(app, args)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"{args}: ended in {type(res.exception).__name__}: {res.exception}\n{res.output}")
    return res.exit_code, res.output


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_or_odd_input(case: Case, bundle: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = _png(inputs / "good.png", _frame(1))
    target = case.make(inputs)
    before = _digests(inputs)
    out = tmp_path / "out"
    if case.command == "predict":
        args = ["predict", str(target), str(good), "--model", str(bundle), "--out", str(out), "--no-video"]
    elif case.command == "model":
        args = ["predict", str(good), "--model", str(target), "--out", str(out)]
    else:
        args = ["train-seg", "--data", str(target), "--out", str(out), "--epochs", "1", "--width", "4"]
    code, output = _invoke(args)
    assert code == case.code, output
    assert "Traceback" not in output
    assert _digests(inputs) == before  # no input changed or lost
    if case.code:
        errors = [line for line in output.splitlines() if line.startswith(("error:", "failed")) or "Error" in line]
        assert errors, output
        assert case.text.lower() in output.lower(), output
        if case.command != "train":
            assert os.path.basename(os.fsdecode(target)).split("\udce9")[0] in output, output
    if case.command == "predict" and case.code == 1:
        assert "predicted 1 of 2 files" in output, output  # the rest of the batch was finished
        assert (out / "good.png").is_file() and (out / "predictions.json").is_file()
    if case.code == 0:
        first = json.loads((out / "predictions.json").read_text())
        code, output = _invoke([str(tmp_path / "again") if a == str(out) else a for a in args])
        assert code == 0
        again = json.loads((tmp_path / "again" / "predictions.json").read_text())
        assert [f["probabilities"] for f in first["files"]] == [f["probabilities"] for f in again["files"]]
    if case.code == 2:
        assert not out.exists()  # refused before anything was written
