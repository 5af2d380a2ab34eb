"""Upstream faults (issue 5, item 6): each gives the answer of docs/interface.md, "Errors" -- never a hang, never a 500.
Real aiohttp fault servers over TLS on loopback; name resolution through an injected resolver."""

from __future__ import annotations

import json
import time

import pytest

from tests.faults import (
    Certs,
    LoopbackResolver,
    answer,
    chunked,
    free_port,
    list_secrets_document,
    ok,
    reset_mid_body,
    sequence,
    throttle,
    xml_error,
)
from tests.support import raw_request

GET = "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17"
LIST = "/?Action=ListSecrets&Version=2017-10-17"
HTML_503 = "<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head><body><p>busy</body></html>"
XML_403 = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated "
    "does not match the signature you provided.</Message></Error><RequestId>abc-123</RequestId></ErrorResponse>"
)


def query(port: int, target: str = GET) -> tuple[float, int, bytes, str | None]:
    started = time.monotonic()
    resp = raw_request(port, "GET", target, timeout=30)
    assert resp.header(
        "Content-Type",
    ).startswith("text/xml")  # type: ignore[union-attr]
    return time.monotonic() - started, resp.status, resp.body, resp.header("x-amzn-RequestId")


def test_connection_refused_is_502(start_fault_proxy):
    proxy = start_fault_proxy(f"https://127.0.0.1:{free_port()}")
    elapsed, status, body, request_id = query(proxy.port)
    assert status == 502
    fault, code, rid = xml_error(body)
    assert (fault, code) == ("Receiver", "BadGateway")
    assert rid == request_id
    assert elapsed < 3 + 1  # within the total deadline


def test_reset_mid_body_is_502(start_fault, start_fault_proxy):
    fault = start_fault(reset_mid_body())
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    _, status, body, _ = query(proxy.port)
    assert status == 502
    assert xml_error(body)[1] == "BadGateway"
    assert len(fault.seen) == 3  # a read: retried, then the last failure answered


def test_reset_then_success_is_200(start_fault, start_fault_proxy):
    fault = start_fault(sequence(reset_mid_body(), ok()))
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    _, status, body, request_id = query(proxy.port)
    assert status == 200
    assert request_id == "fault-2"


def test_certificate_from_another_ca_is_502_and_not_retried(start_fault, start_fault_proxy, tmp_path):
    stranger = Certs(tmp_path)
    fault = start_fault(ok(), ssl_context=stranger.server_context())
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    elapsed, status, body, _ = query(proxy.port)
    assert status == 502
    assert xml_error(body)[1] == "BadGateway"
    assert fault.seen == []  # the handshake failed: no request was sent
    assert fault.handshakes == 1  # a verification failure is final: not retried
    assert elapsed < 2


def test_certificate_for_another_host_is_502(start_fault, start_fault_proxy, certs):
    fault = start_fault(ok(), ssl_context=certs.server_context("someone-else.example"))
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    elapsed, status, body, _ = query(proxy.port)
    assert status == 502
    assert xml_error(body)[1] == "BadGateway"
    assert fault.seen == []
    assert fault.handshakes == 1
    assert elapsed < 2


def test_unresolvable_host_is_a_fast_502(start_fault_proxy):
    resolver = LoopbackResolver()
    proxy = start_fault_proxy("https://secretsmanager.nowhere.invalid", resolver=resolver)
    elapsed, status, body, _ = query(proxy.port)
    assert status == 502
    assert xml_error(body)[1] == "BadGateway"
    assert resolver.asked == ["secretsmanager.nowhere.invalid"]  # asked once: not retried
    assert elapsed < 2


def test_the_injected_resolver_is_the_one_used(start_fault, start_fault_proxy, certs):
    fault = start_fault(ok(), ssl_context=certs.server_context("secretsmanager.upstream.test"))
    resolver = LoopbackResolver({"secretsmanager.upstream.test": "127.0.0.1"})
    proxy = start_fault_proxy(f"https://secretsmanager.upstream.test:{fault.port}", resolver=resolver)
    _, status, _, _ = query(proxy.port)
    assert status == 200
    assert resolver.asked == ["secretsmanager.upstream.test"]
    assert fault.seen[0].header("Host") == f"secretsmanager.upstream.test:{fault.port}"


def test_503_with_an_html_body_is_503_service_unavailable(start_fault, start_fault_proxy):
    fault = start_fault(answer(503, HTML_503, content_type="text/html"))
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    _, status, body, request_id = query(proxy.port)
    assert status == 503
    assert xml_error(body)[:2] == ("Receiver", "ServiceUnavailable")
    assert len(fault.seen) == 3  # transient: retried
    assert request_id == "fault-3"  # the upstream's request id, when there was an upstream answer


@pytest.mark.parametrize(
    ("status", "body", "content_type", "want"),
    [
        (403, XML_403, "text/xml", ("Sender", "SignatureDoesNotMatch")),
        (
            500,
            "<Error><Code>InternalError</Code><Message>oops</Message></Error>",
            "application/xml",
            ("Receiver", "InternalError"),
        ),
        (
            400,
            json.dumps({"__type": "com.amazonaws#InvalidParameterException:http://x", "message": "bad"}),
            "application/x-amz-json-1.1",
            ("Sender", "InvalidParameterException"),
        ),
        (502, "", "text/plain", ("Receiver", "InternalFailure")),
        (403, "<html>Forbidden</html>", "text/html", ("Sender", "AccessDenied")),
    ],
)
def test_upstream_error_bodies_keep_status_and_code(start_fault, start_fault_proxy, status, body, content_type, want):
    fault = start_fault(answer(status, body, content_type=content_type))
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    _, got_status, got_body, _ = query(proxy.port)
    assert got_status == status
    assert xml_error(got_body)[:2] == want


def test_throttled_twice_then_success(start_fault, start_fault_proxy):
    fault = start_fault(sequence(throttle(), throttle(), ok()))
    proxy = start_fault_proxy(fault.url, upstream={"total_timeout_seconds": 10})
    _, status, body, _ = query(proxy.port)
    assert status == 200
    assert len(fault.seen) == 3


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_answer_over_max_response_bytes_is_502_response_too_large(start_fault, start_fault_proxy, framing):
    document = json.dumps(list_secrets_document(200)).encode()  # about 140 KB
    assert len(document) > 64 * 1024
    fault = start_fault(answer(200, document) if framing == "content-length" else chunked(document, 8192))
    proxy = start_fault_proxy(fault.url, limits={"max_response_bytes": 64 * 1024})
    _, status, body, _ = query(proxy.port, LIST)
    assert status == 502
    assert xml_error(body)[:2] == ("Receiver", "ResponseTooLarge")
    assert len(fault.seen) == 1  # the same answer would come again: not retried
    fault.behaviour = answer(200, {"SecretList": []})
    _, status, _, _ = query(proxy.port, LIST)
    assert status == 200


def test_a_body_that_is_not_json_is_502(start_fault, start_fault_proxy):
    fault = start_fault(answer(200, "<html>captive portal</html>", content_type="text/html"))
    proxy = start_fault_proxy(fault.url)
    _, status, body, _ = query(proxy.port)
    assert status == 502
    assert xml_error(body)[1] == "BadGateway"
