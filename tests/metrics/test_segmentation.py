"""Segmentation and false-positive metrics on masks small enough to check by hand."""

import math
import time

import numpy as np
import pytest
import torch

from pleura.labels import DENSE, SPARSE, convert
from pleura.metrics.segmentation import FalsePositiveMetrics, SegmentationMetrics, summarise

# 4x4, three classes. Confusion (rows truth, columns prediction), counted by hand:
#   truth 0: 3 -> 0, 1 -> 1            [3, 1, 0]
#   truth 1: 4 -> 1                    [0, 4, 0]
#   truth 2: 1 -> 0, 1 -> 1, 6 -> 2    [1, 1, 6]
TARGET = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 2, 2],
        [2, 2, 2, 2],
    ]
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 1, 0],
        [2, 2, 2, 2],
    ]
)
CONFUSION = [[3, 1, 0], [0, 4, 0], [1, 1, 6]]


def _close(a, b):
    return all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- SegmentationMetrics


def test_hand_computed_confusion_and_scores():
    m = SegmentationMetrics(3, ("bg", "a", "b"))
    m.update(PRED, TARGET)
    assert m.confusion.tolist() == CONFUSION
    assert m.confusion.dtype == torch.int64
    r = m.aggregate()
    # class 0: TP 3 FP 1 FN 1; class 1: TP 4 FP 2 FN 0; class 2: TP 6 FP 0 FN 2
    assert _close(r["iou"], [3 / 5, 4 / 6, 6 / 8])
    assert _close(r["dice"], [6 / 8, 8 / 10, 12 / 14])
    assert _close(r["precision"], [3 / 4, 4 / 6, 6 / 6])
    assert _close(r["recall"], [3 / 4, 4 / 4, 6 / 8])
    assert r["support"] == [4, 4, 8]
    assert r["mean_iou"] == pytest.approx((3 / 5 + 4 / 6 + 6 / 8) / 3)
    assert r["mean_dice"] == pytest.approx((6 / 8 + 8 / 10 + 12 / 14) / 3)
    assert r["pixel_accuracy"] == pytest.approx(13 / 16)
    assert r["class_names"] == ["bg", "a", "b"]


def test_absent_classes_are_nan_and_left_out_of_means():
    # class 1 only in the prediction, class 2 only in the truth, class 3 nowhere
    target = np.array([[0, 0], [2, 2]])
    pred = np.array([[0, 1], [2, 0]])
    m = SegmentationMetrics(4)
    m.update(pred, target)
    r = m.aggregate()
    # class 0: TP 1 FP 1 FN 1; class 1: TP 0 FP 1 FN 0; class 2: TP 1 FP 0 FN 1
    assert _close(r["iou"], [1 / 3, 0.0, 1 / 2, math.nan])
    assert _close(r["precision"], [1 / 2, 0.0, 1.0, math.nan])
    assert _close(r["recall"], [1 / 2, math.nan, 1 / 2, math.nan])
    assert r["mean_iou"] == pytest.approx((1 / 3 + 0 + 1 / 2) / 3)
    assert r["mean_dice"] == pytest.approx((1 / 2 + 0 + 2 / 3) / 3)
    assert r["class_names"] == ["class_0", "class_1", "class_2", "class_3"]


def test_empty_metric_aggregates_to_nan():
    r = SegmentationMetrics(2).aggregate()
    assert math.isnan(r["mean_iou"]) and math.isnan(r["mean_dice"]) and math.isnan(r["pixel_accuracy"])
    assert all(math.isnan(x) for x in r["iou"])


def test_two_updates_equal_one_of_the_concatenation_and_reset():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, size=(6, 9, 7))
    target = rng.integers(0, 4, size=(6, 9, 7))
    one, two = SegmentationMetrics(4), SegmentationMetrics(4)
    one.update(pred, target)
    two.update(pred[:2], target[:2])
    two.update(torch.from_numpy(pred[2:]), torch.from_numpy(target[2:]))  # torch input too
    assert torch.equal(one.confusion, two.confusion)
    assert one.aggregate() == two.aggregate()
    two.reset()
    assert int(two.confusion.sum()) == 0


