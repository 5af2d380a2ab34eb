"""The docs say what the code does: the configuration reference (docs/configuration.md) lists exactly the keys
of the config dataclasses with their defaults (and config/proxy.yaml does too), the metrics table
(docs/operations.md) lists exactly what the registry exports, the commands CI runs are the README's, and every
relative link in README.md and docs/ points to a file (and heading) that exists."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, get_type_hints

import pytest
import yaml

from proxy.config import Config, to_plain
from proxy.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
LOCAL_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[local]' && .venv/bin/query-signing-proxy local"
# Written by other engineers in parallel (issue 14): links to them may dangle until they land. Remove each
# name once its file is in the repository; from then on a broken link to it fails like any other.
NOT_YET_WRITTEN: frozenset[str] = frozenset()


def config_defaults(cls: type[Any] = Config, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf key -> default (as plain YAML data) for the config dataclasses; lists of sections are leaves."""
    out: dict[str, Any] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(config_defaults(tp, key + "."))  # type: ignore[arg-type]
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out[key] = to_plain(default)
    return out


def section(doc: str, title: str) -> str:
    """The text under ``## title`` in ``doc`` (a path from the repository root), up to the next ``## ``."""
    text = (ROOT / doc).read_text()
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"no '## {title}' section in {doc}"
    return m.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def test_configuration_reference_lists_every_key_with_its_default() -> None:
    rows = table_rows(section("docs/configuration.md", "Configuration reference"))
    documented = {}
    for row in rows:
        key = row[0].strip("`")
        assert key not in documented, f"{key} twice"
        documented[key] = row[1]
    expected = config_defaults()
    assert set(documented) - set(expected) == set(), "documented in docs/configuration.md, not in the code"
    assert set(expected) - set(documented) == set(), "in the code, not documented in docs/configuration.md"
    for key, cell in documented.items():
        assert cell.startswith("`") and cell.endswith("`"), f"{key}: default {cell} not in backticks"
        assert yaml.safe_load(cell.strip("`")) == expected[key], f"{key}: the docs say {cell}, the code {expected[key]}"


def leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_config_file_lists_every_key_with_its_default() -> None:
    assert leaves(yaml.safe_load((ROOT / "config" / "proxy.yaml").read_text())) == config_defaults()


def test_metrics_table_lists_what_the_registry_exports() -> None:
    rows = table_rows(section("docs/operations.md", "Metrics"))
    documented = {row[0].strip("`"): row[1] for row in rows}
    exported = {}
    for family in Metrics.create().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = family.type
    assert documented == exported


def test_troubleshooting_covers_the_usual_failures() -> None:
    headings = re.findall(r"^## (.+)$", (DOCS / "troubleshooting.md").read_text(), re.M)
    for topic in ("SignatureDoesNotMatch", "ExpiredToken", "AccessDenied", "413", "414", "TLS"):
        assert any(topic in heading for heading in headings), f"no troubleshooting entry for {topic}"


def test_the_readme_commands_are_the_ones_ci_runs() -> None:
    assert LOCAL_COMMAND in section("README.md", "Quick start (no AWS account needed)")
    assert TEST_COMMAND in section("README.md", "Run the tests")
    assert TEST_COMMAND in (DOCS / "testing.md").read_text()
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


# --- links -------------------------------------------------------------------------------------------------

MARKDOWN = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lowercase, punctuation dropped (``-`` and ``_`` kept),
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", without_code_blocks(path.read_text()), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(without_code_blocks(path.read_text()))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: ...
    ]


def broken_links(doc: Path, root: Path = ROOT, pending: frozenset[str] = NOT_YET_WRITTEN) -> list[str]:
    """The relative links of ``doc`` whose file (or, in a Markdown file, heading) does not exist under
    ``root``, except links to the files named in ``pending`` (paths from ``root``)."""
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        name = resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)
        if not resolved.exists():
            if name not in pending:
                broken.append(f"{target} (no file {name})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {name})")
    return broken


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_that_exists(doc: Path) -> None:
    assert broken_links(doc) == []


def test_the_link_checker_catches_broken_links(tmp_path: Path) -> None:
    assert relative_links(ROOT / "README.md"), "no relative links found in the README"
    (tmp_path / "docs").mkdir()
    (tmp_path / "other.md").write_text("# Other\n\n## Two words: `x`\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "## Here\n\n[a](missing.md) [b](https://example.com/) [c](../other.md#two-words-x) [d](#here)\n"
        "[e](../other.md#nowhere) [f](#gone) [g](pending.md)\n```\n[h](in-a-code-block.md)\n```\n"
    )
    assert broken_links(page, tmp_path, frozenset({"docs/pending.md"})) == [
        "missing.md (no file docs/missing.md)",
        "../other.md#nowhere (no heading #nowhere in other.md)",
        "#gone (no heading #gone in docs/page.md)",
    ]
    assert slug("Several processes (`--workers`)") == "several-processes---workers"


def test_the_readme_links_every_docs_page() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(ROOT / "README.md")}
    for page in DOCS.glob("*.md"):
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"
