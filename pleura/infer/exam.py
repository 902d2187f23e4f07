"""``pleura score``: the lung-ultrasound severity score of an exam, zone by zone, with its total and a chest map.

An exam is a folder of clips, one per chest zone, named by zone (``R1.mp4``, ``exam3_L4.avi``: a token ``R<n>``
or ``L<n>`` in the file name, any case) or mapped to zones by a JSON file (``{"clip 07.mp4": "R3"}``). Each clip
is scored by ``Predictor.predict`` (Soldati et al. 2020's 0-3 score, ``pleura.postprocess.severity``); the exam
table gives every zone of the scheme its score, the rule that gave it, or why it has none.

Zone schemes (the names are pleura's; ``../shared/LUS-REFERENCE.md`` gives the protocols):

* **14 zones** (Soldati et al., J Ultrasound Med 2020: per side 3 posterior, 2 lateral, 2 anterior; total
  0-42): ``R1``/``L1`` anterior upper, ``2`` anterior lower, ``3`` lateral upper, ``4`` lateral lower,
  ``5`` posterior upper, ``6`` posterior middle, ``7`` posterior lower.
* **12 zones** (per side anterior, lateral and posterior, each upper and lower; total 0-36): ``1`` anterior
  upper, ``2`` anterior lower, ``3`` lateral upper, ``4`` lateral lower, ``5`` posterior upper, ``6`` posterior
  lower.

Another numbering (R1a, "right anterior upper", a scanner's own) goes through the mapping file.

Bad input is listed, never fatal: a file with no zone or an unknown one, two files for one zone (neither is
scored: which is the zone's cannot be told), a clip that fails to read, a clip with no pleural line; every
other clip is scored, zones without a score are marked, and the total counts the scored zones only (the table
says how many). Nothing is written half: the command writes its folder staged (``pleura.atomic``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pleura.atomic import finite, printable, write_text
from pleura.report import markdown_table
from pleura.viz import save_figure

__all__ = ["SCHEMES", "ExamResult", "Zone", "ZoneResult", "assign_zones", "score_exam", "write_exam"]


@dataclass(frozen=True)
class Zone:
    """A chest zone of a scheme: its name (``R3``), side, region and level."""

    name: str
    side: str  # "right" or "left"
    region: str  # "anterior", "lateral" or "posterior"
    level: str  # "upper", "middle" or "lower"

    @property
    def label(self) -> str:
        """``right anterior upper``: the zone in words."""
        return f"{self.side} {self.region} {self.level}"


def _scheme(levels: Sequence[tuple[str, str]]) -> tuple[Zone, ...]:
    return tuple(
        Zone(f"{s[0].upper()}{k}", s, region, level)
        for s in ("right", "left")
        for k, (region, level) in enumerate(levels, start=1)
    )


_ANT_LAT = (("anterior", "upper"), ("anterior", "lower"), ("lateral", "upper"), ("lateral", "lower"))
SCHEMES: dict[str, tuple[Zone, ...]] = {
    "14": _scheme((*_ANT_LAT, ("posterior", "upper"), ("posterior", "middle"), ("posterior", "lower"))),
    "12": _scheme((*_ANT_LAT, ("posterior", "upper"), ("posterior", "lower"))),
}
_TOKEN = re.compile(r"(?<![A-Za-z0-9])([RL])0*(\d{1,2})(?![0-9])", re.IGNORECASE)


@dataclass
class ZoneResult:
    """One zone of the exam: its clip and score, or why it has none (``status``)."""

    zone: str
    label: str  # the zone in words
    status: str  # scored, missing, duplicate, failed, not scored (no pleural line)
    file: str = ""  # the clip (files, for a duplicate)
    score: int | None = None
    rule: str = ""  # the severity rule that fired, or the problem


@dataclass
class ExamResult:
    """The exam: every zone of the scheme, the total over the scored zones, and the problems found."""

    scheme: str
    zones: list[ZoneResult]
    problems: list[str] = field(default_factory=list)  # one line each, naming the file

    @property
    def scored(self) -> list[ZoneResult]:
        """The zones with a score."""
        return [z for z in self.zones if z.score is not None]

    @property
    def total(self) -> int | None:
        """Sum of the scored zones' scores; ``None`` when no zone was scored."""
        return sum(z.score for z in self.scored) if self.scored else None  # type: ignore[misc]

    @property
    def max_total(self) -> int:
        """The scheme's highest total (3 per zone)."""
        return 3 * len(self.zones)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: scheme, total, zones scored, every zone, the problems."""
        return {
            "scheme": self.scheme,
            "total": self.total,
            "max_total": self.max_total,
            "zones_scored": len(self.scored),
            "zones_total": len(self.zones),
            "complete": len(self.scored) == len(self.zones),
            "zones": [asdict(z) for z in self.zones],
            "problems": list(self.problems),
        }


def read_zone_map(path: str | Path) -> dict[str, str]:
    """A mapping file: a JSON object of file name (or a path relative to the exam folder) to zone name.

    Raises:
        ValueError: the file cannot be read, is not JSON, or is not an object of strings (one line naming it).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the zone map ({getattr(e, 'strerror', None) or e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the zone map is not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f'{path}: the zone map should be a JSON object of file name to zone, e.g. {{"a.mp4": "R1"}}')
    return data


def assign_zones(
    files: Sequence[Path], scheme: str = "14", zone_map: dict[str, str] | None = None, root: Path | None = None
) -> tuple[dict[str, list[Path]], list[tuple[Path, str]]]:
    """Which file is which zone: ``{zone: [files]}`` (more than one file: a duplicate) and the files that name
    no zone of the scheme, each with its problem.

    Args:
        files: the exam's clips.
        scheme: ``"14"`` or ``"12"``.
        zone_map: file name (or path relative to ``root``) -> zone; ``None``: zones come from the file names.
        root: the exam folder, for relative names in ``zone_map``.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown zone scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    names = {z.name for z in SCHEMES[scheme]}
    zones: dict[str, list[Path]] = {}
    unknown: list[tuple[Path, str]] = []
    for f in files:
        if zone_map is not None:
            rel = f.relative_to(root).as_posix() if root is not None and f.is_relative_to(root) else f.name
            given = zone_map.get(rel, zone_map.get(f.name))
            if given is None:
                unknown.append((f, f"{f}: not in the zone map"))
                continue
            tokens = [given.strip().upper()]
        else:
            tokens = sorted({f"{m.group(1).upper()}{int(m.group(2))}" for m in _TOKEN.finditer(f.stem)})
        if len(tokens) != 1:
            n = len(SCHEMES[scheme]) // 2
            what = f"no zone name (R1..R{n}, L1..L{n})" if not tokens else f"two zone names ({', '.join(tokens)})"
            unknown.append((f, f"{f}: the file name holds {what}"))
        elif tokens[0] not in names:
            unknown.append((f, f"{f}: unknown zone {tokens[0]!r} for the {scheme}-zone scheme"))
        else:
            zones.setdefault(tokens[0], []).append(f)
    return zones, unknown


#: scores one clip: (score or None, the rule in words); raises ReadError / ValueError for a bad clip
ClipScorer = Callable[[Path], tuple[int | None, str]]


def score_exam(
    files: Sequence[Path],
    score_clip: ClipScorer,
    scheme: str = "14",
    zone_map: dict[str, str] | None = None,
    root: Path | None = None,
    progress: Callable[[Path, ZoneResult], None] | None = None,
) -> ExamResult:
    """Score every zone of an exam; bad input is listed in ``problems`` and the rest is scored.

    Args:
        files: the exam's clips.
        score_clip: scores one clip (``Predictor`` in ``pleura score``); its ``ValueError`` (``ReadError``) or
            ``OSError`` marks the zone failed.
        scheme: ``"14"`` or ``"12"`` zones.
        zone_map: file name -> zone, instead of zone names in the file names.
        root: the exam folder (relative names in ``zone_map``).
        progress: called after each clip with its zone's result.
    """
    zones, unknown = assign_zones(files, scheme, zone_map, root)
    problems = [p for _, p in unknown]
    results: list[ZoneResult] = []
    for zone in SCHEMES[scheme]:
        clips = zones.get(zone.name, [])
        if not clips:
            results.append(ZoneResult(zone.name, zone.label, "missing", rule="no clip for this zone"))
            problems.append(f"{zone.name} ({zone.label}): missing, no clip names this zone")
            continue
        if len(clips) > 1:
            listed = ", ".join(printable(c) for c in clips)
            results.append(ZoneResult(zone.name, zone.label, "duplicate", listed, rule=f"{len(clips)} clips"))
            problems.append(f"{zone.name}: duplicate zone, {len(clips)} clips ({listed}); none is scored")
            continue
        clip = clips[0]
        try:
            score, rule = score_clip(clip)
        except (ValueError, OSError) as e:
            line = str(e) if str(clip) in str(e) else f"{clip}: {e}"
            result = ZoneResult(zone.name, zone.label, "failed", printable(clip), rule=printable(line))
            problems.append(f"{zone.name}: {line}")
        else:
            status = "scored" if score is not None else "not scored"
            result = ZoneResult(zone.name, zone.label, status, printable(clip), score, rule)
            if score is None:
                problems.append(f"{zone.name}: {clip}: {rule}")
        results.append(result)
        if progress is not None:
            progress(clip, result)
    return ExamResult(scheme, results, [printable(p) for p in problems])


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a ``|`` (in a file name) escaped, line breaks as spaces."""
    return " ".join(text.replace("|", "\\|").split())


def exam_markdown(result: ExamResult, title: str = "") -> str:
    """The exam as Markdown: the total, the per-zone table and the problems."""
    n, total = len(result.scored), result.total
    head = f"# Lung-ultrasound severity score{f': {title}' if title else ''}\n"
    if total is None:
        summary = "No zone could be scored."
    else:
        part = "" if n == len(result.zones) else f" (incomplete: only {n} of {len(result.zones)} zones scored)"
        summary = (
            f"Total **{total}** of {3 * n} over {n} scored zones; the full exam totals 0-{result.max_total}{part}."
        )
    rows = [
        [z.zone, z.label, z.score if z.score is not None else "-", z.status, _cell(z.file), _cell(z.rule)]
        for z in result.zones
    ]
    lines = [
        head,
        f"{result.scheme}-zone scheme; severity 0-3 per zone after Soldati et al. 2020 (rules in docs/biomarkers.md).",
        "",
        summary,
        "",
        markdown_table(["zone", "where", "score", "status", "clip", "rule"], rows),
        "",
    ]
    if result.problems:
        lines += ["## Problems", "", *[f"- {p}" for p in result.problems], ""]
    lines += ["![chest map](chest_map.png)", ""]
    return "\n".join(lines)


def _csv(result: ExamResult) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["zone", "label", "status", "file", "score", "rule"])
    writer.writeheader()
    writer.writerows(asdict(z) for z in result.zones)
    return buf.getvalue()


