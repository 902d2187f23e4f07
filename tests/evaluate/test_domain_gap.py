"""The sim-to-real gap measure: near 0.5 for two samples of one source, near 1 for different sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pleura.data import read_manifest
from pleura.evaluate.domain_gap import domain_gap
from pleura.simulate.style import apply_style


def test_gap_is_chance_within_a_source_and_large_across(sim_dataset: Path, tmp_path: Path) -> None:
    rows = read_manifest(sim_dataset)
    half = len(rows) // 2
    same = domain_gap(sim_dataset, rows[:half], sim_dataset, rows[half:], folds=3)
    other = tmp_path / "images"
    other.mkdir()
    styled = []
    for r in rows:  # the same frames, heavily styled: a different "source"
        img = np.asarray(Image.open(sim_dataset / r["image"]))
        Image.fromarray(255 - apply_style(img, "pocus") // 2).save(other / Path(r["image"]).name)
        styled.append({**r, "image": f"images/{Path(r['image']).name}"})
    diff = domain_gap(sim_dataset, rows, tmp_path, styled, folds=3)
    assert same["auc"] < 0.8 and diff["auc"] > 0.95
    assert diff["mean_d"] > same["mean_d"]
