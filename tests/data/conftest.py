"""Tiny manifest datasets written with PIL and numpy, independent of the simulator."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pleura.labels import ANATOMY, SCHEMAS, convert

SIZE = 64


def anatomy_mask(size: int = SIZE) -> np.ndarray:
    """A linear-probe-like anatomy mask: tissue, pleural line, A-line, lung, outside-scan side strips."""
    m = np.full((size, size), ANATOMY.index("soft_tissue"), dtype=np.uint8)
    m[20:23] = ANATOMY.index("pleural_line_healthy")
    m[23:] = ANATOMY.index("lung_healthy")
    m[40:42] = ANATOMY.index("a_line")
    m[:, :4] = ANATOMY.index("outside_scan")
    m[:, -4:] = ANATOMY.index("outside_scan")
    return m


def save_mask(mask: np.ndarray, path: Path, schema: str) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(SCHEMAS[schema].palette().ravel().tolist())
    img.save(path)


def write_manifest(root: Path, rows: Sequence[dict[str, str]], columns: Sequence[str] | None = None) -> Path:
    columns = list(columns or rows[0].keys())
    path = root / "manifest.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write ``n`` frames (64x64 grayscale PNG, masks per schema) and a manifest; returns the folder."""

    def make(
        n: int = 4,
        masks: Sequence[str] = ("anatomy", "dense", "sparse"),
        diagnoses: Sequence[str] = ("covid", "pneumonia", "normal", "normal"),
        columns: Sequence[str] | None = None,
    ) -> Path:
        root = tmp_path / "ds"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        rng = np.random.default_rng(0)
        anatomy = anatomy_mask()
        rows = []
        for i in range(n):
            image = (rng.random((SIZE, SIZE)) * 200 + 30).astype(np.uint8)
            image[anatomy == ANATOMY.index("outside_scan")] = 0
            Image.fromarray(image, mode="L").save(root / "images" / f"f{i}.png")
            row = {
                "id": f"f{i}",
                "image": f"images/f{i}.png",
                "diagnosis": diagnoses[i % len(diagnoses)],
                "probe": "linear",
                "clip_id": f"c{i // 2}",
            }
            for name in masks:
                rel = f"masks/f{i}_{name}.png"
                save_mask(convert(anatomy, "anatomy", name), root / rel, name)
                row[f"mask_{name}"] = rel
            rows.append(row)
        write_manifest(root, rows, columns)
        return root

    return make


@pytest.fixture
def anatomy() -> np.ndarray:
    """The anatomy mask every frame of ``make_dataset`` has."""
    return anatomy_mask()


@pytest.fixture(name="save_mask")
def save_mask_fixture() -> Callable[[np.ndarray, Path, str], None]:
    """``save_mask(mask, path, schema)``: write an indexed PNG."""
    return save_mask


@pytest.fixture(name="write_manifest")
def write_manifest_fixture() -> Callable[..., Path]:
    """``write_manifest(root, rows, columns=None)``: write ``root/manifest.csv``."""
    return write_manifest
