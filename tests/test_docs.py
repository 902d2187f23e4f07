"""The documentation: the API pages build with pdoc, the README stays a short guide, and no relative link is broken."""

from __future__ import annotations

import html
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 260


def _api_modules() -> list[str]:
    """What ``make docs`` passes to pdoc: every module file of the package (pdoc follows only the submodules
    that a package's ``__all__`` lists), ``__main__`` excepted since importing it runs the CLI."""
    files = sorted(
        p for p in (ROOT / "pleura").rglob("*.py") if p.name != "__main__.py" and "__pycache__" not in p.parts
    )
    return [str(p.relative_to(ROOT)) for p in files]


@pytest.fixture(scope="module")
def api_docs(tmp_path_factory) -> Path:
    pytest.importorskip("pdoc", reason="pdoc is in the dev extra: pip install -e '.[dev]'")
    out = tmp_path_factory.mktemp("api")
    cmd = [sys.executable, "-W", "ignore:The module specification:UserWarning", "-m", "pdoc", "-d", "google"]
    proc = subprocess.run(
        [*cmd, "-o", str(out), *_api_modules()], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, f"pdoc failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _page(root: Path, module: str) -> Path:
    return root / (module.replace(".", "/") + ".html")


def _text(page: Path) -> str:
    """The page's visible text: tags dropped, entities decoded, whitespace collapsed."""
    raw = re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8"))
    return " ".join(html.unescape(raw).split())


@pytest.mark.parametrize("module", ["pleura", "pleura.models", "pleura.infer", "pleura.data"])
def test_api_page_exists(api_docs, module):
    page = _page(api_docs, module)
    assert page.is_file(), f"no API page for {module} ({page.relative_to(api_docs)} missing)"
    assert module in _text(page)


def test_api_page_of_predictor_holds_its_docstring(api_docs):
    import pleura

    predictor = pleura.Predictor
    first = inspect.getdoc(predictor).splitlines()[0]
    first = " ".join(first.replace("`", "").split())
    module = inspect.getmodule(predictor).__name__  # wherever it lives today
    page = _page(api_docs, module)
    assert page.is_file(), f"no API page for {module}, where pleura.Predictor lives"
    text = _text(page).replace(" (", "(").replace(" )", ")")
    assert "Predictor" in text
    assert first.replace(" (", "(").replace(" )", ")") in text, f"{first!r} not on {page.name}"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines; keep it a guide (at most {MAX_README_LINES}), move detail to docs/"
    )


# --- relative links -------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _markdown_files() -> list[Path]:
    docs = ROOT / "docs"
    return [README, *sorted(p for p in docs.rglob("*.md") if "api" not in p.relative_to(docs).parts[:1])]


def _strip_code(text: str) -> str:
    return _CODE.sub("", _FENCE.sub("", text))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    return _LINK.findall(_strip_code(path.read_text(encoding="utf-8")))


def test_markdown_files_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in _markdown_files()}
    assert {"README.md", "docs/index.md", "docs/reliability.md"} <= names


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # http:, https:, mailto: ...
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor.lower() not in _anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: " + "; ".join(broken)
