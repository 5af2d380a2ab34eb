"""The secret cache as pure logic: a controlled clock, operations decoded from botocore's model, and an
upstream call (the ``fetch`` seam) that answers like Secrets Manager's JSON 1.1 and counts its calls."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import botocore.session
import pytest

from proxy import errors
from proxy.cache import SecretCache, cacheable_read, wants_refresh
from proxy.config import CacheConfig
from proxy.metrics import Metrics
from proxy.models import Operation, UpstreamResponse
from proxy.shapes import SECRET_ID_SHAPES, is_read_operation
from proxy.sharedstore import SharedStore
from proxy.stamps import StampTable
from proxy.translate import Translator, secret_ids
from tests.clocks import ManualClock

MODEL = botocore.session.get_session().get_service_model("secretsmanager")
TRANSLATOR = Translator(MODEL)
VERSION = "0" * 32
PREFIX = "arn:aws:secretsmanager:us-east-1:123456789012:secret:"


class Upstream:
    """Secrets Manager's answers for a few secrets, as JSON 1.1 bodies; counts calls per operation."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {"app/db": "v1", "app/api": "k1", "app/other": "o1"}
        self.arns = {name: f"{PREFIX}{name}-AbCdEf" for name in self.values}
        self.calls: dict[str, int] = {}
        self.fail: BaseException | UpstreamResponse | None = None
        self.holding: set[str] = set()  # operations whose calls wait for a release
        self.held: list[asyncio.Event] = []  # one per held call, in arrival order

    def name_of(self, secret_id: str) -> str | None:
        for name, arn in self.arns.items():
            if secret_id in (name, arn, arn[:-7]):
                return name
        return None

    def entry(self, name: str) -> dict[str, Any]:
        return {
            "ARN": self.arns[name],
            "Name": name,
            "VersionId": f"ver-{self.values[name]}",
            "SecretString": self.values[name],
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": 1700000000,
        }

    def fetch(self, operation: Operation) -> Any:
        """The upstream call for ``operation``: answers from the state at arrival, then waits while held."""

        async def call() -> UpstreamResponse:
            self.calls[operation.name] = self.calls.get(operation.name, 0) + 1
            answer = self.answer(operation)
            if operation.name in self.holding:
                self.held.append(release := asyncio.Event())
                await release.wait()
            if isinstance(answer, BaseException):
                raise answer
            return answer

        return call

    def answer(self, operation: Operation) -> UpstreamResponse | BaseException:
        if self.fail is not None:
            return self.fail
        data = operation.input
        if operation.name == "GetSecretValue":
            name = self.name_of(data["SecretId"])
            if name is None:
                return error(400, "ResourceNotFoundException")
            return ok(self.entry(name))
        if operation.name == "BatchGetSecretValue":
            found = [self.name_of(i) for i in data.get("SecretIdList", ())]
            return ok({"SecretValues": [self.entry(n) for n in found if n], "Errors": []})
        if operation.name == "DescribeSecret":
            name = self.name_of(data["SecretId"])
            if name is None:
                return error(400, "ResourceNotFoundException")
            stages = {f"ver-{self.values[name]}": ["AWSCURRENT"], "ver-older": ["AWSPREVIOUS"]}
            return ok({"ARN": self.arns[name], "Name": name, "VersionIdsToStages": stages})
        name = self.name_of(operation.secret_ids[0]) if operation.secret_ids else None
        if operation.name == "PutSecretValue" and name:
            self.values[name] = data.get("SecretString", "put")
        return ok({"ARN": self.arns[name], "Name": name} if name else {})

    def hold(self, name: str = "GetSecretValue") -> None:
        self.holding.add(name)

    def release(self) -> None:
        self.holding.clear()
        for event in self.held:
            event.set()

    def count(self, name: str = "GetSecretValue") -> int:
        return self.calls.get(name, 0)


def ok(doc: dict[str, Any]) -> UpstreamResponse:
    return UpstreamResponse(200, (("x-amzn-RequestId", "up-1"),), json.dumps(doc).encode())


def error(status: int, code: str) -> UpstreamResponse:
    return UpstreamResponse(status, (), json.dumps({"__type": code, "message": "m"}).encode())


def op(action: str, **params: str) -> Operation:
    return TRANSLATOR.decode(action, None, list(params.items()))


