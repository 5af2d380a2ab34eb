"""The aiohttp applications and their lifecycle: build once, start, serve, drain on SIGTERM.

:func:`create_app` builds the Query listener's ``web.Application`` from a :class:`~proxy.config.Config`:
endpoint resolution, the translator and policy are prepared here (synchronously, once); the upstream
ClientSession and the credential refresher live in one ``cleanup_ctx`` generator that opens and closes
both. Each entry of ``routes:`` gets one more application (:data:`ROUTES`) with its own upstream and policy,
sharing the credentials, metrics and limits. With ``agent_api.port`` set, the Secrets Manager Agent's API gets a
listener of its own on the Query listener's service (:mod:`proxy.agent`). :func:`serve` runs them (and the admin
listener) until SIGTERM/SIGINT, then drains per docs/interface.md, "Signals and shutdown".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import aiohttp
import botocore.exceptions
import botocore.session
from aiohttp import web

from . import __version__, sharedstore
from .agent import AGENT_LISTENER, AgentListener, agent_listener
from .attempts import AttemptPolicy, RetryQuota
from .cache import SecretCache
from .config import Config, ConfigError, RouteConfig, is_loopback, redacted
from .credentials import CredentialManager, Fetch, build_fetch
from .dispatch import PROTOCOLS, handle
from .endpoints import resolve_endpoint
from .guard import CredentialGuard
from .h1client import H1Upstream
from .handler import SERVICE, call_upstream
from .listing import Listings, PageTokens
from .metrics import CONTENT_TYPE, Metrics
from .middleware import ADMIN_ROUTE, Handler, query_middleware
from .models import Endpoint, Operation, UpstreamResponse
from .policy import Policy
from .service import Regional, Service
from .sharedstore import SharedStore
from .signing import ClockSkew
from .stamps import StampTable
from .translate import InputLimits, Translator
from .upstream import Upstream
from .validate import RuleSettings, admin_host_allowed

log = logging.getLogger("proxy")

LATE_CONNECTION_POLL_SECONDS = 0.05


class ListenError(Exception):
    """A listener could not be bound; the message names the address and why (``Address already in use``)."""


class Lifecycle:
    """Process-wide state the admin endpoints report: draining after SIGTERM."""

    def __init__(self) -> None:
        self.draining = False


@dataclass(frozen=True, slots=True)
class Shared:
    """What every listener of the process shares."""

    config: Config
    credentials: CredentialManager
    metrics: Metrics
    lifecycle: Lifecycle
    clock_skew: ClockSkew = field(default_factory=ClockSkew)  # the local clock is one per process
    # the key of the listings' NextToken (proxy/listing.py): made here, in the parent before --workers forks,
    # so that every worker opens the tokens every other hands out; never logged, gone at exit
    page_token_key: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    # the secret cache's stamp table (proxy/stamps.py), one for every listener's cache: a write through a
    # route is seen by the main listener's cache too; made here too, before the fork
    stamps: StampTable = field(default_factory=StampTable)
    # what the workers of --workers share of the cache's refresh-ahead (proxy/sharedstore.py), one for every
    # listener's cache too; None with one process
    cache_store: SharedStore | None = None
    retry_quota: RetryQuota = field(default_factory=RetryQuota)  # the retry budget, one per process


def cache_store(cfg: Config, workers: int) -> SharedStore | None:
    """The :class:`~proxy.sharedstore.SharedStore` for ``workers`` processes forked from this one: None for one
    process, with the cache or its refresh-ahead off, or where the platform has no ``memfd_create``."""
    cache = cfg.cache
    if workers <= 1 or not cache.enabled or not cache.refresh_ahead or not sharedstore.available():
        return None
    return SharedStore(cache.max_entries, cache.max_bytes, cache.ttl_seconds)


SHARED = web.AppKey("shared", Shared)


@dataclass
class RouteApp:
    """One ``routes:`` entry's listener: its application, and its port once :func:`serve` has bound it."""

    index: int
    route: RouteConfig
    app: web.Application
    port: int = 0


