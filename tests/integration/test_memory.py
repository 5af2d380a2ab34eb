"""Bounded memory (issue 5, item 4): answers are written with backpressure, so a client that reads slowly or
not at all costs at most one answer's worth of memory, and one that goes away frees it.

Two views: the proxy as the real CLI in a child process with 64 slow readers of a 1 MiB answer (RSS from
/proc, the issue's figure), and the proxy in-process under tracemalloc, where what a non-reading client
holds can be counted exactly (the kernel's socket buffers, which absorb up to a few MiB per connection on
loopback, are not the proxy's memory and are not counted). Clients shrink their receive buffers.
"""

from __future__ import annotations

import re
import socket
import tracemalloc
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor

from tests.faults import MeasuredProxy, answer, by_operation, delayed, list_secrets_document, ok
from tests.support import ServerThread, poll, raw_request

LIST = "/?Action=ListSecrets&Version=2017-10-17"
GET = "/?Action=GetSecretValue&SecretId=app%2Fdb&Version=2017-10-17"
ENTRIES_1_MIB = 905  # a ListSecrets answer of a little over 1 MiB of Query XML
CLIENTS = 64
MB = 1024 * 1024


class SlowClient:
    """A raw HTTP/1.1 client with a tiny receive buffer that reads only when told to."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {LIST} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        self.data = bytearray()
        self.done = False

    def answer_started(self) -> bool:
        try:
            return self.sock.recv(12, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"HTTP/1.1 200"
        except BlockingIOError:
            return False

    def read_some(self, size: int = 16384) -> None:
        self.sock.settimeout(30)
        chunk = self.sock.recv(size)
        if chunk:
            self.data += chunk
        else:
            self.done = True
            self.sock.close()

    def body(self) -> bytes:
        head, _, body = bytes(self.data).partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        assert len(body) == length
        return body

    def close(self) -> None:
        self.sock.close()


def in_flight(port: int) -> float:
    text = raw_request(port, "GET", "/metrics").body.decode()
    m = re.search(r"^query_signing_proxy_requests_in_flight (\S+)$", text, re.M)
    assert m
    return float(m.group(1))


def slow_round(proxy: MeasuredProxy, baseline: int, entries: int) -> int:
    """64 clients that read nothing until every answer has started, then read 16 KiB each in turn; returns
    the highest RSS growth sampled (bytes over ``baseline``) and checks every answer whole."""
    clients = [SlowClient(proxy.port) for _ in range(CLIENTS)]
    poll(lambda: all(c.answer_started() for c in clients), 60, "every answer to start")
    peak = proxy.rss_bytes() - baseline
    turns = 0
    while not all(c.done for c in clients):
        for c in clients:
            if not c.done:
                c.read_some()
        turns += 1
        if turns % 4 == 0:
            peak = max(peak, proxy.rss_bytes() - baseline)
    for c in clients:
        root = ElementTree.fromstring(c.body())
        assert len(root.findall(".//{*}SecretList/{*}member")) == entries
    return peak


def test_sixty_four_slow_readers_of_a_1_mib_answer_grow_rss_by_less_than_100_mb(start_fault, certs, tmp_path):
    fault = start_fault(
        by_operation({"ListSecrets": answer(200, list_secrets_document(ENTRIES_1_MIB))}, delayed(0.2, ok()))
    )
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstream": {"region": "us-east-1", "endpoint_url": fault.url, "ca_bundle": certs.ca_file},
    }
    with MeasuredProxy(tmp_path, config) as proxy:
        for _ in range(3):  # warm up: imports, model caches
            warm = raw_request(proxy.port, "GET", LIST)
            assert warm.status == 200
        assert len(warm.body) > MB
        # and 64 small requests at once, so the upstream pool holds 64 TLS connections (asyncio keeps a
        # 256 KiB read buffer per TLS connection): what grows after this is the cost of the answers
        with ThreadPoolExecutor(CLIENTS) as pool:
            small = list(pool.map(lambda _: raw_request(proxy.port, "GET", GET).status, range(CLIENTS)))
        assert small == [200] * CLIENTS
        baseline, fds = proxy.rss_bytes(), proxy.open_fds()

        first = slow_round(proxy, baseline, ENTRIES_1_MIB)
        assert first < 100 * MB, f"RSS grew {first / MB:.1f} MB"

        # clients that go away before reading: the handlers end and give their slots back
        leavers = [SlowClient(proxy.port) for _ in range(CLIENTS)]
        poll(lambda: all(c.answer_started() for c in leavers), 60, "every answer to start")
        for c in leavers:
            c.close()
        poll(lambda: in_flight(proxy.port) == 0, 30, "the handlers of departed clients to end")

        # what they held was freed and is reused: another round costs no more than the first
        second = slow_round(proxy, baseline, ENTRIES_1_MIB)
        assert second < max(first, 64 * MB) + 16 * MB, f"first round {first / MB:.1f} MB, second {second / MB:.1f}"
        poll(lambda: proxy.open_fds() <= fds + 4, 30, "every client socket to be closed")
        print(
            f"RSS over {baseline / MB:.1f} MB: first round +{first / MB:.1f} MB, second +{second / MB:.1f} MB, "
            f"high-water +{(proxy.peak_rss_bytes() - baseline) / MB:.1f} MB; fds {fds} -> {proxy.open_fds()}"
        )


def query_connections_paused(proxy: ServerThread) -> list[bool]:
    """For each client connection the proxy holds: is writing to it paused (its buffers full)?"""

    async def look() -> list[bool]:
        assert proxy.runner is not None and proxy.runner.server is not None
        return [conn.writing_paused for conn in proxy.runner.server.connections]

    result: list[bool] = proxy.call(look())
    return result


def held_bytes(baseline: int) -> int:
    """Python memory allocated since ``baseline`` was taken, without TLS record buffers (asyncio's sslproto):
    those belong to connections -- the upstream pool and, in this process, the fault server -- not answers."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, "*/asyncio/sslproto.py")])
    return sum(stat.size for stat in snapshot.statistics("filename")) - baseline


def test_a_client_that_reads_nothing_holds_at_most_one_answer_and_frees_it_on_leaving(start_fault, start_fault_proxy):
    entries = 7300  # about 8 MiB of Query XML: more than the kernel's socket buffers take in
    fault = start_fault(answer(200, list_secrets_document(entries)))
    proxy = start_fault_proxy(
        fault.url,
        limits={"max_response_bytes": 64 * MB},
        upstream={"read_timeout_seconds": 20, "total_timeout_seconds": 30},
    )
    warm = raw_request(proxy.port, "GET", LIST)
    assert warm.status == 200
    size = len(warm.body)
    assert size > 8 * MB
    del warm
    readers = 4
    tracemalloc.start()
    try:
        baseline = held_bytes(0)
        clients = [SlowClient(proxy.port) for _ in range(readers)]
        poll(lambda: all(c.answer_started() for c in clients), 60, "every answer to start")
        poll(lambda: query_connections_paused(proxy).count(True) == readers, 60, "the writers to block")
        held = held_bytes(baseline)
        # one document each, plus a chunk or two of transport buffer -- not a second copy of the answer
        assert held < readers * (size + MB // 4), f"{held / MB:.1f} MB held for {readers} answers of {size / MB:.1f} MB"
        for c in clients:
            c.close()
        poll(lambda: not query_connections_paused(proxy), 30, "the proxy to drop the departed clients")
        poll(lambda: in_flight(proxy.port) == 0, 30, "the handlers to end")
        freed = held_bytes(baseline)
        assert freed < MB, f"{freed / MB:.1f} MB still held after the clients left"
    finally:
        tracemalloc.stop()
    assert raw_request(proxy.port, "GET", LIST).status == 200
