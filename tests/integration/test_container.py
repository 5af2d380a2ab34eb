"""What the container image runs, run here as processes: its default config passes ``check-config``, and its
HEALTHCHECK command (python + urllib, no curl) passes against a live proxy and fails once it has stopped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.process import ProxyProcess, console_script
from tests.unit.test_dockerfile import ROOT, env_of, exec_form, final, instructions


def healthcheck_command() -> list[str]:
    (value,) = instructions(final(), "HEALTHCHECK")
    cmd = exec_form(value.split("CMD", 1)[1].strip())
    return [sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]]


def run_healthcheck(env: dict[str, str], url: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(healthcheck_command(), env={**env, "HEALTHCHECK_URL": url}, capture_output=True, timeout=30)


def test_default_config_passes_check_config() -> None:
    env = {**os.environ, "AWS_REGION": "eu-west-1"}
    out = subprocess.run(
        [console_script(), "check-config", str(ROOT / "config" / "container.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    effective = yaml.safe_load(out.stdout)
    assert effective["listen"]["host"] == "127.0.0.1"
    assert effective["admin"]["host"] == "0.0.0.0"


def test_healthcheck_passes_on_a_live_proxy_and_fails_after_it_stops(tmp_path: Path) -> None:
    # The image's default config, with ports chosen by the kernel and the admin listener on loopback.
    config = yaml.safe_load((ROOT / "config" / "container.yaml").read_text())
    config["listen"]["port"] = 0
    config["admin"] = {"host": "127.0.0.1", "port": 0}
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    # No credentials anywhere: the proxy still serves /healthz (docs/interface.md, "Exit codes"), /readyz stays 503.
    env = {**os.environ, "AWS_REGION": "eu-west-1"}
    with ProxyProcess(["--config", str(path)], tmp_path, env=env) as proxy:
        proxy.wait_listening()
        default_url = env_of(final())["HEALTHCHECK_URL"]
        url = default_url.replace(":8978/", f":{proxy.admin_port}/")
        assert url != default_url
        check = run_healthcheck(env, url)
        assert check.returncode == 0, check.stderr
        proxy.wait_status(url.replace("/healthz", "/readyz"), 503)
        assert proxy.stop() == 0
    assert run_healthcheck(env, url).returncode != 0
