"""Issue 13, item 4: the Host rule holds on every path of the Query listener (docs/interface.md, "HTTP
endpoints"), ``/healthz``, ``/readyz`` and ``/metrics`` included when ``admin.host`` is null, so that a web page
that rebinds a DNS name to 127.0.0.1 reads neither the metrics nor the reason ``/readyz`` fails. The separate
admin listener (``admin.host`` set) stays reachable by kubelet and Prometheus with the pod IP as Host.

Through the real listeners: the proxy against a fault server (static keys, so ``/readyz`` is 200), and
:func:`proxy.app.serve` with an admin listener and a ``routes:`` listener.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from proxy.local import REGION
from tests.faults import answer, fault_config, secret_value, xml_error
from tests.serving import Served
from tests.support import poll, raw_request

ADMIN_PATHS = ["/metrics", "/readyz", "/healthz"]
REBINDING_HOSTS = [
    "rebind.example:8977",
    "rebind.example",
    "127.0.0.1.nip.io",
    "localhost.rebind.example",
    "localhost:8977@rebind.example",
    "rebind.example:8977, 127.0.0.1",
    "10.0.0.7",
    "0.0.0.0",
    "[::2]:8977",
    "",
]


def refused(resp: Any) -> None:
    assert resp.status == 403, (resp.status, resp.body[:200])
    assert xml_error(resp.body)[1] == "AccessDenied"
    assert b"query_signing_proxy" not in resp.body and b"ready" not in resp.body


@pytest.fixture
def proxy(start_fault: Any, start_fault_proxy: Any) -> Any:
    """The default admin setting (``admin.host: null``): the admin paths are on the Query listener."""
    fault = start_fault(answer(200, secret_value()))
    proxy = start_fault_proxy(fault.url, listen={"allowed_hosts": ["app.internal"]})
    poll(lambda: raw_request(proxy.port, "GET", "/readyz").status == 200, 30, "/readyz to turn 200")
    return proxy


@pytest.mark.parametrize("host", REBINDING_HOSTS)
@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_paths_on_the_query_listener_refuse_a_foreign_host(proxy: Any, path: str, host: str) -> None:
    refused(raw_request(proxy.port, "GET", path, headers={"Host": host}))


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("HEAD", "/readyz"),
        ("HEAD", "/healthz"),
        ("HEAD", "/metrics"),  # no HEAD route: aiohttp's router answers 405 itself, after the Host rule
        ("POST", "/metrics"),
        ("DELETE", "/readyz"),
        ("GET", "/metrics?name[]=query_signing_proxy_requests_total"),
        ("GET", "/metrics/"),
        ("GET", "//metrics"),
        ("GET", "/METRICS"),
        ("GET", "/%6detrics"),
        ("GET", "/nothing-here"),
    ],
)
def test_every_method_and_spelling_gets_the_host_rule_first(proxy: Any, method: str, target: str) -> None:
    resp = raw_request(proxy.port, method, target, headers={"Host": "rebind.example:8977"})
    assert resp.status == 403, (resp.status, resp.body[:200])
    if method != "HEAD":
        refused(resp)


def test_an_absolute_form_target_and_a_missing_host_are_refused(proxy: Any) -> None:
    refused(raw_request(proxy.port, "GET", "http://rebind.example:8977/metrics", headers={"Host": "127.0.0.1"}))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")  # HTTP/1.0 without a Host header
        answer_bytes = b""
        while chunk := sock.recv(65536):
            answer_bytes += chunk
    head, _, body = answer_bytes.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"403", head
    assert b"AccessDenied" in body and b"query_signing_proxy" not in body


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:8977", "localhost", "LOCALHOST:1", "[::1]:8977", "127.9.9.9", "app.internal:80"]
)
def test_loopback_and_allowed_hosts_still_reach_the_admin_paths(proxy: Any, host: str) -> None:
    for path in ADMIN_PATHS:
        resp = raw_request(proxy.port, "GET", path, headers={"Host": host})
        assert resp.status == 200, (path, host, resp.body[:200])
    assert b"query_signing_proxy_requests_total" in raw_request(proxy.port, "GET", "/metrics").body


def test_refused_admin_requests_are_counted_and_scrapes_are_not(proxy: Any) -> None:
    def denied_count() -> float:
        body = raw_request(proxy.port, "GET", "/metrics").body.decode()
        for line in body.splitlines():
            if line.startswith('query_signing_proxy_requests_total{action="-",code="AccessDenied"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = denied_count()
    for _ in range(3):
        refused(raw_request(proxy.port, "GET", "/metrics", headers={"Host": "rebind.example"}))
    assert denied_count() == before + 3  # and the scrapes in between counted nothing


def test_the_admin_listener_answers_the_pod_ip_and_the_query_listener_refuses_it(
    certs: Any, static_keys: None, start_fault: Any
) -> None:
    fault = start_fault(answer(200, secret_value()))
    cfg = fault_config(
        fault.url,
        certs.ca_file,
        admin={"host": "127.0.0.1", "port": 0},
        routes=[
            {
                "port": 0,
                "upstream": {"region": REGION, "endpoint_url": fault.url, "ca_bundle": certs.ca_file},
                "policy": {"allow_actions": ["GetSecretValue"]},
            }
        ],
    )
    with Served(cfg) as served:
        admin = served.admin_port
        assert admin is not None
        poll(lambda: raw_request(admin, "GET", "/readyz").status == 200, 30, "/readyz to turn 200")
        # kubelet probes and Prometheus scrapes name the pod by its IP
        for host in ("10.1.2.3:8978", "10.1.2.3", "[fd00::7]:8978", "localhost:8978", "127.0.0.1"):
            for path in ADMIN_PATHS:
                resp = raw_request(admin, "GET", path, headers={"Host": host})
                assert resp.status == 200, (host, path, resp.body[:200])
        # a DNS name a web page could rebind to the pod's address reads nothing there
        for host in ("rebind.example", "rebind.example:8978", "10.1.2.3.nip.io", "10.1.2.3:8978@rebind.example", ""):
            for path in [*ADMIN_PATHS, "/nothing"]:
                resp = raw_request(admin, "GET", path, headers={"Host": host})
                assert resp.status == 403, (host, path, resp.status)
                assert b"query_signing_proxy" not in resp.body and b"ready" not in resp.body
        for port in (served.port, *served.route_ports):  # the Query listeners: Host rule first, then 404
            refused(raw_request(port, "GET", "/metrics", headers={"Host": "10.1.2.3:8978"}))
            resp = raw_request(port, "GET", "/metrics")
            assert resp.status == 404 and xml_error(resp.body)[1] == "NotFound"


def test_a_second_host_header_does_not_help(proxy: Any) -> None:
    """Two Host headers, the foreign one first: refused (a browser sends one; aiohttp reads the first)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            b"GET /metrics HTTP/1.1\r\nHost: rebind.example:8977\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        answer_bytes = b""
        while chunk := sock.recv(65536):
            answer_bytes += chunk
    status = answer_bytes.split(b" ", 2)[1]
    assert status in (b"400", b"403"), answer_bytes[:200]
    assert b"query_signing_proxy" not in answer_bytes


