"""SigV4 signing, a pure function over fresh botocore objects.

Every call builds a new ``AWSRequest`` and a new ``SigV4Auth`` from an immutable credential snapshot: no
signer is shared or mutated between requests (the aws-sigv4-proxy mistake). The request holds only headers
the proxy built; the Host header is set explicitly to the value sent on the wire, so the canonical
request's host and the wire's agree. Source: botocore ``auth.py`` (``SigV4Auth``), AWS "Create a signed AWS
API request" (docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html).
"""

from __future__ import annotations

from collections.abc import Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from .credentials import Snapshot
from .models import Endpoint, SignedRequest


def sign(
    *,
    method: str,
    endpoint: Endpoint,
    headers: Mapping[str, str],
    body: bytes,
    credentials: Snapshot,
    path: str = "/",
) -> SignedRequest:
    """Sign ``method endpoint.url+path`` with ``headers`` and ``body``; returns the :class:`SignedRequest`.

    The result carries ``Host``, the given headers, ``X-Amz-Date``, ``X-Amz-Security-Token`` (temporary
    credentials) and ``Authorization``. Every header is in SignedHeaders except those botocore never signs
    (``User-Agent``, ``Expect``, ``X-Amzn-Trace-Id``).
    """
    request = AWSRequest(
        method=method,
        url=endpoint.url + path,
        headers={"Host": endpoint.host, **headers},
        data=body,
    )
    creds = ReadOnlyCredentials(credentials.access_key, credentials.secret_key, credentials.token)
    SigV4Auth(creds, endpoint.signing_name, endpoint.region).add_auth(request)
    return SignedRequest(
        method=method,
        url=endpoint.url + path,
        headers=tuple((str(k), str(v)) for k, v in request.headers.items()),
        body=body,
    )
