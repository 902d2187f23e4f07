"""Do the biomarkers track the POCUS annotators' flags (issue 14's real check), and what do the masks look like?

1. **Flags.** Every POCUS file with a 0/1 flag goes through ``pleura.Predictor`` (the one prediction path) with
   the shipped default model (or ``--model``), ``--rate`` frames per second, at most ``--max-frames`` per file.
   Each file's biomarkers are the Predictor's clip summary (max of counts, mean of measurements over its
   in-distribution frames). Per flag, the ROC AUC of the biomarker for the flag, two ways: over the files where
   the biomarker was found (a pleural line was seen), and over all files with "not found" ranked lowest (no
   finding). Beside the biomarkers, two map shares with no rule (the share of the scan area given the B-line or
   the below-pleura-unhealthy class), to tell a missing pleural line from a map that sees nothing. The files are
   all POCUS files with flags, not held-out folds: the shipped models were trained on
   POCUS frames for the diagnosis (never on masks nor on these flags), so the flags were never a target.
2. **Figure** (``--figure``): ``pleura segment`` (the command, as a user runs it) on four clips chosen by rule
   (the first convex video of each: COVID with B-lines, pneumonia with consolidation, normal with A-lines, and
   one with an irregular pleura), and for each the middle segmented frame beside its mask overlaid, at the
   clip's own resolution.

    python benchmarks/bench_pocus_flags.py                                   # results/pocus_flags.json
    python benchmarks/bench_pocus_flags.py --figure docs/segment_pocus.png   # and the figure
    python benchmarks/bench_pocus_flags.py --limit 10 --out /tmp/flags.json  # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, save
from PIL import Image

from pleura.data.readers import ReadError, iter_frames
from pleura.infer.predictor import ClipResult, Predictor, map_scan_area
from pleura.labels import Schema, get_schema
from pleura.metrics.classification import binary_roc_auc
from pleura.models import DEFAULT_PRETRAINED, pretrained
from pleura.report import fmt
from pleura.viz import UNTINTED, overlay, save_figure

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pocus"
#: (flag, clip biomarker, higher means the finding) read for each flag
CHECKS = (
    ("b_lines", "b_line_count"),
    ("b_lines", "b_line_coverage_pct"),
    ("consolidations", "consolidation_area_px"),
    ("consolidations", "subpleural_unhealthy_fraction"),
    ("pleural_irreg", "pleural_line_irregularity_px"),
    ("pleural_irreg", "pleural_line_breaks"),
    ("a_lines", "a_line_count"),
    # not biomarkers: the share of the scan area the model's map gives a class, with no rule and no pleural line
    ("b_lines", "map_b_line_share"),
    ("consolidations", "map_below_unhealthy_share"),
)
FIGURE_PICKS = (  # (class folder, flag that must be 1): the first convex video of each
    ("covid", "b_lines"),
    ("pneumonia", "consolidations"),
    ("normal", "a_lines"),
    ("covid", "pleural_irreg"),
)


def _rows(data: Path) -> list[dict[str, str]]:
    with open(data / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _auc(pairs: list[tuple[int, float | None]], not_found_lowest: bool) -> tuple[float, int, int]:
    """AUC of the value for the flag, and the flagged / unflagged counts it used."""
    if not_found_lowest:
        finite = [v for _, v in pairs if v is not None and np.isfinite(v)]
        floor = min(finite, default=0.0) - 1.0
        pairs = [(y, floor if v is None or not np.isfinite(v) else v) for y, v in pairs]
    else:
        pairs = [(y, v) for y, v in pairs if v is not None and np.isfinite(v)]
    y = np.array([p[0] for p in pairs], dtype=int)
    x = np.array([p[1] for p in pairs], dtype=float)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    return (binary_roc_auc(y, x) if pos and neg else float("nan")), pos, neg


def map_shares(result: ClipResult, schema: Schema) -> dict[str, float | None]:
    """Mean over the in-distribution frames of the share of the scan area that the map gives the B-line class and
    the below-pleura-unhealthy class: what the map says with no rule applied (not a biomarker). A class the
    model's schema lacks (a sparse model has no below-pleura classes) is ``None``."""
    wanted = (("map_b_line_share", "b_line"), ("map_below_unhealthy_share", "below_pleura_unhealthy"))
    if result.scan_area is None:
        return {name: None for name, _ in wanted}
    area = map_scan_area(result.scan_area, result.map_size)
    frames = [f for f in result.frames if not f.ood] or result.frames
    n = max(int(area.sum()), 1)
    return {
        name: float(np.mean([(f.labels[area] == schema.index(cls)).sum() / n for f in frames]))  # type: ignore[index]
        if cls in schema.names
        else None
        for name, cls in wanted
    }


