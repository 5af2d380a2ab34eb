"""Role-derived temporary credentials, fetched by botocore and refreshed ahead, never on the event loop.

botocore finds the *source* credentials (its default chain: environment, shared config profile, IRSA web
identity, container/EKS Pod Identity, instance metadata). With ``credentials.role_arn`` an AssumeRole is
chained on top with botocore's ``AssumeRoleCredentialFetcher`` (ExternalId, RoleSessionName,
DurationSeconds, Tags, SourceIdentity); without it the source credentials sign directly.

botocore's ``RefreshableCredentials`` refreshes under a thread lock with a synchronous STS call, inside a
fixed 15-minute advisory window (with 900-second credentials, on every call). Instead,
:class:`CredentialManager` holds an immutable :class:`Snapshot`, refreshes it in a worker thread
(``asyncio.to_thread``) once half of its lifetime has passed, shares one refresh among all waiters, and
lets requests whose snapshot is still valid go on without waiting for STS.
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
from botocore.credentials import AssumeRoleCredentialFetcher
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
RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


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
        return self.expiry is None or self.expiry - now > EXPIRY_MARGIN_SECONDS

    def refresh_due(self, now: float) -> bool:
        if self.expiry is None:
            return False
        lifetime = max(self.expiry - self.issued, 0.0)
        return now >= self.issued + max(lifetime * REFRESH_FRACTION, MIN_REFRESH_INTERVAL_SECONDS) or not self.usable(
            now
        )


def mask(access_key: str) -> str:
    """An access key id safe for logs: ``ASIA...WXYZ``."""
    return f"{access_key[:4]}...{access_key[-4:]}" if len(access_key) > 8 else "****"


Fetch = Callable[[], Snapshot]
"""A blocking credential fetch; runs in a worker thread. Raises CredentialsUnavailable."""

_BOTOCORE_ERRORS: dict[type[BaseException], type[errors.ProxyError]] = {
    BotoCoreError: errors.CredentialsUnavailable,
    ClientError: errors.CredentialsUnavailable,
    OSError: errors.CredentialsUnavailable,
}


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
    return type(exc).__name__


def source_fetch(session: botocore.session.Session, clock: Callable[[], float] = time.time) -> Fetch:
    """Sign with the source credentials from botocore's default chain (no role to assume).

    Refreshable sources (IRSA web identity, container, instance metadata) refresh through botocore's own
    machinery when their expiry nears.
    """

    def fetch() -> Snapshot:
        try:
            creds = session.get_credentials()
            if creds is None:
                raise errors.CredentialsUnavailable(
                    "no AWS credentials found (environment, profile, web identity, container, instance metadata)"
                )
            frozen = creds.get_frozen_credentials()
        except errors.ProxyError:
            raise
        except tuple(_BOTOCORE_ERRORS) as exc:
            raise errors.CredentialsUnavailable(f"source credentials failed: {_describe(exc)}") from exc
        if not frozen.access_key or not frozen.secret_key:
            raise errors.CredentialsUnavailable("the source credentials have no access key or secret key")
        expiry = _epoch(getattr(creds, "_expiry_time", None))
        return Snapshot(frozen.access_key, frozen.secret_key, frozen.token, expiry, clock())

    return fetch


def assume_role_fetch(
    session: botocore.session.Session,
    creds_cfg: CredentialsConfig,
    upstream: UpstreamConfig,
    clock: Callable[[], float] = time.time,
) -> Fetch:
    """AssumeRole on top of the source credentials, every call a fresh STS request (botocore's fetcher).

    STS is reached at its regional endpoint (or ``AWS_ENDPOINT_URL_STS``) with ``upstream.ca_bundle`` and the
    upstream's connect/read timeouts.
    """
    role_arn = creds_cfg.role_arn
    assert role_arn is not None
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
    client_config = BotocoreConfig(
        connect_timeout=upstream.connect_timeout_seconds,
        read_timeout=upstream.read_timeout_seconds,
        retries={"mode": "standard", "max_attempts": 2},
    )
    create_client = functools.partial(
        session.create_client,
        region_name=upstream.region,
        verify=upstream.ca_bundle or session.get_config_variable("ca_bundle") or True,
        config=client_config,
    )
    fetcher_box: list[AssumeRoleCredentialFetcher] = []

    def fetch() -> Snapshot:
        try:
            if not fetcher_box:
                source = session.get_credentials()
                if source is None:
                    raise errors.CredentialsUnavailable(
                        f"no source credentials to assume {role_arn} with "
                        "(environment, profile, web identity, container, instance metadata)"
                    )
                # An expiry window longer than any session makes botocore's cache always stale: each
                # fetch is a real AssumeRole, and the refresh schedule is ours.
                fetcher_box.append(
                    AssumeRoleCredentialFetcher(
                        create_client,
                        source,
                        role_arn,
                        extra_args=extra,
                        expiry_window_seconds=10**9,
                    )
                )
            data = fetcher_box[0].fetch_credentials()
        except errors.ProxyError:
            raise
        except tuple(_BOTOCORE_ERRORS) as exc:
            raise errors.CredentialsUnavailable(f"AssumeRole {role_arn} failed: {_describe(exc)}") from exc
        return Snapshot(data["access_key"], data["secret_key"], data["token"], _epoch(data["expiry_time"]), clock())

    return fetch


def build_fetch(
    session: botocore.session.Session,
    creds_cfg: CredentialsConfig,
    upstream: UpstreamConfig,
    clock: Callable[[], float] = time.time,
) -> Fetch:
    """The fetch for this configuration: AssumeRole when ``role_arn`` is set, else the source credentials."""
    if creds_cfg.role_arn:
        return assume_role_fetch(session, creds_cfg, upstream, clock)
    return source_fetch(session, clock)


def static_fetch(access_key: str, secret_key: str, token: str | None = None) -> Fetch:
    """Fixed credentials that never expire (tests and tools)."""
    snapshot = Snapshot(access_key, secret_key, token, None, 0.0)
    return lambda: snapshot


class CredentialManager:
    """The current credentials for signing, refreshed ahead of expiry in the background.

    ``get()`` returns at once while the snapshot is usable (starting a background refresh when half its
    lifetime has passed); it waits only when there is no usable snapshot. Concurrent refreshes are one
    fetch. Failed refreshes keep the old snapshot and retry with exponential backoff and full jitter.
    ``clock`` is epoch seconds (injectable for tests).
    """

    def __init__(self, fetch: Fetch, *, clock: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._inflight: asyncio.Task[Snapshot] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.last_error: str | None = None
        self.on_refresh: Callable[[str, Snapshot | None], None] = lambda result, snap: None

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def ready(self) -> bool:
        """True while a usable (unexpired) snapshot is held."""
        snap = self._snapshot
        return snap is not None and snap.usable(self._clock())

    async def get(self) -> Snapshot:
        """The credentials to sign with now. Raises CredentialsUnavailable when none are usable."""
        snap = self._snapshot
        now = self._clock()
        if snap is not None and snap.usable(now):
            if snap.refresh_due(now) and self._inflight is None:
                self._start_refresh()
            return snap
        return await self.refresh()

    async def refresh(self) -> Snapshot:
        """Fetch new credentials now (joining a fetch already under way). Raises CredentialsUnavailable."""
        task = self._inflight or self._start_refresh()
        return await asyncio.shield(task)

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
        except errors.ProxyError as exc:
            self.last_error = exc.message
            log.warning("credential refresh failed", extra={"reason": exc.message})
            self.on_refresh("error", None)
            raise
        except Exception as exc:  # a bug or an unexpected library error: never crash the refresher
            self.last_error = type(exc).__name__
            log.error("credential refresh failed", extra={"reason": type(exc).__name__})
            self.on_refresh("error", None)
            raise errors.CredentialsUnavailable(f"credential refresh failed: {type(exc).__name__}") from exc
        self._snapshot = snap
        self.last_error = None
        log.info(
            "credentials refreshed",
            extra={
                "access_key_id": mask(snap.access_key),
                "expires_in_seconds": _remaining(snap, self._clock()),
            },
        )
        self.on_refresh("success", snap)
        return snap

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
        failures = 0
        while True:
            snap = self._snapshot
            now = self._clock()
            if snap is None or snap.refresh_due(now):
                try:
                    await self.refresh()
                    failures = 0
                    continue
                except errors.ProxyError:
                    failures += 1
                    delay = random.uniform(0, min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2**failures))
            else:
                if snap.expiry is None:
                    delay = None
                else:
                    lifetime = max(snap.expiry - snap.issued, 0.0)
                    due = snap.issued + max(lifetime * REFRESH_FRACTION, MIN_REFRESH_INTERVAL_SECONDS)
                    delay = max(due - now, MIN_REFRESH_INTERVAL_SECONDS)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()


def _remaining(snap: Snapshot, now: float) -> float | None:
    return None if snap.expiry is None else round(snap.expiry - now, 1)


__all__ = [
    "CredentialManager",
    "Fetch",
    "Snapshot",
    "assume_role_fetch",
    "build_fetch",
    "mask",
    "source_fetch",
    "static_fetch",
]
