"""Simulator throughput and memory: frames per second and peak memory against dataset size.

Target (issue 2): 10,000 frames of 256x256 in at most 5 minutes on the 2-core machine, using all cores,
with memory flat in N. Each case runs in a fresh process so peak RSS belongs to that case alone; the
peak is taken over the parent and every worker process (sampled), so it is what the machine must hold.

    python benchmarks/bench_simulate.py                 # the full table (about 7 minutes here)
    python benchmarks/bench_simulate.py --quick         # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import machine, save

CASE = """
import json, sys, time
from pleura.simulate import SimulationConfig, write_dataset
n, frames, size, workers, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
t = time.perf_counter()
write_dataset(SimulationConfig(n=n, frames=frames, size=size, workers=workers, seed=0), out)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def tree_rss_mb(pid: int, proportional: bool = False) -> float:
    """Resident memory of a process and all its descendants, in MB (Linux /proc).

    With ``proportional``, each process counts its proportional set size (shared pages split among the
    processes sharing them), so forked workers sharing the parent's libraries are not counted twice.
    """
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            if proportional:
                with open(f"/proc/{p}/smaps_rollup") as fh:
                    total += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))
            else:
                with open(f"/proc/{p}/statm") as fh:
                    total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as fh:
                stack += [int(c) for c in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 2**20


def stopped(pid: int) -> bool:
    """Whether the process is stopped (``kill -STOP``), e.g. paused while a quiet benchmark runs."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "T"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def run_sampled(cmd: list[str], what: str, every: float = 0.05, proportional: bool = False) -> tuple[str, float, float]:
    """Run ``cmd``; its stdout, wall seconds (less any time it was stopped) and the peak RSS (MB; PSS if
    ``proportional``) of its process tree, sampled."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak, paused = 0.0, 0.0

    def sample() -> None:
        nonlocal peak, paused
        while proc.poll() is None:
            tick = time.perf_counter()
            peak = max(peak, tree_rss_mb(proc.pid, proportional))
            time.sleep(every)
            if stopped(proc.pid):
                paused += time.perf_counter() - tick

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark failed: {what}")
    return stdout, time.perf_counter() - t0 - paused, peak


def run_case(clips: int, frames: int, size: int, workers: int) -> dict[str, float]:
    """Simulate in a subprocess; wall time, frames/s and peak RSS of the whole process tree."""
    out = Path(tempfile.mkdtemp(prefix="pleura-bench-")) / "ds"
    cmd = [sys.executable, "-c", CASE, str(clips), str(frames), str(size), str(workers), str(out)]
    stdout, _, peak = run_sampled(cmd, f"{clips} clips x {frames} frames")
    seconds = json.loads(stdout.strip().splitlines()[-1])["seconds"]
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    shutil.rmtree(out.parent, ignore_errors=True)
    n = clips * frames
    return {
        "clips": clips,
        "frames_per_clip": frames,
        "frames": n,
        "seconds": round(seconds, 1),
        "frames_per_s": round(n / seconds, 1),
        "peak_rss_mb": round(peak, 0),
        "disk_mb": round(disk, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0, help="0 = all cores")
    ap.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: results/simulate.json; /tmp for --quick)"
    )
    args = ap.parse_args()
    if args.out is None:  # a smoke run must not overwrite the committed figures
        args.out = (
            Path("/tmp/pleura-simulate-quick.json")
            if args.quick
            else Path(__file__).with_name("results") / "simulate.json"
        )
    cases = [(100, 1), (400, 1)] if args.quick else [(1000, 1), (10000, 1), (1250, 8)]
    rows = []
    for clips, frames in cases:
        row = run_case(clips, frames, args.size, args.workers)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "machine": machine(),
        "size": args.size,
        "workers": args.workers or os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "cases": rows,
    }
    header = ("clips x frames", "frames", "seconds", "frames/s", "peak RSS (MB, all processes)", "disk (MB)")
    table = [(f"{r['clips']} x {r['frames_per_clip']}", r["frames"], r["seconds"], r["frames_per_s"],
              f"{r['peak_rss_mb']:.0f}", r["disk_mb"]) for r in rows]  # fmt: skip
    save(args.out, result, header, table)


if __name__ == "__main__":
    main()
