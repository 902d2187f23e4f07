"""Peak memory of ``pleura predict`` on single hostile or large inputs: bombs are refused, big images reduced.

Target (issue 12): the peak memory of ``predict`` on any single input stays under 1 GB. Before the readers
were hardened, a 3 MB 13000x13000 RGBA PNG took 6.8 GB and a 10000x10000 JPEG 3.3 GB. The inputs are made
here, in a temporary folder:

* a 13000x13000 RGBA PNG bomb (rows of a repeated pattern, a few MB): refused from its header;
* the largest PNG the readers accept, 6320x6320 RGBA (just under ``MAX_PIXELS``): decoded, then reduced;
* a 10000x10000 RGB JPEG: decoded at 1/4 scale (Pillow's ``draft``);
* a normal 640x480 H.264 clip of simulated frames (5 s at 30 frames/s);
* an 800x600 ultrasound DICOM of 30 frames, and a DICOM bomb (a header claiming 60000x60000, no pixels).

Each input is predicted by ``python -m pleura predict FILE --out NEW_FOLDER --no-video`` in a process of its
own; its peak resident set size is the ``ru_maxrss`` that ``os.wait4`` reports for that child (so one
input's peak is never another's, as ``getrusage(RUSAGE_CHILDREN)`` over several children would be). The
model is a random-weight one shaped like the shipped predictor (width 4, 128 px, no OOD statistics), or
``--model``.

    python benchmarks/bench_memory.py            # writes results/memory.json and prints a table
    python benchmarks/bench_memory.py --check    # also exit 1 if any peak is 1024 MB or more
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from common import machine, save
from PIL import Image

from pleura.data.synthetic import write_dicom

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 1024  # issue 12: the peak of predict on any single input


def write_png(path: Path, width: int, height: int) -> Path:
    """An RGBA PNG of ``height`` identical rows of a gradient, compressed row by row (never held in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + np.repeat(np.arange(width) % 251, 4).astype(np.uint8).tobytes()  # filter 0, then RGBA
    z = zlib.compressobj(6)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)))
        for start in range(0, height, 256):
            data = z.compress(row * min(256, height - start))
            if data:
                fh.write(chunk(b"IDAT", data))
        fh.write(chunk(b"IDAT", z.flush()) + chunk(b"IEND", b""))
    return path


def write_jpeg(path: Path, side: int) -> Path:
    """A ``side`` x ``side`` RGB JPEG of crossed gradients, made within Pillow (no numpy copy)."""
    ramp = Image.linear_gradient("L").resize((side, side))
    Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_90), ramp)).save(path, quality=85)
    return path


def make_inputs(work: Path) -> list[tuple[str, Path]]:
    """(description, path) of every input, written into ``work``."""
    from bench_predict import make_clip

    rng = np.random.default_rng(0)
    speckle = rng.gamma(2.0, 40.0, (30, 600, 800)).clip(0, 255)
    speckle[:, :, :100] = speckle[:, :, -100:] = 0  # black borders around the scan
    make_clip(work / "clip.mp4", 5.0)
    return [
        ("13000x13000 RGBA PNG bomb", write_png(work / "bomb.png", 13000, 13000)),
        ("6320x6320 RGBA PNG (largest accepted)", write_png(work / "cap.png", 6320, 6320)),
        ("10000x10000 RGB JPEG", write_jpeg(work / "big.jpg", 10000)),
        ("640x480 H.264 clip, 5 s at 30 fps", work / "clip.mp4"),
        ("800x600 DICOM, 30 frames", write_dicom(work / "us.dcm", speckle)),
        ("DICOM bomb header (60000x60000)", write_dicom(work / "bomb.dcm", np.zeros((1, 4, 4)), Rows=60000,
                                                        Columns=60000)),
    ]  # fmt: skip


def predict_peak(path: Path, model: Path, out: Path) -> tuple[int, str, float, float]:
    """Run ``predict`` on ``path`` in a child process: exit code, first error line, peak RSS (MB), seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "pleura", "predict", str(path), "--model", str(model), "--out", str(out), "--no-video"]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, in KB on Linux
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t
        log.seek(0)
        lines = [line.strip() for line in log]
    error = next((line for line in lines if line.startswith(("failed ", "error:", "Traceback"))), "")
    return proc.returncode, error.replace(str(path), path.name), usage.ru_maxrss / 1024, seconds


def make_model(path: Path, width: int = 4, size: int = 128) -> Path:
    """A random-weight predictor shaped like the shipped one, without OOD statistics (which need training frames
    and weigh a few KB: the memory measured is the network's, the readers' and the cleaning's)."""
    from pleura.models import ReverseTransferClassifier, UNet, UNetConfig, save_model

    model = ReverseTransferClassifier(UNet(UNetConfig(width=width, schema="dense")), num_classes=3)
    meta = {"kind": "pleura-predictor", "image_size": [size, size], "temperature": 1.0}
    return save_model(model.eval(), path, metadata=meta)


def make_all(work: Path, model: Path | None) -> None:
    """Write the inputs (and a model unless given) into ``work``; print them as JSON for the parent."""
    if model is None:
        model = make_model(work / "model.safetensors")
    print(json.dumps({"model": str(model), "inputs": [(what, str(path)) for what, path in make_inputs(work)]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="predictor file (default: a random-weight one, made here)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "memory.json")
    ap.add_argument("--check", action="store_true", help=f"exit 1 if any peak is {LIMIT_MB} MB or more")
    ap.add_argument("--make-in", type=Path, help=argparse.SUPPRESS)  # the child that writes the inputs
    args = ap.parse_args()
    if args.make_in:
        return make_all(args.make_in, args.model)
    with tempfile.TemporaryDirectory(prefix="pleura-memory-") as tmp:
        work = Path(tmp)
        # The inputs are made in a child: a child forked from a big parent would report the parent's peak as its own.
        made = [sys.executable, __file__, "--make-in", str(work)] + (["--model", str(args.model)] if args.model else [])
        made = json.loads(subprocess.run(made, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()[-1])
        rows = []
        for i, (what, name) in enumerate(made["inputs"]):
            path = Path(name)
            code, error, peak, seconds = predict_peak(path, Path(made["model"]), work / f"out{i}")
            rows.append({
                "input": what, "file": path.name, "size_mb": round(path.stat().st_size / 2**20, 2),
                "exit_code": code, "error": error, "peak_rss_mb": round(peak), "seconds": round(seconds, 1),
            })  # fmt: skip
            print(f"{what}: exit {code}, peak {peak:.0f} MB, {seconds:.1f} s {error}", flush=True)
    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "command": "pleura predict FILE --out NEW --no-video, one process per input",
        "limit_mb": LIMIT_MB,
        "rows": rows,
    }
    header = ("input", "file MB", "exit", "first error line", "peak RSS MB", "s")
    save(args.out, result, header, [(r["input"], r["size_mb"], r["exit_code"], r["error"] or "-", r["peak_rss_mb"],
                                     r["seconds"]) for r in rows])  # fmt: skip
    over = [r["input"] for r in rows if r["peak_rss_mb"] >= LIMIT_MB]
    if args.check and over:
        sys.exit(f"bench_memory: peak memory of {LIMIT_MB} MB or more on: {', '.join(over)}")


if __name__ == "__main__":
    main()
