"""The tests' clocks, in one place.

- :class:`ManualClock`: epoch seconds that move only when a test moves them; the ``clock`` of the proxy's
  components (credentials, cache, caller token) and of the fake AWS parts.
- :class:`SigningClock`: botocore's signing clock (``botocore.auth.get_current_datetime``) moving one second
  per call, so every signature is computed for a distinct X-Amz-Date.
"""

from __future__ import annotations

import datetime
import threading


class ManualClock:
    """Epoch seconds (a ``() -> float`` clock) that move only when told: set or add to ``now``, or
    :meth:`advance`. Starts at ``now`` (default: an arbitrary fixed epoch)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SigningClock:
    """A botocore clock (``botocore.auth.get_current_datetime``) that moves one second per call, so every
    signature is computed for a distinct X-Amz-Date; starts at the real time (UTC, naive, whole seconds)."""

    def __init__(self) -> None:
        self.start = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, remove_tzinfo: bool = True) -> datetime.datetime:
        with self._lock:
            self.calls += 1
            return self.start + datetime.timedelta(seconds=self.calls)
