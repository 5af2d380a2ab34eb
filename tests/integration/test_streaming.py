"""Pass-through answers stream: chunk by chunk, paced by the client, and the upstream connection is let go
when the client leaves (issue 9). The proxy runs as a subprocess (``python -m proxy --config``) so that its
RSS can be read from ``/proc/<pid>/status``; the upstream is a real aiohttp server over TLS (trustme).

The two long tests are marked ``slow`` (deselect with ``-m "not slow"`` while iterating; CI runs them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.streaming import BigUpstream, MiB, ProxyProcess, RawClient, list_topics_form, proxy_sections
from tests.support import poll

RSS_GROWTH_LIMIT_KIB = 5 * 1000  # "less than 5 MB"
SLOW_READER_BODY_BYTES = 100 * 1000 * 1000


def kernel_buffer_bytes() -> int:
    """What the kernel may hold of one TCP stream on loopback without anybody reading it: the sender's send buffer
    and the receiver's receive buffer at their autotuning maxima (``tcp_wmem`` / ``tcp_rmem``, third field)."""
    total = 0
    for name, fallback in (("tcp_wmem", 4 * 1024 * 1024), ("tcp_rmem", 6 * 1024 * 1024)):
        try:
            total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        except (OSError, IndexError, ValueError):
            total += fallback
    return total


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[BigUpstream]:
    with BigUpstream(tmp_path) as server:
        yield server


@pytest.fixture
def proxy_process(tmp_path: Path, upstream: BigUpstream) -> Iterator[ProxyProcess]:
    proc = ProxyProcess(tmp_path, proxy_sections(upstream))
    try:
        yield proc
    finally:
        proc.stop()


def warm_up(proxy: ProxyProcess) -> None:
    """One full answer first, so that imports, the connection pool and TLS state are in place."""
    client = RawClient(proxy.port, list_topics_form(str(1 * MiB)))
    try:
        client.read_head()
        assert client.status == 200
        assert client.read_all() == 1 * MiB
    finally:
        client.close()


def test_first_bytes_arrive_while_the_upstream_is_still_sending(
    proxy_process: ProxyProcess, upstream: BigUpstream
) -> None:
    """The upstream sends one block and then waits for the test: the block must already be at the client."""
    client = RawClient(proxy_process.port, list_topics_form(f"hold-{4 * MiB}"))
    try:
        first = client.read_head()
        assert client.status == 200
        assert client.headers["content-type"] == "text/xml"
        assert client.headers["content-length"] == str(4 * MiB)
        assert client.headers["x-amzn-requestid"] == "up-1"
        if not first:
            assert client.read(1) == 1
        assert not upstream.answers[0].finished.is_set()
        upstream.go.set()
        assert client.read_all() == 4 * MiB
        assert upstream.answers[0].finished.is_set()
    finally:
        client.close()


def test_an_upstream_that_breaks_off_gives_a_short_body_never_a_complete_looking_one(
    proxy_process: ProxyProcess, upstream: BigUpstream
) -> None:
    client = RawClient(proxy_process.port, list_topics_form(f"break-{2 * MiB}"))
    try:
        client.read_head()
        assert client.status == 200 and client.headers["content-length"] == str(2 * MiB)
        assert client.read_all() < 2 * MiB
    finally:
        client.close()
    poll(lambda: any(line["status"] == 502 for line in proxy_process.access_lines()), 10, "the 502 access line")
    line = next(line for line in proxy_process.access_lines() if line["status"] == 502)
    assert line["upstream_status"] == 200 and line["action"] == "ListTopics"


