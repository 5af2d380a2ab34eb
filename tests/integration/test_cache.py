"""The secret cache through the real listener.

Against moto (signature checking on): a value changed behind the proxy's back is how a test sees that an
answer came from the cache; every write through the proxy must make the next read go upstream again.
Against a real aiohttp Secrets Manager over TLS (trustme CA), which counts the calls it gets and can fail on
demand: hits, expiry under a controlled clock, single flight and stale answers, counted at the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import pytest
import trustme
import yaml
from aiohttp import web
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.config import Config, build, check
from proxy.credentials import static_fetch
from proxy.handler import SERVICE
from proxy.local import DEMO_ROLE_ARN, REGION
from tests.faults import ACCESS_KEY, proxy_environ
from tests.integration.test_workers import listening, metric_sum
from tests.process import ProxyProcess
from tests.recorder import CountingRelay
from tests.support import ServerThread, legacy_client, poll, proxy_config, raw_request

NS = "{https://secretsmanager.amazonaws.com/doc/2017-10-17/}"
ARN_PREFIX = "arn:aws:secretsmanager:us-east-1:123456789012:secret:"


def unique(prefix: str) -> str:
    return f"cache/{prefix}-{uuid.uuid4().hex[:8]}"


def read(
    proxy: ServerThread | int, secret_id: str, headers: dict[str, str] | None = None
) -> tuple[int, str | None]:
    """GetSecretValue through the proxy (a ServerThread, or the port of a proxy process), on a connection of
    its own: the status and the SecretString (None on an error)."""
    target = f"/?Action=GetSecretValue&SecretId={quote(secret_id, safe='')}&Version=2017-10-17"
    r = raw_request(proxy if isinstance(proxy, int) else proxy.port, "GET", target, headers=headers)
    if r.status != 200:
        return r.status, None
    el = ElementTree.fromstring(r.body).find(f"{NS}GetSecretValueResult/{NS}SecretString")
    return r.status, None if el is None else el.text


def value(proxy: ServerThread | int, secret_id: str, headers: dict[str, str] | None = None) -> str | None:
    status, text = read(proxy, secret_id, headers)
    assert status == 200, status
    return text


def metric(proxy: ServerThread, name: str, **labels: str) -> float:
    """A sample of the proxy's /metrics, 0 when absent."""
    text = raw_request(proxy.port, "GET", "/metrics").body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"query_signing_proxy_{name}" and sample.labels == labels:
                return float(sample.value)
    return 0.0


# ---------------------------------------------------------------------------------------------------------
# against moto


@pytest.fixture
def cached(start_proxy: Any) -> ServerThread:
    """The proxy with the cache on and every action allowed."""
    return start_proxy(cache={"enabled": True}, policy={"allow_actions": ["*"]})


