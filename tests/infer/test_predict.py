"""Predicting files: bundle export, Predictor on an image, an MP4 and a DICOM, OOD flags, the predict CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
import torch
from matplotlib import cbook
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from pleura.cli import app
from pleura.data import read_manifest
from pleura.infer.predictor import Predictor


@pytest.fixture(scope="module")
def media(sim_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A simulated frame as PNG, 6 frames as MP4 and as multi-frame DICOM, a blank frame and a photograph."""
    root = tmp_path_factory.mktemp("media")
    rows = read_manifest(sim_dataset)
    frames = [np.asarray(Image.open(sim_dataset / r["image"]).convert("L")) for r in rows[:6]]
    Image.fromarray(frames[0]).save(root / "frame.png")
    with av.open(str(root / "clip.mp4"), "w") as box:
        s = box.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 128, 128, "yuv420p"
        for f in frames:
            box.mux(s.encode(av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, 2), format="rgb24")))
        box.mux(s.encode())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(root / "clip.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "US", 128, 128, len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime = 100.0
    ds.PixelData = np.stack(frames).tobytes()
    pydicom.dcmwrite(root / "clip.dcm", ds, enforce_file_format=True)
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(root / "blank.png")
    Image.open(cbook.get_sample_data("grace_hopper.jpg")).save(root / "photo.jpg")
    (root / "notes.mp4").write_text("not a clip")
    return {p.stem if p.suffix != ".dcm" else "dicom": p for p in root.iterdir()}


def test_bundle_holds_calibration_and_ood(bundle: Path) -> None:
    meta = json.loads(bundle.with_suffix(".json").read_text())["metadata"]
    assert meta["kind"] == "pleura-predictor" and meta["temperature"] > 0
    assert meta["class_names"] == ["covid", "pneumonia", "normal"] and meta["image_size"] == [128, 128]
    assert meta["ood"]["threshold"] > 0 and len(meta["ood"]["mean"]) == len(meta["ood"]["features"])


def test_predictor_on_image_clip_and_dicom(bundle: Path, media: dict[str, Path]) -> None:
    predictor = Predictor(bundle)
    for name, n in (("frame", 1), ("clip", 6), ("dicom", 6)):
        seen: list[tuple] = []
        result = predictor.predict(
            media[name], on_frame=lambda r, img, lab, seen=seen: seen.append((img.shape, lab.shape))
        )
        assert len(result.frames) == n and len(seen) == n and seen[0] == ((128, 128), (128, 128))
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        for f in result.frames:
            assert sum(f.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert result.diagnosis in ("covid", "pneumonia", "normal")
        assert {"b_line_count", "pleural_line_unhealthy_fraction", "subpleural_unhealthy_fraction"} <= set(
            result.biomarkers
        )
    # the PNG frame is one of the training distribution: not flagged; a blank frame and a photograph are
    assert not predictor.predict(media["frame"]).frames[0].ood
    assert predictor.predict(media["blank"]).frames[0].ood
    assert predictor.predict(media["photo"]).frames[0].ood


def test_onnx_engine_gives_the_same_probabilities(bundle: Path, media: dict[str, Path]) -> None:
    a = Predictor(bundle, engine="torch").predict(media["clip"])
    b = Predictor(bundle, engine="onnx").predict(media["clip"])
    for fa, fb in zip(a.frames, b.frames, strict=True):
        for c in fa.probabilities:
            assert fa.probabilities[c] == pytest.approx(fb.probabilities[c], abs=1e-4)


def test_tta_averages_the_mirror_and_keeps_the_masks(bundle: Path, media: dict[str, Path], tmp_path: Path) -> None:
    """With ``tta`` each frame's probabilities are the mean of the frame's and its mirror's, computed here apart;
    masks, biomarkers and OOD flags are those of the frame as it is; ``predict --tta`` records it."""
    plain, tta = Predictor(bundle, engine="torch"), Predictor(bundle, engine="torch", tta=True)
    frames = np.stack([np.asarray(Image.open(media["frame"]).convert("L"))] * 2)
    frames[1] = frames[1][:, ::-1]  # a frame and its mirror: TTA gives both the same probabilities
    a, b = plain.predict_frames(frames), tta.predict_frames(frames)
    assert np.allclose(b.probabilities, (a.probabilities + a.probabilities[::-1]) / 2, atol=1e-5)
    assert np.allclose(b.probabilities[0], b.probabilities[1], atol=1e-5)
    assert not np.allclose(a.probabilities[0], a.probabilities[1], atol=1e-5)  # the model is not mirror-symmetric
    assert (a.labels == b.labels).all() and (a.ood == b.ood).all()

    from pleura.cli import app

    res = CliRunner().invoke(app, ["predict", str(media["clip"]), "--model", str(bundle), "--tta", "--no-video",
                                   "--out", str(tmp_path / "p")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "p" / "predictions.json").read_text())["tta"] is True


def test_predictor_device_choices(bundle: Path) -> None:
    with pytest.raises(ValueError, match="onnx engine runs on the CPU"):
        Predictor(bundle, engine="onnx", device="cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        Predictor(bundle, engine="onnx", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Predictor(bundle, engine="torch", device="cuda")
    p = Predictor(bundle, engine="torch", device="cpu")
    assert next(p.model.parameters()).device.type == "cpu"


def test_predict_cli_writes_outputs_and_lists_failures(bundle: Path, media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pred"
    args = ["predict", str(media["frame"]), str(media["clip"]), str(media["notes"]), "--model", str(bundle)]
    res = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 1, res.output  # one bad file: listed, the others processed
    assert "notes.mp4" in res.output and "predicted 2 of 3 files" in res.output
    for name in ("frame.png", "clip.png", "clip.mp4", "predictions.json", "clips.csv", "frames.csv"):
        assert (out / name).exists(), name
    with open(out / "frames.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 7
    doc = json.loads((out / "predictions.json").read_text())
    assert [Path(f["path"]).name for f in doc["files"]] == ["frame.png", "clip.mp4"]
    assert Image.open(out / "clip.png").size[0] == 3 * 128  # frame | segmentation | activation map
    assert not list(out.glob(".*"))  # no temporary file left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["predict", str(empty), "--model", str(bundle)])
    assert res.exit_code == 2 and "holds no image" in res.output
    res = CliRunner().invoke(app, ["predict", str(media["frame"]), "--model", str(tmp_path / "nope.safetensors")])
    assert res.exit_code != 0 and "nope.safetensors: model not found" in res.output


def test_predict_cli_defaults_to_the_shipped_model(media: dict[str, Path], tmp_path: Path) -> None:
    from pleura.cli import DEFAULT_MODEL

    assert DEFAULT_MODEL.exists()  # a source checkout ships it
    res = CliRunner().invoke(app, ["predict", str(media["photo"]), "--out", str(tmp_path / "p"), "--no-video"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert doc["files"][0]["frames"][0]["ood"] is True


def test_export_cli_refuses_tampered_model_and_writes_onnx(bundle: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", "onnx", "--model", str(bundle), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.onnx").stat().st_size > 1000
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bundle.read_bytes()[:-4] + b"\0\0\0\0")
    bad.with_suffix(".json").write_text(bundle.with_suffix(".json").read_text())
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "m.onnx"), "--model", str(bad)])
    assert res.exit_code == 2 and "checksum" in res.output


SHIPPED = sorted((Path(__file__).resolve().parents[2] / "pleura" / "models" / "pretrained").glob("pocus-*.safetensors"))


@pytest.mark.parametrize("model", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_models_load_and_flag_a_photograph(model: Path, media: dict[str, Path]) -> None:
    predictor = Predictor(model)
    recorded = json.loads(model.with_suffix(".json").read_text())["metadata"]["schema"]
    assert predictor.engine.class_names == ("covid", "pneumonia", "normal") and predictor.engine.schema == recorded
    frame = predictor.predict(media["photo"]).frames[0]
    assert sum(frame.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert frame.ood  # trained on real lung ultrasound: a photograph is out of distribution


def test_predict_cli_refuses_a_segmentation_model(media: dict[str, Path], tmp_path: Path) -> None:
    """A U-Net file, a train-seg run and the shipped segmentation foundation have no diagnosis head: one line
    naming the model, a non-zero exit, nothing written; serve refuses a U-Net file too."""
    from pleura.models import UNet, UNetConfig, pretrained, save_model

    unet = UNet(UNetConfig(num_classes=4, width=4, depth=2, schema="sparse"))
    meta = {"kind": "segmentation", "schema": "sparse", "image_size": [64, 64]}
    model_file = save_model(unet, tmp_path / "unet.safetensors", meta)
    run = tmp_path / "seg-run"
    save_model(unet, run / "best" / "model.safetensors", meta)  # what a train-seg run holds
    shipped = pretrained("foundation-sparse-w16-128")
    for model, named in ((model_file, model_file), (run, run), ("foundation-sparse-w16-128", shipped)):
        out = tmp_path / "pred"
        res = CliRunner().invoke(app, ["predict", str(media["frame"]), "--model", str(model), "--out", str(out)])
        assert res.exit_code != 0, res.output
        assert f"{named} is a segmentation model with no diagnosis head; use pleura segment" in res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
        assert not out.exists()
    res = CliRunner().invoke(app, ["serve", "--model", str(model_file)])  # refused while loading, before listening
    assert res.exit_code != 0 and f"{model_file} is a segmentation model with no diagnosis head" in res.output
    assert "http://" not in res.output  # no address announced for a server that never listens
