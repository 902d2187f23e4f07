"""Shared fixtures: one small simulated dataset per test session."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kit import simulated
from PIL import Image

from pleura.data.synthetic import write_clip
from pleura.simulate.writer import simulate_clip


@pytest.fixture(scope="session")
def sim_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 clips x 2 frames at 128 px, both probes, all diagnoses."""
    return simulated(tmp_path_factory, "sim", n=18, seed=7, size=128, frames=2, workers=2)


@pytest.fixture(scope="session")
def bundle(sim_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier trained on the simulated set (2 folds, 1 epoch), bundled."""
    from pleura.infer.bundle import export_bundle
    from pleura.models import ClassifierConfig, UNetConfig
    from pleura.train.cls import ClsTrainConfig, train_kfold
    from pleura.train.distributed import DistEnv

    run = tmp_path_factory.mktemp("cls") / "run"
    train_kfold(
        ClsTrainConfig(epochs=1, batch_size=8, model=ClassifierConfig(unet=UNetConfig(width=4, depth=2))),
        sim_dataset,
        run,
        DistEnv(),
        folds=2,
    )
    path, _ = export_bundle(run, run.parent / "model.safetensors", ood_frames=36)
    return path


def _torchrun_cpu(*pleura_args: str, nproc: int = 2, timeout: int = 600) -> None:
    """Run ``pleura ARGS`` under torchrun with ``nproc`` CPU processes (gloo); fail with its stderr."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "pleura", *pleura_args, "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture
def torchrun_cpu():
    """``torchrun_cpu(*args)``: run ``pleura ARGS`` under torchrun with 2 CPU processes."""
    return _torchrun_cpu


COLUMNS = ["file", "cls", "type", "probe", "width", "height", "n_frames", "fps", "patient_id", "source_id",
           "license", "b_lines", "a_lines", "consolidations", "effusion", "pleural_irreg"]  # fmt: skip


def _frames(diagnosis: str, probe: str, n: int, seed: int) -> list[np.ndarray]:
    """Simulated frames placed on a larger canvas with a burnt-in label, like a scanner screen."""
    _, frames = simulate_clip(seed, 0, diagnosis, probe, 96, n)
    out = []
    for f in frames:
        canvas = np.zeros((120, 160), np.uint8)
        canvas[16:112, 32:128] = f.image
        canvas[2:8, 4:30] = 255  # text-like mark outside the scan area
        out.append(canvas)
    return out


def _write_mp4(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    write_clip(path, frames, fps=fps)


def make_fake_pocus(root: Path, patients_per_class: int = 3) -> Path:
    """A POCUS-layout folder: per class, one clip per patient plus an image; one viral clip; one corrupt clip."""
    rows = []
    seed = 0
    for cls, diagnosis in (("covid", "covid"), ("pneumonia", "pneumonia"), ("normal", "normal")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for p in range(patients_per_class):
            seed += 1
            probe = "curvilinear" if p % 2 == 0 else "linear"
            name = f"{cls}/{cls}_clip{p}.mp4"
            _write_mp4(root / name, _frames(diagnosis, probe, 20, seed))
            rows.append({"file": name, "cls": cls, "type": "video", "probe": "convex" if p % 2 == 0 else "linear",
                         "n_frames": 20, "fps": 10, "patient_id": f"{cls}{p}", "source_id": str(p % 2),
                         "b_lines": int(cls == "covid"), "license": "CC BY 4.0"})  # fmt: skip
        image = f"{cls}/{cls}_image.png"
        Image.fromarray(_frames(diagnosis, "curvilinear", 1, seed + 100)[0]).save(root / image)
        rows.append({"file": image, "cls": cls, "type": "image", "probe": "convex", "patient_id": f"{cls}0",
                     "source_id": "0", "license": "CC BY 4.0"})  # fmt: skip
    (root / "viral_pneumonia").mkdir()
    _write_mp4(root / "viral_pneumonia" / "vir.mp4", _frames("pneumonia", "linear", 10, 99))
    rows.append({"file": "viral_pneumonia/vir.mp4", "cls": "viral_pneumonia", "type": "video", "probe": "linear",
                 "patient_id": "v1"})  # fmt: skip
    (root / "normal" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    rows.append({"file": "normal/broken.mp4", "cls": "normal", "type": "video", "probe": "convex", "patient_id": "n9"})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def fake_pocus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake POCUS folder (read-only for tests): 3 patients per class, a viral clip and a corrupt clip."""
    return make_fake_pocus(tmp_path_factory.mktemp("pocus") / "src")
