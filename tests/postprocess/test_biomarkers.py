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


def test_blank_frame_is_not_found_never_zero():
    """No pleural line (a blank map): every biomarker is None ("not found"), not 0 or NaN."""
    for blank in (np.zeros((H, W), np.uint8), np.full((H, W), C["outside_scan"], np.uint8)):
        bm = frame_biomarkers(blank)
        assert bm.pleural_line_found is False
        assert all(v is None for k, v in bm.to_dict().items() if k != "pleural_line_found"), bm


def test_a_few_stray_pleural_pixels_are_not_a_pleural_line():
    m = np.full((H, W), C["background"], np.uint8)
    m[10:12, 30:32] = C["pleural_line_healthy"]  # 2 of 64 scan lines: under min_pleura_fraction (5%)
    m[12:, 31] = C["b_line"]
    assert not frame_biomarkers(m).pleural_line_found
    m[10:12, 30:34] = C["pleural_line_healthy"]  # 4 of 64 lines: found
    assert frame_biomarkers(m).pleural_line_found


def test_empty_scan_area_is_not_found():
    m = b_line(lung(), 10, 13)
    assert frame_biomarkers(m).b_line_count == 1
    bm = frame_biomarkers(m, scan_area=np.zeros((H, W), bool))
    assert not bm.pleural_line_found and bm.b_line_count is None and bm.aeration_score is None
    part = np.zeros((H, W), bool)
    part[:, 32:] = True  # the B-line at columns 10-12 lies outside the scan area: not counted
    assert frame_biomarkers(m, scan_area=part).b_line_count == 0


def test_no_pleural_pixel_of_either_health_gives_nan_not_zero():
    m = b_line(lung(), 10, 13)
    m[m == C["below_pleura_healthy"]] = C["background"]
    assert math.isnan(frame_biomarkers(m).unhealthy_below_fraction)


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
        frame_biomarkers(lung(), schema="bogus")
    with pytest.raises(ValueError, match="pixel_mm"):
        frame_biomarkers(lung(), pixel_mm=-1.0)
    with pytest.raises(ValueError, match="scan_area shape"):
        frame_biomarkers(lung(), scan_area=np.ones((3, 3), bool))
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
    assert not bm.pleural_line_found  # and no crash
    mask[3:5, 10:50] = C["pleural_line_healthy"]
    bm = frame_biomarkers(mask)
    assert bm.pleural_line_found and bm.b_line_count == 0 and bm.aeration_score == 0


# --- the pleural line, B-line coverage, consolidation and effusion (issue 14) ---------------------------------------


def test_pleural_line_geometry_by_hand():
    bm = frame_biomarkers(lung(), pixel_mm=0.5)
    assert bm.pleural_line_found and bm.pleural_line_depth_px == 10  # skin at row 0, upper edge at row 10
    assert bm.pleural_line_thickness_px == 2 and bm.pleural_line_length_px == W
    assert bm.pleural_line_breaks == 0 and bm.pleural_line_continuity == 1.0
    assert bm.pleural_line_irregularity_px == 0.0
    assert (bm.pleural_line_depth_mm, bm.pleural_line_length_mm, bm.pleural_line_thickness_mm) == (5.0, 32.0, 1.0)
    bm = frame_biomarkers(lung(), pixel_mm=(0.5, 0.25))  # (row, col): depth from rows, length from columns
    assert (bm.pleural_line_depth_mm, bm.pleural_line_length_mm) == (5.0, 16.0)
    assert frame_biomarkers(lung()).pleural_line_depth_mm is None  # no pixel size: mm unknown, not guessed


def test_chest_wall_above_the_skin_line_is_not_depth():
    m = lung()
    m[:4] = C["outside_scan"]  # the scan area starts at row 4 (a padded export)
    assert frame_biomarkers(m).pleural_line_depth_px == 6


@pytest.mark.parametrize(
    ("gap", "breaks", "continuity", "length"),
    [
        ((30, 31), 0, 1.0, W - 1),  # one line: bridged, not a break
        ((30, 34), 1, 60 / 64, W - 4),  # 4 lines (6%): a break
        ((20, 36), 0, 1.0, W - 16),  # 16 lines (25%): a rib shadow between two intercostal spaces
    ],
)
def test_gaps_in_the_pleural_line(gap, breaks, continuity, length):
    m = lung()
    m[PLEURA[0] : PLEURA[1], gap[0] : gap[1]] = C["below_pleura_healthy"]
    bm = frame_biomarkers(m)
    assert (bm.pleural_line_breaks, bm.pleural_line_length_px) == (breaks, length)
    assert bm.pleural_line_continuity == pytest.approx(continuity)


