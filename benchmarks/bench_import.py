"""POCUS import speed and memory: the whole real folder into a manifest dataset.

Target (issue 5): the whole POCUS folder (162 files, about 19,000 frames) imported in under 5 minutes on
the 2-core machine, peak memory under 2 GB. The import runs in a fresh process; the peak is the sampled sum of
the proportional set sizes (PSS) of it and its workers, so pages the forked workers share are counted once.

    python benchmarks/bench_import.py                  # default import settings (3 frames/s, <= 30 per clip, 256 px)
    python benchmarks/bench_import.py --quick          # 12 files, a smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_simulate import run_sampled
from common import machine, save

ROOT = Path(__file__).resolve().parents[1]
CASE = """
import json, sys, time
from pleura.data.pocus import PocusImportConfig, import_pocus, read_source_manifest
src, out, size, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
files = [r["file"] for r in read_source_manifest(src)][:limit] if limit else None
t = time.perf_counter()
rep = import_pocus(src, out, PocusImportConfig(size=size), files=files)
print(json.dumps({"seconds": time.perf_counter() - t, "frames": rep.frames, "files": rep.files,
                  "failed": len(rep.failed)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "pocus", help="POCUS folder")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="12 files only (smoke run)")
    ap.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: results/import.json; /tmp for --quick)"
    )
    args = ap.parse_args()
    if args.out is None:  # a smoke run must not overwrite the committed figures
        args.out = (
            Path("/tmp/pleura-import-quick.json") if args.quick else Path(__file__).with_name("results") / "import.json"
        )
    if not (args.src / "manifest.csv").is_file():
        raise SystemExit(f"{args.src}: no POCUS manifest.csv; pass --src")
    work = Path(tempfile.mkdtemp(prefix="pleura-bench-"))
    cmd = [sys.executable, "-c", CASE, str(args.src), str(work / "ds"), str(args.size), "12" if args.quick else "0"]
    stdout, wall, peak = run_sampled(cmd, "import", proportional=True)
    row = json.loads(stdout.strip().splitlines()[-1])
    disk = sum(p.stat().st_size for p in (work / "ds").rglob("*") if p.is_file()) / 2**20
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "size": args.size,
        **{k: row[k] for k in ("files", "failed", "frames")},
        "seconds": round(row["seconds"], 1),
        "wall_s_with_startup": round(wall, 1),
        "peak_pss_mb": round(peak),
        "disk_mb": round(disk, 1),
    }
    header = ("files (failed)", "frames written", "seconds", "peak memory (MB, PSS of all processes)", "disk (MB)")
    r = result
    save(args.out, result, header, [(f"{r['files']} ({r['failed']})", r["frames"], r["seconds"], r["peak_pss_mb"],
                                     r["disk_mb"])])  # fmt: skip


if __name__ == "__main__":
    main()