_COLOURS = {0: "#2a9d8f", 1: "#e9c46a", 2: "#f4a261", 3: "#e63946"}  # score -> colour on the chest map


def chest_map(result: ExamResult, path: str | Path) -> Path:
    """A chest map: front and back views of a simple torso with each zone coloured by its score (grey: no
    score, hatched: a problem), its name and score written in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Patch, Rectangle

    by_name = {z.zone: z for z in result.zones}
    zones = SCHEMES[result.scheme]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 5.0))
    for ax, view in zip(axes, ("front", "back"), strict=True):
        ax.set_xlim(-5, 5)
        ax.set_ylim(-0.6, 10.6)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.add_patch(FancyBboxPatch((-4, 0), 8, 9, boxstyle="round,pad=0.1,rounding_size=1.2", fc="#f4f1ea", ec="k"))
        ax.add_patch(FancyBboxPatch((-0.9, 9.1), 1.8, 1.2, boxstyle="round,pad=0.05", fc="#f4f1ea", ec="k"))
        ax.set_title(f"{view} (patient's right on the {'left' if view == 'front' else 'right'})", fontsize=9)
        for zone in zones:
            if (zone.region == "posterior") != (view == "back"):
                continue
            levels = [z.level for z in zones if z.region == zone.region and z.side == zone.side]
            k, n = levels.index(zone.level), len(levels)
            height = 8.0 / n
            y = 8.4 - (k + 1) * height
            outward = 1 if (zone.side == "right") == (view == "back") else -1  # the zone's side of the picture
            if zone.region == "lateral":
                x0 = 2.4 if outward > 0 else -3.8
                width = 1.4
            else:
                x0 = 0.2 if outward > 0 else -2.3
                width = 2.1
            z = by_name[zone.name]
            colour = _COLOURS.get(z.score, "#bdbdbd") if z.score is not None else "#bdbdbd"
            hatch = None if z.status == "scored" else "///"
            ax.add_patch(Rectangle((x0, y + 0.1), width, height - 0.2, fc=colour, ec="k", hatch=hatch, lw=0.8))
            text = f"{z.zone}\n{z.score if z.score is not None else z.status}"
            box = {"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.85, "lw": 0} if hatch else None
            size = 7.5 if zone.region != "lateral" or z.score is not None else 6
            ax.text(x0 + width / 2, y + height / 2, text, ha="center", va="center", fontsize=size, bbox=box)
    total = result.total
    n = len(result.scored)
    title = "no zone scored" if total is None else f"total {total} over {n} of {len(result.zones)} zones"
    fig.suptitle(f"Lung-ultrasound severity (Soldati 0-3), {result.scheme}-zone scheme: {title}", fontsize=10)
    handles = [Patch(fc=c, ec="k", label=f"score {s}") for s, c in _COLOURS.items()]
    handles.append(Patch(fc="#bdbdbd", ec="k", hatch="///", label="no score"))
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return save_figure(fig, path, facecolor="white")


def write_exam(result: ExamResult, out: str | Path, title: str = "") -> list[Path]:
    """Write ``score.json``, ``score.csv``, ``score.md`` and ``chest_map.png`` into ``out`` (each atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_text(out / "score.json", json.dumps(finite({"title": title, **result.to_dict()}), indent=2) + "\n"),
        write_text(out / "score.csv", _csv(result)),
        write_text(out / "score.md", exam_markdown(result, title)),
        chest_map(result, out / "chest_map.png"),
    ]
