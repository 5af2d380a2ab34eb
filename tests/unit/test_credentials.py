"""CredentialManager's schedule, single flight and backoff under a fake clock; how botocore's credentials are
read without a second refresh; the AssumeRole parameters."""

from __future__ import annotations

import asyncio
import datetime
import threading
from typing import Any

import pytest
from botocore.credentials import AssumeRoleCredentialFetcher, Credentials, RefreshableCredentials

from proxy import credentials, errors
from proxy.config import CredentialsConfig, default_session_name
from proxy.credentials import (
    RETRY_MAX_SECONDS,
    CredentialManager,
    NeverCache,
    Snapshot,
    _read_fresh,
    assume_role_args,
)
from tests.clocks import ManualClock


class Source:
    """A fetch that issues ``lifetime``-second snapshots, or raises while ``failing``; counts its calls."""

    def __init__(self, clock: ManualClock, lifetime: float = 900.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.failing = False
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self) -> Snapshot:
        self.calls += 1
        assert self.gate.wait(10)
        if self.failing:
            raise errors.CredentialsUnavailable("AssumeRole failed: ServiceUnavailable (test)")
        now = self.clock()
        return Snapshot(f"ASIA{self.calls:016d}", "secret", "token", now + self.lifetime, now)


def test_snapshot_refreshes_at_half_life_and_stops_short_of_expiry() -> None:
    snap = Snapshot("ASIA1", "s", "t", expiry=1900.0, issued=1000.0)
    assert snap.refresh_at == 1450.0
    assert not snap.refresh_due(1449.9) and snap.refresh_due(1450.0)
    assert snap.usable(1869.9) and not snap.usable(1870.0)
    short = Snapshot("ASIA1", "s", "t", expiry=1040.0, issued=1000.0)
    assert short.refresh_at == 1010.0  # 30 s before it stops being usable, not at half of 40 s
    assert Snapshot("AKIA1", "s").refresh_at is None and Snapshot("AKIA1", "s").usable(1e12)


def test_snapshot_repr_hides_secrets() -> None:
    text = repr(Snapshot("ASIAABCDEFGHIJKL", "very-secret", "session-token", 1.0, 0.0))
    assert "very-secret" not in text and "session-token" not in text and "ASIAABCDEFGHIJKL" not in text


async def test_valid_credentials_never_fetch_in_the_request_path() -> None:
    clock = ManualClock()
    source = Source(clock)
    manager = CredentialManager(source, clock=clock)
    first = await manager.get()
    assert source.calls == 1
    clock.now += 500  # past half life: the background refresher (not started here) is woken, nothing else
    for _ in range(100):
        assert await manager.get() is first
    assert source.calls == 1


async def test_concurrent_requests_share_one_fetch() -> None:
    clock = ManualClock()
    source = Source(clock)
    manager = CredentialManager(source, clock=clock)
    source.gate.clear()
    waiters = [asyncio.ensure_future(manager.get()) for _ in range(50)]
    await asyncio.sleep(0)
    source.gate.set()
    results = await asyncio.gather(*waiters)
    assert len({id(r) for r in results}) == 1
    assert source.calls == 1


async def test_failures_back_off_with_jitter_and_fail_fast() -> None:
    clock = ManualClock()
    source = Source(clock)
    manager = CredentialManager(source, clock=clock, rand=lambda: 0.5)
    source.failing = True
    with pytest.raises(errors.CredentialsUnavailable):
        await manager.get()
    assert source.calls == 1 and manager.failures == 1 and not manager.ready()
    for _ in range(10):  # within the backoff (0.5 * 2 s): answered at once, no fetch
        with pytest.raises(errors.CredentialsUnavailable, match="ServiceUnavailable"):
            await manager.get()
    assert source.calls == 1
    delays = []
    for failures in range(2, 10):
        clock.now += 100  # past any backoff
        with pytest.raises(errors.CredentialsUnavailable):
            await manager.get()
        assert manager.failures == failures
        delays.append(manager._retry_at - clock.now)
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]  # 0.5 * min(60, 2 ** failures)
    source.failing = False
    clock.now += 100
    await manager.get()
    assert manager.ready() and manager.failures == 0 and manager.last_error is None


