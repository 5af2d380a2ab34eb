"""The operator's README says what the code does: its configuration reference lists exactly the keys of the
config dataclasses with their defaults (and config/proxy.yaml does too), its metrics table lists exactly what
the registry exports, and the commands CI runs are the README's."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from proxy.config import Config, to_plain
from proxy.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
LOCAL_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[local]' && .venv/bin/query-signing-proxy local"


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


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert m, f"no '## {title}' section in the README"
    return m.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def test_configuration_reference_lists_every_key_with_its_default() -> None:
    rows = table_rows(section("Configuration reference"))
    documented = {}
    for row in rows:
        key = row[0].strip("`")
        assert key not in documented, f"{key} twice"
        documented[key] = row[1]
    expected = config_defaults()
    assert set(documented) == set(expected)
    for key, cell in documented.items():
        assert cell.startswith("`") and cell.endswith("`"), f"{key}: default {cell} not in backticks"
        assert yaml.safe_load(cell.strip("`")) == expected[key], f"{key}: README says {cell}, the code {expected[key]}"


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
    rows = table_rows(section("Metrics"))
    documented = {row[0].strip("`"): row[1] for row in rows}
    exported = {}
    for family in Metrics.create().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = family.type
    assert documented == exported


def test_troubleshooting_covers_the_usual_failures() -> None:
    headings = re.findall(r"^\*\*(.+?)\*\*", section("Troubleshooting"), re.M)
    for topic in ("SignatureDoesNotMatch", "ExpiredToken", "AccessDenied", "413", "414", "TLS"):
        assert any(topic in heading for heading in headings), f"no troubleshooting entry for {topic}"


def test_the_readme_commands_are_the_ones_ci_runs() -> None:
    assert LOCAL_COMMAND in section("Quick start (no AWS account needed)")
    assert TEST_COMMAND in section("Run the tests")
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()