def test_single_frame_and_batch_agree():
    a, b = SegmentationMetrics(3), SegmentationMetrics(3)
    a.update(PRED, TARGET)
    b.update(PRED[None], TARGET[None])
    assert torch.equal(a.confusion, b.confusion)


def test_load_confusion_round_trip_and_summed_ranks():
    m = SegmentationMetrics(3)
    m.update(PRED, TARGET)
    c = m.confusion
    c += 1  # the property is a copy: mutating it leaves the state alone
    assert m.confusion.tolist() == CONFUSION
    other = SegmentationMetrics(3)
    other.load_confusion(m.confusion)
    assert other.aggregate() == m.aggregate()
    # what a two-rank all_reduce(SUM) gives
    other.load_confusion(m.confusion + m.confusion)
    assert other.confusion.tolist() == [[2 * x for x in row] for row in CONFUSION]
    assert other.aggregate()["iou"] == m.aggregate()["iou"]
    other.load_confusion(np.array(CONFUSION, dtype=np.float64))  # float from a reduce is fine if whole
    assert other.confusion.dtype == torch.int64
    with pytest.raises(ValueError, match=r"shape \(3, 3\), got \(2, 2\)"):
        other.load_confusion(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="whole pixel counts"):
        other.load_confusion(torch.full((3, 3), 0.5))


def test_ignore_index_drops_pixels():
    target = np.array([[0, 255], [1, 1]])
    pred = np.array([[0, 1], [1, 0]])
    m = SegmentationMetrics(2, ignore_index=255)
    m.update(pred, target)
    assert m.confusion.tolist() == [[1, 0], [1, 1]]
    # ignore_index that is a class: its row is empty and it is out of the scores and means
    m = SegmentationMetrics(3, ignore_index=0)
    m.update(PRED, TARGET)
    assert m.confusion.tolist() == [[0, 0, 0], [0, 4, 0], [1, 1, 6]]
    r = m.aggregate()
    assert math.isnan(r["iou"][0]) and math.isnan(r["precision"][0])
    assert r["mean_iou"] == pytest.approx((4 / 5 + 6 / 8) / 2)


def test_ignore_index_outside_the_dtype_range_is_harmless():
    m = SegmentationMetrics(3, ignore_index=-1)
    m.update(PRED.astype(np.uint8), TARGET.astype(np.uint8))  # uint8 never equals -1: nothing is dropped
    assert m.confusion.tolist() == CONFUSION


def test_accelerator_counting_path_agrees_with_numpy(monkeypatch):
    # On the CPU, tensors are counted with numpy; GPU tensors stay on the device and use torch.bincount.
    # Force that branch here by keeping CPU tensors as tensors.
    import pleura.metrics.segmentation as metrics

    original = metrics._indices
    monkeypatch.setattr(metrics, "_indices", lambda x, name, keep_device=False: torch.as_tensor(original(x, name)))
    rng = np.random.default_rng(3)
    pred, target = rng.integers(0, 4, size=(2, 2, 6, 5))
    target[0, 0] = 255
    m = SegmentationMetrics(4, ignore_index=255)
    m.update(torch.from_numpy(pred), target)  # one tensor and one array, as a GPU loop might mix
    monkeypatch.undo()
    ref = SegmentationMetrics(4, ignore_index=255)
    ref.update(pred, target)
    assert torch.equal(m.confusion, ref.confusion)
    assert int(m.confusion.sum()) == 2 * 6 * 5 - 5


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (np.zeros((2, 3)), np.zeros((2, 3), dtype=int), "integer class indices, got dtype float64"),
        (
            np.zeros((2, 3), dtype=int),
            np.zeros((3, 2), dtype=int),
            r"same shape, got pred \(2, 3\) and target \(3, 2\)",
        ),
        (np.zeros((1, 3, 2, 2), dtype=int), np.zeros((1, 3, 2, 2), dtype=int), "argmax"),
        (np.zeros(4, dtype=int), np.zeros(4, dtype=int), r"\(B, H, W\) or \(H, W\)"),
        (np.full((2, 2), 3), np.zeros((2, 2), dtype=int), r"pred holds class indices 3..3, expected 0..2"),
        (np.zeros((2, 2), dtype=int), np.full((2, 2), -1), r"target holds class indices -1..-1, expected 0..2"),
    ],
)
def test_bad_input_says_what_came_and_what_was_expected(pred, target, message):
    with pytest.raises(ValueError, match=message):
        SegmentationMetrics(3).update(pred, target)


