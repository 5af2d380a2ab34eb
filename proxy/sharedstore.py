"""The shared store: what the workers of ``--workers N`` share of refresh-ahead, so that an entry is
refreshed once for all of them (docs/cache.md, "Several workers").

For each cache key it holds one **record**: a **lease** (which worker is refreshing the key, and until when)
and the last **refreshed answer** (the body, when it was fetched, and the stamps of
:class:`~proxy.stamps.StampTable` its fetch began under). The worker that takes the lease refreshes and
publishes; the others, when their own entry reaches its refresh point, find the newer answer here and take
it instead of calling the upstream.

Layout: one ``memfd_create(2)`` file (memory only, never a path on disk), sized once and mapped
``MAP_SHARED`` by the parent before it forks the workers, excluded from core dumps (``MADV_DONTDUMP``):

- a header; then :attr:`SharedStore.records` records of 12 unsigned 64-bit words, direct-mapped by a
  64-bit BLAKE2b hash of the key (two keys on one record: the later one takes it over; the other key's
  workers then refresh for themselves);
- a block map (one byte per :data:`BLOCK` bytes of the arena, 0 free, 1 used) and the arena, where a
  record's key and body are kept in consecutive blocks, first fit (``mmap.find`` of a run of free bytes),
  so the pages in use stay close to the bytes of the answers held. The arena is ``cache.max_bytes``: an
  answer that finds no room, once records older than ``ttl_seconds`` are freed, is not shared.

Every access but :meth:`SharedStore.seq` takes one lock, a POSIX record lock (``lockf(3)``, ``fcntl``
``F_SETLKW``) on the memfd: record locks belong to the process, so the forked workers exclude each other
(``flock(2)`` and OFD locks belong to the open file, which fork shares: they would not), and the kernel
releases the lock of a worker that dies. It is held for a few microseconds (a record, a copy of one body),
on refresh paths only, never on a cache hit. :meth:`SharedStore.seq` is one lock-free 8-byte load that
tells a worker whether a record changed since it last looked.

A body is identified exactly, not by its hash: the arena holds the key's bytes before the body, and a
record whose key differs is another key's. Whether an answer may still be served after a write is not this
module's business: the stamps it carries are compared with the stamp table by the cache, as for its own
entries.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

BLOCK = 256  # bytes of arena per block-map byte
_HEADER = 64
_WORDS = 12
# the words of a record
_SEQ, _KEY, _STORED, _SLOT, _STAMP, _GLOBAL, _BLOCK, _KEYLEN, _BODYLEN, _OWNER, _UNTIL = range(11)
_FREE, _USED = b"\0", b"\1"


@dataclass(frozen=True, slots=True)
class Published:
    """A refreshed answer as a worker published it: the body (JSON), when it was fetched (clock seconds),
    the stamp table's word of its secret's name and the stamps of that word and of the global word when the
    fetch began, and the record's sequence number."""

    body: bytes = field(repr=False)
    stored: float
    slot: int
    stamp: int
    global_stamp: int
    seq: int


