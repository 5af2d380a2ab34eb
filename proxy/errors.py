"""The proxy's error tree; every failure a client can see is one of these classes.

Each class fixes the HTTP status, the Query error ``Code`` and the fault (``Sender`` for 4xx,
``Receiver`` for 5xx) from docs/interface.md, "Errors"; the instance carries only a one-line message that says what
was wrong and how to fix it. Messages never carry credentials, signatures or secret values. Where an SDK caller
gets another status or code than a Query caller ("SDK callers": AccessDeniedException 400, ThrottlingException,
RequestTimeoutException), the class says so in ``sdk_status`` / ``sdk_code`` (:meth:`ProxyError.sdk_answer`).
Rendering happens in one place (:mod:`proxy.middleware`)::

    ProxyError
    ├── ClientError (4xx, Sender)
    │   ├── MethodNotAllowed 405      ├── MalformedQueryString 400
    │   ├── NotFound 404              ├── MissingAction 400 / InvalidAction 400
    │   ├── UnsupportedMediaType 415  ├── NoSuchVersion 400
    │   ├── RequestURITooLong 414     ├── UnknownParameter 400
    │   ├── RequestEntityTooLarge 413 ├── MissingParameter 400 / InvalidParameterValue 400
    │   ├── RequestTimeout 408        ├── MalformedJSON 400 (SerializationException; SDK calls)
    │   ├── AccessDenied 403 (SDK: AccessDeniedException 400)
    │   ├── ValidationError 400 (the service's own code: InvalidParameterException)
    │   ├── RegionNotServed 400 (InvalidRequestException; SDK calls)
    │   └── InvalidNextToken 400 (InvalidNextTokenException)
    ├── ServerError (5xx, Receiver)
    │   ├── ServiceUnavailable 503 (SDK: ThrottlingException)
    │   │                             ├── BadGateway 502
    │   │                             │   ├── UpstreamUnresolvable 502 (final: not retried)
    │   │                             │   ├── UpstreamCertificateInvalid 502 (final: not retried)
    │   │                             │   └── UpstreamUnexpectedStatus 502 (final: 1xx, 3xx)
    │   ├── CredentialsUnavailable 503├── ResponseTooLarge 502
    │   ├── GatewayTimeout 504 (SDK: RequestTimeoutException)
    │   │                             └── UnrepresentableValue 502
    └── UpstreamError (status and code taken from the upstream's answer)
        └── SecretNotFound 400 (ResourceNotFoundException: an answer about a secret outside allow_secrets)

``map_exceptions`` translates a foreign library's exceptions where that library is imported
(httpx's ``map_exceptions`` pattern): the most specific matching class wins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping


class ProxyError(Exception):
    """Base of every error the proxy answers with; ``status``/``code``/``fault`` are class-level."""

    status: int = 500
    code: str = "InternalFailure"
    headers: Mapping[str, str] = {}
    # An SDK caller's status and code where they differ from the Query table (docs/interface.md, "SDK callers").
    sdk_status: int | None = None
    sdk_code: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def fault(self) -> str:
        """``Sender`` for 4xx, ``Receiver`` for 5xx (docs/interface.md, "Errors")."""
        return "Sender" if self.status < 500 else "Receiver"

    def sdk_answer(self) -> tuple[int, str]:
        """``(status, code)`` for an SDK caller (docs/interface.md, "SDK callers"): what the service itself
        would answer, a 5xx kept a 5xx (SDKs retry on it) with a code SDKs retry on where one exists."""
        return self.sdk_status or self.status, self.sdk_code or self.code


class ClientError(ProxyError):
    status = 400


class MethodNotAllowed(ClientError):
    status, code = 405, "MethodNotAllowed"


class NotFound(ClientError):
    status, code = 404, "NotFound"


class UnsupportedMediaType(ClientError):
    status, code = 415, "UnsupportedMediaType"


class RequestURITooLong(ClientError):
    status, code = 414, "RequestURITooLong"


class RequestEntityTooLarge(ClientError):
    status, code = 413, "RequestEntityTooLarge"


class RequestTimeout(ClientError):
    """The request body stopped arriving (a Content-Length above the bytes sent, a chunked body without its
    last chunk)."""

    status, code = 408, "RequestTimeout"


class MalformedQueryString(ClientError):
    code = "MalformedQueryString"


class MalformedJSON(ClientError):
    """An SDK call's body that is not JSON; the code AWS JSON services answer for it."""

    code = "SerializationException"


class MissingAction(ClientError):
    code = "MissingAction"
    sdk_code = "UnknownOperationException"  # an X-Amz-Target naming no operation, as AWS JSON services say


class InvalidAction(ClientError):
    code = "InvalidAction"
    sdk_code = "UnknownOperationException"


class NoSuchVersion(ClientError):
    code = "NoSuchVersion"


