"""Role-derived temporary credentials, fetched by botocore and refreshed ahead, never on the event loop.

botocore finds the *source* credentials with its own default chain (environment, shared config profile
including its ``role_arn``/``source_profile`` chains, IRSA web identity, container / EKS Pod Identity, instance
metadata). With ``credentials.role_arn`` an AssumeRole is chained on top with botocore's
``AssumeRoleCredentialFetcher`` (ExternalId, RoleSessionName, DurationSeconds, Tags, SourceIdentity); without
it the source credentials sign directly.

The refresh schedule is ours, not botocore's. botocore's ``RefreshableCredentials`` refreshes under a thread
lock with a synchronous call, inside a fixed 15-minute advisory window (with 900-second credentials, on every
call), and its fetchers cache by the same window. Instead each fetch here resolves the chain afresh with a
cache that never holds anything, so every fetch is one real STS / container / IMDS call and every token file
is read again. :class:`CredentialManager` holds an immutable :class:`Snapshot`, refreshes it in a worker
thread (``asyncio.to_thread``) once half of its lifetime has passed, shares one fetch among all waiters,
retries failures with exponential backoff and full jitter, and lets requests whose snapshot is still valid
go on without waiting for STS. All scheduling reads one injectable ``clock`` (epoch seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import botocore.session
from botocore.config import Config as BotocoreConfig
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    Credentials,
    DeferredRefreshableCredentials,
    RefreshableCredentials,
    create_credential_resolver,
)
from botocore.exceptions import BotoCoreError, ClientError
from botocore.utils import parse_timestamp

from . import errors
from .config import CredentialsConfig, UpstreamConfig, default_session_name

log = logging.getLogger("proxy.credentials")

# A snapshot this close to expiry is not used to sign: the request could arrive after it expired.
EXPIRY_MARGIN_SECONDS = 30.0
# Refresh once this fraction of a snapshot's lifetime has passed (900 s credentials: after 450 s).
REFRESH_FRACTION = 0.5
MIN_REFRESH_INTERVAL_SECONDS = 1.0
# Failed fetches are retried after random() * min(RETRY_MAX, RETRY_BASE * 2 ** failures) seconds (full jitter).
RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
# The exponent stops growing here (RETRY_BASE * 2 ** 16 is past RETRY_MAX already): 2.0 ** 1024 would overflow
# a float after about 8 hours of failures.
RETRY_MAX_EXPONENT = 16
# The refresher never re-reads the schedule more often than this (a tiny jitter is not a busy loop).
MIN_WAIT_SECONDS = 0.1
# ... and never less often than this. Its sleep runs on the event loop's monotonic clock while the schedule is
# in ``clock`` seconds (epoch): a wall clock stepped forward (NTP, a VM or laptop resumed: the monotonic clock
# does not count suspended time) would otherwise leave expired credentials unreplaced, and /readyz at 503, for
# the rest of a sleep of up to half the credentials' lifetime.
MAX_WAIT_SECONDS = 10.0
# A snapshot fetched because the upstream refused its predecessor, and refused in turn, is not replaced again
# before this many seconds have passed since its fetch: the refusal is not about its age (a clock far off, a
# role whose sessions are revoked, an endpoint of another partition), and fetching again for every request
# would turn each one into an STS call.
REFUSED_AGAIN_SECONDS = 30.0
# The upstream rejected credentials for these codes: the source behind them may be stale too.
REJECTED_CREDENTIAL_CODES = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException"}
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Immutable credentials. ``expiry`` is epoch seconds, None for credentials that never expire;
    ``issued`` is the epoch second the snapshot was fetched. ``repr`` masks the key id and hides the rest."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(repr=False, default=None)
    expiry: float | None = None
    issued: float = 0.0

    def __repr__(self) -> str:
        return f"Snapshot(access_key={mask(self.access_key)}, expiry={self.expiry})"

    def usable(self, now: float) -> bool:
        """True while more than EXPIRY_MARGIN_SECONDS of validity are left at ``now`` (epoch seconds)."""
        return self.expiry is None or self.expiry - now > EXPIRY_MARGIN_SECONDS

    @property
    def refresh_at(self) -> float | None:
        """Epoch second to refresh at: half the lifetime after ``issued`` (at least 1 s), and never later than
        the moment it stops being usable. None for credentials that never expire."""
        if self.expiry is None:
            return None
        lifetime = max(self.expiry - self.issued, 0.0)
        ahead = self.issued + max(lifetime * REFRESH_FRACTION, MIN_REFRESH_INTERVAL_SECONDS)
        return min(ahead, self.expiry - EXPIRY_MARGIN_SECONDS)

    def refresh_due(self, now: float) -> bool:
        due = self.refresh_at
        return due is not None and now >= due


def mask(access_key: str) -> str:
    """An access key id safe for logs: ``ASIA...WXYZ``."""
    return f"{access_key[:4]}...{access_key[-4:]}" if len(access_key) > 8 else "****"


Fetch = Callable[[], Snapshot]
"""A blocking credential fetch; runs in a worker thread. Raises CredentialsUnavailable."""

_BOTOCORE_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError, ClientError, OSError, ValueError)


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        stamp = value
    else:
        stamp = parse_timestamp(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def _describe(exc: BaseException) -> str:
    """A log-safe one-line reason: botocore's ClientError text names the operation and AWS's message."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    if isinstance(exc, BotoCoreError):
        return str(exc)  # botocore's messages name the provider and the reason, never a secret
    return type(exc).__name__


