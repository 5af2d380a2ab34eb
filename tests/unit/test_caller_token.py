"""proxy.caller_token: constant-time check, re-read on change, fail closed."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import pytest

from proxy import caller_token, errors
from proxy.caller_token import MAX_AGE_SECONDS, CallerToken
from proxy.config import ConfigError
from tests.clocks import ManualClock


def make(tmp_path: Path, content: str = "  first-token \n") -> tuple[CallerToken, Path, ManualClock]:
    path = tmp_path / "token"
    path.write_text(content)
    clock = ManualClock(1000.0)
    return CallerToken("X-Proxy-Token", str(path), clock=clock), path, clock


def test_the_token_passes_and_whitespace_around_it_is_stripped(tmp_path: Path) -> None:
    token, _, _ = make(tmp_path)
    token.check("first-token")
    token.check(" first-token ")


@pytest.mark.parametrize("presented", [None, "", "first", "first-token2", "FIRST-TOKEN", "first-tokén", "\udcff"])
def test_anything_else_is_access_denied(tmp_path: Path, presented: str | None) -> None:
    token, _, _ = make(tmp_path)
    with pytest.raises(errors.AccessDenied) as info:
        token.check(presented)
    assert "first-token" not in info.value.message


def test_comparison_is_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(caller_token.hmac, "compare_digest", spy)
    token, _, _ = make(tmp_path)
    with pytest.raises(errors.AccessDenied):
        token.check("guess")
    assert calls == [(b"guess", b"first-token")]


def test_atomic_replace_is_seen_at_the_next_request(tmp_path: Path) -> None:
    """The kubelet way: the new file is renamed over the old one (a new inode)."""
    token, path, _ = make(tmp_path)
    token.check("first-token")
    new = tmp_path / "token.new"
    new.write_text("second-token")
    os.replace(new, path)
    token.check("second-token")
    with pytest.raises(errors.AccessDenied):
        token.check("first-token")


def test_rewrite_in_place_with_another_size_is_seen_at_once(tmp_path: Path) -> None:
    token, path, _ = make(tmp_path)
    token.check("first-token")
    path.write_text("rotated-token-longer")
    token.check("rotated-token-longer")


def test_same_size_same_stat_is_reread_after_max_age(tmp_path: Path) -> None:
    """A rewrite that leaves the stat unchanged (coarse timestamps) is seen within MAX_AGE_SECONDS."""
    token, path, clock = make(tmp_path, "aaaa")
    before = os.stat(path)
    path.write_text("bbbb")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    # ctime still moves on a real write; pin the cached key to the new stat to model a coarse clock
    token._key = caller_token._stat_key(str(path))
    token.check("aaaa")
    clock.now += MAX_AGE_SECONDS
    token.check("bbbb")
    with pytest.raises(errors.AccessDenied):
        token.check("aaaa")


def test_unreadable_or_empty_file_fails_closed_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token, path, _ = make(tmp_path)
    path.unlink()
    with pytest.raises(errors.AccessDenied):
        token.check("first-token")
    path.write_text("   \n")
    with pytest.raises(errors.AccessDenied):
        token.check("first-token")
    with pytest.raises(errors.AccessDenied):
        token.check("")
    path.write_text("back")
    token.check("back")
    warnings = [r for r in caplog.records if r.name == "proxy.token" and r.levelname == "WARNING"]
    assert len(warnings) == 1  # logged once per failure, not per request
    assert all("back" not in r.getMessage() and "first-token" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content", ["", " \n\t"])
def test_empty_file_at_start_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ConfigError, match=r"^policy\.token_file: "):
        CallerToken("X-T", str(path))


def test_missing_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^policy\.token_file: "):
        CallerToken("X-T", str(tmp_path / "nope"))
