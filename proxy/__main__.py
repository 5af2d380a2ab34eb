"""Command line (docs/interface.md, "Command line"); no logic beyond argument handling.

    query-signing-proxy [--config PATH] [--listen HOST:PORT] [--log-level LEVEL] [--workers N]
    query-signing-proxy check-config PATH
    query-signing-proxy local [--listen HOST:PORT] [--log-level LEVEL]
    query-signing-proxy --version

Exit codes: 0 clean shutdown, 2 bad config or arguments (one line naming the key), 1 other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .config import Config, ConfigError, dump_effective, load_config

if TYPE_CHECKING:
    from aiohttp import web

    from .app import Worker

LEVELS = ("debug", "info", "warning", "error")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT", help="listen address, e.g. 127.0.0.1:8977 or [::1]:8977")
    parser.add_argument("--log-level", type=str.lower, choices=LEVELS, default="info", help="log level (default: info)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="query-signing-proxy",
        description="Sign AWS Query API requests with a role's credentials and translate them for Secrets Manager.",
        epilog="Subcommands: 'check-config PATH' validates a config; 'local' runs against an embedded AWS emulator.",
    )
    parser.add_argument("--version", action="version", version=f"query-signing-proxy {__version__}")
    parser.add_argument("--config", metavar="PATH", help="YAML configuration file (docs/configuration.md)")
    parser.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="processes sharing the listening ports (SO_REUSEPORT), one per core to use; needs admin.host "
        "(worker i serves the admin endpoints on admin.port + i). Default: 1",
    )
    _common(parser)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return value


def load(path: str | None, listen: str | None = None) -> Config:
    """Load the config with the region botocore finds in the environment filling a missing one."""
    from .app import botocore_session, region_from_env

    return load_config(path, listen=listen, region_from_env=region_from_env(botocore_session()))


def _fail(message: str, code: int = 2) -> int:
    print(f"query-signing-proxy: {message}", file=sys.stderr)
    return code


def check_config(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="query-signing-proxy check-config")
    parser.add_argument("path", metavar="PATH")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.path)
        from .app import Lifecycle, Shared, botocore_session, build_service, route_config
        from .credentials import CredentialManager, static_fetch
        from .metrics import Metrics

        shared = Shared(cfg, CredentialManager(static_fetch("check", "check")), Metrics.create(), Lifecycle())
        session = botocore_session()
        build_service(cfg, session, shared)
        for i, route in enumerate(cfg.routes):
            build_service(route_config(cfg, route), session, shared, key=f"routes[{i}]")
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    sys.stdout.write(dump_effective(cfg))
    return 0


def event_loop_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop when it is installed (the ``fast`` extra), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    from . import logs

    logs.setup(args.log_level)
    try:
        cfg = load(args.config, args.listen)
        from .app import create_app

        if args.workers == 1:
            app = create_app(cfg)
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    if args.workers == 1:
        return serve_one(cfg, app)
    from .app import ListenError
    from .workers import run_workers

    try:
        return run_workers(cfg, args.workers, functools.partial(create_app, workers=args.workers), serve_one)
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    except ListenError as exc:
        return _fail(str(exc), 1)


def serve_one(cfg: Config, app: web.Application | None, worker: Worker | None = None) -> int:
    """Serve ``cfg`` in this process until SIGTERM (``app``: built already, or None to build it here)."""
    from .app import ListenError, create_app, serve

    try:
        app = app if app is not None else create_app(cfg)
        with event_loop_runner() as runner:
            runner.run(serve(cfg, app=app, worker=worker))
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    except ListenError as exc:
        return _fail(str(exc), 1)
    return 0


def run_local(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="query-signing-proxy local",
        description="Run the proxy against an embedded AWS emulator (moto) on loopback; no AWS account needed.",
    )
    parser.add_argument("--config", metavar="PATH", help="proxy config (default: the built-in config/local.yaml)")
    _common(parser)
    args = parser.parse_args(argv)
    from . import logs

    logs.setup(args.log_level)
    try:
        from .local import run_local as _run_local
    except ImportError as exc:
        return _fail(f"'local' needs the [local] extra (pip install 'query-signing-proxy[local]'): {exc.name}", 1)
    from .app import ListenError

    try:
        return _run_local(args.config, args.listen)
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    except ListenError as exc:
        return _fail(str(exc), 1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check-config":
        return check_config(argv[1:])
    if argv and argv[0] == "local":
        return run_local(argv[1:])
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
