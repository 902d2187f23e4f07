"""Masks -> editable labels (CVAT XML, COCO, Labelme) -> ``import-annotations`` -> the same masks.

Every round trip reads the written files back with the importer: through its API (the format's reader and
``rasterise``, at the original resolution), once through the command line (cleaned, cropped and resized as
``import-annotations`` writes its dataset), and on the real CVAT fixture. Also here: the importer's leftovers
(track keyframes with different point counts, still images grouped into clips, probe names).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from pleura.cli import app
from pleura.data import read_manifest, split_by_group
from pleura.data.annotations import AnnotationError, AnnotationImportConfig, fill_polygon, import_annotations
from pleura.data.annotations.export import (
    ExportFormat,
    ExportItem,
    FrameMask,
    class_ious,
    export_label_map,
    export_labels,
    frame_polygons,
)
from pleura.data.annotations.importer import rasterise, read_items
from pleura.data.annotations.model import Notes, Shape, TrackShape, expand_track, load_label_map, match_points
from pleura.data.annotations.polygons import mask_polygons, signed_area, trace_boundaries
from pleura.data.cleaning import find_scan_area
from pleura.data.readers import iter_frames
from pleura.data.synthetic import write_clip
from pleura.labels import DENSE, SPARSE

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cvat-lus"
if not FIXTURE.is_dir():
    FIXTURE = Path("/work/shared/data/cvat-lus")
H, W = 240, 320
AREA = (30, 210, 90, 250)  # the synthetic screen's scan area: top, bottom, left, right
A, BL, PL = SPARSE.index("a_line"), SPARSE.index("b_line"), SPARSE.index("pleural_line")
FORMATS = tuple(ExportFormat)


# ------------------------------------------------------------------------------------------------------ helpers


def sparse_masks() -> list[np.ndarray]:
    """Hand-built sparse masks: a 3-px pleural line band, A-line bands, a B-line crossing them (touching
    regions of three classes), a diagonal band, an A-line region with a hole, and a mask of one pixel."""
    m = np.zeros((H, W), np.uint8)
    m[60:63, 95:245] = PL  # the pleural line: a band 3 px thick
    m[110:120, 95:245] = A
    m[170:180, 95:245] = A
    m[64:205, 160:176] = BL  # a B-line from just below the pleura down, over both A-lines: touching regions
    rows, cols = np.indices((H, W))
    diag = (np.abs((rows - 130) - 0.4 * (cols - 100)) < 2.5) & (cols > 180) & (cols < 240)
    m[diag & (m == 0)] = A  # a slanted A-line piece: a staircase outline to simplify
    ring = np.zeros((H, W), np.uint8)
    ring[185:205, 100:150] = A
    ring[190:200, 110:130] = 0  # a hole
    m[ring > 0] = A
    second = np.zeros((H, W), np.uint8)
    second[150, 200] = BL  # a single pixel
    second[40:43, 100:240] = PL
    return [m, second]


def dense_mask() -> np.ndarray:
    """A dense mask whose region below the pleura holds A-lines: holes in a large region."""
    m = np.zeros((H, W), np.uint8)
    m[:, :90] = m[:, 250:] = DENSE.index("outside_scan")
    m[60:64, 90:250] = DENSE.index("pleural_line_healthy")
    m[64:, 90:250] = DENSE.index("below_pleura_healthy")
    m[110:116, 100:240] = DENSE.index("a_line")
    m[160:166, 100:240] = DENSE.index("a_line")
    return m


def screen(rng: np.random.Generator) -> np.ndarray:
    """A scanner screen: speckle in the scan area, burnt-in text and a ruler around it."""
    frame = np.zeros((H, W), np.uint8)
    t, b, left, right = AREA
    frame[t:b, left:right] = rng.integers(30, 110, (b - t, right - left))
    frame[5:15, 10:80] = 255
    frame[40:200:20, 300:306] = 255
    return frame


def make_clip(path: Path, n: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    return write_clip(path, [screen(rng) for _ in range(n)], fps=10)


def ious_present(truth: np.ndarray, got: np.ndarray) -> dict[int, float]:
    return class_ious(truth, got, [int(c) for c in np.unique(truth) if c != 0])


def import_src(report: Any, folder: str) -> Path:
    """The file or folder ``import-annotations`` reads for one folder of an export."""
    entry = next(f for f in report.folders if f["folder"] == folder)
    return Path(re.search(r"import-annotations (\S+)", entry["import"]).group(1))


def read_back(
    fmt: ExportFormat, src: Path, media: Path | None, labels: Path, shape: tuple[int, int] = (H, W)
) -> dict[str, dict[int, np.ndarray]]:
    """Read an export with the importer's reader and draw every frame (``shape``: height, width, where the format
    does not state it) as the importer does: clip -> frame -> mask."""
    lmap = load_label_map(labels)
    notes = Notes()
    items = read_items(fmt.import_format, src, media, lmap, notes)
    assert not notes.failed, notes.failed
    out: dict[str, dict[int, np.ndarray]] = {}
    for item in items:
        w, h = item.size if item.size else shape[::-1]
        for f, shapes in item.shapes.items():
            drawn = rasterise([s for s in shapes if lmap.mapped(s.label)], (h, w), lmap, 1.0, f"frame {f}", notes)
            out.setdefault(item.clip_id, {})[f] = drawn
    assert not notes.failed, notes.failed
    return out


def winding_fill(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixels whose centres have a non-zero winding number (the rule of CVAT's SVG polygons)."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    wind = np.zeros((h, w), int)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1, strict=True):
        side = (c - a) * (yy - b) - (xx - a) * (d - b)
        wind += ((b <= yy) & (d > yy) & (side > 0)).astype(int) - ((d <= yy) & (b > yy) & (side < 0)).astype(int)
    return wind != 0


# ------------------------------------------------------------------------------------------------ polygons


def test_traced_outlines_are_exact_4_connected_and_keep_holes_as_keyholes() -> None:
    m = np.zeros((12, 14), bool)
    m[2:9, 2:10] = True
    m[4:6, 4:7] = False  # a hole
    m[9, 10] = True  # touches the block only at a corner: a region of its own (4-connectivity)
    loops = trace_boundaries(m)
    outer = [c for c, _ in loops if signed_area(c) > 0]
    holes = [c for c, _ in loops if signed_area(c) < 0]
    assert len(outer) == 2 and len(holes) == 1 and abs(signed_area(holes[0])) == 6 - 4 * 0.125  # corners cut
    polys = mask_polygons(m, 0.0)
    assert len(polys) == 2
    even_odd = np.zeros(m.shape, np.uint8)
    for p in polys:
        filled = np.zeros(m.shape, np.uint8)
        fill_polygon(filled, p.astype(float))
        even_odd |= filled
        assert (winding_fill(p.astype(float), *m.shape) == filled.astype(bool)).all()  # non-zero rule: the same
    assert (even_odd.astype(bool) == m).all()  # exact, hole empty
    assert (np.concatenate(polys) * 2 == np.round(np.concatenate(polys) * 2)).all()  # on the half-pixel grid


def test_simplification_cuts_vertices_within_the_tolerance_and_the_iou_floor_holds() -> None:
    rows, cols = np.indices((200, 300))
    band = np.abs((rows - 100) - 0.37 * (cols - 150)) < 2.0  # a slanted band 4 px thick: a long staircase
    exact = mask_polygons(band, 0.0)[0]
    simple = mask_polygons(band, 1.0)[0]
    assert len(simple) <= 12 < len(exact)
    lmap = export_label_map(SPARSE)
    mask = band.astype(np.uint8) * A
    polys, worst = frame_polygons(mask, lmap, tolerance=3.0, min_iou=0.97)
    assert worst >= 0.97 and len(polys) == 1 and len(polys[0][1]) <= 12
    # at 3 px the band's outline would be cut too far; the frame is traced again finer until IoU >= 0.97
    coarse = np.zeros(band.shape, np.uint8)
    fill_polygon(coarse, mask_polygons(band, 3.0)[0].astype(float))
    assert class_ious(mask, coarse * A, [A])[A] < 0.97
    assert frame_polygons(mask, lmap, tolerance=3.0, min_iou=1.0)[1] == 1.0  # tolerance 0 at the end: exact


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_clip_and_stills_through_the_importer_api(tmp_path: Path, fmt: ExportFormat) -> None:
    masks = sparse_masks()
    clip = make_clip(tmp_path / "media" / "scan.mp4")
    stills = []
    for i, m in enumerate(masks):
        path = tmp_path / "media" / "stills" / f"still{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(screen(np.random.default_rng(i))).save(path)
        stills.append(ExportItem(path, (W, H), [FrameMask(0, m, screen(np.random.default_rng(i)))]))
    empty = np.zeros((H, W), np.uint8)
    items = [ExportItem(clip, (W, H), iter([(2, masks[0]), (5, masks[1]), (6, empty)]), frame_count=8), *stills]
    out = tmp_path / "labels"
    report = export_labels(fmt, out, items, "sparse", embed_images=fmt is ExportFormat.LABELME)
    assert report.frames == 5 and report.empty == 1 and not report.failed
    assert report.worst_iou is not None and report.worst_iou >= 0.97
    assert report.per_class == {"a_line": 2, "b_line": 4, "pleural_line": 4}
    labels = out / "labels.json"
    assert load_label_map(labels).priority == ("pleural_line", "b_line", "a_line")
    back = read_back(fmt, import_src(report, "scan"), clip, labels)
    assert set(back) == {"scan"} and sorted(back["scan"]) == [2, 5]  # the empty frame is not a labelled frame
    for f, m in ((2, masks[0]), (5, masks[1])):
        ious = ious_present(m, back["scan"][f])
        assert set(ious) == set(np.unique(m)) - {0} and min(ious.values()) >= 0.95, (f, ious)
    src = import_src(report, "images")
    media = None if fmt is ExportFormat.LABELME else tmp_path / "media" / "stills"
    back = read_back(fmt, src, media, labels)
    for i, m in enumerate(masks):
        ious = ious_present(m, back[f"still{i}"][0])
        assert min(ious.values()) >= 0.95, (i, ious)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert {"labels.json", "export.json"} <= set(files)
    assert ("cvat_labels.json" in files) == (fmt is ExportFormat.CVAT)
    if fmt is ExportFormat.LABELME:  # one JSON per frame; the image embedded when asked
        doc = json.loads((out / "images" / "still0.json").read_text())
        assert doc["imageData"] and doc["imagePath"].endswith("still0.png") and doc["imageWidth"] == W
        assert (out / "images" / doc["imagePath"]).resolve() == stills[0].media.resolve()
    if fmt is ExportFormat.CVAT:  # video: tracks that end on the next frame; stills: CVAT for images
        xml = (out / "scan" / "annotations.xml").read_text()
        assert "<mode>interpolation</mode>" in xml and 'outside="1"' in xml and "<size>8</size>" in xml
        assert "<mode>annotation</mode>" in (out / "images" / "annotations.xml").read_text()


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_dense_regions_with_holes(tmp_path: Path, fmt: ExportFormat) -> None:
    m = dense_mask()
    (tmp_path / "clip.mp4").touch()  # the readers take frame numbers from a video that is there (not decoded here)
    item = ExportItem(tmp_path / "clip.mp4", (W, H), [(0, m)], video=True, frame_count=1)
    report = export_labels(fmt, tmp_path / "out", [item], "dense")
    # the region below the pleura is one polygon with two keyhole cuts around the A-lines
    below = DENSE.index("below_pleura_healthy")
    assert report.shapes == 6 and report.per_class["below_pleura_healthy"] == 1  # outside_scan: 2 strips
    back = read_back(fmt, import_src(report, "clip"), tmp_path / "clip.mp4", tmp_path / "out" / "labels.json")
    ious = ious_present(m, back["clip"][0])
    assert min(ious.values()) >= 0.95 and ious[below] >= 0.99, ious


def test_round_trip_through_the_command_line(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "scan.mp4")
    masks = sparse_masks()
    item = ExportItem(clip, None, [(1, masks[0]), (4, masks[1])])  # the frame size: the first mask's
    report = export_labels("cvat", tmp_path / "pre", [item], "sparse")
    command = report.folders[0]["import"].split()
    assert command[:3] == ["pleura", "data", "import-annotations"] and command[-2:] == ["--out", "DATASET"]
    out = tmp_path / "ds"
    res = CliRunner(env={"COLUMNS": "400"}).invoke(app, [*command[1:-1], str(out), "--size", "256", "--workers", "1"])
    assert res.exit_code == 0, res.output
    rows = read_manifest(out)
    assert [int(r["frame"]) for r in rows] == [1, 4]
    area = find_scan_area(np.stack([f.image for f in iter_frames(clip)]))
    from pleura.data.annotations import fit_mask_to_size

    for row, m in zip(rows, masks, strict=True):
        got = np.asarray(Image.open(out / row["mask_sparse"]))
        want = fit_mask_to_size(m, area, 256)
        ious = ious_present(want, got)
        assert set(ious) == set(np.unique(m)) - {0} and min(ious.values()) >= 0.95, ious


needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "task_195" / "task.json").is_file(), reason=f"cvat-lus fixture not at {FIXTURE}"
)


def fixture_masks(tmp_path: Path) -> tuple[Any, dict[int, np.ndarray], Path]:
    """The cvat-lus clip's item, its 39 expert-labelled frames rasterised by the importer, and the label map."""
    labels = tmp_path / "map.json"
    labels.write_text(json.dumps({"labels": {"aline": "a_line", "lungslidingpresent": "pleural_line"}}))
    lmap = load_label_map(labels)
    notes = Notes()
    (item,) = read_items("cvat", FIXTURE / "task_195", None, lmap, notes)
    w, h = item.size
    truth = {f: rasterise(shapes, (h, w), lmap, 3.0, f"frame {f}", notes) for f, shapes in sorted(item.shapes.items())}
    assert len(truth) == 39 and not notes.failed
    return item, truth, labels


