"""B-mode image formation: scatterers -> RF (PSF convolution) -> envelope -> TGC'd log compression.

This is the convolution model of ultrasound speckle (Bamber & Dickinson 1980; the same model behind
Field II's fast approximations): the RF line is the scatterer field convolved with a separable
point-spread function, a Gabor pulse along depth and a Gaussian beam profile across lines. The
envelope (magnitude of the analytic signal) of many random scatterers per resolution cell is Rayleigh
distributed (envelope SNR 1.91; Cramblitt & Parker 1999). The RF is simulated at a reduced carrier
(``CARRIER_PERIOD_SAMPLES`` per period) so that the display-rate grid can carry it; the envelope, and so
the speckle grain, is set by the pulse length and beam width, which keep their physical sizes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

CARRIER_PERIOD_SAMPLES = 4.0  # samples per carrier period of the simulated RF


def gabor_pulse(sigma_samples: float) -> np.ndarray:
    """Axial pulse: a Gaussian envelope of ``sigma_samples`` on the carrier, unit peak."""
    half = int(np.ceil(3 * sigma_samples))
    z = np.arange(-half, half + 1, dtype=np.float64)
    pulse = np.exp(-0.5 * (z / sigma_samples) ** 2) * np.cos(2 * np.pi * z / CARRIER_PERIOD_SAMPLES)
    return pulse.astype(np.float32)


def beam_profile(sigma_lines: float) -> np.ndarray:
    """Lateral beam profile across scan lines, unit sum."""
    half = max(1, int(np.ceil(3 * sigma_lines)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    prof = np.exp(-0.5 * (x / sigma_lines) ** 2)
    return (prof / prof.sum()).astype(np.float32)


def rf_from_scatterers(scatterers: np.ndarray, pulse: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Convolve a ``(depth, lines)`` scatterer map with the separable PSF to get RF lines."""
    rf = ndimage.convolve1d(scatterers, pulse, axis=0, mode="constant")
    return ndimage.convolve1d(rf, profile, axis=1, mode="nearest")


def envelope(rf: np.ndarray, pad: int = 0) -> np.ndarray:
    """Envelope detection: magnitude of the analytic signal along depth.

    ``signal.hilbert`` works on the FFT, so each line wraps around: strong echoes at the top leak into the
    bottom rows. ``pad`` zero samples appended below the lines (and removed again) keep them apart; 0 keeps
    the default simulator's output as it has always been.
    """
    if pad > 0:
        padded = np.concatenate([rf, np.zeros((pad, *rf.shape[1:]), rf.dtype)], axis=0)
        return np.abs(signal.hilbert(padded, axis=0))[: rf.shape[0]].astype(np.float32)
    return np.abs(signal.hilbert(rf, axis=0)).astype(np.float32)


def attenuation_and_tgc(
    depth_mm: np.ndarray, freq_mhz: float, alpha_db_cm_mhz: float, tgc_compensation: float
) -> np.ndarray:
    """Amplitude factor of two-way tissue attenuation times the time-gain compensation.

    TGC gives back ``tgc_compensation`` (0..1) of the attenuation in dB, as an operator sets the
    sliders; the rest remains as a gentle darkening with depth.
    """
    loss_db = 2.0 * alpha_db_cm_mhz * freq_mhz * depth_mm / 10.0
    return (10.0 ** (-(1.0 - tgc_compensation) * loss_db / 20.0)).astype(np.float32)


def tgc_gain(depth_mm: np.ndarray, freq_mhz: float, alpha_db_cm_mhz: float, tgc_compensation: float) -> np.ndarray:
    """Amplitude gain of the TGC alone, normalised to 1 at the deepest sample.

    Receiver noise enters after the tissue but before TGC, so it grows with depth by this factor.
    """
    gain_db = tgc_compensation * 2.0 * alpha_db_cm_mhz * freq_mhz * depth_mm / 10.0
    return (10.0 ** ((gain_db - gain_db.max()) / 20.0)).astype(np.float32)


def log_compress(env: np.ndarray, reference: float, dynamic_range_db: float, gain_db: float = 0.0) -> np.ndarray:
    """Map envelope amplitudes to display values in 0..1 with ``dynamic_range_db`` of log range."""
    db = 20.0 * np.log10(np.maximum(env, 1e-12) / reference) + gain_db
    return np.clip(1.0 + db / dynamic_range_db, 0.0, 1.0).astype(np.float32)
