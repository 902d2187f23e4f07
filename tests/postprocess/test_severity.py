"""The Soldati severity score on hand-built masks: each score's case, the boundaries of each rule, and clips."""

from __future__ import annotations

import numpy as np
import pytest

from pleura.labels import DENSE
from pleura.postprocess.biomarkers import frame_biomarkers
from pleura.postprocess.severity import SeverityRules, clip_severity, frame_severity

C = {name: DENSE.index(name) for name in DENSE.names}
H = W = 64
PLEURA = (10, 12)  # rows of a two-row pleural line, 10 rows below the skin


def lung(unhealthy: bool = False, a_lines: bool = True) -> np.ndarray:
    """A 64 x 64 linear frame: chest wall, pleural line, lung below, an A-line at twice the pleural depth."""
    m = np.full((H, W), C["background"], np.uint8)
    m[PLEURA[0] : PLEURA[1]] = C["pleural_line_unhealthy" if unhealthy else "pleural_line_healthy"]
    m[PLEURA[1] :] = C["below_pleura_unhealthy" if unhealthy else "below_pleura_healthy"]
    if a_lines:
        m[22:24] = C["a_line"]
    return m


def b_line(m: np.ndarray, c0: int, c1: int) -> np.ndarray:
    m[PLEURA[1] :, c0:c1] = C["b_line"]
    return m


def gap(m: np.ndarray, c0: int, c1: int) -> np.ndarray:
    m[PLEURA[0] : PLEURA[1], c0:c1] = C["below_pleura_healthy"]
    return m


def indent(m: np.ndarray, rows: int, c0: int = 28, c1: int = 36) -> np.ndarray:
    gap(m, c0, c1)
    m[PLEURA[0] + rows : PLEURA[1] + rows, c0:c1] = C["pleural_line_healthy"]
    return m


def score(m: np.ndarray) -> tuple[int | None, str]:
    s = frame_severity(frame_biomarkers(m))
    return s.score, s.rule


def test_no_pleural_line_is_not_scored():
    assert score(np.zeros((H, W), np.uint8)) == (None, "not scored: no pleural line found")


def test_score_0_continuous_line_with_a_lines():
    s, rule = score(lung())
    assert s == 0 and "with A-lines" in rule
    s, rule = score(lung(a_lines=False))
    assert s == 0 and "no A-line seen" in rule  # said, not hidden


def test_score_1_vertical_white_areas():
    s, rule = score(b_line(lung(), 10, 13))
    assert s == 1 and "1 B-line" in rule
    assert score(b_line(b_line(lung(), 10, 13), 40, 43))[0] == 1


def test_score_1_indented_line_and_its_boundary():
    # 8 of 64 lines 4 rows deeper: irregularity 0.5 px = 5% of the 10-px depth (>= 4%); 3 rows: 3.75% (< 4%)
    s, rule = score(indent(lung(), 4))
    assert s == 1 and "indented" in rule
    assert score(indent(lung(), 3))[0] == 0
    assert frame_severity(frame_biomarkers(indent(lung(), 3)), SeverityRules(irregular_depth_fraction=0.03)).score == 1


def test_score_1_broken_line_alone():
    s, rule = score(gap(lung(), 40, 44))
    assert s == 1 and "broken pleural line (1 break" in rule


def test_score_2_consolidation_and_its_boundary():
    m = lung(unhealthy=True, a_lines=False)
    m[22:24, 5:] = C["a_line"]  # aerated except columns 0-3 (one column of reach): 4 of 64 = 6.25% >= 5%
    s, rule = score(m)
    assert s == 2 and "consolidated area" in rule and "no B-line below" in rule
    m = lung(unhealthy=True, a_lines=False)
    m[22:24, 4:] = C["a_line"]  # columns 0-2 quiet: 3 of 64 = 4.7% < 5%: no consolidation, A-lines: 0
    assert score(m)[0] == 0
    m = lung(unhealthy=True, a_lines=False)
    m[22:24, 40:] = C["a_line"]
    s, rule = score(b_line(m, 50, 53))
    assert s == 2 and "with white lung below (1 B-line" in rule


def test_score_2_broken_line_with_confluent_b_lines():
    m = gap(b_line(lung(), 10, 30), 50, 54)  # confluent band over 20 of 60 intercostal lines (33%), a break
    s, rule = score(m)
    assert s == 2 and "broken pleural line" in rule and "confluent" in rule
    assert score(b_line(lung(), 10, 30))[0] == 1  # the same band without a break: vertical white areas


def test_score_3_white_lung_and_its_boundary():
    s, rule = score(b_line(lung(), 0, 32))  # 32 of 64 lines: 50% of the intercostal space
    assert s == 3 and "white lung" in rule and "50%" in rule
    assert score(b_line(lung(), 0, 31))[0] == 1  # 48%: not largely extended
    assert frame_severity(frame_biomarkers(b_line(lung(), 0, 31)), SeverityRules(white_lung_pct=45)).score == 3


def test_clip_score_needs_a_share_of_the_frames():
    zero, one, blank = (frame_biomarkers(m) for m in (lung(), b_line(lung(), 10, 13), np.zeros((H, W), np.uint8)))
    sev = clip_severity([zero] * 4 + [one], indices=[0, 3, 6, 9, 12])
    assert sev.score == 1 and sev.frame_index == 12 and "1 of 5 scored frames" in sev.rule
    assert clip_severity([zero] * 9 + [one]).score == 0  # 1 of 10 frames: under a fifth
    sev = clip_severity([blank, blank, one])
    assert sev.score == 1 and (sev.frames_scored, sev.frames) == (1, 3)  # unscored frames do not dilute
    sev = clip_severity([blank, blank])
    assert sev.score is None and "any of 2 frames" in sev.rule
    assert clip_severity([one.to_dict()]).score == 1  # the dicts Predictor keeps work too


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        clip_severity([])
    with pytest.raises(ValueError, match="indices"):
        clip_severity([frame_biomarkers(lung())], indices=[1, 2])
    with pytest.raises(ValueError, match="min_share"):
        SeverityRules(min_share=0)
