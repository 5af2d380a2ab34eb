"""docs/add-to-your-app.md does what it says: its kustomization and settings render over a Deployment of ours
with the component and validate; its by-hand Deployment validates and carries exactly the injector's sidecar;
its annotation and flag tables are the injector's; its iam-policy commands run; every path it names exists."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.injector import ANNOTATIONS, PREFIX, PodSettings, sidecar_container, sidecar_volumes
from proxy.local import clean_aws_environ
from tests.process import console_script
from tests.unit.test_deploy import LATEST, NATIVE_MIN, one, render_dir, validate

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "add-to-your-app.md"
TEXT = PAGE.read_text()


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", TEXT, re.M | re.S)
    assert m, f"no '## {title}' in {PAGE.name}"
    return m.group(1)


def blocks(text: str, language: str) -> list[str]:
    """The fenced blocks of ``language``, also those indented inside a list item (dedented)."""
    found = re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, re.M | re.S)
    return [textwrap.dedent(body) for _, body in found]


def named_block(name: str) -> str:
    """The yaml block whose first line is ``# NAME``."""
    (found,) = [b for b in blocks(TEXT, "yaml") if b.startswith(f"# {name}\n")]
    return found


def commands(text: str) -> list[str]:
    return [line for block in blocks(text, "sh") for line in block.splitlines() if line and not line.startswith("#")]


def table(text: str, heading: str) -> dict[str, str]:
    part = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^##|\Z)", text, re.M | re.S)
    assert part
    rows = [line for line in part.group(1).splitlines() if line.startswith("| `")]
    return {row.split("|")[1].strip().strip("`"): row.split("|")[2].strip() for row in rows}


def test_the_paths_come_shortest_first() -> None:
    headings = re.findall(r"^## (Path \d: .+)$", TEXT, re.M)
    assert headings == ["Path 1: the injector", "Path 2: the kustomize component", "Path 3: by hand"]


def test_the_annotation_table_is_the_injectors() -> None:
    documented = table(TEXT, "Annotations")
    assert set(documented) == {PREFIX + a for a in ANNOTATIONS}
    assert documented[PREFIX + "wire-sdk"] == '`"true"`' and documented[PREFIX + "mode"] == "`native`"


def test_the_flag_table_is_the_injectors() -> None:
    out = subprocess.run([console_script(), "injector", "--help"], capture_output=True, text=True, timeout=60)
    flags = set(re.findall(r"(--[a-z-]+)", out.stdout)) - {"--help"}
    assert set(table(TEXT, "Flags")) == flags


def test_the_by_hand_deployment_is_valid_and_carries_the_injectors_sidecar() -> None:
    deployment: dict[str, Any] = yaml.safe_load(named_block("deployment.yaml, by hand"))
    validate(deployment, NATIVE_MIN)
    validate(deployment, LATEST)
    spec = deployment["spec"]["template"]["spec"]
    proxy = spec["initContainers"][0]
    settings = PodSettings(proxy["image"], "query-signing-proxy", "eu-west-1", 8977, 8978, True, "native")
    assert proxy == sidecar_container(settings)
    assert [v for v in spec["volumes"] if v["name"].startswith("query-signing-proxy")] == sidecar_volumes(settings)
    (app,) = spec["containers"]
    env = {e["name"]: e["value"] for e in app["env"]}
    assert env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] == "http://127.0.0.1:8977"
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "placeholder"
    template = deployment["spec"]["template"]["metadata"]
    assert template["annotations"]["eks.amazonaws.com/skip-containers"] == app["name"]
    assert template["labels"]["query-signing-proxy.io/sidecar"] == "true"


def test_the_component_files_render_with_a_deployment_of_ours(tmp_path: Path) -> None:
    kustomization = yaml.safe_load(named_block("kustomization.yaml"))
    assert kustomization["components"] == ["../query-signing-proxy/deploy/components/sidecar"]
    kustomization["components"] = [os.path.relpath(ROOT / "deploy" / "components" / "sidecar", tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    (tmp_path / "query-signing-proxy-settings.yaml").write_text(named_block("query-signing-proxy-settings.yaml"))
    (tmp_path / "proxy.yaml").write_text(named_block("proxy.yaml"))
    deployment: dict[str, Any] = yaml.safe_load(named_block("deployment.yaml, by hand"))
    template = deployment["spec"]["template"]
    template["metadata"] = {"labels": {"app": "web"}}
    template["spec"] = {
        "serviceAccountName": "web",
        "containers": [{"name": "web", "image": "registry.example.com/shop/web:2.4.1"}],
    }
    deployment["metadata"]["labels"] = {"query-signing-proxy.io/sidecar": "true"}
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    docs = render_dir(tmp_path)
    for doc in docs:
        validate(doc, NATIVE_MIN)
    rendered = one(docs, "Deployment")["spec"]["template"]
    by_hand = yaml.safe_load(named_block("deployment.yaml, by hand"))["spec"]["template"]
    assert rendered["spec"]["initContainers"] == by_hand["spec"]["initContainers"]
    assert rendered["metadata"]["annotations"] == by_hand["metadata"]["annotations"]
    env = {e["name"]: e["value"] for e in rendered["spec"]["containers"][0]["env"]}
    assert env == {e["name"]: e["value"] for e in by_hand["spec"]["containers"][0]["env"]}


def test_the_iam_policy_commands_run(tmp_path: Path) -> None:
    (tmp_path / "proxy.yaml").write_text(named_block("proxy.yaml"))
    ran = 0
    for line in commands(TEXT):
        if not line.startswith("query-signing-proxy iam-policy"):
            continue
        argv = shlex.split(line.split(" > ")[0])
        env = clean_aws_environ() | {"AWS_REGION": "eu-west-1"}
        out = subprocess.run([console_script(), *argv[1:]], capture_output=True, text=True, cwd=tmp_path, env=env)
        if "--source-role" in argv:
            assert out.returncode == 2 and "credentials.role_arn" in out.stderr  # the example config chains no role
            continue
        assert out.returncode == 0, (line, out.stderr)
        assert yaml.safe_load(out.stdout)["Version"] == "2012-10-17"
        ran += 1
    assert ran == 3


def test_the_kubectl_commands_name_what_exists() -> None:
    lines = commands(TEXT)
    for line in lines:
        for path in re.findall(r"(deploy/[\w./-]+)", line):
            assert (ROOT / path).exists(), line
        if line.startswith("kubectl apply -k deploy/"):
            assert render_dir(ROOT / line.split()[3])
        if " -p " in line:
            payload = shlex.split(line)[-1].replace("$(cat ca-bundle.txt)", "Q0E=")
            yaml.safe_load(payload)  # JSON is YAML
    assert "kubectl label namespace shop query-signing-proxy.io/injection=enabled" in lines


@pytest.mark.parametrize("name", ["proxy.yaml"])
def test_the_example_config_checks(name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_text(named_block(name))
    env = clean_aws_environ() | {"AWS_REGION": "eu-west-1"}
    out = subprocess.run(
        [console_script(), "check-config", str(tmp_path / name)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
