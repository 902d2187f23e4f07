"""Out-of-distribution check of the shipped models: non-lung-ultrasound images caught, real frames let through.

Targets (issue 12, defect 4): at least 95% of at least 40 images that are not lung ultrasound flagged, and at
most 5% of held-out real POCUS frames flagged, for both shipped models (``pocus-dense-w4-128``, trained
outside fold 1's patients, and ``pocus-dense-w8-128``, fold 4, in ``pleura/models/pretrained/``;
``pleura experiment pocus``, seed 0).

- Non-lung-ultrasound corpus: made in code (``tests/postprocess/ood_corpus.py``): packaged photographs with crops,
  rotations and greyscale copies, Matplotlib charts, text, screenshot-like mock-ups, gradients, checkerboards,
  noise, other imaging (an MRI slice, elevation maps); each image is written as a PNG and predicted by
  ``pleura.Predictor`` (ONNX Runtime engine) like any user file. Ultrasound-like frames of other organs
  (simulated B-mode speckle: a plain fan, abdomen, heart, kidney, muscle, vessel) are reported apart.
- Held-out real frames: the frames (``--data``, ``pleura data import-pocus`` at 128 px) of the fold's test
  patients, never used to fit anything; cleaned as the predictor cleans them, through
  ``Predictor.predict_frames``. The folds are rebuilt with the experiment's split (``group_kfold`` by
  patient, 5 folds, seed 0) on the experiment's own import (``--split-data``: 3 frames/s, at most 8 per clip,
  128 px; the split deals patients by frame count, so another import gives other folds), made from
  ``--source`` when missing.
- Old detector: the version-1 detector the file shipped with before (21 image statistics; read from the
  file's git history), or, outside a git checkout, that method refitted on the fold's training frames.

``--refit`` first refits the shipped files' detectors (``pleura.infer.bundle.refit_ood``: statistics on the
``--data`` frames of the fold's training patients, thresholds cross-fitted over them by patient) and rewrites
their JSON sidecars; the weights files keep their exact bytes.

    pleura data import-pocus /work/shared/data/pocus --out /tmp/pocus128 --size 128
    python benchmarks/bench_ood.py --data /tmp/pocus128 --refit   # refit both shipped files, then measure
    python benchmarks/bench_ood.py --data /tmp/pocus128           # measure the files as they are
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pleura.models import pretrained

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tests" / "postprocess"))  # the corpus lives with the tests that use it

import ood_corpus  # noqa: E402
from common import machine  # noqa: E402

from pleura.atomic import write_json  # noqa: E402
from pleura.data import group_kfold, read_manifest  # noqa: E402
from pleura.infer.bundle import cleaned_frames, refit_ood  # noqa: E402
from pleura.infer.predictor import Predictor  # noqa: E402
from pleura.postprocess.ood import OODDetector  # noqa: E402

log = logging.getLogger("bench_ood")
SHIPPED = {  # file stem -> the fold whose held-out patients it never saw (pleura experiment pocus, seed 0)
    "pocus-dense-w4-128": 1,
    "pocus-dense-w8-128": 4,
}
IMPORT = {"rate": 3.0, "max_per_clip": 8, "size": 128}  # PocusExperimentConfig's import: it fixes the folds
FOLDS, SEED, GROUP = 5, 0, "patient_id"


def split_data(data: Path, source: Path) -> Path:
    """``data`` if it holds the experiment's import, imported from ``source`` when missing; else an error."""
    meta = data / "import.json"
    if not meta.exists():
        if data.exists() and any(data.iterdir()):
            raise SystemExit(f"{data}: not an imported dataset (no import.json); pass --split-data a new folder")
        from pleura.data.pocus import PocusImportConfig, import_pocus

        log.info("importing %s into %s (%s)", source, data, IMPORT)
        import_pocus(source, data, PocusImportConfig(**IMPORT), overwrite=True)
    config = json.loads(meta.read_text()).get("config", {})
    if any(config.get(k) != v for k, v in IMPORT.items()):
        raise SystemExit(
            f"{data}: imported with { ({k: config.get(k) for k in IMPORT}) }, but the shipped models' folds come from "
            f"the experiment's import {IMPORT} (the split deals patients by frame count); pass --split-data a new "
            f"folder to import it into"
        )
    return data


def fold_patients(split_rows: list[dict[str, str]], fold: int) -> tuple[set[str], set[str]]:
    """The fold's training and held-out patients, from the rows of the experiment's import."""
    train, test = group_kfold(split_rows, folds=FOLDS, seed=SEED, group=GROUP)[fold]
    return {r[GROUP] for r in train}, {r[GROUP] for r in test}


