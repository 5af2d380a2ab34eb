"""JSON-lines logging on stderr (docs/interface.md, "Logs and metrics"; docs/operations.md), with credentials kept out
at every level.

Three defences: botocore's and urllib3's records below INFO are dropped (their debug output holds canonical
requests, signatures and STS answers); every value of a line is scrubbed, before JSON encoding, of anything
shaped like a signature, a session token, a secret access key or a secret value, and access key ids are
masked; and the proxy's own lines never put them in.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import json.encoder
import logging
import math
import re
import sys
from typing import Any

# Attributes every LogRecord has; anything else given through ``extra=`` is context for the JSON line.
_RECORD = vars(logging.LogRecord("", 0, "", 0, "", None, None))
_STANDARD = frozenset(_RECORD) | {"message", "asctime", "taskName"}
# LogRecord.__init__ sets these first; ``extra=`` (Logger.makeRecord) and formatters only add after them.
_RECORD_ATTRIBUTES = len(_RECORD)

NOISY_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer")

_SCRUB = [
    (re.compile(r"(Signature=)[0-9a-fA-F]+"), r"\1<redacted>"),
    (re.compile(r"(X-Amz-Signature=)[^&\s\"']+", re.I), r"\1<redacted>"),
    (re.compile(r"(x-amz-security-token[\"']?\s*[:=]\s*[\"']?)[^\s\"',&}]+", re.I), r"\1<redacted>"),
    (re.compile(r"(SecurityToken=)[^&\s\"']+"), r"\1<redacted>"),
    (re.compile(r"(<(?:SecretAccessKey|SessionToken|SecretString|SecretBinary)>)[^<]*"), r"\1<redacted>"),
    (
        re.compile(
            r"([\"']?(?:SecretAccessKey|SessionToken|SecretString|SecretBinary|secret_key|token|"
            r"aws_secret_access_key|aws_session_token)[\"']?\s*[:=]\s*)(?:\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s,}&]+)",
            re.I,
        ),
        r"\1<redacted>",
    ),
    (re.compile(r"(Authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\n]+", re.I), r"\1<redacted>"),
    # access key ids (long-term AKIA, temporary ASIA): masked as credentials.mask() does
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{12}([A-Z0-9]{4})\b"), r"\1...\2"),
]


# What every pattern above needs to match (a superset, case-insensitive): text without any of it is left as
# it is, so the common line (an access line's request id, action and secret name) costs one search, not eight.
# tests/unit/test_logs.py checks on generated text that scrub() and all eight patterns agree.
_TRIGGER = re.compile(
    r"signature=|token[\"']?\s*[:=]|<secret|<sessiontoken|(?:secret_?access_?key|secretstring|secretbinary|secret_key)"
    r"[\"']?\s*[:=]|authorization|\b(?:akia|asia)[a-z0-9]{16}\b",
    re.I,
)


def scrub(text: str) -> str:
    """Remove signatures, tokens, secret keys and secret values from a log line."""
    if text.isascii():
        # a cheaper superset of _TRIGGER for ASCII text (where case-insensitive means ASCII case only): each
        # of its alternatives holds one of these words
        low = text.lower()
        if not (
            "token" in low
            or "secret" in low
            or "signature" in low
            or "authorization" in low
            or "akia" in low
            or "asia" in low
        ):
            return text
    if _TRIGGER.search(text) is None:
        return text
    return scrub_all(text)


def scrub_all(text: str) -> str:
    """:func:`scrub` without the quick test: every pattern applied."""
    for pattern, repl in _SCRUB:
        text = pattern.sub(repl, text)
    return text


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v) for v in value]
    return value


# json.dumps(..., default=..., ensure_ascii=False) builds an encoder per call; one is enough.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=lambda value: scrub(str(value)))
# the C string escaper that encoder uses (ensure_ascii=False): quotes, backslashes and control characters
_STRING = json.encoder.encode_basestring


# What JSON leaves raw in a string under ensure_ascii=False although it ends a line or steers a terminal: the C1
# controls (U+0085 NEL is a line break to Unicode-aware splitters such as str.splitlines, U+009B is a
# terminal's CSI) and U+2028 / U+2029. A client chooses the secret id an access line shows: these are
# written as JSON escapes, so a line stays one line and is the same value to any JSON reader.
_LINE_BREAKING = {c: f"\\u{c:04x}" for c in (*range(0x80, 0xA0), 0x2028, 0x2029)}


def _one_line(text: str) -> str:
    """A JSON line with :data:`_LINE_BREAKING` characters escaped (inside its strings, the only place they can
    be); ASCII text as it is."""
    return text if text.isascii() else text.translate(_LINE_BREAKING)


def _json_value(value: Any) -> str:
    """``value`` scrubbed and as JSON text, exactly as ``_ENCODER.encode(_scrubbed(value))`` writes it; the
    types of an access line's values (str, int, float, None) without the encoder's per-call set-up."""
    kind = type(value)
    if kind is str:
        return _STRING(scrub(value))
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return _ENCODER.encode(_scrubbed(value))


class _Clock:
    """ISO 8601 UTC with milliseconds (``2024-01-02T03:04:05.678+00:00``), the seconds formatted once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def iso(self, created: float) -> str:
        second = int(created)
        micros = round((created - second) * 1e6)  # as datetime.fromtimestamp rounds
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self.second:
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self.second, self.prefix = second, moment.strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self.prefix}.{micros // 1000:03d}+00:00"


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601 UTC), ``level``, ``message`` and the record's context."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        if type(record) is AccessRecord:
            return self._access_line(record)
        line: dict[str, Any] = {
            "time": self._clock.iso(record.created),
            "level": record.levelname.lower(),
        }
        if record.name != "proxy.access":
            line["message"] = record.getMessage()
            line["logger"] = record.name
        for key, value in itertools.islice(vars(record).items(), _RECORD_ATTRIBUTES, None):
            if key not in _STANDARD:
                line[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
        # Scrubbed value by value, before encoding: a pattern never cuts through JSON's own quoting. The same
        # text as _one_line(_ENCODER.encode(_scrubbed(line))) (tests/unit/test_logs.py holds them equal).
        text = "{" + ", ".join([f"{_STRING(key)}: {_json_value(value)}" for key, value in line.items()]) + "}"
        return _one_line(text)

    def _access_line(self, r: AccessRecord) -> str:
        """The access line from a prepared template: the text the general path writes for the same record
        (tests/unit/test_logs.py holds them equal), without building and walking a dict."""
        return _one_line(
            f'{{"time": "{self._clock.iso(r.created)}", "level": {_STRING(r.levelname.lower())}, '
            f'"request_id": {_json_value(r.request_id)}, "action": {_json_value(r.action)}, '
            f'"secret_id": {_json_value(r.secret_id)}, "status": {_json_value(r.status)}, '
            f'"upstream_status": {_json_value(r.upstream_status)}, "duration_ms": {_json_value(r.duration_ms)}, '
            f'"attempts": {_json_value(r.attempts)}}}'
        )


class AccessRecord(logging.LogRecord):
    """The access line's record (INFO on ``proxy.access``, message ``request``): the request's fields are
    attributes, as ``extra=`` would set them, and :class:`JSONFormatter` writes it from a template."""

    def __init__(
        self,
        name: str,
        request_id: str,
        action: str | None,
        secret_id: str | list[str] | None,
        status: int,
        upstream_status: int | None,
        duration_ms: float,
        attempts: int,
    ) -> None:
        super().__init__(name, logging.INFO, "", 0, "request", None, None)
        self.request_id = request_id
        self.action = action
        self.secret_id = secret_id
        self.status = status
        self.upstream_status = upstream_status
        self.duration_ms = duration_ms
        self.attempts = attempts


def access(
    logger: logging.Logger,
    request_id: str,
    action: str | None,
    secret_id: str | list[str] | None,
    status: int,
    upstream_status: int | None,
    duration_ms: float,
    attempts: int,
) -> None:
    """Write one request's access line (docs/operations.md, "Logs"): an :class:`AccessRecord` through
    ``logger`` (``proxy.access``) when it logs INFO. ``duration_ms`` is milliseconds, ``attempts`` the
    upstream attempts (0 when none was made), ``status`` what the client got."""
    if logger.isEnabledFor(logging.INFO):
        logger.handle(
            AccessRecord(logger.name, request_id, action, secret_id, status, upstream_status, duration_ms, attempts)
        )


def emit(logger: logging.Logger, level: int, message: str, extra: dict[str, Any]) -> None:
    """``logger.log(level, message, extra=extra)`` without looking up the caller's file and line (the JSON
    lines never show them; the lookup walks the stack on every access line)."""
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, "", 0, message, (), None, extra=extra))


