"""Out-of-distribution check of shipped models on the non-LUS corpus and on a real clip from another site.

``bench_ood.py`` measures the detectors against held-out POCUS patients of the fold a model never saw, so it needs
a fold; the default model (``pocus-foundation-w16-128``) was trained on every POCUS patient and has none. This
check needs no fold: the 53 non-LUS images and 6 ultrasound-like frames of ``tests/postprocess/ood_corpus.py``,
and every frame of a real lung clip from outside POCUS (by default the cvat-lus clip: a linear L12-4 probe,
1280x720 with the scanner's overlays, another site), each through ``pleura.Predictor`` (ONNX Runtime) as a user's
file would go. Each part's score is its distance over its threshold (above 1: flagged).

    python benchmarks/bench_ood_external.py                        # the three shipped classifiers, cvat-lus
    python benchmarks/bench_ood_external.py --models pocus-foundation-w16-128 --clip my-scanner-clip.mp4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from bench_ood import corpus_files, part_scores, share
from common import machine, save

from pleura.infer.predictor import Predictor
from pleura.models import pretrained

ROOT = Path(__file__).resolve().parents[1]
CVAT_CLIP = ROOT.parent / "shared" / "data" / "cvat-lus" / "task_195" / "data" / "image_93029618565613.mp4"
SHIPPED = ("pocus-foundation-w16-128", "pocus-dense-w4-128", "pocus-dense-w8-128")


def _cleaned(predictor: Predictor, path: Path) -> tuple[Any, np.ndarray]:
    """The file's result and its frames as the predictor cleaned them."""
    frames: list[np.ndarray] = []
    result = predictor.predict(path, on_frame=lambda r, img, lab: frames.append(img))
    return result, np.stack(frames)


def check(name: str, files: list[tuple[str, str, Path]], clip: Path) -> dict[str, Any]:
    """One model: flagged shares on the corpus, and on the clip's frames with each part's scores."""
    predictor = Predictor(pretrained(name), engine="onnx")
    corpus = []
    for category, image_name, path in files:
        result, frames = _cleaned(predictor, path)
        image, network = part_scores(predictor, frames[:1])
        corpus.append({"category": category, "name": image_name, "flagged": result.frames[0].ood,
                       "image_part": float(image[0]), "network_part": float(network[0])})  # fmt: skip
    result, frames = _cleaned(predictor, clip)
    image, network = part_scores(predictor, frames)
    non_lus = [c for c in corpus if c["category"] != "ultrasound_like"]
    photos = [c["image_part"] for c in corpus if c["category"] == "photo"]
    return {
        "model": name,
        "non_lus_flagged": share([c["flagged"] for c in non_lus]),
        "non_lus_images": len(non_lus),
        "ultrasound_like_flagged": share([c["flagged"] for c in corpus if c["category"] == "ultrasound_like"]),
        "photo_image_part": [float(np.min(photos)), float(np.max(photos))],
        "clip": str(clip),
        "clip_frames": len(frames),
        "clip_flagged": share([f.ood for f in result.frames]),
        "clip_image_part": [float(image.min()), float(np.median(image)), float(image.max())],
        "clip_network_part": [float(network.min()), float(np.median(network)), float(network.max())],
        "clip_diagnosis": result.diagnosis,
        "images": corpus,
    }


def main() -> None:
    """Check the models; print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(SHIPPED), help="shipped model names")
    ap.add_argument("--clip", type=Path, default=CVAT_CLIP, help="a real lung clip from outside the training data")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "ood_external.json")
    args = ap.parse_args()
    if not args.clip.is_file():
        sys.exit(f"{args.clip}: no such clip; pass --clip FILE")
    with tempfile.TemporaryDirectory(prefix="pleura-ood-") as tmp:
        files = corpus_files(Path(tmp))
        results = [check(name, files, args.clip) for name in args.models]
    spread = "{:.2f} / {:.2f} / {:.2f}".format
    rows = [
        [r["model"], f"{100 * r['non_lus_flagged']:.0f}% of {r['non_lus_images']}",
         f"{r['photo_image_part'][0]:.2f}-{r['photo_image_part'][1]:.2f}",
         f"{100 * r['clip_flagged']:.0f}% of {r['clip_frames']}", spread(*r["clip_image_part"]),
         spread(*r["clip_network_part"]), r["clip_diagnosis"] or "withheld"]
        for r in results
    ]  # fmt: skip
    header = ["model", "non-LUS flagged", "photos: image part", "clip frames flagged", "clip: image part min / median "
              "/ max", "clip: network part min / median / max", "clip diagnosis"]  # fmt: skip
    save(args.out, {"machine": machine(), "models": results}, header, rows)


if __name__ == "__main__":
    main()