@needs_fixture
def test_round_trip_of_the_real_fixture_expert_polygons(tmp_path: Path) -> None:
    item, truth, _ = fixture_masks(tmp_path)
    w, h = item.size
    for fmt in FORMATS:  # the experts' polygons, rasterised by the importer, exported and read back
        out = tmp_path / f"pre_{fmt}"
        report = export_labels(fmt, out, [ExportItem(item.media, (w, h), truth.items(), frame_count=164)], "sparse")
        assert report.frames == 39 and report.per_class == {"a_line": 39, "pleural_line": 17}
        back = read_back(fmt, import_src(report, item.media.stem), item.media, out / "labels.json", (h, w))
        clip = back[item.media.stem]
        assert sorted(clip) == sorted(truth)
        worst = min(v for f, m in truth.items() for v in ious_present(m, clip[f]).values())
        assert worst >= 0.95, (fmt, worst)


@needs_fixture
def test_real_fixture_exported_and_imported_gives_the_experts_dataset(tmp_path: Path) -> None:
    item, truth, labels = fixture_masks(tmp_path)
    cvat_out = tmp_path / "pre_cvat"
    export_labels("cvat", cvat_out, [ExportItem(item.media, item.size, truth.items(), frame_count=164)], "sparse")
    # the whole import: the same 39 rows and classes as the experts' own export, the masks at IoU >= 0.95
    cfg = AnnotationImportConfig(format="cvat", size=256, workers=1)
    import_annotations(FIXTURE / "task_195", tmp_path / "expert", labels, cfg)
    again = import_annotations(cvat_out / item.media.stem / "annotations.xml", tmp_path / "again",
                               cvat_out / "labels.json", AnnotationImportConfig(format="cvat-xml", size=256, workers=1),
                               media=item.media)  # fmt: skip
    assert again.frames == 39 and again.per_class == {"a_line": 39, "pleural_line": 17} and not again.failed
    for a, b in zip(read_manifest(tmp_path / "expert"), read_manifest(tmp_path / "again"), strict=True):
        assert a["id"] == b["id"]
        ma = np.asarray(Image.open(tmp_path / "expert" / a["mask_sparse"]))
        mb = np.asarray(Image.open(tmp_path / "again" / b["mask_sparse"]))
        assert min(ious_present(ma, mb).values()) >= 0.95, a["id"]