def _error_code(exc: BaseException) -> str | None:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ClientError):
            code = cause.response.get("Error", {}).get("Code")
            return code if isinstance(code, str) else None
        cause = cause.__cause__
    return None


class NeverCache(dict[str, Any]):
    """A cache for botocore's ``CachedCredentialFetcher`` that never holds anything.

    botocore's fetchers (AssumeRole from a profile, web identity, SSO) answer from their cache until 15 minutes
    before expiry, judged by the real clock; with this cache every ``fetch_credentials()`` is one real call.
    """

    def __contains__(self, key: object) -> bool:
        return False

    def __setitem__(self, key: str, value: Any) -> None:
        pass


def configure_session(session: botocore.session.Session, upstream: UpstreamConfig) -> None:
    """Set what the STS clients botocore makes for the chain should use: ``upstream.ca_bundle`` (docs/interface.md,
    "Configuration": used for STS as well), the upstream's connect/read timeouts, and no botocore retries (the manager
    retries with its own backoff, on its own clock)."""
    if upstream.ca_bundle:
        session.set_config_variable("ca_bundle", upstream.ca_bundle)
    session.set_default_client_config(
        BotocoreConfig(
            connect_timeout=upstream.connect_timeout_seconds,
            read_timeout=upstream.read_timeout_seconds,
            retries={"mode": "standard", "total_max_attempts": 1},
        )
    )


def _read_fresh(creds: Credentials) -> tuple[str, str, str | None, float | None]:
    """Read credentials botocore has just loaded: ``(access_key, secret_key, token, expiry epoch or None)``.

    A deferred credential (web identity, profile AssumeRole, SSO) fetches on its first read. A refreshable
    one loaded with data (container, IMDS, process) is read as loaded: its public accessors would refresh a
    second time when its lifetime is under botocore's fixed 15-minute advisory window.
    """
    if isinstance(creds, RefreshableCredentials) and not isinstance(creds, DeferredRefreshableCredentials):
        frozen = getattr(creds, "_frozen_credentials", None) or creds.get_frozen_credentials()
    else:
        frozen = creds.get_frozen_credentials()
    expiry = _epoch(getattr(creds, "_expiry_time", None)) if isinstance(creds, RefreshableCredentials) else None
    token: str | None = frozen.token
    return str(frozen.access_key or ""), str(frozen.secret_key or ""), token, expiry


