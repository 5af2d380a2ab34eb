"""The retry loop's pure rules (proxy.attempts): backoff bounds, what is retried, the total deadline.
The transport here is a function; the integration tests run the same rules against real fault servers."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy import attempts, errors
from proxy.attempts import (
    MAX_BACKOFF_SECONDS,
    AttemptPolicy,
    AttemptRecord,
    RetryQuota,
    backoff_seconds,
    send_with_retries,
)
from proxy.credentials import Snapshot
from proxy.models import SignedRequest, UpstreamResponse

SNAPSHOT = Snapshot("AKIDEXAMPLE", "secret")
THROTTLED = UpstreamResponse(400, (), b'{"__type": "ThrottlingException", "message": "slow down"}')
OK = UpstreamResponse(200, (), b"{}")


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 10])
def test_backoff_is_full_jitter_capped(attempt):
    cap = min(2.0 ** (attempt - 1), MAX_BACKOFF_SECONDS)
    assert backoff_seconds(attempt, lambda: 0.0) == 0.0
    assert backoff_seconds(attempt, lambda: 0.999999) == pytest.approx(cap, rel=1e-5)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attempts, "backoff_seconds", lambda attempt: 0.0)


async def run(
    outcomes: list[object],
    *,
    retryable: bool = True,
    max_attempts: int = 3,
    total: float = 10.0,
    quota: RetryQuota | None = None,
    record: AttemptRecord | None = None,
):
    """Run the loop over scripted outcomes (an UpstreamResponse, or an exception to raise); returns
    (result or exception, attempts, signatures built)."""
    built: list[int] = []
    record = record or AttemptRecord()

    async def send(request: SignedRequest) -> UpstreamResponse:
        outcome = outcomes[min(record.attempts, len(outcomes)) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, UpstreamResponse)
        return outcome

    def build(creds: Snapshot) -> SignedRequest:
        built.append(1)
        return SignedRequest("POST", "https://example.invalid/", (), b"{}")

    async def creds() -> Snapshot:
        return SNAPSHOT

    async def refresh(rejected: Snapshot) -> Snapshot:
        return SNAPSHOT

    try:
        result: object = await send_with_retries(
            send=send,
            build=build,
            credentials_get=creds,
            credentials_refresh=refresh,
            policy=AttemptPolicy(max_attempts, total),
            retryable=retryable,
            record=record,
            quota=quota,
        )
    except errors.ProxyError as exc:
        result = exc
    return result, record.attempts, len(built)


async def test_throttled_then_ok_is_signed_once_per_attempt(no_backoff):
    result, attempts, built = await run([THROTTLED, THROTTLED, OK])
    assert result is OK
    assert attempts == built == 3


async def test_not_retryable_operation_is_sent_once(no_backoff):
    result, attempts, _ = await run([THROTTLED, OK], retryable=False)
    assert result is THROTTLED and attempts == 1
    result, attempts, _ = await run([errors.BadGateway("reset"), OK], retryable=False)
    assert isinstance(result, errors.BadGateway) and attempts == 1


@pytest.mark.parametrize("final", [errors.UpstreamUnresolvable("x"), errors.UpstreamCertificateInvalid("x")])
async def test_final_transport_failures_are_not_retried(no_backoff, final):
    result, attempts, _ = await run([final, OK])
    assert result is final and attempts == 1


async def test_transient_transport_failures_are_retried(no_backoff):
    result, attempts, _ = await run([errors.BadGateway("refused"), errors.GatewayTimeout("read"), OK])
    assert result is OK and attempts == 3


async def test_response_too_large_is_not_retried(no_backoff):
    result, attempts, _ = await run([errors.ResponseTooLarge("big"), OK])
    assert isinstance(result, errors.ResponseTooLarge) and attempts == 1


async def test_backoff_never_passes_the_total_deadline():
    # a deadline shorter than any backoff but the first: the last answer is returned, not a timeout
    started = time.monotonic()
    result, attempts, _ = await run([THROTTLED], max_attempts=10, total=0.05)
    assert result is THROTTLED
    assert time.monotonic() - started < 1
    assert attempts >= 1


async def test_an_attempt_cut_by_the_total_deadline_is_gateway_timeout():
    async def hang() -> UpstreamResponse:
        await asyncio.sleep(10)
        return OK

    record = AttemptRecord()

    async def creds() -> Snapshot:
        return SNAPSHOT

    with pytest.raises(errors.GatewayTimeout):
        await send_with_retries(
            send=lambda request: hang(),
            build=lambda c: SignedRequest("POST", "https://example.invalid/", (), b"{}"),
            credentials_get=creds,
            credentials_refresh=creds,
            policy=AttemptPolicy(3, 0.1),
            retryable=True,
            record=record,
        )
    assert record.attempts == 1


# ---------------------------------------------------------------------------------------------------------
# the retry budget (botocore standard mode's quota; docs/interface.md, "The upstream request")

EXPIRED = UpstreamResponse(400, (), b'{"__type": "ExpiredTokenException", "message": "expired"}')
HTML_503 = UpstreamResponse(503, (), b"<html>busy</html>")


def test_the_quota_acquires_whole_costs_and_releases_up_to_its_capacity():
    quota = RetryQuota()
    assert quota.capacity == quota.available == 500
    assert quota.acquire(5) and quota.available == 495
    quota.release(1)
    assert quota.available == 496
    quota.release(100)  # never above the full bucket
    assert quota.available == 500
    small = RetryQuota(9)
    assert not small.acquire(10) and small.available == 9  # a cost it cannot pay takes nothing
    assert small.acquire(5) and not small.acquire(5) and small.available == 4


async def test_an_always_throttled_upstream_drains_the_bucket_then_gets_one_call_per_request(no_backoff):
    quota = RetryQuota()
    calls = refused = 0
    for _ in range(60):
        record = AttemptRecord()
        result, attempts, _ = await run([THROTTLED], quota=quota, record=record)
        assert result is THROTTLED  # the client gets the upstream's error either way
        calls += attempts
        refused += record.retry_refused
    # 500 tokens / (2 retries x 5) = 50 requests with 3 calls each, then 10 requests with 1 call each
    assert calls == 50 * 3 + 10 and refused == 10 and quota.available == 0


async def test_a_retry_the_bucket_cannot_pay_is_not_made(no_backoff):
    quota = RetryQuota(7)  # one throttling retry (5), not two
    record = AttemptRecord()
    result, attempts, _ = await run([THROTTLED, THROTTLED, OK], quota=quota, record=record)
    assert result is THROTTLED and attempts == 2 and record.retry_refused and quota.available == 2


async def test_transport_failures_cost_ten(no_backoff):
    quota = RetryQuota()
    result, attempts, _ = await run([errors.BadGateway("reset"), errors.GatewayTimeout("read"), OK], quota=quota)
    assert result is OK and attempts == 3
    assert quota.available == 500 - 20 + 10  # the success gives back what its last retry cost
    quota = RetryQuota(9)
    record = AttemptRecord()
    result, attempts, _ = await run([errors.BadGateway("reset"), OK], quota=quota, record=record)
    assert isinstance(result, errors.BadGateway) and attempts == 1 and record.retry_refused  # 10 > 9
    result, attempts, _ = await run([HTML_503, OK], quota=quota)  # a 5xx answer costs 5
    assert result is OK and attempts == 2 and quota.available == 9


async def test_a_success_returns_one_token_and_a_final_error_none(no_backoff):
    quota = RetryQuota()
    quota.available = 0
    for expected in (1, 2, 3):
        result, _, _ = await run([OK], quota=quota)
        assert result is OK and quota.available == expected
    final = UpstreamResponse(400, (), b'{"__type": "ResourceNotFoundException", "message": "no"}')
    result, attempts, _ = await run([final], quota=quota)
    assert result is final and attempts == 1 and quota.available == 3
    quota.available = 5
    result, attempts, _ = await run([THROTTLED, OK], quota=quota)
    assert result is OK and attempts == 2 and quota.available == 5  # 5 taken, 5 given back (botocore)


async def test_writes_without_a_token_and_refresh_retries_draw_nothing(no_backoff):
    quota = RetryQuota()
    quota.available = 4  # too little for any retry
    result, attempts, _ = await run([EXPIRED, OK], quota=quota)  # refresh once and retry: not a budget retry
    assert result is OK and attempts == 2 and quota.available == 5
    result, attempts, _ = await run([THROTTLED], retryable=False, quota=quota)
    assert result is THROTTLED and attempts == 1 and quota.available == 5


async def test_no_tokens_are_taken_when_the_deadline_forbids_the_retry():
    quota = RetryQuota()
    record = AttemptRecord()
    result, attempts, _ = await run([THROTTLED], max_attempts=10, total=0.0001, quota=quota, record=record)
    assert result is THROTTLED and attempts == 1
    assert quota.available == 500 and not record.retry_refused