async def test_backoff_stays_bounded_through_an_outage_of_any_length() -> None:
    clock = ManualClock()
    source = Source(clock)
    manager = CredentialManager(source, clock=clock, rand=lambda: 0.999)
    source.failing = True
    for failures in range(1, 1201):  # 2.0 ** 1024 overflows a float: about 8 hours of STS outage
        with pytest.raises(errors.CredentialsUnavailable):
            await manager.get()
        assert manager.failures == failures
        assert 0 <= manager._retry_at - clock.now < RETRY_MAX_SECONDS
        clock.now += RETRY_MAX_SECONDS  # the documented maximum: the next get() fetches again
    assert source.calls == 1200
    source.failing = False
    assert await manager.get() is manager.snapshot and manager.failures == 0


async def test_background_refresher_refreshes_ahead_and_retries() -> None:
    clock = ManualClock()
    source = Source(clock)
    manager = CredentialManager(source, clock=clock, rand=lambda: 0.5)
    results: list[str] = []
    manager.on_refresh = lambda result, snap: results.append(result)
    await manager.start()
    try:
        await _until(lambda: source.calls == 1 and manager.ready())
        first = manager.snapshot
        clock.now += 451
        manager.wake()
        await _until(lambda: manager.snapshot is not first)
        source.failing = True
        clock.now += 451
        manager.wake()
        await _until(lambda: manager.failures == 1)
        assert manager.ready()  # the old snapshot is still valid
        assert manager._next_refresh() == clock.now + 1.0  # backoff: 0.5 * 2 s
        clock.now += 1.0
        manager.wake()
        await _until(lambda: source.calls == 4)
        assert results[:3] == ["success", "success", "error"]
    finally:
        await manager.close()


async def test_credentials_that_are_already_expiring_count_as_a_failure() -> None:
    clock = ManualClock()
    source = Source(clock, lifetime=20)  # less than the 30 s margin: never signed with
    manager = CredentialManager(source, clock=clock, rand=lambda: 0.5)
    with pytest.raises(errors.CredentialsUnavailable, match="expire in 20"):
        await manager.get()
    assert manager.failures == 1 and manager.snapshot is None


async def test_refused_snapshot_is_replaced_once_and_not_reused() -> None:
    clock = ManualClock()
    source = Source(clock)
    manager = CredentialManager(source, clock=clock, rand=lambda: 0.5)
    first = await manager.get()
    second = await manager.refresh(rejected=first)
    assert second is not first and source.calls == 2
    assert await manager.refresh(rejected=first) is second  # already replaced: no fetch
    assert source.calls == 2
    source.failing = True
    with pytest.raises(errors.CredentialsUnavailable):
        await manager.refresh(rejected=second)
    assert not manager.ready()
    with pytest.raises(errors.CredentialsUnavailable, match="refused"):
        await manager.get()  # the refused snapshot is not signed with again
    with pytest.raises(errors.CredentialsUnavailable):
        await manager.refresh(rejected=second)
    assert source.calls == 3  # backing off: no fetch per refused request


def test_seconds_until_expiry() -> None:
    clock = ManualClock()
    manager = CredentialManager(lambda: Snapshot("A", "s"), clock=clock)
    assert manager.seconds_until_expiry() == 0.0
    manager._snapshot = Snapshot("ASIA1", "s", "t", clock.now + 900, clock.now)
    clock.now += 100
    assert manager.seconds_until_expiry() == 800.0
    manager._snapshot = Snapshot("AKIA1", "s")
    assert manager.seconds_until_expiry() == float("inf")


async def test_a_clock_stepped_back_during_an_outage_does_not_stretch_the_backoff() -> None:
    """NTP steps the clock back an hour right after a failed fetch: the retry was due 1 s later on the old
    clock. Without a bound it would be an hour away, and every request until then CredentialsUnavailable."""
    clock = ManualClock()
    source = Source(clock)
    manager = CredentialManager(source, clock=clock, rand=lambda: 0.5)
    source.failing = True
    with pytest.raises(errors.CredentialsUnavailable):
        await manager.get()
    clock.now -= 3600
    source.failing = False
    assert manager._next_refresh() == clock.now  # the refresher retries at once
    assert await manager.get() is manager.snapshot and source.calls == 2 and manager.failures == 0
    # a step back of less than RETRY_MAX_SECONDS keeps the backoff (at most RETRY_MAX_SECONDS then)
    source.failing = True
    clock.now += 1000  # the snapshot expired
    with pytest.raises(errors.CredentialsUnavailable):
        await manager.get()
    clock.now -= 10
    with pytest.raises(errors.CredentialsUnavailable, match="retrying in the background"):
        await manager.get()
    assert source.calls == 3 and 0 < manager._next_refresh() - clock.now <= RETRY_MAX_SECONDS  # type: ignore[operator]


