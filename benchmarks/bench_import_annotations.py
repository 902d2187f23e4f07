"""Annotation import speed and memory: a 1,000-frame labelled video (CVAT task backup) into a manifest dataset.

Target (issue 15): importing a 1,000-frame labelled video project takes under 2 minutes on 2 cores, with flat
memory (the clip is streamed: frames decoded once, in order, never all held). The project is made here, in a
temporary folder: a synthetic 1280x720 scanner screen (a live speckled scan area, burnt-in text and a ruler
around it), one polygon per frame moving across the scan area, as a CVAT task backup (task.json,
annotations.json, data/clip.mp4). The import runs as ``pleura data import-annotations`` in a child process;
its peak resident set size is the ``ru_maxrss`` that ``os.wait4`` reports for it. The same clip cut to 250
frames is imported too: flat memory means the two peaks are about the same.

The way back is timed too (``--export``): 1,000 model-like masks of 1280x720 (a curved pleural line 8 px thick,
two A-line bands below it, a B-line wedge on every other frame, made one at a time and never held) exported as
editable polygons by ``pleura.data.annotations.export.export_labels`` in each format (CVAT XML, COCO, Labelme),
in this process; the seconds exclude making the masks. It reports the shapes and vertices written and the worst
per-class IoU of a frame drawn back as ``import-annotations`` draws it. Where the real cvat-lus fixture is
(``../shared/data/cvat-lus``), its 39 expert-labelled frames are rasterised by the importer, exported as CVAT XML,
read back by the importer and compared (IoU per class and frame), and the vertices are counted against the
experts' own polygons.

    python benchmarks/bench_import_annotations.py            # import and export: results/import_annotations.json
    python benchmarks/bench_import_annotations.py --export   # the export only: results/export_labels.json
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

from pleura.data.annotations.export import ExportItem, class_ious, export_labels
from pleura.data.annotations.importer import rasterise, read_items
from pleura.data.annotations.model import Notes, load_label_map
from pleura.data.synthetic import write_clip
from pleura.labels import SPARSE

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"schema": "sparse", "labels": {"aline": "a_line", "lungslidingpresent": "pleural_line"}}
FIXTURE = ROOT.parent / "shared" / "data" / "cvat-lus" / "task_195"


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


class ModelMasks:
    """``n`` sparse masks like a segmentation model's, made one at a time as they are read (the time it takes is
    kept in ``seconds``, to leave it out of the export's)."""

    def __init__(self, n: int, width: int, height: int) -> None:
        self.n, self.width, self.height, self.seconds = n, width, height, 0.0
        self.rows, self.cols = np.indices((height, width), dtype=np.float32)

    def __iter__(self):  # a generator of (frame, mask)
        w, h, rows, cols = self.width, self.height, self.rows, self.cols
        left, right = w * 2 // 5, w * 3 // 5
        for f in range(self.n):
            t = time.perf_counter()
            rng = np.random.default_rng(f)
            depth = h * (0.25 + 0.05 * np.sin(f / 15))  # the pleural line moves with breathing
            inside = (cols >= left) & (cols < right)
            curve = depth + 0.0004 * (cols - w / 2) ** 2 + rng.normal(0, 0.3)
            m = np.zeros((h, w), np.uint8)
            for k in (2, 3):  # A-lines: repeats of the pleural line's depth, thinner
                m[inside & (np.abs(rows - k * curve) < 3 + rng.random())] = SPARSE.index("a_line")
            if f % 2:  # a B-line: a wedge from the pleura down
                x0 = left + (right - left) * (0.3 + 0.4 * rng.random())
                wedge = (rows > curve) & (np.abs(cols - x0) < 6 + 0.02 * (rows - curve)) & inside
                m[wedge] = SPARSE.index("b_line")
            m[inside & (np.abs(rows - curve) < 4)] = SPARSE.index("pleural_line")
            self.seconds += time.perf_counter() - t
            yield f, m


def export_case(fmt: str, n: int, width: int, height: int, work: Path) -> dict:
    """Export ``n`` model-like masks in ``fmt``: seconds (without making the masks), shapes, vertices, worst IoU."""
    masks = ModelMasks(n, width, height)
    out = work / f"export_{fmt}_{n}"
    t = time.perf_counter()
    report = export_labels(fmt, out, [ExportItem("clip.mp4", (width, height), masks, frame_count=n)], "sparse")
    seconds = time.perf_counter() - t - masks.seconds
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    return {"format": fmt, "frames": report.frames, "seconds": round(seconds, 1), "frames_per_s": round(n / seconds),
            "shapes": report.shapes, "vertices_per_shape": round(report.vertices / max(1, report.shapes), 1),
            "worst_iou": round(report.worst_iou or 0.0, 4), "disk_mb": round(disk, 1),
            "masks_made_s": round(masks.seconds, 1)}  # fmt: skip


