"""Wall time and peak memory of ``pleura reproduce --quick`` (the README's main job).

Target (issue 4): within 10 minutes on the 2-core CPU machine. Runs in a fresh output folder; the peak
memory is the sampled sum of the proportional set sizes (PSS) of the whole process tree (the simulator's
workers included; pages they share with the parent counted once). The report's classification table is
kept in the results, so the README's table comes from this run.

    python benchmarks/bench_reproduce.py
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pleura.atomic import write_json

sys.path.insert(0, str(Path(__file__).parent))
from bench_simulate import run_sampled


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="pleura-reproduce-")) / "run"
    cmd = [sys.executable, "-m", "pleura", "reproduce", "--quick", "--out", str(out)]
    stdout, seconds, peak = run_sampled(cmd, "pleura reproduce --quick", every=0.2, proportional=True)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "command": "pleura reproduce --quick",
        "seconds": round(seconds, 1),
        "peak_pss_mb": round(peak),
        "report": stdout,
    }
    shutil.rmtree(out.parent, ignore_errors=True)
    path = Path(__file__).with_name("results") / "reproduce.json"
    path.parent.mkdir(exist_ok=True)
    write_json(path, result)  # atomic: a temporary file, then renamed
    print(stdout)
    print(f"pleura reproduce --quick: {seconds / 60:.1f} min wall, peak {peak:.0f} MB (PSS, all processes)")


if __name__ == "__main__":
    main()
