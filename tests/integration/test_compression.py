"""Compression (docs/interface.md, "HTTP endpoints" and "The upstream request"): the proxy asks the upstream for identity encoding; an upstream that
answers gzip regardless is decoded, and a client never gets plain bytes labelled gzip nor gzip it did not
ask for."""

from __future__ import annotations

import gzip
import json

import pytest
from aiohttp import web
from botocore.parsers import QueryParser

from tests.checks import assert_error
from tests.integration.conftest import StartRecorded
from tests.recorder import REQUEST_ID, Recorded, RecordingUpstream
from tests.support import RawResponse, raw_request

SECRET = "gzipped-secret-value"


def gzip_always(request: Recorded) -> web.StreamResponse:
    """An upstream that compresses whatever the request said."""
    if request.operation == "GetSecretValue":
        status, payload = 200, {"Name": "app/a", "SecretString": SECRET}
    else:
        status, payload = 400, {"__type": "ResourceNotFoundException", "message": "no such secret"}
    return web.Response(
        status=status,
        body=gzip.compress(json.dumps(payload).encode()),
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "Content-Encoding": "gzip",
            "x-amzn-RequestId": REQUEST_ID,
        },
    )


def mislabelled(request: Recorded) -> web.StreamResponse:
    """Plain JSON labelled gzip."""
    return web.Response(
        body=json.dumps({"Name": "app/a", "SecretString": SECRET}).encode(),
        headers={"Content-Type": "application/x-amz-json-1.1", "Content-Encoding": "gzip"},
    )


def get(port: int, action: str, accept_encoding: str | None) -> RawResponse:
    headers = {"Host": f"127.0.0.1:{port}"}
    if accept_encoding is not None:
        headers["Accept-Encoding"] = accept_encoding
    return raw_request(port, "GET", f"/?Action={action}&SecretId=app%2Fa", headers=headers)


@pytest.mark.parametrize("accept_encoding", [None, "identity", "gzip", "gzip, deflate, br"])
def test_gzip_from_upstream_is_decoded_and_never_relabelled(
    start_recorded: StartRecorded, recording: RecordingUpstream, accept_encoding: str | None
) -> None:
    recording.answer = gzip_always
    proxy = start_recorded()
    resp = get(proxy.port, "GetSecretValue", accept_encoding)
    assert resp.status == 200, resp.body
    assert resp.header("Content-Encoding") is None
    parsed = QueryParser().parse(
        {"status_code": 200, "headers": resp.headers, "body": resp.body},
        _query_output_shape("GetSecretValue"),
    )
    assert parsed["SecretString"] == SECRET
    assert resp.header("x-amzn-RequestId") == REQUEST_ID
    (call,) = recording.take()
    assert call.header("Accept-Encoding") == "identity"


def test_gzip_error_body_keeps_its_code(start_recorded: StartRecorded, recording: RecordingUpstream) -> None:
    recording.answer = gzip_always
    proxy = start_recorded()
    resp = get(proxy.port, "DescribeSecret", "gzip")
    error = assert_error(resp, 400, "ResourceNotFoundException")
    assert error["Message"] == "no such secret"
    assert resp.header("Content-Encoding") is None


def test_plain_bytes_labelled_gzip_are_a_bad_gateway(
    start_recorded: StartRecorded, recording: RecordingUpstream
) -> None:
    recording.answer = mislabelled
    proxy = start_recorded()
    resp = get(proxy.port, "GetSecretValue", "gzip")
    assert_error(resp, 502, "BadGateway")
    assert resp.header("Content-Encoding") is None
    assert SECRET.encode() not in resp.body


def _query_output_shape(operation: str):  # type: ignore[no-untyped-def]
    """The output shape of the legacy (awsQuery) model, as a legacy SDK parses it."""
    from botocore.model import ServiceModel

    from tests.support import query_model

    return ServiceModel(query_model()).operation_model(operation).output_shape
