"""The HTTP rules every Query request passes before its body is read: small ordered rules, each raising one
error (the Secrets Manager Agent's ``validate_*`` pattern). Sources: docs/interface.md, "HTTP endpoints" and "Errors".

Order matters and is fixed by :data:`RULES`: the Host header first (DNS rebinding), then the caller token
(``policy.token_header``), the path, the method, the request-target length, the content type and the content
encoding. None of them reads the body; the body's size rule is :func:`proxy.parse.read_body`'s.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from . import errors
from .caller_token import CallerToken
from .config import Config, PolicyConfig
from .models import RequestHead

QUERY_PATH = "/"
FORM_TYPE = "application/x-www-form-urlencoded"
JSON_TYPE = "application/x-amz-json-1.1"
SDK_TYPES = frozenset({"application/x-amz-json-1.0", JSON_TYPE})  # an SDK's AWS JSON call, with X-Amz-Target


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """What the rules need from the config, prepared once."""

    allowed_hosts: frozenset[str]
    max_get_url_bytes: int
    token: CallerToken | None = None

    @classmethod
    def from_config(cls, cfg: Config, policy: PolicyConfig | None = None) -> RuleSettings:
        """Settings from ``cfg``; ``policy`` is the listener's policy (default ``cfg.policy``). Raises
        ConfigError when ``policy.token_file`` holds no token."""
        policy = policy or cfg.policy
        token = None
        if policy.token_header is not None and policy.token_file is not None:
            token = CallerToken(policy.token_header, policy.token_file)
        return cls(
            allowed_hosts=frozenset(h.lower() for h in cfg.listen.allowed_hosts),
            max_get_url_bytes=cfg.limits.max_get_url_bytes,
            token=token,
        )


Rule = Callable[[RequestHead, RuleSettings], None]


_PORT = re.compile(r"[0-9]{0,5}")


def host_name(host: str) -> str:
    """The Host header without its port: ``127.0.0.1:8977`` -> ``127.0.0.1``, ``[::1]:8977`` -> ``::1``.

    Only a port of digits is stripped (RFC 9110 section 7.2: ``uri-host [ ":" port ]``); anything else is
    returned whole, so ``localhost:8977@rebind.example`` or ``[::1]x`` match no allowed name."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name if rest == "" or (rest[:1] == ":" and _PORT.fullmatch(rest[1:])) else host
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name if _PORT.fullmatch(port) else host
    return host


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """Loopback addresses, ``localhost`` and ``listen.allowed_hosts`` entries, with any port (docs/interface.md, "HTTP
    endpoints")."""
    if not host:
        return False
    name = host_name(host.strip()).lower().rstrip(".")
    if name == "localhost" or name in allowed:
        return True
    return _is_loopback_address(name)


def admin_host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """The separate admin listener's Host rule: any IP address (kubelet's probes and Prometheus name the pod by its
    IP), ``localhost`` and ``listen.allowed_hosts`` entries, with any port. A DNS name a web page could rebind to
    the pod's address is refused (docs/interface.md, "HTTP endpoints")."""
    if not host:
        return False
    name = host_name(host.strip()).lower().rstrip(".")
    return name == "localhost" or name in allowed or _is_ip_address(name)


@functools.lru_cache(maxsize=64)
def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=64)
def _is_loopback_address(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def target_authority(target: str) -> str | None:
    """The host (and port) of an absolute-form request target (``GET http://host:port/?...``), which RFC 9112
    section 3.2.2 makes the request's host instead of the Host header; None for an origin-form target."""
    if target.startswith("/"):
        return None
    return url_authority(target)


def url_authority(url: str) -> str:
    """The host (and port) of a URL, without userinfo; empty for ``null`` and anything that is not a URL
    (``http://[::1`` and other bad IPv6 literals), which no Host rule allows."""
    try:
        return urlsplit(url.strip()).netloc.rpartition("@")[2]
    except ValueError:
        return ""


def check_host(head: RequestHead, settings: RuleSettings) -> None:
    """The Host header, and the authority of an absolute-form target, must be allowed (:func:`host_allowed`)."""
    if not host_allowed(head.host, settings.allowed_hosts):
        raise errors.AccessDenied("the Host header is not a loopback address, localhost or in listen.allowed_hosts")
    authority = target_authority(head.target)
    if authority is not None and not host_allowed(authority, settings.allowed_hosts):
        raise errors.AccessDenied(
            "the request target's host is not a loopback address, localhost or in listen.allowed_hosts "
            "(send an origin-form target: GET /?Action=...)"
        )
    check_browser_site(head, settings)


def check_browser_site(head: RequestHead, settings: RuleSettings) -> None:
    """A browser's request made by a page of another site (CSRF: a form POST, an ``<img>`` GET to
    ``http://127.0.0.1:8977/``) is refused, though its Host is loopback: an ``Origin`` header whose host fails
    :func:`host_allowed` (``null`` included), or ``Sec-Fetch-Site: cross-site``. SDKs and curl send neither."""
    origin = head.headers.get("Origin")
    if origin is not None and not host_allowed(url_authority(origin), settings.allowed_hosts):
        raise errors.AccessDenied(
            "the request comes from a web page of another origin (Origin is not a loopback address, localhost or "
            "in listen.allowed_hosts)"
        )
    if head.headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
        raise errors.AccessDenied("the request comes from a web page of another site (Sec-Fetch-Site: cross-site)")


def check_token(head: RequestHead, settings: RuleSettings) -> None:
    """The caller token, when ``policy.token_header`` is set (:mod:`proxy.caller_token`)."""
    if settings.token is not None:
        settings.token.check(head.headers.get(settings.token.header))


def check_path(head: RequestHead, settings: RuleSettings) -> None:
    if head.path != QUERY_PATH:
        raise errors.NotFound("the Query API is served at / only")


def check_method(head: RequestHead, settings: RuleSettings) -> None:
    if head.method not in ("GET", "POST"):
        raise errors.MethodNotAllowed(f"{head.method} is not allowed: use GET or POST")


def check_target_length(head: RequestHead, settings: RuleSettings) -> None:
    size = len(head.target.encode("utf-8", "surrogateescape"))
    if size > settings.max_get_url_bytes:
        raise errors.RequestURITooLong(
            f"the request target is {size} bytes, over limits.max_get_url_bytes ({settings.max_get_url_bytes}); "
            "send the parameters as a form POST body instead"
        )


def check_content_type(head: RequestHead, settings: RuleSettings) -> None:
    if head.method != "POST" or head.content_type == FORM_TYPE:
        return
    if head.content_type in SDK_TYPES and head.has_amz_target:
        return  # an SDK's call: the service's protocol decides whether it is served (proxy.dispatch)
    raise errors.UnsupportedMediaType(f"POST bodies must be {FORM_TYPE}, got {head.content_type or 'no Content-Type'}")


def check_content_encoding(head: RequestHead, settings: RuleSettings) -> None:
    """A POST body is read as sent: a compressed one (``Content-Encoding: gzip`` ...) is refused before it is
    read, so no decompression runs on the app's bytes."""
    if head.method != "POST":
        return
    encoding = head.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise errors.UnsupportedMediaType(
            f"request bodies must not be compressed (Content-Encoding: {encoding[:40]}); send the form as it is"
        )


RULES: tuple[Rule, ...] = (
    check_host,
    check_token,
    check_path,
    check_method,
    check_target_length,
    check_content_type,
    check_content_encoding,
)


def check_head(head: RequestHead, settings: RuleSettings) -> None:
    """Apply :data:`RULES` in order; the first failing rule's error is raised."""
    for rule in RULES:
        rule(head, settings)
