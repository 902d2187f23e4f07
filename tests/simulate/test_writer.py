"""The dataset writer and ``pleura simulate``: files, determinism, bad input, nothing half-written."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pleura.cli import app
from pleura.simulate import SimulationConfig, SimulationError, write_dataset
from pleura.simulate import writer as writer_module

runner = CliRunner()


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    cfg = SimulationConfig(n=6, seed=3, size=96, frames=2, workers=1)
    write_dataset(cfg, tmp_path / "a")
    write_dataset(SimulationConfig(n=6, seed=3, size=96, frames=2, workers=2), tmp_path / "b")
    write_dataset(SimulationConfig(n=6, seed=4, size=96, frames=2, workers=1), tmp_path / "c")
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    a.pop("dataset.json"), b.pop("dataset.json"), c.pop("dataset.json")  # records the worker count
    assert a == b
    assert a["images/clip000000_000.png"] != c["images/clip000000_000.png"]


def test_manifest_lists_every_file_and_nothing_else(sim_dataset):
    with open(sim_dataset / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18 * 2
    listed = {r[k] for r in rows for k in ("image", "mask_anatomy", "mask_dense", "mask_sparse")}
    on_disk = {str(p.relative_to(sim_dataset)) for p in sim_dataset.rglob("*.png")}
    assert listed == on_disk
    clips = {}
    for r in rows:
        clips.setdefault(r["clip_id"], set()).add((r["diagnosis"], r["probe"], r["pleural_depth_mm"]))
    assert len(clips) == 18 and all(len(v) == 1 for v in clips.values())  # a clip's frames share its scene


@pytest.mark.parametrize(
    "args,message",
    [
        (["--n", "0"], "--n must be at least 1"),
        (["--size", "32"], "--size must be at least 64"),
        (["--classes", "covid,flu"], "unknown class(es) flu"),
        (["--probe", "phased"], "unknown probe 'phased'"),
        (["--frames", "0"], "--frames must be at least 1"),
    ],
)
def test_bad_settings_get_one_clear_line_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = runner.invoke(app, ["simulate", "--out", str(out), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_non_empty_output_needs_overwrite_and_is_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = runner.invoke(app, ["simulate", "--out", str(out), "--n", "1", "--size", "64"])
    assert result.exit_code != 0 and "not empty; pass --overwrite" in result.output
    assert (out / "precious.txt").read_text() == "keep me"
    result = runner.invoke(app, ["simulate", "--out", str(out), "--n", "1", "--size", "64", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "precious.txt").exists() and (out / "manifest.csv").exists()


def test_unwritable_output_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["simulate", "--out", str(blocker / "sub"), "--n", "1", "--size", "64"])
    assert result.exit_code != 0 and "cannot write the output folder" in result.output


def test_a_failure_midway_leaves_nothing_and_keeps_the_old_dataset(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_dataset(SimulationConfig(n=2, size=64, workers=1), out)
    before = digest(out)
    real = writer_module._write_clip

    def failing(args):
        if args[1] == 2:
            raise OSError("disk full")
        return real(args)

    monkeypatch.setattr(writer_module, "_write_clip", failing)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(SimulationConfig(n=4, size=64, workers=1), out, overwrite=True)
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left


def test_gallery_and_python_dash_m(tmp_path):
    out = tmp_path / "g"
    cmd = [sys.executable, "-m", "pleura", "simulate", "--out", str(out), "--n", "6", "--size", "64", "--gallery"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    png = (out / "gallery.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_config_validation_is_usable_from_python():
    with pytest.raises(SimulationError, match="choose from: covid, pneumonia, normal"):
        SimulationConfig(classes=("measles",)).validate()
    assert SimulationConfig(classes=("normal", "covid"), probe="mixed").clip_setting(3) == ("covid", "curvilinear")


def test_probe_setting_is_a_probe():
    """A probe named by real data's alias or in another case is the Probe; the dataset records its value."""
    from pleura.labels import Probe

    cfg = SimulationConfig(probe="Convex")
    cfg.validate()
    assert cfg.probe is Probe.CURVILINEAR and cfg.clip_setting(0) == ("covid", Probe.CURVILINEAR)
    assert SimulationConfig(probe="mixed").clip_setting(3)[1] is Probe.CURVILINEAR
    with pytest.raises(SimulationError, match=r"unknown probe 'phased'; choose one of: linear, curvilinear, mixed"):
        SimulationConfig(probe="phased").validate()
