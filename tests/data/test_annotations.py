"""``pleura data import-annotations``: CVAT backups and XML, COCO, Labelme and mask PNGs into a manifest dataset.

Every export here is written by the test from code (small synthetic clips and images); the real CVAT task in
``../shared/data/cvat-lus`` is imported where it is present.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pleura.cli import app
from pleura.data import LUSDataset, read_manifest
from pleura.data.annotations import (
    AnnotationError,
    AnnotationImportConfig,
    decode_coco_rle,
    decode_cvat_rle,
    fill_polygon,
    fit_mask_to_size,
    import_annotations,
    load_label_map,
)
from pleura.data.annotations.model import CocoRle, CvatRle, Notes, Shape, TrackShape, expand_track
from pleura.data.cleaning import ScanArea, find_scan_area, fit_to_size
from pleura.data.synthetic import write_clip, write_dicom
from pleura.labels import DENSE, SPARSE

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = next(
    (p for p in (ROOT.parent / "shared" / "data" / "cvat-lus", Path("/work/shared/data/cvat-lus")) if p.is_dir()),
    ROOT.parent / "shared" / "data" / "cvat-lus",
)
LABELS = {"aline": "a_line", "lungslidingpresent": "pleural_line", "bline": "b_line"}
H, W = 240, 320  # synthetic scanner screen
AREA = (30, 210, 90, 250)  # its scan area: top, bottom, left, right (off centre on purpose)
L_SHAPE = [(120, 60), (132, 60), (132, 148), (200, 148), (200, 160), (120, 160)]  # an asymmetric L, x, y
A, PL, BL = SPARSE.index("a_line"), SPARSE.index("pleural_line"), SPARSE.index("b_line")


# ------------------------------------------------------------------------------------------------------ helpers


def label_map(tmp: Path, labels: dict[str, Any] | None = None, **extra: Any) -> Path:
    path = tmp / "labels.json"
    path.write_text(json.dumps({"schema": "sparse", "labels": labels or LABELS, **extra}))
    return path


def screen(rng: np.random.Generator, l_value: int = 0) -> np.ndarray:
    """One scanner screen: a live speckled scan area, burnt-in text and a ruler outside it, an optional bright L."""
    frame = np.zeros((H, W), np.uint8)
    t, b, left, right = AREA
    frame[t:b, left:right] = rng.integers(30, 110, (b - t, right - left))
    frame[5:15, 10:80] = 255  # "text"
    frame[40:200:20, 300:306] = 255  # depth ruler
    if l_value:
        poly = np.zeros((H, W), np.uint8)
        fill_polygon(poly, np.array(L_SHAPE, float))
        frame[poly > 0] = l_value
    return frame


def make_clip(path: Path, n: int = 8, l_value: int = 0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    return write_clip(path, [screen(rng, l_value) for _ in range(n)], fps=10)


def poly(label: str, frame: int, points: list[tuple[float, float]], kind: str = "polygon", **kw: Any) -> dict:
    return {"type": kind, "occluded": False, "z_order": 0, "points": [v for p in points for v in p], "frame": frame,
            "group": 0, "source": "manual", "attributes": [], "label": label, **kw}  # fmt: skip


def backup(root: Path, shapes: list[dict], tracks: list[dict] = (), tags: list[dict] = (), n: int = 8,
           l_value: int = 0, video: bool = True) -> Path:  # fmt: skip
    """A CVAT task backup folder: task.json, annotations.json, data/clip.mp4 and data/manifest.jsonl."""
    (root / "data").mkdir(parents=True)
    task = {"name": "synthetic", "labels": [{"name": k} for k in LABELS],
            "data": {"start_frame": 0, "stop_frame": n - 1, "chunk_type": "imageset"}}  # fmt: skip
    (root / "task.json").write_text(json.dumps(task))
    job = {"version": 0, "tags": list(tags), "shapes": shapes, "tracks": list(tracks)}
    (root / "annotations.json").write_text(json.dumps([job]))
    lines = [{"version": "1.1"}, {"type": "video"}, {"properties": {"name": "clip.mp4", "resolution": [W, H],
                                                                     "length": n}}]  # fmt: skip
    (root / "data" / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if video:
        make_clip(root / "data" / "clip.mp4", n, l_value)
    return root


def run(src: Path, out: Path, labels: Path, fmt: str = "cvat", **kw: Any):
    args = {k: kw.pop(k) for k in ("media", "meta", "overwrite") if k in kw}
    kw.setdefault("size", 128)
    kw.setdefault("workers", 1)
    return import_annotations(src, out, labels, AnnotationImportConfig(format=fmt, **kw), **args)


def masks(out: Path, schema: str = "sparse") -> dict[str, np.ndarray]:
    return {r["id"]: np.asarray(Image.open(out / r[f"mask_{schema}"])) for r in read_manifest(out)}


def to_out(x: float, y: float, geo: dict) -> tuple[int, int]:
    """A source pixel centre mapped through a clip's crop and scale (``import.json`` geometry): (row, col)."""
    bb = geo["bbox"]
    return int((y - bb["top"]) * geo["scale_y"]), int(geo["offset_x"] + (x - bb["left"]) * geo["scale_x"])


