from __future__ import annotations

import random
from collections import Counter

import pytest

from pleura.data import group_kfold, split_by_group


def _rows(groups_per_diagnosis: dict[str, int], frames: int = 3) -> list[dict[str, str]]:
    rows = []
    for diagnosis, n in groups_per_diagnosis.items():
        for g in range(n):
            for f in range(frames):
                clip = f"{diagnosis}_c{g}"
                rows.append({"id": f"{clip}_f{f}", "diagnosis": diagnosis, "clip_id": clip, "patient_id": clip})
    return rows


def _groups(rows, key="clip_id"):
    return {r[key] for r in rows}


def test_groups_are_disjoint_and_cover_all_rows():
    rows = _rows({"covid": 10, "pneumonia": 10, "normal": 10})
    train, val = split_by_group(rows, 0.2, seed=1)
    assert not _groups(train) & _groups(val)
    assert sorted(r["id"] for r in train + val) == sorted(r["id"] for r in rows)
    assert [r for r in rows if r in train] == train  # input order kept


def test_stratified_by_diagnosis():
    rows = _rows({"covid": 10, "pneumonia": 5, "normal": 20})
    _, val = split_by_group(rows, 0.2)
    per_diagnosis = Counter(r["diagnosis"] for r in val if r["id"].endswith("_f0"))  # one row per group
    assert per_diagnosis == {"covid": 2, "pneumonia": 1, "normal": 4}


def test_small_strata_get_one_val_group_and_keep_one_train_group():
    train, val = split_by_group(_rows({"covid": 2, "pneumonia": 3, "normal": 1}), 0.2)
    val_counts = Counter(r["diagnosis"] for r in val if r["id"].endswith("_f0"))
    train_counts = Counter(r["diagnosis"] for r in train if r["id"].endswith("_f0"))
    assert val_counts == {"covid": 1, "pneumonia": 1}
    assert train_counts == {"covid": 1, "pneumonia": 2, "normal": 1}


def test_single_group_strata_still_give_two_parts():
    train, val = split_by_group(_rows({"covid": 1, "normal": 1}), 0.2)
    assert len(_groups(train)) == 1 and len(_groups(val)) == 1
    train, val = split_by_group(_rows({"covid": 1, "normal": 1}), 0.9)
    assert len(_groups(train)) == 1 and len(_groups(val)) == 1


def test_deterministic_and_independent_of_row_order():
    rows = _rows({"covid": 8, "pneumonia": 8, "normal": 8})
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    _, val = split_by_group(rows, 0.25, seed=3)
    _, val_shuffled = split_by_group(shuffled, 0.25, seed=3)
    assert _groups(val) == _groups(val_shuffled)
    seeds = {frozenset(_groups(split_by_group(rows, 0.25, seed=s)[1])) for s in range(5)}
    assert len(seeds) > 1


def test_group_by_patient_keeps_patients_whole():
    rows = _rows({"covid": 6, "normal": 6})
    for r in rows:
        r["patient_id"] = r["clip_id"][:-1] + str(int(r["clip_id"][-1]) // 2)  # two clips per patient
    train, val = split_by_group(rows, 0.3, group="patient_id")
    assert not _groups(train, "patient_id") & _groups(val, "patient_id")
    assert len(_groups(val, "patient_id")) == 2


def test_errors():
    with pytest.raises(ValueError, match="at least 2 groups"):
        split_by_group(_rows({"covid": 1}))
    with pytest.raises(ValueError, match=r"val_fraction should be in \(0, 1\), got 1.0"):
        split_by_group(_rows({"covid": 4}), 1.0)
    with pytest.raises(ValueError, match="no 'site' value"):
        split_by_group(_rows({"covid": 4}), group="site")


def _patient_rows(groups_per_class: dict[str, int], frames: int = 3) -> list[dict[str, str]]:
    rows = []
    for d, n in groups_per_class.items():
        for g in range(n):
            for f in range(frames + g % 3):
                rows.append({"id": f"{d}{g}_{f}", "diagnosis": d, "patient_id": f"{d}-p{g}", "clip_id": f"{d}{g}"})
    return rows


def test_group_kfold_never_shares_a_patient_and_covers_every_row_once():
    rows = _patient_rows({"covid": 11, "pneumonia": 7, "normal": 9})
    folds = group_kfold(rows, folds=5, seed=1)
    assert len(folds) == 5
    seen_test = []
    for train, test in folds:
        assert {r["patient_id"] for r in train}.isdisjoint({r["patient_id"] for r in test})
        assert len(train) + len(test) == len(rows)
        assert {r["diagnosis"] for r in test} == {"covid", "pneumonia", "normal"}  # stratified
        seen_test += [r["id"] for r in test]
    assert sorted(seen_test) == sorted(r["id"] for r in rows)
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= 6  # balanced in frames
    assert group_kfold(rows, folds=5, seed=1) == folds  # deterministic
    assert group_kfold(rows, folds=5, seed=2) != folds


def test_group_kfold_refuses_bad_datasets_before_training():
    with pytest.raises(ValueError, match="one class"):
        group_kfold(_patient_rows({"covid": 6}), folds=5)
    with pytest.raises(ValueError, match=r"pneumonia has 3; lower --folds"):
        group_kfold(_patient_rows({"covid": 6, "pneumonia": 3}), folds=5)
