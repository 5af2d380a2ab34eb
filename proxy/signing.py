"""SigV4 signing, a pure function over an immutable credential snapshot, and the clock-skew correction it may
apply.

The algorithm is AWS Signature Version 4 as botocore's ``SigV4Auth`` implements it (``botocore/auth.py``;
AWS "Create a signed AWS API request", docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html):
canonical request -> string to sign -> HMAC-SHA256 with the signing key -> ``Authorization``. It is written
out here instead of calling ``SigV4Auth`` per request because botocore's path costs ~160 µs a request on the
development machine (an ``AWSRequest``, an ``HTTPHeaders`` email message built twice, four HMACs to derive
the signing key every time); this one takes ~20 µs. The signing key (``kSigning``) depends only on the secret
key, the date, the region and the service, so it is derived once per day per credential set
(:func:`signing_key`, a small LRU). botocore stays the oracle: ``tests/unit/test_sigv4.py`` compares both on
the same inputs, and the signer passes the AWS SigV4 test-suite vectors (``/work/shared/sigv4-testsuite``).

Nothing is shared or mutated between requests except that key cache (the aws-sigv4-proxy mistake was a
shared, mutated signer). The request holds only headers the proxy built; the Host header is the value sent
on the wire, so the canonical request's host and the wire's agree. Headers botocore never signs
(``SIGNED_HEADERS_BLACKLIST``: User-Agent, Expect, X-Amzn-Trace-Id, hop-by-hop) are sent unsigned.

Clock skew: AWS refuses a signature whose ``X-Amz-Date`` is more than 5 minutes from its own clock. When the
upstream says so (:func:`proxy.attempts.classify` names the error) and its ``Date`` header is more than 4 minutes
from the request's ``X-Amz-Date``, :class:`ClockSkew` learns the offset and later requests are signed at
local time plus that offset, as the AWS SDKs do (the SDK for Java's ``ClockSkewAdjuster``: 4 minutes).
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import botocore.auth
from botocore.auth import EMPTY_SHA256_HASH, SIGNED_HEADERS_BLACKLIST, SIGV4_TIMESTAMP
from botocore.utils import normalize_url_path

from .credentials import Snapshot
from .models import Endpoint, SignedRequest

log = logging.getLogger("proxy.signing")

SKEW_THRESHOLD_SECONDS = 240.0
ALGORITHM = "AWS4-HMAC-SHA256"
_UNSIGNED = frozenset(SIGNED_HEADERS_BLACKLIST)
# Set by the signer: a caller's value would be replaced (botocore's _modify_request_before_signing).
_SIGNER_HEADERS = frozenset({"host", "authorization", "x-amz-date", "x-amz-security-token"})


@functools.lru_cache(maxsize=16)
def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """``kSigning`` for ``date`` (``YYYYMMDD``): HMAC chain ``AWS4<secret>`` -> date -> region -> service ->
    ``aws4_request``. Cached: a credential set signs with one key a day (16 entries: routes x refreshes)."""
    key = hmac.digest(f"AWS4{secret_key}".encode(), date.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


@functools.lru_cache(maxsize=64)
def canonical_uri(path: str) -> str:
    """The canonical URI: dot segments and empty segments removed, then percent-encoded (``/`` and ``~`` kept),
    as botocore does for every service but S3."""
    return quote(normalize_url_path(path), safe="/~")


@functools.lru_cache(maxsize=64)
def canonical_target(url: str) -> tuple[str, str]:
    """``(canonical URI, canonical query string)`` of a URL; the query's pairs are sorted as given (botocore
    signs a URL's query without re-encoding it)."""
    parts = urlsplit(url)
    pairs = sorted(pair.partition("=")[::2] for pair in parts.query.split("&")) if parts.query else []
    return canonical_uri(parts.path), "&".join(f"{k}={v}" for k, v in pairs)


@dataclass(frozen=True, slots=True)
class Signature:
    """The steps of one signature, for tests and the test-suite vectors: ``canonical_request``,
    ``string_to_sign`` and the ``authorization`` header value."""

    canonical_request: str
    string_to_sign: str
    authorization: str