async def test_the_refresher_retries_after_a_clock_step_back_without_being_woken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(credentials, "MAX_WAIT_SECONDS", 0.05)
    clock = ManualClock()
    source = Source(clock)
    source.failing = True
    manager = CredentialManager(source, clock=clock, rand=lambda: 0.999)  # the retry ~2 s after the failure
    await manager.start()
    try:
        await _until(lambda: manager.failures == 1)
        source.failing = False
        clock.now -= 3600  # no wake(): a real clock step wakes nothing
        await _until(manager.ready)
        assert source.calls == 2
    finally:
        await manager.close()


async def test_the_refresher_sees_a_clock_stepped_forward_without_being_woken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refresher sleeps until half the lifetime on the loop's monotonic clock. The wall clock jumps an
    hour (NTP, a resumed VM): the credentials expired by it, and /readyz is 503 until they are replaced, which
    must not wait for the rest of that sleep (450 s here, 30 min with one-hour credentials)."""
    monkeypatch.setattr(credentials, "MAX_WAIT_SECONDS", 0.05)
    clock = ManualClock()
    source = Source(clock)
    manager = CredentialManager(source, clock=clock)
    await manager.start()
    try:
        await _until(manager.ready)
        clock.now += 3600
        assert not manager.ready() and manager.seconds_until_expiry() == 0.0
        await _until(manager.ready)
        assert source.calls == 2 and manager.seconds_until_expiry() == 900.0
    finally:
        await manager.close()


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


# ---------------------------------------------------------------------------------------------------------
# botocore


def test_fresh_refreshable_credentials_are_read_without_a_second_refresh() -> None:
    """A container or IMDS credential of 900 s is inside botocore's 15-minute advisory window from birth: its
    public accessors would call the source again. ``_read_fresh`` reads what was just loaded."""
    calls: list[int] = []
    expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=900)

    def refresh() -> dict[str, Any]:
        calls.append(1)
        return {"access_key": "ASIANEW", "secret_key": "s2", "token": "t2", "expiry_time": expiry.isoformat()}

    creds = RefreshableCredentials("ASIAOLD", "s1", "t1", expiry, refresh, "container-role")
    assert _read_fresh(creds) == ("ASIAOLD", "s1", "t1", expiry.timestamp())
    assert calls == []
    creds.get_frozen_credentials()  # what botocore itself would do: one more call to the source
    assert calls == [1]
    assert _read_fresh(Credentials("AKIA1", "s", None)) == ("AKIA1", "s", None, None)


def test_never_cache_makes_every_botocore_fetch_real() -> None:
    cache = NeverCache()
    cache["k"] = {"Credentials": {}}
    assert "k" not in cache and len(cache) == 0
    responses = iter(range(3))

    class FakeSTSClient:
        def assume_role(self, **kwargs: Any) -> dict[str, Any]:
            n = next(responses)
            expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
            return {
                "Credentials": {
                    "AccessKeyId": f"ASIA{n}",
                    "SecretAccessKey": "s",
                    "SessionToken": "t",
                    "Expiration": expiry,
                }
            }

    fetcher = AssumeRoleCredentialFetcher(
        lambda *a, **k: FakeSTSClient(), Credentials("AKIA1", "s"), "arn:aws:iam::1:role/r", cache=NeverCache()
    )
    assert [fetcher.fetch_credentials()["access_key"] for _ in range(3)] == ["ASIA0", "ASIA1", "ASIA2"]


def test_assume_role_args() -> None:
    assert assume_role_args(CredentialsConfig(role_arn="arn:aws:iam::1:role/r")) == {
        "RoleSessionName": default_session_name(),
        "DurationSeconds": 3600,
    }
    full = CredentialsConfig(
        role_arn="arn:aws:iam::1:role/r",
        role_session_name="s",
        external_id="x",
        duration_seconds=900,
        session_tags={"a": "1"},
        source_identity="alice",
    )
    assert assume_role_args(full) == {
        "RoleSessionName": "s",
        "DurationSeconds": 900,
        "ExternalId": "x",
        "Tags": [{"Key": "a", "Value": "1"}],
        "SourceIdentity": "alice",
    }


def test_default_session_name_is_per_host_and_valid() -> None:
    assert default_session_name("pod-7d9f-abc") == "query-signing-proxy-pod-7d9f-abc"
    long = default_session_name("x" * 100 + "/bad:chars")
    assert len(long) == 64 and all(c.isalnum() or c in "+=,.@-_" for c in long)
