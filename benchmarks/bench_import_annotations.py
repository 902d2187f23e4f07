"""Annotation import speed and memory: a 1,000-frame labelled video (CVAT task backup) into a manifest dataset.

Target (issue 15): importing a 1,000-frame labelled video project takes under 2 minutes on 2 cores, with flat
memory (the clip is streamed: frames decoded once, in order, never all held). The project is made here, in a
temporary folder: a synthetic 1280x720 scanner screen (a live speckled scan area, burnt-in text and a ruler
around it), one polygon per frame moving across the scan area, as a CVAT task backup (task.json,
annotations.json, data/clip.mp4). The import runs as ``pleura data import-annotations`` in a child process;
its peak resident set size is the ``ru_maxrss`` that ``os.wait4`` reports for it. The same clip cut to 250
frames is imported too: flat memory means the two peaks are about the same.

    python benchmarks/bench_import_annotations.py            # writes results/import_annotations.json
    python benchmarks/bench_import_annotations.py --quick    # 100 and 200 frames at 640x360, to /tmp
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, save

from pleura.data.synthetic import write_clip

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"schema": "sparse", "labels": {"aline": "a_line", "lungslidingpresent": "pleural_line"}}


def screen(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One scanner screen: speckle in a scan area off centre, white text blocks and a ruler outside it."""
    frame = np.zeros((height, width), np.uint8)
    t, b, left, right = height // 7, height * 6 // 7, width * 2 // 5, width * 3 // 5
    frame[t:b, left:right] = rng.integers(20, 120, (b - t, right - left), dtype=np.uint8)
    frame[5 : height // 30, 10 : width // 4] = 255  # the date and patient line
    frame[t:b:40, width - 12 : width - 6] = 255  # a depth ruler
    return frame


class Screens:
    """``n`` screens made one at a time when indexed, so a long clip is encoded without holding its frames."""

    def __init__(self, n: int, width: int, height: int) -> None:
        self.n, self.width, self.height = n, width, height

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return screen(np.random.default_rng(i), self.width, self.height)


def make_project(root: Path, frames: int, width: int, height: int) -> Path:
    """A CVAT task backup of a ``frames``-frame clip with one polygon (a thin band) on every frame."""
    (root / "data").mkdir(parents=True)
    write_clip(root / "data" / "clip.mp4", Screens(frames, width, height), fps=30)  # type: ignore[arg-type]
    left, right = width * 2 // 5, width * 3 // 5
    shapes = []
    for f in range(frames):
        y = height // 5 + (f % 100) * height // 200  # the band moves down the scan area and starts over
        pts = [left + 10, y, right - 10, y + 4, right - 10, y + 14, left + 10, y + 10]
        label = "lungslidingpresent" if f % 2 else "aline"
        shapes.append({"type": "polygon", "occluded": False, "z_order": 0, "points": pts, "frame": f, "group": 0,
                       "source": "manual", "attributes": [], "label": label})  # fmt: skip
    task = {"name": "bench", "data": {"start_frame": 0, "stop_frame": frames - 1}}
    (root / "task.json").write_text(json.dumps(task))
    (root / "annotations.json").write_text(json.dumps([{"version": 0, "tags": [], "shapes": shapes, "tracks": []}]))
    lines = [{"version": "1.1"}, {"type": "video"},
             {"properties": {"name": "clip.mp4", "resolution": [width, height], "length": frames}}]  # fmt: skip
    (root / "data" / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def import_peak(src: Path, labels: Path, out: Path) -> tuple[float, float, str]:
    """Run the import command in a child process: seconds, its peak RSS (MB, ``os.wait4``), its last line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "pleura", "data", "import-annotations", str(src), "--format", "cvat",
           "--labels", str(labels), "--out", str(out)]  # fmt: skip
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, in KB on Linux
        seconds = time.perf_counter() - t
        log.seek(0)
        lines = [line.strip() for line in log if line.strip()]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"import failed: {lines[-3:]}")
    return seconds, usage.ru_maxrss / 1024, lines[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 and 200 frames at 640x360 (smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: results/import_annotations.json)")
    args = ap.parse_args()
    if args.out is None:  # a smoke run must not overwrite the committed figures
        default = Path(__file__).with_name("results") / "import_annotations.json"
        args.out = Path("/tmp/pleura-import-annotations-quick.json") if args.quick else default
    sizes, (width, height) = ((100, 200), (640, 360)) if args.quick else ((250, 1000), (1280, 720))
    work = Path(tempfile.mkdtemp(prefix="pleura-bench-"))
    try:
        labels = work / "labels.json"
        labels.write_text(json.dumps(LABELS))
        cases = []
        for n in sizes:
            t = time.perf_counter()
            src = make_project(work / f"task{n}", n, width, height)
            made = time.perf_counter() - t
            seconds, peak, line = import_peak(src, labels, work / f"ds{n}")
            rows = len((work / f"ds{n}" / "manifest.csv").read_text().splitlines()) - 1
            disk = sum(p.stat().st_size for p in (work / f"ds{n}").rglob("*") if p.is_file()) / 2**20
            cases.append({"frames": n, "rows": rows, "seconds": round(seconds, 1), "frames_per_s": round(n / seconds),
                          "peak_rss_mb": round(peak), "disk_mb": round(disk, 1), "project_made_s": round(made, 1),
                          "command_output": line})  # fmt: skip
            print(f"{n} frames: {seconds:.1f} s, peak RSS {peak:.0f} MB ({line})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "video": f"{width}x{height} mpeg4, one polygon per frame, CVAT task backup",
        "size": 256,
        "cases": cases,
        "target": "1,000 frames in under 120 s on 2 cores; peak memory flat in the number of frames",
        "peak_growth_mb": cases[-1]["peak_rss_mb"] - cases[0]["peak_rss_mb"],
    }
    header = ("frames", "seconds (with start-up)", "frames/s", "peak RSS (MB)", "disk (MB)")
    keys = ("frames", "seconds", "frames_per_s", "peak_rss_mb", "disk_mb")
    save(args.out, result, header, [[c[k] for k in keys] for c in cases])


if __name__ == "__main__":
    main()
