"""Assertions shared by the integration tests: an answer is the ErrorResponse of docs/interface.md, "Errors", read the way a
legacy SDK reads it (botocore's QueryParser); the keys of an access line (docs/interface.md, "Logs and metrics")."""

from __future__ import annotations

from typing import Any

from botocore.parsers import QueryParser

from tests.support import RawResponse

# every key of the JSON access line, one per request (docs/interface.md, "Logs and metrics")
ACCESS_LINE_KEYS = frozenset(
    {
        "time",
        "level",
        "request_id",
        "action",
        "secret_id",
        "status",
        "upstream_status",
        "duration_ms",
        "attempts",
    }
)


def parse_error(resp: RawResponse) -> dict[str, Any]:
    """The answer through botocore's QueryParser (raises if it is not XML it can read)."""
    parsed: dict[str, Any] = QueryParser().parse(
        {"status_code": resp.status, "headers": resp.headers, "body": resp.body}, None
    )
    return parsed


def assert_error(resp: RawResponse, status: int, code: str) -> dict[str, Any]:
    """``resp`` is a ``status`` ErrorResponse with ``code``: text/xml, Type by status, one request id in the XML
    and the ``x-amzn-RequestId`` header. Returns the parsed error."""
    assert resp.status == status, (resp.status, resp.body[:500])
    assert (resp.header("Content-Type") or "").startswith("text/xml"), resp.headers
    parsed = parse_error(resp)
    error = parsed["Error"]
    assert error["Code"] == code, error
    assert error["Type"] == ("Sender" if status < 500 else "Receiver"), error
    assert error.get("Message"), error
    request_id = parsed["ResponseMetadata"]["RequestId"]
    assert request_id, parsed
    assert resp.header("x-amzn-RequestId") == request_id
    return error