class DropLibraryDebug(logging.Filter):
    """Drop botocore/urllib3 records below INFO, whatever level their loggers are set to."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO:
            return True
        return not record.name.startswith(NOISY_LIBRARIES)


class LinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes each line at once but flushes the stream (one system call) at most every
    ``FLUSH_SECONDS`` for records below WARNING written on an event loop, so that under load the access lines
    of many requests leave in one write instead of one write each. WARNING and above, and lines written off
    an event loop, are flushed at once; a pending flush runs on the loop ``FLUSH_SECONDS`` later (an access
    line is never held longer), and at exit ``logging.shutdown()`` flushes the rest."""

    FLUSH_SECONDS = 0.05

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno < logging.WARNING:
                try:
                    loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
                except RuntimeError:
                    loop = None
                if loop is not None:
                    if self._pending_on is not loop:
                        self._pending_on = loop
                        loop.call_later(self.FLUSH_SECONDS, self._scheduled_flush)
                    return
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _scheduled_flush(self) -> None:
        self.acquire()
        try:
            self._pending_on = None
        finally:
            self.release()
        self.flush()


def setup(level: str = "info", stream: Any = None) -> logging.Handler:
    """Route all logging to JSON lines on ``stream`` (stderr) at ``level``; returns the handler."""
    handler = LinesHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(DropLibraryDebug())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # No line shows the thread, the process or the task: don't look them up for every record (the logging
    # module's documented switches for this, "Optimization" in its HOWTO).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return handler
