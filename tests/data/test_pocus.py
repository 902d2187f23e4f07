"""Import of a POCUS-layout folder: a small fake tree the tests generate, and the real folder where present."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pleura.data import read_manifest, split_by_group
from pleura.data.pocus import PocusError, PocusImportConfig, import_pocus, sample_evenly
from pleura.labels import Probe

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pocus"


def test_import_writes_cleaned_frames_grouped_by_patient(fake_pocus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    report = import_pocus(fake_pocus, out, PocusImportConfig(size=64, rate=3.0, max_per_clip=4, workers=1))
    rows = read_manifest(out)
    assert report.frames == len(rows)
    assert report.excluded == 1  # the viral clip is outside the 3-class task
    assert [f for f, _ in report.failed] == ["normal/broken.mp4"] and "broken.mp4" in report.failed[0][1]
    assert {r["diagnosis"] for r in rows} == {"covid", "pneumonia", "normal"}
    per_clip = {}
    for r in rows:
        per_clip.setdefault(r["clip_id"], []).append(r)
    # 20 frames at 10 fps = 2 s; 3 per second gives 6 frames, capped at 4; an image gives 1
    assert sorted({len(v) for v in per_clip.values()}) == [1, 4]
    image = np.asarray(Image.open(out / rows[0]["image"]))
    assert image.shape == (64, 64) and image.dtype == np.uint8
    assert image[:2].max() > 0 or image.max() > 0  # content, top-aligned
    assert rows[0]["patient_id"].startswith("pocus-") and rows[0]["license"] == "CC BY 4.0"
    # the covid image shares its patient with clip 0: both land on the same side of any split
    train, test = split_by_group(rows, 0.34, seed=0, group="patient_id")
    assert not {r["patient_id"] for r in train} & {r["patient_id"] for r in test}
    meta = json.loads((out / "import.json").read_text())
    assert meta["failed"][0]["file"] == "normal/broken.mp4" and meta["frames"] == len(rows)
    assert 0.5 <= meta["probe_agreement"] <= 1.0


def test_import_other_classes_only_when_asked(fake_pocus: Path, tmp_path: Path) -> None:
    cfg = PocusImportConfig(size=64, max_per_clip=2, include_other=True, workers=1)
    report = import_pocus(fake_pocus, tmp_path / "ds", cfg, files=["viral_pneumonia/vir.mp4", "covid/covid_image.png"])
    assert report.excluded == 0 and report.per_class == {"covid": 1, "viral_pneumonia": 2}


def test_import_refuses_bad_folders_and_keeps_old_output(fake_pocus: Path, tmp_path: Path) -> None:
    with pytest.raises(PocusError, match=r"manifest\.csv"):
        import_pocus(tmp_path, tmp_path / "x")
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(PocusError, match="not empty"):
        import_pocus(fake_pocus, out, PocusImportConfig(size=64, workers=1))
    with pytest.raises(PocusError, match="no frame could be imported"):  # only the broken clip: nothing written
        import_pocus(fake_pocus, out, PocusImportConfig(size=64, workers=1), overwrite=True,
                     files=["normal/broken.mp4"])  # fmt: skip
    assert (out / "keep.txt").read_text() == "old"
    assert not list(tmp_path.glob(".ds.partial-*"))
    with pytest.raises(PocusError, match="--max-per-clip"):
        import_pocus(fake_pocus, tmp_path / "y", PocusImportConfig(max_per_clip=0))


def test_import_reads_the_upstream_probe_as_a_probe(fake_pocus: Path, tmp_path: Path) -> None:
    """``convex`` (any case) is written as curvilinear; a probe pleura does not know fails that file, naming it."""
    src = tmp_path / "src"
    (src / "covid").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        shutil.copy(fake_pocus / "covid" / "covid_image.png", src / "covid" / name)
    (src / "manifest.csv").write_text(
        "file,cls,type,probe,patient_id\n"
        "covid/a.png,covid,image,Convex,p1\ncovid/b.png,covid,image,phased,p2\ncovid/c.png,covid,image,,p3\n"
    )
    report = import_pocus(src, tmp_path / "ds", PocusImportConfig(size=64, workers=1))
    assert report.failed == [
        ("covid/b.png", f"{src / 'covid/b.png'}: unknown probe 'phased'; choose one of: linear, curvilinear "
                        "(convex is read as curvilinear)")
    ]  # fmt: skip
    text = (tmp_path / "ds" / "manifest.csv").read_text().splitlines()
    probes = [line.split(",")[5] for line in text[1:]]  # the probe column, as written
    assert probes == ["curvilinear", ""]  # a blank stays blank
    assert [r["probe_detected"] for r in read_manifest(tmp_path / "ds")] == [Probe.CURVILINEAR] * 2


def test_sample_evenly_keeps_ends() -> None:
    assert sample_evenly(list(range(10)), 3) == [0, 4, 9]
    assert sample_evenly([1, 2], 5) == [1, 2]


@pytest.mark.skipif(not (REAL / "manifest.csv").is_file(), reason=f"real POCUS folder not found at {REAL}")
def test_import_real_pocus_subset(tmp_path: Path) -> None:
    with open(REAL / "manifest.csv", newline="") as fh:
        src = list(csv.DictReader(fh))
    picks = []
    for ext in ("mp4", "avi", "mpeg", "mov", "gif", "jpg", "png"):
        picks += [r["file"] for r in src if r["file"].lower().endswith(ext) and r["cls"] in ("covid", "normal")][:1]
    report = import_pocus(REAL, tmp_path / "ds", PocusImportConfig(size=128, max_per_clip=3, workers=2), files=picks)
    assert not report.failed, report.failed
    rows = read_manifest(tmp_path / "ds")
    assert len({r["clip_id"] for r in rows}) == len(picks)
    truth = {r["file"]: r["probe"] for r in src}
    for r in rows:
        assert np.asarray(Image.open(tmp_path / "ds" / r["image"])).shape == (128, 128)
        assert Probe.parse(truth[r["file"]]) is r["probe"]  # upstream convex is curvilinear
