"""The documentation holds together: links land, and the tests it cites exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page``."""
    headings = re.findall(r"^#+ (.*)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_in_the_readme_and_docs_lands_on_a_file_and_heading():
    """A link to a moved file or a renamed heading fails here, not in a reader's browser."""
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_every_test_docs_guarantees_cites_exists():
    """docs/guarantees.md names the tests that prove each guarantee as ``path::test``; each one is there."""
    tests = ROOT / "tests"
    defined = {
        str(path.relative_to(tests)): {node.name for node in ast.walk(ast.parse(path.read_text()))
                                       if isinstance(node, ast.FunctionDef)}
        for path in tests.rglob("test_*.py")
    }
    cited, missing, current = 0, [], None
    for path, name in re.findall(
        r"`((?:\w+/)*test_\w+\.py)?(?:::(\w+))?`", (ROOT / "docs" / "guarantees.md").read_text()
    ):
        current = path or current
        if path and path not in defined:
            missing.append(path)
        if name:
            cited += 1
            if name not in defined.get(current or "", set()):
                missing.append(f"{current}::{name}")
    assert cited > 20 and not missing, missing