# ---------------------------------------------------------------------------------------------------------
# cross-site requests from a browser (CSRF): the Host is 127.0.0.1, but the page is another site's

CROSS_SITE = [
    # an HTML form on http://evil.example posting to http://127.0.0.1:8977/
    {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},
    # the same from a browser that sends no Fetch Metadata
    {"Origin": "http://evil.example"},
    # a sandboxed iframe, a file:// page
    {"Origin": "null"},
    # <img src="http://127.0.0.1:8977/?Action=...">: no Origin on a no-cors GET, only Fetch Metadata
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
    # an Origin that is not a URL at all: refused, not a 500
    {"Origin": "http://[::1"},
]


@pytest.mark.parametrize(
    "headers", CROSS_SITE, ids=["form-post", "origin-only", "origin-null", "img-get", "origin-bad-ipv6"]
)
def test_a_cross_site_browser_request_is_refused_before_it_reaches_the_upstream(
    start_fault: Any, start_fault_proxy: Any, headers: dict[str, str]
) -> None:
    """A web page anywhere (not only a rebinding one) can make a browser in the pod send a simple GET or form POST
    to ``http://127.0.0.1:8977/``: the Host is loopback, so the Host rule lets it through, and with writes in
    ``allow_actions`` (and no caller token) ``PutSecretValue`` would land even though the page cannot read the
    answer. Browsers mark such requests (``Origin``, ``Sec-Fetch-Site``); SDKs and curl never send them."""
    fault = start_fault(answer(200, {"ARN": "arn:aws:secretsmanager:us-east-1:1:secret:app/db-AbCdEf"}))
    proxy = start_fault_proxy(fault.url, policy={"allow_actions": ["*"]})
    host = {"Host": f"127.0.0.1:{proxy.port}"}
    form = b"Action=PutSecretValue&SecretId=app/db&SecretString=pwned"
    post = raw_request(
        proxy.port, "POST", "/", form, headers={**host, "Content-Type": "application/x-www-form-urlencoded", **headers}
    )
    refused(post)
    refused(
        raw_request(
            proxy.port, "GET", "/?Action=PutSecretValue&SecretId=app/db&SecretString=x", headers={**host, **headers}
        )
    )
    assert fault.seen == []
    # a page of the pod's own (a loopback origin), and every non-browser client, are served as before
    own = {"Origin": f"http://localhost:{proxy.port}", "Sec-Fetch-Site": "same-origin"}
    assert (
        raw_request(proxy.port, "GET", "/?Action=GetSecretValue&SecretId=app/db", headers={**host, **own}).status == 200
    )
    assert raw_request(proxy.port, "GET", "/?Action=GetSecretValue&SecretId=app/db", headers=host).status == 200
