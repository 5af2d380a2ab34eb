"""Upstream attempts: sign, send, classify the answer, and retry as botocore's *standard* retry mode does.

Source: botocore ``retries/standard.py`` and the AWS SDKs' "Retry behavior" reference
(docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html): ``upstream.max_attempts`` attempts in
all; transient errors (HTTP 500/502/503/504, connection failures, timeouts) and throttling error codes are
retried with exponential backoff and full jitter (``random() * min(2 ** (attempt - 1), 20)`` seconds), the
whole bounded by ``upstream.total_timeout_seconds``. Each attempt is signed afresh.

Which requests may be retried is the retry rule of docs/interface.md, "The upstream request" (reads, or writes carrying
an idempotency token); a rejection of the credentials themselves (expired or revoked early) is answered before anything
ran, so it is retried once for any operation after one forced credential refresh. So is a rejection of the signing time
(clock skew) once :class:`~proxy.signing.ClockSkew` has learnt the offset from the answer's ``Date``. A
transport failure that another attempt would meet again (a host name that does not resolve, a certificate
that does not verify: the error's ``transient`` is False) is answered at once.

Retries draw on a retry budget, :class:`RetryQuota`, one per process, with the quota semantics of botocore's
standard mode (``retries/quota.py`` ``RetryQuota``, ``retries/standard.py`` ``RetryQuotaChecker``) and the
costs of the AWS SDKs' standard retry strategy: a bucket of 500 tokens; a retry costs 5 tokens, or 10 after a
timeout or a connection failure; a request that succeeds without a retry returns 1 token, one that succeeds
after retries returns what its last retry cost, never above the full bucket. A retry the bucket cannot pay is
not made: the client gets the upstream's answer (or the transport error) of the attempt that failed, and the
refusal is counted (``query_signing_proxy_retries_refused_total``). So an upstream that throttles every call
costs it about one call per client request once the bucket is empty, however many ``max_attempts`` allows.
The one-off retries after a credential refresh or a clock-skew correction are not retries of a failure the
upstream may be overloaded by, and draw nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import errors
from .credentials import Snapshot
from .models import SignedRequest, UpstreamResponse
from .signing import ClockSkew
from .translate import upstream_error

log = logging.getLogger("proxy.attempts")

TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
EXPIRED_CREDENTIAL_CODES = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException"}
)
# The signing time was refused (AWS SDK for Java ``ClockSkewAdjuster``; Secrets Manager's JSON 1.1 answer is
# InvalidSignatureException "Signature expired: ..." or "Signature not yet current: ...").
CLOCK_SKEW_CODES = frozenset({"RequestTimeTooSkewed", "RequestExpired", "RequestInTheFuture"})
CLOCK_SKEW_MESSAGES = ("signature expired", "signature not yet current")
MAX_BACKOFF_SECONDS = 20.0

# The retry budget (AWS SDKs' standard retry strategy; botocore's RetryQuota.INITIAL_CAPACITY).
INITIAL_RETRY_TOKENS = 500
RETRY_COST = 5
TIMEOUT_RETRY_COST = 10
NO_RETRY_INCREMENT = 1


class RetryQuota:
    """The retry budget of one process: ``available`` tokens of ``capacity`` (botocore ``RetryQuota``).

    Not locked: the process's requests share one event loop, and each acquire or release completes between
    two awaits."""

    def __init__(self, capacity: int = INITIAL_RETRY_TOKENS) -> None:
        self.capacity = capacity
        self.available = capacity

    def acquire(self, cost: int) -> bool:
        """Take ``cost`` tokens for a retry; False (and nothing taken) when fewer are left."""
        if cost > self.available:
            return False
        self.available -= cost
        return True

    def release(self, amount: int) -> None:
        """Give back ``amount`` tokens after a success, never above ``capacity``."""
        self.available = min(self.capacity, self.available + amount)


@dataclass(frozen=True, slots=True)
class AttemptPolicy:
    """``max_attempts`` (all attempts), ``total_timeout`` (seconds, all attempts and backoff)."""

    max_attempts: int
    total_timeout: float


def classify(response: UpstreamResponse) -> str | None:
    """``"expired"``, ``"skewed"``, ``"throttled"``, ``"transient"`` or None (success or a final error)."""
    if response.status < 300:
        return None
    error = upstream_error(response)
    code = error.code
    if code in CLOCK_SKEW_CODES or (
        code == "InvalidSignatureException" and error.message.lower().startswith(CLOCK_SKEW_MESSAGES)
    ):
        return "skewed"
    if code in EXPIRED_CREDENTIAL_CODES:
        return "expired"
    if code in THROTTLING_CODES or response.status == 429:
        return "throttled"
    if code in TRANSIENT_CODES or response.status in TRANSIENT_STATUS:
        return "transient"
    return None


def backoff_seconds(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff before attempt ``attempt + 1`` (botocore standard mode)."""
    return float(rand() * min(2.0 ** (attempt - 1), MAX_BACKOFF_SECONDS))