@st.composite
def blob_masks(draw: st.DrawFn) -> np.ndarray:
    """Random blobs of the sparse classes: smoothed noise thresholded, classes overlapping where they meet."""
    seed = draw(st.integers(0, 2**31 - 1))
    h, w = draw(st.integers(8, 80)), draw(st.integers(8, 80))
    sigma = draw(st.floats(0.6, 4.0))
    level = draw(st.floats(0.5, 0.6))
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for c in (A, BL, PL):
        blob = ndimage.gaussian_filter(rng.random((h, w)), sigma)
        m[blob > np.quantile(blob, level + 0.35 * rng.random())] = c
    return m


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mask=blob_masks(), fmt=st.sampled_from(FORMATS), tolerance=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_property_random_blobs_come_back_at_iou_095(tmp_path: Path, mask: np.ndarray, fmt: ExportFormat,
                                                    tolerance: float) -> None:  # fmt: skip
    h, w = mask.shape
    out = tmp_path / uuid.uuid4().hex  # hypothesis may run an example twice in one test's tmp_path
    (tmp_path / "c.mp4").touch()
    item = ExportItem(tmp_path / "c.mp4", (w, h), [(3, mask)], video=True)
    report = export_labels(fmt, out, [item], "sparse", tolerance=tolerance)
    back = read_back(fmt, import_src(report, "c"), tmp_path / "c.mp4", out / "labels.json", mask.shape)
    if not mask.any():
        assert back == {} and report.empty == 1
        return
    ious = ious_present(mask, back["c"][3])
    assert min(ious.values()) >= 0.95 and min(ious.values()) == pytest.approx(report.worst_iou), ious


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_masks_are_reported_one_line_each_and_the_rest_written(tmp_path: Path) -> None:
    good = sparse_masks()[0]
    frames = [(0, good), (1, good[:100]), (2, np.full((H, W), 9, np.uint8)), (0, good), (-1, good), (3, good)]
    still = tmp_path / "s.png"
    items = [ExportItem(tmp_path / "clip.mp4", (W, H), frames), ExportItem(still, (W, H), [(1, good)])]
    report = export_labels("coco", tmp_path / "out", items, "sparse")
    assert report.frames == 2
    lines = [line for _, line in report.failed]
    assert len(lines) == 5 and all(line.startswith(str(tmp_path)) for line in lines)
    assert any("frame 1: mask of shape (100, 320)" in x for x in lines)
    assert any("frame 2: mask values 9..9" in x and "'sparse'" in x for x in lines)
    assert any("frame 0 comes twice" in x for x in lines) and any("frame -1 is not" in x for x in lines)
    assert any("s.png" in x and "still image" in x for x in lines)
    exported = json.loads((tmp_path / "out" / "export.json").read_text())
    assert [f["error"] for f in exported["failed"]] == lines
    with pytest.raises(AnnotationError, match="not empty; pass --overwrite"):
        export_labels("coco", tmp_path / "out", items[:1], "sparse")
    with pytest.raises(AnnotationError, match=r"no frame could be exported \(1 problem"):
        export_labels("cvat", tmp_path / "out2", [ExportItem(still, (W, H), [(0, good[:5])])], "sparse")
    with pytest.raises(AnnotationError, match="unknown label format 'voc'; choose one of: cvat, coco, labelme"):
        export_labels("voc", tmp_path / "out3", [], "sparse")
    with pytest.raises(AnnotationError, match="unknown schema"):
        export_labels("cvat", tmp_path / "out3", [], "sparser")
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_a_failing_mask_stream_keeps_the_frames_before(tmp_path: Path) -> None:
    def frames():
        yield 0, sparse_masks()[0]
        yield 1, sparse_masks()[0][:, :100]  # not the first mask's size: skipped
        raise OSError("decoder lost")

    report = export_labels("labelme", tmp_path / "out", [ExportItem(tmp_path / "c.mp4", None, frames())], "sparse")
    assert report.frames == 1 and "frame 1: mask of shape (240, 100)" in report.failed[0][1]
    assert "decoder lost" in report.failed[1][1] and "after 1 frame(s)" in report.failed[1][1]
    assert (tmp_path / "out" / "c" / "frame_000000.json").is_file()


