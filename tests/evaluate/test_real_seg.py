"""The real segmentation check (``pleura.evaluate.real_seg``): a hand-computed case, and the cvat-lus clip."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pleura.data import read_manifest
from pleura.data.annotations import AnnotationImportConfig, import_annotations
from pleura.evaluate.real_seg import a_line_depth_ratios, consistent, score_real_segmentation
from pleura.infer.engine import Engine, EngineOutput
from pleura.labels import DENSE, SPARSE
from pleura.models import pretrained

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = next(
    (p for p in (ROOT.parent / "shared" / "data" / "cvat-lus", Path("/work/shared/data/cvat-lus")) if p.is_dir()),
    ROOT.parent / "shared" / "data" / "cvat-lus",
)
N = 32  # side of the hand-made frames
SA, SP = SPARSE.index("a_line"), SPARSE.index("pleural_line")
DA, DH, DU, DB = (
    DENSE.index(n) for n in ("a_line", "pleural_line_healthy", "pleural_line_unhealthy", "below_pleura_healthy")
)


class FakeEngine(Engine):
    """A dense-schema engine that returns preset label maps (as one-hot logits), in the order frames arrive."""

    schema, in_channels, size_multiple, image_size = "dense", 1, 1, N
    class_names = seg_class_names = DENSE.names

    def __init__(self, labels: np.ndarray) -> None:
        self.labels, self.seen = labels, 0

    def run(self, x: np.ndarray) -> EngineOutput:
        lab = self.labels[self.seen : self.seen + len(x)]
        self.seen += len(x)
        seg = (lab[:, None] == np.arange(DENSE.num_classes)[None, :, None, None]).astype(np.float32)
        return EngineOutput(None, seg, None)


def two_frames(root: Path) -> tuple[Path, FakeEngine]:
    """Frame 1: pleura and A-line drawn; frame 2: only the A-line drawn. Truth and predictions by hand."""
    truth = np.zeros((2, N, N), np.uint8)
    truth[:, 19:21, 4:28] = SA  # one A-line on each frame, rows 19-20: depth 20.0 at pixel centres
    truth[0, 9:11, 4:28] = SP  # the pleural line, rows 9-10 (mean row 9.5, depth 10.0), drawn on frame 1 only
    pred = np.zeros((2, N, N), np.uint8)
    pred[0, 9:11, 4:28] = DH  # healthy pleural line on frame 1, exactly on the truth (48 pixels)
    pred[1, 9:11, 4:28] = DU  # unhealthy on frame 2, where none is drawn: not scored by default
    pred[:, 12:16, 20:30] = DB  # below the pleura: background in the sparse schema
    pred[0, 19:21, 4:16] = DA  # half of the true A-line (24 pixels), depth 20.0: ratio 2.0
    pred[0, 29, 20:28] = DA  # a false A-line (8 pixels) at depth 29.5: ratio 2.95, within 10 % of 3
    pred[0, 14, 2:4] = DA  # a false A-line (2 pixels) at depth 14.5: ratio 1.45, inconsistent
    pred[1, 19:21, 4:28] = DA  # the whole true A-line of frame 2 (48 pixels): ratio 2.0
    (root / "images").mkdir(parents=True)
    (root / "masks" / "sparse").mkdir(parents=True)
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "diagnosis", "clip_id", "mask_sparse"])
        for i in range(2):
            Image.fromarray(np.full((N, N), 80, np.uint8)).save(root / "images" / f"f{i}.png")
            Image.fromarray(truth[i]).save(root / "masks" / "sparse" / f"f{i}.png")
            w.writerow([f"f{i}", f"images/f{i}.png", "unknown", "clip", f"masks/sparse/f{i}.png"])
    return root, FakeEngine(pred)


def test_scores_of_a_hand_computed_case(tmp_path: Path) -> None:
    data, engine = two_frames(tmp_path / "ds")
    r = score_real_segmentation(engine, data)
    assert r["frames"] == 2 and r["schema"] == "dense"
    p = r["pleural_line"]  # frame 1 only: 48 of 48, nothing else
    assert (p["dice"], p["precision"], p["recall"], p["frames"], p["frames_found"]) == (1.0, 1.0, 1.0, 1, 2)
    a = r["a_line"]  # TP 24 + 48, FP 8 + 2, FN 24
    assert a["dice"] == pytest.approx(2 * 72 / (2 * 72 + 10 + 24))
    assert (a["precision"], a["recall"]) == (pytest.approx(72 / 82), pytest.approx(72 / 96))
    assert (a["fp_components"], a["pred_components"], a["fp_components_per_frame"]) == (2, 4, 1.0)
    ph = r["physics"]  # ratios 2.0, 2.95, 1.45 (frame 1) and 2.0 (frame 2): 3 of 4 consistent
    assert (ph["consistent"], ph["judged"], ph["unjudged"], ph["share"]) == (3, 4, 0, 0.75)
    assert ph["median_ratio"] == pytest.approx(2.0) and ph["truth_share"] == 1.0  # frame 2's truth: unjudged

    data, engine = two_frames(tmp_path / "ds2")
    every = score_real_segmentation(engine, data, only_drawn=False)  # frame 2's pleura becomes 48 false pixels
    assert every["pleural_line"]["dice"] == pytest.approx(96 / 144) and every["pleural_line"]["precision"] == 0.5


def test_depth_ratios_and_the_ten_percent_rule() -> None:
    labels = np.zeros((40, 8), np.uint8)
    labels[4:6, :] = SP  # depth 5.0 (mean row 4.5, at pixel centres)
    labels[10, :] = SA  # depth 10.5
    labels[21:23, 2:5] = SA  # depth 22.0
    assert a_line_depth_ratios(labels) == pytest.approx([10.5 / 5.0, 22.0 / 5.0])
    no_pleura = np.where(labels == SP, 0, labels).astype(np.uint8)
    assert np.isnan(a_line_depth_ratios(no_pleura)).all() and a_line_depth_ratios(np.zeros((4, 4), np.uint8)).size == 0
    ratios = np.array([1.0, 1.85, 2.15, 2.25, 2.75, 3.25, 3.35, 0.5, 5.55])
    assert consistent(ratios).tolist() == [False, True, True, False, True, True, False, False, True]


@pytest.mark.skipif(not (FIXTURE / "task_195" / "task.json").is_file(), reason=f"cvat-lus fixture not at {FIXTURE}")
def test_the_default_model_is_scored_on_the_real_clip(tmp_path: Path) -> None:
    labels = tmp_path / "labels.json"
    label_map = {"schema": "sparse", "labels": {"aline": "a_line", "lungslidingpresent": "pleural_line"}}
    labels.write_text(json.dumps(label_map))
    data = tmp_path / "lus"
    import_annotations(FIXTURE / "task_195", data, labels, AnnotationImportConfig(format="cvat", size=128, workers=1))
    assert len(read_manifest(data)) == 39
    r = score_real_segmentation(pretrained(), data)
    assert r["frames"] == 39 and r["pleural_line"]["frames"] == 17 and r["a_line"]["frames"] == 39
    for cls in ("pleural_line", "a_line"):
        for k in ("dice", "recall"):
            assert 0.0 <= r[cls][k] <= 1.0, (cls, k)
    assert r["a_line"]["fp_components_per_frame"] >= 0
    assert r["physics"]["truth_share"] == 1.0  # the experts' A-lines lie at 2x the pleural line's depth