ROUTES = web.AppKey("routes", tuple[RouteApp, ...])


def botocore_session() -> botocore.session.Session:
    """A fresh botocore session reading the standard AWS environment and shared config.

    The profile is checked here, once, so that a bad one is a config error naming its variable (exit 2)
    rather than botocore's traceback from wherever the session is first read. Raises ConfigError naming
    ``AWS_PROFILE`` (or ``AWS_DEFAULT_PROFILE``, which botocore reads first) for a profile that neither the
    shared config file nor the credentials file has, and ``AWS_CONFIG_FILE`` / ``AWS_SHARED_CREDENTIALS_FILE``
    for a file botocore cannot parse."""
    session = botocore.session.get_session()
    try:
        session.get_scoped_config()
    except botocore.exceptions.ProfileNotFound as exc:
        variable = "AWS_DEFAULT_PROFILE" if os.environ.get("AWS_DEFAULT_PROFILE") else "AWS_PROFILE"
        files = f"{session.get_config_variable('config_file')} or {session.get_config_variable('credentials_file')}"
        raise ConfigError(
            f"{variable}: no profile named {exc.kwargs.get('profile')!r} in {files} "
            f"(unset {variable}, or create the profile)"
        ) from None
    except botocore.exceptions.ConfigParseError as exc:
        path = str(exc.kwargs.get("path"))
        credentials_file = os.path.expanduser(str(session.get_config_variable("credentials_file")))
        variable = "AWS_SHARED_CREDENTIALS_FILE" if path == credentials_file else "AWS_CONFIG_FILE"
        raise ConfigError(f"{variable}: {path} is not a valid AWS config file (INI sections and key = value)") from None
    return session


def region_from_env(session: botocore.session.Session) -> str | None:
    """The region the environment gives: ``AWS_REGION``, else botocore's (``AWS_DEFAULT_REGION``, profile)."""
    region: str | None = os.environ.get("AWS_REGION") or session.get_config_variable("region")
    return region


def create_app(
    cfg: Config,
    *,
    session: botocore.session.Session | None = None,
    fetch: Fetch | None = None,
    upstream: Upstream | None = None,
    resolver: aiohttp.abc.AbstractResolver | None = None,
    clock: Callable[[], float] = time.time,
    shared: Shared | None = None,
    workers: int = 1,
) -> web.Application:
    """Build the Query listener's application.

    ``session`` is the botocore session (default: a fresh one from the environment); ``fetch`` replaces the
    credential fetch (default: :func:`~proxy.credentials.build_fetch` on the config); ``upstream`` replaces
    the aiohttp transport (tests of pure pipeline logic); ``resolver`` is the DNS resolver of the aiohttp
    transport; ``clock`` is epoch seconds for credential expiry and secret cache ages; ``workers`` is the number
    of processes that will be forked from this one to serve it (``--workers``: above 1, the secret cache
    gets the memory they share for refresh-ahead). Raises ConfigError for what can only be checked against
    botocore (service, endpoint, operation names in the policy).
    """
    session = session or botocore_session()
    if shared is None:
        credentials = CredentialManager(
            fetch or build_fetch(session, cfg.credentials, cfg.upstream, clock), clock=clock
        )
        shared = Shared(
            config=cfg,
            credentials=credentials,
            metrics=Metrics.create(),
            lifecycle=Lifecycle(),
            cache_store=cache_store(cfg, workers),
        )
    service = build_service(cfg, session, shared, upstream=upstream, resolver=resolver, clock=clock)
    app = _listener_app(cfg, shared, service)
    if cfg.admin.host is None:
        add_admin_routes(app)
    app.cleanup_ctx.append(_lifecycle)
    if cfg.agent_api.port is not None:
        app[AGENT_LISTENER] = agent_listener(cfg, shared.metrics, service)
        app.cleanup_ctx.append(_agent_listener_drained)  # cleaned up before _lifecycle closes the transport
    routes = []
    for i, route in enumerate(cfg.routes):
        route_cfg = route_config(cfg, route)
        route_service = build_service(route_cfg, session, shared, resolver=resolver, key=f"routes[{i}]", clock=clock)
        route_app = _listener_app(route_cfg, shared, route_service)
        route_app.cleanup_ctx.append(_route_lifecycle)
        routes.append(RouteApp(i, route, route_app))
    app[ROUTES] = tuple(routes)
    return app


