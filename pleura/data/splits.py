"""Group-aware train/validation splits: frames of one clip (or patient) never land on both sides."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def split_by_group(
    rows: Sequence[dict[str, str]],
    val_fraction: float = 0.2,
    seed: int = 0,
    group: str = "clip_id",
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Split manifest rows into train and validation parts by group, stratified by diagnosis.

    Each group (e.g. clip or patient) goes wholly to one part. Groups are stratified by their diagnosis
    (the most common one among their rows): each diagnosis sends ``round(val_fraction * n)`` of its
    ``n`` groups to validation, at least one and at most ``n - 1`` when ``n >= 2``. Both parts are
    non-empty. The result depends only on the rows' content and ``seed``, not on their order; each part
    keeps the input order.

    Args:
        rows: manifest rows, e.g. from ``read_manifest``.
        val_fraction: share of each diagnosis's groups to put in validation, in (0, 1).
        seed: seed of the shuffle within each diagnosis.
        group: the column that groups rows, e.g. ``"clip_id"`` or ``"patient_id"``.

    Returns:
        ``(train_rows, val_rows)``.

    Example:
        >>> train, val = split_by_group(read_manifest("data/sim"), 0.2, group="patient_id")  # doctest: +SKIP
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction should be in (0, 1), got {val_fraction}")
    strata = _strata(rows, group)
    n_groups = sum(len(v) for v in strata.values())
    if n_groups < 2:
        raise ValueError(f"cannot split {n_groups} {group} group(s); a split needs at least 2 groups")

    rng = np.random.default_rng(seed)
    val_groups: set[str] = set()
    train_groups: list[str] = []
    for diagnosis in sorted(strata):
        groups = [strata[diagnosis][i] for i in rng.permutation(len(strata[diagnosis]))]
        n = len(groups)
        n_val = round(val_fraction * n)
        if n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        val_groups.update(groups[:n_val])
        train_groups.extend(groups[n_val:])
    # Strata of a single group may leave one side empty; move one group across.
    if not val_groups:
        val_groups.add(train_groups.pop(int(rng.integers(len(train_groups)))))
    elif not train_groups:
        moved = sorted(val_groups)[int(rng.integers(len(val_groups)))]
        val_groups.discard(moved)
        train_groups.append(moved)

    train = [r for r in rows if r[group] not in val_groups]
    val = [r for r in rows if r[group] in val_groups]
    logger.info(
        "split %d %s groups: %d train (%d rows), %d val (%d rows)",
        n_groups,
        group,
        n_groups - len(val_groups),
        len(train),
        len(val_groups),
        len(val),
    )
    return train, val


def _strata(rows: Sequence[dict[str, str]], group: str) -> dict[str, list[str]]:
    """Group ids by diagnosis (a group's most common diagnosis, ties by name), each list sorted."""
    missing = [i for i, r in enumerate(rows) if not r.get(group)]
    if missing:
        have = ", ".join(sorted(rows[missing[0]])) or "none"
        raise ValueError(
            f"{len(missing)} row(s) have no {group!r} value (first: row {missing[0]}, columns: {have}); "
            f"choose group= among the manifest's columns"
        )
    diagnoses: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        diagnoses[r[group]][r.get("diagnosis", "")] += 1
    strata: dict[str, list[str]] = defaultdict(list)
    for g in sorted(diagnoses):
        counts = diagnoses[g]
        top = max(counts.values())
        strata[min(d for d, c in counts.items() if c == top)].append(g)
    return dict(strata)


def group_kfold(
    rows: Sequence[dict[str, str]], folds: int = 5, seed: int = 0, group: str = "patient_id"
) -> list[tuple[list[dict[str, str]], list[dict[str, str]]]]:
    """Stratified group k-fold: ``folds`` (train, test) pairs; a group (patient or clip) is never split.

    Each diagnosis's groups are shuffled with ``seed`` and dealt, largest first, to the fold holding
    the fewest frames of that diagnosis, so folds are balanced in groups and frames per class. Every
    group is in exactly one test fold.

    Written here, not scikit-learn's ``StratifiedGroupKFold``, which cannot give these folds: it shuffles with
    a legacy ``RandomState`` rather than ``default_rng(seed)``, orders groups by the spread of their class
    distribution rather than by size, and puts each where the class proportions over folds vary least rather
    than dealing each diagnosis's frames evenly; on a random grouped dataset none of 200 ``random_state``
    values (or ``shuffle=False``) gave the same folds. Every published figure depends on these folds: the
    ``reproduce`` and ``pocus`` results, and the shipped models' held-out folds that the OOD benchmark
    rebuilds.

    Raises:
        ValueError: fewer than 2 diagnoses, or a diagnosis with fewer groups than folds (named, with the
            fix), before any training starts.
    """
    if folds < 2:
        raise ValueError(f"folds should be at least 2, got {folds}")
    strata = _strata(rows, group)
    if len(strata) < 2:
        raise ValueError(
            f"the dataset has one class ({', '.join(strata) or 'none'}); classification needs at least 2 diagnoses"
        )
    short = {d: len(g) for d, g in strata.items() if len(g) < folds}
    if short:
        detail = ", ".join(f"{d} has {n}" for d, n in sorted(short.items()))
        raise ValueError(
            f"{folds}-fold split by {group!r} needs at least {folds} groups per class, but {detail}; "
            f"lower --folds or add data"
        )
    sizes = Counter(r[group] for r in rows)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for offset, diagnosis in enumerate(sorted(strata)):
        groups = [strata[diagnosis][i] for i in rng.permutation(len(strata[diagnosis]))]
        load = [0] * folds
        for g in sorted(groups, key=lambda g: -sizes[g]):  # stable: ties keep the shuffled order
            # fewest frames first; ties rotate per diagnosis so leftover groups spread over folds
            k = min(range(folds), key=lambda i: (load[i], (i - offset) % folds))
            fold_of[g] = k
            load[k] += sizes[g]
    return [
        ([r for r in rows if fold_of[r[group]] != k], [r for r in rows if fold_of[r[group]] == k]) for k in range(folds)
    ]
