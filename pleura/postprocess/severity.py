"""The lung-ultrasound severity score 0-3 of Soldati et al. 2020 (J Ultrasound Med 39:1413), per frame and per
clip, as written rules over the biomarkers (``pleura.postprocess.biomarkers``), each result with the rule that
fired in words, so a clinician can read why.

    sev = frame_severity(frame_biomarkers(mask))        # Severity(score=1, rule="1: vertical white areas: ...")
    clip = clip_severity([r.biomarkers for r in result.frames], [r.index for r in result.frames])

Soldati's scores (paraphrased in ``../shared/LUS-REFERENCE.md``) and the rule each one becomes; the first rule
that holds, from the top, gives the score:

* **not scored**: no pleural line found (or no scan area): ``None``, never 0.
* **3** "dense and largely extended white lung, with or without larger consolidations": confluent B-lines
  that together with the other B-lines cover at least ``white_lung_pct`` of the intercostal space.
* **2** "broken pleural line, small to large consolidated areas, with white lung below": a consolidation
  under the pleural line (the consolidation proxy covers at least ``min_consolidation_fraction`` of the
  subpleural band), or a broken pleural line with confluent B-lines below.
* **1** "indented pleural line, with vertical white areas below": any B-line, or an indented pleural line
  (its irregularity at least ``irregular_depth_fraction`` of its depth), or a broken one.
* **0** "continuous, regular pleural line with horizontal artefacts (A-lines)": none of the above; the rule
  says whether A-lines were seen.

A clip's score is the highest score that at least ``min_share`` of its scored frames reach (a finding must
persist over a fifth of the frames, so one noisy frame does not decide a zone); the rule names the frames.
The thresholds are choices made here, not published values (Soldati et al. describe the patterns, not pixel
thresholds); they are the fields of :class:`SeverityRules`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pleura.postprocess.biomarkers import Biomarkers

__all__ = ["Severity", "SeverityRules", "clip_severity", "frame_severity"]


@dataclass(frozen=True)
class SeverityRules:
    """Thresholds of the severity rules (choices, see the module docstring)."""

    white_lung_pct: float = 50.0  # B-line coverage (% of the intercostal space) of "largely extended" white lung
    min_consolidation_fraction: float = 0.05  # consolidation proxy share of the subpleural band: a consolidation
    irregular_depth_fraction: float = 0.04  # pleural-line irregularity / its depth: an indented line
    min_share: float = 0.2  # a clip's score needs at least this share of its scored frames

    def __post_init__(self) -> None:
        if not 0 < self.white_lung_pct <= 100:
            raise ValueError(f"white_lung_pct should be in (0, 100], got {self.white_lung_pct}")
        if not 0 < self.min_share <= 1:
            raise ValueError(f"min_share should be in (0, 1], got {self.min_share}")


@dataclass(frozen=True)
class Severity:
    """A severity score (``None``: not scored) and the rule that gave it, in words."""

    score: int | None
    rule: str
    frames_scored: int = 1  # frames with a pleural line (a clip's; 1 or 0 for one frame)
    frames: int = 1  # frames looked at
    frame_index: int | None = None  # the frame the rule quotes (clips only)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields, for JSON or a CSV row."""
        return asdict(self)


def _get(bm: Mapping[str, Any] | Biomarkers) -> Mapping[str, Any]:
    return bm.to_dict() if isinstance(bm, Biomarkers) else bm