def route_config(cfg: Config, route: RouteConfig) -> Config:
    """The config one route's listener sees: the route's upstream and policy, everything else shared."""
    return replace(cfg, upstream=route.upstream, policy=route.policy, routes=())


def _listener_app(cfg: Config, shared: Shared, service: Service) -> web.Application:
    app = web.Application(
        middlewares=[query_middleware(shared.metrics, cfg.limits.max_concurrent_requests, service.rules)],
        client_max_size=cfg.limits.max_body_bytes,
        handler_args={
            "max_field_size": 16384,
            "max_line_size": max(8190, cfg.limits.max_get_url_bytes + 64),
            # a client that goes away cancels its handler, which closes the upstream connection it holds
            "handler_cancellation": True,
        },
    )
    app[SHARED] = shared
    app[SERVICE] = service
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def build_service(
    cfg: Config,
    session: botocore.session.Session,
    shared: Shared,
    *,
    upstream: Upstream | None = None,
    resolver: aiohttp.abc.AbstractResolver | None = None,
    key: str = "",
    clock: Callable[[], float] = time.time,
) -> Service:
    """Prepare one upstream service (docs/interface.md, "The upstream request"): endpoint, translator, policy, rules,
    transport, cache.

    ``key`` prefixes the config keys named in errors (``routes[0]`` for a route's ``upstream``/``policy``).
    Raises ConfigError for a service whose model protocol no pipeline serves (:data:`~proxy.dispatch.PROTOCOLS`).
    """
    up = cfg.upstream
    prefix = f"{key}." if key else ""
    endpoint = resolve_endpoint(session, up, key=f"{prefix}upstream")
    model = session.get_service_model(up.service)
    if model.protocol not in PROTOCOLS:
        raise ConfigError(
            f"{prefix}upstream.service: {up.service} speaks {model.protocol}; the proxy serves services whose "
            f"botocore model protocol is {' or '.join(sorted(PROTOCOLS))}"
        )
    translator = Translator(model, InputLimits(cfg.limits.max_parameters, cfg.limits.max_list_members))
    policy = Policy.compile(cfg.policy, translator.operation_names, key=f"{prefix}policy", service=up.service)

    def transport() -> Upstream:
        return upstream or H1Upstream(
            ca_bundle=up.ca_bundle or session.get_config_variable("ca_bundle"),
            connect_timeout=up.connect_timeout_seconds,
            read_timeout=up.read_timeout_seconds,
            max_response_bytes=cfg.limits.max_response_bytes,
            pool_size=min(cfg.limits.max_concurrent_requests, 100),
            resolver=resolver,
            user_agent=f"query-signing-proxy/{__version__}",
        )

    def secret_cache() -> SecretCache:
        # a refresh may take a DescribeSecret and a GetSecretValue, each within the upstream's total timeout
        return SecretCache(
            cfg.cache,
            shared.metrics,
            clock=clock,
            stamps=shared.stamps,
            shared=shared.cache_store,
            lease_seconds=2 * up.total_timeout_seconds,
        )

    # upstream.regions: each region its own endpoint resolution, connection pool, cache entries and listings
    regions: dict[str, Regional] = {}
    for i, region in enumerate(up.regions):
        if region == endpoint.region:
            continue
        regional = resolve_endpoint(session, replace(up, region=region), key=f"{prefix}upstream.regions[{i}]")
        regions[region] = Regional(
            regional, transport(), secret_cache(), listings(cfg, translator, policy, regional, shared.page_token_key)
        )
    cache = secret_cache()
    service = Service(
        upstream_cfg=up,
        limits=cfg.limits,
        endpoint=endpoint,
        translator=translator,
        policy=policy,
        rules=RuleSettings.from_config(cfg),
        upstream=transport(),
        credentials=shared.credentials,
        attempts=AttemptPolicy(up.max_attempts, up.total_timeout_seconds),
        metrics=shared.metrics,
        clock_skew=shared.clock_skew,
        retry_quota=shared.retry_quota,
        cache=cache,
        guard=CredentialGuard.compile(model, cfg.policy.allow_actions),
        listings=listings(cfg, translator, policy, endpoint, shared.page_token_key),
        regions=regions,
    )
    cache.call = functools.partial(call_upstream, service)
    for region, regional_service in regions.items():
        regional_service.cache.call = region_call(service, region)  # its refreshes go to its own region
    return service


