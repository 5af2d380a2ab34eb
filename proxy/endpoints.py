"""The upstream endpoint, from configuration and botocore's endpoint resolution only.

The request never chooses it: not its Host header, not an absolute-form target, not a parameter
(docs/interface.md, "The upstream request"). botocore resolves the regional endpoint (partitions, FIPS, dual-stack,
``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_SECRETS_MANAGER``) exactly as an SDK client would.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import botocore.session
from botocore.exceptions import BotoCoreError

from .config import ConfigError, UpstreamConfig
from .models import Endpoint

DEFAULT_PORTS = {"https": 443, "http": 80}


def host_header(url: str) -> str:
    """The Host header for ``url``: the host, bracketed when IPv6, with the port only when not the default.

    This is what botocore's SigV4 canonical request uses (``botocore.auth._host_from_url``) and what goes on
    the wire, so the signed host always equals the sent one.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{port}"
    return host


def resolve_endpoint(session: botocore.session.Session, upstream: UpstreamConfig, key: str = "upstream") -> Endpoint:
    """Resolve ``upstream`` to an :class:`Endpoint` (URL, Host header value, signing name and region).

    Uses a botocore client built once for this purpose (no network I/O, no credentials needed).
    Raises ConfigError naming ``upstream.*`` for an unknown service or region, and for an ``http://`` URL from
    the environment when ``allow_insecure_http`` is not set.
    """
    try:
        client = session.create_client(
            upstream.service,
            region_name=upstream.region,
            endpoint_url=upstream.endpoint_url,
            aws_access_key_id="resolve-only",
            aws_secret_access_key="resolve-only",
        )
    except BotoCoreError as exc:
        raise ConfigError(f"{key}.service: cannot resolve an endpoint for {upstream.service!r}: {exc}") from exc
    url = client.meta.endpoint_url.rstrip("/")
    scheme = urlsplit(url).scheme
    if scheme != "https" and not (scheme == "http" and upstream.allow_insecure_http):
        raise ConfigError(
            f"{key}.endpoint_url: {url} (from the environment) is not HTTPS; "
            f"set {key}.allow_insecure_http: true only for testing"
        )
    model = client.meta.service_model
    return Endpoint(
        url=url,
        host=host_header(url),
        signing_name=model.signing_name or model.endpoint_prefix,
        region=client.meta.region_name or "",
    )
