"""The caller token (docs/interface.md, "HTTP endpoints"): with ``policy.token_header`` set, every Query request must
carry the token held in ``policy.token_file``; anything else is 403 AccessDenied. The Secrets Manager Agent's
``X-Aws-Parameters-Secrets-Token`` check, made rotatable.

The comparison is constant-time (``hmac.compare_digest``) over UTF-8 bytes. The file is read once at start-up
(an empty or unreadable file is a ConfigError) and re-read when it changes: its ``stat`` (device, inode, size,
mtime and ctime in nanoseconds) is taken on every check and compared with the one taken before the last read,
so a kubelet-style atomic symlink swap or a rewrite in place is seen at the next request; a file whose stat did
not change is still re-read once :data:`MAX_AGE_SECONDS` have passed, for file systems with coarse timestamps.
A file that becomes unreadable or empty fails closed: every request is denied until it is readable again.
Admin endpoints (``/healthz``, ``/readyz``, ``/metrics``) never ask for the token.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable

from . import errors
from .config import ConfigError

log = logging.getLogger("proxy.token")

MAX_AGE_SECONDS = 1.0

_StatKey = tuple[int, int, int, int, int]


def _stat_key(path: str) -> _StatKey:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_token(path: str) -> bytes:
    """The token in ``path``, surrounding whitespace stripped, as UTF-8 bytes. Raises OSError, ValueError."""
    with open(path, "rb") as fh:
        token = fh.read().strip()
    if not token:
        raise ValueError("the file is empty")
    return token


class CallerToken:
    """The expected caller token for one listener.

    ``header`` is ``policy.token_header``, ``path`` is ``policy.token_file``; ``clock`` is monotonic seconds
    (injectable for tests). Raises ConfigError when the file cannot be read or is empty at construction.
    """

    def __init__(self, header: str, path: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.header = header
        self.path = path
        self._clock = clock
        try:
            self._key: _StatKey | None = _stat_key(path)
            self._token: bytes | None = _read_token(path)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ConfigError(f"policy.token_file: cannot read a token from {path}: {reason}") from exc
        self._read_at = clock()
        self._failing = False

    def expected(self) -> bytes | None:
        """The current token (re-read when the file changed or :data:`MAX_AGE_SECONDS` passed); None while the
        file is unreadable or empty."""
        now = self._clock()
        try:
            key = _stat_key(self.path)
            if key == self._key and now - self._read_at < MAX_AGE_SECONDS:
                return self._token
            token = _read_token(self.path)
        except (OSError, ValueError) as exc:
            if not self._failing:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                log.warning("the caller token file cannot be read; denying requests", extra={"reason": reason})
            self._failing = True
            self._key = self._token = None
            return None
        if self._failing:
            log.info("the caller token file is readable again")
        self._failing = False
        self._key, self._token, self._read_at = key, token, now
        return token

    def check(self, presented: str | None) -> None:
        """Raise AccessDenied unless ``presented`` (the header's value, None when absent) is the token."""
        if presented is None:
            raise errors.AccessDenied(f"the request has no {self.header} header; send the caller token in it")
        expected = self.expected()
        if expected is None:
            raise errors.AccessDenied(f"the caller token cannot be checked: {self.header} is not accepted now")
        if not _same(presented, expected):
            raise errors.AccessDenied(f"the {self.header} header does not hold the caller token")

    def accepts(self, presented: str | None) -> bool:
        """True when ``presented`` (a header's value, None when absent) is the current token; False when it is
        absent, wrong, or the file cannot be read now (fail closed). Constant-time, as :meth:`check`."""
        if presented is None:
            return False
        expected = self.expected()
        return expected is not None and _same(presented, expected)


def _same(presented: str, expected: bytes) -> bool:
    """The presented value, surrounding whitespace stripped, against the token, in constant time."""
    return hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"), expected)