def batch(*ids: str, **more: str) -> Operation:
    return op("BatchGetSecretValue", **{f"SecretIdList.member.{i}": s for i, s in enumerate(ids, 1)}, **more)


class Fixture:
    """One worker's cache; ``stamps``, ``upstream``, ``shared`` and ``clock`` given to share them with another
    worker's. Its background calls (refresh-ahead, version checks) go to the same upstream. Refresh-ahead is
    off unless ``refresh_ahead=True`` is given, so that the tests of expiry see entries expire."""

    def __init__(
        self,
        stamps: StampTable | None = None,
        upstream: Upstream | None = None,
        shared: SharedStore | None = None,
        clock: ManualClock | None = None,
        **cfg: Any,
    ) -> None:
        self.clock = clock or ManualClock(1000.0)
        self.metrics = Metrics.create()
        config = CacheConfig(**{"enabled": True, "refresh_ahead": False, **cfg})
        self.upstream = upstream or Upstream()
        self.cache = SecretCache(
            config, self.metrics, clock=self.clock, stamps=stamps, shared=shared, call=self.background_call
        )

    async def background_call(self, operation: Operation) -> UpstreamResponse:
        response: UpstreamResponse = await self.upstream.fetch(operation)()
        return response

    async def ask(self, operation: Operation, cache_control: str | None = None) -> UpstreamResponse:
        return await self.cache.answer(operation, cache_control, self.upstream.fetch(operation))

    async def value(self, secret_id: str, **params: str) -> str:
        response = await self.ask(op("GetSecretValue", SecretId=secret_id, **params))
        assert response.status == 200, response
        value: str = json.loads(response.body)["SecretString"]
        return value

    def metric(self, name: str, **labels: str) -> float:
        got = self.metrics.registry.get_sample_value(f"query_signing_proxy_{name}", labels)
        return got or 0.0


@pytest.fixture
def f() -> Fixture:
    return Fixture(ttl_seconds=300, max_entries=100)


# ---------------------------------------------------------------------------------------------------------
# hits, keys, TTL, LRU


async def test_a_hit_makes_no_upstream_call(f: Fixture) -> None:
    assert await f.value("app/db") == "v1"
    f.upstream.values["app/db"] = "changed behind the proxy"
    assert await f.value("app/db") == "v1"
    assert f.upstream.count() == 1
    assert f.metric("cache_hits_total", freshness="fresh") == 1
    assert f.metric("cache_misses_total") == 1
    assert f.metric("cache_entries") == 1


async def test_a_hit_has_the_upstream_body_but_none_of_its_headers(f: Fixture) -> None:
    first = await f.ask(op("GetSecretValue", SecretId="app/db"))
    again = await f.ask(op("GetSecretValue", SecretId="app/db"))
    assert again.body == first.body and again.status == 200
    assert again.header("x-amzn-RequestId") is None  # the request gets its own id, not the upstream's old one


async def test_name_arn_and_partial_arn_reach_the_same_entry(f: Fixture) -> None:
    arn = f.upstream.arns["app/db"]
    assert await f.value(arn) == "v1"
    assert await f.value("app/db") == "v1"
    assert f.upstream.count() == 1
    assert await f.value(arn[:-7]) == "v1"  # a partial ARN is learnt from its first answer
    assert await f.value(arn[:-7]) == "v1"
    assert f.upstream.count() == 2


async def test_version_selectors_are_part_of_the_key(f: Fixture) -> None:
    await f.value("app/db")
    await f.value("app/db", VersionStage="AWSCURRENT")  # no selector means AWSCURRENT
    assert f.upstream.count() == 1
    await f.value("app/db", VersionStage="AWSPREVIOUS")
    await f.value("app/db", VersionId=VERSION)
    await f.value("app/db", VersionId=VERSION, VersionStage="AWSCURRENT")
    assert f.upstream.count() == 4
    await f.value("app/db", VersionId=VERSION)
    assert f.upstream.count() == 4


async def test_entries_expire_after_ttl_seconds(f: Fixture) -> None:
    await f.value("app/db")
    f.upstream.values["app/db"] = "v2"
    f.clock.now += 299.999
    assert await f.value("app/db") == "v1"
    f.clock.now += 0.001
    assert await f.value("app/db") == "v2"
    assert f.upstream.count() == 2
    assert f.metric("cache_evictions_total", reason="expired") == 1
    assert f.metric("cache_entries") == 1


