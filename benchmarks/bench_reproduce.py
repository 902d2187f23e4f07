"""Wall time and peak memory of ``pleura reproduce --quick`` (the README's main job), or of the full default.

Target (issue 4): ``--quick`` within 10 minutes on the 2-core CPU machine. Runs in a fresh output folder
(or in ``--out``, kept, so an interrupted full run resumes from its cached stages); time during which the
run was stopped (``kill -STOP``, to keep another benchmark quiet) is not counted. The peak
memory is the sampled sum of the proportional set sizes (PSS) of the whole process tree (the simulator's
workers included; pages they share with the parent counted once). The report's classification table is
kept in the results, so the README's table comes from this run.

    python benchmarks/bench_reproduce.py                          # --quick -> results/reproduce.json
    python benchmarks/bench_reproduce.py --full --out runs/full   # default -> results/reproduce_full.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import machine

from pleura.atomic import write_json

sys.path.insert(0, str(Path(__file__).parent))
from bench_simulate import run_sampled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the full default instead of --quick")
    ap.add_argument("--out", type=Path, help="output folder, kept (default: a temporary one, removed)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pleura-reproduce-")) / "run"
    what = "pleura reproduce" + ("" if args.full else " --quick")
    cmd = [sys.executable, "-m", "pleura", "reproduce", *([] if args.full else ["--quick"]), "--out", str(out)]
    stdout, seconds, peak = run_sampled(cmd, what, every=0.2, proportional=True)
    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "command": what,
        "seconds": round(seconds, 1),
        "peak_pss_mb": round(peak),
        "report": stdout,
    }
    if args.out is None:
        shutil.rmtree(out.parent, ignore_errors=True)
    path = Path(__file__).with_name("results") / ("reproduce_full.json" if args.full else "reproduce.json")
    path.parent.mkdir(exist_ok=True)
    write_json(path, result)  # atomic: a temporary file, then renamed
    print(stdout)
    print(f"{what}: {seconds / 60:.1f} min wall, peak {peak:.0f} MB (PSS, all processes)")


if __name__ == "__main__":
    main()
