"""Signing at a corrected time is botocore's SigV4 at that time; ClockSkew's 4-minute rule; the attempt loop's
classification of skew errors and its single skew retry."""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from proxy.attempts import AttemptPolicy, AttemptRecord, classify, send_with_retries
from proxy.credentials import Snapshot
from proxy.models import Endpoint, SignedRequest, UpstreamResponse
from proxy.signing import ClockSkew, sign

NOW = datetime.datetime(2024, 5, 6, 7, 8, 9)  # naive UTC, as botocore's get_current_datetime() returns it
ENDPOINT = Endpoint(
    "https://secretsmanager.us-east-1.amazonaws.com",
    "secretsmanager.us-east-1.amazonaws.com",
    "secretsmanager",
    "us-east-1",
)
CREDS = Snapshot("ASIAEXAMPLEEXAMPLE", "secret-key", "session-token", None, 0.0)
HEADERS = {"X-Amz-Target": "secretsmanager.GetSecretValue", "Content-Type": "application/x-amz-json-1.1"}
BODY = b'{"SecretId": "app/db"}'


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> list[datetime.datetime]:
    """botocore's signing clock, settable: ``frozen[0]`` is now."""
    moment = [NOW]
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *a, **k: moment[0])
    return moment


def botocore_signed(at: datetime.datetime, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *a, **k: at)
    request = AWSRequest(method="POST", url=ENDPOINT.url + "/", headers={"Host": ENDPOINT.host, **HEADERS}, data=BODY)
    creds = ReadOnlyCredentials(CREDS.access_key, CREDS.secret_key, CREDS.token)
    SigV4Auth(creds, "secretsmanager", "us-east-1").add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("offset", [0.0, 600.0, -900.5])
def test_sign_with_offset_is_botocore_at_the_corrected_time(
    frozen: list[datetime.datetime], monkeypatch: pytest.MonkeyPatch, offset: float
) -> None:
    signed = dict(
        sign(
            method="POST", endpoint=ENDPOINT, headers=HEADERS, body=BODY, credentials=CREDS, clock_offset=offset
        ).headers
    )
    expected = botocore_signed(NOW + datetime.timedelta(seconds=offset), monkeypatch)
    assert signed == expected
    assert signed["X-Amz-Date"] == (NOW + datetime.timedelta(seconds=offset)).strftime("%Y%m%dT%H%M%SZ")


def http_date(at: datetime.datetime) -> str:
    return email.utils.format_datetime(at.replace(tzinfo=datetime.UTC), usegmt=True)


def amz(at: datetime.datetime) -> str:
    return at.strftime("%Y%m%dT%H%M%SZ")


def test_clock_skew_adopts_the_upstream_offset_over_4_minutes(
    frozen: list[datetime.datetime], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.signing")
    skew = ClockSkew()
    assert not skew.correct(amz(NOW), None)
    assert not skew.correct(None, http_date(NOW))
    assert not skew.correct(amz(NOW), "not a date")
    assert not skew.correct(amz(NOW), http_date(NOW + datetime.timedelta(seconds=240)))  # 4 minutes: not over
    assert skew.offset == 0.0
    server = NOW + datetime.timedelta(seconds=600)
    assert skew.correct(amz(NOW), http_date(server))
    assert skew.offset == 600.0
    # concurrent requests signed before the correction: each retries, the skew is logged once
    assert skew.correct(amz(NOW), http_date(server))
    assert len([r for r in caplog.records if r.name == "proxy.signing"]) == 1
    # the clock is fixed meanwhile (now agrees with the server): the offset goes back to 0, logged again
    frozen[0] = server
    assert skew.correct(amz(server + datetime.timedelta(seconds=600)), http_date(server))
    assert skew.offset == 0.0
    assert len([r for r in caplog.records if r.name == "proxy.signing"]) == 2


def json_error(status: int, code: str, message: str, date: str | None = None) -> UpstreamResponse:
    headers = [("Content-Type", "application/x-amz-json-1.1")]
    if date:
        headers.append(("Date", date))
    return UpstreamResponse(status, tuple(headers), json.dumps({"__type": code, "message": message}).encode())


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (
            json_error(400, "InvalidSignatureException", "Signature expired: 20240101T000000Z is now earlier than"),
            "skewed",
        ),
        (
            json_error(400, "InvalidSignatureException", "Signature not yet current: 20240101T000000Z is still later"),
            "skewed",
        ),
        (json_error(400, "InvalidSignatureException", "The request signature we calculated does not match"), None),
        (UpstreamResponse(403, (), b"<Error><Code>RequestTimeTooSkewed</Code><Message>m</Message></Error>"), "skewed"),
        (json_error(400, "ExpiredTokenException", "The security token included in the request is expired"), "expired"),
    ],
)
def test_classify_skew(response: UpstreamResponse, kind: str | None) -> None:
    assert classify(response) == kind


async def test_the_attempt_loop_corrects_skew_once(frozen: list[datetime.datetime]) -> None:
    """An upstream whose Date is always 10 minutes ahead of whatever X-Amz-Date it gets (a broken one): one
    corrected retry, then its answer goes back."""
    sent: list[SignedRequest] = []
    skew = ClockSkew()

    async def send(request: SignedRequest) -> UpstreamResponse:
        sent.append(request)
        amz_date = datetime.datetime.strptime(dict(request.headers)["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        return json_error(
            400,
            "InvalidSignatureException",
            "Signature expired: ...",
            http_date(amz_date + datetime.timedelta(seconds=600)),
        )

    def build(creds: Snapshot) -> SignedRequest:
        return sign(
            method="POST", endpoint=ENDPOINT, headers=HEADERS, body=BODY, credentials=creds, clock_offset=skew.offset
        )

    async def get() -> Snapshot:
        return CREDS

    async def refresh(rejected: Any) -> Snapshot:
        raise AssertionError("no credential refresh for a skew error")

    record = AttemptRecord()
    response = await send_with_retries(
        send=send,
        build=build,
        credentials_get=get,
        credentials_refresh=refresh,
        policy=AttemptPolicy(5, 30.0),
        retryable=True,
        record=record,
        clock_skew=skew,
    )
    assert response.status == 400 and record.attempts == 2
    assert [dict(r.headers)["X-Amz-Date"] for r in sent] == [amz(NOW), amz(NOW + datetime.timedelta(seconds=600))]
