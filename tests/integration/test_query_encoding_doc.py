"""docs/query-encoding.md does what it says: every ``curl`` line of the page runs against the proxy (serving as
``query-signing-proxy local`` does: the demo secret, the read-only policy, ``allow_secrets: ["demo/*"]``, plus
an SNS ``routes:`` listener for the map) and answers the document the page shows below it; the legacy client
of docs/examples/query_client.py runs as the page runs it, and encodes lists, maps and structures the proxy
reads."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.etree import ElementTree

import pytest

from proxy.local import DEMO_SECRET, DEMO_SECRET_VALUE, REGION
from tests.serving import Served
from tests.support import proxy_config

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "query-encoding.md"
EXAMPLE = ROOT / "docs" / "examples" / "query_client.py"
DOC_PORTS = ("127.0.0.1:8977", "127.0.0.1:8979")  # the page's Secrets Manager and SNS listeners


def examples() -> list[tuple[str, str]]:
    """Each ``curl`` command of the page (continuation lines joined) with the root element of the ``xml`` block
    that follows it."""
    text = PAGE.read_text()
    found = []
    for m in re.finditer(r"```sh\n(.*?)```\s*```xml\n<(\w+)", text, re.S):
        command = m.group(1).replace("\\\n", " ").strip()
        if command.startswith("curl "):
            found.append((command, m.group(2)))
    return found


def test_the_page_has_the_promised_examples() -> None:
    commands = " ".join(command for command, _ in examples())
    assert "SecretIdList.member.1=" in commands  # a list
    assert "Filters.member.1.Key=" in commands  # a structure
    assert "Attributes.entry.1.key=" in commands  # a map
    assert {root for _, root in examples()} >= {"ErrorResponse", "BatchGetSecretValueResponse"}


@pytest.fixture
def served(emulator: Any, demo_env: None, passthrough_role: str) -> Iterator[Served]:
    upstream = {"region": REGION, "endpoint_url": emulator.url, "ca_bundle": emulator.ca_file}
    cfg = proxy_config(
        emulator.server,
        credentials={"role_arn": passthrough_role, "role_session_name": "docs"},
        policy={"allow_secrets": ["demo/*"]},  # as config/local.yaml: the read-only default
        routes=[
            {
                "port": 0,
                "upstream": {**upstream, "service": "sns"},
                "policy": {"allow_actions": ["CreateTopic", "GetTopicAttributes"]},
            }
        ],
    )
    with Served(cfg) as server:
        yield server


def on_test_ports(command: str, served: Served) -> str:
    for doc_port, port in zip(DOC_PORTS, [served.port, *served.route_ports], strict=True):
        command = command.replace(doc_port, f"127.0.0.1:{port}")
    return command


@pytest.mark.parametrize(("command", "root"), examples(), ids=[root for _, root in examples()])
def test_each_curl_line_answers_what_the_page_shows(served: Served, command: str, root: str) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl on this machine")
    argv = shlex.split(on_test_ports(command, served))
    out = subprocess.run([curl, *argv[1:]], capture_output=True, timeout=60, check=True)
    document = ElementTree.fromstring(out.stdout)
    assert document.tag.rsplit("}", 1)[-1] == root, out.stdout
    if root == "BatchGetSecretValueResponse":
        assert DEMO_SECRET_VALUE.encode() in out.stdout and b"ResourceNotFoundException" in out.stdout
    if root == "ErrorResponse":
        assert b"<Code>InvalidParameterException</Code>" in out.stdout


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("query_client", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_legacy_client_runs_as_the_page_runs_it(served: Served) -> None:
    command = on_test_ports("python3 docs/examples/query_client.py http://127.0.0.1:8977 demo/db-password", served)
    argv = shlex.split(command)
    out = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, f"{DEMO_SECRET_VALUE}\n"), out.stderr


def test_the_legacy_client_encodes_lists_maps_and_structures(served: Served, emulator: Any) -> None:
    qc = load_example()
    secrets = qc.QueryClient(f"http://127.0.0.1:{served.port}")
    found = secrets.call("ListSecrets", {"Filters": [{"Key": "name", "Values": ["demo/"]}]})  # structures in a list
    assert DEMO_SECRET in [qc.text(m, "Name") for m in qc.members(found, "SecretList")]
    batch = secrets.call("BatchGetSecretValue", {"SecretIdList": [DEMO_SECRET]})  # a list
    assert [qc.text(m, "SecretString") for m in qc.members(batch, "SecretValues")] == [DEMO_SECRET_VALUE]
    with pytest.raises(qc.QueryError) as refused:
        secrets.call("GetSecretValue", {"SecretId": ""})
    assert (refused.value.status, refused.value.code) == (400, "InvalidParameterException")
    with pytest.raises(qc.QueryError) as denied:
        secrets.call("DeleteSecret", {"SecretId": DEMO_SECRET})  # the read-only policy
    assert (denied.value.status, denied.value.code) == (403, "AccessDenied")
    sns = qc.QueryClient(f"http://127.0.0.1:{served.route_ports[0]}", version="2010-03-31")
    name = f"docs-{uuid.uuid4().hex[:8]}"
    made = sns.call("CreateTopic", {"Name": name, "Attributes": {"map": {"DisplayName": "Orders & more"}}})  # a map
    arn = qc.text(made, "TopicArn")
    assert emulator.direct("sns").get_topic_attributes(TopicArn=arn)["Attributes"]["DisplayName"] == "Orders & more"
