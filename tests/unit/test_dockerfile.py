"""The Dockerfile's invariants, read with dockerfile-parse (no container engine runs here; .ci/run repeats the
build stage's install steps in a throwaway virtual environment)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from proxy.config import DEFAULT_ADMIN_PORT, DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[2]
PINNED_BASE = re.compile(r"^python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?$")


def stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions (comments left out), split into build stages at each FROM."""
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    out: list[list[dict[str, Any]]] = []
    for ins in parser.structure:
        if ins["instruction"] == "COMMENT":
            continue
        if ins["instruction"] == "FROM":
            out.append([])
        assert out, f"{ins['instruction']} before the first FROM"
        out[-1].append(ins)
    return out


def final() -> list[dict[str, Any]]:
    return stages()[-1]


def instructions(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [ins["value"] for ins in stage if ins["instruction"] == name]


def exec_form(value: str) -> list[str]:
    args = json.loads(value)
    assert isinstance(args, list) and all(isinstance(a, str) for a in args), f"not exec form: {value}"
    return args


def env_of(stage: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in instructions(stage, "ENV"):
        for word in shlex.split(value):
            key, _, val = word.partition("=")
            env[key] = val
    return env


def test_multi_stage_on_a_pinned_slim_python_base() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    for stage in all_stages:
        image = stage[0]["value"].split()[0]
        assert PINNED_BASE.match(image), f"base image {image} is not pinned to a full version tag"
        assert not image.endswith(":latest")


def test_final_stage_installs_nothing_and_copies_the_built_environment() -> None:
    stage = final()
    runs = " ".join(instructions(stage, "RUN"))
    for tool in ("apt-get install", "apt install", "pip install", "gcc", "build-essential", "pytest", "curl", "wget"):
        assert tool not in runs, f"the final stage runs {tool!r}"
    copies = instructions(stage, "COPY")
    assert any(c.startswith("--from=") for c in copies), "the final stage does not copy from the build stage"


def test_build_stage_installs_the_fast_extra_and_ci_repeats_it() -> None:
    """The image runs on uvloop (pyproject's ``fast`` extra); .ci/run installs the wheel the same way."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("uvloop") for dep in extras["fast"])
    runs = " ".join(instructions(stages()[0], "RUN"))
    assert re.search(r"pip install [^&]*\.whl\)?\[fast\]", runs), runs
    assert re.search(r"pip\" install --quiet [^\n]*\.whl\)?\[fast\]", (ROOT / ".ci" / "run").read_text())


def test_runs_as_a_numeric_non_root_user() -> None:
    users = instructions(final(), "USER")
    assert users, "no USER in the final stage: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]} must be a numeric non-root UID"
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_no_remote_add() -> None:
    for stage in stages():
        for value in instructions(stage, "ADD"):
            assert not re.search(r"\b(https?|git)://|git@", value), f"ADD from a remote source: {value}"


def test_entrypoint_is_the_console_script_pyproject_defines() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = exec_form(instructions(final(), "ENTRYPOINT")[-1])
    assert Path(entrypoint[0]).name in scripts
    # the script lives in the virtual environment the build stage creates and the final stage copies
    venv = str(Path(entrypoint[0]).parent.parent)
    assert any(f"venv {venv}" in run for run in instructions(stages()[0], "RUN"))
    assert any(c.startswith("--from=") and venv in c for c in instructions(final(), "COPY"))


def test_read_only_root_filesystem_settings() -> None:
    env = env_of(final())
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("HOME", "").startswith("/tmp")


def test_exposes_the_default_ports() -> None:
    exposed = " ".join(instructions(final(), "EXPOSE")).split()
    assert str(DEFAULT_PORT) in exposed and str(DEFAULT_ADMIN_PORT) in exposed


def test_healthcheck_uses_python_urllib_against_healthz() -> None:
    (value,) = instructions(final(), "HEALTHCHECK")
    cmd = exec_form(value.split("CMD", 1)[1].strip())
    assert cmd[0] == "python" and "urllib.request" in cmd[-1]
    assert not any(tool in value for tool in ("curl", "wget"))
    url = env_of(final())["HEALTHCHECK_URL"]
    assert url.endswith("/healthz")
    # the default config (the image's CMD) serves the admin listener on the port the health check polls
    config_path = exec_form(instructions(final(), "CMD")[-1])[1]
    copies = [c.split() for c in instructions(final(), "COPY") if not c.startswith("--")]
    (source,) = [src for src, dest in copies if dest == config_path]
    admin = yaml.safe_load((ROOT / source).read_text())["admin"]
    assert url == f"http://127.0.0.1:{admin['port']}/healthz"


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert patterns[0] == "*", ".dockerignore is expected to be an allowlist"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for stage in stages():
        for value in instructions(stage, "COPY"):
            if value.startswith("--from="):
                continue
            *sources, _dest = value.split()
            for src in sources:
                src = src.rstrip("/")
                assert (ROOT / src).exists(), f"COPY {src}: no such file"
                assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is left out by .dockerignore"


@pytest.mark.parametrize("name", ["pyproject.toml", "README.md"])
def test_build_stage_has_what_the_wheel_build_reads(name: str) -> None:
    copies = " ".join(instructions(stages()[0], "COPY"))
    assert name in copies
