"""Clock skew (issue 4, item 6): the upstream refuses the signing time and its Date header says by how much; the
proxy signs again at the corrected time, retries once, logs the skew once and keeps the offset."""

from __future__ import annotations

import logging
import time

import pytest

from tests.fakeaws import FakeAWS, amz_epoch

SKEW_LOG = "the local clock is off from the upstream's; signing with the corrected time"


def skew_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == SKEW_LOG]


@pytest.mark.parametrize(
    ("skew", "code"),
    [(600.0, "InvalidSignatureException"), (-900.0, "InvalidSignatureException"), (600.0, "RequestTimeTooSkewed")],
)
def test_skewed_clock_is_corrected_and_retried_once(
    aws: FakeAWS, caplog: pytest.LogCaptureFixture, skew: float, code: str
) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.signing")
    aws.env_keys()
    aws.upstream.skew_seconds = skew  # the upstream's clock; the local one is off by -skew
    aws.upstream.skew_code = code
    proxy = aws.start_proxy()
    aws.ok(proxy)
    refused, accepted = aws.upstream.calls
    assert refused.code == code and accepted.status == 200
    assert refused.amz_date is not None and accepted.amz_date is not None
    assert abs(amz_epoch(accepted.amz_date) - (time.time() + skew)) < 60  # signed at the upstream's time
    for _ in range(3):  # the offset is kept: one attempt each
        aws.ok(proxy)
    assert len(aws.upstream.calls) == 5
    assert len(skew_lines(caplog)) == 1
    (line,) = skew_lines(caplog)
    assert abs(line.skew_seconds - skew) < 60  # type: ignore[attr-defined]


def test_a_small_skew_is_not_corrected(aws: FakeAWS, caplog: pytest.LogCaptureFixture) -> None:
    """A signature-expired answer whose Date is within 4 minutes of the request is not the local clock's fault:
    it reaches the client after one attempt."""
    aws.env_keys()
    proxy = aws.start_proxy()
    aws.upstream.fail_next.append(
        (400, "InvalidSignatureException", "Signature expired: 20240101T000000Z is now earlier than ...")
    )
    resp = aws.get_secret(proxy)
    assert resp.status == 400 and b"<Code>InvalidSignatureException</Code>" in resp.body
    assert len(aws.upstream.calls) == 1
    assert not skew_lines(caplog)
