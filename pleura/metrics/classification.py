"""Diagnosis-classification metrics: per-class scores, ROC AUC, clip-level aggregation, bootstrap CIs, folds.

Frame probabilities in, plain dicts out. ROC AUC and ROC curves are scikit-learn's (``roc_auc_score``,
``roc_curve``), with pleura's rule for a class missing from the truth (NaN, not an error); the rest is numpy:

    m = classification_metrics(y, prob)                     # frame level, classes DIAGNOSES
    clips, y_clip, p_clip = aggregate_by_group(clip_ids, y, prob)
    m_clip = classification_metrics(y_clip, p_clip)          # clip level: mean of frame probabilities
    low, high = bootstrap_ci(y, prob, balanced_accuracy, groups=patient_ids)
    print(metrics_table(summarise_folds([m_fold0, m_fold1, ...])))

``y_true`` is ``(N,)`` integer class indices ``0 .. C - 1``; ``prob`` is ``(N, C)`` class probabilities whose
rows sum to 1 (softmax outputs). The predicted class is ``prob.argmax(1)`` (the lowest index on a tie).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_auc_score, roc_curve

from pleura.labels import DIAGNOSES
from pleura.metrics.segmentation import nan_div
from pleura.report import fmt, markdown_table, mean_std

__all__ = [
    "accuracy",
    "aggregate_by_group",
    "balanced_accuracy",
    "binary_roc_auc",
    "bootstrap_ci",
    "bootstrap_indices",
    "classification_metrics",
    "metrics_table",
    "roc_points",
    "summarise_folds",
]

_ROW_SUM_ATOL = 1e-4  # float32 softmax rows sum to 1 within ~1e-7; this leaves room for rounding in saved files


def _array(x: Any) -> np.ndarray:
    """A numpy view of an array-like; torch tensors are detached and moved to the CPU (torch is not imported)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_labels(y_true: Any, n_classes: int | None = None) -> np.ndarray:
    y = _array(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true should be 1-D (N,) class indices, got shape {y.shape}")
    if y.size and not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(f"y_true should hold integer class indices, got dtype {y.dtype}; cast with .astype(int)")
    y = y.astype(np.int64, copy=False)
    if n_classes is not None and y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"y_true holds class indices {int(y.min())}..{int(y.max())}, expected 0..{n_classes - 1} "
            f"(prob has {n_classes} columns)"
        )
    return y


