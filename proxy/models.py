"""The proxy's own request model: frozen values that flow between pipeline stages.

Only :mod:`proxy.parse`, :mod:`proxy.upstream`, :mod:`proxy.middleware` and :mod:`proxy.app` know aiohttp;
every other stage takes and returns these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """A decoded Query API request.

    ``params`` are the decoded ``name -> value`` pairs in arrival order, without ``Action``, ``Version`` and
    the app's own signing parameters (docs/interface.md, "Query requests"). ``action`` is the operation name as sent
    (may be empty), ``version`` the API version or None when absent.
    """

    method: str
    action: str
    version: str | None
    params: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Operation:
    """A validated, typed operation input: the operation name and its input as botocore-shaped data.

    ``retryable`` is the retry rule of docs/interface.md, "The upstream request": a read, or a write that carries an
    idempotency token. ``checked_on_answer``: a read whose answer names the secret it is about (``ARN``,
    ``Name``), so that the policy can check which secret AWS chose before anything is answered. ``region`` is the
    region an SDK call was signed for when it is one of ``upstream.regions``; None means ``upstream.region``
    (every Query request)."""

    name: str
    input: dict[str, Any]
    secret_ids: tuple[str, ...]
    is_read: bool
    retryable: bool
    checked_on_answer: bool = False
    region: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to sign: ``url`` (``https://host[:port]``), ``host`` (the Host header value, no default
    port), ``signing_name`` and ``region`` (the SigV4 credential scope)."""

    url: str
    host: str
    signing_name: str
    region: str


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """An upstream request ready to send: every header on it was built and signed by the proxy."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """An upstream answer read whole (bounded by ``limits.max_response_bytes``)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What the rules see of an inbound request before its body is read.

    ``target`` is the raw request target as received (path and query, before decoding); ``host`` the Host
    header (None when absent); ``content_type`` without parameters; ``headers`` the request's headers
    (case-insensitive in the listener: aiohttp's ``CIMultiDictProxy``).
    """

    method: str
    path: str
    target: str
    host: str | None
    content_type: str
    has_amz_target: bool
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