def test_an_indented_pleural_line_is_irregular():
    m = lung()
    m[PLEURA[0] : PLEURA[1], 28:36] = C["below_pleura_healthy"]
    m[PLEURA[0] + 3 : PLEURA[1] + 3, 28:36] = C["pleural_line_healthy"]  # 8 lines 3 rows deeper
    bm = frame_biomarkers(m)
    assert bm.pleural_line_irregularity_px == pytest.approx(3 * 8 / W)  # mean |edge - running median|
    assert bm.pleural_line_thickness_px == 2 and bm.pleural_line_breaks == 0


def test_b_line_coverage_is_the_share_of_the_intercostal_space():
    bm = frame_biomarkers(b_line(b_line(lung(), 10, 13), 40, 43))
    assert bm.b_line_coverage_pct == pytest.approx(100 * 6 / W)
    m = b_line(lung(), 40, 43)
    m[PLEURA[0] : PLEURA[1], 0:16] = C["below_pleura_healthy"]  # a rib shadow: outside the intercostal space
    assert frame_biomarkers(m).b_line_coverage_pct == pytest.approx(100 * 3 / 48)
    short = b_line(lung(), 40, 43, bottom=PLEURA[1] + 5)  # a comet tail covers nothing
    assert frame_biomarkers(short).b_line_coverage_pct == 0.0


def test_a_lines_present():
    m = lung()
    assert frame_biomarkers(m).a_lines_present is False
    m[22:24] = C["a_line"]
    assert frame_biomarkers(m).a_lines_present is True


def test_consolidation_area_of_the_dense_proxy():
    m = lung(unhealthy=True)
    m[22:24, 40:] = C["a_line"]  # aerated on the right; columns 0..38 quiet (one column of reach)
    bm = frame_biomarkers(m, pixel_mm=0.5)
    assert bm.consolidation_area_px == 39 * (H - PLEURA[1])
    assert bm.consolidation_area_mm2 == pytest.approx(39 * (H - PLEURA[1]) * 0.25)
    assert bm.effusion_area_px is None  # the dense schema cannot tell effusion from consolidation
    healthy = lung()
    assert frame_biomarkers(healthy).consolidation_area_px == 0.0


def test_anatomy_maps_give_consolidation_and_effusion_from_their_classes():
    from pleura.labels import ANATOMY

    a = np.full((H, W), ANATOMY.index("soft_tissue"), np.uint8)
    a[PLEURA[0] : PLEURA[1]] = ANATOMY.index("pleural_line_unhealthy")
    a[PLEURA[1] :] = ANATOMY.index("lung_unhealthy")
    a[PLEURA[1] : PLEURA[1] + 10, 0:20] = ANATOMY.index("consolidation")
    a[PLEURA[1] : PLEURA[1] + 5, 40:60] = ANATOMY.index("effusion")
    bm = frame_biomarkers(a, "anatomy", pixel_mm=0.2)
    assert (bm.consolidation_area_px, bm.effusion_area_px) == (200.0, 100.0)
    assert bm.effusion_area_mm2 == pytest.approx(100 * 0.04)
    sparse = frame_biomarkers(convert(a, "anatomy", "sparse"), "sparse")
    assert sparse.consolidation_area_px is None and sparse.effusion_area_px is None


def test_pleural_depth_matches_the_simulated_truth():
    """On the simulator's true maps (both probes) the depth in mm matches where the renderer put the line."""
    from pleura.simulate.render import ClipRenderer
    from pleura.simulate.scene import sample_scene

    errors = []
    for i in range(8):
        rng = np.random.default_rng(np.random.SeedSequence([5, i]))
        scene = sample_scene(rng, ("normal", "covid")[i % 2], ("linear", "curvilinear")[(i // 2) % 2], 128)
        renderer = ClipRenderer(scene, rng)
        frame = renderer.render(0)
        bm = frame_biomarkers(frame.anatomy, "anatomy", pixel_mm=scene.geometry.pixel_mm)
        errors.append(abs(bm.pleural_line_depth_mm - float(np.median(renderer.pl_top))))
        assert bm.pleural_line_found
    assert max(errors) < 1.5, errors  # mm; a row is 0.3-0.5 mm (linear) or about 1.3 mm (curvilinear)


def test_clip_summary_skips_frames_without_a_pleural_line():
    blank = frame_biomarkers(np.zeros((H, W), np.uint8))
    out = clip_biomarkers([blank, blank])
    assert out["pleural_line_found"] is False and out["frames_with_pleural_line"] == 0
    assert out["b_line_count_max"] is None and out["aeration_score_max"] is None
    assert out["pleural_line_depth_px_mean"] is None
    mixed = clip_biomarkers([blank, frame_biomarkers(b_line(lung(), 10, 13))])
    assert mixed["frames_with_pleural_line"] == 1 and mixed["b_line_count_max"] == 1
    assert mixed["pleural_line_depth_px_mean"] == 10.0 and mixed["b_line_coverage_pct_mean"] == pytest.approx(300 / W)
