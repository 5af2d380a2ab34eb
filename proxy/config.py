"""Configuration: YAML to frozen dataclasses, strictly (docs/interface.md, "Configuration"; every key in
docs/configuration.md).

Two phases, as the Secrets Manager Agent's ``config.rs`` does it: ``yaml.safe_load`` gives plain data,
then :func:`build` walks the dataclass fields, rejecting unknown keys and wrong types, and checking the
ranges declared in each field's metadata. Every failure is one :class:`ConfigError` whose message starts
with the dotted key (``limits.max_body_bytes: must be at least 1024``). The standard ``AWS_*`` environment
fills what the file leaves out through botocore's own config chain (see :func:`load_config`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml
from botocore.exceptions import InvalidRegionError
from botocore.utils import validate_region_name

DEFAULT_PORT = 8977
DEFAULT_ADMIN_PORT = 8978


class ConfigError(Exception):
    """A bad configuration value; ``str()`` is one line naming the key. The CLI exits 2 on it."""


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = field(default=DEFAULT_PORT, metadata=_range(0, 65535))
    tls: TLSConfig = TLSConfig()
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str | None = None
    port: int = field(default=DEFAULT_ADMIN_PORT, metadata=_range(0, 65535))


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    service: str = "secretsmanager"
    region: str | None = None
    # further regions an SDK call may be signed for, each served at its own regional endpoint (issue 15)
    regions: tuple[str, ...] = ()
    endpoint_url: str | None = None
    ca_bundle: str | None = None
    allow_insecure_http: bool = False
    connect_timeout_seconds: float = field(default=3.0, metadata=_range(0.1, 300))
    read_timeout_seconds: float = field(default=10.0, metadata=_range(0.1, 3600))
    total_timeout_seconds: float = field(default=30.0, metadata=_range(0.1, 3600))
    max_attempts: int = field(default=3, metadata=_range(1, 10))


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    role_arn: str | None = None
    role_session_name: str | None = None
    external_id: str | None = None
    duration_seconds: int = field(default=3600, metadata=_range(900, 43200))
    session_tags: Mapping[str, str] = field(default_factory=dict)
    source_identity: str | None = None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_get_url_bytes: int = field(default=2048, metadata=_range(256, 65536))
    max_body_bytes: int = field(default=262144, metadata=_range(1024, 64 * 1024 * 1024))
    max_parameters: int = field(default=1000, metadata=_range(1, 100000))
    max_list_members: int = field(default=1000, metadata=_range(1, 100000))
    max_concurrent_requests: int = field(default=256, metadata=_range(1, 100000))
    max_response_bytes: int = field(default=16777216, metadata=_range(1024, 1024**3))
    max_upstream_pages: int = field(default=10, metadata=_range(1, 1000))


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    allow_actions: tuple[str, ...] | None = None
    allow_secrets: tuple[str, ...] | None = None
    token_header: str | None = None
    token_file: str | None = None


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = False
    ttl_seconds: float = field(default=300, metadata=_range(1, 3600))
    max_entries: int = field(default=1000, metadata=_range(1, 1000000))
    max_bytes: int = field(default=16 * 1024 * 1024, metadata=_range(1024, 1024**3))
    serve_stale_seconds: float = field(default=0, metadata=_range(0, 86400))
    refresh_ahead: bool = True
    version_check: bool = False


@dataclass(frozen=True, slots=True)
class AgentApiConfig:
    """The Secrets Manager Agent's API on a listener of its own (docs/agent-api.md); ``port`` null: off."""

    host: str = "127.0.0.1"
    port: int | None = field(default=None, metadata=_range(0, 65535))


@dataclass(frozen=True, slots=True)
class RouteConfig:
    port: int = field(default=0, metadata=_range(0, 65535))
    upstream: UpstreamConfig = UpstreamConfig()
    policy: PolicyConfig = PolicyConfig()


@dataclass(frozen=True, slots=True)
class Config:
    listen: ListenConfig = ListenConfig()
    admin: AdminConfig = AdminConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    credentials: CredentialsConfig = CredentialsConfig()
    limits: LimitsConfig = LimitsConfig()
    policy: PolicyConfig = PolicyConfig()
    cache: CacheConfig = CacheConfig()
    agent_api: AgentApiConfig = AgentApiConfig()
    shutdown_delay_seconds: float = field(default=0, metadata=_range(0, 3600))
    shutdown_grace_seconds: float = field(default=20, metadata=_range(0, 3600))
    routes: tuple[RouteConfig, ...] = ()


