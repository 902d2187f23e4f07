"""The CUDA path on a GPU machine: mixed-precision training, autocast inference and the main job's time.

CI has no GPU, so this is where ``--device cuda`` is checked to run and to agree with the CPU. Each step runs
the CLI as a user would, on a small simulated dataset (128 px), and the results file is rewritten after
every step, so a run cut short keeps what it measured:

1. ``simulate`` 60 clips of 2 frames.
2. ``train-seg --device cuda`` (float16 autocast and GradScaler) and the same run ``--device cpu``:
   finite losses, validation score and images/s of each.
3. ``train-cls --init dense:RUN --device cuda`` (2 folds by clip) and ``eval-cls``.
4. ``export model``, then ``predict --engine torch`` on CUDA (bfloat16 autocast) and on the CPU (float32)
   on the same frames: largest difference of a calibrated probability, and the share of frames whose
   diagnosis agrees. TorchEngine frames/s on CUDA at 256 px for widths 4, 8 and 16, batch 1, 8 and 32.
5. ``reproduce --quick --device cuda``: the README's main job, wall time.

    python benchmarks/bench_cuda.py --out benchmarks/results/cuda.json   # exit 1 if a check fails
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from pleura.atomic import write_json  # noqa: E402

PROB_TOL = 0.05  # bfloat16 autocast against float32: largest calibrated-probability difference allowed
AGREE_MIN = 0.95  # share of frames whose diagnosis must agree between CUDA and CPU


def cli(*args: str) -> float:
    """Run ``python -m pleura ARGS`` from the checkout; its wall time in seconds (raises if it fails)."""
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "pleura", *args], check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def seg_run(data: Path, out: Path, label: str, device: str, epochs: int) -> dict:
    """Train a dense U-Net on ``device``; its losses, best validation score, images/s and wall time."""
    seconds = cli("train-seg", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--width", "16",
                  "--patience", "100", "--device", device, "--workers", "4")  # fmt: skip
    h = history(out)
    return {
        "device": label,
        "seconds": round(seconds, 1),
        "train_loss": [round(r["train_loss"], 4) for r in h],
        "finite": all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in h),
        "best_val_mean_iou": round(max(r["val_score"] for r in h), 4),
        "images_per_s_last_epoch": round(h[-1]["images_per_s"], 1),
    }


def predicted(folder: Path) -> dict[tuple[str, int], tuple[str, list[float]]]:
    """Each frame's diagnosis and calibrated probabilities from ``predict``'s ``frames.csv``."""
    with open(folder / "frames.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in rows[0] if k.startswith("p_")]
    return {(r["file"], int(r["frame"])): (r["diagnosis"], [float(r[k]) for k in keys]) for r in rows}


def engine_speed(device: str, widths: list[int], batches: list[int], size: int = 256, reps: int = 20) -> list[dict]:
    """TorchEngine frames/s on ``device`` (on CUDA under bfloat16 autocast) for freshly built classifiers."""
    from pleura.infer import TorchEngine
    from pleura.models import ReverseTransferClassifier, UNet, UNetConfig

    rows = []
    for w in widths:
        model = ReverseTransferClassifier(UNet(UNetConfig(width=w, num_classes=8, schema="dense"))).to(device)
        engine = TorchEngine(model, image_size=size)
        for b in batches:
            x = torch.rand(b, 1, size, size).numpy()
            for _ in range(3):
                engine(x)
            t = time.perf_counter()
            for _ in range(reps):
                engine(x)  # returns numpy arrays: the GPU has finished
            rows.append({"width": w, "batch": b, "frames_per_s": round(b * reps / (time.perf_counter() - t), 1)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cuda.json")
    ap.add_argument("--epochs", type=int, default=4, help="train-seg epochs on each device")
    ap.add_argument("--no-reproduce", action="store_true", help="skip step 5")
    ap.add_argument("--smoke-cpu", action="store_true", help="run every step on the CPU (tests this script only)")
    args = ap.parse_args()
    on = {"cuda": "cpu" if args.smoke_cpu else "cuda", "cpu": "cpu"}  # the device each labelled step runs on
    if not args.smoke_cpu and not torch.cuda.is_available():
        sys.exit("bench_cuda: torch sees no CUDA device; run this on a GPU machine")
    work = Path(tempfile.mkdtemp(prefix="pleura-cuda-"))
    gpu_name = torch.cuda.get_device_name() if not args.smoke_cpu else "no GPU (--smoke-cpu)"
    res: dict = {
        "machine": f"{gpu_name}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "checks": {},
    }

    def save() -> None:
        write_json(args.out, res)  # after every step: a run cut short keeps what it measured

    data = work / "sim"
    res["simulate_s"] = round(cli("simulate", "--out", str(data), "--n", "60", "--frames", "2", "--size", "128"), 1)
    save()

    res["train_seg"] = [seg_run(data, work / f"seg-{d}", d, on[d], args.epochs) for d in ("cuda", "cpu")]
    res["checks"]["train_seg_finite"] = all(r["finite"] for r in res["train_seg"])
    save()

    cls = work / "cls"
    res["train_cls_s"] = round(cli("train-cls", "--data", str(data), "--out", str(cls), "--init",
                                   f"dense:{work / 'seg-cuda'}", "--folds", "2", "--group", "clip_id",
                                   "--epochs", "3", "--device", on["cuda"]), 1)  # fmt: skip
    cli("eval-cls", "--run", str(cls), "--n-boot", "100")
    res["eval_cls_frame_balanced_accuracy"] = json.loads((cls / "eval.json").read_text())["frame"]["folds"][
        "balanced_accuracy"
    ]["mean"]
    save()

    model = work / "model.safetensors"
    cli("export", "model", str(cls), "--out", str(model))
    images = sorted((data / "images").glob("*.png"))[:40]
    got = {}
    for d in ("cuda", "cpu"):
        cli("predict", *map(str, images), "--model", str(model), "--engine", "torch",
            "--device", on[d], "--out", str(work / f"pred-{d}"), "--no-video")  # fmt: skip
        got[d] = predicted(work / f"pred-{d}")
    same = [k for k in got["cpu"] if k in got["cuda"]]
    diff = max(abs(a - b) for k in same for a, b in zip(got["cuda"][k][1], got["cpu"][k][1], strict=True))
    agree = sum(got["cuda"][k][0] == got["cpu"][k][0] for k in same) / max(len(same), 1)
    res["predict_cuda_vs_cpu"] = {"frames": len(same), "max_prob_diff": round(diff, 4), "diagnosis_agree": agree}
    res["checks"]["predict_matches_cpu"] = len(same) == len(images) and diff <= PROB_TOL and agree >= AGREE_MIN
    save()

    res["engine_cuda_256"] = engine_speed(on["cuda"], [4, 8, 16], [1, 8, 32], reps=2 if args.smoke_cpu else 20)
    save()

    if not args.no_reproduce:
        res["reproduce_quick_cuda_s"] = round(
            cli("reproduce", "--quick", "--device", on["cuda"], "--out", str(work / "rep")), 1
        )
        res["reproduce_report"] = (work / "rep" / "report.md").read_text()[:4000]
        save()

    print(json.dumps({k: v for k, v in res.items() if k != "reproduce_report"}, indent=1))
    failed = [k for k, ok in res["checks"].items() if not ok]
    if failed:
        sys.exit(f"bench_cuda: failed checks: {', '.join(failed)}")


if __name__ == "__main__":
    main()
