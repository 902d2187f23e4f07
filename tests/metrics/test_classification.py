"""Classification metrics on cases small enough to check by hand, and against scikit-learn on random data."""

import math
import time

import numpy as np
import pytest

from pleura.labels import DIAGNOSES
from pleura.metrics.classification import (
    accuracy,
    aggregate_by_group,
    balanced_accuracy,
    binary_roc_auc,
    bootstrap_ci,
    bootstrap_indices,
    classification_metrics,
    metrics_table,
    roc_points,
    summarise_folds,
)

# 8 frames, 3 classes; predictions are the row argmax.
Y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PROB = np.array(
    [
        [0.7, 0.2, 0.1],  # 0 -> 0
        [0.5, 0.3, 0.2],  # 0 -> 0
        [0.3, 0.6, 0.1],  # 0 -> 1
        [0.2, 0.7, 0.1],  # 1 -> 1
        [0.1, 0.8, 0.1],  # 1 -> 1
        [0.2, 0.3, 0.5],  # 1 -> 2
        [0.1, 0.1, 0.8],  # 2 -> 2
        [0.6, 0.1, 0.3],  # 2 -> 0
    ]
)
# Confusion (rows truth, columns prediction), counted by hand:
CONFUSION = [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
# class 0: TP 2 FP 1 FN 1 TN 4; class 1: TP 2 FP 1 FN 1 TN 4; class 2: TP 1 FP 1 FN 1 TN 5
# One-vs-rest AUC by counting positive-negative pairs (a tie counts 1/2):
#   covid:     positives .7 .5 .3 vs negatives .2 .1 .2 .1 .6  -> (5 + 4 + 4) / 15
#   pneumonia: positives .7 .8 .3 vs negatives .2 .3 .6 .1 .1  -> (5 + 5 + 3.5) / 15 (one tie at .3)
#   normal:    positives .8 .3 vs negatives .1 .2 .1 .1 .1 .5  -> (6 + 5) / 12
AUC = [13 / 15, 13.5 / 15, 11 / 12]


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


def _random(n, seed, c=3):
    """Labels and probabilities made from small integer weights, so columns have many tied values."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    w = rng.integers(1, 4, (n, c)).astype(float)
    w[np.arange(n), y] += rng.integers(0, 3, n)  # some signal
    return y, w / w.sum(1, keepdims=True)


# ---------------------------------------------------------------- classification_metrics


def test_hand_computed_example():
    m = classification_metrics(Y, PROB)
    assert m["confusion"] == CONFUSION
    assert m["class_names"] == list(DIAGNOSES) and m["n"] == 8
    expected = {
        "covid": dict(precision=2 / 3, recall=2 / 3, specificity=4 / 5, f1=2 / 3, roc_auc=AUC[0], support=3),
        "pneumonia": dict(precision=2 / 3, recall=2 / 3, specificity=4 / 5, f1=2 / 3, roc_auc=AUC[1], support=3),
        "normal": dict(precision=1 / 2, recall=1 / 2, specificity=5 / 6, f1=1 / 2, roc_auc=AUC[2], support=2),
    }
    for name, scores in expected.items():
        got = m["per_class"][name]
        for key, value in scores.items():
            assert got[key] == pytest.approx(value), (name, key)
        assert got["sensitivity"] == got["recall"]
        assert isinstance(got["support"], int)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["macro_roc_auc"] == pytest.approx(sum(AUC) / 3)


def test_binary_auc_by_hand():
    assert binary_roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert binary_roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert binary_roc_auc([0, 0, 1], [0.2, 0.9, 0.9]) == pytest.approx(0.75)
    assert math.isnan(binary_roc_auc([1, 1], [0.2, 0.3]))
    assert math.isnan(binary_roc_auc([0, 0], [0.2, 0.3]))  # scikit-learn would raise: pleura says NaN
    with pytest.raises(ValueError, match="NaN or infinite"):
        binary_roc_auc([0, 1], [0.2, math.nan])


def test_roc_points_by_hand():
    # scores .8 (pos) .4 (neg) .35 (pos) .1 (neg): thresholds step through them from the top
    fpr, tpr = roc_points(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    # a tied positive-negative pair is one diagonal step; the area under the points is the AUC
    fpr, tpr = roc_points([0, 1, 0], [0.5, 0.5, 0.1])
    assert fpr.tolist() == [0, 0.5, 1] and tpr.tolist() == [0, 1, 1]
    y, p = _random(300, 4)
    fpr, tpr = roc_points(y == 1, p[:, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(binary_roc_auc(y == 1, p[:, 1]))
    # one class only: the missing rate is 0 throughout (scikit-learn gives NaN)
    fpr, tpr = roc_points([1, 1, 1], [0.2, 0.5, 0.9])
    assert not fpr.any() and tpr[0] == 0 and tpr[-1] == 1 and not np.isnan(tpr).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_scikit_learn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    y, p = _random(300, seed)
    assert len(np.unique(p[:, 0])) < 50  # plenty of ties
    pred = p.argmax(1)
    m = classification_metrics(y, p)
    assert m["confusion"] == sk.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
    precision, recall, f1, support = sk.precision_recall_fscore_support(y, pred, labels=[0, 1, 2])
    auc_ovr = sk.roc_auc_score(y, p, multi_class="ovr", average=None)
    for k, name in enumerate(DIAGNOSES):
        got = m["per_class"][name]
        assert got["precision"] == pytest.approx(precision[k])
        assert got["recall"] == pytest.approx(recall[k])
        assert got["f1"] == pytest.approx(f1[k])
        assert got["support"] == support[k]
        assert got["specificity"] == pytest.approx(sk.recall_score(y != k, pred != k))
        assert got["roc_auc"] == pytest.approx(sk.roc_auc_score(y == k, p[:, k]))
        assert got["roc_auc"] == pytest.approx(auc_ovr[k])
    assert m["macro_roc_auc"] == pytest.approx(sk.roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_absent_class_gives_nan_auc_and_is_left_out_of_means():
    y = np.array([0, 0, 1, 1])  # "normal" absent from the truth, predicted once
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.3, 0.6, 0.1], [0.4, 0.5, 0.1]])
    m = classification_metrics(y, p)
    normal = m["per_class"]["normal"]
    assert math.isnan(normal["roc_auc"]) and math.isnan(normal["recall"]) and normal["support"] == 0
    assert normal["precision"] == 0.0 and normal["f1"] == 0.0 and normal["specificity"] == pytest.approx(3 / 4)
    assert m["per_class"]["covid"]["roc_auc"] == pytest.approx(2 / 4)  # .6 .2 vs .3 .4
    assert m["per_class"]["pneumonia"]["roc_auc"] == pytest.approx(1.0)  # .6 .5 vs .3 .3
    assert m["macro_roc_auc"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)  # recall covid 1/2, pneumonia 2/2


def test_single_class_truth_gives_nan_everywhere_it_should():
    y = np.zeros(3, dtype=int)
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2]])
    m = classification_metrics(y, p, ("a", "b"))
    assert math.isnan(m["macro_roc_auc"])
    assert math.isnan(m["per_class"]["a"]["specificity"])  # no negatives
    assert m["per_class"]["b"]["precision"] == 0.0  # b predicted once, wrongly
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)


class _FakeTensor:
    """Stands in for a torch tensor (detach / cpu / numpy) without importing torch."""

    def __init__(self, a):
        self.a = a

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.a


def test_accepts_lists_and_tensors():
    a = classification_metrics(Y.tolist(), PROB.tolist())
    b = classification_metrics(_FakeTensor(Y), _FakeTensor(PROB.astype(np.float32)))
    assert a["confusion"] == b["confusion"] == CONFUSION
    assert a["macro_roc_auc"] == pytest.approx(b["macro_roc_auc"])


def test_fast_metrics_match_the_full_one():
    y, p = _random(200, 3)
    m = classification_metrics(y, p)
    assert accuracy(y, p) == pytest.approx(m["accuracy"])
    assert balanced_accuracy(y, p) == pytest.approx(m["balanced_accuracy"])


@pytest.mark.parametrize(
    ("y", "prob", "kwargs", "match"),
    [
        (Y, PROB[:, 0], {}, r"prob should be 2-D \(N, C\).*got shape \(8,\)"),
        (Y[:5], PROB, {}, r"same N, got y_true \(5,\) and prob \(8, 3\)"),
        (Y.reshape(2, 4), PROB, {}, r"y_true should be 1-D"),
        (Y.astype(float), PROB, {}, r"integer class indices, got dtype float64"),
        (Y + 1, PROB, {}, r"class indices 1..3, expected 0..2"),
        (Y, PROB * 2, {}, r"prob should lie in \[0, 1\]"),
        (Y, PROB * 0.9, {}, r"rows should sum to 1, got row sums 0.9"),
        (Y, np.where(PROB == 0.7, np.nan, PROB), {}, r"NaN or infinite"),
        (Y, PROB, {"class_names": ("a", "b")}, r"prob has 3 class columns but class_names has 2 names"),
        (Y[:0], PROB[:0], {}, r"empty"),
        (Y, PROB[:, :1] / PROB[:, :1], {}, r"at least 2 class columns"),
    ],
)
def test_bad_input_errors(y, prob, kwargs, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, prob, **kwargs)


# ---------------------------------------------------------------- aggregate_by_group


def test_aggregate_by_group_means_probabilities_in_sorted_order():
    groups = np.array(["b", "a", "b", "c", "a", "b"])
    y = np.array([1, 0, 1, 2, 0, 1])
    p = np.array([[0.2, 0.8, 0.0], [1, 0, 0], [0.4, 0.6, 0.0], [0, 0.5, 0.5], [0.6, 0.2, 0.2], [0.0, 1.0, 0.0]])
    ids, yg, pg = aggregate_by_group(groups, y, p)
    assert ids.tolist() == ["a", "b", "c"]
    assert yg.tolist() == [0, 1, 2]
    np.testing.assert_allclose(pg, [[0.8, 0.1, 0.1], [0.2, 0.8, 0.0], [0.0, 0.5, 0.5]])
    classification_metrics(yg, pg)  # valid input for the metrics


def test_aggregate_by_group_rejects_mixed_labels_naming_the_group():
    with pytest.raises(ValueError, match=r"group 'clip7' has frames with different labels \[0, 2\]"):
        aggregate_by_group(["clip1", "clip7", "clip7"], [1, 0, 2], np.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"one id per sample \(N=3\), got shape \(2,\)"):
        aggregate_by_group([1, 2], [1, 0, 2], np.full((3, 3), 1 / 3))


# ---------------------------------------------------------------- bootstrap_ci


def test_bootstrap_contains_point_estimate_and_narrows_with_more_data():
    widths = []
    for n in (60, 2000):
        y, p = _random(n, 5)
        low, high = bootstrap_ci(y, p, accuracy, n_boot=500)
        assert low <= accuracy(y, p) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~ 1 / sqrt(n)


def test_bootstrap_is_deterministic_and_alpha_widens():
    y, p = _random(100, 6)
    a = bootstrap_ci(y, p, balanced_accuracy, n_boot=300, seed=3)
    assert a == bootstrap_ci(y, p, balanced_accuracy, n_boot=300, seed=3)
    wide = bootstrap_ci(y, p, balanced_accuracy, n_boot=300, seed=3, alpha=0.01)
    assert wide[0] <= a[0] and wide[1] >= a[1]


def test_bootstrap_with_groups_resamples_whole_groups():
    # 40 clips of 5 identical frames, shuffled: the group bootstrap must equal the bootstrap of the 40 clips.
    y_clip, p_clip = _random(40, 7)
    names = np.array([f"clip{i:02d}" for i in range(40)])  # sorted order = clip order
    rep = np.random.default_rng(8).permutation(np.repeat(np.arange(40), 5))
    groups, y, p = names[rep], y_clip[rep], p_clip[rep]

    def auc(a, b):
        return classification_metrics(a, b)["macro_roc_auc"]

    for metric in (accuracy, auc):
        by_group = bootstrap_ci(y, p, metric, n_boot=100, seed=1, groups=groups)
        by_clip = bootstrap_ci(y_clip, p_clip, metric, n_boot=100, seed=1)
        assert by_group == pytest.approx(by_clip)
    # resampling the 200 frames independently pretends to have 5x the data: a narrower interval
    lo_f, hi_f = bootstrap_ci(y, p, accuracy, n_boot=100, seed=1)
    lo_g, hi_g = bootstrap_ci(y, p, accuracy, n_boot=100, seed=1, groups=groups)
    assert hi_f - lo_f < 0.7 * (hi_g - lo_g)


def test_bootstrap_groups_of_unequal_size_keep_all_their_frames():
    groups = np.array([3, 1, 3, 2, 3, 1])
    y = np.array([0, 1, 0, 1, 0, 1])
    p = np.full((6, 2), 0.5)
    seen = []

    def record(a, b):
        seen.append(len(a))
        return float(a.mean())

    bootstrap_ci(y, p, record, n_boot=50, groups=groups)
    sizes = {1: 2, 2: 1, 3: 3}
    # every resample is 3 whole groups; its size is a sum of 3 group sizes
    possible = {a + b + c for a in sizes.values() for b in sizes.values() for c in sizes.values()}
    assert set(seen) <= possible and len(set(seen)) > 1


def test_bootstrap_gives_the_intervals_it_always_gave():
    """Pinned from the hand-written resampling before bootstrap_indices: same RNG calls, same intervals."""
    rng = np.random.default_rng(11)
    y = rng.integers(0, 3, 45)
    w = rng.integers(1, 4, (45, 3)).astype(float)
    w[np.arange(45), y] += 2
    p = w / w.sum(1, keepdims=True)
    groups = np.array([f"pt{i % 13:02d}" for i in range(45)])
    assert bootstrap_ci(y, p, accuracy, n_boot=300, seed=4) == (0.8, 0.9777777777777777)
    got = bootstrap_ci(y, p, balanced_accuracy, n_boot=300, seed=4, groups=groups)
    assert got == (0.8160402097902099, 0.977526395173454)


def test_bootstrap_indices_resample_samples_or_whole_groups():
    plain = list(bootstrap_indices(7, 5, seed=2))
    assert len(plain) == 5 and all(i.shape == (7,) and i.min() >= 0 and i.max() < 7 for i in plain)
    # every sample its own group (sample i is group 6 - i): the same draws as the plain bootstrap
    solo = list(bootstrap_indices(7, 5, seed=2, groups=np.arange(7)[::-1]))
    assert all(np.array_equal(a, 6 - b) for a, b in zip(plain, solo, strict=True))
    groups = np.array(["b", "a", "b", "c", "b"])
    for idx in bootstrap_indices(5, 20, seed=0, groups=groups):
        drawn = groups[idx]
        for g in set(drawn.tolist()):  # a drawn group comes with all its samples, once per draw
            assert (drawn == g).sum() % (groups == g).sum() == 0


def test_bootstrap_skips_nan_resamples():
    y, p = _random(30, 9)
    assert all(math.isnan(x) for x in bootstrap_ci(y, p, lambda a, b: math.nan, n_boot=10))


def test_bootstrap_speed():
    y, p = _random(500, 10)
    t = time.perf_counter()
    bootstrap_ci(y, p, lambda a, b: float((b.argmax(1) == a).mean()), n_boot=1000)
    assert time.perf_counter() - t < 1.0


def test_bootstrap_bad_arguments():
    with pytest.raises(ValueError, match="n_boot should be a positive int, got 0"):
        bootstrap_ci(Y, PROB, accuracy, n_boot=0)
    with pytest.raises(ValueError, match=r"alpha should lie in \(0, 1\)"):
        bootstrap_ci(Y, PROB, accuracy, alpha=1.5)
    with pytest.raises(ValueError, match=r"one id per sample \(N=8\)"):
        bootstrap_ci(Y, PROB, accuracy, groups=[0, 1])
    with pytest.raises(TypeError, match="metric should be a callable"):
        bootstrap_ci(Y, PROB, "accuracy")


# ---------------------------------------------------------------- summarise_folds / metrics_table


def _fold(acc, auc, covid_sens):
    per_class = {name: {"sensitivity": 0.5, "specificity": 1.0} for name in DIAGNOSES}
    per_class["covid"]["sensitivity"] = covid_sens
    return {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc, "macro_roc_auc": auc, "per_class": per_class}


def test_summarise_folds_by_hand():
    s = summarise_folds([_fold(0.6, 0.8, 0.2), _fold(0.7, math.nan, 0.4), _fold(0.8, 0.9, 0.6)])
    assert s["accuracy"]["mean"] == pytest.approx(0.7)
    assert s["accuracy"]["std"] == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    assert s["accuracy"]["values"] == [0.6, 0.7, 0.8]
    assert s["macro_roc_auc"]["mean"] == pytest.approx(0.85)
    assert s["macro_roc_auc"]["std"] == pytest.approx(math.sqrt(2 * 0.05**2))
    assert s["macro_roc_auc"]["n"] == 2 and math.isnan(s["macro_roc_auc"]["values"][1])
    assert s["covid_sensitivity"]["mean"] == pytest.approx(0.4)
    assert s["covid_sensitivity"]["std"] == pytest.approx(0.2)
    assert s["normal_specificity"] == {"mean": 1.0, "std": 0.0, "n": 3, "values": [1.0, 1.0, 1.0]}
    assert list(s)[:4] == ["accuracy", "balanced_accuracy", "macro_f1", "macro_roc_auc"]


def test_summarise_one_fold_and_real_metrics():
    s = summarise_folds([classification_metrics(Y, PROB)])
    assert s["accuracy"] == {"mean": 0.625, "std": 0.0, "n": 1, "values": [0.625]}
    assert s["normal_specificity"]["mean"] == pytest.approx(5 / 6)
    all_nan = summarise_folds([_fold(0.5, math.nan, 0.1)] * 2)["macro_roc_auc"]
    assert math.isnan(all_nan["mean"]) and math.isnan(all_nan["std"]) and all_nan["n"] == 0


def test_summarise_folds_errors():
    with pytest.raises(ValueError, match="non-empty list"):
        summarise_folds([])
    with pytest.raises(KeyError, match="fold 1 has no metric 'accuracy'"):
        summarise_folds([_fold(0.5, 0.5, 0.5), {"macro_f1": 0.1}])


def test_metrics_table():
    table = metrics_table(summarise_folds([_fold(0.6, math.nan, 0.2), _fold(0.8, math.nan, 0.4)]))
    lines = table.splitlines()
    assert lines[:2] == ["| metric | mean ± std |", "| --- | --- |"]
    assert "| accuracy | 0.7000 ± 0.1414 |" in lines
    assert "| macro_roc_auc | n/a |" in lines
    assert "| covid_sensitivity | 0.3000 ± 0.1414 |" in lines
