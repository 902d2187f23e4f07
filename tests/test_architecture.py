"""pleura's imports only point down the layers: the import-linter contracts in ``pyproject.toml`` hold.

The layers, top to bottom: cli, experiments, infer, evaluate, train, simulate, postprocess | viz | metrics,
data | models, labels | atomic | parallel | device | report. Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from importlinter.cli import lint_imports
except ImportError:  # a dev dependency: a missing guard is a failure, not a skip
    pytest.fail("import-linter is not installed; install the dev extra: pip install -e '.[dev]'", pytrace=False)

ROOT = Path(__file__).resolve().parents[1]


def test_imports_only_point_down(capsys: pytest.CaptureFixture[str]) -> None:
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, f"an import runs back up the layers (fix the import, or move the code down):\n{report}"


def test_an_upward_import_inside_a_function_breaks_the_contract(tmp_path: Path) -> None:
    """The guard itself: a copy of the package with one function-level import from models up into train fails."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "pleura", tmp_path / "pleura", ignore=shutil.ignore_patterns("*.safetensors", "__pycache__"))
    (tmp_path / "pleura" / "models" / "upward.py").write_text(
        "def f():\n    from pleura.train.loop import LoopConfig\n\n    return LoopConfig\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    lint = Path(sys.executable).parent / "lint-imports"  # import-linter's command, beside this interpreter
    out = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out.stdout
    assert "pleura.models.upward -> pleura.train.loop" in out.stdout


def test_tests_mirror_the_package() -> None:
    """Every sub-package of pleura has a test folder of the same name, and every test folder names a sub-package
    (a module's tests go in ``tests/<package>/test_<module>.py``; cross-cutting ones, like the CLI, at the top)."""
    packages = {p.parent.name for p in (ROOT / "pleura").glob("*/__init__.py")} - {"pretrained"}
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert packages - folders == set(), f"sub-packages without a tests/ folder: {sorted(packages - folders)}"
    assert folders - packages == set(), f"tests/ folders that name no sub-package: {sorted(folders - packages)}"