@pytest.mark.slow
def test_a_slow_reader_holds_memory_flat_and_the_upstream_is_released(
    proxy_process: ProxyProcess, upstream: BigUpstream
) -> None:
    """100 MB upstream body; the client reads 64 KiB/s for 10 s, stops reading for 10 s, then disconnects."""
    warm_up(proxy_process)
    exact_peak = proxy_process.reset_peak()
    baseline = proxy_process.status_kib("VmRSS")
    peak = baseline
    client = RawClient(proxy_process.port, list_topics_form(str(SLOW_READER_BODY_BYTES)), rcvbuf=64 * 1024)
    try:
        client.read_head()
        assert client.status == 200
        answer = upstream.answers[-1]
        assert not answer.finished.is_set()  # the first bytes are here before the upstream is done
        started = time.monotonic()
        for second in range(10):  # 64 KiB per second, for 10 s
            client.read(64 * 1024)
            peak = max(peak, proxy_process.status_kib("VmRSS"))
            time.sleep(max(0.0, started + second + 1 - time.monotonic()))
        read_while_reading = client.body_bytes
        assert 9 * 64 * 1024 <= read_while_reading <= 11 * 64 * 1024 + 256 * 1024
        stalled = time.monotonic()
        while time.monotonic() - stalled < 10:  # not reading for 10 s
            peak = max(peak, proxy_process.status_kib("VmRSS"))
            time.sleep(0.25)
        sent_when_stalled = answer.sent
    finally:
        client.close()
    poll(answer.aborted.is_set, 15, "the upstream connection to be released after the client left")
    assert not answer.finished.is_set()
    # backpressure reached the upstream: what left it is what the kernel buffers of the upstream connection can
    # hold (receive buffers autotune up to tcp_rmem's maximum, 32 MiB on some machines) plus a few MB of the
    # proxy's own buffers and the client's, never the whole body
    bound = kernel_buffer_bytes() + 8 * 1000 * 1000
    assert bound < SLOW_READER_BODY_BYTES, f"this machine's TCP buffers ({bound} bytes) leave the test no margin"
    assert sent_when_stalled < bound, (sent_when_stalled, bound)
    if exact_peak:
        peak = max(peak, proxy_process.status_kib("VmHWM"))
    print(f"slow reader: RSS {baseline} -> peak {peak} KiB; upstream sent {sent_when_stalled} bytes of 100 MB")
    assert peak - baseline < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {peak - baseline} KiB"
    poll(lambda: any(line["status"] == 499 for line in proxy_process.access_lines()), 10, "the 499 access line")
    warm_up(proxy_process)  # and the proxy still serves


def parallel(proxy: ProxyProcess, count: int, size: int, watch: list[int]) -> list[int]:
    """``count`` clients at once, each reading a ``size``-byte answer at full speed; the proxy's VmRSS is
    sampled into ``watch`` meanwhile. Returns the body sizes read."""
    sizes: list[int] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        client = RawClient(proxy.port, list_topics_form(str(size)))
        try:
            client.read_head()
            assert client.status == 200
            sizes.append(client.read_all())
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=fetch) for _ in range(count)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        watch.append(proxy.status_kib("VmRSS"))
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert not errors, errors
    return sizes


@pytest.mark.slow
def test_eight_parallel_10_mib_answers_keep_memory_flat(proxy_process: ProxyProcess, upstream: BigUpstream) -> None:
    """The answers' size must not show in RSS. The warm-up is 8 parallel 1 MiB answers: it opens the 8
    upstream TLS connections and touches their fixed buffers (about 0.7 MB per connection pair, mostly
    asyncio's 256 KiB SSL read buffer), which a cold proxy pays once whatever the answer size."""
    assert parallel(proxy_process, 8, 1 * MiB, []) == [1 * MiB] * 8
    exact_peak = proxy_process.reset_peak()
    baseline = proxy_process.status_kib("VmRSS")
    watch = [baseline]
    assert parallel(proxy_process, 8, 10 * MiB, watch) == [10 * MiB] * 8
    peak = max(watch)
    if exact_peak:
        peak = max(peak, proxy_process.status_kib("VmHWM"))
    print(f"8 x 10 MiB: RSS {baseline} -> peak {peak} KiB")
    assert peak - baseline < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {peak - baseline} KiB"