def test_bad_construction_and_input_type():
    with pytest.raises(ValueError, match="2 names but num_classes is 3"):
        SegmentationMetrics(3, ("a", "b"))
    with pytest.raises(ValueError, match="positive int"):
        SegmentationMetrics(0)
    with pytest.raises(TypeError, match="got list"):
        SegmentationMetrics(3).update([[0]], np.zeros((1, 1), dtype=int))


def test_agrees_with_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    n = 5
    target = rng.integers(0, n, size=(3, 20, 30))
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, n, size=target.shape))
    m = SegmentationMetrics(n)
    m.update(pred.astype(np.uint8), target.astype(np.uint8))
    r = m.aggregate()
    y, p, labels = target.ravel(), pred.ravel(), list(range(n))
    assert m.confusion.numpy().tolist() == sk.confusion_matrix(y, p, labels=labels).tolist()
    np.testing.assert_allclose(r["iou"], sk.jaccard_score(y, p, labels=labels, average=None))
    np.testing.assert_allclose(r["dice"], sk.f1_score(y, p, labels=labels, average=None))
    np.testing.assert_allclose(r["precision"], sk.precision_score(y, p, labels=labels, average=None))
    np.testing.assert_allclose(r["recall"], sk.recall_score(y, p, labels=labels, average=None))
    assert r["pixel_accuracy"] == pytest.approx(sk.accuracy_score(y, p))


def test_fast_on_a_training_batch():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 8, (16, 256, 256), generator=g, dtype=torch.uint8)
    target = torch.randint(0, 8, (16, 256, 256), generator=g, dtype=torch.uint8)
    m = SegmentationMetrics(8, DENSE.names)
    start = time.perf_counter()
    for _ in range(3):
        m.update(pred, target)
    m.aggregate()
    assert time.perf_counter() - start < 1.5
    assert int(m.confusion.sum()) == 3 * 16 * 256 * 256


# ---------------------------------------------------------------- FalsePositiveMetrics

A, B, P = SPARSE.index("a_line"), SPARSE.index("b_line"), SPARSE.index("pleural_line")


def test_one_true_b_line_three_predicted_two_false_positives():
    target = np.zeros((6, 8), dtype=np.uint8)
    target[1:5, 2] = B  # one vertical B-line
    pred = np.zeros_like(target)
    pred[2:6, 2] = B  # overlaps the true line
    pred[0:3, 5] = B  # separate
    pred[4:6, 7] = B  # separate
    m = FalsePositiveMetrics()
    m.update(pred, target)
    b = m.aggregate()["b_line"]
    assert b["pred_components"] == 3
    assert b["fp_components"] == 2
    assert b["fp_components_per_frame"] == 2.0
    assert b["frames"] == 1
    assert b["true_components"] == 1 and b["true_components_hit"] == 1
    assert b["component_precision"] == pytest.approx(1 / 3)
    assert b["component_recall"] == 1.0
    # the truth has a B-line, so this frame is not in the B-line pixel rate
    assert b["frames_without_class"] == 0
    assert math.isnan(b["fp_pixel_rate"])
    # no A-line anywhere: rate 0 over one frame, no components
    a = m.aggregate()["a_line"]
    assert a["fp_pixel_rate"] == 0.0 and a["frames_without_class"] == 1
    assert a["fp_components"] == 0 and math.isnan(a["component_recall"])


