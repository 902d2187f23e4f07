"""Segmentation training throughput on CPU: pleura's UNet against MONAI's BasicUNet, and peak memory.

Targets (issue 3): at 256x256, batch 8, width 16, depth 4, 8 classes, cross-entropy and AdamW, pleura's UNet
trains at least as fast (images/s, forward + backward + optimiser step) as
``monai.networks.nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=8, features=(16, 32, 64, 128, 256, 16))``
measured in the same run; and training it at batch 16 peaks under 2 GB of resident memory.

Both models train in this process, in alternating rounds (the order flips each round) after warm-up steps,
so drift in machine speed hits both alike; the table gives the median and best round. Peak memory is the
RSS high-water mark (``VmHWM``, else ``ru_maxrss``) of a fresh subprocess that trains only that model: the
worst of ``--mem-repeats`` runs for pleura, one run for MONAI (for context). MB in the output are MiB
(2**20 bytes); the 2 GB target is taken as 2048 MiB.

    python benchmarks/bench_train_seg.py            # the full run (about 3 minutes on 2 cores)
    python benchmarks/bench_train_seg.py --quick    # tiny sizes, a smoke run
    python benchmarks/bench_train_seg.py --check    # exit 1 if a target is missed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

NUM_CLASSES = 8
PEAK_LIMIT_MB = 2048

MEMORY_CASE = """
import json, os, resource, sys, torch
sys.path.insert(0, sys.argv[1])
from benchmarks.bench_train_seg import build, make_step, peak_rss_mb
kind, batch, size, width, depth, steps = sys.argv[2], *map(int, sys.argv[3:8])
torch.set_num_threads(os.cpu_count() or 1)
base = peak_rss_mb()
step = make_step(build(kind, width, depth), batch, size, seed=0)
for _ in range(steps):
    step()
print(json.dumps({"baseline_rss_mb": base, "peak_rss_mb": peak_rss_mb()}))
"""


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark in MB.

    Linux's ``VmHWM`` belongs to this program alone; ``ru_maxrss`` would also count the parent's RSS at the
    fork before ``exec`` (Linux carries it over), so it is only the fallback elsewhere.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024


def build(kind: str, width: int, depth: int) -> nn.Module:
    """``"pleura"``: our UNet; ``"monai"``: MONAI BasicUNet with the same widths (needs depth 4)."""
    if kind == "pleura":
        from pleura.models import UNet

        return UNet(width=width, depth=depth, num_classes=NUM_CLASSES)
    if kind == "monai":
        from monai.networks.nets import BasicUNet  # optional dependency, only for this comparison

        if depth != 4:
            raise SystemExit(f"MONAI BasicUNet has a fixed depth of 4; got --depth {depth}")
        features = (*(width * 2**i for i in range(5)), width)  # (16, 32, 64, 128, 256, 16) at width 16
        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=NUM_CLASSES, features=features)
    raise ValueError(f"unknown model kind {kind!r}; choose pleura or monai")


def make_step(model: nn.Module, batch: int, size: int, seed: int) -> Callable[[], float]:
    """One training step (forward, cross-entropy, backward, AdamW) on a fixed random batch; returns the loss."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, size, size, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=gen)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def throughput(args: argparse.Namespace) -> dict[str, dict]:
    """Images/s per round for each model, measured in alternating rounds after warm-up."""
    kinds = ["pleura", "monai"]
    models = {k: build(k, args.width, args.depth) for k in kinds}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    steps = {k: make_step(m, args.batch, args.size, seed=0) for k, m in models.items()}
    for kind in kinds:
        for _ in range(args.warmup):
            steps[kind]()
    rounds: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            t = time.perf_counter()
            for _ in range(args.steps):
                steps[kind]()
            rounds[kind].append(args.steps * args.batch / (time.perf_counter() - t))
    return {
        k: {
            "params": params[k],
            "images_per_s_rounds": [round(v, 3) for v in rounds[k]],
            "images_per_s_median": round(statistics.median(rounds[k]), 3),
            "images_per_s_best": round(max(rounds[k]), 3),
        }
        for k in kinds
    }


