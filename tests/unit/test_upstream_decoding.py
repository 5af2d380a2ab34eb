"""proxy.upstream.decode_body: an upstream that ignores ``Accept-Encoding: identity`` is decoded, bounded."""

from __future__ import annotations

import gzip
import zlib

import pytest

from proxy import errors
from proxy.upstream import decode_body

DATA = b'{"SecretString": "value"}' * 10


@pytest.mark.parametrize("encoding", [None, "", "identity", "IDENTITY"])
def test_identity_is_untouched(encoding: str | None) -> None:
    assert decode_body(encoding, b"\x1f\x8b not gzip", 100) == b"\x1f\x8b not gzip"


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(DATA, mtime=0)),
        ("x-gzip", gzip.compress(DATA, mtime=0)),
        (" GZip ", gzip.compress(DATA, mtime=0)),
        ("deflate", zlib.compress(DATA)),
        ("deflate", zlib.compress(DATA)[2:-4]),  # raw deflate, as some servers send it
    ],
)
def test_gzip_and_deflate_are_decoded(encoding: str, body: bytes) -> None:
    assert decode_body(encoding, body, len(DATA)) == DATA


def test_decoded_size_is_bounded() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000, mtime=0)
    assert len(bomb) < 20_000
    with pytest.raises(errors.ResponseTooLarge):
        decode_body("gzip", bomb, 1_000_000)
    with pytest.raises(errors.ResponseTooLarge):
        decode_body("gzip", gzip.compress(DATA, mtime=0), len(DATA) - 1)


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", DATA),  # plain bytes labelled gzip
        ("gzip", gzip.compress(DATA, mtime=0)[:-10]),  # truncated
        ("deflate", b"not deflate"),
        ("br", b"\x0b\x02\x80"),
        ("gzip, gzip", gzip.compress(gzip.compress(DATA, mtime=0), mtime=0)),
        ("compress", b"x"),
    ],
)
def test_anything_else_is_bad_gateway(encoding: str, body: bytes) -> None:
    with pytest.raises(errors.BadGateway):
        decode_body(encoding, body, 10_000)