class UnknownParameter(ClientError):
    """A Query parameter name the operation's input shape does not have (the Query wire form)."""

    code = "UnknownParameter"


class MissingParameter(ClientError):
    """A part of the Query wire form missing: a map entry without its ``key`` or ``value``."""

    code = "MissingParameter"


class InvalidParameterValue(ClientError):
    """The Query wire form broken: an index gap in ``A.member.N``, a name given twice, a value on a list or a
    structure, more than ``limits.max_parameters`` / ``limits.max_list_members``."""

    code = "InvalidParameterValue"


class ValidationError(ClientError):
    """A value the model constrains is wrong: its type, its range or length (``min``/``max``), a required
    member missing. Answered with the service's own validation error, 400 (the model's error shapes carry no
    status): ``InvalidParameterException`` for Secrets Manager; :func:`proxy.translate.validation_code` gives
    it for any service, and the translator sets ``code`` to it."""

    code = "InvalidParameterException"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class AccessDenied(ClientError):
    """Denied by the policy, the credential guard, the caller token or the Host rule. An SDK caller gets
    what AWS answers an IAM denial with: ``AccessDeniedException``, 400."""

    status, code = 403, "AccessDenied"
    sdk_status, sdk_code = 400, "AccessDeniedException"


class RegionNotServed(ClientError):
    """An SDK call signed for a region that is neither ``upstream.region`` nor in ``upstream.regions``."""

    code = "InvalidRequestException"


class InvalidNextToken(ClientError):
    """A ``NextToken`` the proxy did not hand out for this listing (:mod:`proxy.listing`): the code Secrets
    Manager itself answers for a bad token, so that SDKs raise their ``InvalidNextTokenException``."""

    code = "InvalidNextTokenException"


class ServerError(ProxyError):
    status = 500


class ServiceUnavailable(ServerError):
    """More than ``limits.max_concurrent_requests`` in flight; SDKs back off and retry on ThrottlingException."""

    status, code = 503, "ServiceUnavailable"
    sdk_code = "ThrottlingException"
    headers = {"Retry-After": "1"}


class CredentialsUnavailable(ServerError):
    status, code = 503, "CredentialsUnavailable"


class BadGateway(ServerError):
    """The upstream could not be reached or broke off its answer. ``transient``: another attempt may succeed
    (refused, reset); the subclasses below are final, since another attempt meets the same failure."""

    status, code = 502, "BadGateway"
    transient = True


class UpstreamUnresolvable(BadGateway):
    """The upstream host name does not resolve (not a temporary resolver failure)."""

    transient = False


class UpstreamCertificateInvalid(BadGateway):
    """The upstream's TLS certificate does not verify (unknown CA, wrong host name, expired)."""

    transient = False


class UpstreamUnexpectedStatus(BadGateway):
    """The upstream answered with a status the proxy does not pass on: a redirect (3xx, never followed), an
    interim or upgrade answer (1xx), or a status outside 100-599."""

    transient = False


class ResponseTooLarge(ServerError):
    status, code = 502, "ResponseTooLarge"


class UnrepresentableValue(ServerError):
    status, code = 502, "UnrepresentableValue"


class GatewayTimeout(ServerError):
    status, code = 504, "GatewayTimeout"
    sdk_code = "RequestTimeoutException"  # a transient code in botocore's and the other SDKs' retry rules
    transient = True


class UpstreamError(ProxyError):
    """An error answered by the upstream; status and code are the upstream's (docs/interface.md, "Errors from the
    upstream")."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# Secrets Manager's answer for a secret it does not have (400 ResourceNotFoundException, with this message).
SECRET_NOT_FOUND_MESSAGE = "Secrets Manager can't find the specified secret."


class SecretNotFound(UpstreamError):
    """An answer about a secret outside ``policy.allow_secrets`` (an ARN that AWS resolved as a partial ARN of
    another secret), answered as Secrets Manager answers for a secret it does not have: 400
    ``ResourceNotFoundException``. Refusing it with AccessDenied would tell the app that the hidden secret exists,
    since the same request answers ResourceNotFoundException when it does not."""

    def __init__(self) -> None:
        super().__init__(400, "ResourceNotFoundException", SECRET_NOT_FOUND_MESSAGE)


@contextlib.contextmanager
def map_exceptions(mapping: Mapping[type[BaseException], type[ProxyError]], what: str) -> Iterator[None]:
    """Re-raise foreign exceptions as ProxyErrors; the most specific (first matching in MRO) class wins.

    ``what`` names the operation for the message, e.g. ``"upstream request"``. The foreign exception's
    text is kept only as the class name: library messages can carry URLs with signatures.
    """
    try:
        yield
    except ProxyError:
        raise
    except Exception as exc:
        for cls in type(exc).__mro__:
            target = mapping.get(cls)
            if target is not None:
                raise target(f"{what} failed: {type(exc).__name__}") from exc
        raise
