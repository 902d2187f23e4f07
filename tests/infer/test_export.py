"""ONNX export, the inference copy and the engines: faithful outputs, self-describing files, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pleura import __version__
from pleura.infer import OnnxEngine, TorchEngine, export_onnx, make_engine, prepare_for_inference, verify_onnx
from pleura.labels import DIAGNOSES, get_schema
from pleura.models import ClassifierConfig, ReverseTransferClassifier, UNet, UNetConfig, save_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64
TOL = 1e-4


def _trained_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding them is really tested."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _unet(**fields) -> UNet:
    torch.manual_seed(0)
    return _trained_like(UNet(UNetConfig(**{"width": 4, "depth": 2, "schema": "dense", **fields})))


def _classifier(tap: str = "logits+decoder", **unet_fields) -> ReverseTransferClassifier:
    torch.manual_seed(0)
    model = ReverseTransferClassifier(UNet(UNetConfig(width=4, depth=2, schema="dense", **unet_fields)), tap=tap)
    return _trained_like(model, seed=1)


def _frames(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 1, SIZE, SIZE)).astype(np.float32)


def _torch_outputs(model: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        if isinstance(model, ReverseTransferClassifier):
            logits, seg = model.forward_with_segmentation(torch.from_numpy(x))
            return [logits.numpy()] if seg is None else [logits.numpy(), seg.contiguous().numpy()]
        return [model(torch.from_numpy(x)).contiguous().numpy()]


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def classifier_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReverseTransferClassifier, Path]:
    model = _classifier()
    return model, export_onnx(model, tmp_path_factory.mktemp("cls") / "model.onnx", image_size=SIZE)


@pytest.fixture(scope="module")
def unet_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[UNet, Path]:
    model = _unet()
    return model, export_onnx(model, tmp_path_factory.mktemp("seg") / "unet.onnx", image_size=SIZE)


@pytest.mark.parametrize("batch", [1, 3])
def test_classifier_export_matches_torch(classifier_onnx, batch: int) -> None:
    model, path = classifier_onnx
    onnx.checker.check_model(onnx.load(str(path)))
    session = _session(path)
    assert [o.name for o in session.get_outputs()] == ["logits", "seg_logits"]
    x = _frames(batch, seed=batch)
    got = session.run(None, {"image": x})
    want = _torch_outputs(model, x)
    assert got[0].shape == (batch, len(DIAGNOSES)) and got[1].shape == (batch, 8, SIZE, SIZE)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=TOL)


@pytest.mark.parametrize("batch", [1, 3])
def test_unet_export_matches_torch(unet_onnx, batch: int) -> None:
    model, path = unet_onnx
    onnx.checker.check_model(onnx.load(str(path)))
    x = _frames(batch, seed=10 + batch)
    (got,) = _session(path).run(None, {"image": x})
    np.testing.assert_allclose(got, _torch_outputs(model, x)[0], rtol=0, atol=TOL)


def test_metadata_describes_the_model(classifier_onnx, unet_onnx) -> None:
    model, path = classifier_onnx
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["format"] == "pleura-onnx" and meta["pleura_version"] == __version__
    assert meta["architecture"] == "reverse_transfer"
    assert ClassifierConfig(**json.loads(meta["config"])) == model.config  # the config rebuilds the model
    assert json.loads(meta["class_names"]) == list(DIAGNOSES)
    assert json.loads(meta["seg_class_names"]) == list(get_schema("dense").names)
    assert meta["schema"] == "dense" and int(meta["image_size"]) == SIZE
    assert json.loads(meta["outputs"]) == ["logits", "seg_logits"]

    unet, unet_path = unet_onnx
    meta = {p.key: p.value for p in onnx.load(str(unet_path)).metadata_props}
    assert meta["architecture"] == "unet" and UNetConfig(**json.loads(meta["config"])) == unet.config
    assert json.loads(meta["outputs"]) == ["seg_logits"]


def test_export_is_atomic_and_leaves_the_model_alone(tmp_path: Path) -> None:
    model = _classifier().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "sub" / "model.onnx"
    export_onnx(model, out, image_size=SIZE)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no temporary file left behind
    assert model.training and model.head.training  # mode untouched
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and statistics untouched
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # not folded in place

    out.write_bytes(b"old")
    with pytest.raises(ValueError, match="multiple of 4"):
        export_onnx(model, out, image_size=SIZE + 2)
    assert out.read_bytes() == b"old" and sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]


def test_verify(tmp_path: Path) -> None:
    model = _classifier()
    path = export_onnx(model, tmp_path / "model.onnx", image_size=SIZE, verify=True)
    assert verify_onnx(model, path, batch=3) <= TOL
    other = _classifier()
    with torch.no_grad():
        other.head.fc.bias.add_(1.0)
    with pytest.raises(RuntimeError, match="differ on 'logits'"):
        verify_onnx(other, path)


def test_bottleneck_tap_exports_class_logits_only(tmp_path: Path) -> None:
    model = _classifier(tap="bottleneck")
    path = export_onnx(model, tmp_path / "model.onnx", image_size=SIZE, verify=True)
    engine = OnnxEngine(path)
    logits, seg = engine(_frames(2))
    assert logits.shape == (2, 3) and seg is None


@pytest.mark.parametrize(
    "kind, fields",
    [
        ("classifier", {"tap": "logits+decoder"}),
        ("classifier", {"tap": "logits"}),
        ("classifier", {"tap": "decoder", "upsample": "bilinear"}),
        ("classifier", {"tap": "logits+decoder", "norm": "group"}),
        ("unet", {"norm": "instance"}),
        ("unet", {"norm": "none", "width": 16, "depth": 3}),
    ],
)
def test_prepare_for_inference_keeps_the_outputs(kind: str, fields: dict) -> None:
    if kind == "classifier":
        tap = fields.pop("tap")
        model = _classifier(tap=tap, **fields)
    else:
        model = _unet(**fields)
    fast = prepare_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert not any(p.requires_grad for p in fast.parameters())
    x = _frames(2, seed=5)
    for got, want in zip(_torch_outputs(fast, x), _torch_outputs(model, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_engines_agree(classifier_onnx, unet_onnx) -> None:
    model, path = classifier_onnx
    x = _frames(3, seed=7)
    torch_engine, onnx_engine = make_engine(model, image_size=SIZE), make_engine(path)
    assert isinstance(torch_engine, TorchEngine) and isinstance(onnx_engine, OnnxEngine)
    for engine in (torch_engine, onnx_engine):
        assert engine.class_names == DIAGNOSES and engine.schema == "dense" and engine.image_size == SIZE
        assert engine.seg_class_names == get_schema("dense").names
    (a_logits, a_seg), (b_logits, b_seg) = torch_engine(x), onnx_engine(x)
    assert a_logits.dtype == np.float32 and a_seg.flags.c_contiguous
    np.testing.assert_allclose(a_logits, b_logits, rtol=0, atol=TOL)
    np.testing.assert_allclose(a_seg, b_seg, rtol=0, atol=TOL)

    unet, unet_path = unet_onnx
    (none_a, seg_a), (none_b, seg_b) = TorchEngine(unet, image_size=SIZE)(x), OnnxEngine(unet_path, threads=1)(x)
    assert none_a is None and none_b is None
    np.testing.assert_allclose(seg_a, seg_b, rtol=0, atol=TOL)


def test_frame_parallel_batches_equal_one_call(classifier_onnx) -> None:
    _, path = classifier_onnx
    x = _frames(5, seed=3)
    parallel, batched = OnnxEngine(path, threads=2, frame_parallel=True), OnnxEngine(path, threads=2)
    assert parallel._pool is not None and batched._pool is None  # by default only frames of 256 px and up
    for got, want in zip(parallel(x), batched(x), strict=True):
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    one = parallel(x[2:3])  # a single frame runs on the multi-threaded session
    np.testing.assert_allclose(one[0], batched(x)[0][2:3], rtol=0, atol=1e-5)


def test_make_engine_from_files(tmp_path: Path, classifier_onnx) -> None:
    model, onnx_path = classifier_onnx
    weights = save_model(model, tmp_path / "model.safetensors")
    x = _frames(1)
    from_checkpoint = make_engine(weights, engine="onnx", image_size=SIZE)
    assert isinstance(from_checkpoint, OnnxEngine)
    np.testing.assert_allclose(from_checkpoint(x)[0], make_engine(weights, image_size=SIZE)(x)[0], atol=TOL)
    with pytest.raises(ValueError, match="ONNX Runtime only"):
        make_engine(onnx_path, engine="torch")
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine(model, engine="tensorrt")
    with pytest.raises(ValueError, match=r"takes 64x64 frames"):
        OnnxEngine(onnx_path)(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        TorchEngine(model)(np.zeros((1, 3, SIZE, SIZE), np.float32))
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(ValueError, match="not a pleura ONNX export"):
        OnnxEngine(foreign)


def test_bench_infer_quick(tmp_path: Path) -> None:
    out = tmp_path / "infer.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_infer.py"), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] and result["matmul_gflops"] > 0
    cases = {r["case"] for r in result["rows"]}
    assert {"torch_plain", "torch", "onnx", "unet_torch"} <= cases
    assert all(r["fps_median"] > 0 and r["gflop_per_frame"] > 0 for r in result["rows"])
    assert {"onnx_over_torch", "torch_over_torch_plain"} <= set(result["ratios"][0])
    assert "| width | batch | case |" in proc.stdout
