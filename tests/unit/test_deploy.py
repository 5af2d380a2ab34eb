"""The Kubernetes manifests in deploy/: every file and every kustomization as ``kubectl kustomize`` renders it is
valid against the Kubernetes schema (kubernetes-validate, strict: unknown fields are errors), and the CRD objects
(cert-manager's Certificate and Issuer, the Prometheus Operator's PodMonitor) against models generated from their
CRD schemas. The sample pod is what docs/kubernetes.md promises (native sidecar or plain container, probes on
the admin listener, hardening, grace periods that cover the proxy's drain, one config that ``check-config``
accepts, SDK apps wired); the kustomize component joins a Deployment it has never seen; the injector's manifests
fit together; and no image can render as a Docker Hub ``library/`` name."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.cert_manager import v1 as cert_manager
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

from proxy.config import is_loopback
from proxy.injector import PodSettings, sidecar_container, sidecar_volumes
from tests.process import console_script

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPONENT = DEPLOY / "components" / "sidecar"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").exists())
NATIVE = {"native-sidecar", "pod-identity"}
KUSTOMIZATION = "kustomization.yaml"
PROXY = "query-signing-proxy"
SIDECAR_LABEL = "query-signing-proxy.io/sidecar"
SKIP = "eks.amazonaws.com/skip-containers"
# Native sidecars (restartPolicy on an init container) exist from Kubernetes 1.28 (beta, on by default, 1.29).
# The plain-container variant is for older clusters: it must validate on the oldest schema we have.
NATIVE_MIN, OLDEST, LATEST = "1.29.0", "1.25.0", kubernetes_validate.utils.latest_version()
POLICY_MIN = "1.30.0"  # ValidatingAdmissionPolicy in admissionregistration.k8s.io/v1
# CRD kinds: checked against the cloudcoil models generated from cert-manager's and the Prometheus Operator's CRDs.
CRD_MODELS: dict[tuple[str, str], Any] = {
    ("cert-manager.io/v1", "Certificate"): cert_manager.Certificate,
    ("cert-manager.io/v1", "Issuer"): cert_manager.Issuer,
    ("monitoring.coreos.com/v1", "PodMonitor"): prometheus_operator.PodMonitor,
}
# Not objects to apply: the component's strategic-merge patch (a partial Deployment).
PATCH_FILES = {COMPONENT / "sidecar.yaml"}


def test_the_overlays_are_there() -> None:
    assert set(OVERLAYS) == {"native-sidecar", "plain-container", "pod-identity"}


@functools.cache
def render_dir(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (CI has it and renders every kustomization)")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def render(overlay: str) -> list[dict[str, Any]]:
    return render_dir(DEPLOY / "overlays" / overlay)


def kustomizations() -> list[Path]:
    """Every directory of deploy/ that kustomize renders (components are rendered through what uses them)."""
    found = []
    for path in sorted(DEPLOY.rglob(KUSTOMIZATION)):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == "Kustomization":
            found.append(path.parent)
    return found


def manifest_files() -> list[Path]:
    """Every Kubernetes object file in deploy/ (not kustomizations, patches or the proxy's own config)."""
    files = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == KUSTOMIZATION or path in PATCH_FILES:
            continue
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if docs and all("apiVersion" in d and "kind" in d for d in docs):
            files.append(path)
    return files


def validate(doc: dict[str, Any], version: str = LATEST) -> None:
    """kubernetes-validate, strict, for Kubernetes' own kinds; the CRD models for the CRD kinds."""
    model = CRD_MODELS.get((doc["apiVersion"], doc["kind"]))
    if model is not None:
        validate_crd(model, doc)
        return
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')} on {version}: {exc.message}") from exc


def validate_crd(model: Any, doc: dict[str, Any]) -> None:
    """The object read by the model generated from its CRD's schema (types, enums, required fields) and written
    back: a field the schema does not have is dropped on the way, so the two differ (strict, like kubectl's
    server-side field validation)."""
    try:
        parsed = model.model_validate(doc)
    except ValueError as exc:
        raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')}: {exc}") from exc
    written = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert written == doc, f"{doc['kind']}/{doc['metadata'].get('name')}: fields its CRD does not have"


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_file_validates(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        validate(doc)


def test_manifest_files_were_found() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in manifest_files()}
    assert {"base/deployment.yaml", "injector/base/mutatingwebhook.yaml", "monitoring/podmonitor.yaml"} <= names
    assert "injector/cert-manager/certificate.yaml" in names


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_kustomization_renders_and_validates(path: Path) -> None:
    docs = render_dir(path)
    assert docs
    plain = path.name == "plain-container" or not any(
        "restartPolicy" in c
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"].get("initContainers", [])
    )
    oldest = OLDEST if plain else NATIVE_MIN
    if any(d["kind"].startswith("ValidatingAdmissionPolicy") for d in docs):
        oldest = POLICY_MIN  # GA (admissionregistration.k8s.io/v1) from 1.30: a layer of its own, for such clusters
    for version in (oldest, LATEST):
        for doc in docs:
            validate(doc, version)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_the_app_its_config_and_its_account(overlay: str) -> None:
    assert {d["kind"] for d in render(overlay)} == {"ServiceAccount", "ConfigMap", "Deployment"}


def test_the_schema_checks_are_real() -> None:
    """Validation rejects what it should: the native sidecar's field on a cluster that predates it, a typo,
    and a field a CRD does not have."""
    deployment = one(render("native-sidecar"), "Deployment")
    with pytest.raises(AssertionError, match="restartPolicy"):
        validate(deployment, "1.27.0")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["initContainers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(AssertionError, match="readOnlyRootFileSystem"):
        validate(broken)
    podmonitor = yaml.safe_load((DEPLOY / "monitoring" / "podmonitor.yaml").read_text())
    podmonitor["spec"]["podMetricsEndpoints"][0]["ports"] = "qsp-admin"
    with pytest.raises(AssertionError, match="fields its CRD does not have"):
        validate(podmonitor)
    certificate = one(render_dir(DEPLOY / "injector" / "cert-manager"), "Certificate", "query-signing-proxy-injector")
    certificate = yaml.safe_load(yaml.safe_dump(certificate))
    certificate["spec"]["privateKey"]["algorithm"] = "DSA"
    with pytest.raises(AssertionError, match="algorithm"):
        validate(certificate)


# ---------------------------------------------------------------------------------------------------------
# the sample pod


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def pod_of(overlay: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(render(overlay), "Deployment")["spec"]["template"]
    return spec


def proxy_container(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == PROXY]
    (container,) = found
    return container


def app_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] != PROXY]


def arg(container: dict[str, Any], flag: str) -> str:
    args: list[str] = container["args"]
    return args[args.index(flag) + 1]


def port_of(host_port: str) -> int:
    return int(host_port.rsplit(":", 1)[1])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def proxy_config(docs: list[dict[str, Any]], pod: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The proxy's config as the pod mounts it: (parsed, text)."""
    container = proxy_container(pod)
    config_path = arg(container, "--config")
    mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    configmap = one(docs, "ConfigMap", volume["configMap"]["name"])  # kustomize's hashed name, followed
    key = os.path.relpath(config_path, mount["mountPath"])
    assert volume["configMap"].get("items", [{"key": key, "path": key}]) == [{"key": key, "path": key}]
    text: str = configmap["data"][key]
    return yaml.safe_load(text), text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sidecar_kind(overlay: str) -> None:
    spec = pod_of(overlay)["spec"]
    if overlay in NATIVE:
        (init,) = spec["initContainers"]
        assert init["name"] == PROXY and init["restartPolicy"] == "Always"
        assert [c["name"] for c in spec["containers"]] == ["app"]
    else:
        assert not spec.get("initContainers")
        assert [c["name"] for c in spec["containers"]] == [PROXY, "app"]  # the proxy starts first
        proxy = spec["containers"][0]
        assert "restartPolicy" not in proxy
        assert "readyz" in str(proxy["lifecycle"]["postStart"])
        assert proxy["lifecycle"]["preStop"]["exec"]["command"][-1] == "import time; time.sleep(10)"


def test_one_config_for_every_overlay() -> None:
    """deploy/ holds one proxy config, deploy/base/proxy.yaml, and every overlay mounts it."""
    configs = [
        p
        for p in sorted(DEPLOY.rglob("*.yaml"))
        if any("upstream" in (d or {}) for d in yaml.safe_load_all(p.read_text()))
    ]
    assert configs == [DEPLOY / "base" / "proxy.yaml"]
    for overlay in OVERLAYS:
        assert proxy_config(render(overlay), pod_of(overlay))[1] == configs[0].read_text()


def run_check_config(text: str, region: str, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_REGION=region)  # the sidecar's AWS_REGION
    out = subprocess.run(
        [console_script(), "check-config", str(path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    effective: dict[str, Any] = yaml.safe_load(out.stdout)
    return effective


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_passes_check_config_with_the_pods_region(overlay: str, tmp_path: Path) -> None:
    pod = pod_of(overlay)
    _, text = proxy_config(render(overlay), pod)
    region = env_of(proxy_container(pod))["AWS_REGION"]
    assert run_check_config(text, region, tmp_path)["upstream"]["region"] == region
    proxy = proxy_container(pod)
    assert is_loopback(arg(proxy, "--listen").rsplit(":", 1)[0]), "the Query API must stay on loopback in the pod"
    assert arg(proxy, "--admin-listen").startswith("0.0.0.0:"), "kubelet and Prometheus reach the admin listener"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_scrape_annotations_use_the_admin_listener(overlay: str) -> None:
    pod = pod_of(overlay)
    container = proxy_container(pod)
    admin_port = port_of(arg(container, "--admin-listen"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"qsp-admin": admin_port}  # the Query API is on loopback: no container port for it
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
    assert pod["metadata"]["labels"][SIDECAR_LABEL] == "true"  # what the PodMonitor selects


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sdk_apps_are_wired_and_hold_no_credentials(overlay: str) -> None:
    """Every app container gets AWS_ENDPOINT_URL_SECRETS_MANAGER (the sidecar's --listen), placeholder keys and
    the proxy's region; the EKS webhook is told to skip every one of them."""
    pod = pod_of(overlay)
    proxy = proxy_container(pod)
    region = env_of(proxy)["AWS_REGION"]
    for app in app_containers(pod):
        env = env_of(app)
        assert env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] == f"http://{arg(proxy, '--listen')}"
        assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "placeholder"
        assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == region
        assert not {"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_SESSION_TOKEN"} & set(env)
    skipped = pod["metadata"]["annotations"][SKIP].split(",")
    assert sorted(skipped) == sorted(c["name"] for c in app_containers(pod))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hardening(overlay: str) -> None:
    spec = pod_of(overlay)["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["fsGroup"] == 65532  # the non-root proxy reads the projected token
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
    config, _ = proxy_config(render(overlay), pod_of(overlay))
    grace = pod_of(overlay)["spec"]["terminationGracePeriodSeconds"]
    delay = config.get("shutdown_delay_seconds", 0)
    pre_stop = 0
    if overlay not in NATIVE:  # a plain container gets SIGTERM with the app: its preStop hook holds the proxy's
        command = proxy_container(pod_of(overlay))["lifecycle"]["preStop"]["exec"]["command"][-1]
        pre_stop = int(re.fullmatch(r"import time; time\.sleep\((\d+)\)", command)[1])  # type: ignore[index]
        assert pre_stop > 0
    assert grace > pre_stop + delay + config.get("shutdown_grace_seconds", 20)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_account(overlay: str) -> None:
    docs = render(overlay)
    account = one(docs, "ServiceAccount")
    assert pod_of(overlay)["spec"]["serviceAccountName"] == account["metadata"]["name"]
    annotations = account["metadata"].get("annotations", {})
    if overlay == "pod-identity":
        assert "eks.amazonaws.com/role-arn" not in annotations  # the association lives in AWS
    else:
        assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


# ---------------------------------------------------------------------------------------------------------
# images: never Docker Hub's library/ by omission


# docker/distribution: a first path component with ".", ":" or equal to "localhost" is a registry host; a
# reference without one and without "/" resolves to docker.io/library/<name>.
def names_a_registry(image: str) -> bool:
    first, sep, _ = image.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def every_image() -> list[tuple[str, str]]:
    """(where, image) for every container image and the injector's sidecar image, in every kustomization."""
    found = []
    for path in kustomizations():
        for doc in render_dir(path):
            if doc["kind"] == "ConfigMap" and "sidecar-image" in doc.get("data", {}):
                found.append((f"{path.name}: {doc['metadata']['name']}", doc["data"]["sidecar-image"]))
            if doc["kind"] != "Deployment":
                continue
            spec = doc["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                found.append((f"{path.relative_to(DEPLOY)}: {c['name']}", c["image"]))
    return found


def test_no_image_renders_as_a_docker_hub_library_name() -> None:
    images = every_image()
    assert any(where.endswith(PROXY) for where, _ in images)
    for where, image in images:
        assert names_a_registry(image), f"{where}: {image} would be pulled from docker.io/library"


def test_the_registry_rule_refuses_the_old_placeholder() -> None:
    assert not names_a_registry("query-signing-proxy:0.1.0")
    assert not names_a_registry("query-signing-proxy")
    assert not names_a_registry("myorg/query-signing-proxy:0.1.0")  # docker.io/myorg, never meant here
    assert names_a_registry("registry.example.com/query-signing-proxy:0.1.0")
    assert names_a_registry("localhost:5000/query-signing-proxy")
    assert names_a_registry("111122223333.dkr.ecr.eu-west-1.amazonaws.com/qsp@sha256:" + "0" * 64)


# ---------------------------------------------------------------------------------------------------------
# the component over a Deployment it has never seen

FOREIGN = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders
  labels:
    app: orders
    query-signing-proxy.io/sidecar: "true"
spec:
  selector:
    matchLabels: {app: orders}
  template:
    metadata:
      labels: {app: orders}
    spec:
      securityContext: {runAsUser: 1000}
      initContainers:
        - name: migrate
          image: ghcr.io/example/orders:3.1
          args: ["migrate"]
      containers:
        - name: api
          image: ghcr.io/example/orders:3.1
          env:
            - {name: AWS_REGION, value: us-east-1}
            - {name: LOG_LEVEL, value: info}
          envFrom:
            - configMapRef: {name: orders}
          volumeMounts:
            - {name: cache, mountPath: /var/cache/orders}
        - name: metrics-exporter
          image: quay.io/prometheus/statsd-exporter:v0.27.1
      volumes:
        - name: cache
          emptyDir: {}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: redis
  labels: {app: redis}
spec:
  selector:
    matchLabels: {app: redis}
  template:
    metadata:
      labels: {app: redis}
    spec:
      containers:
        - name: redis
          image: docker.io/library/redis:7
"""
SETTINGS = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: query-signing-proxy-settings
  annotations:
    config.kubernetes.io/local-config: "true"
data:
  image: 111122223333.dkr.ecr.us-west-2.amazonaws.com/query-signing-proxy:0.1.0
  region: us-west-2
  app-containers: migrate,api,metrics-exporter
"""
OWN_CONFIG = """\
upstream: {service: secretsmanager}
policy:
  allow_actions: [GetSecretValue]
  allow_secrets: ["orders/*"]
"""


def operator_kustomization(tmp_path: Path, settings: bool = True) -> Path:
    """An operator's own directory: their Deployments, their settings, their proxy.yaml and the component."""
    (tmp_path / "deployment.yaml").write_text(FOREIGN)
    (tmp_path / "proxy.yaml").write_text(OWN_CONFIG)
    resources = ["deployment.yaml"]
    if settings:
        (tmp_path / "query-signing-proxy-settings.yaml").write_text(SETTINGS)
        resources.append("query-signing-proxy-settings.yaml")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
        "components": [os.path.relpath(COMPONENT, tmp_path)],
        "configMapGenerator": [{"name": PROXY, "files": ["proxy.yaml"]}],
    }
    (tmp_path / KUSTOMIZATION).write_text(yaml.safe_dump(kustomization))
    return tmp_path


def test_the_component_joins_a_deployment_it_has_never_seen(tmp_path: Path) -> None:
    docs = render_dir(operator_kustomization(tmp_path))
    for doc in docs:
        validate(doc, NATIVE_MIN)
        validate(doc, LATEST)
    redis = one(docs, "Deployment", "redis")
    assert [c["name"] for c in redis["spec"]["template"]["spec"]["containers"]] == ["redis"]  # not labelled
    assert "initContainers" not in redis["spec"]["template"]["spec"]
    pod = one(docs, "Deployment", "orders")["spec"]["template"]
    spec = pod["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [PROXY, "migrate"]
    assert [c["name"] for c in spec["containers"]] == ["api", "metrics-exporter"]
    proxy = proxy_container(pod)
    assert proxy["image"] == "111122223333.dkr.ecr.us-west-2.amazonaws.com/query-signing-proxy:0.1.0"
    assert env_of(proxy) == {"AWS_REGION": "us-west-2"}
    config, text = proxy_config(docs, pod)
    assert text == OWN_CONFIG
    assert config["policy"]["allow_secrets"] == ["orders/*"]
    api = next(c for c in spec["containers"] if c["name"] == "api")
    assert env_of(api) == {
        "AWS_REGION": "us-west-2",  # replaced where it stood: the app signs for the proxy's region
        "LOG_LEVEL": "info",
        "AWS_DEFAULT_REGION": "us-west-2",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://127.0.0.1:8977",
        "AWS_ACCESS_KEY_ID": "placeholder",
        "AWS_SECRET_ACCESS_KEY": "placeholder",
    }
    assert api["envFrom"] == [{"configMapRef": {"name": "orders"}}]
    assert pod["metadata"]["annotations"][SKIP] == "migrate,api,metrics-exporter"
    assert pod["metadata"]["labels"][SIDECAR_LABEL] == "true"
    assert spec["securityContext"] == {"runAsUser": 1000, "fsGroup": 65532}
    assert [v["name"] for v in spec["volumes"]] == [
        "query-signing-proxy-config",
        "query-signing-proxy-tmp",
        "cache",
    ]


@pytest.mark.parametrize("missing", ["query-signing-proxy-settings", "query-signing-proxy"])
def test_the_component_without_its_inputs_fails_to_render_naming_them(tmp_path: Path, missing: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    path = operator_kustomization(tmp_path, settings=missing != "query-signing-proxy-settings")
    if missing == PROXY:
        kustomization = yaml.safe_load((path / KUSTOMIZATION).read_text())
        del kustomization["configMapGenerator"]
        (path / KUSTOMIZATION).write_text(yaml.safe_dump(kustomization))
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and f"/{missing}" in out.stderr, out.stderr


def test_the_component_adds_the_same_sidecar_as_the_injector(tmp_path: Path) -> None:
    """Three paths, one pod: the kustomize component's sidecar and volumes are the injector's for the same
    settings (the by-hand path in docs/add-to-your-app.md is checked against the injector the same way)."""
    docs = render_dir(operator_kustomization(tmp_path))
    spec = one(docs, "Deployment", "orders")["spec"]["template"]["spec"]
    settings = PodSettings(
        image="111122223333.dkr.ecr.us-west-2.amazonaws.com/query-signing-proxy:0.1.0",
        config_map=PROXY,
        region="us-west-2",
        proxy_port=8977,
        admin_port=8978,
        wire_sdk=True,
        mode="native",
    )
    assert spec["initContainers"][0] == sidecar_container(settings)
    volumes = [v for v in spec["volumes"] if v["name"].startswith(PROXY)]
    config_map = one(docs, "ConfigMap")["metadata"]["name"]
    assert volumes[0]["configMap"].pop("name") == config_map
    expected = sidecar_volumes(settings)
    expected[0]["configMap"].pop("name")
    assert volumes == expected
    plain = render("plain-container")
    plain_proxy = one(plain, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    container_mode = sidecar_container(
        PodSettings(plain_proxy["image"], PROXY, "eu-west-1", 8977, 8978, True, "container")
    )
    assert plain_proxy == container_mode


# ---------------------------------------------------------------------------------------------------------
# the injector's manifests

INJECTOR = DEPLOY / "injector"


@pytest.fixture(scope="module")
def injector_root(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``injector_root(namespace)``: deploy/injector, or a copy with ``namespace:`` changed in both
    kustomizations as docs/add-to-your-app.md says."""

    def root(namespace: str) -> Path:
        if namespace == "query-signing-proxy":
            return INJECTOR
        copy = tmp_path_factory.mktemp("injector") / "injector"
        shutil.copytree(INJECTOR, copy)
        for kustomization in (copy / "base" / KUSTOMIZATION, copy / "cert-manager" / KUSTOMIZATION):
            text = kustomization.read_text()
            assert "\nnamespace: query-signing-proxy\n" in text
            kustomization.write_text(text.replace("\nnamespace: query-signing-proxy\n", f"\nnamespace: {namespace}\n"))
        return copy

    return root


def injector_docs(variant: str = "cert-manager", root: Path = INJECTOR) -> list[dict[str, Any]]:
    return render_dir(root / variant)


NAMESPACES = ["query-signing-proxy", "platform-webhooks"]


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_the_webhook_is_configured_as_the_docs_say(namespace: str, injector_root: Any) -> None:
    root = injector_root(namespace)
    base = injector_docs("base", root)
    assert one(base, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["service"]["namespace"] == namespace
    assert one(base, "Service")["metadata"]["namespace"] == namespace
    docs = injector_docs(root=root)
    (hook,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["failurePolicy"] == "Fail"
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["namespaceSelector"] == {"matchLabels": {"query-signing-proxy.io/injection": "enabled"}}
    deployment = one(docs, "Deployment")
    own_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (expression,) = hook["objectSelector"]["matchExpressions"]
    assert expression["operator"] == "NotIn" and own_labels[expression["key"]] in expression["values"]
    service = one(docs, "Service")
    target = hook["clientConfig"]["service"]
    assert (target["name"], target["namespace"], target["path"]) == (
        service["metadata"]["name"],
        service["metadata"]["namespace"],
        "/mutate",
    )
    (port,) = service["spec"]["ports"]
    assert target["port"] == port["port"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {p["name"] for p in container["ports"]} == {port["targetPort"]}
    assert service["spec"]["selector"].items() <= own_labels.items()
    assert deployment["spec"]["replicas"] >= 2
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_the_injectors_certificate_fits_its_service_and_its_webhook(namespace: str, injector_root: Any) -> None:
    root = injector_root(namespace)
    docs = injector_docs(root=root)
    service = one(docs, "Service")
    assert service["metadata"]["namespace"] == namespace
    name = service["metadata"]["name"]
    certificate = one(docs, "Certificate", name)
    assert f"{name}.{namespace}.svc" in certificate["spec"]["dnsNames"]
    deployment = one(docs, "Deployment")
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    webhook = one(docs, "MutatingWebhookConfiguration")
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{namespace}/{name}"
    issuer = one(docs, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert issuer["spec"]["ca"]["secretName"] == one(docs, "Certificate", f"{name}-ca")["spec"]["secretName"]
    assert "cert-manager.io/inject-ca-from" not in (
        one(injector_docs("base", root), "MutatingWebhookConfiguration")["metadata"].get("annotations") or {}
    )


def test_the_injectors_command_line_is_one_it_accepts() -> None:
    """The args with the ConfigMap's values put in, as kubelet expands $(VAR), parse and check."""
    from proxy.injector import check_config_map, check_image, check_region

    docs = injector_docs()
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    data = one(docs, "ConfigMap")["data"]
    values = {e["name"]: data[e["valueFrom"]["configMapKeyRef"]["key"]] for e in container["env"]}
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m[1]], a) for a in container["args"]]
    assert args[0] == "injector"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert set(flags) == {"--listen", "--tls-cert-file", "--tls-key-file", "--image", "--region", "--config-map"}
    check_image(flags["--image"], "--image")
    check_region(flags["--region"], "--region")
    check_config_map(flags["--config-map"], "--config-map")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert os.path.dirname(flags["--tls-cert-file"]) in mounts
    assert port_of(flags["--listen"]) == container["ports"][0]["containerPort"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS" and container[probe]["httpGet"]["path"] == "/healthz"


def test_the_podmonitor_scrapes_every_sidecar() -> None:
    (podmonitor,) = render_dir(DEPLOY / "monitoring")
    spec = podmonitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"]["matchLabels"] == {SIDECAR_LABEL: "true"}
    (endpoint,) = spec["podMetricsEndpoints"]
    proxy = proxy_container(pod_of("native-sidecar"))
    assert endpoint["port"] in {p["name"] for p in proxy["ports"]} and endpoint["path"] == "/metrics"