def _num(value: Any) -> float | None:
    """A finite number, or ``None`` (missing, NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def frame_severity(biomarkers: Mapping[str, Any] | Biomarkers, rules: SeverityRules | None = None) -> Severity:
    """Soldati's 0-3 score of one frame from its biomarkers (a ``Biomarkers`` or its ``to_dict()``).

    Example:
        >>> frame_severity(frame_biomarkers(np.zeros((64, 64), np.uint8))).rule
        'not scored: no pleural line found'
    """
    r = rules or SeverityRules()
    bm = _get(biomarkers)
    if not bm.get("pleural_line_found"):
        return Severity(None, "not scored: no pleural line found", frames_scored=0)
    coverage = _num(bm.get("b_line_coverage_pct")) or 0.0
    n_b = int(bm.get("b_line_count") or 0)
    confluent = bool(bm.get("confluent_b_lines"))
    cons = _num(bm.get("subpleural_unhealthy_fraction"))
    breaks = int(bm.get("pleural_line_breaks") or 0)
    continuity = _num(bm.get("pleural_line_continuity"))
    irregularity, depth = _num(bm.get("pleural_line_irregularity_px")), _num(bm.get("pleural_line_depth_px"))
    indent = irregularity / depth if irregularity is not None and depth is not None and depth >= 1 else 0.0
    indented = indent >= r.irregular_depth_fraction
    broken = f"broken pleural line ({breaks} break{'s' * (breaks != 1)}, continuity {continuity or 0:.0%})"
    white = f"{n_b} B-line{'s' * (n_b != 1)} covering {coverage:.0f}% of the intercostal space"

    if confluent and coverage >= r.white_lung_pct:
        return Severity(3, f"3: dense, extended white lung: confluent {white} (>= {r.white_lung_pct:.0f}%)")
    if cons is not None and cons >= r.min_consolidation_fraction:
        below = f", with white lung below ({white})" if n_b else ", no B-line below"
        return Severity(2, f"2: consolidated area under the pleural line ({cons:.0%} of the subpleural band){below}")
    if breaks and confluent:
        return Severity(2, f"2: {broken} with white lung below (confluent {white})")
    if n_b:
        line = f"; indented pleural line ({indent:.0%} of its depth)" if indented else ""
        return Severity(1, f"1: vertical white areas below the pleural line: {white}{line}")
    if indented:
        return Severity(1, f"1: indented pleural line (irregularity {indent:.0%} of its depth), no B-line")
    if breaks:
        return Severity(1, f"1: {broken}, no white lung below")
    a_lines = "with A-lines" if bm.get("a_lines_present") else "no A-line seen"
    return Severity(0, f"0: continuous, regular pleural line, no B-line; {a_lines}")


def clip_severity(
    frames: Sequence[Mapping[str, Any] | Biomarkers],
    indices: Sequence[int] | None = None,
    rules: SeverityRules | None = None,
) -> Severity:
    """A clip's score: the highest score that at least ``rules.min_share`` of its scored frames reach.

    Args:
        frames: the frames' biomarkers, in order.
        indices: each frame's index in the file (for the rule's text); default 0, 1, ...
        rules: the thresholds.

    Raises:
        ValueError: no frames, or ``indices`` of another length.
    """
    r = rules or SeverityRules()
    if not frames:
        raise ValueError("clip_severity needs at least one frame's biomarkers, got none")
    indices = list(range(len(frames))) if indices is None else list(indices)
    if len(indices) != len(frames):
        raise ValueError(f"got {len(indices)} frame indices for {len(frames)} frames")
    scored = [
        (i, s) for i, s in zip(indices, (frame_severity(f, r) for f in frames), strict=True) if s.score is not None
    ]
    n = len(frames)
    if not scored:
        return Severity(None, f"not scored: no pleural line found in any of {n} frame{'s' * (n != 1)}", 0, n)
    need = max(1, math.ceil(r.min_share * len(scored)))
    for score in (3, 2, 1, 0):
        reach = [(i, s) for i, s in scored if s.score is not None and s.score >= score]
        if len(reach) >= need:
            index, quoted = next(((i, s) for i, s in reach if s.score == score), reach[0])
            text = quoted.rule.split(": ", 1)[1] if quoted.score == score else f"score {score} or more"
            where = f"{len(reach)} of {len(scored)} scored frames reach {score}"
            return Severity(score, f"{score}: {text} (frame {index}; {where})", len(scored), n, index)
    raise AssertionError("unreachable: every scored frame reaches 0")  # pragma: no cover
