"""The stamp table: what every worker of ``--workers N`` shares of the secret cache, so that a write through
one worker is seen by all of them before it is answered (docs/cache.md, "Several workers").

One anonymous shared mapping (``mmap(-1, ...)``, ``MAP_SHARED``) of :data:`SLOTS` unsigned 64-bit words, made
by the parent before it forks the workers, so that every worker maps the same pages. Word 0 is the *global*
stamp; every other word is the stamp of the secret names that hash to it (CRC-32 of the UTF-8 name, the
same in every process). A stamp is an opaque random value, never a counter:

- a write through the proxy stores a fresh random stamp (``os.urandom``) into the word of every name the
  write may touch (:func:`name_forms` of each id it names: the name, or for an ARN the name with and without
  AWS's 6-character suffix), or into the global word when it names no secret, after the upstream answered
  and before the proxy answers;
- a worker's cache entry remembers the word of its secret's name (from the answer's ``Name``) and the
  stamps of that word and of the global word *as they were before the upstream call that fetched it began*;
- a hit compares those two words with what the entry remembers (two 8-byte loads, no lock, no system call):
  any difference means a write may have happened since the fetch began, and the entry is dropped.

Why random values and plain stores are enough without a lock: a word only ever changes by a store of a
value drawn fresh for that store, so once a write has replaced the stamp ``s`` that a fetch saw, ``s`` never
comes back (up to a 2**-64 chance per store). A fetch that began before a write's upstream call finished
therefore never matches after that write's store, whichever worker made it and whatever other stores ran
at the same time. Counters would need an atomic read-modify-write (two stores of ``n + 1`` could bring back
a value a fetch saw), which Python cannot do on shared memory without a lock. Aligned 8-byte loads and
stores are single-copy atomic on x86-64 and arm64; a torn read could only make a hit miss.

Collisions (two names on one word) and the conservative forms of an ARN only cost extra misses. The table
is 128 KiB of shared pages, few of them ever touched. Issue 16 (refresh-ahead once across workers) builds
on this: see docs/cache.md, "Several workers".
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Iterable

from .policy import secret_names

SLOTS = 1 << 14
GLOBAL = 0
_WORD = 8


def name_forms(secret_id: str) -> set[str]:
    """The names a secret named by ``secret_id`` may have: the id itself and, for an ARN, the part after
    ``:secret:`` with and without AWS's 6-character suffix (a partial ARN and a full ARN look alike)."""
    forms = set(secret_names(secret_id))
    _, sep, tail = secret_id.partition(":secret:")
    if sep and secret_id.startswith("arn:"):
        forms.add(tail)
    return forms


def slot_of(name: str) -> int:
    """The word of the table for a secret name: 1 .. SLOTS - 1, the same in every process."""
    return 1 + zlib.crc32(name.encode("utf-8", "surrogatepass")) % (SLOTS - 1)


def _fresh() -> int:
    return int.from_bytes(os.urandom(_WORD), "little") or 1


class StampTable:
    """The shared words. Build it before forking; every method is synchronous and takes no lock."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, SLOTS * _WORD)  # anonymous, MAP_SHARED: inherited by forked workers
        # the words themselves, for the hit path to index without a call: ``words[slot]`` is a stamp
        self.words = self._words = memoryview(self._map).cast("Q")

    def read(self, slot: int) -> int:
        """The current stamp of ``slot`` (:data:`GLOBAL` or a :func:`slot_of`)."""
        value: int = self._words[slot]
        return value

    def snapshot(self, secret_ids: Iterable[str]) -> dict[int, int]:
        """The stamps, before an upstream read, of the global word and of every word a secret named by one of
        ``secret_ids`` may sit on: ``{slot: stamp}``."""
        words = self._words
        seen = {GLOBAL: words[GLOBAL]}
        for secret_id in secret_ids:
            for name in name_forms(secret_id):
                slot = slot_of(name)
                seen[slot] = words[slot]
        return seen

    def current(self, seen: dict[int, int]) -> bool:
        """Whether no word of a :meth:`snapshot` has changed since it was taken."""
        words = self._words
        return all(words[slot] == stamp for slot, stamp in seen.items())

    def bump(self, secret_ids: Iterable[str]) -> None:
        """A write landed on the secrets named by ``secret_ids`` (any form): a fresh stamp on each of their
        words; with no ids, on the global word (every entry of every worker is then stale)."""
        ids = list(secret_ids)
        if not ids:
            self._words[GLOBAL] = _fresh()
            return
        for slot in {slot_of(name) for secret_id in ids for name in name_forms(secret_id)}:
            self._words[slot] = _fresh()