def peak_memory(kind: str, args: argparse.Namespace, repeats: int) -> dict:
    """Train ``kind`` at the memory batch size in fresh subprocesses; the worst RSS high-water mark in MB.

    The peak varies by about 150 MB from run to run (where glibc's heap fragments), so the case runs
    ``repeats`` times and the largest peak is the one reported.
    """
    cmd = [sys.executable, "-c", MEMORY_CASE, str(ROOT), kind, str(args.mem_batch), str(args.size)]
    cmd += [str(args.width), str(args.depth), str(args.mem_steps)]
    runs = []
    for _ in range(repeats):
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"memory case for {kind} failed:\n{out.stderr[-2000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "baseline_rss_mb": round(min(r["baseline_rss_mb"] for r in runs), 1),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        "peak_rss_mb_runs": [round(r["peak_rss_mb"], 1) for r in runs],
    }


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64x64, batch 2, one short round (smoke run)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per model, alternating models")
    ap.add_argument("--steps", type=int, default=2, help="steps per timed round")
    ap.add_argument("--mem-batch", type=int, default=16)
    ap.add_argument("--mem-steps", type=int, default=2, help="training steps in each memory case")
    ap.add_argument("--mem-repeats", type=int, default=2, help="memory cases for pleura (the worst peak counts)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    ap.add_argument("--out", type=Path, default=None, help="default: results/train_seg.json (a temp file if --quick)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.mem_batch = 64, 2, 4
        args.warmup, args.rounds, args.steps, args.mem_steps, args.mem_repeats = 1, 2, 1, 1, 1
    if args.out is None:  # a smoke run must not overwrite the recorded results
        quick_out = Path(tempfile.gettempdir()) / "pleura_train_seg_quick.json"
        args.out = quick_out if args.quick else Path(__file__).with_name("results") / "train_seg.json"
    torch.set_num_threads(os.cpu_count() or 1)

    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    models = throughput(args)
    memory = {"pleura": peak_memory("pleura", args, args.mem_repeats), "monai": peak_memory("monai", args, 1)}
    ratio = models["pleura"]["images_per_s_median"] / models["monai"]["images_per_s_median"]
    targets = {
        "pleura_at_least_as_fast_as_monai": ratio >= 1.0,
        f"pleura_peak_rss_under_{PEAK_LIMIT_MB}_mb": memory["pleura"]["peak_rss_mb"] < PEAK_LIMIT_MB,
    }
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "setup": {
            "size": args.size,
            "batch": args.batch,
            "width": args.width,
            "depth": args.depth,
            "classes": NUM_CLASSES,
            "loss": "cross-entropy",
            "optimizer": "AdamW(lr=1e-3)",
            "warmup_steps": args.warmup,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "memory_batch": args.mem_batch,
            "memory_steps": args.mem_steps,
            "memory_repeats": {"pleura": args.mem_repeats, "monai": 1},
        },
        "throughput": models,
        "speedup_median": round(ratio, 3),
        "peak_memory": memory,
        "targets": targets,
        "seconds": round(time.perf_counter() - t0, 1),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }
    write_atomic(args.out, json.dumps(result, indent=2) + "\n")

    s = args
    print(
        f"\nTraining throughput, {s.size}x{s.size}, batch {s.batch}, width {s.width}, depth {s.depth}, "
        f"{NUM_CLASSES} classes, CE + AdamW, {result['threads']} threads ({result['machine']}, torch {result['torch']})"
    )
    print(f"\n| model | params | img/s median | img/s best | peak RSS, batch {s.mem_batch} (MiB) |")
    print("|---|---|---|---|---|")
    names = {"pleura": "pleura UNet", "monai": "MONAI BasicUNet"}
    for kind, row in models.items():
        print(
            f"| {names[kind]} | {row['params']:,} | {row['images_per_s_median']:.2f} | {row['images_per_s_best']:.2f} "
            f"| {memory[kind]['peak_rss_mb']:.0f} |"
        )
    print(f"\npleura / MONAI (median): {ratio:.2f}x; targets: {targets}; wrote {args.out} in {result['seconds']} s")
    if args.check and not all(targets.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
