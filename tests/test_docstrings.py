"""Every module, and every public function, class and method of ``pleura``, has a docstring.

Public: a name not starting with ``_``. Checked are module-level functions and classes (those defined under a
module-level ``if`` or ``try`` included) and the methods of public classes; nested functions are not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pleura"
Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _module_level(body: list[ast.stmt]) -> Iterator[Definition]:
    """Functions and classes of a module body, looking into ``if``/``try`` blocks (conditional definitions)."""
    for node in body:
        if isinstance(node, Definition):
            yield node
        elif isinstance(node, ast.If):
            yield from _module_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            handlers = [s for h in node.handlers for s in h.body]
            yield from _module_level(node.body + handlers + node.orelse + node.finalbody)


def missing_docstrings(source: str, where: str) -> list[str]:
    """``where:line name`` of the module (``<module>``) and each public definition in ``source`` without a docstring."""
    tree = ast.parse(source)
    missing = [f"{where}:1 <module>"] if ast.get_docstring(tree) is None else []
    for node in _module_level(tree.body):
        if node.name.startswith("_"):
            continue
        if ast.get_docstring(node) is None:
            missing.append(f"{where}:{node.lineno} {node.name}")
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                public = isinstance(item, Definition) and not item.name.startswith("_")
                if public and not isinstance(item, ast.ClassDef) and ast.get_docstring(item) is None:
                    missing.append(f"{where}:{item.lineno} {node.name}.{item.name}")
    return missing


def test_every_public_definition_has_a_docstring() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, f"no Python files under {PACKAGE}"
    missing = [m for f in files for m in missing_docstrings(f.read_text(), str(f.relative_to(ROOT)))]
    assert not missing, "no docstring (add one, Google style; one line is enough for a simple one):\n" + "\n".join(
        missing
    )


def test_the_scan_finds_what_lacks_a_docstring() -> None:
    """The guard itself: each kind of omission is reported, and private names and nested functions are not."""
    source = '''
def f():
    def nested():
        pass

def _private():
    pass

class Public:
    """Documented."""

    def method(self):
        pass

    @property
    def prop(self):
        pass

    def _helper(self):
        pass

    def __init__(self):
        pass

class _Private:
    def method(self):
        pass

if True:
    class Conditional:
        pass
'''
    assert missing_docstrings(source, "m.py") == [
        "m.py:1 <module>",
        "m.py:2 f",
        "m.py:12 Public.method",
        "m.py:16 Public.prop",
        "m.py:30 Conditional",
    ]
    documented = '"""Module."""\n\n\ndef g():\n    """Documented."""\n'
    assert missing_docstrings(documented, "m.py") == []
