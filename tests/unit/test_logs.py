"""proxy.logs: every line stays one JSON object after scrubbing; credentials and signatures never survive."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.logs import DropLibraryDebug, JSONFormatter, scrub

KEY_ID = "ASIAQWERTYUIOPASDFGH"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SIGNATURE = "a" * 64


def line(message: str, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("botocore.endpoint", logging.INFO, __file__, 1, message, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    parsed: dict[str, object] = json.loads(JSONFormatter().format(record))
    return parsed


@pytest.mark.parametrize(
    "message",
    [
        f'headers={{"Authorization": "AWS4-HMAC-SHA256 Credential={KEY_ID}/x, Signature={SIGNATURE}", "a": "b"}}',
        f"{{'Authorization': b'AWS4-HMAC-SHA256 Credential={KEY_ID}/x, Signature={SIGNATURE}'}}",
        f"<SecretAccessKey>{SECRET_KEY}</SecretAccessKey><AccessKeyId>{KEY_ID}</AccessKeyId>",
        f'{{"SecretAccessKey": "{SECRET_KEY}", "AccessKeyId": "{KEY_ID}"}}',
        f"https://h/?X-Amz-Signature={SIGNATURE}&X-Amz-Credential={KEY_ID}%2F",
        f'"quoted \\" Authorization: \\"x\\" secret_key={SECRET_KEY}',
    ],
)
def test_scrubbed_lines_are_still_json_and_hold_no_credentials(message: str) -> None:
    out = line(message, context=message, nested={"value": [message]})
    text = json.dumps(out)
    assert SECRET_KEY not in text and SIGNATURE not in text and KEY_ID not in text


def test_access_key_ids_are_masked_like_credentials_mask() -> None:
    assert scrub(f"key {KEY_ID} and AKIAIOSFODNN7EXAMPLE") == "key ASIA...DFGH and AKIA...MPLE"


def test_library_debug_is_dropped_whatever_the_logger_level() -> None:
    keep = DropLibraryDebug()
    for name in ("botocore", "botocore.auth", "urllib3.connectionpool", "boto3", "s3transfer"):
        assert not keep.filter(logging.LogRecord(name, logging.DEBUG, __file__, 1, "m", None, None))
        assert keep.filter(logging.LogRecord(name, logging.INFO, __file__, 1, "m", None, None))
    assert keep.filter(logging.LogRecord("proxy", logging.DEBUG, __file__, 1, "m", None, None))


_FRAGMENTS = [
    "Signature=",
    "X-Amz-Signature=",
    "x-amz-security-token",
    "X-Amz-Security-Token",
    "SecurityToken=",
    "<SecretString>",
    "<SecretAccessKey>",
    "<SessionToken>",
    "<SecretBinary>",
    "SecretAccessKey",
    "SessionToken",
    "SecretString",
    "SecretBinary",
    "secret_key",
    "token",
    "Token",
    "aws_secret_access_key",
    "aws_session_token",
    "Authorization",
    "authorization",
    ":",
    "=",
    '"',
    "'",
    " ",
    "  ",
    "AKIA",
    "ASIA",
    "ABCDEFGHIJKL1234",
    "IOSFODNN7EXAMPLE",
    "abc123",
    "deadbeef",
    "&",
    ",",
    "}",
    "{",
    "\n",
    "GetSecretValue",
    "bench/secret",
    "-",
    "/",
]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=12), st.booleans())
def test_the_quick_test_never_skips_what_a_pattern_would_redact(parts: list[str], upper: bool) -> None:
    """scrub() skips the eight patterns when its quick test finds nothing: that must never change a line."""
    from proxy.logs import scrub_all

    text = "".join(parts)
    text = text.upper() if upper else text
    assert scrub(text) == scrub_all(text)


async def test_lines_on_the_loop_are_flushed_together_within_the_flush_interval() -> None:
    """Access lines written on the event loop leave in one write at most FLUSH_SECONDS later; a warning is
    flushed at once, with what was waiting before it."""
    import asyncio
    import io

    from proxy.logs import LinesHandler

    class Counting(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            Counting.flushes += 1
            super().flush()

    stream = Counting()
    handler = LinesHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("test.lines")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for i in range(20):
            logger.info("request", extra={"n": i})
        assert stream.getvalue().count("\n") == 20 and Counting.flushes == 0
        await asyncio.sleep(LinesHandler.FLUSH_SECONDS * 3)
        assert Counting.flushes == 1
        logger.info("one more")
        logger.warning("now")
        assert Counting.flushes == 2 and stream.getvalue().splitlines()[-1].find('"now"') > 0
    finally:
        logger.removeHandler(handler)


def test_lines_off_the_loop_are_flushed_at_once() -> None:
    import io

    from proxy.logs import LinesHandler

    class Counting(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            Counting.flushes += 1

    handler = LinesHandler(Counting())
    handler.setFormatter(JSONFormatter())
    handler.handle(logging.LogRecord("x", logging.INFO, "", 0, "hello", None, None))
    assert Counting.flushes == 1


_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "GetSecretValue",
            "prod/app/db",
            f"Signature={SIGNATURE}",
            f"k {KEY_ID}",
            'q"\\\n\t\x00',
            "é漢",
            "a\u2028\x85\x9b",
        ]
    ),
)
_NUMBER = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=500, deadline=None)
@given(
    request_id=_TEXT,
    action=st.none() | _TEXT,
    secret_id=st.none() | _TEXT | st.lists(_TEXT, max_size=3),
    status=st.integers(100, 599),
    upstream_status=st.none() | st.integers(100, 599),
    duration_ms=_NUMBER,
    attempts=st.integers(0, 10),
)
def test_the_access_line_template_writes_what_the_general_path_writes(**fields: object) -> None:
    """logs.access (the prepared template) and logs.emit with the same fields as extra= give the same text;
    and the general path's own encoding is json.dumps' (ensure_ascii=False) of the scrubbed values, with the
    characters that break a line or steer a terminal escaped."""
    from proxy.logs import _ENCODER, _one_line, _scrubbed, access, emit

    formatter = JSONFormatter()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("proxy.access")
    keep = Keep()
    logger.addHandler(keep)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        access(logger, *fields.values())  # type: ignore[arg-type]
        emit(logger, logging.INFO, "request", dict(fields))
    finally:
        logger.removeHandler(keep)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    template, general = records
    general.created = template.created
    assert formatter.format(template) == formatter.format(general)
    expected = {"time": json.loads(formatter.format(general))["time"], "level": "info", **fields}
    assert formatter.format(general) == _one_line(_ENCODER.encode(_scrubbed(expected)))
    assert template.status == fields["status"]  # type: ignore[attr-defined]  # as caplog sees it


@pytest.mark.parametrize("secret_id", ["a\u2028b", "a\u2029b", "a\x85b", "a\x9b31mred", "\x80\x9f", "é\u2028漢"])
def test_an_access_line_stays_one_line_whatever_the_secret_id(secret_id: str) -> None:
    """The app chooses the secret id an access line shows. Characters JSON may leave raw but that end a line for a
    Unicode-aware reader (U+2028, U+2029, U+0085 NEL: str.splitlines, tests/process.py's lines()) or steer a
    terminal (the C1 controls: U+009B is CSI) are written as escapes: one line, no C1 byte, the same value."""
    from proxy.logs import AccessRecord

    record = AccessRecord("proxy.access", "r-1", "GetSecretValue", secret_id, 200, 200, 1.5, 1)
    line = JSONFormatter().format(record)
    assert len(line.splitlines()) == 1
    assert not any(0x80 <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in line)
    assert json.loads(line)["secret_id"] == secret_id
