"""The retry loop's pure rules (proxy.attempts): backoff bounds, what is retried, the total deadline.
The transport here is a function; the integration tests run the same rules against real fault servers."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy import attempts, errors
from proxy.attempts import MAX_BACKOFF_SECONDS, AttemptPolicy, AttemptRecord, backoff_seconds, send_with_retries
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


async def run(outcomes: list[object], *, retryable: bool = True, max_attempts: int = 3, total: float = 10.0):
    """Run the loop over scripted outcomes (an UpstreamResponse, or an exception to raise); returns
    (result or exception, attempts, signatures built)."""
    built: list[int] = []
    record = AttemptRecord()

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

    try:
        result: object = await send_with_retries(
            send=send,
            build=build,
            credentials_get=creds,
            credentials_refresh=creds,
            policy=AttemptPolicy(max_attempts, total),
            retryable=retryable,
            record=record,
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