@dataclass
class AttemptRecord:
    """What the attempts did, for the log line and the metrics."""

    attempts: int = 0
    upstream_seconds: float = 0.0
    retry_refused: bool = False  # a retry was due and the retry budget could not pay for it


async def send_with_retries(
    *,
    send: Callable[[SignedRequest], Awaitable[UpstreamResponse]],
    build: Callable[[Snapshot], SignedRequest],
    credentials_get: Callable[[], Awaitable[Snapshot]],
    credentials_refresh: Callable[[Snapshot], Awaitable[Snapshot]],
    policy: AttemptPolicy,
    may_refresh: Callable[[Snapshot], bool] = lambda rejected: True,
    retryable: bool,
    record: AttemptRecord,
    clock_skew: ClockSkew | None = None,
    quota: RetryQuota | None = None,
) -> UpstreamResponse:
    """Run attempts until an answer that is final, the attempts are spent or the deadline passes.

    ``send`` is the transport's coroutine function, ``build`` signs a fresh request from a credential snapshot;
    ``credentials_refresh(rejected)`` replaces the snapshot the upstream refused unless ``may_refresh(rejected)``
    says the refusal is not worth another fetch (the refusal is then the answer); ``clock_skew`` learns the
    signing-time offset from a skew error (one retry); ``quota`` is the process's retry budget (None: unbounded,
    for unit tests of other rules), whose refusal ends the attempts (``record.retry_refused``).
    Returns the last upstream answer (success or error). Raises GatewayTimeout when the total deadline
    passes, BadGateway for a connection failure on the last attempt, CredentialsUnavailable.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.total_timeout
    refreshed = skew_corrected = False
    last_cost: int | None = None  # what the last retry took from the quota; given back on success

    async def retry(cost: int) -> bool:
        """Back off and pay for one more attempt; False when the deadline or the budget forbids it."""
        nonlocal last_cost
        delay = backoff_seconds(attempt)
        if loop.time() + delay >= deadline:
            return False
        if quota is not None:
            if not quota.acquire(cost):
                record.retry_refused = True
                log.info("retry refused: the retry budget is spent", extra={"attempt": attempt, "cost": cost})
                return False
            last_cost = cost
        await asyncio.sleep(delay)
        return True

    rejected: Snapshot | None = None  # the snapshot the upstream refused, replaced before the next attempt
    while True:
        record.attempts += 1
        attempt = record.attempts
        try:
            async with asyncio.timeout_at(deadline):
                creds = await (credentials_refresh(rejected) if rejected is not None else credentials_get())
                rejected = None
                signed = build(creds)
                started = time.perf_counter()
                try:
                    response = await send(signed)
                finally:
                    record.upstream_seconds += time.perf_counter() - started
        except TimeoutError:
            raise errors.GatewayTimeout(
                f"the upstream did not answer within upstream.total_timeout_seconds ({policy.total_timeout:g} s)"
            ) from None
        except (errors.BadGateway, errors.GatewayTimeout) as exc:
            if not retryable or not exc.transient or attempt >= policy.max_attempts:
                raise
            if not await retry(TIMEOUT_RETRY_COST):
                raise
            log.info("retrying after a transport failure", extra={"attempt": attempt, "error": exc.code})
            continue
        kind = classify(response)
        if kind is None and response.status < 300 and quota is not None:
            quota.release(NO_RETRY_INCREMENT if last_cost is None else last_cost)
        if kind is None or attempt >= policy.max_attempts:
            return response
        if kind == "expired":
            if refreshed or not may_refresh(creds):
                return response
            refreshed = True
            log.warning("the upstream rejected the credentials; refreshing once and retrying")
            rejected = creds
            continue
        if kind == "skewed":
            if skew_corrected or clock_skew is None:
                return response
            if not clock_skew.correct(dict(signed.headers).get("X-Amz-Date"), response.header("Date")):
                return response
            skew_corrected = True
            log.info("the upstream refused the signing time; retrying with the corrected clock")
            continue
        if not retryable:
            return response
        if not await retry(RETRY_COST):
            return response
        log.info("retrying", extra={"attempt": attempt, "reason": kind, "upstream_status": response.status})
