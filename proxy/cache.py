"""The opt-in secret cache (``cache:``, docs/interface.md, "Cache", docs/cache.md): repeat reads answered from memory,
never what a write through the proxy changed, never to a request the policy denied, and refreshed ahead of
expiry so that a steady reader never waits on the upstream.

What is cached: the upstream's AWS JSON 1.1 answer of a successful ``GetSecretValue``, and each
``SecretValues`` entry of a successful ``BatchGetSecretValue`` by ``SecretIdList`` (the two have the same
members: ``ARN``, ``Name``, ``VersionId``, ``SecretString``/``SecretBinary``, ``VersionStages``,
``CreatedDate``). Each is held as immutable JSON bytes and rendered to Query XML per request, with that
request's RequestId, exactly as a fresh answer is. Entries live in memory only and are never logged.

Keys: ``(ARN, VersionId, VersionStage)``; a read with neither selector means ``AWSCURRENT`` (as AWS does), so
``GetSecretValue`` without selectors and ``BatchGetSecretValue`` share entries. A secret may be named by
name, full ARN or partial ARN: the link from the id a request gave to the secret's ARN is learnt from the
upstream answer (which carries ``ARN`` and ``Name``), so after one answer every form reaches the same entry.
Keying by ARN, not name, keeps a deleted-and-recreated secret (same name, new ARN) apart from its
predecessor.

Rules, in order (the pipeline calls :meth:`SecretCache.answer` after the policy and token checks, so a denied
request never reaches the cache):

- a non-read operation (anything but ``Get*``/``Describe*``/``List*``/``BatchGet*``) invalidates every entry of
  each secret it names (the model's secret-id members, :attr:`Operation.secret_ids`, plus the ``ARN``/``Name``
  of its answer) before its answer is returned, success or failure, in every worker of ``--workers N``; one
  that names no secret clears all. Reads in flight when a write lands (refreshes included) are answered but
  not stored, and a read that arrives after it never joins them.
- ``Cache-Control: no-cache`` on the request bypasses the lookup and refreshes the entry;
- concurrent misses of one key share one upstream call (single flight);
- entries expire ``ttl_seconds`` after they were fetched; ``max_entries`` bounds the number held and
  ``max_bytes`` the sum of their bodies' sizes, least recently used evicted first;
- refresh-ahead (``refresh_ahead``): an entry read at least once since it was fetched is fetched again in the
  background once :data:`REFRESH_AT` of its TTL has passed, once for all readers (the refresh is the key's
  single flight) and, through the :class:`~proxy.sharedstore.SharedStore`, once for all workers; an entry
  nobody read since its fetch expires. With ``version_check``, the refresh first asks ``DescribeSecret``
  which version holds the entry's stage and calls ``GetSecretValue`` only when it changed. A failed refresh
  leaves the entry to serve until it expires and is tried again after :data:`RETRY_AFTER` of the TTL.
- an expired entry may still answer for ``serve_stale_seconds`` after expiry, only when the upstream call made
  to refresh it failed: HTTP 5xx, timeout (GatewayTimeout) or unreachable (BadGateway).

Several workers (``--workers N``). Each worker holds its own entries; what they share is the
:class:`~proxy.stamps.StampTable`, made with the cache before the fork: a write stores fresh stamps on the
words of the names it touches, an entry remembers the stamps its fetch began under, and a hit compares them
(two loads from shared memory: no lock, no system call, no message between processes). A fetch and the
single flight it leads are tied to the same stamps, so neither an answer read before a write nor a flight
begun before it outlives the write in any worker. Refreshed answers travel between workers with the stamps
their fetch began under and are compared the same way before a worker takes one. :mod:`proxy.stamps` and
:mod:`proxy.sharedstore` give the reasoning, docs/cache.md the picture.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .config import CacheConfig
from .metrics import Metrics
from .models import Operation, UpstreamResponse
from .sharedstore import Published, SharedStore
from .stamps import GLOBAL, StampTable, name_forms, slot_of

AWSCURRENT = "AWSCURRENT"
REFRESH_AT = 0.8  # of the TTL: when an entry read since its fetch is fetched again (issue 16)
RETRY_AFTER = 0.05  # of the TTL: how long after a failed refresh the next one may start
SWEEP_SECONDS = 1.0  # the longest the background sweep sleeps (it wakes sooner for a due refresh)
REFRESH_RESULTS = ("fetched", "unchanged", "adopted", "failed", "discarded")
VERSION_CHECK_RESULTS = ("unchanged", "changed", "error")
# The batch parameters that make a BatchGetSecretValue something other than "these secrets, current version".
_BATCH_NOT_BY_ID = ("Filters", "NextToken", "MaxResults")
# Upstream failures during which an expired entry may be served (within serve_stale_seconds).
_UPSTREAM_FAILURES = (errors.BadGateway, errors.GatewayTimeout)

Fetch = Callable[[], Awaitable[UpstreamResponse]]
Call = Callable[[Operation], Awaitable[UpstreamResponse]]
EntryKey = tuple[str, str | None, str | None]  # (ARN, VersionId, VersionStage)

log = logging.getLogger("proxy.cache")


@dataclass(frozen=True, slots=True)
class _Read:
    """A cacheable read: the secret ids as given, the version selectors, and whether it is a batch."""

    ids: tuple[str, ...]
    version_id: str | None
    stage: str | None
    batch: bool


@dataclass(slots=True, eq=False)
class _Entry:
    body: bytes = field(repr=False)  # one GetSecretValue answer / SecretValueEntry, JSON; never shown
    stored: float  # clock seconds when fetched
    name: str  # the secret's name, from the answer
    slot: int  # the stamp table's word of that name
    stamp: int  # that word's stamp when the fetch began
    global_stamp: int  # the global word's stamp when the fetch began
    read: bool = False  # read since it was fetched: refresh-ahead refreshes only those
    retry_at: float = 0.0  # no refresh starts before (a failed one; another worker's lease)
    seq: int = 0  # the shared record's sequence number when this worker last looked at it


@dataclass(frozen=True, slots=True)
class _Flight:
    """One upstream read in flight, and the stamps it began under (:meth:`StampTable.snapshot`)."""

    task: asyncio.Future[UpstreamResponse]
    seen: dict[int, int]


@dataclass(slots=True)
class _Secret:
    """What the cache holds for one ARN: its entry keys and every id form that leads to it."""

    keys: set[EntryKey] = field(default_factory=set)
    aliases: set[str] = field(default_factory=set)


def cacheable_read(operation: Operation) -> _Read | None:
    """The cache's view of ``operation``: a GetSecretValue, or a BatchGetSecretValue by distinct ids only; None
    for anything else."""
    data = operation.input
    if operation.name == "GetSecretValue":
        version_id, stage = data.get("VersionId"), data.get("VersionStage")
        if version_id is None and stage is None:
            stage = AWSCURRENT
        return _Read((data["SecretId"],), version_id, stage, batch=False)
    if operation.name == "BatchGetSecretValue":
        ids = tuple(data.get("SecretIdList") or ())
        if not ids or len(set(ids)) != len(ids) or any(k in data for k in _BATCH_NOT_BY_ID):
            return None
        return _Read(ids, None, AWSCURRENT, batch=True)
    return None


def wants_refresh(cache_control: str | None) -> bool:
    """True when a ``Cache-Control`` request header carries the ``no-cache`` directive (RFC 9111 5.2.1.4)."""
    if not cache_control:
        return False
    return any(d.split("=", 1)[0].strip().lower() == "no-cache" for d in cache_control.split(","))


def version_unchanged(cached: dict[str, Any], described: dict[str, Any]) -> bool:
    """Whether a cached GetSecretValue answer (``cached``: its ``VersionId`` and ``VersionStages``) is still
    what the secret holds, by a ``DescribeSecret`` answer (``described``): its ``VersionIdsToStages`` gives
    the cached version exactly the stages it had (so a stage the entry was read by still points at it), and
    the secret is not scheduled for deletion. (AWS lists only versions that have a stage; a version without
    one counts as changed.)"""
    stages_by_version = described.get("VersionIdsToStages")
    version, stages = cached.get("VersionId"), cached.get("VersionStages")
    if described.get("DeletedDate") is not None or not isinstance(stages_by_version, dict):
        return False
    if not isinstance(version, str) or not isinstance(stages, list):
        return False
    now = stages_by_version.get(version)
    return isinstance(now, list) and set(now) == set(stages)


def _names(secret_id: str, arn: str, name: str | None) -> bool:
    """Whether ``secret_id`` (name, ARN or partial ARN without the 6-character suffix) names this secret."""
    return secret_id in (arn, name) or (arn.startswith(f"{secret_id}-") and len(arn) == len(secret_id) + 7)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _key_bytes(key: EntryKey) -> bytes:
    return "\n".join(part or "" for part in key).encode("utf-8", "surrogatepass")


def _flight_key(key: EntryKey) -> tuple[object, ...]:
    """The single-flight key of a GetSecretValue of ``key`` (as :meth:`SecretCache._shared_fetch` makes it)."""
    return (False, (key[0],), key[1], key[2])


class SecretCache:
    """The secret cache of one upstream service; configured once from ``cache:``, shared by all requests.

    ``clock`` gives seconds (epoch seconds when ``shared`` is given, so that every worker reads the same
    time; an entry whose age comes out negative is treated as expired). ``stamps`` is the table the workers
    share (default: a new one; build the cache before forking); ``shared`` the store of refreshed answers
    the workers share (None: one process, or a platform without it); ``lease_seconds`` how long a worker
    may take over a refresh before another may start one (the longest a refresh can take). Refresh-ahead
    needs :attr:`call` (an upstream call for an operation the proxy makes itself; without it entries just
    expire) and :meth:`start` (the background sweep, in the event loop; :meth:`close` stops it).
    Everything but :meth:`answer` and :meth:`close` is synchronous and runs on the event loop without
    awaiting, so the maps need no lock. Disabled (``cache.enabled: false``), :meth:`answer` only calls
    ``fetch``.
    """

    def __init__(
        self,
        cfg: CacheConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        stamps: StampTable | None = None,
        shared: SharedStore | None = None,
        call: Call | None = None,
        lease_seconds: float = 60.0,
    ) -> None:
        self.enabled = cfg.enabled
        self.ttl = float(cfg.ttl_seconds)
        self.stale = float(cfg.serve_stale_seconds)
        self.max_entries = cfg.max_entries
        self.max_bytes = cfg.max_bytes
        self.refresh_ahead = cfg.refresh_ahead
        self.version_check = cfg.version_check
        self.refresh_after = REFRESH_AT * self.ttl if cfg.refresh_ahead else self.ttl
        self.call = call
        self.lease_seconds = lease_seconds
        self._metrics = metrics
        self._fresh_hits = metrics.cache_hits.labels(freshness="fresh")
        self._stale_hits = metrics.cache_hits.labels(freshness="stale")
        self._refreshes = {r: metrics.cache_refreshes.labels(result=r) for r in REFRESH_RESULTS}
        self._checks = {r: metrics.cache_version_checks.labels(result=r) for r in VERSION_CHECK_RESULTS}
        self._clock = clock
        self._entries: OrderedDict[EntryKey, _Entry] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._secrets: dict[str, _Secret] = {}  # ARN -> its keys and aliases
        self._alias: dict[str, str] = {}  # id as a request gave it, name or ARN -> ARN
        self._flights: dict[tuple[object, ...], _Flight] = {}
        self._tasks: set[asyncio.Future[UpstreamResponse]] = set()
        self._due: list[tuple[float, int, EntryKey, _Entry]] = []  # (refresh point, tie-break, key, entry)
        self._pushed = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._check_failed = False  # a version check failed once (logged once)
        self.stamps = stamps if stamps is not None else StampTable()
        self._words = self.stamps.words
        self.shared = shared if cfg.enabled and cfg.refresh_ahead else None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """The sum of the cached bodies' sizes (bytes)."""
        return self._bytes

    @property
    def in_flight(self) -> int:
        """Upstream reads in flight: misses' shared fetches and refreshes."""
        return len(self._tasks)

    async def answer(self, operation: Operation, cache_control: str | None, fetch: Fetch) -> UpstreamResponse:
        """The upstream answer for ``operation``: from the cache, from a shared upstream call, or from
        ``fetch()`` (the signed upstream call with retries), per the rules in the module docstring.

        ``cache_control`` is the request's ``Cache-Control`` header (None when absent). A cached answer is an
        ``UpstreamResponse`` with status 200, no headers and the JSON 1.1 body. Raises what ``fetch`` raises,
        unless a stale entry may answer instead.
        """
        if not self.enabled:
            return await fetch()
        if not operation.is_read:
            return await self._write(operation, fetch)
        read = cacheable_read(operation)
        if read is None:
            return await fetch()
        refresh = wants_refresh(cache_control)
        # the single-flight key, before the lookup drops an expired entry's aliases: a refresh of it may be in flight
        flight_key = (read.batch, tuple(self._alias.get(i, i) for i in read.ids), read.version_id, read.stage)
        if not refresh:
            cached = self._lookup(read, self.ttl)
            if cached is not None:
                self._fresh_hits.inc()
                return cached
        self._metrics.cache_misses.inc()
        try:
            response = await self._shared_fetch(read, fetch, refresh, flight_key)
        except _UPSTREAM_FAILURES:
            stale = None if refresh else self._stale(read)
            if stale is None:
                raise
            return stale
        if response.status >= 500 and not refresh:
            return self._stale(read) or response
        return response

    def invalidate(self, secret_ids: Iterable[str]) -> None:
        """A write landed on the secrets named (name, ARN or partial ARN; none: every secret). Their stamps
        change in the table every worker shares, so no worker answers from an entry, joins an upstream read
        or takes a refreshed answer that began before this call; this worker's own entries are dropped at
        once. Synchronous: call it after the upstream answered the write and before the write is answered."""
        ids = list(secret_ids)
        self.stamps.bump(ids)
        if not ids:
            for key in list(self._entries):
                self._drop(key, "invalidated")
            return
        arns = {self._alias[f] for i in ids for f in name_forms(i) if f in self._alias}
        for arn in arns:
            record = self._secrets.get(arn)
            for key in list(record.keys if record else ()):
                self._drop(key, "invalidated")

    def start(self) -> None:
        """Start the background sweep that refreshes entries at their refresh point (in the running loop;
        nothing when the cache is off, refresh-ahead is off or there is no :attr:`call`)."""
        if self.enabled and self.refresh_ahead and self.call is not None and self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def close(self) -> None:
        """Stop the sweep and cancel the upstream calls still in flight (at shutdown, once the requests that
        could wait on them have been answered)."""
        tasks: list[asyncio.Future[Any]] = [*self._tasks, *([self._sweeper] if self._sweeper else [])]
        self._sweeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def refresh_due(self) -> float:
        """Start the refreshes whose time has come: entries read since their fetch and past their refresh
        point (the hit path starts the others). Returns the clock time of the next refresh point (``inf``
        when none is known). Called by the background sweep; tests with a controlled clock call it."""
        now = self._clock()
        due = self._due
        while due and due[0][0] <= now:
            _, _, key, entry = heapq.heappop(due)
            if self._entries.get(key) is not entry or not entry.read or now - entry.stored >= self.ttl:
                continue
            if not self._valid(entry):
                continue  # a write since its fetch: the next read drops it
            self._renew(key, entry, now)
            if self._entries.get(key) is entry and now < entry.retry_at < entry.stored + self.ttl:
                self._push(entry.retry_at, key, entry)  # another worker's lease, or a failed refresh
        return due[0][0] if due else math.inf

    # -----------------------------------------------------------------------------------------------------
    # reads

    async def _write(self, operation: Operation, fetch: Fetch) -> UpstreamResponse:
        named = list(operation.secret_ids)
        try:
            response = await fetch()
            doc = _json_object(response.body) if response.status < 300 else None
            named += [v for k in ("ARN", "Name") if doc and isinstance(v := doc.get(k), str)]
            return response
        finally:
            self.invalidate(named)

    def _valid(self, entry: _Entry) -> bool:
        """No write through any worker since the fetch of ``entry`` began (two loads from shared memory)."""
        words = self._words
        return bool(words[entry.slot] == entry.stamp and words[GLOBAL] == entry.global_stamp)

    def _lookup(self, read: _Read, max_age: float) -> UpstreamResponse | None:
        """The cached answer when every secret of ``read`` has an entry younger than ``max_age`` seconds."""
        now = self._clock()
        found: list[tuple[EntryKey, _Entry, float]] = []
        for secret_id in read.ids:
            arn = self._alias.get(secret_id)
            if arn is None:
                return None
            key = (arn, read.version_id, read.stage)
            entry = self._entries.get(key)
            if entry is None:
                return None
            words = self._words
            if words[entry.slot] != entry.stamp or words[GLOBAL] != entry.global_stamp:
                self._drop(key, "invalidated")  # a write through some worker since this entry's fetch began
                return None
            age = now - entry.stored
            if age >= self.refresh_after and self.shared is not None:
                entry = self._take_published(key, entry)  # another worker's newer answer, if there is one
                age = max(0.0, now - entry.stored)
            if age < 0 or age >= self.ttl + self.stale:
                self._drop(key, "expired")
                return None
            if age >= max_age:
                return None
            found.append((key, entry, age))
        for key, entry, age in found:
            if self._entries.get(key) is not entry:
                continue  # evicted by a later secret's entry of this batch: answered, no longer held
            self._entries.move_to_end(key)
            entry.read = True
            if self.refresh_after <= age < self.ttl:
                self._renew(key, entry, now)
        if not read.batch:
            return UpstreamResponse(200, (), found[0][1].body)
        body = b'{"SecretValues":[' + b",".join(e.body for _, e, _ in found) + b'],"Errors":[]}'
        return UpstreamResponse(200, (), body)

    def _stale(self, read: _Read) -> UpstreamResponse | None:
        cached = self._lookup(read, self.ttl + self.stale) if self.stale > 0 else None
        if cached is not None:
            self._stale_hits.inc()
        return cached

    async def _shared_fetch(
        self, read: _Read, fetch: Fetch, refresh: bool, key: tuple[object, ...]
    ) -> UpstreamResponse:
        stamps = self.stamps
        flight = None if refresh else self._flights.get(key)
        if flight is None or not stamps.current(flight.seen):  # never join a read that began before a write
            seen = stamps.snapshot(read.ids)
            flight = self._fly(key, self._fill(read, fetch, seen), seen)
        return await asyncio.shield(flight.task)

    def _fly(self, key: tuple[object, ...], work: Awaitable[UpstreamResponse], seen: dict[int, int]) -> _Flight:
        """Run ``work`` as the single flight of ``key``: a task of its own, so that one caller going away
        does not cancel the others' answer."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        flight = self._flights[key] = _Flight(task, seen)
        task.add_done_callback(lambda t: self._landed(key, t))
        return flight

    def _landed(self, key: tuple[object, ...], task: asyncio.Future[UpstreamResponse]) -> None:
        self._tasks.discard(task)
        flight = self._flights.get(key)
        if flight is not None and flight.task is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved, so that an error nobody waits for is not reported as lost

    async def _fill(self, read: _Read, fetch: Fetch, seen: dict[int, int]) -> UpstreamResponse:
        response = await fetch()
        if 200 <= response.status < 300:
            self._store(read, response.body, seen)
        return response

    # -----------------------------------------------------------------------------------------------------
    # refresh-ahead

    def _renew(self, key: EntryKey, entry: _Entry, now: float) -> None:
        """``entry`` (of ``key``) was read since its fetch and is past its refresh point: take the answer
        another worker published for it, or start the refresh, once for all readers and workers."""
        if not self.refresh_ahead or self.call is None or now < entry.retry_at:
            return
        stamps = self.stamps
        flight_key = _flight_key(key)
        flight = self._flights.get(flight_key)
        if flight is not None and stamps.current(flight.seen):
            return  # a refresh or a miss of this key is in flight already
        shared = self.shared
        if shared is not None:
            name = _key_bytes(key)
            index = shared.index(name)
            entry.seq = shared.seq(index)
            claim = shared.claim(index, name, self._owner(), entry.stored, now, self.lease_seconds)
            if isinstance(claim, Published):
                if self._adopt(key, entry, claim) is not None:
                    return
                # refreshed before a write that has landed since: not taken; this worker refreshes instead
                claim = shared.claim(index, name, self._owner(), claim.stored, now, self.lease_seconds)
                if isinstance(claim, Published):
                    return
            if claim is not None:  # another worker refreshes: its answer is taken when published; look again
                entry.retry_at = min(claim, now + RETRY_AFTER * self.ttl)  # soon, in case that refresh fails
                return
        seen = stamps.snapshot([key[0], entry.name])
        self._fly(flight_key, self._refresh(key, entry, seen), seen)

    def _take_published(self, key: EntryKey, entry: _Entry) -> _Entry:
        """``entry``, or the newer answer another worker published for ``key`` (then the entry that replaces
        it). One lock-free load when nothing was published since this worker last looked."""
        shared = self.shared
        assert shared is not None
        name = _key_bytes(key)
        index = shared.index(name)
        seq = shared.seq(index)
        if seq == entry.seq:
            return entry
        entry.seq = seq
        found = shared.take(index, name, entry.stored)
        if found is None:
            return entry
        return self._adopt(key, entry, found) or entry

    def _adopt(self, key: EntryKey, entry: _Entry, published: Published) -> _Entry | None:
        """Replace ``entry`` by the answer another worker refreshed, unless a write has landed since that
        refresh began (its stamps differ from the table's). Returns the new entry, or None."""
        stamps = self.stamps
        if published.slot != entry.slot:
            return None
        if stamps.read(published.slot) != published.stamp or stamps.read(GLOBAL) != published.global_stamp:
            return None
        adopted = _Entry(
            published.body,
            published.stored,
            entry.name,
            published.slot,
            published.stamp,
            published.global_stamp,
            seq=published.seq,
        )
        if not self._set(key, adopted):
            return None
        self._refreshes["adopted"].inc()
        return adopted

    async def _refresh(self, key: EntryKey, entry: _Entry, seen: dict[int, int]) -> UpstreamResponse:
        """Fetch ``key`` again (after asking DescribeSecret whether its version changed, with
        ``version_check``), keep and publish the answer unless a write landed since ``seen``; the answer is
        also that of any miss that joined this flight."""
        call = self.call
        assert call is not None
        arn, version_id, stage = key
        result = "failed"
        started = time.monotonic()
        try:
            response = None
            if self.version_check and await self._version_unchanged(call, arn, entry):
                response, result = UpstreamResponse(200, (), entry.body), "unchanged"
            if response is None:
                selectors = {"VersionId": version_id, "VersionStage": stage}
                data = {"SecretId": arn, **{k: v for k, v in selectors.items() if v is not None}}
                response = await call(Operation("GetSecretValue", data, (arn,), is_read=True, retryable=True))
                result = "fetched" if 200 <= response.status < 300 else "failed"
            if result != "failed":
                kept = self._store(_Read((arn,), version_id, stage, batch=False), response.body, seen)
                if kept is None:
                    result = "discarded"
                else:
                    self._publish(key, kept)
            return response
        except asyncio.CancelledError:
            result = ""
            raise
        except errors.ProxyError:
            raise  # the upstream failed or could not be reached: counted and logged below
        except Exception as exc:
            log.warning("cache refresh failed", extra={"secret_id": arn, "error": type(exc).__name__})
            raise
        finally:
            if result:
                self._refreshes[result].inc()
                if result == "failed":
                    self._back_off(key, entry)
                log.debug(
                    "cache refresh",
                    extra={"secret_id": arn, "result": result, "seconds": round(time.monotonic() - started, 6)},
                )

    async def _version_unchanged(self, call: Call, arn: str, entry: _Entry) -> bool:
        """Whether DescribeSecret says the secret still holds the version of ``entry`` with the same stages;
        False (and ``error`` counted) when it cannot tell."""
        cached = _json_object(entry.body)
        try:
            response = await call(Operation("DescribeSecret", {"SecretId": arn}, (arn,), is_read=True, retryable=True))
        except errors.ProxyError:
            response = None
        described = _json_object(response.body) if response is not None and response.status < 300 else None
        if described is None or cached is None:
            self._checks["error"].inc()
            if not self._check_failed:  # once: every failure is counted in cache_version_checks_total
                self._check_failed = True
                status = response.status if response is not None else None
                log.warning("cache version check failed; GetSecretValue instead", extra={"upstream_status": status})
            return False
        unchanged = version_unchanged(cached, described)
        self._checks["unchanged" if unchanged else "changed"].inc()
        return unchanged

    def _publish(self, key: EntryKey, entry: _Entry) -> None:
        shared = self.shared
        if shared is None:
            return
        name = _key_bytes(key)
        index = shared.index(name)
        owner, now = self._owner(), self._clock()
        seq = shared.publish(
            index, name, owner, entry.body, entry.stored, entry.slot, entry.stamp, entry.global_stamp, now
        )
        entry.seq = seq or shared.seq(index)

    def _back_off(self, key: EntryKey, entry: _Entry) -> None:
        """After a failed refresh: the entry serves until it expires; no refresh, here or (through the
        lease) in another worker, for :data:`RETRY_AFTER` of the TTL."""
        now = self._clock()
        entry.retry_at = now + RETRY_AFTER * self.ttl
        if self._entries.get(key) is entry and entry.retry_at < entry.stored + self.ttl:
            self._push(entry.retry_at, key, entry)
        if self.shared is not None:
            name = _key_bytes(key)
            self.shared.release(self.shared.index(name), name, self._owner(), entry.retry_at)

    def _owner(self) -> int:
        """This cache in this process, as the shared store's lease owner (caches are built before the fork)."""
        return (os.getpid() << 32 | id(self) & 0xFFFFFFFF) or 1

    async def _sweep(self) -> None:
        while True:
            next_at = self.refresh_due()
            wait = min(SWEEP_SECONDS, self.ttl * RETRY_AFTER, next_at - self._clock())
            await asyncio.sleep(max(wait, 0.005))

    def _push(self, when: float, key: EntryKey, entry: _Entry) -> None:
        self._pushed += 1
        heapq.heappush(self._due, (when, self._pushed, key, entry))
        if len(self._due) > 2 * len(self._entries) + 64:  # replaced entries' points: dropped, amortized O(1)
            self._due = [item for item in self._due if self._entries.get(item[2]) is item[3]]
            heapq.heapify(self._due)

    # -----------------------------------------------------------------------------------------------------
    # the maps

    def _store(self, read: _Read, body: bytes, seen: dict[int, int]) -> _Entry | None:
        """Keep the entries of an answer whose fetch began under the stamps ``seen``, unless a write has
        changed one of them since (then the answer may predate the write: it is answered, not kept).
        Returns the entry of a single read when it was kept."""
        stamps = self.stamps
        if not stamps.current(seen):
            return None
        doc = _json_object(body)
        if doc is None:
            return None
        if not read.batch:
            arn, name = doc.get("ARN"), doc.get("Name")
            if isinstance(arn, str) and isinstance(name, str):
                return self._put((arn, read.version_id, read.stage), body, {read.ids[0], arn, name}, name, seen)
            return None
        values = doc.get("SecretValues")
        for value in values if isinstance(values, list) else ():
            if not isinstance(value, dict):
                continue
            arn, name = value.get("ARN"), value.get("Name")
            if not isinstance(arn, str) or not isinstance(name, str):
                continue
            if AWSCURRENT not in (value.get("VersionStages") or ()):
                continue
            aliases = {arn, name, *(i for i in read.ids if _names(i, arn, name))}
            entry_body = json.dumps(value, separators=(",", ":")).encode()
            self._put((arn, None, AWSCURRENT), entry_body, aliases, name, seen)
        return None

    def _put(
        self, key: EntryKey, body: bytes, aliases: Iterable[object], name: str, seen: dict[int, int]
    ) -> _Entry | None:
        slot = slot_of(name)
        if slot not in seen:  # the answer is about a name the request did not give: no stamp to hold it to
            return None
        entry = _Entry(body, self._clock(), name, slot, seen[slot], seen[GLOBAL])
        if not self._set(key, entry):
            return None
        arn = key[0]
        record = self._secrets.setdefault(arn, _Secret())
        record.keys.add(key)
        for alias in aliases:
            if not isinstance(alias, str):
                continue
            previous = self._alias.get(alias)
            if previous is not None and previous != arn and previous in self._secrets:
                self._secrets[previous].aliases.discard(alias)
            self._alias[alias] = arn
            record.aliases.add(alias)
        return entry

    def _set(self, key: EntryKey, entry: _Entry) -> bool:
        """Hold ``entry`` as the most recently used, evicting the least recently used beyond ``max_entries``
        and ``max_bytes``. False when the body alone is larger than ``max_bytes`` (not kept; an older entry
        of the key is dropped, since it is not the latest answer)."""
        if len(entry.body) > self.max_bytes:
            self._drop(key, "bytes")
            return False
        old = self._entries.get(key)
        if old is None:
            self._metrics.cache_entries.inc()
        else:
            self._bytes -= len(old.body)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        self._bytes += len(entry.body)
        if self.refresh_ahead:
            self._push(entry.stored + self.refresh_after, key, entry)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)), "capacity")
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)), "bytes")
        self._metrics.cache_bytes.set(self._bytes)
        return True

    def _drop(self, key: EntryKey, reason: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= len(entry.body)
        self._metrics.cache_bytes.set(self._bytes)
        self._metrics.cache_entries.dec()
        self._metrics.cache_evictions.labels(reason=reason).inc()
        record = self._secrets.get(key[0])
        if record is None:
            return
        record.keys.discard(key)
        if not record.keys:
            del self._secrets[key[0]]
            for alias in record.aliases:
                if self._alias.get(alias) == key[0]:
                    del self._alias[alias]
