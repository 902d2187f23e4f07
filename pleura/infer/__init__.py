"""Inference: ONNX export and the engines (PyTorch, ONNX Runtime) that run a model on a batch of frames.

Example:
    >>> from pleura.infer import export_onnx, make_engine
    >>> export_onnx(model, "model.onnx", verify=True)  # self-describing: config, class names, schema inside
    >>> engine = make_engine("model.onnx")  # OnnxEngine; make_engine(model) gives a TorchEngine
    >>> logits, seg_logits = engine(frames)  # frames: float32 (B, 1, H, W) -> (B, K), (B, C, H, W)
"""

from __future__ import annotations

from pleura.infer.engine import Engine, OnnxEngine, TorchEngine, make_engine
from pleura.infer.export import export_onnx, onnx_bytes, prepare_for_inference, verify_onnx

__all__ = [
    "Engine",
    "OnnxEngine",
    "TorchEngine",
    "export_onnx",
    "make_engine",
    "onnx_bytes",
    "prepare_for_inference",
    "verify_onnx",
]