def test_fp_pixel_rate_counts_only_frames_without_the_class():
    h, w, k = 5, 7, 4
    without = np.zeros((h, w), dtype=np.uint8)
    pred_without = without.copy()
    pred_without[2, 1 : 1 + k] = A  # k predicted A-line pixels where truth has none
    with_a = np.zeros((h, w), dtype=np.uint8)
    with_a[0, :] = A
    pred_with = np.full((h, w), A, dtype=np.uint8)  # many A-line pixels, but truth has the class
    m = FalsePositiveMetrics(("a_line",))
    m.update(np.stack([pred_without, pred_with]), np.stack([without, with_a]))
    a = m.aggregate()["a_line"]
    assert a["frames"] == 2 and a["frames_without_class"] == 1
    assert a["fp_pixels"] == k
    assert a["fp_pixel_rate"] == pytest.approx(k / (h * w))
    # one FP component (frame 1); frame 2's prediction overlaps its truth
    assert a["fp_components"] == 1 and a["fp_components_per_frame"] == pytest.approx(1 / 2)


def test_eight_connectivity_joins_diagonal_pixels():
    target = np.zeros((4, 4), dtype=np.uint8)
    pred = np.zeros_like(target)
    pred[0, 0] = pred[1, 1] = pred[2, 2] = B  # a diagonal staircase
    pred[3, 0] = B  # alone: (2, 0), (2, 1) and (3, 1) are empty
    eight = FalsePositiveMetrics(("b_line",))
    eight.update(pred, target)
    assert eight.aggregate()["b_line"]["fp_components"] == 2
    four = FalsePositiveMetrics(("b_line",), connectivity=4)
    four.update(pred, target)
    assert four.aggregate()["b_line"]["fp_components"] == 4


def test_frames_of_a_batch_never_join():
    pred = np.zeros((3, 4, 4), dtype=np.uint8)
    pred[:, 1, 1] = P  # the same pixel in three frames: three components, not one
    m = FalsePositiveMetrics(("pleural_line",))
    m.update(pred, np.zeros_like(pred))
    p = m.aggregate()["pleural_line"]
    assert p["fp_components"] == 3 and p["fp_components_per_frame"] == 1.0
    assert p["fp_pixel_rate"] == pytest.approx(3 / 48)


def test_min_size_drops_small_predicted_blobs_everywhere():
    target = np.zeros((5, 5), dtype=np.uint8)
    pred = target.copy()
    pred[0, 0] = B  # 1 pixel
    pred[2:5, 3] = B  # 3 pixels
    m = FalsePositiveMetrics(("b_line",), min_size=2)
    m.update(pred, target)
    b = m.aggregate()["b_line"]
    assert b["pred_components"] == 1 and b["fp_components"] == 1
    assert b["fp_pixels"] == 3 and b["fp_pixel_rate"] == pytest.approx(3 / 25)
    m0 = FalsePositiveMetrics(("b_line",))
    m0.update(pred, target)
    assert m0.aggregate()["b_line"]["fp_components"] == 2


def test_true_component_recall():
    target = np.zeros((4, 9), dtype=np.uint8)
    target[:, 1] = target[:, 4] = target[:, 7] = B  # three true B-lines
    pred = np.zeros_like(target)
    pred[1:3, 1] = B
    pred[0, 3:5] = B  # touches the second line by one pixel
    m = FalsePositiveMetrics(("b_line",))
    m.update(pred, target)
    b = m.aggregate()["b_line"]
    assert b["true_components"] == 3 and b["true_components_hit"] == 2
    assert b["component_recall"] == pytest.approx(2 / 3)
    assert b["fp_components"] == 0


