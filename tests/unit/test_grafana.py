"""The Grafana dashboard in deploy/grafana/: every PromQL expression in it parses (promql-parser) and names
only metrics the proxy exports, and it shows what docs/kubernetes.md says it shows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from proxy.metrics import Metrics

DASHBOARDS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "grafana").glob("*.json"))
# Grafana's own variables are not PromQL: give them values that parse.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}


def exported_names() -> set[str]:
    """The sample names the proxy's registry exposes, from the families' types (prometheus-client's naming)."""
    names = set()
    for family in Metrics.create().registry.collect():
        for suffix in SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets (rows included) and the query of each query variable."""
    found: list[str] = []

    def panels(items: list[dict[str, Any]]) -> None:
        for panel in items:
            found.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            panels(panel.get("panels", []))

    panels(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.+),\s*\w+\)\s*", query)
        found.append(m.group(1) if m else query)
    return found


def metric_names(expr: str) -> set[str]:
    for var, replacement in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, replacement)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_there_is_a_dashboard() -> None:
    assert DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_expression_names_only_exported_metrics(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    exprs = expressions(dashboard)
    assert exprs
    exported = exported_names()
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr}"
        assert names <= exported, f"{sorted(names - exported)} in {expr} are not exported by the proxy"
        used |= names
    # the panels docs/kubernetes.md lists
    for metric in (
        "query_signing_proxy_requests_total",
        "query_signing_proxy_request_duration_seconds_bucket",
        "query_signing_proxy_upstream_attempts_count",
        "query_signing_proxy_requests_in_flight",
        "query_signing_proxy_credential_expiry_seconds",
    ):
        assert metric in used, metric


def test_the_checker_rejects_a_metric_that_does_not_exist() -> None:
    assert metric_names('rate(query_signing_proxy_requests{code="OK"}[$__rate_interval])') == {
        "query_signing_proxy_requests"
    }
    assert "query_signing_proxy_requests" not in exported_names()  # counters are exported with _total
    with pytest.raises(ValueError):
        metric_names("sum(rate(query_signing_proxy_requests_total[5m])")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_use_the_datasource_variable(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert any(v["type"] == "datasource" and v["name"] == "datasource" for v in dashboard["templating"]["list"])
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
