"""The shared store of refresh-ahead (proxy/sharedstore.py): leases, published answers, the arena, and what the
workers rely on, checked with real forked processes: one mapping seen by all, a lock that excludes the other
processes and that the kernel frees when its holder dies."""

from __future__ import annotations

import os
import signal
import time

import pytest

from proxy.sharedstore import BLOCK, Published, SharedStore, key_hash

KEY = b"arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbCdEf\n\nAWSCURRENT"
A, B = 11, 22  # two workers' owner numbers


def store(max_bytes: int = 64 * BLOCK, max_age: float = 100.0) -> SharedStore:
    return SharedStore(16, max_bytes, max_age)


def publish(s: SharedStore, key: bytes, body: bytes, stored: float, owner: int = A, now: float = 0.0) -> int:
    return s.publish(s.index(key), key, owner, body, stored, 7, 70, 700, now)


def test_the_first_claim_takes_the_lease_and_the_others_wait_for_it() -> None:
    s = store()
    i = s.index(KEY)
    assert s.claim(i, KEY, A, newer_than=0.0, now=10.0, lease_seconds=5.0) is None
    assert s.claim(i, KEY, B, newer_than=0.0, now=11.0, lease_seconds=5.0) == 15.0
    assert s.claim(i, KEY, A, newer_than=0.0, now=11.0, lease_seconds=5.0) is None  # still a's
    assert s.claim(i, KEY, B, newer_than=0.0, now=16.5, lease_seconds=5.0) is None  # a's lease ran out


def test_a_published_answer_is_taken_by_a_worker_whose_entry_is_older() -> None:
    s = store()
    i = s.index(KEY)
    assert s.claim(i, KEY, A, 0.0, 10.0, 5.0) is None
    seq = publish(s, KEY, b'{"SecretString":"v2"}', stored=10.5)
    assert seq == s.seq(i) > 0
    found = s.claim(i, KEY, B, newer_than=1.0, now=11.0, lease_seconds=5.0)
    assert found == Published(b'{"SecretString":"v2"}', 10.5, 7, 70, 700, seq)
    assert s.take(i, KEY, newer_than=1.0) == found
    assert s.take(i, KEY, newer_than=10.5) is None  # not newer than what the worker holds
    assert s.claim(i, KEY, B, newer_than=10.5, now=11.0, lease_seconds=5.0) is None  # the lease ended at publish


def test_an_older_answer_never_replaces_a_newer_one() -> None:
    s = store()
    i = s.index(KEY)
    publish(s, KEY, b"new", stored=20.0)
    assert publish(s, KEY, b"old", stored=19.0, owner=B) == 0
    assert s.take(i, KEY, 0.0) is not None and s.take(i, KEY, 0.0).body == b"new"  # type: ignore[union-attr]


def test_a_key_with_the_same_record_is_another_keys_and_takes_the_record_over() -> None:
    s = store()
    other = next(k for n in range(10_000) if s.index(k := f"other-{n}".encode()) == s.index(KEY))
    publish(s, KEY, b"mine", stored=5.0)
    assert s.take(s.index(other), other, 0.0) is None
    assert s.claim(s.index(other), other, B, 0.0, 6.0, 5.0) is None  # the record is now other's
    assert s.take(s.index(KEY), KEY, 0.0) is None
    assert s.used_bytes() == 0  # and the first key's body was freed


def test_a_body_is_identified_by_its_key_bytes_not_only_its_hash() -> None:
    s = store()
    publish(s, KEY, b"mine", stored=5.0)
    forged = KEY[:-1] + b"X"
    i = s.index(KEY)
    s._words[i + 1] = key_hash(forged)  # as if two keys had the same 64-bit hash
    assert s.take(i, forged, 0.0) is None


def test_the_arena_is_reused_first_fit() -> None:
    s = store(max_bytes=8 * BLOCK)
    keys = [f"k{n}".encode() for n in range(3)]
    for n, key in enumerate(keys):
        assert publish(s, key, b"x" * (2 * BLOCK - len(key)), stored=float(n + 1))
    assert s.used_bytes() == 6 * BLOCK
    publish(s, keys[0], b"y" * 10, stored=10.0)  # the new body of k0 fits in one block
    assert s.used_bytes() == 5 * BLOCK


def test_an_answer_that_finds_no_room_is_not_shared_until_old_ones_are_freed() -> None:
    s = store(max_bytes=4 * BLOCK, max_age=100.0)
    assert publish(s, b"k1", b"x" * (3 * BLOCK), stored=1.0, now=1.0)
    assert publish(s, b"k2", b"y" * (2 * BLOCK), stored=50.0, now=50.0) == 0  # k1 is still worth keeping
    assert publish(s, b"k2", b"y" * (2 * BLOCK), stored=102.0, now=102.0) > 0  # k1 is older than max_age
    assert s.take(s.index(b"k1"), b"k1", 0.0) is None
    assert publish(s, b"k3", b"z" * (5 * BLOCK), stored=103.0, now=103.0) == 0  # larger than the arena


def test_workers_forked_after_it_is_made_share_it() -> None:
    s = store()
    i = s.index(KEY)
    pid = os.fork()
    if pid == 0:  # "another worker": takes the lease and publishes
        code = 1
        try:
            if s.claim(i, KEY, B, 0.0, 10.0, 5.0) is None and publish(s, KEY, b"from the child", 10.5, owner=B):
                code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    found = s.claim(i, KEY, A, newer_than=1.0, now=11.0, lease_seconds=5.0)
    assert isinstance(found, Published) and found.body == b"from the child"


def test_the_lock_excludes_another_process_and_dies_with_its_holder() -> None:
    s = store()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # holds the lock, says so, and is killed holding it
        try:
            with s._locked():
                os.write(ready_w, b"1")
                time.sleep(60)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        import fcntl

        with pytest.raises(OSError):  # held by the child: a non-blocking attempt fails
            fcntl.lockf(s._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)
    assert s.claim(s.index(KEY), KEY, A, 0.0, 1.0, 5.0) is None  # the kernel released the dead holder's lock


def test_a_failed_refresh_keeps_the_lease_until_the_retry_time() -> None:
    s = store()
    i = s.index(KEY)
    assert s.claim(i, KEY, A, 0.0, 10.0, 60.0) is None
    s.release(i, KEY, A, until=12.0)
    assert s.claim(i, KEY, B, 0.0, 11.0, 60.0) == 12.0
    assert s.claim(i, KEY, B, 0.0, 12.5, 60.0) is None
    s.release(i, KEY, A, until=99.0)  # no longer a's: nothing changes
    assert s.claim(i, KEY, A, 0.0, 13.0, 60.0) == 72.5