def region_call(service: Service, region: str) -> Callable[[Operation], Awaitable[UpstreamResponse]]:
    """A region's secret cache's upstream call (refresh-ahead, version checks): the cache builds its
    operations without a region; they are sent to ``region``'s endpoint."""

    async def call(operation: Operation) -> UpstreamResponse:
        return await call_upstream(service, replace(operation, region=region))

    return call


def listings(cfg: Config, translator: Translator, policy: Policy, endpoint: Endpoint, key: bytes) -> Listings | None:
    """The listings a service pages itself (:mod:`proxy.listing`), when ``policy.allow_secrets`` is set. Their
    tokens are bound to this listener: its upstream endpoint and its ``allow_secrets``."""
    if policy.secrets is None:
        return None
    operations = {name: translator.operation_model(name, None) for name in translator.operation_names}
    scope = "\n".join([endpoint.url, endpoint.region, translator.service_model.service_name, policy.secrets.pattern])
    return Listings.of_model(
        operations, PageTokens(key), policy.name_prefixes, scope.encode(), cfg.limits.max_upstream_pages
    )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    shared = app[SHARED]
    service = app[SERVICE]
    await start_service(service)
    shared.credentials.on_refresh = lambda result, snap: shared.metrics.credential_refreshes.labels(result=result).inc()
    shared.metrics.credential_expiry.set_function(shared.credentials.seconds_until_expiry)
    shared.metrics.retry_quota_tokens.set_function(lambda: shared.retry_quota.available)
    await shared.credentials.start()
    try:
        yield
    finally:
        for cache in service.caches():
            await cache.close()
        await shared.credentials.close()
        for transport in service.transports():
            await transport.aclose()


async def start_service(service: Service) -> None:
    """Start every transport of the service (one per region) and every secret cache's refresher."""
    for transport in service.transports():
        await transport.start()
    for cache in service.caches():
        cache.start()


async def close_service(service: Service) -> None:
    """Stop the secret caches' refreshers, then close the transports."""
    for cache in service.caches():
        await cache.close()
    for transport in service.transports():
        await transport.aclose()


async def _agent_listener_drained(app: web.Application) -> AsyncIterator[None]:
    """The Agent API's listener shares this listener's service: the transport stays open until it has drained."""
    yield
    listener = app[AGENT_LISTENER]
    if listener.serving:
        await listener.stopped.wait()


async def _route_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """A route's listener opens and closes only its own transport; the main listener owns the credentials."""
    service = app[SERVICE]
    await start_service(service)
    try:
        yield
    finally:
        await close_service(service)