# ---------------------------------------------------------------------------------------------------------
# phase two: plain data -> dataclasses


def build(cls: type[Any], data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from plain data (a dict from YAML), strictly.

    Raises ConfigError naming the dotted key for: unknown keys, values of the wrong type, values outside
    the range in the field's metadata.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '(top level)'}: must be a mapping, got {_kind(data)}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key (known keys here: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in data:
            continue
        where = f"{path}.{name}" if path else name
        value = _convert(hints[name], data[name], where)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if value is not None and lo is not None and value < lo:
            raise ConfigError(f"{where}: must be at least {lo}, got {value}")
        if value is not None and hi is not None and value > hi:
            raise ConfigError(f"{where}: must be at most {hi}, got {value}")
        values[name] = value
    return cls(**values)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        (item,) = get_args(tp)[:1]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list, got {_kind(value)}")
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is Mapping or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping, got {_kind(value)}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise ConfigError(f"{where}.{k}: must be a string")
            out[k] = str(v)
        return types.MappingProxyType(out)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: must be a non-empty string, got {_kind(value)}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover - a bug in this module


# ---------------------------------------------------------------------------------------------------------
# loading, environment and cross-field rules

_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})$")


def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``--listen``: ``127.0.0.1:8977``, ``localhost:8977`` or ``[::1]:8977`` -> (host, port).

    Raises ConfigError (key ``--listen``) for anything else.
    """
    m = _HOST_PORT.match(value)
    if not m or int(m["port"]) > 65535:
        raise ConfigError(f"--listen: expected HOST:PORT such as 127.0.0.1:8977 or [::1]:8977, got {value!r}")
    return (m["v6"] or m["host"]), int(m["port"])


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_session_name(hostname: str | None = None) -> str:
    """``query-signing-proxy-<hostname>``, cut to AssumeRole's 64 characters and its ``[\\w+=,.@-]`` set.

    In a pod the hostname is the pod name, so CloudTrail shows which pod acted.
    """
    host = hostname if hostname is not None else socket.gethostname()
    name = re.sub(r"[^\w+=,.@-]", "-", f"query-signing-proxy-{host}")
    return name[:64]


def load_config(
    path: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    listen: str | None = None,
    region_from_env: str | None = None,
) -> Config:
    """Read and validate the YAML file at ``path`` (None: all defaults) into a :class:`Config`.

    ``listen`` overrides ``listen.host``/``listen.port`` (``--listen``). ``region_from_env`` is the region
    botocore found in the environment or profile (``AWS_REGION``, ``AWS_DEFAULT_REGION``, ``region =``); the
    caller asks botocore for it so that the file wins and the environment fills the gap.

    Raises ConfigError naming the key for unreadable files, bad YAML, unknown keys, wrong types, out of range
    values and the cross-field rules of docs/interface.md, "Configuration" (a region must exist; TLS needs both files).
    """
    data: Any = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"--config: {path} is not valid YAML{where}") from exc
    cfg: Config = build(Config, data)
    if listen is not None:
        host, port = parse_listen(listen)
        cfg = dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, host=host, port=port))
    region = cfg.upstream.region or region_from_env
    if region is None:
        raise ConfigError(
            "upstream.region: no region in the file or the environment (set upstream.region or AWS_REGION)"
        )
    cfg = dataclasses.replace(cfg, upstream=dataclasses.replace(cfg.upstream, region=region))
    routes = tuple(
        dataclasses.replace(r, upstream=dataclasses.replace(r.upstream, region=r.upstream.region or region))
        for r in cfg.routes
    )
    cfg = dataclasses.replace(cfg, routes=routes)
    check(cfg)
    return cfg


def check(cfg: Config) -> None:
    """Cross-field rules; raises ConfigError naming the key."""
    tls = cfg.listen.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError("listen.tls: cert_file and key_file must be given together")
    for key in ("cert_file", "key_file"):
        value = getattr(tls, key)
        if value is not None and not os.path.isfile(value):
            raise ConfigError(f"listen.tls.{key}: no such file {value}")
    if not is_loopback(cfg.listen.host) and not tls.enabled:
        raise ConfigError(
            f"listen.host: {cfg.listen.host} is not a loopback address; "
            "the Query API leaves the host only over HTTPS (set listen.tls.cert_file and key_file)"
        )
    ports = {cfg.listen.port: "listen.port"} if cfg.listen.port else {}
    if cfg.admin.host is not None and cfg.admin.port:
        ports.setdefault(cfg.admin.port, "admin.port")
    for i, route in enumerate(cfg.routes):
        _check_upstream(route.upstream, f"routes[{i}].upstream")
        if route.port and route.port in ports:
            raise ConfigError(f"routes[{i}].port: {route.port} is already taken by {ports[route.port]}")
        if route.port:
            ports[route.port] = f"routes[{i}].port"
    _check_upstream(cfg.upstream, "upstream")
    _check_agent_api(cfg, ports)
    _check_policy(cfg.policy, "policy")
    for i, route in enumerate(cfg.routes):
        _check_policy(route.policy, f"routes[{i}].policy")


def _check_agent_api(cfg: Config, ports: dict[int, str]) -> None:
    """``agent_api`` (docs/agent-api.md): loopback only, Secrets Manager only, a port of its own, and a caller
    token, since the Agent too refuses to run without one."""
    agent = cfg.agent_api
    if agent.port is None:
        return
    if not is_loopback(agent.host):
        raise ConfigError(
            f"agent_api.host: {agent.host} is not a loopback address; the Agent API is served on loopback only, "
            "as the Agent serves it"
        )
    if cfg.upstream.service != "secretsmanager":
        raise ConfigError(
            f"agent_api.port: the Agent API serves Secrets Manager's GetSecretValue; upstream.service is "
            f"{cfg.upstream.service}"
        )
    if agent.port and agent.port in ports:
        raise ConfigError(f"agent_api.port: {agent.port} is already taken by {ports[agent.port]}")
    if cfg.policy.token_file is None:
        raise ConfigError(
            "policy.token_file: required when agent_api.port is set (every Agent API request must carry "
            "X-Aws-Parameters-Secrets-Token with this token, as the Agent requires)"
        )


# RFC 9110 section 5.1: a field name is a token.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _check_policy(policy: PolicyConfig, key: str) -> None:
    if policy.token_header is not None:
        if not _HEADER_NAME.match(policy.token_header):
            raise ConfigError(f"{key}.token_header: {policy.token_header!r} is not an HTTP header name")
        if policy.token_file is None:
            raise ConfigError(f"{key}.token_file: required when {key}.token_header is set")
    if policy.token_file is not None:
        if policy.token_header is None:
            raise ConfigError(f"{key}.token_header: required when {key}.token_file is set (which header carries it)")
        if not os.path.isfile(policy.token_file):
            raise ConfigError(f"{key}.token_file: no such file {policy.token_file}")


def _check_upstream(up: UpstreamConfig, key: str) -> None:
    for i, region in enumerate(up.regions):
        try:
            validate_region_name(region)
        except InvalidRegionError:
            raise ConfigError(f"{key}.regions[{i}]: {region!r} is not a region name (such as eu-west-1)") from None
        if region in up.regions[:i]:
            raise ConfigError(f"{key}.regions[{i}]: {region} is listed twice")
    if up.endpoint_url is not None:
        if up.endpoint_url.startswith("http://"):
            if not up.allow_insecure_http:
                raise ConfigError(
                    f"{key}.endpoint_url: {up.endpoint_url} is not HTTPS "
                    f"(the API must travel over HTTPS; {key}.allow_insecure_http: true overrides for testing)"
                )
        elif not up.endpoint_url.startswith("https://"):
            raise ConfigError(f"{key}.endpoint_url: must start with https://, got {up.endpoint_url!r}")
    if up.ca_bundle is not None and not os.path.isfile(up.ca_bundle):
        raise ConfigError(f"{key}.ca_bundle: no such file {up.ca_bundle}")
    if up.read_timeout_seconds > up.total_timeout_seconds:
        raise ConfigError(f"{key}.read_timeout_seconds: must not exceed total_timeout_seconds")


def to_plain(cfg: Any) -> Any:
    """A config dataclass as plain YAML-able data (tuples as lists, mappings as dicts)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_plain(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_plain(v) for k, v in cfg.items()}
    return cfg


REDACTED_KEYS = frozenset({"external_id"})


def redacted(cfg: Config) -> Any:
    """The effective config as plain data, with values that are secrets redacted (``check-config``, logs)."""

    def redact(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("<redacted>" if k in REDACTED_KEYS and v is not None else redact(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [redact(v) for v in node]
        return node

    return redact(to_plain(cfg))


def dump_effective(cfg: Config) -> str:
    """The effective config as YAML, with values that are secrets redacted (``check-config``)."""
    return yaml.safe_dump(redacted(cfg), sort_keys=False, default_flow_style=False)
