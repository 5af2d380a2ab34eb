"""Issue 13, item 6: what a newcomer's shell does to the proxy, ``local`` and the test suite.

A stale ``AWS_PROFILE`` (naming a profile that exists nowhere) made the proxy, ``check-config`` and ``local``
print a 31-line ``ProfileNotFound`` traceback, and the README's test command error in the session-scoped
emulator fixture. Now: the proxy and ``check-config`` exit 2 with one line naming the variable; ``local``
ignores the shell's ``AWS_*`` (it runs on its own emulator) and serves; the tests clear ``AWS_*`` before
collection and before any fixture. All through real processes.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from proxy.local import DEMO_SECRET_VALUE, clean_aws_environ
from tests.integration.test_cli import ROOT, read_until, run, start_local
from tests.process import reaped

# What a shell left behind: a profile that is nowhere, and settings that would send botocore elsewhere.
STALE = {
    "AWS_PROFILE": "nonexistent",
    "AWS_REGION": "eu-nowhere-9",
    "AWS_CA_BUNDLE": "/nonexistent/ca.pem",
    "AWS_ACCESS_KEY_ID": "AKIDSTALESHELL000000",
    "AWS_SECRET_ACCESS_KEY": "stale",
    "AWS_ENDPOINT_URL": "https://127.0.0.1:9",
    "AWS_ENDPOINT_URL_STS": "https://127.0.0.1:9",
}


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize("region", [{"AWS_REGION": "us-east-1"}, {}], ids=["region", "no-region"])
@pytest.mark.parametrize("variable", ["AWS_PROFILE", "AWS_DEFAULT_PROFILE"])
def test_a_missing_profile_is_one_line_naming_its_variable(variable: str, region: dict[str, str]) -> None:
    env = {**clean_aws_environ(), variable: "nonexistent", **region}
    for args in (["check-config", "config/proxy.yaml"], ["--listen", "127.0.0.1:0"], ["--workers", "2"]):
        line = one_line(run(*args, env=env))
        assert line.startswith(f"query-signing-proxy: config error: {variable}: no profile named 'nonexistent'")


def test_a_profile_missing_from_existing_files_and_unparsable_files_are_named(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[profile dev]\nregion = eu-central-1\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("[ci]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = x\n")
    files = {**clean_aws_environ(), "AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}
    line = one_line(run("check-config", "config/proxy.yaml", env={**files, "AWS_PROFILE": "prod"}))
    assert "AWS_PROFILE: no profile named 'prod'" in line and str(config) in line and str(credentials) in line
    # profiles that exist still work, from either file
    out = run("check-config", "config/proxy.yaml", env={**files, "AWS_PROFILE": "dev"})
    assert out.returncode == 0 and "region: eu-central-1" in out.stdout, out.stderr
    out = run("check-config", "config/proxy.yaml", env={**files, "AWS_PROFILE": "ci", "AWS_REGION": "us-east-1"})
    assert out.returncode == 0, out.stderr
    # files botocore cannot parse
    broken = tmp_path / "broken"
    broken.write_text("[default\nregion\n")
    line = one_line(run("check-config", "config/proxy.yaml", env={**files, "AWS_CONFIG_FILE": str(broken)}))
    assert line.startswith(f"query-signing-proxy: config error: AWS_CONFIG_FILE: {broken} is not a valid")
    env = {**files, "AWS_SHARED_CREDENTIALS_FILE": str(broken), "AWS_REGION": "us-east-1"}
    line = one_line(run("--listen", "127.0.0.1:0", env=env))
    assert line.startswith(f"query-signing-proxy: config error: AWS_SHARED_CREDENTIALS_FILE: {broken}")


def test_local_ignores_the_shells_aws_settings(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text("[default\nregion\n")
    env = {
        **clean_aws_environ(),
        **STALE,
        "AWS_DEFAULT_PROFILE": "nonexistent",
        "AWS_CONFIG_FILE": str(broken),
        "AWS_SHARED_CREDENTIALS_FILE": str(broken),
    }
    with reaped(start_local(env)) as proc:
        url = read_until(proc, re.compile(rb"curl -s '([^']+)'"), timeout=120).group(1).decode()
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.status == 200
            assert DEMO_SECRET_VALUE.encode() in resp.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_the_test_command_passes_with_a_stale_profile_exported() -> None:
    """The README's test command, on a subset that uses the session-scoped emulator and reads botocore's
    models at import, in a shell with a stale ``AWS_PROFILE`` (and friends) exported."""
    env = {**clean_aws_environ(), **STALE, "AWS_DEFAULT_PROFILE": "nonexistent"}
    probe = "import botocore.session; botocore.session.get_session().get_service_model('sts')"
    control = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert control.returncode != 0 and "ProfileNotFound" in control.stderr  # the shell really is stale
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "tests/unit/test_sdk_and_guard.py",
            "tests/integration/test_query_services.py::test_sts_get_caller_identity",
            "tests/integration/test_sdk.py::test_the_json_answer_is_relayed_unchanged",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert re.search(r"\d+ passed", out.stdout) and "error" not in out.stdout.splitlines()[-1]