def test_state_round_trip_accumulation_and_torch_input():
    rng = np.random.default_rng(2)
    pred = rng.choice(4, size=(4, 12, 12), p=[0.85, 0.05, 0.05, 0.05])
    target = rng.choice(4, size=(4, 12, 12), p=[0.85, 0.05, 0.05, 0.05])
    target[1][target[1] == A] = 0  # one frame without A-lines
    whole = FalsePositiveMetrics()
    whole.update(pred, target)
    rank0, rank1 = FalsePositiveMetrics(), FalsePositiveMetrics()
    rank0.update(pred[:1], target[:1])
    rank0.update(pred[1], target[1])  # (H, W) frame
    rank1.update(torch.from_numpy(pred[2:]), torch.from_numpy(target[2:]))
    state = rank0.state() + rank1.state()  # what all_reduce(SUM) gives
    assert state.dtype == torch.float64 and state.shape == (whole.state_size,) == (22,)
    merged = FalsePositiveMetrics()
    merged.load_state(state)
    assert torch.equal(merged.state(), whole.state())
    assert _same(merged, whole)
    whole.reset()
    assert float(whole.state().sum()) == 0.0
    with pytest.raises(ValueError, match=r"22 sums .* got shape \(5,\)"):
        merged.load_state(torch.zeros(5))


def _same(a: FalsePositiveMetrics, b: FalsePositiveMetrics) -> bool:
    ra, rb = a.aggregate(), b.aggregate()
    return all(_close(list(ra[c].values()), list(rb[c].values())) for c in ra)


def test_fp_bad_input():
    m = FalsePositiveMetrics()
    dense = np.full((3, 3), DENSE.index("outside_scan"), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"expected 0..3 of schema 'sparse'.*convert\(mask, \"dense\", \"sparse\"\)"):
        m.update(dense, np.zeros((3, 3), dtype=np.uint8))
    m.update(convert(dense, "dense", "sparse"), np.zeros((3, 3), dtype=np.uint8))  # the fix works
    with pytest.raises(ValueError, match="same shape"):
        m.update(np.zeros((2, 3, 3), dtype=int), np.zeros((3, 3), dtype=int))
    with pytest.raises(ValueError, match=r"dtype torch\.float32"):
        m.update(torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(KeyError, match="background, a_line, b_line, pleural_line"):
        FalsePositiveMetrics(("consolidation",))
    with pytest.raises(ValueError, match="connectivity should be 4 or 8, got 6"):
        FalsePositiveMetrics(connectivity=6)


def test_dense_schema_classes_can_be_scored():
    target = np.zeros((3, 3), dtype=np.uint8)
    pred = np.full((3, 3), DENSE.index("pleural_line_unhealthy"), dtype=np.uint8)
    m = FalsePositiveMetrics(("pleural_line_unhealthy",), schema=DENSE)
    m.update(pred, target)
    assert m.aggregate()["pleural_line_unhealthy"]["fp_pixel_rate"] == 1.0


# ---------------------------------------------------------------- summarise


def test_summarise_renders_a_markdown_table():
    seg = SegmentationMetrics(4, SPARSE.names)
    seg.update(PRED, TARGET)
    fp = FalsePositiveMetrics()
    fp.update(PRED, TARGET)
    text = summarise(seg.aggregate(), fp.aggregate())
    lines = text.splitlines()
    assert lines[0].startswith("| class | IoU | Dice | precision | recall | FP pixel rate")
    assert lines[2].startswith("| background | 0.6000 | 0.7500 |")
    assert "| pleural_line | n/a | n/a | n/a | n/a |" in text  # class 3 absent from both masks
    assert "**mean**" in text and "pixel accuracy 0.8125" in text
    assert len({line.count("|") for line in lines if line.startswith("|")}) == 1  # rectangular
    as_floats = {c: {k: float(v) for k, v in d.items()} for c, d in fp.aggregate().items()}  # e.g. read from JSON
    assert summarise(seg.aggregate(), as_floats) == text
    plain = summarise(seg.aggregate())
    assert "FP" not in plain
