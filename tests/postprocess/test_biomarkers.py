"""Biomarkers on hand-drawn masks (counts and fractions by hand) and on the simulator's exact truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pleura.labels import DENSE, convert
from pleura.postprocess.biomarkers import Biomarkers, clip_biomarkers, frame_biomarkers
from pleura.simulate import simulate_clip

C = {name: DENSE.index(name) for name in DENSE.names}
H = W = 64
PLEURA = (10, 12)  # rows of the pleural line; A-line spacing is therefore about 11 rows


def lung(unhealthy: bool = False) -> np.ndarray:
    """A 64 x 64 linear frame: chest wall, a two-row pleural line, lung below; no artifacts."""
    m = np.full((H, W), C["background"], np.uint8)
    m[PLEURA[0] : PLEURA[1]] = C["pleural_line_unhealthy" if unhealthy else "pleural_line_healthy"]
    m[PLEURA[1] :] = C["below_pleura_unhealthy" if unhealthy else "below_pleura_healthy"]
    return m


def b_line(m: np.ndarray, c0: int, c1: int, bottom: int = H) -> np.ndarray:
    m[PLEURA[1] : bottom, c0:c1] = C["b_line"]
    return m


def test_two_separated_b_lines_count_two():
    m = b_line(b_line(lung(), 10, 13), 40, 43)
    bm = frame_biomarkers(m)
    assert bm.b_line_count == 2
    assert not bm.confluent_b_lines
    assert bm.b_line_fraction == pytest.approx(6 / W)  # 6 of 64 columns of the region below the pleura


def test_short_comet_tail_is_not_a_b_line():
    m = b_line(lung(), 25, 28, bottom=PLEURA[1] + 9)  # 9 rows of 52 below the pleura: under 30%
    m = b_line(m, 45, 48)
    assert frame_biomarkers(m).b_line_count == 1


def test_wide_band_is_confluent_and_counts_once():
    bm = frame_biomarkers(b_line(lung(), 10, 30))  # 20 of 64 columns > 15% of the pleural line
    assert bm.b_line_count == 1
    assert bm.confluent_b_lines
    assert bm.confluent_pleura_fraction == pytest.approx(20 / W)


def test_three_a_line_segments_at_two_depths_count_two():
    m = lung()
    m[22:24, 0:10] = C["a_line"]
    m[22:24, 15:30] = C["a_line"]  # same depth, split by a B-line
    m[34:36, 0:30] = C["a_line"]
    b_line(m, 11, 14)
    assert frame_biomarkers(m).a_line_count == 2


def test_unhealthy_pleura_and_below_fractions_by_hand():
    m = lung()
    m[PLEURA[1] - 1, :16] = C["pleural_line_unhealthy"]  # 16 of 128 pleural pixels
    m[40:, :32] = C["below_pleura_unhealthy"]  # 24 * 32 of 52 * 64 below-pleura pixels
    bm = frame_biomarkers(m)
    assert bm.pleural_line_unhealthy_fraction == pytest.approx(16 / 128)
    assert bm.unhealthy_below_fraction == pytest.approx(24 * 32 / (52 * 64))
    assert bm.subpleural_unhealthy_fraction == 0.0  # the unhealthy part is deep, not subpleural


def test_no_pleura_gives_nan_fraction():
    bm = frame_biomarkers(np.zeros((H, W), np.uint8))
    assert math.isnan(bm.pleural_line_unhealthy_fraction)
    assert bm.b_line_count == bm.a_line_count == bm.aeration_score == 0


def test_sparse_input_has_no_health_measures():
    m = b_line(b_line(lung(unhealthy=True), 10, 13), 40, 43)
    m[22:24, 20:35] = C["a_line"]
    bm = frame_biomarkers(convert(m, "dense", "sparse"), schema="sparse")
    assert bm.pleural_line_unhealthy_fraction is None
    assert bm.unhealthy_below_fraction is None
    assert bm.subpleural_unhealthy_fraction is None
    assert (bm.b_line_count, bm.a_line_count) == (2, 1)
    assert bm.b_line_fraction == pytest.approx(frame_biomarkers(m).b_line_fraction)


@pytest.mark.parametrize(
    ("bands", "unhealthy", "score"),
    [
        ([], False, 0),  # A-line pattern
        ([(10, 13), (40, 43)], False, 0),  # two B-lines
        ([(5, 8), (25, 28), (45, 48)], True, 1),  # three B-lines: interstitial syndrome
        ([(10, 30)], True, 1),  # confluent over less than half the pleural line
        ([(0, 40)], True, 2),  # confluent over more than half
    ],
)
def test_aeration_score_from_b_lines(bands, unhealthy, score):
    m = lung(unhealthy)
    m[22:24] = C["a_line"]
    for c0, c1 in bands:
        b_line(m, c0, c1)
    assert frame_biomarkers(m).aeration_score == score


def test_aeration_score_three_for_artifact_free_unhealthy_lung():
    m = lung(unhealthy=True)
    m[22:24, 40:] = C["a_line"]  # aerated on the right; no artifact over columns 0..39: consolidation
    bm = frame_biomarkers(m)
    assert bm.subpleural_unhealthy_fraction == pytest.approx(39 / 64, abs=0.02)  # one column's reach
    assert bm.aeration_score == 3


def test_outside_scan_pixels_are_excluded():
    m = b_line(b_line(lung(), 20, 23), 40, 43)
    framed = m.copy()
    framed[:, :8] = framed[:, -8:] = C["outside_scan"]  # not a sector (parallel edges): columns stay lines
    bm, ref = frame_biomarkers(framed), frame_biomarkers(m)
    assert bm.b_line_count == ref.b_line_count == 2
    assert bm.b_line_fraction == pytest.approx(6 / 48)


def test_bad_input_errors_say_what_came():
    with pytest.raises(ValueError, match="2-D"):
        frame_biomarkers(np.zeros((1, H, W), np.uint8))
    with pytest.raises(ValueError, match="schema"):
        frame_biomarkers(lung(), schema="anatomy")
    with pytest.raises(ValueError, match="class index"):
        frame_biomarkers(np.full((H, W), 9, np.uint8))
    with pytest.raises(ValueError, match="at least one"):
        clip_biomarkers([])


def test_clip_summary():
    frames = [
        frame_biomarkers(b_line(lung(), 10, 13)),
        frame_biomarkers(b_line(b_line(b_line(lung(), 5, 8), 25, 28), 45, 48)),
        frame_biomarkers(b_line(lung(), 10, 30)),
    ]
    out = clip_biomarkers(frames)
    assert out["n_frames"] == 3
    assert out["b_line_count_median"] == 1 and out["b_line_count_max"] == 3
    assert out["confluent_b_lines"] is True
    assert out["aeration_score_max"] == 1
    assert out["pleural_line_unhealthy_fraction_mean"] == 0.0
    d = frames[0].to_dict()
    assert isinstance(frames[0], Biomarkers) and d["b_line_count"] == 1 and d["aeration_score"] == 0


@pytest.fixture(scope="module")
def simulated():
    """40 single-frame clips at 128 px: diagnoses cycle, probes alternate."""
    out = []
    for i in range(40):
        diagnosis = ("normal", "covid", "pneumonia")[i % 3]
        probe = ("linear", "curvilinear")[(i // 3) % 2]
        _, frames = simulate_clip(11, i, diagnosis, probe, size=128)
        frame = next(frames)
        out.append((diagnosis, frame, frame_biomarkers(convert(frame.anatomy, "anatomy", "dense"))))
    return out


def test_counts_match_simulated_truth(simulated):
    b_ok = np.mean([bm.b_line_count == f.n_blines for _, f, bm in simulated])
    a_ok = np.mean([bm.a_line_count == f.n_alines for _, f, bm in simulated])
    assert b_ok >= 0.9, f"B-line count agrees on {b_ok:.0%} of frames"
    assert a_ok >= 0.9, f"A-line count agrees on {a_ok:.0%} of frames"


def test_normal_frames_are_healthy(simulated):
    normal = [bm for d, _, bm in simulated if d == "normal"]
    assert normal
    for bm in normal:
        assert bm.pleural_line_unhealthy_fraction == 0
        assert bm.unhealthy_below_fraction == 0
        assert bm.aeration_score == 0  # at most two B-lines, no confluence


def test_scan_area_in_pieces_does_not_break_the_scan_lines() -> None:
    """A predicted outside-scan mask can leave the scan area in pieces with no rows to fit side edges on."""
    mask = np.full((64, 64), C["outside_scan"], dtype=np.uint8)
    mask[0:5, 10:50] = C["background"]
    mask[59:64, 5:60] = C["background"]  # rows 0-4 and 59-63: none in the 25-60% band
    bm = frame_biomarkers(mask)
    assert bm.b_line_count == 0 and bm.aeration_score == 0