# ------------------------------------------------------------------------------------------------ importer leftovers


def test_track_keyframes_with_different_point_counts_are_resampled_by_arc_length() -> None:
    square = np.array([[0, 0], [20, 0], [20, 20], [0, 20.0]])
    octagon = np.array([[45, 0], [40, 0], [40, 10], [40, 20], [50, 20], [60, 20], [60, 10], [60, 0], [50, 0.0]])
    # the octagon is drawn the other way round and starts mid-edge: it is turned and started where it fits
    notes = Notes()
    keys = [TrackShape(0, Shape("polygon", "aline", square, "t.xml", "track 0")),
            TrackShape(10, Shape("polygon", "aline", octagon, "t.xml", "track 0"))]  # fmt: skip
    frames = dict(expand_track(keys, 10, notes))
    assert not notes.warnings and sorted(frames) == list(range(11))
    assert frames[0].points is square and frames[10].points is octagon  # keyframes as drawn
    mid = np.zeros((30, 70), np.uint8)
    fill_polygon(mid, frames[5].points)
    rows, cols = np.nonzero(mid)
    assert mid.sum() == 400 and cols.mean() == pytest.approx(29.5) and rows.mean() == pytest.approx(9.5)
    a, b = match_points(square, octagon, closed=True)
    assert len(a) == len(b) >= len(octagon)
    assert {tuple(p) for p in square.tolist()} <= {tuple(p) for p in a.tolist()}  # every vertex kept
    # polylines too, and a polyline drawn backwards is turned round
    line_a = np.array([[0, 0], [100, 0.0]])
    line_b = np.array([[100, 50], [50, 50], [0, 50.0]])
    keys = [TrackShape(0, Shape("polyline", "bline", line_a, "t.xml", "track 1")),
            TrackShape(4, Shape("polyline", "bline", line_b, "t.xml", "track 1"))]  # fmt: skip
    mid = dict(expand_track(keys, 4, notes))[2].points
    assert not notes.warnings and mid[0].tolist() == [0, 25] and mid[-1].tolist() == [100, 25]


