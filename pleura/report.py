"""Numbers and Markdown tables of every report pleura writes: one number formatter, one table writer.

    fmt(0.67123)                          # '0.671'
    fmt(0.67123, pm=0.1543)               # '0.671 ± 0.154'
    fmt(float("nan"), pm=0.1)             # 'n/a': a missing value (None or NaN) is never printed as a number
    fmt(0.004, ".2e", pm=0.0)             # '4.00e-03 ± 0.00e+00'
    fmt(0.1234, "+.3f", pm=0.01)          # '+0.123 ± 0.010': the spread never carries a sign
    mean, std = mean_std([0.6, 0.8, None])
    print(markdown_table(["init", "accuracy"], [["dense", fmt(mean, pm=std)]]))

The reports (``eval-cls``, ``eval-seg``, ``eval-model``, the experiments) build their tables with these, so a
number reads the same everywhere: a value and its spread with one format spec, ``n/a`` where undefined.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["MISSING", "fmt", "markdown_table", "mean_std"]

MISSING = "n/a"  # what a table shows for an undefined value (None, or NaN such as a class absent from the data)


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, numbers.Real) and math.isnan(x))


def fmt(value: Any, spec: str = ".3f", pm: Any = None, missing: str = MISSING) -> str:
    """``value`` formatted with ``spec`` (a :func:`format` spec), followed by `` ± pm`` when a spread is given.

    Args:
        value: a number; ``None`` or NaN gives ``missing`` (with no spread).
        spec: format spec of the value and of the spread, e.g. ``".3f"``, ``".4f"``, ``".2e"``, ``".3g"``; a
            sign flag (``"+.3f"``) applies to the value only.
        pm: the spread (e.g. a standard deviation); left out when ``None`` or NaN.
        missing: the text of a missing value.
    """
    if _missing(value):
        return missing
    text = format(value, spec)
    if not _missing(pm):
        text += f" ± {format(pm, spec.replace('+', ''))}"
    return text


def mean_std(values: Iterable[Any]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of the finite values; ``None``, NaN and
    infinities are left out. ``(nan, nan)`` if no value is finite."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


_RULES = {None: "---", "l": ":---", "c": ":---:", "r": "---:"}


def markdown_table(
    header: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    align: Sequence[str | None] | None = None,
    padded_rule: bool = False,
) -> str:
    """A Markdown (GitHub) table: ``| a | b |`` lines under a ``|---|---|`` rule, without a final newline.

    Args:
        header: the column names.
        rows: the cells of each row, already text (numbers through :func:`fmt`); ``str()`` is applied.
        align: per column ``"l"``, ``"c"``, ``"r"`` or ``None`` (the default alignment).
        padded_rule: write the rule as ``| --- | --- |`` (the metric tables of ``eval-cls`` and ``eval-seg``)
            rather than ``|---|---|``; both render the same.

    Example:
        >>> print(markdown_table(["init", "accuracy"], [["dense", "0.671"]]))
        | init | accuracy |
        |---|---|
        | dense | 0.671 |
    """
    n = len(header)
    align = [None] * n if align is None else list(align)
    if len(align) != n or any(a not in _RULES for a in align):
        raise ValueError(f"align should hold one of 'l', 'c', 'r' or None per column ({n}), got {align!r}")
    rule = [_RULES[a] for a in align]
    rule_line = "| " + " | ".join(rule) + " |" if padded_rule else "|" + "|".join(rule) + "|"
    lines = ["| " + " | ".join(map(str, header)) + " |", rule_line]
    for i, row in enumerate(rows):
        if len(row) != n:
            raise ValueError(f"row {i} has {len(row)} cells but the header has {n} columns: {list(row)!r}")
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines)


def csv_text(rows: Sequence[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> str:
    """``rows`` as CSV text, the columns those of the first row (or ``fieldnames``); no rows and no names: ""."""
    import csv
    import io

    buf = io.StringIO()
    names = list(fieldnames) if fieldnames is not None else list(rows[0]) if rows else []
    if names:
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()
