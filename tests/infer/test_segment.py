"""``pleura segment``: masks at the input's resolution (a non-square clip with a padded border), 0 outside the
scan area, overlays with a legend, biomarkers; Predictor results carry the masks; bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pleura.cli import app
from pleura.data.cleaning import find_scan_area, fit_to_size
from pleura.data.readers import read_frames
from pleura.data.synthetic import write_clip, write_dicom
from pleura.infer.predictor import ClipResult, Predictor
from pleura.infer.segment import frame_masks, legend, restore_mask, result_masks, target_schema
from pleura.labels import DENSE, SPARSE, get_schema
from pleura.models import pretrained
from pleura.simulate import simulate_clip

DEFAULT_SCHEMA = json.loads(pretrained().with_suffix(".json").read_text())["metadata"]["schema"]  # the default's masks
ROWS, COLS = 150, 212  # a non-square export: the scan sits in a padded border with burnt-in text


def _canvas(image: np.ndarray) -> np.ndarray:
    c = np.zeros((ROWS, COLS), np.uint8)
    c[10 : 10 + image.shape[0], 40 : 40 + image.shape[1]] = image
    c[2:8, 4:30] = 255  # a text-like mark outside the scan area
    return c


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-frame simulated clip on a 212 x 150 canvas (MP4 and DICOM with a pixel spacing), one frame as PNG,
    a blank frame, and a corrupt clip."""
    root = tmp_path_factory.mktemp("segment-media")
    _, frames = simulate_clip(3, 1, "covid", "linear", 128, 6)
    canvas = [_canvas(f.image) for f in frames]
    write_clip(root / "clip.mp4", canvas)
    write_dicom(root / "study.dcm", np.stack(canvas), PixelSpacing=[0.25, 0.25], FrameTime=100.0)
    Image.fromarray(canvas[0]).save(root / "frame.png")
    Image.fromarray(np.zeros((ROWS, COLS), np.uint8)).save(root / "blank.png")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    return {p.name: p for p in root.iterdir()}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(pretrained())


