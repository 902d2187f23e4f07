"""Benchmark scripts that read finished runs: run on tiny runs, their figures checked against the package's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pocus_levers_mean_pooling_reproduces_eval_cls(bundle: Path, tmp_path: Path) -> None:
    """``bench_pocus_levers.py``'s ``mean`` rows predict each fold's held-out frames again and pool them per clip as
    ``eval-cls`` does, so its per-fold video balanced accuracy is eval-cls's; mirroring gives other, valid numbers."""
    from pleura.evaluate.cls import evaluate_classification

    run = bundle.parent / "run"  # the session's tiny 2-fold train-cls run on simulated clips
    ev = evaluate_classification(run)
    out = tmp_path / "levers.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pocus_levers.py"), str(run), "--out",
                           str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = json.loads(out.read_text())["runs"][str(run)]
    got = [f["balanced_accuracy"] for f in scores["mean"]]
    assert got == pytest.approx(ev["clip"]["folds"]["balanced_accuracy"]["values"], abs=1e-6)
    for how in ("tta", "geometric"):
        assert len(scores[how]) == 2 and all(0.0 <= f["balanced_accuracy"] <= 1.0 for f in scores[how])
    assert "| tta |" in proc.stdout


def test_pocus_adapt_compares_the_folds_every_run_finished(bundle: Path, tmp_path: Path) -> None:
    """``bench_pocus_adapt.py`` scores only the folds finished in every run (here a copy holding fold 0 alone), and its
    per-fold video balanced accuracy is eval-cls's; with no B-line flags (simulated clips) the flag AUC is undefined."""
    import shutil

    from pleura.evaluate.cls import evaluate_classification

    run = bundle.parent / "run"
    partial = tmp_path / "partial"
    shutil.copytree(run / "fold0", partial / "fold0")
    data = json.loads((run / "kfold.json").read_text())["data"]
    out = tmp_path / "adapt.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pocus_adapt.py"), str(run), str(partial),
                           "--data", data, "--out", str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["folds"] == ["fold0"]
    want = evaluate_classification(run)["clip"]["folds"]["balanced_accuracy"]["values"][0]
    for r in (str(run), str(partial)):
        assert doc["runs"][r]["folds"]["fold0"]["balanced_accuracy"] == pytest.approx(want, abs=1e-6)
        assert doc["runs"][r]["b_line_flag_auc"] is None or np.isnan(doc["runs"][r]["b_line_flag_auc"])
    args = [str(run), str(tmp_path / "empty"), "--data", data]
    none = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pocus_adapt.py"), *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert none.returncode != 0 and "no fold is finished in every run" in none.stderr


def test_ood_external_reports_corpus_and_clip(tmp_path: Path) -> None:
    """``bench_ood_external.py`` runs a shipped model over the non-LUS corpus and a clip; its clip figures are the
    predictor's own (flagged share, diagnosis withheld exactly when every frame is flagged)."""
    from pleura.data.synthetic import write_clip
    from pleura.simulate.writer import simulate_clip

    _, frames = simulate_clip(3, 0, "covid", "curvilinear", 128, 6)
    clip = tmp_path / "clip.mp4"
    write_clip(clip, np.stack([f.image for f in frames]), fps=10)
    out = tmp_path / "ood.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ood_external.py"), "--models",
                           "pocus-dense-w4-128", "--clip", str(clip), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (r,) = json.loads(out.read_text())["models"]
    assert r["non_lus_images"] == 53 and r["non_lus_flagged"] >= 0.9 and r["clip_frames"] == 6
    assert (r["clip_diagnosis"] is None) == (r["clip_flagged"] == 1.0)
    assert r["clip_image_part"][0] <= r["clip_image_part"][1] <= r["clip_image_part"][2]
    assert "| pocus-dense-w4-128 |" in proc.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ood_external.py"), "--clip",
                          str(tmp_path / "none.mp4")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode != 0 and "none.mp4: no such clip" in bad.stderr
