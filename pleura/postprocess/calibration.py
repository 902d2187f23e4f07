"""Calibration: temperature scaling (Guo et al., ICML 2017) and the expected calibration error.

A classifier's softmax is often over-confident. Dividing its logits by one temperature ``T`` fitted on
held-out data (minimum negative log-likelihood) keeps every decision and makes the probabilities honest.
Held-out probabilities suffice: ``log p`` equals the logits up to a per-row constant, which softmax ignores.
"""

from __future__ import annotations

import numpy as np


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / T)`` of ``(N, K)`` logits."""
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def scale_probabilities(prob: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(prob) / T)``: probabilities as a model with logits divided by ``T`` gives them."""
    return softmax(np.log(np.clip(np.asarray(prob, dtype=np.float64), 1e-12, 1.0)), temperature)


def fit_temperature(prob: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` under ``prob`` (N, K).

    A golden-section search over ``log T`` (the NLL is unimodal in it); ``1.0`` when there are no rows.
    """
    prob, labels = np.asarray(prob, dtype=np.float64), np.asarray(labels, dtype=int)
    if len(prob) == 0:
        return 1.0
    if prob.ndim != 2 or len(labels) != len(prob) or labels.min() < 0 or labels.max() >= prob.shape[1]:
        raise ValueError(f"expected prob (N, K) and N labels in [0, K), got {prob.shape} and {labels.shape}")
    logp = np.log(np.clip(prob, 1e-12, 1.0))
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-_log_softmax(logp / np.exp(log_t))[rows, labels].mean())

    a, b = np.log(bounds[0]), np.log(bounds[1])
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(60):
        if nll(c) < nll(d):
            b = d
        else:
            a = c
        c, d = b - g * (b - a), a + g * (b - a)
    return float(np.exp((a + b) / 2))


def expected_calibration_error(prob: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: mean |accuracy - confidence| over equal-width confidence bins, weighted by their share of rows."""
    prob, labels = np.asarray(prob, dtype=np.float64), np.asarray(labels, dtype=int)
    if len(prob) == 0:
        return float("nan")
    conf, pred = prob.max(axis=1), prob.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for k in range(bins):
        m = which == k
        if m.any():
            ece += m.mean() * abs(float((pred[m] == labels[m]).mean()) - float(conf[m].mean()))
    return float(ece)
