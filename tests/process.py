"""The proxy as a real process: ``query-signing-proxy`` started from the console script, its JSON log lines
read from a file (no pipes to fill up), its ports taken from its ``listening`` line.

Used by the tests of what only the process shows: the command line (``--log-level``), logs on stderr,
SIGTERM, the container image's HEALTHCHECK.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def reaped(process: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """``with reaped(Popen(...)) as proc:``: on the way out a child still running is killed and waited for, so
    a failed assertion leaves no process behind (``Popen``'s own ``with`` only waits)."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def proc_status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in KiB (``VmRSS``, ``VmHWM``); KeyError when the kernel has no such line."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def console_script() -> str:
    """The ``query-signing-proxy`` console script of the environment running the tests."""
    beside = Path(sys.executable).with_name("query-signing-proxy")
    found = str(beside) if beside.exists() else shutil.which("query-signing-proxy")
    assert found, "the query-signing-proxy console script is not installed (pip install -e .)"
    return found


class ProxyProcess:
    """``query-signing-proxy ARGS`` with stderr in ``workdir/stderr.log``. Use as a context manager; on exit
    the process gets SIGTERM (then SIGKILL after 20 s) unless it has already been stopped. ``cwd``: the
    process's working directory (default: the tests')."""

    def __init__(
        self, args: Sequence[str], workdir: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.args = [console_script(), *args]
        self.log_path = workdir / "stderr.log"
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.admin_port: int | None = None

    def __enter__(self) -> ProxyProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=self.env, cwd=self.cwd
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()

    def lines(self) -> list[dict[str, Any]]:
        """Every stderr line so far, parsed as JSON (a line that is not JSON fails the test)."""
        text = self.log_path.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_listening(self, timeout: float = 60.0) -> dict[str, Any]:
        """Poll the log until the ``listening`` line appears; sets ``port`` and ``admin_port``."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines():
                if line.get("message") == "listening":
                    self.port, self.admin_port = line["port"], line["admin_port"]
                    return line
            if self.process.poll() is not None:
                raise AssertionError(f"the proxy exited with {self.process.returncode}: {self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no 'listening' line within {timeout} s: {self.log_path.read_text()}")
            time.sleep(0.05)

    def wait_status(self, url: str, status: int, timeout: float = 60.0) -> None:
        """Poll ``url`` until it answers ``status``."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    last = resp.status
            except urllib.error.HTTPError as exc:
                last = exc.code
            except OSError as exc:
                last = exc
            if last == status:
                return
            if self.process.poll() is not None:
                raise AssertionError(f"the proxy exited with {self.process.returncode}: {self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} answered {last!r}, not {status}, within {timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit code (SIGKILL and a failed assertion if it does not exit in time)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the proxy did not exit within {timeout} s of SIGTERM") from None
