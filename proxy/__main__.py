"""Command line (docs/interface.md, "Command line"); no logic beyond argument handling.

    query-signing-proxy [--config PATH] [--listen HOST:PORT] [--log-level LEVEL] [--workers N]
    query-signing-proxy check-config PATH
    query-signing-proxy local [--listen HOST:PORT] [--log-level LEVEL]
    query-signing-proxy injector --listen HOST:PORT --tls-cert-file F --tls-key-file F --image IMAGE [...]
    query-signing-proxy iam-policy [--config PATH] [--account-id ID] [--source-role | --trust KIND ...]
    query-signing-proxy --version

Exit codes: 0 clean shutdown, 2 bad config or arguments (one line naming the key), 1 other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .config import Config, ConfigError, check, dump_effective, load_config, parse_listen

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
        epilog="Subcommands: 'check-config PATH' validates a config; 'local' runs against an embedded AWS emulator; "
        "'injector' is the Kubernetes sidecar injector (a mutating admission webhook); 'iam-policy' prints the IAM "
        "policies a config needs.",
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
    parser.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        help="overrides admin.host and admin.port (the sidecar injector sets both), e.g. 0.0.0.0:8978",
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


def load(path: str | None, listen: str | None = None, admin_listen: str | None = None) -> Config:
    """Load the config with the region botocore finds in the environment filling a missing one;
    ``admin_listen`` (``--admin-listen HOST:PORT``) overrides ``admin.host`` and ``admin.port``."""
    from .app import botocore_session, region_from_env

    cfg = load_config(path, listen=listen, region_from_env=region_from_env(botocore_session()))
    if admin_listen is not None:
        try:
            host, port = parse_listen(admin_listen)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("--listen", "--admin-listen", 1)) from None
        cfg = dataclasses.replace(cfg, admin=dataclasses.replace(cfg.admin, host=host, port=port))
        check(cfg)
    return cfg


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


def no_core_dumps() -> None:
    """Set this process's core file size limit to 0, soft and hard (``RLIMIT_CORE``; the workers it forks
    inherit it): a crash or a SIGQUIT then writes no core file, which would hold the cached secret values,
    the role's credentials and the answers in memory (docs/security.md). systemd-coredump and apport honour
    the limit too when the kernel pipes cores to them. Where the platform has no ``resource`` module, nothing."""
    try:
        import resource
    except ImportError:
        return
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def event_loop_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop when it is installed (the ``fast`` extra), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    no_core_dumps()
    from . import logs

    logs.setup(args.log_level)
    try:
        cfg = load(args.config, args.listen, args.admin_listen)
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


def freeze_startup_objects() -> None:
    """Collect the garbage of start-up, then move every object left (the modules, botocore's models and
    endpoint data, the built application: ~90,000 objects) to the collector's permanent generation, so that
    no full collection walks them again (``gc.freeze``). Measured under load: full collections went from
    ~14 µs of CPU per request to under 1."""
    gc.collect()
    gc.freeze()


def serve_one(cfg: Config, app: web.Application | None, worker: Worker | None = None) -> int:
    """Serve ``cfg`` in this process until SIGTERM (``app``: built already, or None to build it here)."""
    from .app import ListenError, create_app, serve

    try:
        app = app if app is not None else create_app(cfg)
        freeze_startup_objects()
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
    no_core_dumps()
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


def run_injector(argv: Sequence[str]) -> int:
    """``query-signing-proxy injector``: the mutating admission webhook (docs/add-to-your-app.md)."""
    from .injector import Defaults, InjectionRefused, check_config_map, check_image, check_region
    from .injector import check_port as _check_port

    parser = argparse.ArgumentParser(
        prog="query-signing-proxy injector",
        description="Serve the Kubernetes mutating admission webhook that adds query-signing-proxy to pods "
        'annotated query-signing-proxy.io/inject: "true" (POST /mutate over TLS).',
    )
    parser.add_argument(
        "--listen", metavar="HOST:PORT", required=True, help="address of the webhook, e.g. 0.0.0.0:8443"
    )
    parser.add_argument(
        "--tls-cert-file", metavar="FILE", required=True, help="PEM certificate (chain); re-read when it changes"
    )
    parser.add_argument(
        "--tls-key-file", metavar="FILE", required=True, help="PEM private key; re-read when it changes"
    )
    parser.add_argument("--image", metavar="IMAGE", required=True, help="the sidecar's image, with its registry")
    parser.add_argument("--config-map", metavar="NAME", default="query-signing-proxy", help="ConfigMap with proxy.yaml")
    parser.add_argument("--region", metavar="REGION", help="AWS region for the sidecar and SDK apps")
    parser.add_argument("--proxy-port", metavar="PORT", default="8977", help="the Query API port (default: 8977)")
    parser.add_argument("--admin-port", metavar="PORT", default="8978", help="the admin port (default: 8978)")
    parser.add_argument("--log-level", type=str.lower, choices=LEVELS, default="info", help="log level (default: info)")
    args = parser.parse_args(argv)
    from . import logs

    logs.setup(args.log_level)
    try:
        host, port = parse_listen(args.listen)
        defaults = Defaults(
            image=check_image(args.image, "--image"),
            config_map=check_config_map(args.config_map, "--config-map"),
            region=None if args.region is None else check_region(args.region, "--region"),
            proxy_port=_check_port(args.proxy_port, "--proxy-port"),
            admin_port=_check_port(args.admin_port, "--admin-port"),
        )
        if defaults.proxy_port == defaults.admin_port:
            raise InjectionRefused(f"--admin-port: the Query port and the admin port are both {defaults.admin_port}")
        from .webhook import ReloadingCertificate, serve_injector

        tls = ReloadingCertificate(args.tls_cert_file, args.tls_key_file)
    except (ConfigError, InjectionRefused) as exc:
        return _fail(f"config error: {exc}")
    from .app import ListenError

    try:
        with event_loop_runner() as runner:
            runner.run(serve_injector(host, port, defaults, tls))
    except ListenError as exc:
        return _fail(str(exc), 1)
    return 0


def run_iam_policy(argv: Sequence[str]) -> int:
    """``query-signing-proxy iam-policy``: print the IAM policy JSON a config needs (docs/add-to-your-app.md)."""
    parser = argparse.ArgumentParser(
        prog="query-signing-proxy iam-policy",
        description="Print the least-privilege IAM permission policy of the role that signs for this config "
        "(or, with --source-role, of the pod's own role; with --trust, the pod role's trust policy).",
    )
    parser.add_argument("--config", metavar="PATH", help="the proxy's YAML configuration")
    parser.add_argument(
        "--account-id", metavar="ID", help="the signing role's account when credentials.role_arn is not set"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--source-role", action="store_true", help="the pod's own role's policy when a role is chained")
    which.add_argument("--trust", choices=("irsa", "pod-identity"), help="the trust policy of the pod's role")
    parser.add_argument("--oidc-provider", metavar="ARN", help="the cluster's IAM OIDC provider ARN (--trust irsa)")
    parser.add_argument("--namespace", metavar="NS", help="the pod's namespace (--trust irsa)")
    parser.add_argument("--service-account", metavar="SA", help="the pod's service account (--trust irsa)")
    args = parser.parse_args(argv)
    from .iam_policy import PolicyInputError, dumps, not_covered, permission_policy, source_role_policy, trust_policy

    try:
        if args.trust is not None:
            policy = trust_policy(args.trust, args.oidc_provider, args.namespace, args.service_account)
        else:
            cfg = load(args.config)
            if args.source_role:
                policy = source_role_policy(cfg)
            else:
                from .app import botocore_session

                model = botocore_session().get_service_model("secretsmanager")
                policy = permission_policy(cfg, model, args.account_id)
                for line in not_covered(cfg):
                    print(f"query-signing-proxy: note: {line}", file=sys.stderr)
    except (ConfigError, PolicyInputError) as exc:
        return _fail(f"config error: {exc}")
    sys.stdout.write(dumps(policy))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check-config":
        return check_config(argv[1:])
    if argv and argv[0] == "local":
        return run_local(argv[1:])
    if argv and argv[0] == "injector":
        return run_injector(argv[1:])
    if argv and argv[0] == "iam-policy":
        return run_iam_policy(argv[1:])
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