def _check_inputs(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(N,)`` int64 labels and ``(N, C)`` float64 probabilities."""
    p = _array(prob)
    if p.ndim != 2:
        hint = "; for a binary score stack it as np.stack([1 - s, s], 1)" if p.ndim == 1 else ""
        raise ValueError(f"prob should be 2-D (N, C) class probabilities, got shape {p.shape}{hint}")
    if not np.issubdtype(p.dtype, np.number) or np.issubdtype(p.dtype, np.complexfloating):
        raise ValueError(f"prob should hold real probabilities, got dtype {p.dtype}")
    p = p.astype(np.float64, copy=False)
    n, c = p.shape
    if c < 2:
        raise ValueError(f"prob should have at least 2 class columns, got shape {p.shape}")
    y = _check_labels(y_true, c)
    if y.shape[0] != n:
        raise ValueError(f"y_true and prob should have the same N, got y_true {y.shape} and prob {p.shape}")
    if n == 0:
        raise ValueError("y_true and prob are empty; need at least one sample")
    if not np.isfinite(p).all():
        raise ValueError(f"prob holds {int((~np.isfinite(p)).sum())} NaN or infinite values; expected probabilities")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(
            f"prob should lie in [0, 1], got values {p.min():.4g}..{p.max():.4g}; apply softmax to logits first"
        )
    sums = p.sum(axis=1)
    if np.abs(sums - 1).max() > _ROW_SUM_ATOL:
        raise ValueError(
            f"prob rows should sum to 1, got row sums {sums.min():.6g}..{sums.max():.6g}; "
            "apply softmax to logits first (not a per-class sigmoid)"
        )
    return y, p


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def _binary(is_positive: Any, score: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """Boolean target, float64 scores (finite, same length) and whether both classes are present."""
    pos = np.asarray(is_positive, dtype=bool).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if pos.shape != s.shape:
        raise ValueError(f"is_positive and score should have one value per sample, got {pos.size} and {s.size}")
    if not np.isfinite(s).all():
        raise ValueError(f"score holds {int((~np.isfinite(s)).sum())} NaN or infinite values; expected finite scores")
    return pos, s, 0 < int(pos.sum()) < pos.size


def binary_roc_auc(is_positive: Any, score: Any) -> float:
    """ROC AUC of ``score`` for a boolean target (scikit-learn's ``roc_auc_score``).

    The area under the ROC curve equals the Mann-Whitney statistic: the share of positive-negative pairs the
    score orders correctly, a tied pair counting 1/2. NaN (where scikit-learn raises) if there are no
    positives or no negatives, so a class missing from a fold leaves the means rather than stopping them.
    """
    pos, s, both = _binary(is_positive, score)
    return float(roc_auc_score(pos, s)) if both else math.nan


def roc_points(is_positive: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the ROC curve from (0, 0) to (1, 1) (scikit-learn's ``roc_curve``).

    One point per distinct threshold (collinear ones dropped), so tied scores make a diagonal segment. With
    one class only, the rate of the missing class is 0 throughout (scikit-learn's would be NaN).
    """
    pos, s, both = _binary(is_positive, score)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # one class only: handled below
        fpr, tpr, _ = roc_curve(pos, s)
    if not both:
        fpr, tpr = np.nan_to_num(fpr), np.nan_to_num(tpr)
    return fpr, tpr


def _confusion(y: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    return np.bincount(y * c + pred, minlength=c * c).reshape(c, c)


def accuracy(y_true: Any, prob: Any) -> float:
    """Fraction of samples whose ``prob.argmax(1)`` is the true class; a fast metric for :func:`bootstrap_ci`."""
    y, p = _check_inputs(y_true, prob)
    return float((p.argmax(axis=1) == y).mean())


def balanced_accuracy(y_true: Any, prob: Any) -> float:
    """Mean recall over the classes present in ``y_true``; a fast metric for :func:`bootstrap_ci`."""
    y, p = _check_inputs(y_true, prob)
    cm = _confusion(y, p.argmax(axis=1), p.shape[1])
    return _nanmean(nan_div(np.diag(cm), cm.sum(axis=1)))


def classification_metrics(
    y_true: Any,
    prob: Any,
    class_names: Sequence[str] = DIAGNOSES,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class scores, ROC AUC and the confusion matrix.

    With ``C`` the confusion matrix (rows truth, columns ``prob.argmax(1)``) and, per class ``k``,
    ``TP = C[k, k]``, ``FP = sum(C[:, k]) - TP``, ``FN = sum(C[k, :]) - TP``, ``TN = N - TP - FP - FN``:

    - ``precision = TP / (TP + FP)`` (NaN if ``k`` is never predicted),
    - ``recall = sensitivity = TP / (TP + FN)`` (NaN if ``k`` is absent from ``y_true``),
    - ``specificity = TN / (TN + FP)`` (NaN if every sample is ``k``),
    - ``f1 = 2 TP / (2 TP + FP + FN)`` (NaN if ``k`` is absent from both truth and prediction; 0, not NaN,
      when it is in the truth but never predicted),
    - ``roc_auc``: one-vs-rest AUC of ``prob[:, k]`` (:func:`binary_roc_auc`, ties averaged; NaN if ``k`` or
      its complement is absent from ``y_true``),
    - ``support``: number of samples of class ``k`` in ``y_true``.

    Summaries: ``accuracy = trace(C) / N``; ``balanced_accuracy`` = mean recall over the classes present in
    ``y_true``; ``macro_f1`` = mean F1 over the classes present in truth or prediction (as scikit-learn);
    ``macro_roc_auc`` = mean of the defined per-class AUCs (NaN if none).

    Args:
        y_true: ``(N,)`` integer class indices.
        prob: ``(N, C)`` class probabilities, rows summing to 1.
        class_names: one name per column of ``prob``; keys of ``per_class``.

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1", "macro_roc_auc", "per_class": {name: {...}},
        "confusion": C x C list of ints, "class_names": list, "n": N}``.

    Example:
        >>> m = classification_metrics([0, 1, 1], [[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]], ("neg", "pos"))
        >>> m["confusion"], m["per_class"]["pos"]["recall"], m["per_class"]["pos"]["roc_auc"]
        ([[1, 0], [1, 1]], 0.5, 1.0)
    """
    y, p = _check_inputs(y_true, prob)
    n, c = p.shape
    names = (class_names,) if isinstance(class_names, str) else tuple(class_names)
    if len(names) != c:
        raise ValueError(
            f"prob has {c} class columns but class_names has {len(names)} names ({', '.join(map(str, names))}); "
            f"pass class_names with one name per column"
        )
    cm = _confusion(y, p.argmax(axis=1), c)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = n - tp - fp - fn
    precision = nan_div(tp, tp + fp)
    recall = nan_div(tp, tp + fn)
    specificity = nan_div(tn, tn + fp)
    f1 = nan_div(2 * tp, 2 * tp + fp + fn)
    auc = np.array([binary_roc_auc(y == k, p[:, k]) for k in range(c)])
    support = cm.sum(axis=1)
    per_class = {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "sensitivity": float(recall[k]),
            "specificity": float(specificity[k]),
            "f1": float(f1[k]),
            "roc_auc": float(auc[k]),
            "support": int(support[k]),
        }
        for k, name in enumerate(names)
    }
    return {
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": _nanmean(recall),
        "macro_f1": _nanmean(f1),
        "macro_roc_auc": _nanmean(auc),
        "per_class": per_class,
        "confusion": cm.astype(int).tolist(),
        "class_names": list(names),
        "n": int(n),
    }


def _group_index(groups: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique group ids and each sample's position among them."""
    g = _array(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"groups should be 1-D with one id per sample (N={n}), got shape {g.shape}")
    try:
        ids, inverse = np.unique(g, return_inverse=True)
    except TypeError as e:
        raise ValueError(f"groups should hold ids of one sortable type (all str or all int), got {e}") from None
    return ids, inverse.reshape(-1)


def aggregate_by_group(groups: Any, y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip- (or patient-) level predictions: the mean of each group's frame probabilities.

    Args:
        groups: ``(N,)`` group id of each frame (e.g. ``clip_id``), ints or strings.
        y_true: ``(N,)`` frame labels; every frame of a group must carry the group's label.
        prob: ``(N, C)`` frame probabilities.

    Returns:
        ``(group_ids, y_group, prob_group)``: the sorted unique ids ``(G,)``, their labels ``(G,)`` int64 and
        mean probabilities ``(G, C)`` float64, in the order of ``group_ids``.
    """
    y, p = _check_inputs(y_true, prob)
    ids, inverse = _group_index(groups, y.shape[0])
    counts = np.bincount(inverse, minlength=ids.size)
    sums = np.zeros((ids.size, p.shape[1]))
    np.add.at(sums, inverse, p)
    y_group = np.zeros(ids.size, dtype=np.int64)
    y_group[inverse] = y  # any frame's label; checked below
    mixed = np.flatnonzero(y != y_group[inverse])
    if mixed.size:
        bad = inverse[mixed[0]]
        labels = sorted(set(y[inverse == bad].tolist()))
        n_bad = np.unique(inverse[mixed]).size
        raise ValueError(
            f"group {ids[bad].item()!r} has frames with different labels {labels}; a group should have one label "
            f"({n_bad} group(s) are mixed) - check that the group ids are clip/patient ids"
        )
    return ids, y_group, sums / counts[:, None]


def bootstrap_indices(n: int, n_boot: int, seed: int = 0, groups: Any = None) -> Iterator[np.ndarray]:
    """The resamples of a bootstrap, as index arrays into ``n`` samples: the resampler pleura bootstraps with.

    Without ``groups``, each resample draws ``n`` samples with replacement; with ``groups`` (one id per sample,
    e.g. patient ids) it draws ``G`` whole groups with replacement (``G`` the number of distinct ids) and keeps
    every sample of each drawn group, so frames of one patient are never resampled independently. One
    ``rng.integers`` call per resample of ``numpy.random.default_rng(seed)``: the same seed, the same resamples.

    Written here rather than with ``scipy.stats.bootstrap``: that resamples observations of equal weight (a
    patient is a group of any number of frames) and returns a NaN interval as soon as one resample's statistic
    is NaN, where :func:`bootstrap_ci` leaves such resamples out (an AUC of a resample that misses a class).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_boot):
            yield rng.integers(0, n, size=n)
        return
    ids, inverse = _group_index(groups, n)
    order = np.argsort(inverse, kind="stable")  # samples sorted by group
    counts = np.bincount(inverse, minlength=ids.size)
    starts = np.cumsum(counts) - counts
    for _ in range(n_boot):
        draw = rng.integers(0, ids.size, size=ids.size)
        lens = counts[draw]
        ends = np.cumsum(lens)
        # position k of the resample is sample (k - first k of its group's slot) + start of that group
        pos = np.arange(ends[-1]) + np.repeat(starts[draw] - (ends - lens), lens)
        yield order[pos]


def bootstrap_ci(
    y_true: Any,
    prob: Any,
    metric: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: Any = None,
) -> tuple[float, float]:
    """Percentile-bootstrap ``1 - alpha`` confidence interval of ``metric(y_true, prob)``.

    The resamples are :func:`bootstrap_indices`'s: ``N`` samples with replacement, or with ``groups`` ``G``
    whole groups (clips or patients) with replacement keeping all their frames. Resamples where ``metric`` is
    NaN (e.g. a class missing from the resample for an AUC) are left out; ``(nan, nan)`` if all are.

    Args:
        y_true: ``(N,)`` integer class indices.
        prob: ``(N, C)`` class probabilities.
        metric: ``metric(y, prob) -> float``, e.g. :func:`accuracy`, :func:`balanced_accuracy` or
            ``lambda y, p: classification_metrics(y, p)["macro_roc_auc"]``.
        n_boot: number of resamples.
        alpha: the interval is the ``alpha / 2`` and ``1 - alpha / 2`` percentiles.
        seed: seed of the resampling generator.
        groups: optional ``(N,)`` group id of each sample.

    Returns:
        ``(low, high)``.
    """
    y, p = _check_inputs(y_true, prob)
    if not callable(metric):
        raise TypeError(f"metric should be a callable metric(y, prob) -> float, got {type(metric).__name__}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot should be a positive int, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha should lie in (0, 1), e.g. 0.05 for a 95% interval, got {alpha!r}")
    stats = np.array([metric(y[idx], p[idx]) for idx in bootstrap_indices(y.shape[0], n_boot, seed, groups)])
    stats = stats[~np.isnan(stats)]
    if not stats.size:
        return math.nan, math.nan
    low, high = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def summarise_folds(
    per_fold: Sequence[dict[str, Any]],
    keys: Sequence[str] = ("accuracy", "balanced_accuracy", "macro_f1", "macro_roc_auc"),
    per_class: Sequence[str] = ("sensitivity", "specificity"),
) -> dict[str, dict[str, Any]]:
    """Mean and sample standard deviation of each metric across cross-validation folds.

    Args:
        per_fold: one :func:`classification_metrics` result per fold.
        keys: top-level metrics to summarise.
        per_class: per-class scores to summarise, under ``"{class}_{score}"`` (e.g. ``"covid_sensitivity"``),
            for the classes of the first fold.

    Returns:
        ``{key: {"mean", "std", "n", "values"}}``: ``values`` has one entry per fold (NaN kept); ``mean`` and
        ``std`` (``ddof=1``; 0 for a single value) are over the ``n`` non-NaN values, NaN if there are none.
    """
    if isinstance(per_fold, dict) or not len(per_fold):
        raise ValueError(
            "per_fold should be a non-empty list of classification_metrics() dicts, one per fold, "
            f"got {type(per_fold).__name__} of length {len(per_fold)}"
        )
    columns: dict[str, list[float]] = {}
    for i, fold in enumerate(per_fold):
        for key in keys:
            if key not in fold:
                raise KeyError(f"fold {i} has no metric {key!r}; it has: {', '.join(map(str, fold))}")
            columns.setdefault(key, []).append(float(fold[key]))
    if per_class:
        names = list(per_fold[0].get("per_class", {}))
        for i, fold in enumerate(per_fold):
            pc = fold.get("per_class")
            if pc is None:
                raise KeyError(f"fold {i} has no 'per_class' scores; pass per_class=() to summarise without them")
            for name in names:
                if name not in pc:
                    raise KeyError(f"fold {i} has no class {name!r}; it has: {', '.join(map(str, pc))}")
                for score in per_class:
                    if score not in pc[name]:
                        raise KeyError(f"fold {i} class {name!r} has no score {score!r}; it has: {', '.join(pc[name])}")
                    columns.setdefault(f"{name}_{score}", []).append(float(pc[name][score]))
    out: dict[str, dict[str, Any]] = {}
    for key, values in columns.items():
        mean, std = mean_std(values)
        out[key] = {"mean": mean, "std": std, "n": int(np.isfinite(values).sum()), "values": values}
    return out


def metrics_table(summary: dict[str, dict[str, Any]], digits: int = 4) -> str:
    """Markdown table ``| metric | mean ± std |`` of a :func:`summarise_folds` result; ``n/a`` where undefined.
    A summary of one fold (an external test set) has no spread: the table gives ``| metric | value |``."""
    single = all(s.get("n", 2) <= 1 for s in summary.values())
    spec = f".{digits}f"
    rows = [[key, fmt(s["mean"], spec, pm=None if single else s["std"])] for key, s in summary.items()]
    return markdown_table(["metric", "value" if single else "mean ± std"], rows, padded_rule=True)
