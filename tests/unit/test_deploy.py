"""The Kubernetes manifests in deploy/: every file and every overlay as ``kubectl kustomize`` renders it is
valid against the Kubernetes schema (kubernetes-validate, strict: unknown fields are errors), and the pod
is what docs/kubernetes.md promises: native sidecar or plain container, probes on the admin listener, hardening,
grace periods that cover the proxy's drain, and a ConfigMap config that ``check-config`` accepts."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy import __version__
from proxy.config import is_loopback
from tests.process import console_script

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").exists())
NATIVE = {"native-sidecar", "pod-identity"}
KUSTOMIZATION = "kustomization.yaml"
PROXY = "query-signing-proxy"
# Native sidecars (restartPolicy on an init container) exist from Kubernetes 1.28 (beta, on by default, 1.29).
# The plain-container variant is for older clusters: it must validate on the oldest schema we have.
NATIVE_MIN, OLDEST, LATEST = "1.29.0", "1.25.0", kubernetes_validate.utils.latest_version()


def test_the_overlays_are_there() -> None:
    assert set(OVERLAYS) == {"native-sidecar", "plain-container", "pod-identity"}


@functools.cache
def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (CI has it and renders every overlay)")
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def manifest_files() -> list[Path]:
    """Every Kubernetes object file in deploy/ (not kustomizations, not the proxy's own config files)."""
    files = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == KUSTOMIZATION:
            continue
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if docs and all("apiVersion" in d and "kind" in d for d in docs):
            files.append(path)
    return files


def validate(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')} on {version}: {exc.message}") from exc


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_file_validates(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        validate(doc, LATEST)


def test_manifest_files_were_found() -> None:
    assert {p.name for p in manifest_files()} >= {"deployment.yaml", "serviceaccount.yaml"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_overlay_validates(overlay: str) -> None:
    docs = render(overlay)
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ConfigMap", "Deployment"}
    for version in (NATIVE_MIN if overlay in NATIVE else OLDEST, LATEST):
        for doc in docs:
            validate(doc, version)


def test_the_schema_check_is_real() -> None:
    """Validation rejects what it should: the native sidecar's field on a cluster that predates it, and a typo."""
    deployment = one(render("native-sidecar"), "Deployment")
    with pytest.raises(AssertionError, match="restartPolicy"):
        validate(deployment, "1.27.0")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["initContainers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(AssertionError, match="readOnlyRootFileSystem"):
        validate(broken, LATEST)


# ---------------------------------------------------------------------------------------------------------
# what the rendered pod must be


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def pod_of(overlay: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(render(overlay), "Deployment")["spec"]["template"]
    return spec


def proxy_container(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == PROXY]
    (container,) = found
    return container


def proxy_config(overlay: str) -> tuple[dict[str, Any], str]:
    """The proxy's config as the pod mounts it: (parsed, text)."""
    docs = render(overlay)
    pod = pod_of(overlay)
    container = proxy_container(pod)
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    configmap = one(docs, "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]  # kustomize's hashed name, followed
    text: str = configmap["data"][os.path.relpath(config_path, mount["mountPath"])]
    return yaml.safe_load(text), text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sidecar_kind(overlay: str) -> None:
    spec = pod_of(overlay)["spec"]
    if overlay in NATIVE:
        (init,) = spec["initContainers"]
        assert init["name"] == PROXY and init["restartPolicy"] == "Always"
        assert [c["name"] for c in spec["containers"]] == ["app"]
    else:
        assert "initContainers" not in spec
        assert [c["name"] for c in spec["containers"]] == [PROXY, "app"]  # the proxy starts first
        assert "restartPolicy" not in spec["containers"][0]
        assert "readyz" in str(spec["containers"][0]["lifecycle"]["postStart"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_passes_check_config(overlay: str, tmp_path: Path) -> None:
    _, text = proxy_config(overlay)
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    out = subprocess.run(
        [console_script(), "check-config", str(path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    effective = yaml.safe_load(out.stdout)
    assert is_loopback(effective["listen"]["host"]), "the Query API must stay on loopback in the pod"
    assert effective["admin"]["host"] == "0.0.0.0", "kubelet and Prometheus reach the admin listener on the pod IP"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_scrape_annotations_use_the_admin_listener(overlay: str) -> None:
    config, _ = proxy_config(overlay)
    admin_port = config["admin"]["port"]
    pod = pod_of(overlay)
    container = proxy_container(pod)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"admin": admin_port}  # the Query API is on loopback: no container port for it
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["startupProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == admin_port
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(admin_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    assert any(e["value"] == f"http://127.0.0.1:{config['listen']['port']}" for e in app["env"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hardening(overlay: str) -> None:
    spec = pod_of(overlay)["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec.get("initContainers", []) + spec["containers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    proxy = proxy_container(pod_of(overlay))
    assert {"cpu", "memory"} <= set(proxy["resources"]["limits"])
    # the read-only root filesystem leaves /tmp writable
    assert any(m["mountPath"] == "/tmp" for m in proxy["volumeMounts"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_the_drain(overlay: str) -> None:
    config, _ = proxy_config(overlay)
    grace = pod_of(overlay)["spec"]["terminationGracePeriodSeconds"]
    delay = config.get("shutdown_delay_seconds", 0)
    assert grace > config.get("shutdown_grace_seconds", 20) + delay
    if overlay in NATIVE:
        assert delay == 0  # kubelet stops a native sidecar after the app has exited
    else:
        assert delay > 0, "a plain second container gets SIGTERM with the app: keep serving its last requests"


def test_plain_container_config_differs_from_base_only_in_the_delay() -> None:
    base, _ = proxy_config("native-sidecar")
    plain, _ = proxy_config("plain-container")
    assert {k: v for k, v in plain.items() if k != "shutdown_delay_seconds"} == {
        k: v for k, v in base.items() if k != "shutdown_delay_seconds"
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_account_and_image(overlay: str) -> None:
    docs = render(overlay)
    account = one(docs, "ServiceAccount")
    assert pod_of(overlay)["spec"]["serviceAccountName"] == account["metadata"]["name"]
    annotations = account["metadata"].get("annotations", {})
    if overlay == "pod-identity":
        assert "eks.amazonaws.com/role-arn" not in annotations  # the association lives in AWS
    else:
        assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert proxy_container(pod_of(overlay))["image"] == f"{PROXY}:{__version__}"
    # only the proxy gets the web identity token and AWS_* variables from the EKS webhook
    assert pod_of(overlay)["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"] == "app"
