"""The proxy served exactly as the CLI serves it: :func:`proxy.app.serve` (its TLS listener from ``listen.tls``,
``localhost`` bound on both loopback addresses, the admin listener when ``admin`` is set) in a background
thread, stopped through serve's ``stop`` event as SIGTERM would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from proxy.agent import AGENT_LISTENER
from proxy.app import ROUTES, create_app, serve
from proxy.config import Config
from tests.support import LoopThread


class Served(LoopThread):
    """``with Served(cfg, factory) as s:`` serves ``factory()`` (built inside the serving thread's loop; by
    default ``create_app(cfg)``) under ``cfg``; ``s.port`` is the bound Query port, ``s.admin_port`` the admin
    listener's (None without one), ``s.route_ports`` those of the ``routes:`` listeners in their order,
    ``s.agent_port`` the Agent API's (None without ``agent_api.port``)."""

    def __init__(self, cfg: Config, factory: Callable[[], web.Application] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.factory = factory or (lambda: create_app(cfg))
        self.admin_port: int | None = None
        self.route_ports: list[int] = []
        self.agent_port: int | None = None
        self.app: web.Application | None = None

    async def _serve(self, stop: asyncio.Event) -> None:
        app = self.app = self.factory()

        def ready(port: int, admin_port: int | None) -> None:
            self.port, self.admin_port = port, admin_port
            self.route_ports = [route.port for route in app[ROUTES]]
            agent = app.get(AGENT_LISTENER)
            self.agent_port = agent.port if agent is not None else None
            self._ready.set()

        await serve(self.cfg, app=app, ready=ready, stop=stop)
