"""The shape of proxy/ that docs/architecture.md describes: no module imports another that imports it back
(directly or through others, at module level or inside a function), and the page names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "proxy"


def import_graph() -> dict[str, set[str]]:
    """Module name -> the package modules it imports (``from . import x``, ``from .x import y``, ``proxy.x``)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                elif node.module and node.module.startswith("proxy."):
                    names = [node.module.split(".")[1]]
                else:
                    continue
                deps.update(n for n in names if n in modules and n != "__init__")
        graph[path.stem] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep, stack + [dep])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


DOCS = ROOT / "docs"


def headings(page: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")}


def test_architecture_page_lists_every_module() -> None:
    page = (DOCS / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", page, re.M))
    assert listed == {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_every_reference_to_the_interface_names_a_heading_it_has() -> None:
    """Code, tests and ``--help`` cite the interface by file and heading; each cited heading exists."""
    known = headings(DOCS / "interface.md")
    cited: dict[str, set[str]] = {}
    for path in [*PACKAGE.glob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        text = re.sub(r"\s*\n\s*#?\s*", " ", path.read_text())  # a citation may wrap across lines
        for quoted in re.findall(r'docs/interface\.md, ((?:"[^"]+"(?:,| and| to)? ?)+)', text):
            for heading in re.findall(r'"([^"]+)"', quoted):
                cited.setdefault(heading, set()).add(path.name)
    assert cited, "no citations found: the pattern is wrong"
    missing = {h: sorted(files) for h, files in cited.items() if h not in known}
    assert not missing, f"cited headings docs/interface.md does not have: {missing}"
    assert not [p.name for p in PACKAGE.glob("*.py") if re.search(r"\bSPEC\b", p.read_text())]