def source_fetch(
    session: botocore.session.Session,
    *,
    region: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Fetch:
    """The source credentials from botocore's default chain, resolved afresh at every fetch.

    Each call walks botocore's provider chain (built once, with :class:`NeverCache`): static keys are read
    again, a web-identity token file or a Pod Identity authorization token file is read again by path (so a
    kubelet symlink swap is seen), and a refreshable source makes one real call. ``region`` is the STS
    region for the chain's own STS clients. Raises CredentialsUnavailable.
    """
    resolver = create_credential_resolver(session, cache=NeverCache(), region_name=region)

    def fetch() -> Snapshot:
        try:
            creds = resolver.load_credentials()
            if creds is None:
                raise errors.CredentialsUnavailable(
                    "no AWS credentials found (environment, profile, web identity, container, instance metadata)"
                )
            access_key, secret_key, token, expiry = _read_fresh(creds)
        except errors.ProxyError:
            raise
        except _BOTOCORE_ERRORS as exc:
            raise errors.CredentialsUnavailable(f"source credentials failed: {_describe(exc)}") from exc
        if not access_key or not secret_key:
            raise errors.CredentialsUnavailable("the source credentials have no access key or secret key")
        return Snapshot(access_key, secret_key, token, expiry, clock())

    return fetch


def assume_role_args(creds_cfg: CredentialsConfig) -> dict[str, Any]:
    """AssumeRole's parameters besides RoleArn from ``credentials.*``: RoleSessionName (default: the per-host
    :func:`~proxy.config.default_session_name`), DurationSeconds, ExternalId, Tags, SourceIdentity."""
    extra: dict[str, Any] = {
        "RoleSessionName": creds_cfg.role_session_name or default_session_name(),
        "DurationSeconds": creds_cfg.duration_seconds,
    }
    if creds_cfg.external_id:
        extra["ExternalId"] = creds_cfg.external_id
    if creds_cfg.session_tags:
        extra["Tags"] = [{"Key": k, "Value": v} for k, v in creds_cfg.session_tags.items()]
    if creds_cfg.source_identity:
        extra["SourceIdentity"] = creds_cfg.source_identity
    return extra


def assume_role_fetch(
    session: botocore.session.Session,
    source: Fetch,
    creds_cfg: CredentialsConfig,
    upstream: UpstreamConfig,
    clock: Callable[[], float] = time.time,
) -> Fetch:
    """AssumeRole ``credentials.role_arn`` on top of ``source``; every call is one real STS AssumeRole.

    The source snapshot is kept between calls and fetched again once half its lifetime has passed (so IRSA or
    Pod Identity credentials under the role are refreshed on their own schedule), or after STS rejected it.
    A source that fails to refresh while its snapshot is still usable is used as it is. STS is reached at its
    regional endpoint (or ``AWS_ENDPOINT_URL_STS``) with ``upstream.ca_bundle`` and the upstream's timeouts.
    Raises CredentialsUnavailable.
    """
    role_arn = creds_cfg.role_arn
    assert role_arn is not None
    extra = assume_role_args(creds_cfg)
    create_client = functools.partial(
        session.create_client,
        region_name=upstream.region,
        verify=upstream.ca_bundle or session.get_config_variable("ca_bundle") or True,
    )
    held: list[Snapshot] = []  # the source snapshot; fetches are serial (one in flight, see CredentialManager)

    def source_snapshot(now: float) -> Snapshot:
        current = held[0] if held else None
        if current is not None and not current.refresh_due(now):
            return current
        try:
            fresh = source()
        except errors.ProxyError as exc:
            if current is None or not current.usable(now):
                raise
            log.warning("source credential refresh failed; using the current ones", extra={"reason": exc.message})
            return current
        held[:] = [fresh]
        return fresh

    def fetch() -> Snapshot:
        src = source_snapshot(clock())
        fetcher = AssumeRoleCredentialFetcher(
            create_client,
            Credentials(src.access_key, src.secret_key, src.token),
            role_arn,
            extra_args=extra,
            cache=NeverCache(),
        )
        try:
            data = fetcher.fetch_credentials()
        except _BOTOCORE_ERRORS as exc:
            if _error_code(exc) in REJECTED_CREDENTIAL_CODES:
                held.clear()  # STS refused the source credentials: fetch them again next time
            raise errors.CredentialsUnavailable(f"AssumeRole {role_arn} failed: {_describe(exc)}") from exc
        return Snapshot(data["access_key"], data["secret_key"], data["token"], _epoch(data["expiry_time"]), clock())

    return fetch


def build_fetch(
    session: botocore.session.Session,
    creds_cfg: CredentialsConfig,
    upstream: UpstreamConfig,
    clock: Callable[[], float] = time.time,
) -> Fetch:
    """The fetch for this configuration: the source chain, with AssumeRole on top when ``role_arn`` is set.

    Configures ``session`` for the STS clients of the chain (:func:`configure_session`).
    """
    configure_session(session, upstream)
    source = source_fetch(session, region=upstream.region, clock=clock)
    if creds_cfg.role_arn:
        return assume_role_fetch(session, source, creds_cfg, upstream, clock)
    return source


def static_fetch(access_key: str, secret_key: str, token: str | None = None) -> Fetch:
    """Fixed credentials that never expire (tests and tools)."""
    snapshot = Snapshot(access_key, secret_key, token, None, 0.0)
    return lambda: snapshot


class CredentialManager:
    """The current credentials for signing, refreshed ahead of expiry in the background.

    ``get()`` returns at once while the snapshot is usable; when half its lifetime has passed it only wakes
    the background refresher, so a request never waits for STS while it holds valid credentials. Without a
    usable snapshot ``get()`` joins the fetch (one for all waiters), or, when the last fetch failed, raises
    CredentialsUnavailable at once while the refresher retries with exponential backoff and full jitter
    (``random() * min(60, 2 ** failures)`` seconds). ``clock`` is epoch seconds (injectable for tests);
    ``rand`` is the jitter source in [0, 1).
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._rand = rand
        self._snapshot: Snapshot | None = None
        self._rejected: Snapshot | None = None  # refused by the upstream: not signed with again
        self._forced: Snapshot | None = None  # the last snapshot fetched because the upstream refused one
        self._inflight: asyncio.Task[Snapshot] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._failures = 0
        self._retry_at = 0.0
        self.last_error: str | None = None
        self.on_refresh: Callable[[str, Snapshot | None], None] = lambda result, snap: None

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def failures(self) -> int:
        """Consecutive failed fetches (0 after a success)."""
        return self._failures

    def _usable(self, snap: Snapshot | None, now: float) -> bool:
        return snap is not None and snap is not self._rejected and snap.usable(now)

    def ready(self) -> bool:
        """True while a usable snapshot is held (unexpired, and not refused by the upstream)."""
        return self._usable(self._snapshot, self._clock())

    def unready_reason(self) -> str:
        """Why :meth:`ready` is False, for /readyz and error messages (no secrets in it)."""
        snap = self._snapshot
        if snap is None:
            why = "not fetched yet"
        elif snap is self._rejected:
            why = "the upstream refused the current credentials"
        else:
            why = "the current credentials expired"
        return f"{why}; last refresh error: {self.last_error}" if self.last_error else why

    def seconds_until_expiry(self) -> float:
        """Seconds until the held credentials expire: 0 without any, ``inf`` for credentials that never do."""
        snap = self._snapshot
        if snap is None:
            return 0.0
        if snap.expiry is None:
            return float("inf")
        return max(snap.expiry - self._clock(), 0.0)

    def wake(self) -> None:
        """Make the background refresher look at the schedule now (call in the manager's loop)."""
        self._wake.set()

    async def get(self) -> Snapshot:
        """The credentials to sign with now. Raises CredentialsUnavailable when none are usable."""
        snap = self._snapshot
        now = self._clock()
        if snap is not None and self._usable(snap, now):
            if snap.refresh_due(now):
                self._wake.set()
            return snap
        if self._failures and (self._inflight is not None or not self._retry_due(now)):
            raise errors.CredentialsUnavailable(self._unavailable())
        return await self.refresh()

    async def refresh(self, rejected: Snapshot | None = None) -> Snapshot:
        """Fetch new credentials now, joining a fetch already under way. Raises CredentialsUnavailable.

        ``rejected`` is the snapshot the upstream refused (expired or revoked early); it is not signed with
        again. When another usable snapshot has replaced it meanwhile, that one is returned without a fetch;
        while fetches are failing and backing off, CredentialsUnavailable is raised instead of calling STS once
        per request.
        """
        if rejected is not None:
            now = self._clock()
            current = self._snapshot
            if current is rejected:
                self._rejected = rejected
            elif self._usable(current, now):
                assert current is not None
                return current
            if self._inflight is None and self._failures and not self._retry_due(now):
                raise errors.CredentialsUnavailable(self._unavailable())
        task = self._inflight or self._start_refresh()
        snap = await asyncio.shield(task)
        if rejected is not None:
            self._forced = snap
        return snap

    def may_refresh(self, rejected: Snapshot) -> bool:
        """Whether the upstream's refusal of ``rejected`` is worth a :meth:`refresh`: False when ``rejected`` was
        itself fetched because the upstream refused its predecessor, less than :data:`REFUSED_AGAIN_SECONDS`
        ago. The caller then answers with the upstream's refusal instead of calling STS once per request."""
        return rejected is not self._forced or self._clock() - rejected.issued >= REFUSED_AGAIN_SECONDS

    def _retry_due(self, now: float) -> bool:
        """Whether the backoff after the last failed fetch is over at ``now`` (clock seconds). A retry more
        than RETRY_MAX_SECONDS away means the clock was stepped back after the failure: the backoff is over
        then too, or a clock stepped back an hour would hold every retry (and requests) off for that hour."""
        return now >= self._retry_at or self._retry_at - now > RETRY_MAX_SECONDS

    def _unavailable(self) -> str:
        return f"no valid AWS credentials, retrying in the background ({self.unready_reason()})"

    def _start_refresh(self) -> asyncio.Task[Snapshot]:
        task = asyncio.get_running_loop().create_task(self._do_refresh())
        self._inflight = task
        task.add_done_callback(self._refresh_done)
        return task

    def _refresh_done(self, task: asyncio.Task[Snapshot]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: failures were logged in _do_refresh
        self._wake.set()

    async def _do_refresh(self) -> Snapshot:
        try:
            snap = await asyncio.to_thread(self._fetch)
            if not snap.usable(self._clock()):
                raise errors.CredentialsUnavailable(
                    f"the credential source returned credentials that expire in {_remaining(snap, self._clock())} s"
                )
        except errors.ProxyError as exc:
            self._failed(exc.message)
            raise
        except Exception as exc:  # a bug or an unexpected library error: never crash the refresher
            self._failed(type(exc).__name__)
            raise errors.CredentialsUnavailable(f"credential refresh failed: {type(exc).__name__}") from exc
        self._snapshot = snap
        self._failures = 0
        self._retry_at = 0.0
        self.last_error = None
        log.info(
            "credentials refreshed",
            extra={"access_key_id": mask(snap.access_key), "expires_in_seconds": _remaining(snap, self._clock())},
        )
        self.on_refresh("success", snap)
        return snap

    def _failed(self, reason: str) -> None:
        self._failures += 1
        ceiling = RETRY_BASE_SECONDS * 2.0 ** min(self._failures, RETRY_MAX_EXPONENT)
        delay = self._rand() * min(RETRY_MAX_SECONDS, ceiling)
        now = self._clock()
        self._retry_at = now + delay
        self.last_error = reason
        current = self._snapshot
        log.warning(
            "credential refresh failed",
            extra={
                "reason": reason,
                "failures": self._failures,
                "retry_in_seconds": round(delay, 2),
                "valid_for_seconds": None if current is None else _remaining(current, now),
            },
        )
        self.on_refresh("error", None)

    def _next_refresh(self) -> float | None:
        """Clock second of the next background fetch: after a failure, the end of its backoff (now once the
        clock was stepped back past the failure, see :meth:`_retry_due`); else the snapshot's refresh time (now
        when there is none or it was refused); None when it never expires."""
        if self._failures:
            now = self._clock()
            return now if self._retry_due(now) else self._retry_at
        snap = self._snapshot
        if snap is None or snap is self._rejected:
            return self._clock()
        return snap.refresh_at

    async def start(self) -> None:
        """Start the background refresher (the first fetch starts at once; failures are retried)."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        for task in (self._runner, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._runner = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            due = self._next_refresh()
            now = self._clock()
            if due is not None and now >= due:
                with contextlib.suppress(errors.ProxyError):
                    await self.refresh()
                continue
            with contextlib.suppress(TimeoutError):
                wait = None if due is None else min(max(due - now, MIN_WAIT_SECONDS), MAX_WAIT_SECONDS)
                async with asyncio.timeout(wait):
                    await self._wake.wait()


def _remaining(snap: Snapshot, now: float) -> float | None:
    return None if snap.expiry is None else round(snap.expiry - now, 1)


__all__ = [
    "CredentialManager",
    "Fetch",
    "NeverCache",
    "Snapshot",
    "assume_role_args",
    "assume_role_fetch",
    "build_fetch",
    "configure_session",
    "mask",
    "source_fetch",
    "static_fetch",
]