@pytest.fixture
def legacy_cached(cached: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return legacy_client(cached.url, str(tmp_path_factory.getbasetemp()))


def test_a_repeat_read_is_answered_from_the_cache(cached: ServerThread, emulator: Any) -> None:
    name = unique("hit")
    direct = emulator.direct()
    direct.create_secret(Name=name, SecretString="v1")
    assert value(cached, name) == "v1"
    direct.put_secret_value(SecretId=name, SecretString="v2")  # behind the proxy's back
    assert value(cached, name) == "v1"
    assert metric(cached, "cache_hits_total", freshness="fresh") == 1
    assert metric(cached, "cache_misses_total") == 1
    assert metric(cached, "cache_entries") == 1


def test_name_and_arn_reach_the_same_entry(cached: ServerThread, emulator: Any) -> None:
    name = unique("alias")
    direct = emulator.direct()
    arn = direct.create_secret(Name=name, SecretString="v1")["ARN"]
    assert value(cached, arn) == "v1"
    direct.put_secret_value(SecretId=name, SecretString="v2")
    assert value(cached, name) == "v1"
    assert metric(cached, "cache_misses_total") == 1


def test_each_hit_has_its_own_request_id(cached: ServerThread) -> None:
    target = "/?Action=GetSecretValue&SecretId=demo%2Fdb-password&Version=2017-10-17"
    ids = set()
    for _ in range(3):
        r = raw_request(cached.port, "GET", target)
        assert r.status == 200
        request_id = r.header("x-amzn-RequestId")
        assert request_id and f"<RequestId>{request_id}</RequestId>".encode() in r.body
        ids.add(request_id)
    assert len(ids) == 3


def test_a_batch_by_id_fills_and_hits_the_cache(legacy_cached: Any, emulator: Any) -> None:
    a, b = unique("batch-a"), unique("batch-b")
    direct = emulator.direct()
    direct.create_secret(Name=a, SecretString="a1")
    direct.create_secret(Name=b, SecretString="b1")
    first = legacy_cached.batch_get_secret_value(SecretIdList=[a, b])
    assert sorted(v["SecretString"] for v in first["SecretValues"]) == ["a1", "b1"]
    direct.put_secret_value(SecretId=a, SecretString="a2")
    direct.put_secret_value(SecretId=b, SecretString="b2")
    assert legacy_cached.get_secret_value(SecretId=b)["SecretString"] == "b1"
    again = legacy_cached.batch_get_secret_value(SecretIdList=[b, a])  # assembled from the entries
    assert [v["SecretString"] for v in again["SecretValues"]] == ["b1", "a1"]
    assert [v["Name"] for v in again["SecretValues"]] == [b, a]
    assert again["Errors"] == []


def test_no_cache_bypasses_and_refreshes(cached: ServerThread, emulator: Any) -> None:
    name = unique("no-cache")
    direct = emulator.direct()
    direct.create_secret(Name=name, SecretString="v1")
    assert value(cached, name) == "v1"
    direct.put_secret_value(SecretId=name, SecretString="v2")
    assert value(cached, name) == "v1"
    assert value(cached, name, {"Cache-Control": "no-cache"}) == "v2"
    assert value(cached, name) == "v2"
    assert metric(cached, "cache_misses_total") == 2


# Each write through the proxy; setup (direct, before the write) and the write's parameters.
WRITES: dict[str, tuple[Callable[[Any, str], None], Callable[[Any, str], dict[str, Any]]]] = {
    "PutSecretValue": (lambda d, n: None, lambda d, n: {"SecretId": n, "SecretString": "v3"}),
    "UpdateSecret": (lambda d, n: None, lambda d, n: {"SecretId": n, "Description": "changed"}),
    "UpdateSecretVersionStage": (
        lambda d, n: None,
        lambda d, n: {
            "SecretId": n,
            "VersionStage": "CUSTOM",
            "MoveToVersionId": d.get_secret_value(SecretId=n)["VersionId"],
        },
    ),
    "RotateSecret": (lambda d, n: None, lambda d, n: {"SecretId": n}),
    "DeleteSecret": (lambda d, n: None, lambda d, n: {"SecretId": n, "RecoveryWindowInDays": 7}),
    "RestoreSecret": (lambda d, n: d.delete_secret(SecretId=n, RecoveryWindowInDays=7), lambda d, n: {"SecretId": n}),
    "TagResource": (lambda d, n: None, lambda d, n: {"SecretId": n, "Tags": [{"Key": "k", "Value": "v"}]}),
    "UntagResource": (lambda d, n: None, lambda d, n: {"SecretId": n, "TagKeys": ["k"]}),
    "DeleteResourcePolicy": (lambda d, n: None, lambda d, n: {"SecretId": n}),
}


def snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def outcome(client: Any, name: str) -> Any:
    try:
        return client.get_secret_value(SecretId=name)["SecretString"]
    except ClientError as exc:
        return exc.response["Error"]["Code"]


@pytest.mark.parametrize("operation", sorted(WRITES))
def test_each_write_through_the_proxy_invalidates(
    operation: str, cached: ServerThread, legacy_cached: Any, emulator: Any
) -> None:
    setup, params = WRITES[operation]
    name = unique(operation)
    direct = emulator.direct()
    arn = direct.create_secret(Name=name, SecretString="v1")["ARN"]
    assert value(cached, name) == "v1"
    direct.put_secret_value(SecretId=name, SecretString="v2")
    assert value(cached, name) == "v1"  # cached: the proxy has not seen the change
    setup(direct, name)
    getattr(legacy_cached, snake(operation))(**params(direct, arn if operation == "TagResource" else name))
    misses = metric(cached, "cache_misses_total")
    assert outcome(legacy_cached, name) == outcome(direct, name) != "v1"
    assert metric(cached, "cache_misses_total") == misses + 1


def test_a_denied_secret_is_never_answered_from_the_cache(start_proxy: Any, emulator: Any) -> None:
    name = unique("denied")
    direct = emulator.direct()
    arn = direct.create_secret(Name=name, SecretString="v1")["ARN"]
    # allowed by ARN only: the same secret by name is denied
    proxy = start_proxy(cache={"enabled": True}, policy={"allow_secrets": [f"arn:*:secret:{name}-*"]})
    assert value(proxy, arn) == "v1"
    assert value(proxy, arn) == "v1"
    assert read(proxy, name) == (403, None)
    batch = f"/?Action=BatchGetSecretValue&SecretIdList.member.1={quote(arn, safe='')}&SecretIdList.member.2={quote(name, safe='')}&Version=2017-10-17"
    assert raw_request(proxy.port, "GET", batch).status == 403
    assert read(proxy, "demo/db-password") == (403, None)
    assert metric(proxy, "cache_hits_total", freshness="fresh") == 1
    assert metric(proxy, "cache_misses_total") == 1


def test_a_cached_value_still_needs_the_caller_token(start_proxy: Any, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    proxy = start_proxy(cache={"enabled": True}, policy={"token_header": "X-Proxy-Token", "token_file": str(token)})
    assert value(proxy, "demo/db-password", {"X-Proxy-Token": "s3cret-token"}) is not None
    assert read(proxy, "demo/db-password") == (403, None)
    assert read(proxy, "demo/db-password", {"X-Proxy-Token": "wrong"}) == (403, None)
    assert metric(proxy, "cache_hits_total", freshness="fresh") == 0


def test_cache_metrics_are_exposed(cached: ServerThread) -> None:
    value(cached, "demo/db-password")
    text = raw_request(cached.port, "GET", "/metrics").body.decode()
    for name in ("cache_hits_total", "cache_misses_total", "cache_evictions_total", "cache_entries"):
        assert f"query_signing_proxy_{name}" in text
    assert "correct-horse" not in text


# ---------------------------------------------------------------------------------------------------------
# against a real aiohttp Secrets Manager that counts calls and fails on demand


class FakeSecretsManager:
    """A Secrets Manager over JSON 1.1 for a few secrets, answering in the loop of a ServerThread.

    ``mode``: "ok", "503" (an HTML 503), "hang" (never answers), "reset" (closes the connection).
    An answer is the state when the request arrived. After ``hold()`` each GetSecretValue answer is kept back
    (:attr:`held`, in arrival order) until ``release()`` lets them all go, or ``release(i)`` the i-th.
    ``key`` is the access key id the requests must be signed with.
    """

    def __init__(self, key: str = "AKIDCACHETEST") -> None:
        self.values = {"app/db": "v1"}
        self.calls: dict[str, int] = {}
        self.mode = "ok"
        self.key = key
        self.holding = False
        self.held: list[asyncio.Event] = []
        self.server: ServerThread | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.headers["X-Amz-Target"].split(".", 1)[1]
        self.calls[operation] = self.calls.get(operation, 0) + 1
        assert request.headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={self.key}/")
        data = json.loads(await request.read())
        if self.mode == "503":
            return web.Response(status=503, text="<html>down</html>", content_type="text/html")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        secret_id = data["SecretId"]
        name = secret_id[len(ARN_PREFIX) : -len("-AbCdEf")] if secret_id.startswith(ARN_PREFIX) else secret_id
        if name not in self.values:
            body = {
                "__type": "ResourceNotFoundException",
                "message": "Secrets Manager can't find the specified secret.",
            }
            return web.Response(status=400, text=json.dumps(body), content_type="application/x-amz-json-1.1")
        if operation == "PutSecretValue":
            self.values[name] = data["SecretString"]
        answer = {
            "ARN": f"{ARN_PREFIX}{name}-AbCdEf",
            "Name": name,
            "VersionId": "0" * 32,
            "SecretString": self.values[name],
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": 1700000000,
        }
        headers = {"x-amzn-RequestId": str(uuid.uuid4())}
        if operation == "GetSecretValue" and self.holding:
            self.held.append(release := asyncio.Event())
            await release.wait()
        return web.json_response(answer, content_type="application/x-amz-json-1.1", headers=headers)

    def count(self, operation: str = "GetSecretValue") -> int:
        return self.calls.get(operation, 0)

    def hold(self) -> None:
        self.holding = True

    def release(self, index: int | None = None) -> None:
        """Let every held answer go and hold no more (``index`` None), or only the ``index``-th held."""
        assert self.server is not None
        if index is None:
            self.holding = False
        for event in self.held if index is None else [self.held[index]]:
            self.server.loop.call_soon_threadsafe(event.set)


class Clock:
    """Epoch seconds that a test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = str(Path(tmp_path_factory.mktemp("cache-ca")) / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    return server_ctx, ca_file


class Rig:
    def __init__(self, upstream: FakeSecretsManager, proxy: ServerThread, clock: Clock) -> None:
        self.upstream, self.proxy, self.clock = upstream, proxy, clock


@contextlib.contextmanager
def rigged(tls: tuple[ssl.SSLContext, str], cache: dict[str, Any], **upstream: Any) -> Iterator[Rig]:
    """The fake upstream over TLS and the proxy in front of it, with ``cache`` and one attempt each;
    ``upstream`` keys over ``read_timeout_seconds: 2`` (held answers are released well within it, also on a
    loaded machine) and ``total_timeout_seconds: 5``."""
    server_ctx, ca_file = tls
    fake = FakeSecretsManager()
    clock = Clock()
    with ServerThread(fake.app, ssl_context=server_ctx, shutdown_timeout=0.5) as server:
        fake.server = server
        cfg: Config = build(
            Config,
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "upstream": {
                    "region": REGION,
                    "endpoint_url": server.url,
                    "ca_bundle": ca_file,
                    "max_attempts": 1,
                    "read_timeout_seconds": 2,
                    "total_timeout_seconds": 5,
                    **upstream,
                },
                "cache": {"enabled": True, **cache},
                "policy": {"allow_actions": ["*"]},
            },
        )
        check(cfg)
        app = lambda: create_app(cfg, fetch=static_fetch("AKIDCACHETEST", "secret"), clock=clock)  # noqa: E731
        with ServerThread(app) as proxy:
            yield Rig(fake, proxy, clock)


@pytest.fixture
def rig(tls: tuple[ssl.SSLContext, str]) -> Iterator[Rig]:
    """The rig with ttl 10 s, stale 30 s."""
    with rigged(tls, {"ttl_seconds": 10, "serve_stale_seconds": 30}) as made:
        yield made


def test_hits_make_no_upstream_call(rig: Rig) -> None:
    for _ in range(5):
        assert value(rig.proxy, "app/db") == "v1"
    assert value(rig.proxy, f"{ARN_PREFIX}app/db-AbCdEf") == "v1"
    assert rig.upstream.count() == 1


def test_entries_expire_after_ttl_under_a_controlled_clock(rig: Rig) -> None:
    assert value(rig.proxy, "app/db") == "v1"
    rig.upstream.values["app/db"] = "v2"
    rig.clock.offset = 9.9
    assert value(rig.proxy, "app/db") == "v1"
    rig.clock.offset = 10.0
    assert value(rig.proxy, "app/db") == "v2"
    assert rig.upstream.count() == 2


def test_concurrent_misses_make_one_upstream_call(rig: Rig) -> None:
    rig.upstream.hold()
    with ThreadPoolExecutor(16) as pool:
        answers = [pool.submit(value, rig.proxy, "app/db") for _ in range(16)]
        deadline = time.monotonic() + 30
        while metric(rig.proxy, "cache_misses_total") < 16:  # all 16 are waiting on the one call
            assert time.monotonic() < deadline
        rig.upstream.release()
        assert [a.result(30) for a in answers] == ["v1"] * 16
    assert rig.upstream.count() == 1


def test_no_cache_makes_an_upstream_call_and_refreshes(rig: Rig) -> None:
    value(rig.proxy, "app/db")
    rig.upstream.values["app/db"] = "v2"
    assert value(rig.proxy, "app/db", {"Cache-Control": "no-cache"}) == "v2"
    assert value(rig.proxy, "app/db") == "v2"
    assert rig.upstream.count() == 2


def test_a_write_makes_the_next_read_go_upstream(rig: Rig) -> None:
    value(rig.proxy, "app/db")
    target = "/?Action=PutSecretValue&SecretId=app%2Fdb&SecretString=v9&Version=2017-10-17"
    assert raw_request(rig.proxy.port, "GET", target).status == 200
    assert value(rig.proxy, "app/db") == "v9"
    assert rig.upstream.count() == 2 and rig.upstream.count("PutSecretValue") == 1


@pytest.mark.parametrize("failure", ["503", "hang", "reset"])
def test_stale_answers_only_while_the_upstream_fails_and_within_the_window(rig: Rig, failure: str) -> None:
    assert value(rig.proxy, "app/db") == "v1"
    rig.clock.offset = 15  # expired, inside serve_stale_seconds
    rig.upstream.mode = failure
    assert value(rig.proxy, "app/db") == "v1"
    assert rig.upstream.count() == 2
    assert metric(rig.proxy, "cache_hits_total", freshness="stale") == 1
    rig.clock.offset = 10 + 30  # past the window: the failure is the answer
    status, _ = read(rig.proxy, "app/db")
    assert status == {"503": 503, "hang": 504, "reset": 502}[failure]


def test_no_stale_answer_while_the_upstream_answers(rig: Rig) -> None:
    assert value(rig.proxy, "app/db") == "v1"
    rig.clock.offset = 15
    rig.upstream.values["app/db"] = "v2"
    assert value(rig.proxy, "app/db") == "v2"
    rig.clock.offset = 30
    del rig.upstream.values["app/db"]
    assert read(rig.proxy, "app/db") == (400, None)  # an answer, not a failure: no stale value
    assert metric(rig.proxy, "cache_hits_total", freshness="stale") == 0


def test_a_write_by_an_sdk_client_invalidates_too(cached: ServerThread, emulator: Any) -> None:
    """The SDK (JSON 1.1) path shares the cache's invalidation: a PutSecretValue sent by an SDK through the
    proxy leaves no stale answer for Query readers."""
    from tests.support import sdk_client

    name = unique("cache/sdk-write")
    emulator.direct().create_secret(Name=name, SecretString="before")
    assert value(cached, name) == "before"
    assert value(cached, name) == "before"  # now cached
    sdk_client(cached.url).put_secret_value(SecretId=name, SecretString="after")
    assert value(cached, name) == "after"


# ---------------------------------------------------------------------------------------------------------
# refresh-ahead through the listener (issue 16): the counting fake upstream under a controlled clock


REFRESH_RESULTS = ("fetched", "unchanged", "adopted", "failed", "discarded")


def refreshes(proxy: ServerThread) -> float:
    return sum(metric(proxy, "cache_refreshes_total", result=r) for r in REFRESH_RESULTS)


def settle(proxy: ServerThread) -> None:
    """Wait until the proxy's cache has no upstream read in flight (a refresh the last read started has
    landed), so that a test moving the clock on does not outrun it."""
    assert proxy.app is not None
    cache = proxy.app[SERVICE].cache
    poll(lambda: cache.in_flight == 0, 30, "the cache's upstream reads to land")


def test_steady_reads_through_the_listener_never_wait_on_the_upstream(tls: tuple[ssl.SSLContext, str]) -> None:
    """Two secrets read at every 5% of a 300 s TTL for four TTLs: no read after the first of each is a miss,
    and each secret is fetched once per refresh period (80% of the TTL, rounded up to the next read)."""
    ttl = 300.0
    with rigged(tls, {"ttl_seconds": ttl}) as rig:
        names = ("app/db", "app/api")
        rig.upstream.values["app/api"] = "k1"
        for name in names:
            assert value(rig.proxy, name) == rig.upstream.values[name]
        steps = 80
        for step in range(1, steps + 1):
            rig.clock.offset = step * ttl / 20
            for name in names:
                assert value(rig.proxy, name) == rig.upstream.values[name]
            settle(rig.proxy)  # every refresh started so far has landed: the next step starts clean
        assert metric(rig.proxy, "cache_misses_total") == len(names)
        per_secret = rig.upstream.count() / len(names)
        assert 1 + steps / 20 <= per_secret <= 1 + steps / 16  # one per 0.8 to 1.0 TTL
        assert refreshes(rig.proxy) == metric(rig.proxy, "cache_refreshes_total", result="fetched")


def test_reads_through_the_listener_are_answered_while_the_refresh_is_held(tls: tuple[ssl.SSLContext, str]) -> None:
    with rigged(tls, {"ttl_seconds": 100}, read_timeout_seconds=30, total_timeout_seconds=60) as rig:
        assert value(rig.proxy, "app/db") == "v1"
        rig.upstream.hold()
        rig.upstream.values["app/db"] = "v2"
        rig.clock.offset = 81
        assert value(rig.proxy, "app/db") == "v1"  # at the refresh point: answered, and the refresh starts
        poll(lambda: len(rig.upstream.held) == 1, 30, "the refresh to reach the upstream")
        for offset in (85, 90, 95, 99):
            rig.clock.offset = offset
            assert value(rig.proxy, "app/db") == "v1"  # answered while the refresh waits on the upstream
        rig.upstream.release()
        poll(lambda: value(rig.proxy, "app/db") == "v2", 30, "the refreshed value")
        assert rig.upstream.count() == 2 and metric(rig.proxy, "cache_misses_total") == 1


def test_the_background_sweep_refreshes_an_entry_read_earlier_in_its_life(tls: tuple[ssl.SSLContext, str]) -> None:
    with rigged(tls, {"ttl_seconds": 100}) as rig:
        assert value(rig.proxy, "app/db") == "v1"
        rig.clock.offset = 10
        assert value(rig.proxy, "app/db") == "v1"  # read since its fetch
        rig.upstream.values["app/db"] = "v2"
        rig.clock.offset = 85  # past the refresh point, and no read comes
        poll(lambda: rig.upstream.count() == 2, 30, "the sweep to refresh the entry")
        poll(lambda: refreshes(rig.proxy) == 1, 30, "the refresh to land")
        rig.clock.offset = 150  # the first entry would have expired; the refreshed one has not
        assert value(rig.proxy, "app/db") == "v2"
        assert metric(rig.proxy, "cache_misses_total") == 1 and rig.upstream.count() == 2


# ---------------------------------------------------------------------------------------------------------
# refresh-ahead and version checks against moto, counted by a relay in front of it


@pytest.fixture
def relayed(emulator: Any, demo_env: None, tmp_path: Path) -> Iterator[Any]:
    """``relayed(**cache)``: the proxy (the demo role, a controlled clock) against moto through a
    :class:`~tests.recorder.CountingRelay`; returns (proxy, relay, clock)."""
    with CountingRelay(str(tmp_path), emulator.url, emulator.ca_file) as relay, contextlib.ExitStack() as stack:

        def start(**cache: Any) -> tuple[ServerThread, CountingRelay, Clock]:
            clock = Clock()
            cfg = proxy_config(
                emulator.server,
                upstream={"endpoint_url": relay.url, "ca_bundle": relay.ca_file},
                cache={"enabled": True, **cache},
            )
            proxy = stack.enter_context(ServerThread(lambda: create_app(cfg, clock=clock)))
            return proxy, relay, clock

        yield start


def test_version_checks_against_moto_a_rotation_straight_to_the_service(relayed: Any, emulator: Any) -> None:
    """cache.version_check: a refresh that finds the version unchanged costs one DescribeSecret and no
    GetSecretValue; a new version put straight to moto is served within one TTL, fetched once."""
    ttl = 60.0
    proxy, relay, clock = relayed(ttl_seconds=ttl, version_check=True)
    name = unique("version-check")
    direct = emulator.direct()
    direct.create_secret(Name=name, SecretString="v1")
    assert value(proxy, name) == "v1"
    clock.offset = 0.5 * ttl
    assert value(proxy, name) == "v1"  # read since its fetch
    clock.offset = 0.85 * ttl  # the sweep refreshes: DescribeSecret only
    poll(lambda: metric(proxy, "cache_refreshes_total", result="unchanged") == 1, 30, "the version check")
    assert (relay.count("DescribeSecret"), relay.count("GetSecretValue")) == (1, 1)
    assert metric(proxy, "cache_version_checks_total", result="unchanged") == 1

    direct.put_secret_value(SecretId=name, SecretString="v2")  # a rotation the proxy does not see
    rotated_at = clock.offset
    while value(proxy, name) != "v2":
        assert clock.offset - rotated_at <= ttl, "the rotated value was not served within one TTL"
        clock.offset += ttl / 20
        settle(proxy)
    assert (relay.count("DescribeSecret"), relay.count("GetSecretValue")) == (2, 2)
    assert metric(proxy, "cache_version_checks_total", result="changed") == 1
    assert metric(proxy, "cache_misses_total") == 1


def test_refresh_ahead_against_moto_fetches_each_secret_once_per_period(relayed: Any, emulator: Any) -> None:
    ttl = 60.0
    proxy, relay, clock = relayed(ttl_seconds=ttl)
    names = [unique("refresh") for _ in range(3)]
    direct = emulator.direct()
    for name in names:
        direct.create_secret(Name=name, SecretString=f"{name}-1")
        assert value(proxy, name) == f"{name}-1"
    for step in range(1, 61):  # three TTLs in steps of 5%
        clock.offset = step * ttl / 20
        for name in names:
            assert value(proxy, name) == f"{name}-1"
        settle(proxy)
    assert metric(proxy, "cache_misses_total") == len(names)
    per_secret = relay.count("GetSecretValue") / len(names)
    assert 1 + 3 <= per_secret <= 1 + 60 / 16
    assert relay.count("DescribeSecret") == 0


# ---------------------------------------------------------------------------------------------------------
# --workers 2: the real CLI, each worker with its own entries and admin port (issue 13, section 2)


def workers_config(tmp_path: Path, upstream: dict[str, Any], **sections: Any) -> str:
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstream": {"region": REGION, **upstream},
        "cache": {"enabled": True, "ttl_seconds": 300},
        "policy": {"allow_actions": ["*"]},
        **sections,
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def two_workers(proxy: ProxyProcess) -> tuple[int, list[int]]:
    """Wait until both workers listen and hold credentials; the shared Query port and each admin port."""
    lines = poll(lambda: len(listening(proxy)) == 2 and listening(proxy), 60, "two workers to listen")
    admins = [line["admin_port"] for line in sorted(lines, key=lambda line: line["worker"])]
    for admin in admins:
        proxy.wait_status(f"http://127.0.0.1:{admin}/readyz", 200)
    return lines[0]["port"], admins


def reads_counted(admin: int) -> float:
    return metric_sum(admin, 'query_signing_proxy_requests_total{action="GetSecretValue"')


def read_through_every_worker(port: int, admins: list[int], secret_id: str, expected: str, each: int = 4) -> int:
    """Read ``secret_id`` on fresh connections (the kernel picks the worker) until every worker has answered
    ``each`` of them; every answer must be ``expected``. Returns how many reads it took."""
    start = [reads_counted(a) for a in admins]
    reads = 0

    def spread() -> bool:
        nonlocal reads
        got = read(port, secret_id)
        reads += 1
        assert got == (200, expected), f"read {reads}: {got}, expected {expected!r}"
        return all(reads_counted(a) >= s + each for a, s in zip(admins, start, strict=True))

    poll(spread, 60, f"every worker to answer {each} reads", interval=0)
    return reads


def test_workers_a_write_through_either_worker_leaves_no_stale_read(
    emulator: Any, demo_env: None, tmp_path: Path
) -> None:
    """Issue 13's case: with the entry cached in both workers, a write through the proxy (Query or SDK, by
    name, ARN or partial ARN) is followed by reads through both workers, none of which may be stale."""
    from tests.integration.test_sdk import sdk_client

    direct = emulator.direct()
    name = unique("workers")
    arn = direct.create_secret(Name=name, SecretString="v0")["ARN"]
    upstream = {"endpoint_url": emulator.url, "ca_bundle": emulator.ca_file}
    path = workers_config(tmp_path, upstream, credentials={"role_arn": DEMO_ROLE_ARN, "role_session_name": "cache-workers"})
    with ProxyProcess(["--config", path, "--workers", "2"], tmp_path) as proxy:
        port, admins = two_workers(proxy)
        sdk = sdk_client(f"http://127.0.0.1:{port}")
        writes = [("query", name), ("sdk", arn), ("query", arn[:-7]), ("sdk", name), ("query", arn)]
        for n, (kind, secret_id) in enumerate(writes):
            current, after = f"v{n}", f"v{n + 1}"
            read_through_every_worker(port, admins, name, current)  # cached in both workers now
            assert all(metric_sum(a, "query_signing_proxy_cache_entries ") >= 1 for a in admins)
            if kind == "query":
                target = f"/?Action=PutSecretValue&SecretId={quote(secret_id, safe='')}&SecretString={after}"
                assert raw_request(port, "GET", target + "&Version=2017-10-17").status == 200
            else:
                sdk.put_secret_value(SecretId=secret_id, SecretString=after)
            read_through_every_worker(port, admins, name, after)
        assert all(metric_sum(a, 'query_signing_proxy_cache_hits_total{freshness="fresh"}') > 0 for a in admins)
        assert proxy.stop() == 0


def test_workers_a_read_in_flight_in_one_worker_is_not_kept_after_a_write_through_the_other(
    tls: tuple[ssl.SSLContext, str], tmp_path: Path
) -> None:
    """Worker B has a miss in flight (its answer, read before the write, held back at the upstream) when a
    write goes through worker A: reads after the write, through B too, must not wait for that read or get
    its value, and once it lands B must not keep it."""
    server_ctx, ca_file = tls
    upstream = FakeSecretsManager(key=ACCESS_KEY)
    with ServerThread(upstream.app, ssl_context=server_ctx, shutdown_timeout=0.5) as server:
        upstream.server = server
        path = workers_config(tmp_path, {"endpoint_url": server.url, "ca_bundle": ca_file, "max_attempts": 1})
        with ProxyProcess(["--config", path, "--workers", "2"], tmp_path, proxy_environ()) as proxy:
            port, admins = two_workers(proxy)
            upstream.hold()
            with ThreadPoolExecutor(1) as pool:
                early = pool.submit(read, port, "app/db")
                poll(lambda: len(upstream.held) == 1, 30, "the first read to reach the upstream")
                busy = [metric_sum(a, "query_signing_proxy_requests_in_flight ") for a in admins]
                assert sorted(busy) == [0, 1]
                b, a = (admins[0], admins[1]) if busy[0] else (admins[1], admins[0])
                upstream.holding = False  # only the first read stays held
                written = 0
                while metric_sum(a, 'query_signing_proxy_requests_total{action="PutSecretValue"') == 0:
                    written += 1  # until one lands on A (the kernel picks; those landing on B count too)
                    assert written < 64
                    target = f"/?Action=PutSecretValue&SecretId=app%2Fdb&SecretString=w{written}&Version=2017-10-17"
                    assert raw_request(port, "GET", target).status == 200
                latest = f"w{written}"
                read_through_every_worker(port, admins, "app/db", latest)
                upstream.release(0)
                assert early.result(30) == (200, "v1")  # in flight when the write landed: answered as read
            read_through_every_worker(port, admins, "app/db", latest)  # and not kept by B
            assert metric_sum(b, 'query_signing_proxy_cache_hits_total{freshness="fresh"}') > 0
            assert proxy.stop() == 0


def relayed_workers_config(tmp_path: Path, relay: CountingRelay, ttl: float) -> str:
    return workers_config(
        tmp_path,
        {"endpoint_url": relay.url, "ca_bundle": relay.ca_file},
        cache={"enabled": True, "ttl_seconds": ttl},
        credentials={"role_arn": DEMO_ROLE_ARN, "role_session_name": "cache-refresh-workers"},
    )


def test_workers_refresh_ahead_once_for_both(emulator: Any, demo_env: None, tmp_path: Path) -> None:
    """Issue 16 with --workers 2, real time, moto behind a counting relay: steady reads through both workers
    for three TTLs; after each worker's first read no read is a miss, and the secret is fetched once per
    refresh period between them (the other worker takes the answer from shared memory)."""
    ttl, seconds = 8.0, 20.0  # 1.6 s between a refresh point and expiry: room for a loaded machine
    name = unique("workers-refresh")
    emulator.direct().create_secret(Name=name, SecretString="v1")
    with CountingRelay(str(tmp_path), emulator.url, emulator.ca_file) as relay:
        path = relayed_workers_config(tmp_path, relay, ttl)
        with ProxyProcess(["--config", path, "--workers", "2"], tmp_path) as proxy:
            port, admins = two_workers(proxy)
            read_through_every_worker(port, admins, name, "v1", each=2)
            assert relay.count("GetSecretValue") == 2  # each worker's own first read
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:  # steady reads, the kernel spreading them over the workers
                assert read(port, name) == (200, "v1")
                time.sleep(0.02)
            total = lambda prefix: sum(metric_sum(a, prefix) for a in admins)  # noqa: E731
            assert total("query_signing_proxy_cache_misses_total ") == 2  # no read waited on the upstream
            fetched = total('query_signing_proxy_cache_refreshes_total{result="fetched"}')
            adopted = total('query_signing_proxy_cache_refreshes_total{result="adopted"}')
            periods = seconds / (0.8 * ttl)
            assert relay.count("GetSecretValue") == 2 + fetched
            assert periods - 1 <= fetched <= periods + 2  # one per period between the two workers, not two
            assert adopted >= periods - 2
            assert proxy.stop() == 0


def test_workers_no_stale_read_after_writes_while_refreshes_run(emulator: Any, demo_env: None, tmp_path: Path) -> None:
    """Writes through the proxy while a refresh is in flight (a 2 s TTL; the relay holds every upstream
    GetSecretValue 0.3 s, and each write is sent once a refresh has reached it): the refresh is not kept,
    and once the write is answered every read through either worker returns the written value."""
    name = unique("workers-race")
    emulator.direct().create_secret(Name=name, SecretString="w0")
    with CountingRelay(str(tmp_path), emulator.url, emulator.ca_file) as relay:
        relay.delays["GetSecretValue"] = 0.3
        path = relayed_workers_config(tmp_path, relay, 2.0)
        with ProxyProcess(["--config", path, "--workers", "2"], tmp_path) as proxy:
            port, admins = two_workers(proxy)
            read_through_every_worker(port, admins, name, "w0", each=2)
            writes = 4
            for written in range(1, writes + 1):
                before = relay.count("GetSecretValue")

                def refresh_in_flight(current: str = f"w{written - 1}", before: int = before) -> bool:
                    assert read(port, name) == (200, current)  # steady reads until a refresh starts
                    return relay.count("GetSecretValue") > before

                poll(refresh_in_flight, 30, "a refresh to reach the upstream", interval=0.05)
                target = f"/?Action=PutSecretValue&SecretId={quote(name, safe='')}&SecretString=w{written}"
                assert raw_request(port, "GET", target + "&Version=2017-10-17").status == 200
                read_through_every_worker(port, admins, name, f"w{written}", each=2)
            counted = 'query_signing_proxy_cache_refreshes_total{result="discarded"}'
            discarded = sum(metric_sum(a, counted) for a in admins)
            assert discarded >= 1, "no refresh was in flight at a write: the test did not test what it says"
            assert proxy.stop() == 0


def test_a_write_through_a_route_is_seen_by_the_main_listeners_cache(emulator: Any, demo_env: None) -> None:
    """Two listeners of one process fronting the same Secrets Manager (``routes:``), each with its own cache:
    they share the stamp table, so a write through one leaves no stale read on the other."""
    from tests.serving import Served
    from tests.support import proxy_config

    upstream = {"region": REGION, "endpoint_url": emulator.url, "ca_bundle": emulator.ca_file}
    cfg = proxy_config(
        emulator.server,
        cache={"enabled": True},
        policy={"allow_actions": ["*"]},
        routes=[{"port": 0, "upstream": upstream, "policy": {"allow_actions": ["*"]}}],
    )
    name = unique("route")
    emulator.direct().create_secret(Name=name, SecretString="v1")
    with Served(cfg) as served:
        main, route = served.port, served.route_ports[0]
        assert value(main, name) == "v1" and value(main, name) == "v1"  # cached by the main listener
        target = f"/?Action=PutSecretValue&SecretId={quote(name, safe='')}&SecretString=v2&Version=2017-10-17"
        assert raw_request(route, "GET", target).status == 200
        assert value(main, name) == "v2"