def test_still_images_of_one_clip_are_grouped_by_name_or_csv_and_never_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    (tmp_path / "images").mkdir()
    names = ["clip7_000001", "clip7_000005", "clip7_frame_12", "clip9-0002", "clip9-0003", "lone", "s1", "s2"]
    images, anns = [], []
    for i, name in enumerate(names, start=1):
        Image.fromarray(screen(rng)).save(tmp_path / "images" / f"{name}.png")
        images.append({"id": i, "file_name": f"{name}.png", "width": W, "height": H})
        anns.append({"id": i, "image_id": i, "category_id": 1, "segmentation": [[100, 100, 200, 100, 200, 110]]})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "aline"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    labels = tmp_path / "map.json"
    labels.write_text(json.dumps({"labels": {"aline": "a_line"}}))

    def clips(**kw: Any) -> tuple[dict[str, str], Any]:
        out = tmp_path / f"ds{len(list(tmp_path.glob('ds*')))}"
        meta = kw.pop("meta", None)
        cfg = AnnotationImportConfig(format="coco", size=64, workers=1, **kw)
        report = import_annotations(tmp_path / "coco.json", out, labels, cfg, meta=meta)
        rows = read_manifest(out)
        return {r["id"].rsplit("_", 1)[0]: r["clip_id"] for r in rows}, (rows, report)

    got, (rows, report) = clips()
    assert got == {"clip7_000001": "clip7", "clip7_000005": "clip7", "clip7_frame_12": "clip7", "clip9-0002": "clip9",
                   "clip9-0003": "clip9", "lone": "lone", "s1": "s1", "s2": "s2"}  # fmt: skip
    assert {r["patient_id"] for r in rows if r["clip_id"] == "clip7"} == {"clip7"}
    assert any("5 still image(s) grouped into 2 clip(s)" in w and "clip7 (3)" in w for w in report.warnings)
    for seed in range(5):
        train, val = split_by_group(rows, 0.4, group="clip_id", seed=seed)
        assert not {r["clip_id"] for r in train} & {r["clip_id"] for r in val}
        assert {r["id"] for r in val if r["clip_id"] == "clip7"} in (set(), {r["id"] for r in rows[:3]})
    meta = tmp_path / "meta.csv"
    meta.write_text("clip,clip_id,patient_id,probe\nlone.png,clip9,,Convex\ns1,scan 1,p1,\n")
    got, (rows, _) = clips(meta=meta)
    assert got["lone"] == "clip9" and got["s1"] == "scan_1" and got["s2"] == "s2"
    assert {r["probe"] for r in rows if r["clip_id"] == "clip9" and r["id"].startswith("lone")} == {"curvilinear"}
    got, _ = clips(clip_pattern="none")
    assert got == {n: n for n in names}
    got, _ = clips(clip_pattern=r"(?P<clip>clip\d)_.*")
    assert got["clip7_frame_12"] == "clip7" and got["clip9-0002"] == "clip9-0002"
    with pytest.raises(AnnotationError, match=r"--clip-pattern .* has no group"):
        clips(clip_pattern=r"clip\d+")