async def test_a_clock_that_goes_back_expires_the_entry(f: Fixture) -> None:
    await f.value("app/db")
    f.clock.now -= 1
    await f.value("app/db")
    assert f.upstream.count() == 2


async def test_least_recently_used_is_evicted_beyond_max_entries() -> None:
    f = Fixture(max_entries=2)
    await f.value("app/db")
    await f.value("app/api")
    await f.value("app/db")  # hit: app/api is now the least recently used
    await f.value("app/other")
    assert len(f.cache) == 2
    assert f.metric("cache_evictions_total", reason="capacity") == 1
    assert f.metric("cache_entries") == 2
    await f.value("app/db")
    assert f.upstream.count() == 3
    await f.value("app/api")
    assert f.upstream.count() == 4


async def test_an_evicted_secret_forgets_its_aliases() -> None:
    f = Fixture(max_entries=1)
    await f.value(f.upstream.arns["app/db"])
    await f.value("app/api")
    assert f.cache._alias == {
        "app/api": f.upstream.arns["app/api"],
        f.upstream.arns["app/api"]: f.upstream.arns["app/api"],
    }


async def test_errors_are_not_cached(f: Fixture) -> None:
    for _ in range(2):
        response = await f.ask(op("GetSecretValue", SecretId="missing"))
        assert response.status == 400
    assert f.upstream.count() == 2
    assert len(f.cache) == 0


async def test_disabled_it_only_passes_through() -> None:
    f = Fixture(enabled=False)
    await f.value("app/db")
    await f.value("app/db")
    assert f.upstream.count() == 2
    assert len(f.cache) == 0 and f.metric("cache_misses_total") == 0


async def test_a_cached_value_never_shows_in_a_repr(f: Fixture) -> None:
    await f.value("app/db")
    assert "v1" not in repr(list(f.cache._entries.values()))


# ---------------------------------------------------------------------------------------------------------
# BatchGetSecretValue by id


async def test_a_batch_fills_entries_that_single_reads_hit_and_back(f: Fixture) -> None:
    response = await f.ask(batch("app/db", "app/api"))
    assert [v["SecretString"] for v in json.loads(response.body)["SecretValues"]] == ["v1", "k1"]
    assert await f.value("app/api") == "k1"
    assert f.upstream.count() == 0
    again = await f.ask(batch(f.upstream.arns["app/api"], "app/db"))
    doc = json.loads(again.body)
    assert [v["Name"] for v in doc["SecretValues"]] == ["app/api", "app/db"] and doc["Errors"] == []
    assert f.upstream.count("BatchGetSecretValue") == 1
    await f.value("app/other")
    await f.ask(batch("app/other", "app/db"))
    assert f.upstream.count("BatchGetSecretValue") == 1


async def test_a_batch_with_one_unknown_secret_goes_upstream(f: Fixture) -> None:
    await f.value("app/db")
    await f.ask(batch("app/db", "app/api"))
    assert f.upstream.count("BatchGetSecretValue") == 1


@pytest.mark.parametrize(
    "operation",
    [
        batch("app/db", "app/db"),
        batch("app/db", MaxResults="1"),
        batch(**{"Filters.member.1.Key": "name", "Filters.member.1.Values.member.1": "app"}),
    ],
    ids=["duplicate ids", "max results", "filters"],
)
async def test_a_batch_not_purely_by_distinct_ids_is_not_cached(f: Fixture, operation: Operation) -> None:
    assert cacheable_read(operation) is None
    await f.ask(operation)
    await f.ask(operation)
    assert len(f.cache) == 0 and f.upstream.count("BatchGetSecretValue") == 2


# ---------------------------------------------------------------------------------------------------------
# invalidation by writes


def write_operations() -> list[str]:
    return sorted(n for n in MODEL.operation_names if not is_read_operation(n))


def write(name: str, secret_id: str) -> Operation:
    """A write operation naming ``secret_id`` in the member the model marks as a secret id."""
    shape = MODEL.operation_model(name).input_shape
    member = next(m for m, s in shape.members.items() if s.name in SECRET_ID_SHAPES)
    data = {member: secret_id}
    return Operation(name, data, tuple(secret_ids(shape, data)), is_read=False, retryable=False)