# ---------------------------------------------------------------------------------------------------------
# admin endpoints (docs/interface.md, "HTTP endpoints"): never the Query API, never the caller token


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    shared = request.app[SHARED]
    if shared.lifecycle.draining:
        return web.Response(status=503, text="shutting down\n")
    if not shared.credentials.ready():
        return web.Response(status=503, text=f"no usable credentials: {shared.credentials.unready_reason()}\n")
    return web.Response(text="ready\n")


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SHARED].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, allow_head=True, name=f"{ADMIN_ROUTE}healthz")
    app.router.add_get("/readyz", readyz, allow_head=True, name=f"{ADMIN_ROUTE}readyz")
    app.router.add_get("/metrics", metrics, name=f"{ADMIN_ROUTE}metrics")


def create_admin_app(shared: Shared) -> web.Application:
    """The admin listener's application (``admin.host`` set): /healthz, /readyz, /metrics only, for a Host that is
    an IP address, ``localhost`` or in ``listen.allowed_hosts`` (:func:`~proxy.validate.admin_host_allowed`)."""
    allowed = frozenset(h.lower().rstrip(".") for h in shared.config.listen.allowed_hosts)

    @web.middleware
    async def host_rule(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not admin_host_allowed(request.headers.get("Host"), allowed):
            return web.Response(
                status=403, text="the Host header is not an IP address, localhost or in listen.allowed_hosts\n"
            )
        return await handler(request)

    app = web.Application(middlewares=[host_rule])
    app[SHARED] = shared
    add_admin_routes(app)
    return app


# ---------------------------------------------------------------------------------------------------------
# serving


def _listen_hosts(host: str) -> list[str]:
    """``localhost`` means both loopback addresses (docs/interface.md, "Configuration")."""
    return ["127.0.0.1", "::1"] if host.lower() == "localhost" else [host]


def _server_ssl(cfg: Config) -> ssl.SSLContext | None:
    tls = cfg.listen.tls
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(tls.cert_file or "", tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"listen.tls: cannot load the certificate and key: {exc}") from exc
    return ctx


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet); ``reuse_port`` sets SO_REUSEPORT, so that the
    workers of ``--workers`` share the port and the kernel spreads connections over them.

    Raises ListenError naming ``host:port`` when the address cannot be bound (in use, not on this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        raise ListenError(f"cannot listen on {shown}:{port}: {exc.strerror or exc}") from None
    return sock


async def start_sites(
    runner: web.AppRunner,
    hosts: list[str],
    port: int,
    ssl_context: ssl.SSLContext | None,
    reuse_port: bool = False,
) -> int:
    """Start a TCPSite per host; returns the bound port (the first site's when ``port`` is 0).

    Raises ListenError naming ``host:port`` when an address cannot be bound (in use, not on this machine)."""
    bound = port
    for host in hosts:
        sock = bind_socket(host, bound, reuse_port)
        bound = sock.getsockname()[1]
        site = web.SockSite(runner, sock, ssl_context=ssl_context)
        await site.start()
    return bound


@dataclass(frozen=True, slots=True)
class Worker:
    """One process of ``--workers N`` (:mod:`proxy.workers`): ``index`` 0 .. ``count - 1``."""

    index: int
    count: int


async def serve(
    cfg: Config,
    *,
    ready: Callable[[int, int | None], None] | None = None,
    stop: asyncio.Event | None = None,
    app: web.Application | None = None,
    worker: Worker | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain (docs/interface.md, "Signals and shutdown").

    ``ready(port, admin_port)`` is called once the listeners are bound. On the signal ``/readyz`` turns 503 at
    once, requests are still accepted for ``shutdown_delay_seconds``, then the listeners close and in-flight
    requests finish within ``shutdown_grace_seconds``. As one of ``--workers`` (``worker``), the Query
    listeners (and the Agent API's) share their ports with the other workers (SO_REUSEPORT) and the admin
    listener is this worker's own, on ``admin.port + worker.index`` (any free port when ``admin.port`` is 0).
    """
    log.debug("effective configuration", extra={"config": redacted(cfg)})
    if cfg.upstream.allow_insecure_http:
        log.warning("upstream.allow_insecure_http is set: the upstream may be reached without TLS")
    app = app or create_app(cfg)
    shared = app[SHARED]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # a worker of --workers is forked with them blocked (proxy.workers): one sent meanwhile is handled now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=cfg.shutdown_grace_seconds, handle_signals=False)
    await runner.setup()
    admin_runner: web.AppRunner | None = None
    other_runners: list[web.AppRunner] = []
    try:
        server_ssl = _server_ssl(cfg)
        shared_port = worker is not None
        port = await start_sites(runner, _listen_hosts(cfg.listen.host), cfg.listen.port, server_ssl, shared_port)
        for route in app[ROUTES]:
            route_runner = web.AppRunner(
                route.app, access_log=None, shutdown_timeout=cfg.shutdown_grace_seconds, handle_signals=False
            )
            await route_runner.setup()
            other_runners.append(route_runner)
            route.port = await start_sites(
                route_runner, _listen_hosts(cfg.listen.host), route.route.port, server_ssl, shared_port
            )
            log.info(
                "listening",
                extra={"route": route.index, "service": route.route.upstream.service, "port": route.port}
                | ({"worker": worker.index} if worker is not None else {}),
            )
        agent: AgentListener | None = app.get(AGENT_LISTENER)
        if agent is not None:
            agent_runner = web.AppRunner(
                agent.app, access_log=None, shutdown_timeout=cfg.shutdown_grace_seconds, handle_signals=False
            )
            await agent_runner.setup()
            other_runners.append(agent_runner)  # drained with the others
            agent.port = await start_sites(
                agent_runner, _listen_hosts(cfg.agent_api.host), cfg.agent_api.port or 0, None, shared_port
            )
        admin_port = None
        if cfg.admin.host is not None:
            admin_runner = web.AppRunner(create_admin_app(shared), access_log=None, handle_signals=False)
            await admin_runner.setup()
            own_port = cfg.admin.port + worker.index if worker is not None and cfg.admin.port else cfg.admin.port
            admin_port = await start_sites(admin_runner, _listen_hosts(cfg.admin.host), own_port, None)
        log.info(
            "listening",
            extra={
                "host": cfg.listen.host,
                "port": port,
                "tls": cfg.listen.tls.enabled,
                "admin_port": admin_port,
                **({"agent_api_port": agent.port} if agent is not None else {}),
                "loopback_only": is_loopback(cfg.listen.host),
                "version": __version__,
                "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            }
            | ({"worker": worker.index, "workers": worker.count, "pid": os.getpid()} if worker is not None else {}),
        )
        if ready is not None:
            ready(port, admin_port)
        await stop.wait()
        shared.lifecycle.draining = True
        log.info("shutting down", extra={"delay_seconds": cfg.shutdown_delay_seconds})
        if cfg.shutdown_delay_seconds:
            await asyncio.sleep(cfg.shutdown_delay_seconds)
    finally:
        # every listener closes at once and drains in parallel: one grace period in all, not one per route
        await asyncio.gather(*(drain(r) for r in [*other_runners, runner]))
        if admin_runner is not None:
            await admin_runner.cleanup()
        log.info("stopped")


async def drain(runner: web.AppRunner) -> None:
    """``runner.cleanup()``: close the listeners, let requests in flight finish (``shutdown_timeout``), close.

    aiohttp closes idle connections once, as the drain begins; a connection accepted just before the
    listener closed registers after that, and would sit unanswered (its request is ignored once the drain
    has begun) until the whole grace period is over. While the drain runs, such connections are closed as
    they appear; ``RequestHandler.close()`` lets a request already in progress finish first.
    """
    server = runner.server

    async def close_late_connections() -> None:
        while server is not None:
            for conn in server.connections:
                conn.close()
            await asyncio.sleep(LATE_CONNECTION_POLL_SECONDS)

    closer = asyncio.get_running_loop().create_task(close_late_connections())
    try:
        await runner.cleanup()
    finally:
        closer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closer
