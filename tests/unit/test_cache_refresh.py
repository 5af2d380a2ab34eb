"""Refresh-ahead, version checks and the byte bound of the secret cache, as pure logic: a controlled clock,
operations decoded from botocore's model, and the counting upstream of test_cache.py (which also answers the
cache's own background calls). "No read waits on the upstream" is counted: a read that needed the upstream
is a miss (``cache_misses_total``); and where it matters the upstream holds its answers, so that a read
that waited would never finish."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from proxy import errors
from proxy.cache import REFRESH_AT, RETRY_AFTER, version_unchanged
from proxy.models import Operation
from proxy.sharedstore import SharedStore
from tests.clocks import ManualClock
from tests.unit.test_cache import Fixture, Upstream, batch, error, op, put, until

TTL = 100.0


def reader(**cfg: Any) -> Fixture:
    return Fixture(**{"ttl_seconds": TTL, "max_entries": 100, "refresh_ahead": True, **cfg})


async def settle(f: Fixture) -> None:
    """Let every background call the cache started finish (the upstream answers at once unless held)."""
    await until(lambda: f.cache.in_flight == 0)


async def tick(f: Fixture, seconds: float) -> None:
    """Move the clock, run the sweep as the background task would, and let what it started finish."""
    f.clock.advance(seconds)
    f.cache.refresh_due()
    await settle(f)


SECRETS = ("app/db", "app/api", "app/other")


# ---------------------------------------------------------------------------------------------------------
# refresh-ahead, one process


async def test_steady_reads_never_wait_and_cost_one_upstream_call_per_refresh_period() -> None:
    """Three secrets read every second for five TTLs: after the first reads, every read is a hit, and each
    secret is fetched once per refresh period (80% of the TTL), whoever reads it."""
    f = reader()
    for name in SECRETS:
        await f.value(name)
    seconds = int(5 * TTL)
    for _ in range(seconds):
        await tick(f, 1)
        for name in SECRETS:
            assert await f.value(name) == f.upstream.values[name]
    assert f.metric("cache_misses_total") == len(SECRETS)  # the first read of each, none after
    periods = int(seconds // (REFRESH_AT * TTL))
    assert f.upstream.count() == len(SECRETS) * (1 + periods)
    assert f.metric("cache_refreshes_total", result="fetched") == len(SECRETS) * periods
    assert f.metric("cache_evictions_total", reason="expired") == 0


async def test_a_reader_slower_than_the_refresh_window_still_never_waits() -> None:
    """Reads every 45% of the TTL mostly miss the window between the refresh point and expiry; the sweep
    refreshes what was read since its fetch at the refresh point itself."""
    f = reader()
    await f.value("app/db")
    for _ in range(20):
        for _ in range(45):
            await tick(f, 1)
        assert await f.value("app/db") == "v1"
    assert f.metric("cache_misses_total") == 1
    assert f.upstream.count() == 1 + int(20 * 45 // (REFRESH_AT * TTL))


async def test_reads_are_answered_while_the_refresh_waits_on_the_upstream() -> None:
    f = reader()
    await f.value("app/db")
    f.clock.advance(REFRESH_AT * TTL)
    f.upstream.hold()
    f.upstream.values["app/db"] = "v2"
    assert await f.value("app/db") == "v1"  # at the refresh point: answered, and the refresh starts
    await until(lambda: len(f.upstream.held) == 1)
    for _ in range(10):
        f.clock.advance(TTL * 0.019)
        assert await f.value("app/db") == "v1"  # up to expiry, while the refresh is held at the upstream
    assert f.upstream.count() == 2 and f.metric("cache_misses_total") == 1
    f.upstream.release()
    await settle(f)
    assert await f.value("app/db") == "v2"
    assert f.upstream.count() == 2


async def test_one_refresh_for_many_readers() -> None:
    f = reader()
    await f.value("app/db")
    f.clock.advance(REFRESH_AT * TTL)
    f.upstream.hold()
    answers = await asyncio.gather(*(f.value("app/db") for _ in range(50)))
    assert answers == ["v1"] * 50
    await until(lambda: len(f.upstream.held) == 1)
    f.cache.refresh_due()
    f.upstream.release()
    await settle(f)
    assert f.upstream.count() == 2 and f.metric("cache_refreshes_total", result="fetched") == 1


async def test_an_entry_nobody_read_since_its_fetch_expires() -> None:
    f = reader()
    await f.value("app/db")
    for _ in range(int(TTL) - 1):
        await tick(f, 1)
    assert f.upstream.count() == 1  # not read since its fetch: no refresh
    await tick(f, 1)
    f.upstream.values["app/db"] = "v2"
    assert await f.value("app/db") == "v2"  # expired: this read waits
    assert f.metric("cache_misses_total") == 2 and f.metric("cache_evictions_total", reason="expired") == 1


async def test_a_refreshed_entry_nobody_reads_is_not_refreshed_again() -> None:
    f = reader()
    await f.value("app/db")
    await tick(f, 1)
    await f.value("app/db")  # read since the fetch: refreshed at the refresh point
    for _ in range(int(3 * TTL)):
        await tick(f, 1)
    assert f.upstream.count() == 2  # the refresh, then nothing: its answer was never read
    assert f.metric("cache_refreshes_total", result="fetched") == 1


async def test_a_miss_after_expiry_joins_the_refresh_in_flight() -> None:
    f = reader()
    await f.value("app/db")
    f.clock.advance(REFRESH_AT * TTL)
    f.upstream.hold()
    await f.value("app/db")
    await until(lambda: len(f.upstream.held) == 1)
    f.clock.advance(TTL)  # expired while the refresh is held
    late = asyncio.ensure_future(f.value("app/db"))
    await until(lambda: f.metric("cache_misses_total") == 2)
    f.upstream.release()
    assert await late == "v1"
    assert f.upstream.count() == 2  # the miss shared the refresh's call


async def test_a_refresh_in_flight_when_a_write_lands_does_not_put_the_old_value_back() -> None:
    f = reader()
    await f.value("app/db")
    f.clock.advance(REFRESH_AT * TTL)
    f.upstream.hold()
    await f.value("app/db")  # starts the refresh, which reads v1 and is held
    await until(lambda: len(f.upstream.held) == 1)
    f.upstream.holding.clear()
    await f.ask(put("app/db", "v2"))
    f.upstream.release()
    await settle(f)
    assert f.metric("cache_refreshes_total", result="discarded") == 1
    assert await f.value("app/db") == "v2"
    for _ in range(int(2 * TTL)):
        await tick(f, 1)
        assert await f.value("app/db") == "v2"


async def test_a_failed_refresh_serves_the_entry_until_expiry_and_is_tried_again() -> None:
    f = reader()
    await f.value("app/db")
    f.clock.advance(REFRESH_AT * TTL)
    f.upstream.fail = errors.BadGateway("unreachable")
    assert await f.value("app/db") == "v1"
    await settle(f)
    assert f.metric("cache_refreshes_total", result="failed") == 1
    await tick(f, RETRY_AFTER * TTL / 2)
    assert await f.value("app/db") == "v1"
    await settle(f)
    assert f.upstream.count() == 2  # not before RETRY_AFTER of the TTL
    f.upstream.fail = None
    f.upstream.values["app/db"] = "v2"
    await tick(f, RETRY_AFTER * TTL / 2)  # the sweep tries again: the entry was read
    assert f.upstream.count() == 3 and f.metric("cache_refreshes_total", result="fetched") == 1
    assert await f.value("app/db") == "v2"
    assert f.metric("cache_misses_total") == 1


@pytest.mark.parametrize(
    "answer", [error(500, "InternalServiceError"), error(400, "ResourceNotFoundException")], ids=["500", "400"]
)
async def test_an_error_answer_to_a_refresh_is_not_kept(answer: Any) -> None:
    f = reader()
    await f.value("app/db")
    f.clock.advance(REFRESH_AT * TTL)
    f.upstream.fail = answer
    assert await f.value("app/db") == "v1"
    await settle(f)
    assert f.metric("cache_refreshes_total", result="failed") == 1
    assert await f.value("app/db") == "v1"


async def test_without_refresh_ahead_entries_expire_while_read() -> None:
    f = Fixture(ttl_seconds=TTL, max_entries=100, refresh_ahead=False)
    await f.value("app/db")
    for _ in range(int(TTL)):
        await tick(f, 1)
        await f.value("app/db")
    assert f.metric("cache_misses_total") == 2 and f.upstream.count() == 2


async def test_a_batch_read_marks_its_entries_for_refresh() -> None:
    f = reader()
    await f.ask(batch("app/db", "app/api"))
    await tick(f, 1)
    await f.ask(batch("app/db", "app/api"))
    await tick(f, REFRESH_AT * TTL)
    assert f.upstream.count() == 2  # one GetSecretValue each, by ARN
    assert f.upstream.count("BatchGetSecretValue") == 1
    await tick(f, TTL * 0.5)
    doc = json.loads((await f.ask(batch("app/api", "app/db"))).body)
    assert [v["Name"] for v in doc["SecretValues"]] == ["app/api", "app/db"]
    assert f.metric("cache_misses_total") == 1


async def test_the_sweep_starts_only_with_an_upstream_call_and_stops_on_close() -> None:
    f = reader()
    f.cache.start()
    assert f.cache._sweeper is not None
    await f.cache.close()
    assert f.cache._sweeper is None
    bare = reader()
    bare.cache.call = None
    bare.cache.start()
    assert bare.cache._sweeper is None


# ---------------------------------------------------------------------------------------------------------
# version checks


def test_version_unchanged_compares_the_version_and_its_stages() -> None:
    cached = {"VersionId": "v1", "VersionStages": ["AWSCURRENT"]}
    assert version_unchanged(cached, {"VersionIdsToStages": {"v1": ["AWSCURRENT"], "v0": ["AWSPREVIOUS"]}})
    assert not version_unchanged(cached, {"VersionIdsToStages": {"v2": ["AWSCURRENT"], "v1": ["AWSPREVIOUS"]}})
    assert not version_unchanged(cached, {"VersionIdsToStages": {"v1": ["AWSCURRENT", "AWSPENDING"]}})
    assert not version_unchanged(cached, {"VersionIdsToStages": {"v0": ["AWSCURRENT"]}})  # v1 lost every stage
    assert not version_unchanged(cached, {"VersionIdsToStages": {"v1": ["AWSCURRENT"]}, "DeletedDate": 1.0})
    assert not version_unchanged(cached, {})
    assert not version_unchanged({"VersionId": "v1"}, {"VersionIdsToStages": {"v1": ["AWSCURRENT"]}})


async def test_a_version_check_that_finds_no_change_skips_get_secret_value() -> None:
    f = reader(version_check=True)
    await f.value("app/db")
    for _ in range(int(3 * TTL)):
        await tick(f, 1)
        assert await f.value("app/db") == "v1"
    checks = int(3 * TTL // (REFRESH_AT * TTL))
    assert f.upstream.count("DescribeSecret") == checks
    assert f.upstream.count() == 1
    assert f.metric("cache_version_checks_total", result="unchanged") == checks
    assert f.metric("cache_refreshes_total", result="unchanged") == checks
    assert f.metric("cache_misses_total") == 1


async def test_a_rotation_behind_the_proxy_is_served_within_one_ttl() -> None:
    f = reader(version_check=True)
    await f.value("app/db")
    await tick(f, 10)
    await f.value("app/db")
    f.upstream.values["app/db"] = "rotated"  # a new AWSCURRENT version, written straight to the service
    served = 0.0
    while await f.value("app/db") != "rotated":
        await tick(f, 1)
        served += 1
    assert 10 + served <= TTL
    assert f.upstream.count("DescribeSecret") == 1 and f.upstream.count() == 2
    assert f.metric("cache_version_checks_total", result="changed") == 1


async def test_a_failed_version_check_falls_back_to_get_secret_value() -> None:
    f = reader(version_check=True)
    await f.value("app/db")
    f.clock.advance(REFRESH_AT * TTL)
    original = f.upstream.answer

    def describe_denied(operation: Operation) -> Any:
        if operation.name == "DescribeSecret":
            return errors.BadGateway("unreachable") if f.upstream.count("DescribeSecret") == 1 else None
        return original(operation)

    f.upstream.answer = describe_denied  # type: ignore[method-assign]
    f.upstream.values["app/db"] = "v2"
    await f.value("app/db")
    await settle(f)
    assert f.metric("cache_version_checks_total", result="error") == 1
    assert f.upstream.count() == 2 and await f.value("app/db") == "v2"


# ---------------------------------------------------------------------------------------------------------
# max_bytes


async def test_least_recently_used_is_evicted_beyond_max_bytes() -> None:
    probe = Fixture()
    size = len((await probe.ask(op("GetSecretValue", SecretId="app/db"))).body)
    f = Fixture(max_bytes=2 * size + 8)  # two answers of about that size fit, three do not
    await f.value("app/db")
    await f.value("app/api")
    await f.value("app/db")
    assert f.cache.size_bytes == f.metric("cache_bytes") > 0
    await f.value("app/other")
    assert len(f.cache) == 2
    assert f.metric("cache_evictions_total", reason="bytes") == 1
    assert f.cache.size_bytes == f.metric("cache_bytes") <= 2 * size + 8
    await f.value("app/db")
    assert f.upstream.count() == 3  # app/db was kept: app/api was the least recently used
    await f.value("app/api")
    assert f.upstream.count() == 4


async def test_an_answer_larger_than_max_bytes_is_answered_not_kept() -> None:
    f = Fixture(max_bytes=1024)
    f.upstream.values["app/db"] = "x" * 2000
    assert await f.value("app/db") == "x" * 2000
    assert len(f.cache) == 0 and f.metric("cache_bytes") == 0
    assert await f.value("app/db") == "x" * 2000
    assert f.upstream.count() == 2


async def test_cache_bytes_follows_drops() -> None:
    f = Fixture()
    await f.value("app/db")
    await f.value("app/api")
    assert f.metric("cache_bytes") == f.cache.size_bytes > 0
    await f.ask(put("app/db", "v2"))
    await f.ask(put("app/api", "k2"))
    assert f.metric("cache_bytes") == 0 == f.cache.size_bytes


# ---------------------------------------------------------------------------------------------------------
# several workers: two caches on one stamp table and one shared store, one clock


def two_workers(**cfg: Any) -> tuple[Fixture, Fixture]:
    clock = ManualClock(1000.0)
    upstream = Upstream()
    options = {"ttl_seconds": TTL, "max_entries": 100, "refresh_ahead": True, **cfg}
    shared = SharedStore(100, 1 << 20, TTL)
    a = Fixture(upstream=upstream, shared=shared, clock=clock, **options)
    return a, Fixture(stamps=a.cache.stamps, upstream=upstream, shared=shared, clock=clock, **options)


async def step(workers: tuple[Fixture, ...], seconds: float) -> None:
    workers[0].clock.advance(seconds)
    for w in workers:
        w.cache.refresh_due()
    for w in workers:
        await settle(w)


async def test_steady_reads_through_two_workers_cost_one_refresh_between_them() -> None:
    a, b = two_workers()
    for name in SECRETS:
        await a.value(name)
        await b.value(name)  # each worker's first read is its own miss
    seconds = int(5 * TTL)
    for second in range(seconds):
        await step((a, b), 1)
        for name in SECRETS:
            assert await (a if second % 2 else b).value(name) == a.upstream.values[name]
    periods = int(seconds // (REFRESH_AT * TTL))
    assert a.upstream.count() == len(SECRETS) * (2 + periods)
    fetched = a.metric("cache_refreshes_total", result="fetched") + b.metric("cache_refreshes_total", result="fetched")
    adopted = a.metric("cache_refreshes_total", result="adopted") + b.metric("cache_refreshes_total", result="adopted")
    assert fetched == len(SECRETS) * periods and adopted >= len(SECRETS) * (periods - 1)
    assert a.metric("cache_misses_total") == b.metric("cache_misses_total") == len(SECRETS)


async def test_the_other_worker_waits_for_the_lease_holder_then_takes_its_answer() -> None:
    a, b = two_workers()
    await a.value("app/db")
    await b.value("app/db")
    a.clock.advance(REFRESH_AT * TTL)
    a.upstream.hold()
    a.upstream.values["app/db"] = "v2"
    assert await a.value("app/db") == "v1"  # a takes the lease and refreshes
    await until(lambda: len(a.upstream.held) == 1)
    for _ in range(5):
        assert await b.value("app/db") == "v1"  # b: past its refresh point, the lease is a's
        b.cache.refresh_due()
    assert a.upstream.count() == 3
    a.upstream.release()
    await settle(a)
    assert await b.value("app/db") == "v2"  # taken from shared memory
    assert b.metric("cache_refreshes_total", result="adopted") == 1 and a.upstream.count() == 3


async def test_an_expired_entry_takes_the_answer_another_worker_refreshed() -> None:
    a, b = two_workers()
    await a.value("app/db")
    await b.value("app/db")  # b's entry is never read again before it expires
    await step((a, b), 1)
    await a.value("app/db")
    a.upstream.values["app/db"] = "v2"
    await step((a, b), REFRESH_AT * TTL)  # a refreshes (its entry was read)
    await step((a, b), TTL * 0.5)
    assert await b.value("app/db") == "v2"
    assert a.upstream.count() == 3 and b.metric("cache_misses_total") == 1


async def test_a_write_through_one_worker_during_the_others_refresh() -> None:
    """a's refresh reads v1 and is held; b writes v2 and answers it; the refresh lands: neither a nor b may
    answer v1 again, from its own entry or from the shared store."""
    a, b = two_workers()
    await a.value("app/db")
    await b.value("app/db")
    a.clock.advance(REFRESH_AT * TTL)
    a.upstream.hold()
    await a.value("app/db")
    await until(lambda: len(a.upstream.held) == 1)
    a.upstream.holding.clear()
    await b.ask(put("app/db", "v2"))
    a.upstream.release()
    await settle(a)
    assert a.metric("cache_refreshes_total", result="discarded") == 1
    for _ in range(int(TTL)):
        await step((a, b), 1)
        assert await a.value("app/db") == "v2" and await b.value("app/db") == "v2"


async def test_an_answer_published_after_a_write_with_the_stamps_from_before_is_not_taken() -> None:
    """The race the stamps close: a refresh in one worker found the stamps current, then a write landed
    through another, then the refresh published (later than the other worker's own post-write fetch). The
    published answer carries the stamps its fetch began under, which no longer match: not taken, and the
    worker refreshes for itself."""
    a, b = two_workers()
    await a.value("app/db")
    key, entry = next(iter(a.cache._entries.items()))  # fetched before the write, with its stamps
    await a.ask(put("app/db", "v2"))
    assert await b.value("app/db") == "v2"  # b's entry: fetched after the write
    a.clock.advance(REFRESH_AT * TTL)
    late = type(entry)(entry.body, a.clock(), entry.name, entry.slot, entry.stamp, entry.global_stamp)
    a.cache._publish(key, late)  # v1, published after b's fetch
    assert await b.value("app/db") == "v2"  # past its refresh point, b looks at the shared record
    await settle(b)
    assert b.metric("cache_refreshes_total", result="adopted") == 0
    assert b.metric("cache_refreshes_total", result="fetched") == 1  # b refreshed for itself
    await step((a, b), TTL * 0.5)
    assert await b.value("app/db") == "v2"


async def test_a_failed_refresh_holds_the_other_workers_off_for_the_retry_time() -> None:
    a, b = two_workers()
    await a.value("app/db")
    await b.value("app/db")
    a.clock.advance(REFRESH_AT * TTL)
    a.upstream.fail = errors.BadGateway("unreachable")
    await a.value("app/db")
    await settle(a)
    await b.value("app/db")
    await settle(b)
    assert a.upstream.count() == 3  # b did not try while a's failure holds the lease
    a.upstream.fail = None
    a.upstream.values["app/db"] = "v2"
    await step((a, b), RETRY_AFTER * TTL)  # a's sweep tries again (a's entry was read)
    assert await b.value("app/db") == "v2"  # and b takes its answer
    assert a.upstream.count() == 4
    assert a.metric("cache_refreshes_total", result="fetched") == 1
    assert b.metric("cache_refreshes_total", result="adopted") == 1


async def test_refresh_points_of_replaced_entries_do_not_pile_up() -> None:
    """Cache-Control: no-cache stores a new entry every time: the sweep's list of refresh points stays bounded."""
    f = reader()
    for _ in range(1000):
        await f.ask(op("GetSecretValue", SecretId="app/db"), "no-cache")
    assert len(f.cache._due) <= 2 * len(f.cache) + 65


async def test_a_version_check_the_role_may_not_make_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    f = reader(version_check=True)
    await f.value("app/db")
    original = f.upstream.answer
    f.upstream.answer = lambda o: error(400, "AccessDeniedException") if o.name == "DescribeSecret" else original(o)  # type: ignore[method-assign]
    for _ in range(3):
        await tick(f, REFRESH_AT * TTL)
        await f.value("app/db")
        await settle(f)
    assert f.metric("cache_version_checks_total", result="error") == 3
    assert f.upstream.count() == 4  # each refresh fell back to GetSecretValue
    assert [r.message for r in caplog.records].count("cache version check failed; GetSecretValue instead") == 1
