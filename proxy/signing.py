"""SigV4 signing, a pure function over fresh botocore objects, and the clock-skew correction it may apply.

Every call builds a new ``AWSRequest`` and a new ``SigV4Auth`` from an immutable credential snapshot: no
signer is shared or mutated between requests (the aws-sigv4-proxy mistake). The request holds only headers
the proxy built; the Host header is set explicitly to the value sent on the wire, so the canonical
request's host and the wire's agree. Source: botocore ``auth.py`` (``SigV4Auth``), AWS "Create a signed AWS
API request" (docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html).

Clock skew: AWS refuses a signature whose ``X-Amz-Date`` is more than 5 minutes from its own clock. When the
upstream says so (:func:`proxy.attempts.classify` names the error) and its ``Date`` header is more than 4 minutes
from the request's ``X-Amz-Date``, :class:`ClockSkew` learns the offset and later requests are signed at
local time plus that offset, as the AWS SDKs do (the SDK for Java's ``ClockSkewAdjuster``: 4 minutes).
"""

from __future__ import annotations

import datetime
import email.utils
import logging
from collections.abc import Mapping

import botocore.auth
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from .credentials import Snapshot
from .models import Endpoint, SignedRequest

log = logging.getLogger("proxy.signing")

SKEW_THRESHOLD_SECONDS = 240.0


class _OffsetSigV4Auth(SigV4Auth):
    """botocore's SigV4 with the signing time moved by ``offset_seconds``.

    With no offset this is botocore's ``add_auth`` unchanged. With one, it sets the timestamp botocore would
    have read from ``get_current_datetime()`` and runs botocore's own steps: canonical request, string to sign,
    signature, Authorization header.
    """

    def __init__(self, credentials: ReadOnlyCredentials, service_name: str, region_name: str, offset: float) -> None:
        super().__init__(credentials, service_name, region_name)
        self._offset = offset

    def add_auth(self, request: AWSRequest) -> None:
        if not self._offset:
            super().add_auth(request)
            return
        moment = _botocore_now() + datetime.timedelta(seconds=self._offset)
        request.context["timestamp"] = moment.strftime(SIGV4_TIMESTAMP)
        self._modify_request_before_signing(request)  # type: ignore[attr-defined]
        canonical_request = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical_request)
        self._inject_signature_to_request(request, self.signature(string_to_sign, request))  # type: ignore[attr-defined]


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
    seconds), ``X-Amz-Security-Token`` (temporary credentials) and ``Authorization``. Every header is in
    SignedHeaders except those botocore never signs (``User-Agent``, ``Expect``, ``X-Amzn-Trace-Id``).
    """
    request = AWSRequest(
        method=method,
        url=endpoint.url + path,
        headers={"Host": endpoint.host, **headers},
        data=body,
    )
    creds = ReadOnlyCredentials(credentials.access_key, credentials.secret_key, credentials.token)
    _OffsetSigV4Auth(creds, endpoint.signing_name, endpoint.region, clock_offset).add_auth(request)
    return SignedRequest(
        method=method,
        url=endpoint.url + path,
        headers=tuple((str(k), str(v)) for k, v in request.headers.items()),
        body=body,
    )


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
