"""Logs (docs/interface.md, "Logs and metrics") with DEBUG on for the proxy's, botocore's and aiohttp's loggers, through real traffic
against the emulator (role assumption, signature checking on): one JSON access line per request, and no
secret access key, session token, ``Signature=`` value, caller token or secret value anywhere; access key
ids appear masked at most."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from proxy import logs
from proxy.app import SHARED
from tests.checks import ACCESS_LINE_KEYS
from tests.support import legacy_client, poll, raw_request

TOKEN_HEADER = "X-Proxy-Token"
LOGGERS = (
    "proxy",
    "proxy.access",
    "botocore",
    "botocore.auth",
    "botocore.endpoint",
    "botocore.parsers",
    "urllib3",
    "aiohttp",
    "aiohttp.client",
    "aiohttp.server",
    "aiohttp.access",
    "aiohttp.web",
    "aiohttp.internal",
)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The proxy's own logging set up at debug on a buffer, every library logger forced to DEBUG too."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in LOGGERS}
    stream = io.StringIO()
    logs.setup("debug", stream)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def with_token(client: Any, token: str) -> Any:
    def add(request: Any, **kwargs: Any) -> None:
        request.headers[TOKEN_HEADER] = token

    client.meta.events.register_first("before-sign.*.*", add)
    return client


def test_debug_logs_hold_no_credentials_signatures_tokens_or_secret_values(
    captured: io.StringIO, start_proxy: Any, emulator: Any, tmp_path: Path
) -> None:
    token = f"caller-token-{uuid.uuid4().hex}"
    wrong_token = f"wrong-token-{uuid.uuid4().hex}"
    (tmp_path / "token").write_text(token)
    value = f"secret-value-{uuid.uuid4().hex}"
    new_value = f"rotated-value-{uuid.uuid4().hex}"
    binary = f"binary-{uuid.uuid4().hex}".encode()
    name = f"logs/{uuid.uuid4().hex[:8]}"
    proxy = start_proxy(
        policy={"allow_actions": ["*"], "token_header": TOKEN_HEADER, "token_file": str(tmp_path / "token")}
    )
    app = legacy_client(proxy.url, str(tmp_path))
    client = with_token(app, token)

    client.create_secret(Name=name, SecretString=value)
    assert client.get_secret_value(SecretId=name)["SecretString"] == value
    client.put_secret_value(SecretId=name, SecretString=new_value)
    client.put_secret_value(SecretId=name, SecretBinary=binary)
    assert client.get_secret_value(SecretId=name)["SecretBinary"] == binary
    client.batch_get_secret_value(SecretIdList=[name])
    client.list_secrets()
    with pytest.raises(botocore.exceptions.ClientError):
        client.get_secret_value(SecretId="logs/does-not-exist")
    with pytest.raises(botocore.exceptions.ClientError):
        with_token(legacy_client(proxy.url, str(tmp_path)), wrong_token).get_secret_value(SecretId=name)
    # the app's own signing parameters, sent and dropped
    raw_request(
        proxy.port,
        "GET",
        f"/?Action=GetSecretValue&SecretId={name.replace('/', '%2F')}&X-Amz-Signature={'ab' * 32}"
        f"&Signature={'cd' * 16}&X-Amz-Security-Token=app-token-{uuid.uuid4().hex}",
        headers={"Host": "127.0.0.1", TOKEN_HEADER: token, "Authorization": f"AWS4-HMAC-SHA256 Signature={'ef' * 32}"},
    )

    assert proxy.app is not None
    snapshot = proxy.app[SHARED].credentials.snapshot
    assert snapshot is not None and snapshot.token

    def access_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in captured.getvalue().splitlines()]
        return [line for line in lines if "request_id" in line and "status" in line and "action" in line]

    # an access line is written once its answer's last byte is out, so the last may trail the client a little
    poll(lambda: len(access_lines()) >= 10, 5, "ten access lines")
    output = captured.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]
    access = access_lines()
    assert len(access) == 10, access
    for line in access:
        assert ACCESS_LINE_KEYS <= set(line), line
    assert any(line.get("logger", "").startswith("proxy.credentials") for line in lines)

    forbidden = {
        "assumed secret access key": snapshot.secret_key,
        "assumed session token": snapshot.token,
        "source secret access key": emulator.demo.secret_key,
        "caller token": token,
        "wrong caller token": wrong_token,
        "secret value": value,
        "rotated secret value": new_value,
        "binary secret": base64.b64encode(binary).decode(),
        "assumed access key id": snapshot.access_key,
        "source access key id": emulator.demo.access_key,
    }
    for what, text in forbidden.items():
        assert text not in output, what
    assert "app-token-" not in output
    assert not re.search(r"Signature=(?!<redacted>)[0-9a-fA-F]{8,}", output), "a signature in the logs"