def test_every_write_of_the_model_names_its_secret() -> None:
    names = write_operations()
    assert {"PutSecretValue", "UpdateSecret", "UpdateSecretVersionStage", "RotateSecret", "DeleteSecret"} <= set(names)
    assert all(write(n, "app/db").secret_ids == ("app/db",) for n in names)


@pytest.mark.parametrize("name", write_operations())
async def test_every_write_invalidates_the_secrets_it_names(f: Fixture, name: str) -> None:
    await f.value("app/db")
    await f.value("app/db", VersionStage="AWSPREVIOUS")
    await f.value("app/api")
    await f.ask(write(name, "app/db"))
    assert f.metric("cache_evictions_total", reason="invalidated") == 2
    await f.value("app/db")
    await f.value("app/api")
    assert f.upstream.count() == 4


@pytest.mark.parametrize("name", ["app/db", "app/my-secret"])  # a partial ARN that ends like a suffix
@pytest.mark.parametrize("form", ["name", "arn", "partial arn"])
async def test_a_write_by_any_form_of_the_id_invalidates(f: Fixture, form: str, name: str) -> None:
    f.upstream.values[name] = "v"
    f.upstream.arns[name] = arn = f"{PREFIX}{name}-AbCdEf"
    await f.value(name)
    f.upstream.fail = ok({})  # the answer names no secret: the ids of the request must do
    await f.ask(write("PutSecretValue", {"name": name, "arn": arn, "partial arn": arn[:-7]}[form]))
    assert len(f.cache) == 0


async def test_a_write_invalidates_by_the_arn_of_its_answer(f: Fixture) -> None:
    await f.value("app/db")
    operation = write("UpdateSecret", "something-the-cache-never-saw")
    f.upstream.fail = ok({"ARN": f.upstream.arns["app/db"], "Name": "app/db"})
    await f.ask(operation)
    assert len(f.cache) == 0


async def test_a_failed_write_still_invalidates(f: Fixture) -> None:
    await f.value("app/db")
    f.upstream.fail = errors.GatewayTimeout("the write may have happened")
    with pytest.raises(errors.GatewayTimeout):
        await f.ask(write("PutSecretValue", "app/db"))
    assert len(f.cache) == 0


async def test_a_write_that_names_no_secret_clears_everything(f: Fixture) -> None:
    await f.value("app/db")
    await f.value("app/api")
    await f.ask(Operation("ValidateResourcePolicy", {"ResourcePolicy": "{}"}, (), is_read=False, retryable=False))
    assert len(f.cache) == 0


async def test_other_reads_neither_use_nor_invalidate_the_cache(f: Fixture) -> None:
    await f.value("app/db")
    await f.ask(op("DescribeSecret", SecretId="app/db"))
    await f.value("app/db")
    assert f.upstream.count() == 1 and f.upstream.count("DescribeSecret") == 1


async def test_a_read_in_flight_when_a_write_lands_is_answered_but_not_stored(f: Fixture) -> None:
    f.upstream.hold()
    early = asyncio.ensure_future(f.value("app/db"))
    await until(lambda: len(f.upstream.held) == 1)
    put = write("PutSecretValue", "app/db")
    put.input["SecretString"] = "v2"
    await f.ask(put)
    late = asyncio.ensure_future(f.value("app/db"))  # after the write: must not join the early read
    await until(lambda: len(f.upstream.held) == 2)
    f.upstream.held[1].set()
    assert await late == "v2"
    f.upstream.held[0].set()
    await early  # answered after the write, with what it read before it: not stored over the newer value
    assert await f.value("app/db") == "v2"
    assert f.upstream.count() == 2


# ---------------------------------------------------------------------------------------------------------
# several workers: two caches sharing one stamp table (as the workers of --workers share it after the fork)


@pytest.fixture
def workers() -> tuple[Fixture, Fixture]:
    a = Fixture(ttl_seconds=300, max_entries=100)
    assert a.cache.stamps is not None
    return a, Fixture(stamps=a.cache.stamps, upstream=a.upstream, ttl_seconds=300, max_entries=100)


def put(secret_id: str, value: str) -> Operation:
    operation = write("PutSecretValue", secret_id)
    operation.input["SecretString"] = value
    return operation


