"""Policy through the real listener against the emulator (signature checking on): allow_actions,
allow_secrets by name and ARN, and secrets selected by filter, whose answers are filtered (docs/interface.md, "Policy")."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import botocore.exceptions
import pytest

from tests.support import legacy_client, raw_request


@pytest.fixture
def prefix(emulator: Any) -> Iterator[str]:
    """Three secrets under a fresh prefix: ``<p>/app/a``, ``<p>/app/b`` (allowed) and ``<p>/other/c``."""
    p = f"pol-{uuid.uuid4().hex[:8]}"
    direct = emulator.direct()
    for name in ("app/a", "app/b", "other/c"):
        direct.create_secret(Name=f"{p}/{name}", SecretString=f"value-of-{p}/{name}")
    yield p
    for name in ("app/a", "app/b", "other/c"):
        direct.delete_secret(SecretId=f"{p}/{name}", ForceDeleteWithoutRecovery=True)


def client(start_proxy: Any, tmp_path: Any, **policy: Any) -> tuple[Any, Any]:
    proxy = start_proxy(policy=policy)
    return proxy, legacy_client(proxy.url, str(tmp_path))


def code_of(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_list_secrets_shows_only_allowed_secrets(start_proxy: Any, tmp_path: Any, prefix: str) -> None:
    _, app = client(start_proxy, tmp_path, allow_secrets=[f"{prefix}/app/*"])
    names = sorted(s["Name"] for s in app.list_secrets(MaxResults=100)["SecretList"])
    assert names == [f"{prefix}/app/a", f"{prefix}/app/b"]  # not other/c, not demo/db-password
    filtered = app.list_secrets(Filters=[{"Key": "name", "Values": [prefix]}])["SecretList"]
    assert sorted(s["Name"] for s in filtered) == [f"{prefix}/app/a", f"{prefix}/app/b"]


def test_list_secrets_without_allow_secrets_shows_all(start_proxy: Any, tmp_path: Any, prefix: str) -> None:
    _, app = client(start_proxy, tmp_path)
    filtered = app.list_secrets(Filters=[{"Key": "name", "Values": [prefix]}])["SecretList"]
    assert len(filtered) == 3


def test_batch_get_by_filter_returns_only_allowed_values(start_proxy: Any, tmp_path: Any, prefix: str) -> None:
    proxy, app = client(start_proxy, tmp_path, allow_secrets=[f"{prefix}/app/*"])
    out = app.batch_get_secret_value(Filters=[{"Key": "name", "Values": [prefix]}])
    assert sorted(v["SecretString"] for v in out["SecretValues"]) == [
        f"value-of-{prefix}/app/a",
        f"value-of-{prefix}/app/b",
    ]
    raw = raw_request(
        proxy.port,
        "GET",
        f"/?Action=BatchGetSecretValue&Filters.member.1.Key=name&Filters.member.1.Values.member.1={prefix}",
        headers={"Host": "localhost"},
    )
    assert raw.status == 200 and f"{prefix}/app/a".encode() in raw.body
    assert b"other" not in raw.body


def test_batch_get_by_list_needs_every_secret_allowed(start_proxy: Any, tmp_path: Any, prefix: str) -> None:
    _, app = client(start_proxy, tmp_path, allow_secrets=[f"{prefix}/app/*"])
    ok = app.batch_get_secret_value(SecretIdList=[f"{prefix}/app/a", f"{prefix}/app/b"])
    assert len(ok["SecretValues"]) == 2
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        app.batch_get_secret_value(SecretIdList=[f"{prefix}/app/a", f"{prefix}/other/c"])
    assert code_of(exc) == "AccessDenied"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_secret_by_name_and_by_arn(start_proxy: Any, tmp_path: Any, emulator: Any, prefix: str) -> None:
    _, app = client(start_proxy, tmp_path, allow_secrets=[f"{prefix}/app/*"])
    direct = emulator.direct()
    allowed_arn = direct.describe_secret(SecretId=f"{prefix}/app/a")["ARN"]
    other_arn = direct.describe_secret(SecretId=f"{prefix}/other/c")["ARN"]
    assert app.get_secret_value(SecretId=allowed_arn)["SecretString"] == f"value-of-{prefix}/app/a"
    for denied in (f"{prefix}/other/c", other_arn, f"{prefix}/app", f"{prefix}/apps/x"):
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            app.get_secret_value(SecretId=denied)
        assert code_of(exc) == "AccessDenied"


def test_default_policy_is_read_only(start_proxy: Any, tmp_path: Any, emulator: Any, prefix: str) -> None:
    _, app = client(start_proxy, tmp_path)
    assert app.describe_secret(SecretId=f"{prefix}/app/a")["Name"] == f"{prefix}/app/a"
    for call in (
        lambda: app.put_secret_value(SecretId=f"{prefix}/app/a", SecretString="overwritten"),
        lambda: app.delete_secret(SecretId=f"{prefix}/app/a"),
        lambda: app.create_secret(Name=f"{prefix}/app/new", SecretString="x"),
        lambda: app.tag_resource(SecretId=f"{prefix}/app/a", Tags=[{"Key": "k", "Value": "v"}]),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            call()
        assert code_of(exc) == "AccessDenied"
    value = emulator.direct().get_secret_value(SecretId=f"{prefix}/app/a")["SecretString"]
    assert value == f"value-of-{prefix}/app/a"  # nothing reached the emulator


def test_named_actions(start_proxy: Any, tmp_path: Any, prefix: str) -> None:
    _, app = client(start_proxy, tmp_path, allow_actions=["GetSecretValue", "PutSecretValue"])
    app.put_secret_value(SecretId=f"{prefix}/app/a", SecretString="new")
    assert app.get_secret_value(SecretId=f"{prefix}/app/a")["SecretString"] == "new"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        app.describe_secret(SecretId=f"{prefix}/app/a")
    assert code_of(exc) == "AccessDenied"


def test_64_kib_secret_string_by_post_with_the_default_limits(start_proxy: Any, tmp_path: Any, prefix: str) -> None:
    """A SecretString of Secrets Manager's maximum (65536 bytes) travels by form POST with the defaults,
    even with characters that percent-encode to three bytes each."""
    _, app = client(start_proxy, tmp_path, allow_actions=["*"])
    value = ("a/+=&%é" * 10000)[: 65536 // 2]  # é is two bytes in UTF-8: 65536 - a few bytes in all
    value = value + "x" * (65536 - len(value.encode()))
    assert len(value.encode()) == 65536
    app.put_secret_value(SecretId=f"{prefix}/app/a", SecretString=value)
    assert app.get_secret_value(SecretId=f"{prefix}/app/a")["SecretString"] == value
