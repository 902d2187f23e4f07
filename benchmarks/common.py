"""What every benchmark script shares: the machine line, and saving its result with a printed table.

The scripts run as ``python benchmarks/bench_x.py``, so this folder is on ``sys.path``: ``from common import ...``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pleura.atomic import write_json
from pleura.report import markdown_table


def machine() -> str:
    """The machine a result was measured on, as every result JSON records it."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def save(out: Path, result: dict[str, Any], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write ``result`` to ``out`` (atomic JSON) and print ``rows`` as a Markdown table under ``header``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print("\n" + markdown_table(header, rows))
