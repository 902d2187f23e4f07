"""Segmentation foundations on the real cvat-lus clip: dense against sparse labels, seeds, the shipped one.

Scores ``train-seg`` runs (their best checkpoint, chosen on *simulated* validation clips, or ``--checkpoint last``)
and model files on the real clip's 39 expert-labelled frames (``../shared/data/cvat-lus``, imported at 128 px with
the sparse label map), through the one prediction path (``pleura.evaluate.real_seg.score_real_segmentation``);
with ``--pocus``, each one's biomarkers against the POCUS flags too. Runs are grouped by the schema they learnt and
whether they self-trained on real frames; each group gets mean ± std over its runs. This is the seed paper's claim
(dense labels, fewer false positives) tested on real frames, and the check of self-training (``--adapt-data``).

The runs measured in docs/results/real-segmentation.md ("The foundation recipe"), each the recipe of
``scripts/foundation.sh`` at 3,000 frames (1,500 randomised clips x 2, bands of 8 / 10.5 px, width 16, 2 epochs):

    scripts/foundation.sh --clips 1500 --frames 2 --epochs 2 --seed S --out runs/foundation-small-sS   # S = 0, 1, 2
    pleura train-seg --data runs/foundation-small-sS/data --schema dense --width 16 --epochs 2 --patience 100 \
        --seed S --out runs/foundation-dense-sS                                   # the same frames, dense labels
    python benchmarks/bench_foundation.py runs/foundation-small*/run runs/foundation-dense-s* \
        --models pleura/models/pretrained/foundation-sparse-w16-128.safetensors
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine, save

from pleura.evaluate.real_seg import score_real_segmentation
from pleura.experiments.pocus import prepare_real_seg
from pleura.report import fmt, mean_std

ROOT = Path(__file__).resolve().parents[1]
METRICS = (  # (column, path into the score)
    ("pleural-line Dice", ("pleural_line", "dice")),
    ("pleural-line precision", ("pleural_line", "precision")),
    ("pleural-line recall", ("pleural_line", "recall")),
    ("A-line Dice", ("a_line", "dice")),
    ("FP A-line comp./frame", ("a_line", "fp_components_per_frame")),
    ("physics share", ("physics", "share")),
)

#: (POCUS flag, clip biomarker of ``clip_biomarkers``, higher means the finding)
FLAG_CHECKS = (
    ("b_lines", "b_line_count_max"),
    ("b_lines", "b_line_count_median"),
    ("b_lines", "b_line_coverage_pct_mean"),
    ("consolidations", "consolidation_area_px_mean"),
    ("pleural_irreg", "pleural_line_irregularity_px_mean"),
    ("pleural_irreg", "pleural_line_breaks_max"),
    ("a_lines", "a_line_count_median"),
)


def _value(score: dict[str, Any], path: tuple[str, str]) -> float | None:
    v = score[path[0]][path[1]]
    return None if v is None or v != v else float(v)  # NaN (nothing predicted) as None


def pocus_flags(model_path: Path, data: Path, rate: float = 3.0, max_frames: int = 30) -> dict[str, Any]:
    """A U-Net's biomarkers against the POCUS annotators' flags, per file: frames at ``rate`` per second (at most
    ``max_frames``) cleaned as ``pleura predict`` cleans them, segmented, read by ``frame_biomarkers`` in the
    model's schema, summarised by ``clip_biomarkers``; per flag the ROC AUC (files without a finding lowest)."""
    import itertools

    import numpy as np
    import torch
    from bench_pocus_flags import _auc, _rows

    from pleura.data.cleaning import find_scan_area, fit_to_size, remove_overlays
    from pleura.data.readers import ReadError, iter_frames
    from pleura.infer.predictor import AREA_FRAMES, map_scan_area
    from pleura.models import load_model
    from pleura.postprocess.biomarkers import clip_biomarkers, frame_biomarkers

    model, _ = load_model(model_path)
    model = getattr(model, "unet", model)  # a classifier: its U-Net's segmentation
    model.eval()
    schema, size = model.config.schema, 128
    rows = [r for r in _rows(data) if any(r.get(f) in ("0", "1") for f, _ in FLAG_CHECKS)]
    clips, start = [], time.perf_counter()
    for row in rows:
        try:
            frames = list(itertools.islice(iter_frames(data / row["file"], fps=rate), max_frames))
        except (ReadError, ValueError) as e:
            print(f"skipped {row['file']}: {e}")
            continue
        area = find_scan_area(np.stack([f.image for f in frames[:AREA_FRAMES]]))
        x = np.stack([fit_to_size(remove_overlays(f.image, area=area), area, size) for f in frames])
        with torch.inference_mode():
            labels = model(torch.from_numpy(x[:, None].astype(np.float32) / 255.0)).argmax(1).numpy().astype(np.uint8)
        inside = map_scan_area(area, size)
        per_frame = [frame_biomarkers(m, schema, scan_area=inside) for m in labels]
        clips.append({"file": row["file"], **{f: row.get(f, "") for f, _ in FLAG_CHECKS}, **clip_biomarkers(per_frame)})
    checks = []
    for flag, marker in FLAG_CHECKS:
        if all(c.get(marker) is None for c in clips):
            continue  # a biomarker the schema cannot give (e.g. consolidation from sparse maps)
        pairs = [(int(c[flag]), c.get(marker)) for c in clips if c[flag] in ("0", "1")]
        auc, pos, neg = _auc(pairs, not_found_lowest=True)
        checks.append({"flag": flag, "biomarker": marker, "auc": auc, "flagged": pos, "unflagged": neg})
    found = sum(bool(c.get("pleural_line_found")) for c in clips)
    return {"model": str(model_path), "files": len(clips), "files_with_pleural_line": found, "checks": checks,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


#: the POCUS-flag columns of the table, when --pocus is given: (column, flag, clip biomarker)
FLAG_COLUMNS = (
    ("B-line count (max) vs flag, AUC", "b_lines", "b_line_count_max"),
    ("B-line coverage vs flag, AUC", "b_lines", "b_line_coverage_pct_mean"),
)


def _flag_auc(item: dict[str, Any], flag: str, marker: str) -> float | None:
    """The ROC AUC of ``marker`` against ``flag`` in an item's POCUS check (None without one)."""
    for c in item.get("pocus", {}).get("checks", []):
        if c["flag"] == flag and c["biomarker"] == marker:
            return c["auc"]
    return None


def _run_group(run: Path) -> str:
    """A train-seg run's group: the schema it learnt, and whether it self-trained on real frames."""
    config = json.loads((run / "config.json").read_text())
    return f"{config['train']['schema']} runs" + (", self-trained (--adapt-data)" if config.get("adapt_data") else "")


def main() -> None:
    """Score the runs and model files given; print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="*", help="train-seg run folders (their --checkpoint)")
    ap.add_argument("--checkpoint", choices=("best", "last"), default="best",
                    help="the runs' checkpoint: best on simulated validation, or the last epoch's")  # fmt: skip
    ap.add_argument("--models", type=Path, nargs="*", default=[], help="model files scored one by one")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cvat-lus", help="CVAT backup")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "real_seg_foundation.json")
    ap.add_argument("--pocus", type=Path, default=None, help="POCUS folder: every model's biomarkers against its flags")
    args = ap.parse_args()
    groups: dict[str, list[dict[str, Any]]] = {}
    sources = [(_run_group(r), str(r), r / args.checkpoint / "model.safetensors") for r in args.runs]
    stems = [m.stem for m in args.models]
    for model in args.models:  # named by file stem, or by path where two files share one (run/last/model...)
        sources.append((model.stem if stems.count(model.stem) == 1 else str(model.with_suffix("")), str(model), model))
    with tempfile.TemporaryDirectory() as tmp:
        real = prepare_real_seg(args.data, Path(tmp), 128)
        for name, source, model in sources:
            t = time.perf_counter()
            item = {"source": source, "score": score_real_segmentation(model, real)}
            if args.pocus is not None:
                item["pocus"] = pocus_flags(model, args.pocus)
                f = item["pocus"]
                print(f"\n{source} on {f['files']} POCUS files ({f['files_with_pleural_line']} with a pleural line):")
                for c in f["checks"]:
                    print(f"  {c['biomarker']} vs {c['flag']} flag: AUC {fmt(c['auc'])} ({c['flagged']} / "
                          f"{c['unflagged']})")  # fmt: skip
            item["seconds"] = time.perf_counter() - t
            groups.setdefault(name, []).append(item)
    columns = [(column, lambda i, p=path: _value(i["score"], p), ".3f" if "comp" not in column else ".2f")
               for column, path in METRICS]  # fmt: skip
    if args.pocus is not None:
        columns += [
            (column, lambda i, f=flag, m=marker: _flag_auc(i, f, m), ".3f") for column, flag, marker in FLAG_COLUMNS
        ]
    rows, table = [], {}
    for name, items in groups.items():
        cells = []
        for column, get, spec in columns:
            values = [v for v in (get(i) for i in items) if v is not None]
            m, s = mean_std(values) if values else (None, None)
            table.setdefault(name, {})[column] = {"values": [get(i) for i in items], "mean": m, "std": s}
            cells.append(fmt(m, spec, s if len(items) > 1 else None))
        rows.append([name, len(items), *cells])
    result = {"machine": machine(), "data": str(args.data), "checkpoint": args.checkpoint, "groups": groups,
              "table": table}  # fmt: skip
    save(args.out, result, ["model", "runs", *(c for c, _, _ in columns)], rows)


if __name__ == "__main__":
    main()
