"""The opt-in secret cache (``cache:``, docs/interface.md, "Cache", docs/cache.md): repeat reads answered from memory,
never what a write through the proxy changed, never to a request the policy denied.

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
  that names no secret clears all. Reads in flight when a write lands are answered but not stored, and a
  read that arrives after it never joins them.
- ``Cache-Control: no-cache`` on the request bypasses the lookup and refreshes the entry;
- concurrent misses of one key share one upstream call (single flight);
- entries expire ``ttl_seconds`` after they were fetched; ``max_entries`` bounds the number held, least
  recently used evicted first;
- an expired entry may still answer for ``serve_stale_seconds`` after expiry, only when the upstream call made
  to refresh it failed: HTTP 5xx, timeout (GatewayTimeout) or unreachable (BadGateway).

Several workers (``--workers N``). Each worker holds its own entries; what they share is the
:class:`~proxy.stamps.StampTable`, made with the cache before the fork: a write stores fresh stamps on the
words of the names it touches, an entry remembers the stamps its fetch began under, and a hit compares them
(two loads from shared memory: no lock, no system call, no message between processes). A fetch and the
single flight it leads are tied to the same stamps, so neither an answer read before a write nor a flight
begun before it outlives the write in any worker. :mod:`proxy.stamps` gives the reasoning, docs/cache.md the
picture.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .config import CacheConfig
from .metrics import Metrics
from .models import Operation, UpstreamResponse
from .stamps import GLOBAL, StampTable, name_forms, slot_of

AWSCURRENT = "AWSCURRENT"
# The batch parameters that make a BatchGetSecretValue something other than "these secrets, current version".
_BATCH_NOT_BY_ID = ("Filters", "NextToken", "MaxResults")
# Upstream failures during which an expired entry may be served (within serve_stale_seconds).
_UPSTREAM_FAILURES = (errors.BadGateway, errors.GatewayTimeout)

Fetch = Callable[[], Awaitable[UpstreamResponse]]
EntryKey = tuple[str, str | None, str | None]  # (ARN, VersionId, VersionStage)


@dataclass(frozen=True, slots=True)
class _Read:
    """A cacheable read: the secret ids as given, the version selectors, and whether it is a batch."""

    ids: tuple[str, ...]
    version_id: str | None
    stage: str | None
    batch: bool


@dataclass(frozen=True, slots=True)
class _Entry:
    body: bytes = field(repr=False)  # one GetSecretValue answer / SecretValueEntry, JSON; never shown
    stored: float  # clock seconds when fetched
    slot: int  # the stamp table's word of the secret's name
    stamp: int  # that word's stamp when the fetch began
    global_stamp: int  # the global word's stamp when the fetch began


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


def _names(secret_id: str, arn: str, name: str | None) -> bool:
    """Whether ``secret_id`` (name, ARN or partial ARN without the 6-character suffix) names this secret."""
    return secret_id in (arn, name) or (arn.startswith(f"{secret_id}-") and len(arn) == len(secret_id) + 7)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class SecretCache:
    """The secret cache of one upstream service; configured once from ``cache:``, shared by all requests.

    ``clock`` gives seconds (monotonic or epoch; an entry whose age comes out negative is treated as expired).
    ``stamps`` is the table the workers share (default: a new one; build the cache before forking).
    Everything but :meth:`answer` is synchronous and runs on the event loop without awaiting, so the maps need
    no lock. Disabled (``cache.enabled: false``), :meth:`answer` only calls ``fetch``.
    """

    def __init__(
        self,
        cfg: CacheConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        stamps: StampTable | None = None,
    ) -> None:
        self.enabled = cfg.enabled
        self.ttl = float(cfg.ttl_seconds)
        self.stale = float(cfg.serve_stale_seconds)
        self.max_entries = cfg.max_entries
        self._metrics = metrics
        self._fresh_hits = metrics.cache_hits.labels(freshness="fresh")
        self._stale_hits = metrics.cache_hits.labels(freshness="stale")
        self._clock = clock
        self._entries: OrderedDict[EntryKey, _Entry] = OrderedDict()  # least recently used first
        self._secrets: dict[str, _Secret] = {}  # ARN -> its keys and aliases
        self._alias: dict[str, str] = {}  # id as a request gave it, name or ARN -> ARN
        self._flights: dict[tuple[object, ...], _Flight] = {}
        self._tasks: set[asyncio.Future[UpstreamResponse]] = set()
        self.stamps = stamps if stamps is not None else StampTable()
        self._words = self.stamps.words

    def __len__(self) -> int:
        return len(self._entries)

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
        if not refresh:
            cached = self._lookup(read, self.ttl)
            if cached is not None:
                self._fresh_hits.inc()
                return cached
        self._metrics.cache_misses.inc()
        try:
            response = await self._shared_fetch(read, fetch, refresh)
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
        change in the table every worker shares, so no worker answers from an entry or joins an upstream read
        that began before this call; this worker's own entries are dropped at once. Synchronous: call it after
        the upstream answered the write and before the write is answered."""
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

    # -----------------------------------------------------------------------------------------------------

    async def _write(self, operation: Operation, fetch: Fetch) -> UpstreamResponse:
        named = list(operation.secret_ids)
        try:
            response = await fetch()
            doc = _json_object(response.body) if response.status < 300 else None
            named += [v for k in ("ARN", "Name") if doc and isinstance(v := doc.get(k), str)]
            return response
        finally:
            self.invalidate(named)

    def _lookup(self, read: _Read, max_age: float) -> UpstreamResponse | None:
        """The cached answer when every secret of ``read`` has an entry younger than ``max_age`` seconds."""
        now = self._clock()
        found: list[tuple[EntryKey, bytes]] = []
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
            if age < 0 or age >= self.ttl + self.stale:
                self._drop(key, "expired")
                return None
            if age >= max_age:
                return None
            found.append((key, entry.body))
        for key, _ in found:
            self._entries.move_to_end(key)
        if not read.batch:
            return UpstreamResponse(200, (), found[0][1])
        body = b'{"SecretValues":[' + b",".join(b for _, b in found) + b'],"Errors":[]}'
        return UpstreamResponse(200, (), body)

    def _stale(self, read: _Read) -> UpstreamResponse | None:
        cached = self._lookup(read, self.ttl + self.stale) if self.stale > 0 else None
        if cached is not None:
            self._stale_hits.inc()
        return cached

    async def _shared_fetch(self, read: _Read, fetch: Fetch, refresh: bool) -> UpstreamResponse:
        stamps = self.stamps
        key = (read.batch, tuple(self._alias.get(i, i) for i in read.ids), read.version_id, read.stage)
        flight = None if refresh else self._flights.get(key)
        if flight is None or not stamps.current(flight.seen):  # never join a read that began before a write
            seen = stamps.snapshot(read.ids)
            # A task of its own, so that one caller going away does not cancel the others' answer.
            task = asyncio.ensure_future(self._fill(read, fetch, seen))
            self._tasks.add(task)
            flight = self._flights[key] = _Flight(task, seen)
            task.add_done_callback(lambda t: self._landed(key, t))
        return await asyncio.shield(flight.task)

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

    def _store(self, read: _Read, body: bytes, seen: dict[int, int]) -> None:
        """Keep the entries of an answer whose fetch began under the stamps ``seen``, unless a write has
        changed one of them since (then the answer may predate the write: it is answered, not kept)."""
        if not self.stamps.current(seen):
            return
        doc = _json_object(body)
        if doc is None:
            return
        if not read.batch:
            arn, name = doc.get("ARN"), doc.get("Name")
            if isinstance(arn, str) and isinstance(name, str):
                self._put((arn, read.version_id, read.stage), body, {read.ids[0], arn, name}, name, seen)
            return
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

    def _put(self, key: EntryKey, body: bytes, aliases: Iterable[object], name: str, seen: dict[int, int]) -> None:
        slot = slot_of(name)
        if slot not in seen:  # the answer is about a name the request did not give: no stamp to hold it to
            return
        arn = key[0]
        if key not in self._entries:
            self._metrics.cache_entries.inc()
        self._entries[key] = _Entry(body, self._clock(), slot, seen[slot], seen[GLOBAL])
        self._entries.move_to_end(key)
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
        while len(self._entries) > self.max_entries:
            oldest = next(iter(self._entries))
            self._drop(oldest, "capacity")

    def _drop(self, key: EntryKey, reason: str) -> None:
        if self._entries.pop(key, None) is None:
            return
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