def key_hash(key: bytes) -> int:
    """The 64-bit hash of a key (never 0, which marks an empty record), the same in every process."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") or 1


def available() -> bool:
    """Whether this platform has what the store needs (Linux: ``memfd_create``)."""
    return hasattr(os, "memfd_create")


class SharedStore:
    """Records and arena for ``max_entries`` keys and ``max_bytes`` of answers; build it before forking.

    ``max_age`` (seconds) is how long a published answer is worth keeping (the cache's ``ttl_seconds``);
    ``clock`` gives the seconds every worker compares (epoch seconds: the same in every process). Raises
    OSError where ``memfd_create`` is missing (see :func:`available`). Every method is synchronous."""

    def __init__(self, max_entries: int, max_bytes: int, max_age: float) -> None:
        records = 64
        while records < 2 * max_entries and records < 1 << 18:
            records *= 2
        self.records = records
        self.blocks = -(-max_bytes // BLOCK)
        self.max_age = max_age
        self._map_at = _HEADER + records * _WORDS * 8
        self._arena_at = self._map_at + -(-self.blocks // 8) * 8
        size = self._arena_at + self.blocks * BLOCK
        self._fd = os.memfd_create("query-signing-proxy-cache", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)  # MAP_SHARED: the forked workers map the same pages
        if hasattr(mmap, "MADV_DONTDUMP"):
            self._map.madvise(mmap.MADV_DONTDUMP)  # secret values stay out of core dumps
        view = memoryview(self._map)[_HEADER : self._map_at]
        self._words = view.cast("Q")
        self._floats = view.cast("d")
        self._free_run = b""

    def index(self, key: bytes) -> int:
        """The record of ``key``: its first word's index."""
        return (key_hash(key) % self.records) * _WORDS

    def seq(self, index: int) -> int:
        """The record's sequence number, read without the lock: it changes whenever an answer is published
        on the record (by any worker, for any key)."""
        value: int = self._words[index + _SEQ]
        return value

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def claim(
        self, index: int, key: bytes, owner: int, newer_than: float, now: float, lease_seconds: float
    ) -> Published | float | None:
        """At a refresh point of the worker ``owner`` (a number of its own, not 0). Returns the answer
        published for ``key`` when it was fetched after ``newer_than`` (take it: no upstream call); else the
        time until which another worker holds the lease (wait for its answer); else None: ``owner`` now
        holds the lease for ``lease_seconds`` and must refresh, then :meth:`publish` or :meth:`release`."""
        words, floats = self._words, self._floats
        hashed = key_hash(key)
        with self._locked():
            if words[index + _KEY] == hashed:
                found = self._published(index, key, newer_than)
                if found is not None:
                    return found
                holder, until = words[index + _OWNER], floats[index + _UNTIL]
                if holder not in (0, owner) and until > now:
                    return until
            else:
                self._clear(index)
                words[index + _KEY] = hashed
            words[index + _OWNER] = owner
            floats[index + _UNTIL] = now + lease_seconds
        return None

    def take(self, index: int, key: bytes, newer_than: float) -> Published | None:
        """The answer published for ``key`` when it was fetched after ``newer_than``, else None; no lease."""
        with self._locked():
            if self._words[index + _KEY] != key_hash(key):
                return None
            return self._published(index, key, newer_than)

    def publish(
        self,
        index: int,
        key: bytes,
        owner: int,
        body: bytes,
        stored: float,
        slot: int,
        stamp: int,
        global_stamp: int,
        now: float,
    ) -> int:
        """Put up the answer to ``key`` fetched at ``stored`` under the given stamps, and end ``owner``'s lease.
        Returns the record's new sequence number, or 0 when it was not put up: a newer answer is there
        already, or there is no room for it even after records older than ``max_age`` were freed."""
        words, floats = self._words, self._floats
        hashed = key_hash(key)
        with self._locked():
            if words[index + _KEY] == hashed:
                if words[index + _OWNER] == owner:
                    words[index + _OWNER] = 0  # the lease ends whatever happens below
                if words[index + _BLOCK] and floats[index + _STORED] >= stored:
                    return 0
                self._free(index)
            else:
                self._clear(index)
                words[index + _KEY] = hashed
            size = len(key) + len(body)
            at = self._allocate(size, now)
            if at < 0:
                return 0
            start = self._arena_at + at * BLOCK
            self._map[start : start + len(key)] = key
            self._map[start + len(key) : start + size] = body
            words[index + _BLOCK] = at + 1
            words[index + _KEYLEN], words[index + _BODYLEN] = len(key), len(body)
            floats[index + _STORED] = stored
            words[index + _SLOT], words[index + _STAMP], words[index + _GLOBAL] = slot, stamp, global_stamp
            seq: int = words[index + _SEQ] + 1
            words[index + _SEQ] = seq
        return seq

    def release(self, index: int, key: bytes, owner: int, until: float) -> None:
        """``owner``'s refresh of ``key`` failed: keep its lease (no worker tries again) until ``until``."""
        with self._locked():
            if self._words[index + _KEY] == key_hash(key) and self._words[index + _OWNER] == owner:
                self._floats[index + _UNTIL] = until

    def used_bytes(self) -> int:
        """Bytes of the arena in use (whole blocks)."""
        with self._locked():
            return self._map[self._map_at : self._map_at + self.blocks].count(_USED) * BLOCK

    # -----------------------------------------------------------------------------------------------------
    # under the lock

    def _published(self, index: int, key: bytes, newer_than: float) -> Published | None:
        words, floats = self._words, self._floats
        if floats[index + _STORED] <= newer_than:
            return None
        body = self._body(index, key)
        if body is None:
            return None
        return Published(
            body,
            floats[index + _STORED],
            words[index + _SLOT],
            words[index + _STAMP],
            words[index + _GLOBAL],
            words[index + _SEQ],
        )

    def _body(self, index: int, key: bytes) -> bytes | None:
        words = self._words
        block = words[index + _BLOCK]
        if not block:
            return None
        start = self._arena_at + (block - 1) * BLOCK
        keylen, bodylen = words[index + _KEYLEN], words[index + _BODYLEN]
        if keylen != len(key) or self._map[start : start + keylen] != key:
            return None  # another key with the same 64-bit hash
        return self._map[start + keylen : start + keylen + bodylen]

    def _free(self, index: int) -> None:
        words = self._words
        block = words[index + _BLOCK]
        if block:
            count = -(-(words[index + _KEYLEN] + words[index + _BODYLEN]) // BLOCK)
            at = self._map_at + block - 1
            self._map[at : at + count] = _FREE * count
            words[index + _BLOCK] = 0

    def _clear(self, index: int) -> None:
        self._free(index)
        for word in range(_WORDS):
            if word != _SEQ:
                self._words[index + word] = 0

    def _allocate(self, size: int, now: float) -> int:
        """The first of ``size`` bytes' worth of free blocks, marked used; -1 when there is no room."""
        count = max(1, -(-size // BLOCK))
        if count > self.blocks:
            return -1
        at = self._find(count)
        if at < 0:
            self._free_older_than(now - self.max_age)
            at = self._find(count)
            if at < 0:
                return -1
        self._map[self._map_at + at : self._map_at + at + count] = _USED * count
        return at

    def _find(self, count: int) -> int:
        if len(self._free_run) != count:
            self._free_run = _FREE * count
        found = self._map.find(self._free_run, self._map_at, self._map_at + self.blocks)
        return found - self._map_at if found >= 0 else -1

    def _free_older_than(self, cutoff: float) -> None:
        words, floats = self._words, self._floats
        for index in range(0, self.records * _WORDS, _WORDS):
            if words[index + _BLOCK] and floats[index + _STORED] < cutoff:
                self._free(index)
