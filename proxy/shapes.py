"""What the model's shapes mean to the proxy, shared one way by the stages that read and write them.

:mod:`proxy.translate` (Query -> JSON 1.1 and back), :mod:`proxy.render` (the prepared JSON -> XML renderer),
:mod:`proxy.sdk`, :mod:`proxy.policy` and :mod:`proxy.middleware` import these; this module imports none of
them. It holds which shapes of the Secrets Manager model name a secret (in an input, in an output), which
operations are reads, and the XML form of the two scalars that need care: text (escaping, what XML 1.0 cannot
carry) and timestamps (ISO 8601 UTC with milliseconds, docs/interface.md, "Success answers").
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from botocore.utils import parse_timestamp

from . import errors

READ_PREFIXES = ("Get", "Describe", "List", "BatchGet")
# The model's shapes whose values name a secret in an input (SecretId, CreateSecret's Name, SecretIdList
# members, CrossAccountReplicaARN ...).
SECRET_ID_SHAPES = frozenset({"SecretIdType", "NameType", "SecretARNType", "SecretNameType"})
# ... and in an output (ARN, Name, APIErrorType's SecretId). NameType is left out: answers also use it for
# things that are not secrets (ValidationErrorsEntry.CheckName), and every output Name of that shape sits
# beside an ARN.
OUTPUT_SECRET_ID_SHAPES = frozenset({"SecretIdType", "SecretARNType", "SecretNameType"})


def is_read_operation(name: str) -> bool:
    """Reads (``Get*``, ``Describe*``, ``List*``, ``BatchGet*``) may be retried (docs/interface.md, "The upstream
    request")."""
    return name.startswith(READ_PREFIXES)


# XML 1.0 cannot carry C0 controls other than TAB, LF, CR, nor lone surrogates, U+FFFE and U+FFFF.
UNREPRESENTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#xD;"})
# Either of the above: text with neither is returned as it is after one search (most text).
_SPECIAL = re.compile("[\x00-\x08\x0b\x0c\x0d\x0e-\x1f\ud800-\udfff\ufffe\uffff&<>]")


def xml_text(value: str, where: str) -> str:
    """Escape text for an XML element: ``& < >`` and CR (as ``&#xD;`` so parsers keep CRLF).

    Raises UnrepresentableValue when the text holds a character XML 1.0 cannot carry.
    """
    if _SPECIAL.search(value) is None:
        return value
    if UNREPRESENTABLE.search(value):
        raise errors.UnrepresentableValue(
            f"{where} holds a control character that XML 1.0 cannot carry; read it with an SDK (JSON 1.1)"
        )
    return value.translate(_ESCAPES)


def iso8601(value: Any) -> str:
    """A timestamp as sent by the upstream (epoch seconds, int or float, or an ISO string) as ISO 8601 UTC with
    milliseconds: ``2018-04-11T20:05:45.713Z``."""
    if isinstance(value, datetime.datetime):
        stamp = value
    elif isinstance(value, (int, float)):
        stamp = datetime.datetime.fromtimestamp(value, datetime.UTC)
    else:
        stamp = parse_timestamp(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    stamp = stamp.astimezone(datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