def png(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> Path:
    img = Image.fromarray(array)
    if palette is not None:
        img = img.convert("P")
        img.putpalette(palette.ravel().tolist())
    img.save(path)
    return path


# ------------------------------------------------------------------------------------------------ the real task


@pytest.mark.skipif(not (FIXTURE / "task_195" / "task.json").is_file(), reason=f"cvat-lus fixture not at {FIXTURE}")
def test_real_cvat_task_rows_classes_pixels_overlays_and_alignment(tmp_path: Path) -> None:
    out = tmp_path / "lus"
    report = import_annotations(
        FIXTURE / "task_195", out, label_map(tmp_path), AnnotationImportConfig(format="cvat", workers=1)
    )
    rows = read_manifest(out)
    assert len(rows) == report.frames == 39 and not report.failed and not report.warnings
    assert report.per_class == {"a_line": 39, "pleural_line": 17}
    geo = json.loads((out / "import.json").read_text())["geometry"]["image_93029618565613"]
    assert geo["frame_size"] == [1280, 720] and geo["probe"] == "linear"
    m = masks(out)
    key = "image_93029618565613_{:05d}".format
    # hand-picked source pixels, well inside the polygons of frames 2 and 100 (and between them: background)
    for frame, x, y, cls in [(2, 620, 210, PL), (2, 640, 318, A), (2, 640, 260, 0), (100, 620, 212, PL),
                             (100, 620, 324, A), (100, 640, 150, 0)]:  # fmt: skip
        r, c = to_out(x, y, geo)
        assert m[key(frame)][r, c] == cls, (frame, x, y)
    image = np.asarray(Image.open(out / "images" / f"{key(2)}.png"))
    # the scanner's text (date, MI, gain, depth, probe name) and ruler lie outside the scan area: all zero now
    nh = round((geo["bbox"]["bottom"] - geo["bbox"]["top"]) * geo["scale_y"])
    nw = round((geo["bbox"]["right"] - geo["bbox"]["left"]) * geo["scale_x"])
    assert image[:, : geo["offset_x"]].max() == 0 and image[:, geo["offset_x"] + nw :].max(initial=0) == 0
    assert image[nh:].max(initial=0) == 0 and image[:nh, geo["offset_x"] : geo["offset_x"] + nw].mean() > 20
    # not shifted: along the middle of the pleural mask (per column) runs the bright pleural echo: moving that
    # line up or down never makes it brighter by more than 3 px, and 8 px above or below it is much darker
    ratios = []
    for rid, mask in m.items():
        pl = mask == PL
        if not pl.any():
            continue
        im = np.asarray(Image.open(out / "images" / f"{rid}.png"), dtype=float)
        cols = np.nonzero(pl.any(axis=0))[0]
        mid = np.array([np.nonzero(pl[:, c])[0].mean() for c in cols]).round().astype(int)
        curve = np.array([im[mid + s, cols].mean() for s in range(-12, 13)])
        assert abs(int(curve.argmax()) - 12) <= 3, rid
        ratios.append(min(curve[12] / curve[4], curve[12] / curve[20]))
    assert len(ratios) == 17 and min(ratios) > 1.1 and np.median(ratios) > 1.5


# ------------------------------------------------------------------------------------------------ geometry


def test_an_asymmetric_l_lands_on_the_same_pixels_as_the_bright_l_in_the_frame(tmp_path: Path) -> None:
    src = backup(tmp_path / "task", [poly("lungslidingpresent", f, L_SHAPE) for f in (0, 3, 7)], l_value=220)
    out = tmp_path / "ds"
    report = run(src, out, label_map(tmp_path), size=256)
    assert report.frames == 3
    geo = json.loads((out / "import.json").read_text())["geometry"]["clip"]
    bb = geo["bbox"]  # the scan area holds the speckle and leaves out the text (rows 5-15) and the ruler (x >= 300)
    assert 15 <= bb["top"] <= AREA[0] and AREA[1] <= bb["bottom"]
    assert bb["left"] <= AREA[2] and AREA[3] <= bb["right"] < 300
    for row in read_manifest(out):
        image = np.asarray(Image.open(out / row["image"]))
        mask = np.asarray(Image.open(out / row["mask_sparse"])) == PL
        bright = image > 160
        iou = (mask & bright).sum() / (mask | bright).sum()
        assert iou > 0.85, iou
        assert np.abs(np.argwhere(mask).mean(0) - np.argwhere(bright).mean(0)).max() < 0.75
        flipped = mask[:, ::-1]
        assert (flipped & bright).sum() / (flipped | bright).sum() < 0.5  # a mirrored or shifted L would not fit
        assert image[:8, :].max() < 160  # the burnt-in text above the scan area is gone


def test_fit_mask_to_size_has_the_frames_crop_scale_and_padding() -> None:
    frames = np.stack([screen(np.random.default_rng(i)) for i in range(4)])
    assert find_scan_area(frames).probe == "linear"
    t, b, left, right = AREA
    rect = np.zeros((H, W), bool)
    rect[t:b, left:right] = True
    area = ScanArea(rect, AREA, "linear", 1.0, 1.0, 0.0)
    for size in (128, 200, 256):
        full = fit_to_size(np.full((H, W), 255, np.uint8), area, size) > 0
        ones = fit_mask_to_size(np.ones((H, W), np.uint8), area, size)
        assert ones.dtype == np.uint8 and ((ones > 0) == full).all()
        assert (fit_mask_to_size(np.zeros((H, W), np.uint8), area, size, fill=7)[~full] == 7).all()
    # columns: a mask column and the same frame column land on the same output columns
    stripe = np.zeros((H, W), np.uint8)
    stripe[:, 170:173] = 200
    assert (np.nonzero(fit_mask_to_size(stripe, area, 256)[100])[0] == np.nonzero(
        fit_to_size(stripe, area, 256)[100] > 100)[0]).all()  # fmt: skip


def test_even_odd_fill_bow_tie_pentagram_and_pixel_centres() -> None:
    m = np.zeros((10, 12), np.uint8)
    assert fill_polygon(m, np.array([[2, 2], [5, 2], [5, 5], [2, 5]], float)) == 9  # centres 2.5, 3.5, 4.5
    assert m[2:5, 2:5].all() and m.sum() == 9
    bow = np.zeros((10, 12), np.uint8)  # a bow-tie: both lobes filled, the gaps above and below the crossing empty
    fill_polygon(bow, np.array([[1, 1], [11, 9], [11, 1], [1, 9]], float))
    assert bow[5, 2] and bow[5, 9] and not bow[2, 6] and not bow[8, 6]
    star = np.zeros((41, 41), np.uint8)  # a pentagram: even-odd leaves the centre pentagon empty
    pts = [(20.5 + 19 * math.sin(4 * math.pi * k / 5), 20.5 - 19 * math.cos(4 * math.pi * k / 5)) for k in range(5)]
    fill_polygon(star, np.array(pts))
    assert not star[20, 20] and not star[21, 20] and star[4, 20] and star[16, 8]


def test_rle_decoders_cvat_and_coco_compressed_and_plain() -> None:
    bits = decode_cvat_rle(CvatRle(np.array([1, 2, 3, 2, 1]), 0, 0, 3, 3))  # row-major, background first
    assert bits.astype(int).tolist() == [[0, 1, 1], [0, 0, 0], [1, 1, 0]]
    for text, (a, b) in [("05d00000000d?", (0, 5)), ("R45d00000000b;", (5, 10)), ("X`05d00000000", (20, 25))]:
        want = np.zeros((25, 25), bool)  # pycocotools.mask.encode of a square, from its own tests
        want[a:b, a:b] = True
        assert (decode_coco_rle(CocoRle(text, 25, 25)) == want).all()
    plain = decode_coco_rle(CocoRle([1, 2, 6], 3, 3))  # column-major
    assert plain.astype(int).tolist() == [[0, 0, 0], [1, 0, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="sum to"):
        decode_coco_rle(CocoRle([1, 2], 3, 3))


def test_tracks_interpolate_between_keyframes_and_end_outside() -> None:
    def box(x: float) -> Shape:
        return Shape("box", "aline", np.array([[x, 10.0], [x + 10, 20.0]]), "t.json", "track 0")

    keys = [TrackShape(0, box(0)), TrackShape(10, box(100)), TrackShape(15, box(100), outside=True),
            TrackShape(20, box(50))]  # fmt: skip
    frames = dict(expand_track(keys, last_frame=22, notes=Notes()))
    assert sorted(frames) == [*range(15), 20, 21, 22]
    assert frames[5].points[0, 0] == pytest.approx(50) and frames[12].points[0, 0] == 100
    notes = Notes()
    tri = Shape("polygon", "aline", np.array([[0, 0], [10, 0], [0, 10.0]]), "t.json", "track 1")
    dots = Shape("points", "aline", np.array([[0, 0], [10, 0.0]]), "t.json", "track 1")  # another kind: held
    held = dict(expand_track([TrackShape(0, tri), TrackShape(4, dots)], 4, notes))
    assert held[2] is tri and "differ in kind" in notes.warnings[0]


# ------------------------------------------------------------------------------------------------ formats


def test_cvat_backup_tracks_masks_tags_and_meta(tmp_path: Path) -> None:
    shapes = [
        poly("aline", 1, [(100, 150), (240, 150), (240, 160), (100, 160)]),
        poly("bline", 1, [(150, 60), (170, 200)], kind="polyline"),
        # a brush mask: 4x3 box at (110, 50); runs row-major, background first
        poly("lungslidingpresent", 2, [(0, 0)], kind="mask") | {"points": [0, 12, 110, 50, 113, 52]},
    ]
    track = {"frame": 4, "label": "aline", "group": 0, "source": "manual", "attributes": [], "elements": [],
             "shapes": [poly("aline", 4, [(100, 100), (140, 110)], kind="rectangle", outside=False),
                        poly("aline", 6, [(140, 100), (180, 110)], kind="rectangle", outside=False, occluded=True),
                        poly("aline", 7, [(140, 100), (180, 110)], kind="rectangle", outside=True)]}  # fmt: skip
    tags = [{"frame": 1, "label": "d_pneumonia", "group": 0, "source": "manual", "attributes": []},
            {"frame": 3, "label": "checked_empty", "group": 0, "source": "manual", "attributes": []}]  # fmt: skip
    src = backup(tmp_path / "task", shapes, [track], tags)
    meta = tmp_path / "meta.csv"
    meta.write_text("clip,diagnosis,patient_id,probe\nsynthetic,normal,p7,linear\n")
    lm = label_map(tmp_path, tags={"d_pneumonia": {"diagnosis": "pneumonia"}, "checked_empty": {"labelled": True}})
    out = tmp_path / "ds"
    report = run(src, out, lm, meta=meta)
    rows = {int(r["frame"]): r for r in read_manifest(out)}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6] and report.clips == 1  # the track: 4, 5 (interpolated), 6 (occluded)
    assert rows[3]["classes"] == "" and rows[3]["shapes"] == "0"  # tagged as labelled, nothing drawn: all background
    assert rows[1]["diagnosis"] == "pneumonia" and rows[2]["diagnosis"] == "normal"  # frame tag > --meta
    assert {r["patient_id"] for r in rows.values()} == {"p7"}
    m = masks(out)
    assert set(np.unique(m[rows[1]["id"]])) == {0, A, BL}
    assert set(np.unique(m[rows[2]["id"]])) == {0, PL}  # the brush mask
    cols = [np.argwhere(m[rows[f]["id"]] == A)[:, 1].mean() for f in (4, 5, 6)]
    assert cols[0] < cols[1] < cols[2] and cols[1] == pytest.approx((cols[0] + cols[2]) / 2, abs=1.0)


def test_cvat_task_frame_numbers_map_through_start_frame_and_step(tmp_path: Path) -> None:
    src = backup(tmp_path / "task", [poly("aline", 1, [(100, 100), (200, 100), (200, 110)])])
    info = json.loads((src / "task.json").read_text())
    info["data"].update(start_frame=2, stop_frame=6, frame_filter="step=2")  # task frames 0, 1, 2 = video 2, 4, 6
    (src / "task.json").write_text(json.dumps(info))
    run(src, tmp_path / "ds", label_map(tmp_path))
    assert [r["frame"] for r in read_manifest(tmp_path / "ds")] == ["4"]


def test_cvat_backup_of_an_image_task_and_the_dense_schema(tmp_path: Path) -> None:
    task = tmp_path / "task"
    (task / "data").mkdir(parents=True)
    rng = np.random.default_rng(7)
    for name in ("b_scan", "a_scan"):
        png(task / "data" / f"{name}.png", screen(rng))
    lines = [{"version": "1.1"}, {"type": "images"}, {"name": "b_scan", "extension": ".png", "width": W, "height": H},
             {"name": "a_scan", "extension": ".png", "width": W, "height": H}]  # fmt: skip
    (task / "data" / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (task / "task.json").write_text(json.dumps({"name": "stills", "data": {"start_frame": 0, "stop_frame": 1}}))
    shapes = [poly("aline", 0, [(100, 150), (240, 150), (240, 160), (100, 160)]),
              poly("lungslidingpresent", 1, [(100, 60), (240, 60), (240, 70), (100, 70)])]  # fmt: skip
    (task / "annotations.json").write_text(json.dumps([{"version": 0, "tags": [], "shapes": shapes, "tracks": []}]))
    dense = {"aline": "a_line", "lungslidingpresent": "pleural_line_healthy"}
    lm = tmp_path / "dense.json"
    lm.write_text(json.dumps({"labels": dense}))
    out = tmp_path / "ds"
    run(task, out, lm, schema="dense")
    rows = {r["clip_id"]: r for r in read_manifest(out)}
    assert set(rows) == {"a_scan", "b_scan"} and "mask_dense" in rows["a_scan"]
    m = masks(out, "dense")
    assert set(np.unique(m[rows["b_scan"]["id"]])) == {0, DENSE.index("a_line"), DENSE.index("outside_scan")}
    assert DENSE.index("pleural_line_healthy") in m[rows["a_scan"]["id"]]
    assert (m[rows["a_scan"]["id"]][:, :2] == DENSE.index("outside_scan")).all()  # the padding is outside the scan
    with pytest.raises(AnnotationError, match=r"maps onto schema .sparse. but --schema dense"):
        run(task, tmp_path / "ds2", label_map(tmp_path), schema="dense")


def _xml(images: str = "", tracks: str = "", mode: str = "annotation", size: int = 8) -> str:
    meta = (f"<meta><task><name>x</name><size>{size}</size><mode>{mode}</mode><start_frame>0</start_frame>"
            f"<stop_frame>{size - 1}</stop_frame><frame_filter></frame_filter>"
            f"<original_size><width>{W}</width><height>{H}</height></original_size></task></meta>")  # fmt: skip
    return (
        f'<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version>{meta}{images}{tracks}</annotations>'
    )


def test_cvat_xml_for_images_and_for_video(tmp_path: Path) -> None:
    imgs = tmp_path / "img"
    (imgs / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png"):
        png(imgs / "images" / name, screen(rng))
    images = (
        f'<image id="0" name="a.png" width="{W}" height="{H}">'
        '<polygon label="aline" occluded="0" points="100,100;200,100;200,110;100,110" z_order="0"/>'
        '<mask label="lungslidingpresent" occluded="0" rle="2, 4, 2, 4" left="120" top="60" width="3" height="4"/>'
        '<tag label="normal" source="manual"/></image>'
        f'<image id="1" name="b.png" width="{W}" height="{H}">'
        '<box label="bline" occluded="1" xtl="150" ytl="50" xbr="170" ybr="200" rotation="0" z_order="0"/>'
        '<polyline label="aline" occluded="0" points="100,180;240,180" z_order="0"/></image>'
    )
    (imgs / "annotations.xml").write_text(_xml(images))
    out = tmp_path / "ds_img"
    report = run(imgs, out, label_map(tmp_path), fmt="cvat-xml")
    rows = {r["clip_id"]: r for r in read_manifest(out)}
    assert set(rows) == {"a", "b"} and report.per_class == {"a_line": 2, "b_line": 1, "pleural_line": 1}
    assert rows["a"]["diagnosis"] == "normal" and rows["b"]["diagnosis"] == "unknown"

    vid = tmp_path / "vid"
    vid.mkdir()
    make_clip(vid / "scan.mp4", 8)
    tracks = ('<track id="0" label="aline" source="manual">'
              '<polygon frame="1" keyframe="1" outside="0" occluded="0" points="100,100;140,100;140,110;100,110"/>'
              '<polygon frame="5" keyframe="1" outside="0" occluded="0" points="180,100;220,100;220,110;180,110"/>'
              '<polygon frame="6" keyframe="1" outside="1" occluded="0" points="180,100;220,100;220,110;180,110"/>'
              "</track>")  # fmt: skip
    (vid / "annotations.xml").write_text(_xml(tracks=tracks, mode="interpolation"))
    out = tmp_path / "ds_vid"
    run(vid, out, label_map(tmp_path), fmt="cvat-xml")
    rows = read_manifest(out)
    assert [int(r["frame"]) for r in rows] == [1, 2, 3, 4, 5] and {r["clip_id"] for r in rows} == {"scan"}
    m = masks(out)
    cols = [np.argwhere(m[r["id"]] == A)[:, 1].mean() for r in rows]
    assert np.all(np.diff(cols) > 0) and np.diff(cols).std() < 1.0  # linear motion between the keyframes

    frames = tmp_path / "frames"  # "CVAT for video" exported with its frames as images instead of the video
    (frames / "images").mkdir(parents=True)
    for f in range(8):
        png(frames / "images" / f"frame_{f:06d}.png", screen(rng))
    (frames / "annotations.xml").write_text(_xml(tracks=tracks, mode="interpolation"))
    out = tmp_path / "ds_frames"
    run(frames, out, label_map(tmp_path), fmt="cvat-xml")
    rows = read_manifest(out)  # five stills, one clip by their names (--clip-pattern auto), ids of their own
    assert sorted(r["id"] for r in rows) == [f"frame_{f:06d}_00000" for f in range(1, 6)]
    assert {r["clip_id"] for r in rows} == {"frame"} == {r["patient_id"] for r in rows}


def _coco_string(counts: list[int]) -> str:
    """pycocotools' rleToString: the inverse of the decoder (delta-coded from the third count, 5-bit groups)."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not ((ch & 0x10 == 0 and x == 0) or (ch & 0x10 and x == -1))
            out.append(chr(ch + 48 + (0x20 if more else 0)))
    return "".join(out)


def test_coco_polygons_plain_and_compressed_rle_and_boxes(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(2)
    png(tmp_path / "images" / "s1.png", screen(rng))
    png(tmp_path / "images" / "s2.png", screen(rng))
    blob = np.zeros((H, W), bool)
    blob[100:110, 150:200] = True
    flat = blob.T.ravel()  # column-major
    change = np.flatnonzero(np.diff(flat.astype(int))) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[100, 60, 240, 60, 240, 70, 100, 70]],
         "bbox": [100, 60, 140, 10], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": {"size": [H, W], "counts": counts}, "iscrowd": 1},
        {"id": 3, "image_id": 2, "category_id": 2,
         "segmentation": {"size": [H, W], "counts": _coco_string(counts)}, "iscrowd": 1},
        {"id": 4, "image_id": 2, "category_id": 3, "segmentation": [], "bbox": [150, 40, 20, 160], "iscrowd": 0},
        {"id": 5, "image_id": 2, "category_id": 9, "segmentation": [[1, 1, 5, 1, 5, 5]], "iscrowd": 0},
    ]  # fmt: skip
    coco = {"images": [{"id": 1, "file_name": "s1.png", "width": W, "height": H},
                       {"id": 2, "file_name": "s2.png", "width": W, "height": H},
                       {"id": 3, "file_name": "unlabelled.png", "width": W, "height": H}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "aline"}, {"id": 2, "name": "lungslidingpresent"},
                           {"id": 3, "name": "bline"}]}  # fmt: skip
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    out = tmp_path / "ds"
    report = run(tmp_path / "coco.json", out, label_map(tmp_path), fmt="coco", size=W)
    rows = {r["clip_id"]: r for r in read_manifest(out)}
    assert set(rows) == {"s1", "s2"}  # an image without annotations is unknown, not empty
    assert any("category_id 9" in line and "annotation 5" in line for _, line in report.failed)
    m = masks(out)
    geo = json.loads((out / "import.json").read_text())["geometry"]
    for clip in ("s1", "s2"):
        r, c = to_out(175, 105, geo[clip])
        assert m[rows[clip]["id"]][r, c] == PL  # both RLE forms decode to the same blob
    assert m[rows["s2"]["id"]][to_out(160, 180, geo["s2"])] == BL


def test_labelme_shapes_flags_and_embedded_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    folder = tmp_path / "labelme"
    folder.mkdir()
    png(folder / "scan.png", screen(rng))
    buf = io.BytesIO()
    Image.fromarray(screen(rng)).save(buf, format="PNG")
    bits = io.BytesIO()
    Image.fromarray(np.full((6, 8), 255, np.uint8)).save(bits, format="PNG")

    def shape(label: str, kind: str, pts: list, **kw: Any) -> dict:
        return {"label": label, "shape_type": kind, "points": pts, "group_id": None, "flags": {}, **kw}

    brush = base64.b64encode(bits.getvalue()).decode()
    tri = [[100, 100], [200, 100], [200, 110]]
    doc = {"version": "5.4.1", "flags": {"covid": True, "normal": False}, "imagePath": "scan.png",
           "imageHeight": H, "imageWidth": W,
           "shapes": [shape("aline", "polygon", [[100, 150], [240, 150], [240, 160], [100, 160]]),
                      shape("bline", "line", [[160, 60], [160, 200]]),
                      shape("lungslidingpresent", "rectangle", [[100, 60], [240, 70]]),
                      shape("aline", "circle", [[200, 190], [205, 190]]),
                      shape("aline", "point", [[110, 120]]),
                      shape("bline", "mask", [[215, 80], [223, 86]], mask=brush)]}  # fmt: skip
    (folder / "scan.json").write_text(json.dumps(doc))
    embedded = {"flags": {}, "imagePath": "gone.png", "imageData": base64.b64encode(buf.getvalue()).decode(),
                "imageHeight": H, "imageWidth": W, "shapes": [shape("aline", "polygon", tri)]}  # fmt: skip
    (folder / "embedded.json").write_text(json.dumps(embedded))
    (folder / "broken.json").write_text('{"shapes": [')
    out = tmp_path / "ds"
    report = run(folder, out, label_map(tmp_path), fmt="labelme", thickness="4px")
    rows = {r["clip_id"]: r for r in read_manifest(out)}
    assert set(rows) == {"scan", "gone"} and rows["scan"]["diagnosis"] == "covid"
    assert [f for f, _ in report.failed] == [str(folder / "broken.json")]
    m = masks(out)
    geo = json.loads((out / "import.json").read_text())["geometry"]["scan"]
    for x, y, cls in [(170, 155, A), (160, 100, BL), (120, 65, PL), (200, 190, A), (218, 83, BL), (130, 120, 0)]:
        assert m[rows["scan"]["id"]][to_out(x, y, geo)] == cls, (x, y)


def test_mask_png_folders_indexed_and_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    idx = tmp_path / "indexed"
    (idx / "images").mkdir(parents=True)
    (idx / "masks").mkdir()
    truth = np.zeros((H, W), np.uint8)
    truth[100:112, 100:240] = 1
    truth[60:66, 100:240] = 2
    for name in ("s1", "s2"):
        png(idx / "images" / f"{name}.png", screen(rng))
    png(idx / "masks" / "s1.png", truth, SPARSE.palette())
    png(idx / "masks" / "s2.png", np.zeros((H, W), np.uint8), SPARSE.palette())  # labelled, all background
    lm = label_map(tmp_path, {"1": "a_line", "2": "pleural_line"})
    out = tmp_path / "ds"
    run(idx, out, lm, fmt="masks", workers=2)  # two images: two worker processes
    rows = {r["clip_id"]: r for r in read_manifest(out)}
    assert set(rows) == {"s1", "s2"} and rows["s2"]["classes"] == ""
    geo = json.loads((out / "import.json").read_text())["geometry"]["s1"]
    m = masks(out)
    assert m[rows["s1"]["id"]][to_out(150, 105, geo)] == A and m[rows["s1"]["id"]][to_out(150, 62, geo)] == PL

    rgb = tmp_path / "rgb"
    (rgb / "images").mkdir(parents=True)
    (rgb / "masks").mkdir()
    png(rgb / "images" / "s1.png", screen(rng))
    colour = np.zeros((H, W, 3), np.uint8)
    colour[100:112, 100:240] = (36, 165, 115)
    colour[60:66, 100:240] = (38, 247, 19)
    colour[150:152, 100:240] = (1, 2, 3)  # a colour nobody mapped
    png(rgb / "masks" / "s1_mask.png", colour)
    lm = label_map(tmp_path, colors={"aline": "#24a573", "lungslidingpresent": [38, 247, 19]})
    out = tmp_path / "ds_rgb"
    report = run(rgb, out, lm, fmt="masks", workers=2)
    geo = json.loads((out / "import.json").read_text())["geometry"]["s1"]
    mask = next(iter(masks(out).values()))
    assert mask[to_out(150, 105, geo)] == A and mask[to_out(150, 62, geo)] == PL
    assert report.unmapped == {"#010203": 1} and any("#010203" in w for w in report.warnings)


def test_dicom_clip_thickness_in_mm_and_refused_without_spacing(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    frames = np.stack([screen(rng) for _ in range(4)])
    write_dicom(tmp_path / "clip.dcm", frames, PixelSpacing=[0.25, 0.25])
    make_clip(tmp_path / "clip.mp4", 4)
    images = '<image id="1" name="frame_000001"><polyline label="aline" points="100,150;240,150"/></image>'
    (tmp_path / "annotations.xml").write_text(_xml(images, mode="interpolation", size=4))
    lm = label_map(tmp_path)
    out = tmp_path / "ds"
    run(tmp_path / "annotations.xml", out, lm, fmt="cvat-xml", media=tmp_path / "clip.dcm", thickness="2mm", size=W)
    mask = next(iter(masks(out).values()))
    geo = json.loads((out / "import.json").read_text())["geometry"]["clip"]
    col = to_out(170, 150, geo)[1]
    assert (mask[:, col] == A).sum() == pytest.approx(8 * geo["scale_y"], abs=2)  # 2 mm at 0.25 mm/px: 8 px
    with pytest.raises(AnnotationError, match="only DICOM"):
        run(tmp_path / "annotations.xml", tmp_path / "ds2", lm, fmt="cvat-xml", media=tmp_path / "clip.mp4",
            thickness="2mm")  # fmt: skip


# ------------------------------------------------------------------------------------------------ labels and ids


def test_priority_across_classes_default_and_stated(tmp_path: Path) -> None:
    shapes = [poly("lungslidingpresent", 1, [(100, 100), (200, 100), (200, 120), (100, 120)]),
              poly("aline", 1, [(150, 90), (240, 90), (240, 130), (150, 130)])]  # fmt: skip
    src = backup(tmp_path / "task", shapes)
    run(src, tmp_path / "d1", label_map(tmp_path))  # default: the later class of the schema wins
    run(src, tmp_path / "d2", label_map(tmp_path, priority=["a_line", "pleural_line"]))
    for out, winner in ((tmp_path / "d1", PL), (tmp_path / "d2", A)):
        geo = json.loads((out / "import.json").read_text())["geometry"]["clip"]
        mask = next(iter(masks(out).values()))
        assert mask[to_out(175, 110, geo)] == winner
        assert mask[to_out(120, 110, geo)] == PL and mask[to_out(220, 110, geo)] == A


def test_unmapped_names_warned_with_counts_or_refused_with_strict(tmp_path: Path) -> None:
    small = [(100, 50), (120, 50), (110, 60)]
    shapes = [poly("aline", 1, [(100, 100), (200, 100), (200, 110)]), poly("rib", 1, small), poly("rib", 2, small),
              poly("pleura", 3, small)]  # fmt: skip
    src = backup(tmp_path / "task", shapes)
    report = run(src, tmp_path / "ds", label_map(tmp_path, {**LABELS, "pleura": None}))
    assert report.frames == 1 and report.unmapped == {"rib": 2}  # "pleura": null is ignored on purpose
    assert sum("rib" in w for w in report.warnings) == 1
    assert any('"rib"' in w and "2 shape(s) on 2 frame(s)" in w for w in report.warnings)
    with pytest.raises(AnnotationError, match=r"--strict.*rib"):
        run(src, tmp_path / "ds2", label_map(tmp_path), strict=True)


def test_densify_uses_the_frames_diagnosis_and_refuses_without_one(tmp_path: Path) -> None:
    shapes = [poly("lungslidingpresent", 1, [(90, 80), (250, 80), (250, 90), (90, 90)]),
              poly("aline", 1, [(90, 150), (250, 150), (250, 160), (90, 160)])]  # fmt: skip
    src = backup(tmp_path / "task", shapes)
    with pytest.raises(AnnotationError, match="--densify needs each frame's diagnosis"):
        run(src, tmp_path / "ds", label_map(tmp_path), densify=True)
    meta = tmp_path / "meta.csv"
    meta.write_text("clip,diagnosis\nclip.mp4,covid\n")
    out = tmp_path / "ds"
    run(src, out, label_map(tmp_path), densify=True, meta=meta)
    row = read_manifest(out)[0]
    dense = np.asarray(Image.open(out / row["mask_dense"]))
    geo = json.loads((out / "import.json").read_text())["geometry"]["clip"]
    assert dense[to_out(170, 85, geo)] == DENSE.index("pleural_line_unhealthy")
    assert dense[to_out(170, 120, geo)] == DENSE.index("below_pleura_unhealthy")
    assert dense[to_out(170, 155, geo)] == DENSE.index("a_line") and dense[to_out(170, 50, geo)] == 0
    item = LUSDataset(out, "dense")[0]
    assert item["label"] == 0 and item["mask"].shape == (128, 128)


def test_label_map_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"labels": {"aline": "a-line"}}))
    with pytest.raises(AnnotationError, match=r"bad\.json: label 'aline' maps to 'a-line'.*classes: background"):
        load_label_map(bad)
    bad.write_text('{"labels": {"aline": "a_line"},}')
    with pytest.raises(AnnotationError, match=r"bad\.json: not valid JSON \(line 1"):
        load_label_map(bad)
    bad.write_text(json.dumps({"labels": {}, "priorty": []}))
    with pytest.raises(AnnotationError, match=r"unknown key.*priorty"):
        load_label_map(bad)
    yaml_map = tmp_path / "map.yaml"
    yaml_map.write_text("schema: sparse\nlabels:\n  aline: a_line\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(AnnotationError, match="PyYAML is not installed"):
            load_label_map(yaml_map)
    else:
        assert load_label_map(yaml_map).labels == {"aline": "a_line"}


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_shapes_and_frames_are_reported_one_line_each_and_the_rest_imported(tmp_path: Path) -> None:
    shapes = [
        poly("aline", 1, [(100, 100), (200, 100), (200, 110), (100, 110)]),
        poly("rib", 1, [(100, 50), (120, 50), (110, 60)]),  # an unknown label
        poly("aline", 2, [(-40, 100), (200, 100), (200, 110), (-40, 110)]),  # partly outside: clipped
        poly("aline", 3, [(400, 100), (450, 100), (450, 110)]),  # wholly outside: skipped
        poly("lungslidingpresent", 3, [(100, 60), (240, 60), (240, 70), (100, 70)]),
        poly("aline", 50, [(100, 100), (200, 100), (200, 110)]),  # beyond the 8-frame clip (and the task)
        poly("aline", 4, [(100, 80), (240, 180), (240, 80), (100, 180)]),  # a bow-tie
        poly("aline", 5, [(100, 100), (200, 100), (200, 110)], kind="cuboid"),  # not drawable
        poly("aline", 5, [(100, 100), (200, 100), (200, 110)]),
    ]
    src = backup(tmp_path / "task", shapes)
    out = tmp_path / "ds"
    report = run(src, out, label_map(tmp_path))
    ann = str(src / "annotations.json")
    assert [int(r["frame"]) for r in read_manifest(out)] == [1, 2, 3, 4, 5]
    lines = [line for _, line in report.failed]
    assert all(line.startswith(ann) for line in lines) and len(lines) == 3, lines
    assert any("frame 3" in x and "wholly outside the 320x240 frame" in x for x in lines)
    assert any("frame 50" in x and "beyond" in x for x in lines)
    assert any("cuboid" in x and "frame 5" in x for x in lines)
    assert any("frame 2" in x and "partly outside" in x and "clipped" in x for x in report.warnings)
    assert any('"rib"' in x and "1 shape(s)" in x for x in report.warnings)
    meta = json.loads((out / "import.json").read_text())
    assert [f["error"] for f in meta["failed"]] == lines
    rows = {int(r["frame"]): r for r in read_manifest(out)}
    geo = meta["geometry"]["clip"]
    tie = masks(out)[rows[4]["id"]]
    assert tie[to_out(110, 130, geo)] == A and tie[to_out(230, 130, geo)] == A  # both lobes (even-odd)
    assert tie[to_out(170, 90, geo)] == 0 and tie[to_out(170, 170, geo)] == 0
    clipped = masks(out)[rows[2]["id"]]
    assert clipped[to_out(92, 105, geo)] == A


def test_missing_media_malformed_files_and_empty_tasks_fail_with_one_line(tmp_path: Path) -> None:
    src = backup(tmp_path / "novideo", [poly("aline", 1, [(100, 100), (200, 100), (200, 110)])], video=False)
    with pytest.raises(AnnotationError, match=r"no frame could be imported.*missing video clip\.mp4"):
        run(src, tmp_path / "o1", label_map(tmp_path))
    src = backup(tmp_path / "empty", [])
    with pytest.raises(AnnotationError, match="is empty: no shapes, tracks or tags"):
        run(src, tmp_path / "o2", label_map(tmp_path))
    (src / "annotations.json").write_text('[{"shapes": [')
    with pytest.raises(AnnotationError, match=r"annotations\.json: not valid JSON \(line 1, column"):
        run(src, tmp_path / "o3", label_map(tmp_path))
    (tmp_path / "x.xml").write_text("<annotations><image id='0' name='a.png'><polygon</annotations>")
    with pytest.raises(AnnotationError, match=r"x\.xml: not well-formed XML \(line 1"):
        run(tmp_path / "x.xml", tmp_path / "o4", label_map(tmp_path), fmt="cvat-xml")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
    # a COCO export with one image missing: the other is imported, the missing one named
    (tmp_path / "coco").mkdir()
    png(tmp_path / "coco" / "here.png", screen(np.random.default_rng(6)))
    ann = [{"id": i, "image_id": i, "category_id": 1, "segmentation": [[100, 100, 200, 100, 200, 110]]}
           for i in (1, 2)]  # fmt: skip
    coco = {"images": [{"id": 1, "file_name": "here.png"}, {"id": 2, "file_name": "gone.png"}], "annotations": ann,
            "categories": [{"id": 1, "name": "aline"}]}  # fmt: skip
    (tmp_path / "coco" / "c.json").write_text(json.dumps(coco))
    report = run(tmp_path / "coco", tmp_path / "o5", label_map(tmp_path), fmt="coco")
    assert report.frames == 1 and any("missing image gone.png" in line for _, line in report.failed)


# ------------------------------------------------------------------------------------------------ command line


def _cli(*args: object) -> tuple[int, str]:
    res = CliRunner(env={"COLUMNS": "400"}).invoke(app, [str(a) for a in args])
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def test_cli_imports_refuses_a_full_out_and_exits_2_with_one_line(tmp_path: Path) -> None:
    src = backup(tmp_path / "task", [poly("aline", f, [(100, 100), (200, 100), (200, 110)]) for f in (1, 2)])
    lm = label_map(tmp_path)
    out = tmp_path / "ds"
    code, output = _cli("data", "import-annotations", src, "--format", "cvat", "--labels", lm, "--out", out,
                        "--size", "64", "--workers", "1")  # fmt: skip
    assert code == 0, output
    assert "imported 2 frames" in output and "a_line 2" in output
    code, output = _cli("data", "import-annotations", src, "--format", "cvat", "--labels", lm, "--out", out)
    assert code == 2 and "not empty" in output and "--overwrite" in output
    code, output = _cli("data", "import-annotations", src, "--format", "cvat", "--labels", lm, "--out",
                        tmp_path / "o2", "--thickness", "3 furlongs")  # fmt: skip
    assert code == 2 and "--thickness" in output
    empty = backup(tmp_path / "empty", [])
    code, output = _cli("data", "import-annotations", empty, "--format", "cvat", "--labels", lm, "--out",
                        tmp_path / "o3")  # fmt: skip
    assert code == 2 and "empty" in output and len(output.strip().splitlines()) == 1
    code, output = _cli("data", "import-annotations", "--help")
    assert code == 0 and "--densify" in output and "JSON" in output