def sigv4(
    *,
    method: str,
    uri: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    payload_hash: str,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
    amz_date: str,
) -> Signature:
    """Sign one request. ``uri`` and ``query`` are canonical already (:func:`canonical_uri`); ``headers`` are
    ``(name, value)`` pairs, repeated names allowed (their values are joined with ``,`` in order), including
    ``Host``, ``X-Amz-Date`` and ``X-Amz-Security-Token``; names in botocore's ``SIGNED_HEADERS_BLACKLIST``
    are left out. ``payload_hash`` is the hex SHA-256 of the body; ``amz_date`` is ``YYYYMMDDTHHMMSSZ``."""
    signed: dict[str, list[str]] = {}
    for name, value in headers:
        lname = name.lower()
        if lname not in _UNSIGNED:
            signed.setdefault(lname, []).append(" ".join(value.split()))
    names = sorted(signed)
    signed_headers = ";".join(names)
    canonical_headers = "".join(f"{n}:{','.join(signed[n])}\n" for n in names)
    canonical_request = f"{method}\n{uri}\n{query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
    date = amz_date[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    signature = hmac.new(signing_key(secret_key, date, region, service), string_to_sign.encode(), "sha256")
    authorization = (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed_headers}, "
        f"Signature={signature.hexdigest()}"
    )
    return Signature(canonical_request, string_to_sign, authorization)


def sign(
    *,
    method: str,
    endpoint: Endpoint,
    headers: Mapping[str, str],
    body: bytes,
    credentials: Snapshot,
    path: str = "/",
    clock_offset: float = 0.0,
) -> SignedRequest:
    """Sign ``method endpoint.url+path`` with ``headers`` and ``body``; returns the :class:`SignedRequest`.

    The result carries ``Host``, the given headers, ``X-Amz-Date`` (local time plus ``clock_offset``
    seconds), ``X-Amz-Security-Token`` (temporary credentials) and ``Authorization``, in that order, as
    botocore's ``SigV4Auth.add_auth`` leaves them. Every header is in SignedHeaders except those botocore never
    signs (``User-Agent``, ``Expect``, ``X-Amzn-Trace-Id``). A ``Host``, ``Authorization``, ``X-Amz-Date`` or
    ``X-Amz-Security-Token`` among ``headers`` is replaced; ``X-Amz-Content-SHA256`` is signed as the payload
    hash, as botocore does. Raises ValueError for a ``Date`` header (botocore would sign that instead of
    ``X-Amz-Date``; the proxy never sends one).
    """
    moment = _botocore_now()
    if clock_offset:
        moment += datetime.timedelta(seconds=clock_offset)
    amz_date = moment.strftime(SIGV4_TIMESTAMP)
    url = endpoint.url + path
    wire = [("Host", endpoint.host)]
    payload_hash = ""
    for name, value in headers.items():
        lname = name.lower()
        if lname in _SIGNER_HEADERS:
            continue
        if lname == "date":
            raise ValueError("sign() sets X-Amz-Date; a Date header is not supported")
        if lname == "x-amz-content-sha256":
            payload_hash = value
        wire.append((name, value))
    wire.append(("X-Amz-Date", amz_date))
    if credentials.token:
        wire.append(("X-Amz-Security-Token", credentials.token))
    uri, query = canonical_target(url)
    signature = sigv4(
        method=method.upper(),
        uri=uri,
        query=query,
        headers=wire,
        payload_hash=payload_hash or (hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256_HASH),
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        region=endpoint.region,
        service=endpoint.signing_name,
        amz_date=amz_date,
    )
    wire.append(("Authorization", signature.authorization))
    return SignedRequest(method=method, url=url, headers=tuple(wire), body=body)


def _botocore_now() -> datetime.datetime:
    """The naive UTC time botocore's ``add_auth`` signs at (looked up at each call, so a patch applies)."""
    now: datetime.datetime = botocore.auth.get_current_datetime()  # type: ignore[attr-defined]
    return now


def _local_now() -> float:
    """Epoch seconds by the clock botocore signs with."""
    return _botocore_now().replace(tzinfo=datetime.UTC).timestamp()


def _amz_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.strptime(value, SIGV4_TIMESTAMP).replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        stamp = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


class ClockSkew:
    """The offset (seconds) added to the local clock when signing, learnt from the upstream's ``Date``.

    Process-wide: the local clock is one. ``offset`` is 0 until :meth:`correct` adopts one.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def correct(self, sent_amz_date: str | None, server_date: str | None) -> bool:
        """After the upstream refused a request for its time: adopt ``Date - local now`` as the offset.

        ``sent_amz_date`` is the refused request's ``X-Amz-Date`` (``20240102T030405Z``), ``server_date`` the
        answer's HTTP ``Date``. Returns True (retry the request, signed afresh) when they differ by more than
        4 minutes; False when either is missing or they agree (then the error is not the local clock's). The
        skew is logged once, when it is first learnt (or changes by more than 4 minutes again).
        """
        sent, server = _amz_date(sent_amz_date), _http_date(server_date)
        if sent is None or server is None or abs(server - sent) <= SKEW_THRESHOLD_SECONDS:
            return False
        offset = server - _local_now()
        if abs(offset - self.offset) > SKEW_THRESHOLD_SECONDS:
            log.warning(
                "the local clock is off from the upstream's; signing with the corrected time",
                extra={"skew_seconds": round(offset, 1)},
            )
        self.offset = offset
        return True