def old_detector(model: Path, data: Path, rows: list[dict[str, str]], train_ids: set[str]) -> tuple[OODDetector, str]:
    """The version-1 detector the file shipped with (newest such sidecar in git), else that method refitted."""
    rel = model.with_suffix(".json").relative_to(ROOT)
    try:
        revs = subprocess.run(
            ["git", "log", "--format=%H", "--", str(rel)], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        for rev in revs:
            show = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, capture_output=True, text=True)
            ood = json.loads(show.stdout)["metadata"].get("ood") if show.returncode == 0 else None
            if isinstance(ood, dict) and "version" not in ood:
                return OODDetector.from_dict(ood), f"as shipped (git {rev[:7]})"
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError):
        pass
    from pleura.postprocess.frame_stats import FEATURES, frame_statistics
    from pleura.postprocess.ood import MahalanobisPart

    train = [r for r in rows if r[GROUP] in train_ids]
    pick = np.random.default_rng(0).choice(len(train), size=min(400, len(train)), replace=False)
    frames = cleaned_frames(data, [train[i] for i in pick], IMPORT["size"])
    x = np.stack([frame_statistics(f) for f in frames]).astype(np.float64)
    return OODDetector(MahalanobisPart.fit(FEATURES, x, quantile=0.99, margin=1.5)), "version-1 method, refitted"


def corpus_files(folder: Path) -> list[tuple[str, str, Path]]:
    """Every corpus image written as a PNG: ``(category, name, path)``."""
    out = []
    for category, name, image in ood_corpus.non_lus_corpus() + ood_corpus.ultrasound_like_corpus():
        path = folder / f"{category}__{name}.png"
        Image.fromarray(image).save(path)
        out.append((category, name, path))
    return out


