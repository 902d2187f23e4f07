"""Inference throughput on CPU: the full model (segmentation + classification) in PyTorch and ONNX Runtime.

Targets (issue): frames per second at 256x256 on the 2-core machine, batch 1 and batch 8, for the full
model (``ReverseTransferClassifier.forward_with_segmentation``: class logits and segmentation logits):
the default model (``--default-width``, 4: ``pocus-dense-w4-128``) at least 60 frames/s at batch 1 and
no shipped model (``--shipped-widths``, 4 and 8) under 30; at least 2x MONAI's BasicUNet of the same widths
(``features=(w, 2w, 4w, 8w, 16w, w)``: four down-steps, as our depth 4) in PyTorch eager at the same batch;
and the default model's GFLOP/s at batch 8 at least 60% of the machine's float32 matrix-multiply GFLOP/s
(a 2048x2048 ``torch.matmul``, best of several runs, measured before and after each width).

Cases, per width and batch, all on random weights and frames (speed does not depend on them):

- ``torch_plain``: the classifier as trained, eval mode, ``torch.inference_mode`` (PyTorch eager);
- ``torch``: :class:`pleura.infer.TorchEngine` (BatchNorm folded, pre-split skip convolutions, all levels
  channels-last; still eager);
- ``onnx``: :class:`pleura.infer.OnnxEngine` on :func:`pleura.infer.export_onnx`'s graph (ONNX Runtime,
  ``ORT_ENABLE_ALL``): one frame on all threads, a batch frame-parallel (one frame per thread; the
  engine's default from 256 px);
- ``onnx_batched``: the same with ``frame_parallel=False`` (the batch in one call, every operator split
  across the threads; the engine's default below 256 px);
- ``unet_torch``: the segmentation U-Net alone in ``TorchEngine``, and ``monai``: BasicUNet, eager, eval:
  the like-for-like pair (segmentation only, both PyTorch). The MONAI target compares the full model in
  its faster engine (more work than BasicUNet does) with BasicUNet.

Every case is warmed up, then all cases of a (width, batch) run in alternating rounds (the order flips each
round), each call timed, so drift in machine speed hits them alike; the table gives the median and best
frames/s, and ratios are medians of per-round ratios. FLOPs are counted by ``torch.utils.flop_counter``
(2 per multiply-add of convolutions and matrix products); "frames/s at matmul peak" is the ceiling for
that many FLOPs. On a machine shared with other work, PyTorch's two OpenMP threads suffer most (a
descheduled thread stalls every operator); ONNX Runtime's pool much less, so compare within one run.

    python benchmarks/bench_infer.py                  # widths 4, 8 and 16 (about 2 minutes on 2 idle cores)
    python benchmarks/bench_infer.py --size 128 --widths 4 8 --out benchmarks/results/infer128.json
    python benchmarks/bench_infer.py --quick          # tiny sizes, one thread, a smoke run (to a temp file)
    python benchmarks/bench_infer.py --check          # exit 1 if a target is missed
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from common import machine  # noqa: E402

from pleura.atomic import write_json  # noqa: E402
from pleura.infer import OnnxEngine, TorchEngine, onnx_bytes  # noqa: E402
from pleura.models import ReverseTransferClassifier, UNet, UNetConfig  # noqa: E402

NUM_CLASSES = 8  # the dense schema
CASES = ("torch_plain", "torch", "onnx", "onnx_batched", "unet_torch", "monai")
FULL_CASES = ("torch_plain", "torch", "onnx", "onnx_batched")  # the full model: class + segmentation logits
TARGET_DEFAULT_FPS = 60.0
TARGET_SHIPPED_FPS = 30.0
TARGET_MONAI_RATIO = 2.0
TARGET_PEAK_FRACTION = 0.60


def matmul_gflops(n: int, repeats: int) -> float:
    """Best float32 ``n x n`` matrix-multiply GFLOP/s over ``repeats`` runs, at the current torch threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.matmul(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_frame(fn: Callable[[torch.Tensor], object], size: int) -> float:
    """FLOPs of one call on one frame, as ``torch.utils.flop_counter`` counts them (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn(torch.zeros(1, 1, size, size))
    return float(counter.get_total_flops())


def build_models(width: int, depth: int, head_width: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    unet = UNet(UNetConfig(width=width, depth=depth, num_classes=NUM_CLASSES, schema="dense"))
    classifier = ReverseTransferClassifier(unet, head_width=head_width).eval()
    models: dict[str, nn.Module] = {"classifier": classifier, "unet": classifier.unet}
    try:
        from monai.networks.nets import BasicUNet  # optional dependency (pip install pleura[bench])
    except ImportError:
        print("monai is not installed: the MONAI comparison is skipped (pip install monai)", file=sys.stderr)
        return models
    if depth == 4:  # BasicUNet has four down-steps
        features = (*(width * 2**i for i in range(5)), width)  # (8, 16, 32, 64, 128, 8) at width 8
        models["monai"] = BasicUNet(spatial_dims=2, in_channels=1, out_channels=NUM_CLASSES, features=features).eval()
    return models


def make_cases(models: dict[str, nn.Module], size: int, threads: int) -> dict[str, Callable[[np.ndarray], object]]:
    """One callable per case, each taking a float32 ``(B, 1, size, size)`` batch."""
    classifier = models["classifier"]

    def eager(model: nn.Module, method: str) -> Callable[[np.ndarray], object]:
        fn = getattr(model, method)

        def run(x: np.ndarray) -> object:
            with torch.inference_mode():
                return fn(torch.from_numpy(x))

        return run

    cases = {
        "torch_plain": eager(classifier, "forward_with_segmentation"),
        "torch": TorchEngine(classifier, image_size=size),
        "onnx": OnnxEngine(onnx_bytes(classifier, image_size=size), threads=threads, frame_parallel=True),
        "onnx_batched": OnnxEngine(onnx_bytes(classifier, image_size=size), threads=threads, frame_parallel=False),
        "unet_torch": TorchEngine(models["unet"], image_size=size),
    }
    if "monai" in models:
        cases["monai"] = eager(models["monai"], "forward")
    return cases


def measure(cases: dict[str, Callable], x: np.ndarray, warmup: int, rounds: int, calls: int) -> dict[str, list]:
    """Per-round lists of per-call seconds for each case, in alternating rounds after warm-up."""
    for fn in cases.values():
        for _ in range(warmup):
            fn(x)
    names = list(cases)
    times: dict[str, list[list[float]]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, row = cases[name], []
            for _ in range(calls):
                t = time.perf_counter()
                fn(x)
                row.append(time.perf_counter() - t)
            times[name].append(row)
    return times


def ratio(times: dict[str, list], a: str, b: str) -> float:
    """Median over rounds of (a's frames/s) / (b's frames/s), each round's speed its median call."""
    return statistics.median(
        statistics.median(tb) / statistics.median(ta) for ta, tb in zip(times[a], times[b], strict=True)
    )


def run(args: argparse.Namespace) -> dict:
    rows, ratios, peaks = [], [], [matmul_gflops(args.matmul_n, args.matmul_repeats)]
    for width in args.widths:
        models = build_models(width, args.depth, args.head_width)
        flops = {
            "classifier": flops_per_frame(models["classifier"].forward_with_segmentation, args.size),
            "unet": flops_per_frame(models["unet"], args.size),
        }
        if "monai" in models:
            flops["monai"] = flops_per_frame(models["monai"], args.size)
        params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
        cases = make_cases(models, args.size, args.threads)
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, 1, args.size, args.size)).astype(np.float32)
            calls = max(1, args.frames // batch)
            times = measure(cases, x, args.warmup, args.rounds, calls)
            for name, per_round in times.items():
                every = [t for row in per_round for t in row]
                model = {"unet_torch": "unet", "monai": "monai"}.get(name, "classifier")
                fps_median, fps_best = batch / statistics.median(every), batch / min(every)
                rows.append(
                    {
                        "width": width,
                        "batch": batch,
                        "case": name,
                        "model": model,
                        "params": params[model],
                        "gflop_per_frame": round(flops[model] / 1e9, 4),
                        "fps_median": round(fps_median, 2),
                        "fps_best": round(fps_best, 2),
                        "gflops_median": round(fps_median * flops[model] / 1e9, 2),
                        "gflops_best": round(fps_best * flops[model] / 1e9, 2),
                    }
                )
            pair = {"width": width, "batch": batch}
            pair["onnx_over_torch_plain"] = round(ratio(times, "onnx", "torch_plain"), 3)
            pair["torch_over_torch_plain"] = round(ratio(times, "torch", "torch_plain"), 3)
            pair["onnx_over_torch"] = round(ratio(times, "onnx", "torch"), 3)
            pair["onnx_over_onnx_batched"] = round(ratio(times, "onnx", "onnx_batched"), 3)
            if "monai" in times:
                pair["unet_torch_over_monai"] = round(ratio(times, "unet_torch", "monai"), 3)
                pair["full_torch_over_monai"] = round(ratio(times, "torch", "monai"), 3)
                pair["full_onnx_over_monai"] = round(ratio(times, "onnx", "monai"), 3)
            ratios.append(pair)
            print(
                f"width {width}, batch {batch}: "
                + ", ".join(f"{r['case']} {r['fps_median']:.1f}" for r in rows[-len(times) :]),
                flush=True,
            )
        peaks.append(matmul_gflops(args.matmul_n, args.matmul_repeats))  # between widths: the best one counts
    peak = max(peaks)
    for row in rows:
        row["peak_fraction_median"] = round(row["gflops_median"] / peak, 3)
        row["peak_fraction_best"] = round(row["gflops_best"] / peak, 3)
        row["fps_at_matmul_peak"] = round(peak / row["gflop_per_frame"], 1)  # the ceiling for this many FLOPs
    return {
        "rows": rows,
        "ratios": ratios,
        "matmul_gflops": round(peak, 1),
        "matmul_gflops_runs": [round(p, 1) for p in peaks],
    }


def targets(result: dict, args: argparse.Namespace) -> dict[str, bool | None]:
    """The issue's targets on the median figures (``None`` where this run did not measure it).

    The full model's speed is its faster engine's (``torch`` or ``onnx``). Against MONAI, the full model
    (classification and segmentation) in its faster engine is compared with BasicUNet (segmentation only) in
    PyTorch eager; ``ratios`` also gives the like-for-like U-Net-only PyTorch ratio.
    """
    rows, ratios = result["rows"], result["ratios"]

    def best_full(width: int, batch: int, key: str = "fps_median") -> float | None:
        fps = [r[key] for r in rows if (r["width"], r["batch"]) == (width, batch) and r["case"] in ("torch", "onnx")]
        return max(fps) if fps else None

    default_fps = best_full(args.default_width, 1)
    shipped = [f for w in args.shipped_widths for b in args.batches if (f := best_full(w, b)) is not None]
    monai = [max(p["full_torch_over_monai"], p["full_onnx_over_monai"]) for p in ratios if "full_onnx_over_monai" in p]
    fraction = best_full(args.default_width, 8, "peak_fraction_median")
    efficient = [w for w in args.widths if (f := best_full(w, 8, "peak_fraction_median")) and f >= TARGET_PEAK_FRACTION]
    return {
        f"default_width_{args.default_width}_at_least_{TARGET_DEFAULT_FPS:g}_fps_batch_1": (
            None if default_fps is None else default_fps >= TARGET_DEFAULT_FPS
        ),
        f"shipped_widths_{'_'.join(map(str, args.shipped_widths))}_at_least_{TARGET_SHIPPED_FPS:g}_fps": (
            None if not shipped else min(shipped) >= TARGET_SHIPPED_FPS
        ),
        f"full_model_at_least_{TARGET_MONAI_RATIO:g}x_monai": None if not monai else min(monai) >= TARGET_MONAI_RATIO,
        f"default_batch_8_at_least_{TARGET_PEAK_FRACTION:.0%}_of_matmul_peak": (
            None if fraction is None else fraction >= TARGET_PEAK_FRACTION
        ),
        f"widths_at_least_{TARGET_PEAK_FRACTION:.0%}_of_matmul_peak_batch_8": efficient,  # informative, not checked
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64x64, width 4, 1 thread, short rounds (a smoke run)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--head-width", type=int, default=32, help="classifier head width (ClassifierConfig default)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--default-width", type=int, default=4, help="the width of the default inference model")
    ap.add_argument("--shipped-widths", type=int, nargs="+", default=[4, 8], help="widths of the shipped models")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per case")
    ap.add_argument("--rounds", type=int, default=6, help="timed rounds per case, alternating cases")
    ap.add_argument("--frames", type=int, default=8, help="frames per case per round (calls = frames / batch)")
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: all cores)")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--matmul-repeats", type=int, default=10)
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    ap.add_argument("--out", type=Path, default=None, help="default: results/infer.json (a temp file if --quick)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.widths, args.batches, args.default_width, args.shipped_widths = 64, [4], [1, 2], 4, [4]
        args.warmup, args.rounds, args.frames, args.matmul_n, args.matmul_repeats = 1, 2, 2, 512, 3
        args.threads = args.threads or 1  # a smoke run: one thread is not slowed by a busy machine's other work
    args.threads = args.threads or os.cpu_count() or 1
    args.shipped_widths = args.shipped_widths or [args.default_width]
    if args.out is None:  # a smoke run must not overwrite the recorded results
        quick_out = Path(tempfile.gettempdir()) / "pleura_infer_quick.json"
        args.out = quick_out if args.quick else Path(__file__).with_name("results") / "infer.json"
    torch.set_num_threads(args.threads)

    import onnxruntime

    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    measured = run(args)
    result = {
        "machine": machine(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "setup": {
            "size": args.size,
            "widths": args.widths,
            "depth": args.depth,
            "head_width": args.head_width,
            "tap": "logits+decoder",
            "seg_classes": NUM_CLASSES,
            "batches": args.batches,
            "default_width": args.default_width,
            "shipped_widths": args.shipped_widths,
            "warmup_calls": args.warmup,
            "rounds": args.rounds,
            "frames_per_round": args.frames,
            "matmul": f"float32 {args.matmul_n}x{args.matmul_n}, best of {args.matmul_repeats}",
            "monai": "BasicUNet(spatial_dims=2, in_channels=1, out_channels=8, features=(w, 2w, 4w, 8w, 16w, w))",
        },
        **measured,
        "targets": targets(measured, args),
        "seconds": round(time.perf_counter() - t0, 1),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)

    print(
        f"\nInference, {args.size}x{args.size}, depth {args.depth}, head width {args.head_width}, {args.threads} "
        f"threads ({result['machine']}, torch {result['torch']}, onnxruntime {result['onnxruntime']}); "
        f"matmul {result['matmul_gflops']} GFLOP/s"
    )
    print(
        "\n| width | batch | case | GFLOP/frame | frames/s median | frames/s best | GFLOP/s median | % of matmul "
        "| frames/s at matmul peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['width']} | {r['batch']} | {r['case']} | {r['gflop_per_frame']:.2f} | {r['fps_median']:.1f} "
            f"| {r['fps_best']:.1f} | {r['gflops_median']:.1f} | {r['peak_fraction_median']:.0%} "
            f"| {r['fps_at_matmul_peak']:.0f} |"
        )
    print("\nratios (median of per-round ratios):")
    for p in result["ratios"]:
        print("  " + ", ".join(f"{k} {v}" for k, v in p.items()))
    print(f"\ntargets: {result['targets']}; wrote {args.out} in {result['seconds']} s")
    if args.check and any(v is False for v in result["targets"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