def test_restore_mask_inverts_the_cleaning_crop_and_scale() -> None:
    """Labels drawn at the input's resolution, cleaned like a frame (crop, bilinear resize, placement) and mapped
    back, land where they were: the mapping is the cleaning's own geometry, read backwards."""
    frame = np.zeros((ROWS, COLS), np.uint8)
    frame[20:140, 30:190] = 40  # the scan area: a 120 x 160 box off-centre in the export
    area = find_scan_area(frame + (np.indices(frame.shape).sum(0) % 7).astype(np.uint8) * (frame > 0))
    assert area.bbox == (20, 140, 30, 190)
    truth = np.zeros((ROWS, COLS), np.uint8)
    rows, cols = np.indices(truth.shape)
    truth[area.mask] = ((rows // 16 + cols // 16) % 4)[area.mask]  # 16-px checks of classes 0-3
    model = np.round(fit_to_size(truth * 60, area, 128) / 60).astype(np.uint8)  # the model's view, 128 px
    back = restore_mask(model, area)
    assert back.shape == (ROWS, COLS)
    assert (back[~area.mask] == 0).all()
    agree = (back == truth)[area.mask].mean()
    assert agree > 0.93, agree  # only pixels at the checks' edges (resampled twice) may differ
    shifted = np.roll(back, 4, axis=1)  # the check can fail: 4 px off is far worse
    assert (shifted == truth)[area.mask].mean() < agree - 0.1


def test_target_schema_only_coarsens() -> None:
    assert target_schema(DENSE, None) is DENSE
    assert target_schema(DENSE, "sparse") is SPARSE
    with pytest.raises(ValueError, match="not in 'anatomy'"):
        target_schema(DENSE, "anatomy")
    with pytest.raises(ValueError, match="unknown schema"):
        target_schema(DENSE, "nope")


def test_legend_names_the_tinted_classes() -> None:
    strip = legend(DENSE, 300)
    assert strip.shape[1] == 300 and strip.shape[2] == 3 and strip.shape[0] >= 10
    colours = {tuple(c) for c in strip.reshape(-1, 3)}
    assert (255, 40, 40) in colours and (0, 160, 255) in colours  # B-line and A-line swatches
    assert (0, 90, 60) not in colours  # an untinted class is not in the legend


def test_predictor_results_carry_the_masks(predictor: Predictor, media: dict[str, Path]) -> None:
    result = predictor.predict(media["clip.mp4"])
    assert len(result.frames) == 6 and result.map_size == 128
    assert all(f.labels is not None and f.labels.shape == (128, 128) for f in result.frames)
    d = result.to_dict()
    assert "labels" not in d["frames"][0] and "scan_area" not in d  # not serialised by default
    json.dumps(d)  # JSON-ready
    assert len(result.to_dict(labels=True)["frames"][0]["labels"]) == 128
    assert predictor.predict(media["clip.mp4"], keep_labels=False).frames[0].labels is None
    masks = list(frame_masks(predictor, media["clip.mp4"], "sparse"))
    assert [i for i, _ in masks] == [f.index for f in result.frames]
    assert all(m.shape == (ROWS, COLS) and m.max() < SPARSE.num_classes for _, m in masks)
    again = dict(result_masks(result, None, predictor.schema))
    assert all(m.max() < get_schema(DEFAULT_SCHEMA).num_classes for m in again.values())


def test_blank_frame_biomarkers_are_not_found(predictor: Predictor, media: dict[str, Path]) -> None:
    result = predictor.predict(media["blank.png"])
    bm = result.frames[0].biomarkers
    assert bm["pleural_line_found"] is False and bm["b_line_count"] is None and bm["aeration_score"] is None
    assert result.severity is None and "no pleural line" in result.severity_rule


def test_segment_cli_writes_masks_at_the_input_resolution(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "seg"
    inputs = [media["clip.mp4"], media["frame.png"], media["study.dcm"], media["broken.mp4"]]
    res = CliRunner().invoke(app, ["segment", *map(str, inputs), "--out", str(out)])
    assert res.exit_code == 1, res.output  # one bad file: listed, the others segmented
    assert "broken.mp4" in res.output and "segmented 3 of 4 files" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["clip", "clips.csv", "frame", "segment.json", "study"]

    area = find_scan_area(read_frames(media["clip.mp4"]))
    masks = sorted((out / "clip" / "masks").glob("frame_*.png"))
    assert len(masks) == 6
    for path in masks:
        img = Image.open(path)
        assert img.mode == "P" and img.size == (COLS, ROWS)  # the input's resolution, not the model's
        m = np.asarray(img)
        assert (m[~area.mask] == 0).all()  # outside the scan area: 0
        assert (m[:10] == 0).all() and (m[:, :40] == 0).all()  # the padded border and the burnt-in text
        assert m.max() < get_schema(DEFAULT_SCHEMA).num_classes
    with av.open(str(out / "clip" / "overlay.mp4")) as box:
        first = next(box.decode(video=0)).to_ndarray(format="rgb24")
    assert first.shape[1] == COLS and first.shape[0] > ROWS  # the frame above its legend
    assert Image.open(out / "frame" / "overlay.png").size[0] == COLS
    assert not (out / "frame" / "overlay.mp4").exists()

    doc = json.loads((out / "clip" / "biomarkers.json").read_text())
    assert doc["frame_size"] == [ROWS, COLS] and doc["schema"] == DEFAULT_SCHEMA and len(doc["frames"]) == 6
    assert "severity" in doc and doc["severity_rule"]
    assert {"pleural_line_found", "b_line_coverage_pct", "pleural_line_depth_mm"} <= set(doc["frames"][0]["biomarkers"])
    with open(out / "clip" / "biomarkers.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    dicom = json.loads((out / "study" / "biomarkers.json").read_text())
    top, bottom, left, right = dicom["scan_box"]
    factor = max(bottom - top, right - left) / 128  # input pixels per model pixel
    assert dicom["pixel_mm"] == [0.25, 0.25]  # the DICOM's own spacing, scaled to the model's map
    assert dicom["map_pixel_mm"] == pytest.approx([0.25 * factor, 0.25 * factor])
    assert json.loads((out / "frame" / "biomarkers.json").read_text())["pixel_mm"] is None  # a PNG states none
    summary = json.loads((out / "segment.json").read_text())
    assert [f["folder"] for f in summary["files"]] == ["clip", "frame", "study"]
    assert summary["failed"][0]["file"].endswith("broken.mp4")
    assert not list(out.rglob(".*"))  # nothing half-written: the failed file left no folder


def test_segment_cli_schema_pixel_size_and_bad_options(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sparse"
    res = CliRunner().invoke(
        app,
        [
            "segment",
            str(media["frame.png"]),
            "--out",
            str(out),
            "--schema",
            "sparse",
            "--pixel-mm",
            "0.3",
            "--model",
            "pocus-dense-w4-128",
        ],  # a dense model: its masks mapped to the sparse schema
    )
    assert res.exit_code == 0, res.output
    m = np.asarray(Image.open(next((out / "frame" / "masks").glob("*.png"))))
    assert m.max() < SPARSE.num_classes
    doc = json.loads((out / "frame" / "biomarkers.json").read_text())
    assert doc["schema"] == "sparse" and doc["model_schema"] == "dense" and doc["pixel_mm"] == [0.3, 0.3]

    res = CliRunner().invoke(
        app, ["segment", str(media["frame.png"]), "--out", str(tmp_path / "a"), "--schema", "anatomy"]
    )
    assert res.exit_code == 2 and "not in 'anatomy'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "a").exists()
    res = CliRunner().invoke(app, ["segment", str(media["frame.png"]), "--out", str(tmp_path / "b"), "--pixel-mm", "0"])
    assert res.exit_code == 2 and "> 0" in res.output
    res = CliRunner().invoke(app, ["segment", str(media["frame.png"]), "--out", str(out)])
    assert res.exit_code == 2 and "not empty" in res.output  # an output folder is never mixed
    res = CliRunner().invoke(app, ["segment", str(media["frame.png"].parent), "--out", str(media["frame.png"].parent)])
    assert res.exit_code == 2 and "holds the input" in res.output


def test_predict_tables_carry_the_severity(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pred"
    res = CliRunner().invoke(app, ["predict", str(media["clip.mp4"]), "--out", str(out), "--no-video"])
    assert res.exit_code == 0, res.output
    with open(out / "clips.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert "severity" in row and row["severity_rule"]  # empty severity: not scored, and the rule says why
    doc = json.loads((out / "predictions.json").read_text())["files"][0]
    assert "severity" in doc and doc["severity_rule"] == row["severity_rule"]
    assert "labels" not in doc["frames"][0]  # the label maps stay out of predictions.json


@pytest.mark.parametrize("fmt", ["cvat", "coco", "labelme"])
def test_segment_export_labels_round_trip(media: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    """segment --export-labels, then the import command it prints: the same masks (IoU >= 0.95 per class), in the
    importer's cleaned geometry."""
    from pleura.data.annotations import fit_mask_to_size
    from pleura.data.manifest import read_manifest

    out = tmp_path / "seg"
    inputs = [media["clip.mp4"], media["frame.png"]]
    runner = CliRunner(env={"COLUMNS": "400"})
    res = runner.invoke(app, ["segment", *map(str, inputs), "--out", str(out), "--schema", "sparse",
                              "--export-labels", fmt, "--no-video"])  # fmt: skip
    assert res.exit_code == 0, res.output
    export = json.loads((out / "labels" / "export.json").read_text())
    assert all(str(out.resolve() / "labels") in f["import"] for f in export["folders"])  # the final path, not staged
    clip = next(f for f in export["folders"] if f["kind"] == "video")
    command = clip["import"].split()
    assert command[:3] == ["pleura", "data", "import-annotations"] and command[-2:] == ["--out", "DATASET"]
    back = tmp_path / "back"
    res = runner.invoke(app, [*command[1:-1], str(back), "--size", "128", "--workers", "1"])
    assert res.exit_code == 0, res.output
    area = find_scan_area(read_frames(media["clip.mp4"]))
    written = {
        int(p.stem.removeprefix("frame_")): np.asarray(Image.open(p)) for p in (out / "clip" / "masks").iterdir()
    }
    checked = 0
    for row in read_manifest(back):
        got = np.asarray(Image.open(back / row["mask_sparse"]))
        want = fit_mask_to_size(written[int(row["frame"])], area, 128)
        for c in range(1, SPARSE.num_classes):
            if (want == c).sum() >= 20:  # classes the model drew with some area
                inter, union = ((got == c) & (want == c)).sum(), ((got == c) | (want == c)).sum()
                assert inter / union >= 0.95, (row["frame"], SPARSE.names[c], inter / union)
                checked += 1
    assert checked > 0


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny segmentation-only U-Net (sparse, 64 px), saved as a model file with its schema and image size."""
    from pleura.models import UNet, UNetConfig, save_model

    torch.manual_seed(0)
    unet = UNet(UNetConfig(num_classes=4, width=4, depth=2, schema="sparse"))
    meta = {"kind": "segmentation", "schema": "sparse", "image_size": [64, 64]}
    return save_model(unet, tmp_path_factory.mktemp("unet") / "unet.safetensors", meta)


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train-seg run (one epoch of a width-4 sparse U-Net on 64-px simulated frames)."""
    from kit import simulated

    from pleura.models import UNetConfig
    from pleura.train.distributed import DistEnv
    from pleura.train.seg import SegTrainConfig, SegTrainer

    data = simulated(tmp_path_factory, "seg-run-data", n=6, seed=5, size=64, frames=1, workers=1)
    run = tmp_path_factory.mktemp("seg-run") / "run"
    cfg = SegTrainConfig(schema="sparse", epochs=1, batch_size=4, model=UNetConfig(width=4, depth=2), workers=0)
    SegTrainer(cfg, data, run, DistEnv()).fit()
    return run


def _has_no_diagnosis(result: ClipResult) -> None:
    """A segmentation model's result: no diagnosis, no probabilities, no OOD flag, on the clip and every frame."""
    assert result.has_diagnosis is False and result.diagnosis is None and result.probabilities == {}
    assert result.ood_frames == 0 and all(f.diagnosis is None and f.probabilities == {} for f in result.frames)
    assert result.to_dict(frames=False)["has_diagnosis"] is False


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_predictor_segments_with_a_unet_and_no_diagnosis(unet_file: Path, media: dict[str, Path], engine: str) -> None:
    """A U-Net alone goes through the one prediction path: masks, biomarkers and severity; no diagnosis, no
    temperature, no OOD. A diagnosis is refused unless asked for without one."""
    with pytest.raises(ValueError, match="is a segmentation model with no diagnosis head; use pleura segment"):
        Predictor(unet_file, engine=engine)
    predictor = Predictor(unet_file, engine=engine, require_diagnosis=False)
    assert not predictor.has_diagnosis and predictor.class_names == () and predictor.schema is SPARSE
    assert predictor.size == 64 and predictor.temperature is None and predictor.ood is None
    result = predictor.predict(media["clip.mp4"])
    _has_no_diagnosis(result)
    assert len(result.frames) == 6 and result.map_size == 64
    assert all(f.labels is not None and f.labels.shape == (64, 64) for f in result.frames)
    assert {"pleural_line_found", "b_line_count", "aeration_score"} <= set(result.frames[0].biomarkers)
    assert result.biomarkers and result.severity_rule  # scored, or the rule says why not
    json.dumps(result.to_dict())
    masks = dict(frame_masks(predictor, media["frame.png"]))
    assert [m.shape for m in masks.values()] == [(ROWS, COLS)] and max(m.max() for m in masks.values()) < 4


def test_predictor_refuses_a_unet_without_its_image_size(tmp_path: Path) -> None:
    from pleura.models import UNet, UNetConfig, save_model

    path = save_model(UNet(UNetConfig(num_classes=4, width=4, depth=2, schema="sparse")), tmp_path / "u.safetensors")
    with pytest.raises(ValueError, match=r"u\.safetensors: the U-Net records no image_size"):
        Predictor(path, require_diagnosis=False)
    with pytest.raises(ValueError, match="not a train-seg run"):
        Predictor(tmp_path, require_diagnosis=False)  # a folder that holds no run


def test_segment_cli_with_a_unet_file_writes_masks_and_no_diagnosis(
    unet_file: Path, media: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "seg"
    args = ["segment", str(media["clip.mp4"]), str(media["frame.png"]), "--model", str(unet_file), "--out", str(out)]
    res = CliRunner(env={"COLUMNS": "400"}).invoke(app, [*args, "--export-labels", "coco"])
    assert res.exit_code == 0, res.output
    assert "segmented 2 of 2 files" in res.output
    assert {"clip", "frame", "segment.json", "clips.csv", "labels"} <= {p.name for p in out.iterdir()}
    masks = sorted((out / "clip" / "masks").glob("frame_*.png"))
    assert len(masks) == 6 and all(Image.open(m).size == (COLS, ROWS) for m in masks)  # the input's resolution
    assert (out / "clip" / "overlay.mp4").is_file() and (out / "frame" / "overlay.png").is_file()
    doc = json.loads((out / "clip" / "biomarkers.json").read_text())
    assert doc["has_diagnosis"] is False and "diagnosis" not in doc and "ood_frames" not in doc
    assert doc["map_size"] == 64 and doc["schema"] == doc["model_schema"] == "sparse"
    assert "ood" not in doc["frames"][0] and "pleural_line_found" in doc["frames"][0]["biomarkers"]
    with open(out / "clip" / "biomarkers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and "ood" not in rows[0] and "pleural_line_found" in rows[0]
    summary = json.loads((out / "segment.json").read_text())
    assert summary["has_diagnosis"] is False and "ood_frames" not in summary["files"][0]
    with open(out / "clips.csv", newline="") as fh:
        assert "severity" in next(csv.DictReader(fh))
    assert json.loads((out / "labels" / "export.json").read_text())["folders"]


def test_segment_cli_takes_a_train_seg_run_its_model_file_and_a_shipped_name(
    seg_run: Path, media: dict[str, Path], tmp_path: Path
) -> None:
    _has_no_diagnosis(Predictor(seg_run, engine="torch", require_diagnosis=False).predict(media["frame.png"]))
    best = seg_run / "best" / "model.safetensors"  # its checkpoint's file: the run's config.json gives the size
    for k, (model, size) in enumerate(((seg_run, 64), (best, 64), ("foundation-sparse-w16-128", 128))):
        out = tmp_path / f"seg-{k}"
        res = CliRunner().invoke(app, ["segment", str(media["frame.png"]), "--model", str(model), "--out", str(out)])
        assert res.exit_code == 0, res.output
        doc = json.loads((out / "frame" / "biomarkers.json").read_text())
        assert doc["has_diagnosis"] is False and doc["map_size"] == size and doc["model_schema"] == "sparse"
        assert Image.open(next((out / "frame" / "masks").glob("*.png"))).size == (COLS, ROWS)
