"""AWS's own caching client for Python (``aws-secretsmanager-caching``) through the proxy (issue 15): it calls
``DescribeSecret`` before ``GetSecretValue``, so the policy for it names both (docs/configuration.md, "Policy and
AWS's caching clients"); with ``GetSecretValue`` alone it fails on ``DescribeSecret`` with the code AWS uses."""

from __future__ import annotations

from typing import Any

import pytest
from aws_secretsmanager_caching import SecretCache
from botocore.exceptions import ClientError

from proxy.local import DEMO_SECRET, DEMO_SECRET_VALUE
from tests.support import sdk_client


def test_the_caching_client_reads_through_the_documented_policy(start_proxy: Any) -> None:
    proxy = start_proxy(policy={"allow_actions": ["GetSecretValue", "DescribeSecret"], "allow_secrets": ["demo/*"]})
    cache = SecretCache(client=sdk_client(proxy.url))
    assert cache.get_secret_string(DEMO_SECRET) == DEMO_SECRET_VALUE
    assert cache.get_secret_string(DEMO_SECRET) == DEMO_SECRET_VALUE  # from its own cache now


def test_without_describe_secret_it_fails_on_describe_secret(start_proxy: Any) -> None:
    proxy = start_proxy(policy={"allow_actions": ["GetSecretValue"]})
    with pytest.raises(ClientError) as denied:
        SecretCache(client=sdk_client(proxy.url)).get_secret_string(DEMO_SECRET)
    assert denied.value.operation_name == "DescribeSecret"
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "DescribeSecret" in denied.value.response["Error"]["Message"]