def fixture_case(task: Path, work: Path) -> dict:
    """The real fixture's expert polygons, rasterised, exported as CVAT XML and read back: IoU and vertices."""
    labels = work / "fixture_labels.json"
    labels.write_text(json.dumps(LABELS))
    lmap, notes = load_label_map(labels), Notes()
    (item,) = read_items("cvat", task, None, lmap, notes)
    w, h = item.size
    truth = {f: rasterise(s, (h, w), lmap, 3.0, f"frame {f}", notes) for f, s in sorted(item.shapes.items())}
    t = time.perf_counter()
    out = work / "fixture_export"
    report = export_labels("cvat", out, [ExportItem(item.media, (w, h), truth.items(), frame_count=164)], "sparse")
    seconds = time.perf_counter() - t
    back_map = load_label_map(out / "labels.json")
    (back,) = read_items("cvat-xml", out / item.clip_id / "annotations.xml", item.media, back_map, notes)
    # every class present in a frame, drawn back as import-annotations draws it (1: a_line, 3: pleural_line)
    present = [class_ious(m, rasterise(back.shapes[f], (h, w), back_map, 1.0, "", notes), [c])[c]
               for f, m in truth.items() for c in (1, 3) if (m == c).any()]  # fmt: skip
    experts = sum(len(s.points) for ss in item.shapes.values() for s in ss)
    return {"frames": report.frames, "seconds": round(seconds, 1), "shapes": report.shapes,
            "expert_shapes": sum(len(ss) for ss in item.shapes.values()), "vertices": report.vertices,
            "expert_vertices": experts, "worst_iou": round(min(present), 4),
            "median_iou": round(float(np.median(present)), 4)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 and 200 frames at 640x360 (smoke run)")
    ap.add_argument("--export", action="store_true", help="time only the export (results/export_labels.json)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: results/import_annotations.json; "
                    "the export's beside it, results/export_labels.json)")  # fmt: skip
    args = ap.parse_args()
    folder = Path("/tmp") if args.quick else Path(__file__).with_name("results")  # a smoke run keeps the figures
    suffix = "-quick" if args.quick else ""
    import_out = args.out or folder / f"import_annotations{suffix}.json"
    export_out = folder / f"export_labels{suffix}.json" if args.out is None else args.out
    if args.out is not None and not args.export:
        export_out = args.out.with_name(f"{args.out.stem}_export.json")
    sizes, (width, height) = ((100, 200), (640, 360)) if args.quick else ((250, 1000), (1280, 720))
    work = Path(tempfile.mkdtemp(prefix="pleura-bench-"))
    try:
        exports = []
        for fmt in ("cvat", "coco", "labelme"):
            case = export_case(fmt, sizes[-1], width, height, work)
            exports.append(case)
            print(f"export {case['frames']} frames as {fmt}: {case['seconds']} s, worst IoU {case['worst_iou']}")
        export_result = {
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
            "masks": f"{width}x{height} sparse: pleural line, 2 A-lines, a B-line on every other frame",
            "cases": exports,
        }
        if FIXTURE.is_dir():
            fx = fixture_case(FIXTURE, work)
            export_result["fixture"] = fx
            print(f"cvat-lus fixture: {fx['frames']} frames, {fx['shapes']} polygons with {fx['vertices']} vertices "
                  f"(the experts': {fx['expert_shapes']} with {fx['expert_vertices']}), IoU per class and frame "
                  f"after export and import: worst {fx['worst_iou']}, median {fx['median_iou']}")  # fmt: skip
        header = ("format", "frames", "seconds", "frames/s", "shapes", "vertices/shape", "worst IoU", "disk (MB)")
        keys = ("format", "frames", "seconds", "frames_per_s", "shapes", "vertices_per_shape", "worst_iou", "disk_mb")
        save(export_out, export_result, header, [[c[k] for k in keys] for c in exports])
        if args.export:
            return
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
    save(import_out, result, header, [[c[k] for k in keys] for c in cases])


if __name__ == "__main__":
    main()
