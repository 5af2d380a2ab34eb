"""endpoints.py and signing.py: the upstream comes from botocore's endpoint resolution only, and the host
that is signed is the host that is sent."""

from __future__ import annotations

import datetime

import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from proxy.config import ConfigError, UpstreamConfig
from proxy.credentials import Snapshot
from proxy.endpoints import host_header, resolve_endpoint
from proxy.signing import sign


@pytest.mark.parametrize(
    "url,host",
    [
        ("https://secretsmanager.us-east-1.amazonaws.com", "secretsmanager.us-east-1.amazonaws.com"),
        ("https://secretsmanager.us-east-1.amazonaws.com:443", "secretsmanager.us-east-1.amazonaws.com"),
        ("https://127.0.0.1:4443", "127.0.0.1:4443"),
        ("https://[::1]:4443", "[::1]:4443"),
        ("http://localhost:80", "localhost"),
    ],
)
def test_host_header_drops_only_the_default_port(url: str, host: str) -> None:
    assert host_header(url) == host


@pytest.mark.parametrize(
    "env,region,url",
    [
        ({}, "us-east-1", "https://secretsmanager.us-east-1.amazonaws.com"),
        ({"AWS_USE_FIPS_ENDPOINT": "true"}, "us-west-2", "https://secretsmanager-fips.us-west-2.amazonaws.com"),
        ({}, "cn-north-1", "https://secretsmanager.cn-north-1.amazonaws.com.cn"),
        ({"AWS_USE_DUALSTACK_ENDPOINT": "true"}, "eu-west-1", "https://secretsmanager.eu-west-1.api.aws"),
        ({"AWS_ENDPOINT_URL_SECRETS_MANAGER": "https://127.0.0.1:9443"}, "eu-west-1", "https://127.0.0.1:9443"),
        ({"AWS_ENDPOINT_URL": "https://127.0.0.1:9444"}, "eu-west-1", "https://127.0.0.1:9444"),
    ],
)
def test_regional_endpoints_from_botocore(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], region: str, url: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ep = resolve_endpoint(botocore.session.get_session(), UpstreamConfig(region=region))
    assert ep.url == url
    assert ep.region == region and ep.signing_name == "secretsmanager"


def test_an_http_endpoint_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:9443")
    with pytest.raises(ConfigError, match="upstream.endpoint_url"):
        resolve_endpoint(botocore.session.get_session(), UpstreamConfig(region="us-east-1"))


def test_the_signed_host_is_the_sent_host_and_the_signature_is_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = resolve_endpoint(
        botocore.session.get_session(), UpstreamConfig(region="us-east-1", endpoint_url="https://127.0.0.1:4443")
    )
    fixed = datetime.datetime(2026, 11, 30, 12, 0, 0)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: fixed)
    creds = Snapshot("ASIAEXAMPLEKEY", "secret/key", "session-token")
    headers = {"X-Amz-Target": "secretsmanager.GetSecretValue", "Content-Type": "application/x-amz-json-1.1"}
    body = b'{"SecretId": "x"}'
    signed = sign(method="POST", endpoint=ep, headers=headers, body=body, credentials=creds)
    sent = dict(signed.headers)
    assert sent["Host"] == "127.0.0.1:4443"
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target" in sent["Authorization"]
    assert sent["X-Amz-Security-Token"] == "session-token"
    # the oracle: botocore signing the request as an SDK would build it
    oracle = AWSRequest(method="POST", url="https://127.0.0.1:4443/", headers=headers, data=body)
    SigV4Auth(Credentials("ASIAEXAMPLEKEY", "secret/key", "session-token"), "secretsmanager", "us-east-1").add_auth(
        oracle
    )
    assert sent["Authorization"] == oracle.headers["Authorization"]


def test_each_signature_uses_fresh_objects() -> None:
    ep = resolve_endpoint(botocore.session.get_session(), UpstreamConfig(region="us-east-1"))
    a = sign(method="POST", endpoint=ep, headers={}, body=b"{}", credentials=Snapshot("AKIA1111", "s1"))
    b = sign(method="POST", endpoint=ep, headers={}, body=b"{}", credentials=Snapshot("AKIA2222", "s2"))
    assert "AKIA1111/" in dict(a.headers)["Authorization"] and "AKIA2222/" in dict(b.headers)["Authorization"]
    assert "X-Amz-Security-Token" not in dict(a.headers)
