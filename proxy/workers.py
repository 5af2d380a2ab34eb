"""``--workers N``: N processes serving the same ports, for more than one core (docs/interface.md, "Command line").

One Python process answers on one core. With ``--workers N`` the parent loads and checks the configuration,
reserves the Query ports (a port 0 becomes a concrete free port, so that every worker binds the same one),
then forks N workers. Each worker builds its own application (its own upstream connections, credentials and
metrics) and serves with SO_REUSEPORT on the shared ports: the kernel spreads new connections over the
workers. Each worker's admin listener is its own, on ``admin.port + index`` (so Prometheus scrapes every
worker as its own target, and the kubelet probes worker 0 on ``admin.port``); ``admin.host`` is therefore
required, since admin endpoints on the shared Query port would answer for a random worker.

The parent forwards SIGTERM/SIGINT to the workers, which drain as one process does, and exits 0 once all
exited 0. A worker that exits on its own (a crash, an error at start-up) stops the others, and the parent
exits with that worker's code, so that the container is restarted rather than left serving on fewer cores.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from types import FrameType

from aiohttp import web

from .app import Worker, bind_socket
from .config import Config, ConfigError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
log = logging.getLogger("proxy.workers")


def _listen_hosts(host: str) -> list[str]:
    return ["127.0.0.1", "::1"] if host.lower() == "localhost" else [host]


def reserve_port(host: str, port: int) -> tuple[int, list[socket.socket]]:
    """Bind (without listening) SO_REUSEPORT sockets on ``host``'s addresses, so that the port stays ours
    while the workers bind it too; returns the port (a free one when ``port`` is 0) and the sockets.

    Raises ListenError when an address cannot be bound, or when something already listens on it: the kernel
    lets any process of the same user join a port bound with SO_REUSEPORT, so a second proxy started with
    ``--workers`` on a port a first one serves would otherwise share its connections silently (half of them
    answered by the other process, under its policy). A probe bound without SO_REUSEPORT (SO_REUSEADDR
    only) conflicts with any listening socket on the address, and not with the reserved one, which is not
    listening."""
    held: list[socket.socket] = []
    try:
        for address in _listen_hosts(host):
            sock = bind_socket(address, port, reuse_port=True)
            held.append(sock)
            port = sock.getsockname()[1]
            bind_socket(address, port).close()  # the probe: ListenError when another process listens there
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return port, held


def check(cfg: Config, count: int) -> None:
    """Raise ConfigError when ``--workers count`` cannot serve ``cfg``: no ``admin.host``, or worker admin ports
    (``admin.port`` .. ``admin.port + count - 1``) past 65535 or on a Query port (``listen.port``,
    ``routes[i].port``, ``agent_api.port``), which would stop every worker at start-up."""
    if count <= 1:
        return
    if cfg.admin.host is None:
        raise ConfigError(
            "--workers: set admin.host (each worker serves /healthz, /readyz and /metrics on its own admin port, "
            "admin.port + worker index)"
        )
    first = cfg.admin.port
    if not first:
        return
    last = first + count - 1
    if last > 65535:
        raise ConfigError(
            f"admin.port: --workers {count} serves the admin endpoints on ports {first} to {last}, past 65535; "
            "lower admin.port"
        )
    query_ports = {cfg.listen.port: "listen.port"} | {r.port: f"routes[{i}].port" for i, r in enumerate(cfg.routes)}
    if cfg.agent_api.port:
        query_ports[cfg.agent_api.port] = "agent_api.port"
    for port, key in query_ports.items():
        if port and first < port <= last:
            raise ConfigError(
                f"admin.port: --workers {count} serves worker {port - first}'s admin endpoints on port {port}, "
                f"which is {key}; move admin.port out of the way"
            )


# prctl(2): the signal the kernel sends this process when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def stop_with_parent(parent: int) -> None:
    """In a worker: have the kernel send SIGTERM when the parent process ``parent`` dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``, prctl(2)), so that a parent killed with SIGKILL (or by the OOM killer) leaves
    no worker serving on behind it; a parent that died before this call is seen through ``getppid()`` and the
    worker stops at once. The SIGTERM drains the worker like any other (it waits, blocked, until
    ``proxy.app.serve()`` handles it). Elsewhere, or when libc has no ``prctl``, it does nothing: in a
    container the parent is PID 1 and its death ends the others anyway."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def run_workers(
    cfg: Config,
    count: int,
    build: Callable[[Config], web.Application],
    run_one: Callable[[Config, web.Application, Worker], int],
) -> int:
    """Reserve the ports, ``build(cfg)`` the application once, then fork ``count`` workers running
    ``run_one(cfg, app, worker)`` (its return value is the worker's exit code) and supervise them.

    The application is built before the fork so that what it holds (botocore's model, the translator's
    prepared renderers, the compiled policy) is shared by the workers' memory pages rather than loaded N
    times; everything bound to an event loop (upstream connections, the credential refresher) is opened by
    each worker in its own loop. Returns the exit code: 0 after a clean shutdown, else the first failed
    worker's. Raises ConfigError (before any fork) and ListenError (a port that cannot be bound, or that another
    process already listens on: :func:`reserve_port`)."""
    check(cfg, count)
    held: list[socket.socket] = []
    try:
        port, sockets = reserve_port(cfg.listen.host, cfg.listen.port)
        held += sockets
        routes = []
        for route in cfg.routes:
            route_port, sockets = reserve_port(cfg.listen.host, route.port)
            held += sockets
            routes.append(replace(route, port=route_port))
        cfg = replace(cfg, listen=replace(cfg.listen, port=port), routes=tuple(routes))
        if cfg.agent_api.port is not None:
            agent_port, sockets = reserve_port(cfg.agent_api.host, cfg.agent_api.port)
            held += sockets
            cfg = replace(cfg, agent_api=replace(cfg.agent_api, port=agent_port))
        app = build(cfg)
    except BaseException:
        for sock in held:
            sock.close()
        raise
    gc.collect()  # start-up's garbage first, so that none of it is frozen for ever
    gc.freeze()  # objects built so far are never scanned again: the collector leaves the shared pages alone

    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    sys.stdout.flush()
    sys.stderr.flush()
    # Held back while the workers are forked: a signal that came between two forks would reach only the
    # workers forked so far (the later ones would serve on and the parent wait for ever), and one that reached
    # a worker before its event loop's handler was in place would kill it (exit -15, not a drain). The parent
    # takes it once every worker is recorded; a worker takes it once serve() has installed its handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for index in range(count):
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:  # the worker: stop signals stay blocked until proxy.app.serve() handles them
                stop_with_parent(parent)
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                for sock in held:
                    sock.close()
                code = 1
                try:
                    code = run_one(cfg, app, Worker(index, count))
                except BaseException as exc:  # os._exit below would lose the traceback: say why the worker ended
                    log.error("worker failed", extra={"worker": index, "error": type(exc).__name__, "reason": str(exc)})
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children[pid] = index
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one that came meanwhile is forwarded now
        result = 0
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            children.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if code != 0 and result == 0:
                result = code if code > 0 else 1
            if not stopping:  # a worker ended on its own: stop the others, exit with its code
                result = result or 1
                forward(signal.SIGTERM, None)
        return result
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in held:
            sock.close()