@pytest.mark.parametrize("form", ["name", "arn", "partial arn"])
async def test_a_write_through_one_worker_empties_every_workers_entry(
    workers: tuple[Fixture, Fixture], form: str
) -> None:
    a, b = workers
    arn = a.upstream.arns["app/db"]
    for reader in (a, b, b):
        assert await reader.value(arn if reader is b else "app/db") == "v1"
    assert a.upstream.count() == 2  # each worker fetched once; b's second read was a hit
    await a.ask(put({"name": "app/db", "arn": arn, "partial arn": arn[:-7]}[form], "v2"))
    assert await b.value(arn) == "v2" and await b.value("app/db") == "v2"
    assert b.metric("cache_evictions_total", reason="invalidated") == 1
    assert await b.value("app/api") == "k1" and a.upstream.count() == 4


async def test_a_write_naming_no_secret_empties_every_worker(workers: tuple[Fixture, Fixture]) -> None:
    a, b = workers
    await b.value("app/db")
    await b.value("app/api")
    await a.ask(Operation("ValidateResourcePolicy", {"ResourcePolicy": "{}"}, (), is_read=False, retryable=False))
    await b.value("app/db")
    await b.value("app/api")
    assert a.upstream.count() == 4


async def test_another_workers_read_in_flight_neither_stores_nor_is_joined_after_a_write(
    workers: tuple[Fixture, Fixture],
) -> None:
    a, b = workers
    a.upstream.hold()
    early = asyncio.ensure_future(b.value("app/db"))  # reads v1 upstream; its answer is held back
    await until(lambda: len(a.upstream.held) == 1)
    await a.ask(put("app/db", "v2"))  # through the other worker, while b's read is in flight
    late = asyncio.ensure_future(b.value("app/db"))  # must not join the read that began before the write
    await until(lambda: len(a.upstream.held) == 2)
    a.upstream.held[1].set()
    assert await late == "v2"
    a.upstream.held[0].set()
    assert await early == "v1"  # concurrent with the write, so answered; but not kept over v2
    assert await b.value("app/db") == "v2"
    assert a.upstream.count() == 2


async def test_an_entry_stored_after_a_write_is_kept(workers: tuple[Fixture, Fixture]) -> None:
    a, b = workers
    await a.ask(put("app/db", "v2"))
    assert await b.value("app/db") == "v2"
    assert await b.value("app/db") == "v2"
    assert a.upstream.count() == 1


def test_the_stamp_table_is_shared_with_forked_processes() -> None:
    """The real thing the workers rely on: a store in a forked child is read by the parent."""
    table = StampTable()
    seen = table.snapshot(["app/db"])
    pid = os.fork()
    if pid == 0:  # the child: a write through "another worker"
        try:
            table.bump(["arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbCdEf"])
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert not table.current(seen)
    assert table.current(table.snapshot(["app/db"]))


def test_name_forms_cover_every_way_of_naming_a_secret() -> None:
    from proxy.stamps import name_forms

    assert name_forms("app/db") == {"app/db"}
    assert {"app/db", "app/db-AbCdEf"} <= name_forms(f"{PREFIX}app/db-AbCdEf")
    assert "app/my-secret" in name_forms(f"{PREFIX}app/my-secret")  # a partial ARN that ends like a suffix


# ---------------------------------------------------------------------------------------------------------
# Cache-Control: no-cache, single flight


def test_no_cache_is_read_from_the_cache_control_directives() -> None:
    assert wants_refresh("no-cache") and wants_refresh("max-age=0, No-Cache") and wants_refresh('no-cache="x"')
    assert not wants_refresh(None) and not wants_refresh("") and not wants_refresh("no-store, max-age=60")


async def test_no_cache_bypasses_and_refreshes_the_entry(f: Fixture) -> None:
    await f.value("app/db")
    f.upstream.values["app/db"] = "v2"
    response = await f.ask(op("GetSecretValue", SecretId="app/db"), "no-cache")
    assert json.loads(response.body)["SecretString"] == "v2"
    assert await f.value("app/db") == "v2"
    assert f.upstream.count() == 2
    assert f.metric("cache_misses_total") == 2 and f.metric("cache_hits_total", freshness="fresh") == 1


async def test_concurrent_misses_share_one_upstream_call(f: Fixture) -> None:
    f.upstream.hold()
    by_name = [asyncio.ensure_future(f.value("app/db")) for _ in range(20)]
    await until(lambda: f.metric("cache_misses_total") == 20)
    f.upstream.release()
    assert await asyncio.gather(*by_name) == ["v1"] * 20
    assert f.upstream.count() == 1