def test_probe_names_are_read_by_probe_parse(tmp_path: Path) -> None:
    from pleura.data.annotations import read_meta

    meta = tmp_path / "meta.csv"
    meta.write_text("clip,probe\na,CONVEX\nb,linear\nc,sector\n")
    with pytest.raises(AnnotationError, match=r"meta\.csv: line 4: probe 'sector'; expected linear, curvilinear"):
        read_meta(meta)
    meta.write_text("clip,probe\na,CONVEX\nb,Linear\n")
    assert read_meta(meta) == {"a": {"probe": "curvilinear"}, "b": {"probe": "linear"}}
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"labels": {}, "tags": {"probe_x": {"probe": "phased"}}}))
    with pytest.raises(AnnotationError, match=r"map\.json: tag 'probe_x' sets probe 'phased'"):
        load_label_map(bad)
    bad.write_text(json.dumps({"labels": {}, "tags": {"probe_c": {"probe": "Convex"}}}))
    lmap = load_label_map(bad)
    curvilinear = {"probe": "curvilinear"}
    assert lmap.tag_fields("probe_c") == curvilinear and lmap.tag_fields("convex") == curvilinear
    assert lmap.tag_fields("sector") is None and not lmap.tag_known("sector")


def test_export_label_map_puts_lines_over_regions() -> None:
    assert export_label_map(DENSE).priority[:4] == ("pleural_line_unhealthy", "pleural_line_healthy", "b_line",
                                                    "a_line")  # fmt: skip
    assert "background" not in export_label_map(DENSE).labels
    assert math.isclose(signed_area(np.array([[0, 0], [2, 0], [2, 3], [0, 3]])), 6.0)


def test_cli_clip_pattern_option_and_its_bad_value(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    labels = tmp_path / "map.json"
    labels.write_text(json.dumps({"labels": {"aline": "a_line"}}))
    runner = CliRunner(env={"COLUMNS": "400"})
    args = ["data", "import-annotations", str(tmp_path / "c.json"), "--format", "coco", "--labels", str(labels)]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "ds"), "--clip-pattern", "clip("])
    assert res.exit_code == 2 and "--clip-pattern 'clip(' is not a regular expression" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "ds").exists()
    res = runner.invoke(app, ["data", "import-annotations", "--help"])
    assert res.exit_code == 0 and "--clip-pattern" in res.output
