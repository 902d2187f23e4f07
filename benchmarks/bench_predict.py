"""End-to-end prediction of a 60-second clip: decode, clean, infer, write, against real time.

Target (issue 6): a 60-second clip at 30 frames/s (1,800 frames) predicted end to end faster than real
time on the 2-core machine. The clip is made here: simulated frames (256 px, lung sliding) placed on a
640x480 scanner-like screen with burnt-in text, encoded as H.264 MP4. The model is the default shipped
predictor file (``pleura.models.pretrained()``, ``pocus-foundation-w16-128``: width 16, 128 px, trained on POCUS),
another one with ``--model``, or with ``--random`` a random-weight model of ``--width`` and ``--size`` (its noisy
segmentation makes the biomarkers slower than a trained model's). Every frame is decoded; frames are
predicted at ``predict``'s default 10 per second and, in a second run, every frame; each run writes the
annotated MP4, the PNG with the activation map, and the JSON/CSV tables.

    python benchmarks/bench_predict.py            # 60 s clip (about 1-2 minutes here)
    python benchmarks/bench_predict.py --quick    # 4 s clip, a smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from common import machine, save

from pleura.models import pretrained

SHIPPED = pretrained()  # the default predictor


def make_clip(path: Path, seconds: float, fps: int = 30) -> int:
    """Write a scanner-like MP4 of simulated frames; returns the number of frames."""
    from pleura.simulate.writer import simulate_clip

    n = int(seconds * fps)
    _, frames = simulate_clip(0, 0, "covid", "curvilinear", 256, min(n, 60))
    loop = [f.image for f in frames]
    with av.open(str(path), "w") as box:
        stream = box.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for i in range(n):
            screen = np.zeros((480, 640), np.uint8)
            k = i % (2 * len(loop) - 2) if len(loop) > 1 else 0  # play forwards and back: smooth motion
            screen[80:336, 192:448] = loop[k if k < len(loop) else 2 * len(loop) - 2 - k]
            screen[20:32, 20:200] = 255  # burnt-in text
            rgb = np.repeat(screen[..., None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return n


def make_model(path: Path, width: int, size: int) -> Path:
    """The default inference model with random weights, saved with temperature and OOD statistics."""
    from pleura.models import ReverseTransferClassifier, UNet, UNetConfig, save_model
    from pleura.postprocess.ood import OODDetector
    from pleura.simulate.writer import simulate_clip

    torch_model = ReverseTransferClassifier(UNet(UNetConfig(width=width, schema="dense")), num_classes=3)
    frames = []
    for i in range(12):
        _, clip = simulate_clip(1, i, ("covid", "pneumonia", "normal")[i % 3], ("linear", "curvilinear")[i % 2], size)
        frames.append(next(iter(clip)).image)
    ood = OODDetector.fit(frames).to_dict()
    meta = {"kind": "pleura-predictor", "image_size": [size, size], "temperature": 1.0, "ood": ood}
    return save_model(torch_model.eval(), path, metadata=meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 4-second clip")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--model", type=Path, default=SHIPPED, help="predictor file (default: the shipped model)")
    ap.add_argument("--random", action="store_true", help="a random-weight model of --width and --size instead")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--engine", default="onnx")
    ap.add_argument("--rates", type=float, nargs="+", default=[10.0, 0.0], help="predicted frames/s; 0 = every frame")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default results/predict.json)")
    args = ap.parse_args()
    seconds = 4.0 if args.quick else args.seconds
    if args.out is None:  # a smoke run must not overwrite the committed figures
        quick = Path("/tmp/pleura-predict-quick.json")
        args.out = quick if args.quick else Path(__file__).with_name("results") / "predict.json"
    from pleura.infer.predictor import Predictor
    from pleura.infer.report import PredictionWriter

    work = Path(tempfile.mkdtemp(prefix="pleura-bench-"))
    n = make_clip(work / "clip.mp4", seconds)
    if args.random or not args.model.exists():
        model = make_model(work / "model.safetensors", args.width, args.size)
        model_name = f"random weights, width {args.width}, depth 4, {args.size} px"
    else:
        model = args.model
        model_name = f"{args.model.name}"
    rows = []
    for rate in args.rates:
        predictor = Predictor(model, engine=args.engine, rate=rate or None)
        writer = PredictionWriter(work / f"out-{rate:g}", predictor, video=True)
        t = time.perf_counter()
        result = writer.predict(work / "clip.mp4")
        writer.close()
        wall = time.perf_counter() - t
        rows.append({
            "rate": "every frame" if not rate else f"{rate:g} frames/s",
            "frames_predicted": len(result.frames),
            "seconds": round(wall, 1),
            "frames_predicted_per_s": round(len(result.frames) / wall, 1),
            "clip_frames_per_s": round(n / wall, 1),
            "real_time_factor": round(seconds / wall, 2),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    row = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "clip": f"{seconds:g} s at 30 fps, 640x480 H.264, {n} frames",
        "model": f"{model_name}, engine {args.engine}",
        "writes": "annotated MP4, PNG with activation map, predictions.json, clips.csv, frames.csv",
        "runs": rows,
    }
    header = ("predicted", "frames predicted", "seconds", "clip frames/s (decoded)", "real-time factor")
    keys = ("rate", "frames_predicted", "seconds", "clip_frames_per_s", "real_time_factor")
    save(args.out, row, header, [[r[k] for k in keys] for r in rows])


if __name__ == "__main__":
    main()