async def test_a_no_cache_request_does_not_join_a_call_in_flight(f: Fixture) -> None:
    f.upstream.hold()
    first = asyncio.ensure_future(f.ask(op("GetSecretValue", SecretId="app/db")))
    second = asyncio.ensure_future(f.ask(op("GetSecretValue", SecretId="app/db"), "no-cache"))
    await until(lambda: f.upstream.count() == 2)
    f.upstream.release()
    await asyncio.gather(first, second)


async def test_one_waiter_going_away_does_not_cancel_the_others(f: Fixture) -> None:
    f.upstream.hold()
    leader = asyncio.ensure_future(f.value("app/db"))
    follower = asyncio.ensure_future(f.value("app/db"))
    await until(lambda: f.metric("cache_misses_total") == 2)
    leader.cancel()
    f.upstream.release()
    assert await follower == "v1"
    assert f.upstream.count() == 1 and len(f.cache) == 1


async def test_an_upstream_error_reaches_every_waiter(f: Fixture) -> None:
    f.upstream.hold()
    f.upstream.fail = errors.BadGateway("refused")
    waiters = [asyncio.ensure_future(f.value("app/db")) for _ in range(3)]
    await until(lambda: f.metric("cache_misses_total") == 3)
    f.upstream.release()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, errors.BadGateway) for r in results)
    assert f.upstream.count() == 1


# ---------------------------------------------------------------------------------------------------------
# serve_stale_seconds


@pytest.fixture
def stale() -> Fixture:
    return Fixture(ttl_seconds=10, serve_stale_seconds=30)


@pytest.mark.parametrize(
    "failure",
    [
        errors.BadGateway("unreachable"),
        errors.GatewayTimeout("timed out"),
        error(503, "ServiceUnavailable"),
        error(500, "InternalServiceError"),
    ],
    ids=["unreachable", "timeout", "503", "500"],
)
async def test_an_expired_entry_answers_while_the_upstream_fails(stale: Fixture, failure: Any) -> None:
    await stale.value("app/db")
    stale.clock.now += 10 + 29.9
    stale.upstream.fail = failure
    assert await stale.value("app/db") == "v1"
    assert stale.upstream.count() == 2
    assert stale.metric("cache_hits_total", freshness="stale") == 1


async def test_no_stale_answer_beyond_serve_stale_seconds(stale: Fixture) -> None:
    await stale.value("app/db")
    stale.clock.now += 40
    stale.upstream.fail = errors.BadGateway("unreachable")
    with pytest.raises(errors.BadGateway):
        await stale.value("app/db")
    assert len(stale.cache) == 0


async def test_no_stale_answer_while_the_upstream_answers(stale: Fixture) -> None:
    await stale.value("app/db")
    stale.clock.now += 15
    stale.upstream.values["app/db"] = "v2"
    assert await stale.value("app/db") == "v2"
    stale.clock.now += 15
    stale.upstream.fail = error(400, "ResourceNotFoundException")  # an answer, not a failure
    response = await stale.ask(op("GetSecretValue", SecretId="app/db"))
    assert response.status == 400
    stale.upstream.fail = error(429, "ThrottlingException")
    assert (await stale.ask(op("GetSecretValue", SecretId="app/db"))).status == 429
    assert stale.metric("cache_hits_total", freshness="stale") == 0


async def test_no_stale_answer_without_serve_stale_seconds(f: Fixture) -> None:
    await f.value("app/db")
    f.clock.now += 300
    f.upstream.fail = errors.BadGateway("unreachable")
    with pytest.raises(errors.BadGateway):
        await f.value("app/db")


async def test_no_stale_answer_to_a_no_cache_request(stale: Fixture) -> None:
    await stale.value("app/db")
    stale.clock.now += 15
    stale.upstream.fail = errors.GatewayTimeout("timed out")
    with pytest.raises(errors.GatewayTimeout):
        await stale.ask(op("GetSecretValue", SecretId="app/db"), "no-cache")


async def test_a_fresh_entry_is_a_hit_not_stale(stale: Fixture) -> None:
    await stale.value("app/db")
    stale.upstream.fail = errors.BadGateway("unreachable")
    assert await stale.value("app/db") == "v1"
    assert stale.upstream.count() == 1 and stale.metric("cache_hits_total", freshness="fresh") == 1


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Poll (yielding to the loop) until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0)
