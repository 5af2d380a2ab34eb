"""Several services in one process (``routes:``, docs/interface.md, "Configuration"): one more listener per route on
``listen.host``, each with its own upstream and policy, sharing the credentials and limits. Runs the real
:func:`proxy.app.serve` (the CLI's code path) in a thread against moto with signature checking on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy.app import ROUTES, SHARED
from proxy.local import ACCOUNT_ID, DEMO_SECRET, DEMO_SECRET_VALUE, REGION
from tests.integration.conftest import PASS_ROLE
from tests.serving import Served
from tests.support import legacy_client, poll, proxy_config, sdk_client


def route_client(service: str, port: int) -> Any:
    return sdk_client(f"http://127.0.0.1:{port}", service=service)


@pytest.fixture
def serving(emulator: Any, demo_env: None, passthrough_role: str) -> Iterator[Served]:
    upstream = {"region": REGION, "endpoint_url": emulator.url, "ca_bundle": emulator.ca_file}
    cfg = proxy_config(
        emulator.server,
        credentials={"role_arn": passthrough_role, "role_session_name": "routes"},
        policy={"allow_actions": ["GetSecretValue"]},
        routes=[
            {"port": 0, "upstream": {**upstream, "service": "sts"}, "policy": {"allow_actions": ["GetCallerIdentity"]}},
            {"port": 0, "upstream": {**upstream, "service": "sns"}, "policy": {"allow_actions": ["ListTopics"]}},
        ],
    )
    with Served(cfg) as server:
        yield server


def test_each_route_serves_its_own_service_with_its_own_policy(
    serving: Served, emulator: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    main, sts_port, sns_port = serving.port, *serving.route_ports
    assert len({main, sts_port, sns_port}) == 3
    # the single-service part: Secrets Manager, Query and SDK callers alike
    legacy = legacy_client(f"http://127.0.0.1:{main}", str(tmp_path_factory.getbasetemp()))
    assert legacy.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == DEMO_SECRET_VALUE
    assert (
        route_client("secretsmanager", main).get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == DEMO_SECRET_VALUE
    )
    with pytest.raises(ClientError) as denied:
        legacy.describe_secret(SecretId=DEMO_SECRET)  # the main policy allows GetSecretValue only
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    # route 0: STS, its own policy
    identity = route_client("sts", sts_port).get_caller_identity()
    assert identity["Arn"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{PASS_ROLE}/routes"
    # route 1: SNS with its own policy
    arn = emulator.direct("sns").create_topic(Name=f"routes-{uuid.uuid4().hex[:8]}")["TopicArn"]
    sns = route_client("sns", sns_port)
    assert {"TopicArn": arn} in sns.list_topics()["Topics"]
    with pytest.raises(ClientError) as denied:
        sns.get_topic_attributes(TopicArn=arn)  # a read, but not in this route's allow_actions
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    # a listener serves only its own service
    with pytest.raises(ClientError) as wrong:
        route_client("sts", main).get_caller_identity()
    assert wrong.value.response["Error"]["Code"] == "InvalidAction"


def test_routes_share_the_credentials_and_the_admin_endpoints_stay_on_the_main_listener(serving: Served) -> None:
    import urllib.error
    import urllib.request

    shared = serving.app[SHARED]
    assert all(route.app[SHARED] is shared for route in serving.app[ROUTES])

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{serving.port}/readyz", timeout=10) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError:
            return False

    poll(ready, 30, "/readyz on the main listener")
    with pytest.raises(urllib.error.HTTPError) as not_here:
        urllib.request.urlopen(f"http://127.0.0.1:{serving.route_ports[0]}/readyz", timeout=10)
    assert not_here.value.code == 404


def test_the_readme_two_service_config_checks(tmp_path: Any) -> None:
    """The two-service example of docs/configuration.md is a valid config (check-config builds every route's
    service)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from proxy.local import clean_aws_environ

    root = Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```yaml\n(.*?)```", (root / "docs" / "configuration.md").read_text(), re.S)
    example = next(b for b in blocks if "routes:" in b)
    path = tmp_path / "two-service.yaml"
    path.write_text(example)
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_aws_environ(),
        cwd=root,
    )
    assert out.returncode == 0, out.stderr
    assert "service: sns" in out.stdout and "port: 8979" in out.stdout