def flags(args: argparse.Namespace) -> dict[str, Any]:
    """Predict every flagged POCUS file and score each biomarker against its flag."""
    rows = [r for r in _rows(args.data) if any(r.get(f) in ("0", "1") for f, _ in CHECKS)]
    rows = rows[: args.limit] if args.limit else rows
    predictor = Predictor(args.model, rate=args.rate, max_frames=args.max_frames)
    clips: list[dict[str, Any]] = []
    start = time.perf_counter()
    for k, row in enumerate(rows, 1):
        try:
            r = predictor.predict(args.data / row["file"])
        except (ReadError, ValueError) as e:
            print(f"skipped {row['file']}: {e}", file=sys.stderr)
            continue
        clips.append({"file": row["file"], "type": row["type"], "cls": row["cls"],
                      **{f: row.get(f, "") for f in {f for f, _ in CHECKS}},
                      "frames": len(r.frames), "severity": r.severity, **r.biomarkers,
                      **map_shares(r, predictor.schema)})  # fmt: skip
        if k % 20 == 0:
            print(f"{k}/{len(rows)} files, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    seconds = time.perf_counter() - start
    results = []
    for flag, marker in CHECKS:
        pairs = [(int(c[flag]), c.get(marker)) for c in clips if c[flag] in ("0", "1")]
        found, pos_f, neg_f = _auc(pairs, not_found_lowest=False)
        every, pos, neg = _auc(pairs, not_found_lowest=True)
        results.append({"flag": flag, "biomarker": marker, "auc_found": found, "flagged_found": pos_f,
                        "unflagged_found": neg_f, "auc_all": every, "flagged": pos, "unflagged": neg})  # fmt: skip
    found = sum(bool(c.get("pleural_line_found")) for c in clips)
    return {
        "what": "per-file biomarkers of the Predictor against the POCUS flags (all flagged files, no folds)",
        "model": str(args.model),
        "data": str(args.data),
        "rate": args.rate,
        "max_frames": args.max_frames,
        "files": len(clips),
        "files_with_pleural_line": found,
        "frames": sum(c["frames"] for c in clips),
        "seconds": round(seconds, 1),
        "machine": machine(),
        "checks": results,
        "clips": clips,
    }


def _pick(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    picks = []
    for cls, flag in FIGURE_PICKS:
        for r in rows:
            fits = r["cls"] == cls and r["type"] == "video" and r["probe"] == "convex" and r.get(flag) == "1"
            if fits and r not in picks:
                picks.append(r)
                break
    return picks


def figure(args: argparse.Namespace, path: Path) -> list[str]:
    """Run ``pleura segment`` on the picked clips and draw frame | overlay for the middle segmented frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    picks = _pick(_rows(args.data))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seg"
        cmd = [sys.executable, "-m", "pleura", "segment", *(str(args.data / r["file"]) for r in picks),
               "--model", str(args.model), "--out", str(out), "--rate", str(args.rate),
               "--max-frames", str(args.max_frames), "--no-video"]  # fmt: skip
        print("$ pleura " + " ".join(cmd[3:]), file=sys.stderr)
        subprocess.run(cmd, check=False)
        fig, axes = plt.subplots(len(picks), 2, figsize=(7.2, 3.0 * len(picks)), squeeze=False)
        lines = []
        for ax, row in zip(axes, picks, strict=True):
            doc = json.loads((out / Path(row["file"]).stem / "biomarkers.json").read_text())
            frame = doc["frames"][len(doc["frames"]) // 2]
            mask = np.asarray(Image.open(out / Path(row["file"]).stem / frame["mask"]))
            image = next(f.image for f in iter_frames(args.data / row["file"]) if f.index == frame["index"])
            bm = frame["biomarkers"]
            say = (
                "no pleural line found"
                if not bm["pleural_line_found"]
                else f"{bm['b_line_count']} B-lines, {bm['a_line_count']} A-lines"
            )
            ax[0].imshow(image, cmap="gray", vmin=0, vmax=255)
            ax[1].imshow(overlay(image, mask, get_schema(doc["schema"])))
            ax[0].set_title(f"{row['file']} (frame {frame['index']})", fontsize=7)
            severity = "not scored" if doc["severity"] is None else f"severity {doc['severity']}"
            ax[1].set_title(f"clip: {severity}; this frame: {say}", fontsize=7)
            for a in ax:
                a.set_xticks([])
                a.set_yticks([])
            present = {get_schema(doc["schema"]).names[i] for i in np.unique(mask)}
            lines.append(f"{row['file']}: classes in the mask: {', '.join(sorted(present))}; {doc['severity_rule']}")
        shown = get_schema(doc["schema"])
        handles = [Patch(color=np.array(c.color) / 255, label=c.name) for c in shown.classes if c.name not in UNTINTED]
        fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
        fig.suptitle("pleura segment, shipped default model, real POCUS clips: frame | mask overlay", fontsize=9)
        fig.tight_layout(rect=(0, 0.05, 1, 0.97))
        save_figure(fig, path, dpi=100, facecolor="white")
    return lines


def main() -> None:
    """Parse the options, run the flag check (and the figure), print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the POCUS folder (manifest.csv)")
    parser.add_argument("--model", type=Path, default=pretrained(), help=f"model file (default {DEFAULT_PRETRAINED})")
    parser.add_argument("--rate", type=float, default=3.0, help="frames per second read from clips")
    parser.add_argument("--max-frames", type=int, default=30, help="at most this many frames per file")
    parser.add_argument("--limit", type=int, default=0, help="only the first N flagged files (0: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pocus_flags.json")
    parser.add_argument("--figure", type=Path, default=None, help="also draw the frame | overlay figure here")
    args = parser.parse_args()
    result = flags(args)
    if args.figure is not None:
        result["figure"] = {"path": str(args.figure), "clips": figure(args, args.figure)}
        print("\n".join(result["figure"]["clips"]))
    print(
        f"{result['files']} files ({result['frames']} frames) in {result['seconds']} s; a pleural line found in "
        f"{result['files_with_pleural_line']} of them"
    )
    rows = [
        [c["flag"], c["biomarker"], fmt(c["auc_found"], ".2f"), f"{c['flagged_found']} / {c['unflagged_found']}",
         fmt(c["auc_all"], ".2f"), f"{c['flagged']} / {c['unflagged']}"]
        for c in result["checks"]
    ]  # fmt: skip
    header = ["flag", "biomarker", "AUC (found)", "flagged / unflagged (found)", "AUC (all, not found lowest)",
              "flagged / unflagged"]  # fmt: skip
    save(args.out, result, header, rows)


if __name__ == "__main__":
    main()
