"""Load test of ``pleura serve`` on localhost: 20 concurrent uploads of small clips.

Starts ``pleura serve`` (the command, its own process, the shipped default model, default worker pool and queue)
on a free port, makes 20 small simulated clips (different scenes, 128 px, ``--frames`` frames at 10 frames/s),
and sends them all at once from 20 threads, twice: a first burst that takes what it gets (200 or 503), then a
burst whose clients wait ``Retry-After`` (times 1-1.5 at random) and retry, at most 10 tries each. Every 200 is
checked against the same file predicted in this process with :class:`pleura.Predictor` (diagnosis and
probabilities within 1e-6); the server's memory (RSS, from /proc) is sampled during the bursts; at the end the
server must still answer.

    python benchmarks/bench_serve.py            # about a minute on a 2-core CPU
    python benchmarks/bench_serve.py --workers 2 --queue 8
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from common import machine, save

from pleura.data.synthetic import write_clip
from pleura.infer.predictor import Predictor
from pleura.models import pretrained
from pleura.simulate.writer import simulate_clip


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, path: Path, timeout: float = 300) -> tuple[int, dict, dict]:
    """POST ``path`` as the multipart field ``file``; (status, JSON body, headers)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(url + "api/predict", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), {k.lower(): v for k, v in e.headers.items()}


def burst(url: str, clips: list[Path], retry: bool) -> list[dict]:
    """Send every clip at once from its own thread; with ``retry``, a 503 waits ``Retry-After`` and tries again."""
    out: list[dict] = [{} for _ in clips]
    gate = threading.Barrier(len(clips))

    def one(i: int) -> None:
        gate.wait()
        start, tries = time.perf_counter(), 0
        while True:
            tries += 1
            status, body, headers = post(url, clips[i])
            if status != 503 or not retry or tries >= 10:
                break
            time.sleep(float(headers.get("retry-after", "1")) * random.uniform(1.0, 1.5))  # jitter: no stampede
        out[i] = {"status": status, "body": body, "seconds": time.perf_counter() - start, "tries": tries,
                  "retry_after": headers.get("retry-after")}  # fmt: skip

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> None:
    """Run the load test and print its table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--frames", type=int, default=10, help="frames per clip (at 10 frames/s)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--queue", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    clips = []
    for i in range(args.clients):
        diagnosis = ("covid", "pneumonia", "normal")[i % 3]
        _, frames = simulate_clip(100 + i, 0, diagnosis, ("curvilinear", "linear")[i % 2], 128, args.frames)
        clips.append(write_clip(tmp / f"clip{i:02d}.mp4", np.stack([f.image for f in frames]), fps=10))
    size_kb = np.mean([c.stat().st_size for c in clips]) / 1024
    predictor = Predictor(pretrained())
    reference = {c.name: predictor.predict(c) for c in clips}

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "-m", "pleura", "serve", "--port", str(port), "--workers", str(args.workers),
           "--queue", str(args.queue)]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "api/models", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log = server.stderr.read() if server.stderr else ""
                    raise SystemExit(f"pleura serve did not start: {log}") from None
                time.sleep(0.3)
        post(url, clips[0])  # warm-up: the first prediction loads the ONNX session's kernels
        base = rss_mb(server.pid)
        samples: list[float] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                samples.append(rss_mb(server.pid))
                time.sleep(0.05)

        rows, result = [], {"machine": machine(), "clients": args.clients, "frames": args.frames,
                            "clip_kb": round(float(size_kb), 1), "workers": args.workers, "queue": args.queue,
                            "rss_base_mb": round(base, 1), "bursts": {}}  # fmt: skip
        for label, retry in (("burst", False), ("burst, retrying on 503", True)):
            samples.clear()
            sampling.clear()
            watcher = threading.Thread(target=sample)
            watcher.start()
            start = time.perf_counter()
            answers = burst(url, clips, retry)
            wall = time.perf_counter() - start
            sampling.set()
            watcher.join()
            ok = [a for a in answers if a["status"] == 200]
            wrong = 0
            for a in ok:
                f = a["body"]["files"][0]
                ref = reference[f["path"]]
                same = f["diagnosis"] == ref.diagnosis and all(
                    abs(f["probabilities"][k] - v) <= 1e-6 for k, v in ref.probabilities.items()
                )
                wrong += not same
            busy = [a for a in answers if a["status"] == 503]
            other = len(answers) - len(ok) - len(busy)
            lat = np.array([a["seconds"] for a in ok]) if ok else np.array([np.nan])
            peak = max(samples) if samples else float("nan")
            stats = {"ok": len(ok), "busy_503": len(busy), "other": other, "wrong": wrong,
                     "retry_after_all_set": all(a["retry_after"] for a in busy), "wall_s": round(wall, 2),
                     "p50_s": round(float(np.median(lat)), 2), "p95_s": round(float(np.percentile(lat, 95)), 2),
                     "tries_max": max(a["tries"] for a in answers), "rss_peak_mb": round(peak, 1)}  # fmt: skip
            result["bursts"][label] = stats
            rows.append([label, args.clients, len(ok), len(busy), other, wrong, f"{wall:.1f}",
                         f"{stats['p50_s']:.2f}", f"{stats['p95_s']:.2f}", stats["tries_max"],
                         f"{base:.0f} / {peak:.0f}"])  # fmt: skip
        alive, _, _ = post(url, clips[-1])
        result["alive_after"] = alive == 200
        result["rss_after_mb"] = round(rss_mb(server.pid), 1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.clients} concurrent uploads of {size_kb:.0f} kB clips ({args.frames} frames, 128 px) to "
          f"pleura serve --workers {args.workers} --queue {args.queue} on {machine()}")  # fmt: skip
    header = ["round", "requests", "200", "503", "other", "wrong", "wall s", "p50 s", "p95 s", "max tries",
              "RSS MB base / peak"]  # fmt: skip
    save(args.out, result, header, rows)
    print(f"\nserver alive after: {result['alive_after']} (one more upload answered 200); "
          f"RSS after {result['rss_after_mb']:.0f} MB; wrote {args.out}")  # fmt: skip
    bad = any(b["other"] or b["wrong"] for b in result["bursts"].values()) or not result["alive_after"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
