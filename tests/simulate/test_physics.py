"""B-mode physics and the behaviour of artifacts and clips, measured on rendered frames."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pleura.labels import ANATOMY
from pleura.simulate import PRIORS, ClipRenderer, physics, sample_scene, simulate_clip

A = {n: i for i, n in enumerate(ANATOMY.names)}


def test_envelope_of_many_scatterers_is_rayleigh():
    rng = np.random.default_rng(0)
    rf = physics.rf_from_scatterers(
        rng.standard_normal((1024, 256), dtype=np.float32), physics.gabor_pulse(2.0), physics.beam_profile(1.5)
    )
    env = physics.envelope(rf)[64:-64, 16:-16]
    snr = env.mean() / env.std()
    assert abs(snr - 1.91) < 0.08  # Rayleigh: sqrt(pi / (4 - pi))


def test_log_compression_maps_the_dynamic_range_to_0_1():
    out = physics.log_compress(np.array([1.0, 10 ** (-30 / 20), 1e-6, 5.0]), reference=1.0, dynamic_range_db=60)
    np.testing.assert_allclose(out, [1.0, 0.5, 0.0, 1.0], atol=1e-6)


def test_tgc_compensates_attenuation():
    z = np.linspace(0, 100, 5)
    full = physics.attenuation_and_tgc(z, 5.0, 0.6, 1.0)
    partial = physics.attenuation_and_tgc(z, 5.0, 0.6, 0.8)
    np.testing.assert_allclose(full, 1.0)
    assert np.all(np.diff(partial) < 0) and partial[-1] == pytest.approx(10 ** (-0.2 * 60 / 20), rel=1e-4)


def rendered(diagnosis: str, probe: str, seeds: range, frames: int = 1, size: int = 128):
    """(scene, frames) of clips with the given seeds."""
    for s in seeds:
        scene, it = simulate_clip(s, 0, diagnosis, probe, size=size, frames=frames)
        yield scene, list(it)


def test_b_lines_do_not_fade_and_outshine_the_lung():
    ratios, contrast = [], []
    for _scene, (frame,) in rendered("covid", "linear", range(12)):
        b = frame.anatomy == A["b_line"]
        if b.sum() < 50:
            continue
        rows = np.nonzero(b.any(axis=1))[0]
        top, bottom = rows[: len(rows) // 4], rows[-len(rows) // 4 :]
        ratios.append(frame.image[bottom][b[bottom]].mean() / frame.image[top][b[top]].mean())
        lung = frame.anatomy == A["lung_unhealthy"]
        contrast.append(frame.image[b].mean() / frame.image[lung].mean())
    assert len(ratios) >= 5
    assert np.median(ratios) > 0.85  # reach the bottom without fading
    assert np.median(contrast) > 1.8  # hyperechoic


def test_a_lines_decay_with_each_repeat():
    drops = []
    for scene, (frame,) in rendered("normal", "linear", range(16), size=256):
        px = scene.geometry.pixel_mm[0]
        a = frame.anatomy == A["a_line"]
        k = np.rint((np.arange(a.shape[0])[:, None] + 0.5) * px / scene.pleural_depth_mm).repeat(a.shape[1], 1)
        means = {int(kk): frame.image[a & (k == kk)].mean() for kk in np.unique(k[a])}
        if 2 in means and 3 in means:
            drops.append(means[3] < means[2])
    assert len(drops) >= 5 and np.mean(drops) >= 0.8


def test_b_lines_erase_a_lines_on_their_scan_lines():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        renderer = ClipRenderer(sample_scene(rng, "covid", "curvilinear", 128), rng)
        renderer.render(0)
        lab = renderer.beam_labels
        both = (lab == A["a_line"]).any(axis=0) & (lab == A["b_line"]).any(axis=0)
        assert not both.any()


def test_lung_sliding_moves_b_lines_and_lung_speckle_decorrelates_faster_than_the_chest_wall():
    moved, lung_corr, wall_corr = [], [], []
    for scene, frames in rendered("covid", "linear", range(8), frames=12):
        if scene.sliding_mm < 0.8:
            continue
        cols = [np.nonzero((f.anatomy == A["b_line"]).any(axis=0))[0] for f in frames]
        if all(c.size for c in cols):
            moved.append(max(abs(c.mean() - cols[0].mean()) for c in cols))
        f0, f1 = frames[0], frames[1]
        # speckle = the image minus its local mean, so that depth trends do not count as correlation
        s0, s1 = (f.image - ndimage.gaussian_filter(f.image.astype(float), 4) for f in (f0, f1))
        for region, store in ((A["lung_unhealthy"], lung_corr), (A["soft_tissue"], wall_corr)):
            m = ndimage.binary_erosion((f0.anatomy == region) & (f1.anatomy == region), iterations=3)
            store.append(np.corrcoef(s0[m], s1[m])[0, 1])
    assert moved and max(moved) >= 2  # pixels of lateral motion over the clip
    assert np.median(lung_corr) < np.median(wall_corr) - 0.1


def test_priors_overlap_between_diagnoses_as_in_patients():
    rng = np.random.default_rng(0)
    normal = [sample_scene(rng, "normal", "linear", 64) for _ in range(200)]
    covid = [sample_scene(rng, "covid", "curvilinear", 64) for _ in range(200)]
    assert any(len(s.blines) > 0 for s in normal) and max(len(s.blines) for s in normal) <= 2
    spared = [s for s in covid if len(s.blines) <= 2 and s.consolidation == "none" and not s.confluent]
    assert spared  # a COVID-19 frame may look spared
    assert 0.2 < np.mean([s.consolidation != "none" for s in covid]) < 0.7
    assert all(s.lobar is None and s.effusion is None for s in normal)
    assert set(PRIORS) == {"covid", "pneumonia", "normal"}