def share(flags: list[bool] | np.ndarray) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def part_scores(predictor: Predictor, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each part's distance over its threshold (the image part's, the network part's; 0 without it)."""
    det = predictor.ood
    if det is None:
        return np.zeros(len(frames)), np.zeros(len(frames))
    image = det.scores(frames)  # without features: the image part alone
    if det.network is None:
        return image, np.zeros(len(frames))
    x = frames[:, None].astype(np.float32) / 255
    feats = np.concatenate([predictor.engine.run(x[i : i + 32]).features for i in range(0, len(x), 32)])
    return image, det.network.distance(feats) / det.network.threshold


def measure(
    model: Path, fold: int, data: Path, rows: list[dict[str, str]], split_rows: list[dict[str, str]], files: list
) -> dict[str, Any]:
    """Flag rates of the new and the old detector on the corpus and on the fold's held-out frames."""
    train_ids, test_ids = fold_patients(split_rows, fold)
    test_rows = [r for r in rows if r[GROUP] in test_ids]
    predictor = Predictor(model, engine="onnx")
    split_test = sum(r[GROUP] in test_ids for r in split_rows)
    if predictor.meta.get("calibration_frames") not in (None, split_test):
        log.warning("%s: fold %d has %d held-out frames, its temperature was fitted on %d: another split?",
                    model.name, fold, split_test, predictor.meta["calibration_frames"])  # fmt: skip
    old, old_source = old_detector(model, data, rows, train_ids)
    corpus: list[dict[str, Any]] = []
    for category, name, path in files:
        cleaned: list[np.ndarray] = []
        frame = predictor.predict(path, on_frame=lambda r, img, lab, c=cleaned: c.append(img)).frames[0]
        old_flag, old_score = old.flag(cleaned[0])
        image_part, network_part = part_scores(predictor, cleaned[0][None])
        corpus.append({"category": category, "name": name, "new": frame.ood, "new_score": frame.ood_score,
                       "image_part": float(image_part[0]), "network_part": float(network_part[0]),
                       "old": old_flag, "old_score": old_score})  # fmt: skip
    frames = cleaned_frames(data, test_rows, predictor.size)
    new_flags = np.concatenate([predictor.predict_frames(frames[i : i + 32]).ood for i in range(0, len(frames), 32)])
    parts = predictor.ood
    image_scores, network_scores = part_scores(predictor, frames)
    image_only, net_flags = image_scores > 1.0, network_scores > 1.0
    old_flags = old.flags(frames)[0]
    non_lus = [c for c in corpus if c["category"] != "ultrasound_like"]
    categories = sorted({c["category"] for c in corpus}, key=lambda c: (c == "ultrasound_like", c))
    return {
        "model": model.stem,
        "fold": fold,
        "train_patients": len(train_ids),
        "heldout_patients": len(test_ids),
        "heldout_frames": len(frames),
        "old_detector": old_source,
        "detector": {
            "image_threshold": parts.image.threshold if parts else None,
            "network_threshold": parts.network.threshold if parts and parts.network else None,
            "quantile": parts.image.quantile if parts else None,
            "network_margin": parts.network.margin if parts and parts.network else None,
            "fit_frames": parts.image.fit_frames if parts else None,
        },
        "non_lus": {
            "images": len(non_lus),
            "new": share([c["new"] for c in non_lus]),
            "old": share([c["old"] for c in non_lus]),
            "new_image_part": share([c["image_part"] > 1 for c in non_lus]),
            "new_network_part": share([c["network_part"] > 1 for c in non_lus]),
            "missed_new": [c["name"] for c in non_lus if not c["new"]],
        },
        "by_category": {
            cat: {
                "images": sum(c["category"] == cat for c in corpus),
                "new": share([c["new"] for c in corpus if c["category"] == cat]),
                "old": share([c["old"] for c in corpus if c["category"] == cat]),
            }
            for cat in categories
        },
        "heldout_real": {
            "new": share(new_flags),
            "new_image_part": share(image_only),
            "new_network_part": share(net_flags),
            "old": share(old_flags),
            "flagged_clips_new": sorted({r["clip_id"] for r, f in zip(test_rows, new_flags, strict=True) if f}),
        },
        "sklearn_photos": {
            c["name"]: {
                "new": c["new"],
                "old": c["old"],
                "new_score": round(c["new_score"], 3),
                "old_score": round(c["old_score"], 3),
            }
            for c in corpus
            if c["name"] in ("flower", "china")
        },
        "images": corpus,
    }


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table: per model, flagged shares new / old."""

    def pct(x: float) -> str:
        return "n/a" if x != x else f"{100 * x:.0f}%"

    cats = list(results[0]["by_category"])
    head = ["model (fold)", "non-LUS flagged", *[f"{c} ({results[0]['by_category'][c]['images']})" for c in cats],
            "held-out real frames flagged"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        for which in ("new", "old"):
            cells = [f"{r['model']} ({r['fold']}), {which}", f"{pct(r['non_lus'][which])} of {r['non_lus']['images']}",
                     *[pct(r["by_category"][c][which]) for c in cats],
                     f"{pct(r['heldout_real'][which])} of {r['heldout_frames']}"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/pocus128"), help="imported POCUS frames (128 px)")
    ap.add_argument("--split-data", type=Path, default=Path("/tmp/pocus128-split"), help="the experiment's import")
    ap.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "pocus", help="POCUS folder")
    ap.add_argument("--refit", action="store_true", help="refit the shipped files' detectors first")
    ap.add_argument("--models", nargs="+", default=list(SHIPPED), help="shipped model names (pleura.models.PRETRAINED)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "ood.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("pleura.data.cleaning", "pleura.data.splits"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not (args.data / "manifest.csv").is_file():
        raise SystemExit(f"{args.data}: no manifest.csv; make it with: pleura data import-pocus SRC --out {args.data} "
                         "--size 128")  # fmt: skip
    data, rows = args.data, read_manifest(args.data)
    split_rows = read_manifest(split_data(args.split_data, args.source))
    refits = {}
    if args.refit:
        for stem in args.models:
            weights = pretrained(stem)
            before = hashlib.sha256(weights.read_bytes()).hexdigest()
            train_ids, _ = fold_patients(split_rows, SHIPPED[stem])
            t0 = time.perf_counter()
            refit_ood(weights, data, train_ids, None, weights, group=GROUP)
            if hashlib.sha256(weights.read_bytes()).hexdigest() != before:
                raise SystemExit(f"{weights}: the weights changed while refitting; restore them from git")
            refits[stem] = round(time.perf_counter() - t0, 1)
    with tempfile.TemporaryDirectory(prefix="pleura-ood-") as tmp:
        files = corpus_files(Path(tmp))
        results = [measure(pretrained(s), SHIPPED[s], data, rows, split_rows, files) for s in args.models]
    out = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "data": {
            "frames_folder": str(data),
            "frames": len(rows),
            "patients": len({r[GROUP] for r in rows}),
            "split_folder": str(args.split_data),
            "split_import": IMPORT,
        },
        "targets": {"non_lus_flagged_min": 0.95, "heldout_real_flagged_max": 0.05, "non_lus_images_min": 40},
        "refit_seconds": refits,
        "models": results,
    }
    write_json(args.out, out)
    print(table(results))
    for r in results:
        ok = r["non_lus"]["new"] >= 0.95 and r["heldout_real"]["new"] <= 0.05 and r["non_lus"]["images"] >= 40
        nl, real = r["non_lus"], r["heldout_real"]
        print(f"{r['model']}: targets {'met' if ok else 'NOT met'}; missed {nl['missed_new'] or 'none'}; "
              f"non-LUS flagged by the image part {100 * nl['new_image_part']:.0f}%, by the network part "
              f"{100 * nl['new_network_part']:.0f}%; held-out frames flagged by the image part "
              f"{100 * real['new_image_part']:.1f}%, by the network part "
              f"{100 * real['new_network_part']:.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
