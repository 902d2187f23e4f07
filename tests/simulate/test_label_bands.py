"""Line labels as bands of the experts' thickness (``line_label_px``, issue 14)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pleura.labels import ANATOMY, SPARSE
from pleura.simulate import SimulationConfig, SimulationError, write_dataset
from pleura.simulate.bands import thicken_lines

A = {name: i for i, name in enumerate(ANATOMY.names)}


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def mean_run(root: Path, cls: int) -> float:
    """Mean vertical thickness (px, per column run) of sparse class ``cls`` over a dataset's masks."""
    runs = []
    with open(root / "manifest.csv") as fh:
        for row in csv.DictReader(fh):
            mask = np.array(Image.open(root / row["mask_sparse"])) == cls
            for col in mask.T:
                edges = np.diff(np.concatenate(([0], col.astype(np.int8), [0])))
                runs += (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()
    assert runs
    return float(np.mean(runs))


def test_bands_have_the_requested_thickness_and_images_do_not_change(tmp_path):
    base = dict(n=6, seed=5, size=128, frames=1, workers=1, probe="linear")
    write_dataset(SimulationConfig(**base), tmp_path / "thin")
    write_dataset(SimulationConfig(**base, line_label_px=8, a_line_label_px=10.5), tmp_path / "band")
    pleural, a_line = SPARSE.names.index("pleural_line"), SPARSE.names.index("a_line")
    assert mean_run(tmp_path / "thin", pleural) < 4  # today's labels: as thin as the echo
    assert mean_run(tmp_path / "band", pleural) == pytest.approx(8, rel=0.2)
    assert mean_run(tmp_path / "band", a_line) == pytest.approx(10.5, rel=0.2)
    thin, band = digest(tmp_path / "thin"), digest(tmp_path / "band")
    images = [k for k in thin if k.startswith("images/")]
    assert images and all(thin[k] == band[k] for k in images)  # only the labels change
    config = json.loads((tmp_path / "band" / "dataset.json").read_text())["config"]
    assert config["line_label_px"] == 8 and config["a_line_label_px"] == 10.5


def test_default_writes_no_band_settings_and_same_bytes(tmp_path):
    base = dict(n=3, seed=2, size=96, frames=1, workers=1)
    write_dataset(SimulationConfig(**base), tmp_path / "a")
    write_dataset(SimulationConfig(**base, line_label_px=None), tmp_path / "b")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert "line_label_px" not in json.loads((tmp_path / "a" / "dataset.json").read_text())["config"]


def test_bands_take_only_soft_tissue_and_lung_pixels():
    col = np.array(["soft_tissue"] * 4 + ["pleural_line_healthy"] * 2 + ["b_line"] * 4 + ["rib_shadow"] * 2)
    mask = np.array([A[c] for c in col], np.uint8)[:, None].repeat(3, axis=1)
    out = thicken_lines(mask, 6)
    assert thicken_lines(mask, None) is mask
    expected = ["soft_tissue"] * 2 + ["pleural_line_healthy"] * 4 + ["b_line"] * 4 + ["rib_shadow"] * 2
    assert out[:, 0].tolist() == [A[c] for c in expected]  # 2 up, 0 of 2 down: B-lines keep theirs
    assert (mask[:, 0] == A["pleural_line_healthy"]).sum() == 2  # the input is not changed


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(line_label_px=0.5), "--line-label-px must be 1"), (dict(a_line_label_px=8), "needs --line-label-px")],
)
def test_bad_band_settings(kwargs, message):
    with pytest.raises(SimulationError, match=message):
        SimulationConfig(n=1, size=96, **kwargs).validate()
