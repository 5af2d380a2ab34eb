"""The proxy served exactly as the CLI serves it: :func:`proxy.app.serve` (its TLS listener from ``listen.tls``,
``localhost`` bound on both loopback addresses) in a background thread, stopped through serve's ``stop``
event as SIGTERM would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from aiohttp import web

from proxy.app import serve
from proxy.config import Config


class Served:
    """``with Served(cfg, factory) as s:`` serves ``factory()`` (built inside the serving thread's loop) under
    ``cfg``; ``s.port`` is the bound port."""

    def __init__(self, cfg: Config, factory: Callable[[], web.Application]) -> None:
        self.cfg = cfg
        self.factory = factory
        self.port = 0
        self.app: web.Application | None = None
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced to the test by __enter__
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.app = self.factory()

        def ready(port: int, admin_port: int | None) -> None:
            self.port = port
            self._ready.set()

        await serve(self.cfg, app=self.app, ready=ready, stop=self._stop)

    def __enter__(self) -> Served:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.loop.close()
