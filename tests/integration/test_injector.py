"""The sidecar injector as the API server meets it: ``query-signing-proxy injector`` as a real process, real
AdmissionReview JSON over TLS (a trustme CA), each returned JSONPatch applied with the ``jsonpatch`` library to
pods that were not written for the injector, and every result validated against the Kubernetes schema
(kubernetes-validate, strict). The EKS pod identity webhook (tests/ekswebhook.py) runs before and after it."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import trustme
import yaml

from proxy.local import clean_aws_environ
from tests.ekswebhook import CREDENTIAL_NAMES, TOKEN_DIRS, eks_webhook
from tests.process import ProxyProcess
from tests.support import poll, raw_request

ROOT = Path(__file__).resolve().parents[2]
PODS = ROOT / "tests" / "data" / "pods"
IMAGE = "registry.example.com/query-signing-proxy:0.1.0"
REGION = "eu-west-1"
SIDECAR = "query-signing-proxy"
INJECT = {"query-signing-proxy.io/inject": "true"}
LATEST = kubernetes_validate.utils.latest_version()
NATIVE_MIN = "1.29.0"


def write_pair(ca: trustme.CA, directory: Path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "query-signing-proxy-injector.query-signing-proxy.svc")
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return str(cert_file), str(key_file)


class Injector:
    """``query-signing-proxy injector`` on a free loopback port, and a verifying TLS client for it."""

    def __init__(self, workdir: Path, ca: trustme.CA, *extra: str) -> None:
        self.workdir = workdir
        self.cert_file, self.key_file = write_pair(ca, workdir / "tls")
        args = ["injector", "--listen", "127.0.0.1:0", "--tls-cert-file", self.cert_file]
        args += ["--tls-key-file", self.key_file, "--image", IMAGE, "--region", REGION, *extra]
        self.process = ProxyProcess(args, workdir, env=clean_aws_environ())
        self.client = ssl.create_default_context(cafile=self.ca_file(ca))
        self.port = 0

    def ca_file(self, ca: trustme.CA) -> str:
        path = self.workdir / f"ca-{id(ca)}.pem"
        ca.cert_pem.write_to_path(str(path))
        return str(path)

    def __enter__(self) -> Injector:
        self.process.__enter__()

        def listening() -> dict[str, Any] | None:
            assert self.process.process is not None and self.process.process.poll() is None, self.log()
            return next((line for line in self.process.lines() if line.get("message") == "listening"), None)

        self.port = poll(listening, 60, "the injector's listening line")["port"]
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.__exit__(*exc)

    def log(self) -> str:
        return self.process.log_path.read_text()

    def post(self, body: bytes, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
        answer = raw_request(
            self.port,
            "POST",
            "/mutate",
            body,
            headers={"Host": "127.0.0.1", "Content-Type": "application/json"},
            ssl_context=context or self.client,
        )
        return answer.status, answer.body

    def review(self, pod: dict[str, Any], **request: Any) -> dict[str, Any]:
        """Send ``pod`` in an AdmissionReview as the API server does; the ``response`` object."""
        body = admission_review(pod, **request)
        status, answer = self.post(json.dumps(body).encode())
        assert status == 200, answer
        review = json.loads(answer)
        assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
        assert review["response"]["uid"] == body["request"]["uid"]
        response: dict[str, Any] = review["response"]
        return response

    def admit(self, pod: dict[str, Any], **request: Any) -> dict[str, Any]:
        """The pod after the injector's patch (which the answer must allow)."""
        response = self.review(pod, **request)
        assert response["allowed"] is True, response
        return apply(pod, response)


def admission_review(pod: dict[str, Any], **request: Any) -> dict[str, Any]:
    """An AdmissionReview for a pod CREATE, shaped as kube-apiserver sends it."""
    namespace = pod.get("metadata", {}).get("namespace", "default")
    body: dict[str, Any] = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": []},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }
    body["request"].update(request)
    return body


def apply(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    if "patch" not in response:
        assert "patchType" not in response
        return copy.deepcopy(pod)
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(pod, ops)  # type: ignore[no-any-return]


def validate(pod: dict[str, Any], version: str = LATEST) -> None:
    try:
        kubernetes_validate.validate(pod, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(
            f"{pod['metadata'].get('name') or pod['metadata'].get('generateName')}: {exc.message}"
        ) from exc


def annotated(pod: dict[str, Any], **annotations: str) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod.setdefault("metadata", {}).setdefault("annotations", {}).update(INJECT)
    pod["metadata"]["annotations"].update(
        {f"query-signing-proxy.io/{k.replace('_', '-')}": v for k, v in annotations.items()}
    )
    return pod


def load_pod(name: str) -> dict[str, Any]:
    pod: dict[str, Any] = yaml.safe_load((PODS / name).read_text())
    return pod


def sample_pod(overlay: str = "native-sidecar") -> dict[str, Any]:
    """The sample Deployment's pod as kustomize renders it: a pod with the sidecar added without the injector."""
    from tests.unit.test_deploy import one, render

    template = one(render(overlay), "Deployment")["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]}


FOREIGN_PODS = ["web-with-migrations.yaml", "worker-with-aws-env.yaml"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in containers(pod) if c["name"] == SIDECAR]
    return found


def apps(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in containers(pod) if c["name"] != SIDECAR]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    env = container.get("env", [])
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), f"{container['name']}: a variable set twice: {names}"
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def injector(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Injector]:
    with Injector(tmp_path_factory.mktemp("injector"), ca) as running:
        yield running


# ---------------------------------------------------------------------------------------------------------
# injection


@pytest.mark.parametrize("mode", ["native", "container"])
@pytest.mark.parametrize("name", FOREIGN_PODS)
def test_injects_pods_it_was_not_written_for(injector: Injector, name: str, mode: str) -> None:
    original = load_pod(name)
    pod = annotated(original, mode=mode)
    validate(pod)
    new = injector.admit(pod)
    validate(new, LATEST)
    if mode == "native":
        validate(new, NATIVE_MIN)
        assert new["spec"]["initContainers"][0]["name"] == SIDECAR  # before the pod's own init containers
        assert new["spec"]["initContainers"][0]["restartPolicy"] == "Always"
        assert [c["name"] for c in new["spec"]["containers"]] == [c["name"] for c in original["spec"]["containers"]]
    else:
        if not any("restartPolicy" in c for c in original["spec"].get("initContainers", [])):
            validate(new, "1.25.0")  # plain containers: for clusters before native sidecars
        first = new["spec"]["containers"][0]
        assert first["name"] == SIDECAR and "restartPolicy" not in first
        assert "readyz" in str(first["lifecycle"]["postStart"]) and "sleep(10)" in str(first["lifecycle"]["preStop"])
        assert new["spec"]["terminationGracePeriodSeconds"] >= 40
    sidecar = sidecar_of(new)
    assert sidecar["image"] == IMAGE
    assert env_of(sidecar) == {"AWS_REGION": REGION}
    assert sidecar["args"][sidecar["args"].index("--listen") + 1] == "127.0.0.1:8977"
    assert sidecar["args"][sidecar["args"].index("--admin-listen") + 1] == "0.0.0.0:8978"
    assert {p["containerPort"] for p in sidecar["ports"]} == {8978}
    volumes = {v["name"]: v for v in new["spec"]["volumes"]}
    assert volumes["query-signing-proxy-config"]["configMap"]["name"] == "query-signing-proxy"
    assert [v for v in new["spec"]["volumes"] if v["name"] in {x["name"] for x in original["spec"]["volumes"]}] == (
        original["spec"]["volumes"]
    )
    # every app container: as it was, plus the SDK wiring (same-named variables replaced where they stood)
    originals = {c["name"]: c for c in containers(original)}
    for app in apps(new):
        before = originals[app["name"]]
        assert {k: v for k, v in app.items() if k != "env"} == {k: v for k, v in before.items() if k != "env"}
        env = env_of(app)
        assert env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] == "http://127.0.0.1:8977"
        assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "placeholder"
        assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == REGION
        for variable, value in env_of(before).items():
            if not variable.startswith("AWS_"):
                assert env[variable] == value
    skipped = new["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"].split(",")
    assert sorted(skipped) == sorted(c["name"] for c in apps(new))
    assert new["metadata"]["labels"]["query-signing-proxy.io/sidecar"] == "true"
    fs_group = original["spec"].get("securityContext", {}).get("fsGroup")
    assert new["spec"]["securityContext"]["fsGroup"] == (fs_group if fs_group is not None else 65532)


def test_never_injects_twice(injector: Injector) -> None:
    once = injector.admit(annotated(load_pod("web-with-migrations.yaml")))
    response = injector.review(once)
    assert response["allowed"] is True and "patch" not in response


@pytest.mark.parametrize("overlay", ["native-sidecar", "plain-container", "pod-identity"])
def test_a_pod_already_carrying_the_sidecar_is_admitted_unchanged(injector: Injector, overlay: str) -> None:
    """The sample's pods got the sidecar from the kustomize component, not from the injector."""
    pod = annotated(sample_pod(overlay))
    response = injector.review(pod)
    assert response["allowed"] is True and "patch" not in response, response


def test_the_same_pod_without_the_annotation_or_with_false_is_left_alone(injector: Injector) -> None:
    pod = load_pod("web-with-migrations.yaml")
    declined = copy.deepcopy(pod)
    declined["metadata"]["annotations"]["query-signing-proxy.io/inject"] = "false"
    for candidate in (pod, declined):
        response = injector.review(candidate)
        assert response["allowed"] is True and "patch" not in response


def test_wire_sdk_false_leaves_the_app_environment_alone(injector: Injector) -> None:
    pod = annotated(load_pod("worker-with-aws-env.yaml"), wire_sdk="false")
    new = injector.admit(pod)
    validate(new)
    for app in apps(new):
        assert app.get("env") == next(c for c in containers(pod) if c["name"] == app["name"]).get("env")


def test_annotations_override_the_flags(injector: Injector) -> None:
    pod = annotated(
        load_pod("web-with-migrations.yaml"),
        image="123456789012.dkr.ecr.us-west-2.amazonaws.com/qsp:0.2.0",
        config_map="shop-proxy",
        region="us-west-2",
        proxy_port="9977",
        admin_port="9978",
    )
    new = injector.admit(pod)
    validate(new)
    sidecar = sidecar_of(new)
    assert sidecar["image"] == "123456789012.dkr.ecr.us-west-2.amazonaws.com/qsp:0.2.0"
    assert "127.0.0.1:9977" in sidecar["args"] and "0.0.0.0:9978" in sidecar["args"]
    assert sidecar["ports"][0]["containerPort"] == 9978
    assert {v["name"]: v for v in new["spec"]["volumes"]}["query-signing-proxy-config"]["configMap"][
        "name"
    ] == "shop-proxy"
    for app in apps(new):
        assert env_of(app)["AWS_ENDPOINT_URL_SECRETS_MANAGER"] == "http://127.0.0.1:9977"
        assert env_of(app)["AWS_REGION"] == "us-west-2"


def test_a_dry_run_is_answered_like_any_other(injector: Injector) -> None:
    pod = annotated(load_pod("web-with-migrations.yaml"))
    assert apply(pod, injector.review(pod, dryRun=True)) == apply(pod, injector.review(pod))


def test_other_kinds_and_operations_pass_untouched(injector: Injector) -> None:
    pod = annotated(load_pod("web-with-migrations.yaml"))
    for request in (
        {"operation": "UPDATE", "oldObject": pod},
        {"kind": {"group": "", "version": "v1", "kind": "ConfigMap"}},
        {"kind": {"group": "apps", "version": "v1", "kind": "Pod"}},
    ):
        response = injector.review(pod, **request)
        assert response["allowed"] is True and "patch" not in response


# ---------------------------------------------------------------------------------------------------------
# refusals: one line naming the annotation or field, and never a patch


REFUSALS = [
    ({"query-signing-proxy.io/injekt": "true"}, "query-signing-proxy.io/injekt: unknown annotation"),
    ({"query-signing-proxy.io/mode": "sidecar"}, "query-signing-proxy.io/mode"),
    ({"query-signing-proxy.io/wire-sdk": "yes"}, "query-signing-proxy.io/wire-sdk"),
    ({"query-signing-proxy.io/inject": "True"}, "query-signing-proxy.io/inject"),
    ({"query-signing-proxy.io/proxy-port": "70000"}, "query-signing-proxy.io/proxy-port"),
    ({"query-signing-proxy.io/admin-port": "8977"}, "query-signing-proxy.io/admin-port"),
    ({"query-signing-proxy.io/admin-port": "8000"}, "query-signing-proxy.io/admin-port: port 8000 is already declared"),
    ({"query-signing-proxy.io/image": "query-signing-proxy:0.1.0"}, "docker.io/library/query-signing-proxy"),
    ({"query-signing-proxy.io/image": "Registry.example.com/UPPER:1"}, "query-signing-proxy.io/image"),
    ({"query-signing-proxy.io/region": "eu-westish-1x"}, "query-signing-proxy.io/region"),
    ({"query-signing-proxy.io/config-map": "Not_A_Name"}, "query-signing-proxy.io/config-map"),
]


@pytest.mark.parametrize(
    ("annotations", "named"), REFUSALS, ids=[r[1].split(":")[0] + "-" + str(i) for i, r in enumerate(REFUSALS)]
)
def test_a_bad_annotation_refuses_the_pod_naming_it(
    injector: Injector, annotations: dict[str, str], named: str
) -> None:
    pod = annotated(load_pod("web-with-migrations.yaml"))
    pod["metadata"]["annotations"].update(annotations)
    response = injector.review(pod)
    assert response["allowed"] is False and "patch" not in response and "patchType" not in response
    message = response["status"]["message"]
    assert named in message and "\n" not in message
    assert response["status"]["code"] == 400


def test_a_misspelt_annotation_is_refused_even_without_inject(injector: Injector) -> None:
    pod = load_pod("web-with-migrations.yaml")
    pod["metadata"]["annotations"]["query-signing-proxy.io/injection"] = "true"
    response = injector.review(pod)
    assert response["allowed"] is False and "query-signing-proxy.io/injection" in response["status"]["message"]


def test_host_network_pods_are_refused(injector: Injector) -> None:
    pod = annotated(load_pod("worker-with-aws-env.yaml"))
    pod["spec"]["hostNetwork"] = True
    response = injector.review(pod)
    assert response["allowed"] is False and "spec.hostNetwork" in response["status"]["message"]


@pytest.mark.parametrize("key", ["shareProcessNamespace", "hostPID"])
def test_pods_whose_containers_see_each_others_processes_are_refused(injector: Injector, key: str) -> None:
    """With a shared process namespace, an app running as the proxy's user (65532: distroless's nonroot) reads
    /proc/<proxy>/root/var/run/secrets/eks.amazonaws.com/serviceaccount/token and the proxy's memory: it would
    hold the role's credentials after all."""
    pod = annotated(load_pod("worker-with-aws-env.yaml"))
    pod["spec"][key] = True
    response = injector.review(pod)
    assert response["allowed"] is False and f"spec.{key}" in response["status"]["message"]
    pod["spec"][key] = False
    assert injector.review(pod)["allowed"] is True


def test_a_malformed_pod_is_refused_not_crashed_on(injector: Injector) -> None:
    weird_volume = {"containers": [{"name": "a"}], "volumes": [{"name": ["x"], "emptyDir": {}}]}
    response = injector.review(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"annotations": INJECT}, "spec": weird_volume}
    )
    assert "allowed" in response  # answered (the API server refuses the name later), not a 500
    for spec in ({"containers": "web"}, {"containers": []}, {"containers": [{"name": "a", "env": {"A": "1"}}]}):
        response = injector.review(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"annotations": INJECT}, "spec": spec}
        )
        assert response["allowed"] is False and response["status"]["message"].startswith("query-signing-proxy: spec.")


def test_bodies_that_are_not_reviews_get_400(injector: Injector) -> None:
    good = admission_review(annotated(load_pod("web-with-migrations.yaml")))
    v1beta1 = good | {"apiVersion": "admission.k8s.io/v1beta1"}
    no_uid = good | {"request": {k: v for k, v in good["request"].items() if k != "uid"}}
    for body, says in (
        (b"{not json", b"not JSON"),
        (b'"\xff\xfe"', b"not JSON"),
        (json.dumps(v1beta1).encode(), b"admission.k8s.io/v1"),
        (json.dumps(no_uid).encode(), b"request.uid"),
        (b"[" * 100_000 + b"]" * 100_000, b"not JSON"),
    ):
        status, answer = injector.post(body)
        assert status == 400 and says in answer, answer
        assert answer.count(b"\n") == 1
    status, _ = injector.post(b" " * (9 * 1024 * 1024))
    assert status == 413
    assert injector.review(annotated(load_pod("web-with-migrations.yaml")))["allowed"] is True  # still serving


def test_the_log_has_one_line_per_review_and_no_pod_contents(injector: Injector) -> None:
    pod = annotated(load_pod("web-with-migrations.yaml"))
    pod["spec"]["containers"][0]["env"].append({"name": "API_TOKEN", "value": "s3cr3t-value-in-a-pod-spec"})
    injector.admit(pod)
    log = injector.log()
    assert "s3cr3t-value-in-a-pod-spec" not in log
    lines = [json.loads(line) for line in log.splitlines()]
    reviews = [line for line in lines if line.get("message") == "admission review"]
    assert reviews and {"uid", "namespace", "pod", "operation", "dry_run", "result"} <= set(reviews[-1])
    assert reviews[-1]["pod"] == "shop-web-7d9f8b6c5-*"


# ---------------------------------------------------------------------------------------------------------
# the EKS pod identity webhook, before and after


def chain(pod: dict[str, Any], injector: Injector, order: str, mode: str, honors_skip: bool = True) -> dict[str, Any]:
    """The pod after the mutating admission phase: the webhooks in ``order``; the injector
    (reinvocationPolicy: IfNeeded) once more when a webhook after it changed the pod."""

    def eks(p: dict[str, Any]) -> dict[str, Any]:
        return jsonpatch.apply_patch(p, eks_webhook(p, mode, honors_skip))  # type: ignore[no-any-return]

    if order == "eks-first":
        return injector.admit(eks(pod))
    injected = injector.admit(pod)
    after = eks(injected)
    return injector.admit(after) if after != injected else after


def check_credentials_reach_the_sidecar_only(pod: dict[str, Any], mode: str) -> None:
    sidecar_env = env_of(sidecar_of(pod))
    if mode == "irsa":
        assert sidecar_env["AWS_ROLE_ARN"].startswith("arn:aws:iam::")
        token = sidecar_env["AWS_WEB_IDENTITY_TOKEN_FILE"]
    else:
        assert sidecar_env["AWS_CONTAINER_CREDENTIALS_FULL_URI"].startswith("http://169.254.170.23/")
        token = sidecar_env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]
    mounts = {m["mountPath"]: m["name"] for m in sidecar_of(pod)["volumeMounts"]}
    token_dir = token.rsplit("/", 1)[0]
    assert token_dir in mounts
    assert mounts[token_dir] in {v["name"] for v in pod["spec"]["volumes"] if "projected" in v}
    for app in apps(pod):
        assert not CREDENTIAL_NAMES & set(env_of(app)), app["name"]
        assert not TOKEN_DIRS & {m["mountPath"] for m in app.get("volumeMounts", [])}, app["name"]


@pytest.mark.parametrize("mode", ["irsa", "pod-identity"])
@pytest.mark.parametrize("order", ["eks-first", "injector-first"])
@pytest.mark.parametrize("name", FOREIGN_PODS)
def test_credentials_reach_the_sidecar_whatever_order_the_webhooks_run_in(
    injector: Injector, name: str, order: str, mode: str
) -> None:
    pod = chain(annotated(load_pod(name)), injector, order, mode)
    validate(pod)
    validate(pod, NATIVE_MIN)
    check_credentials_reach_the_sidecar_only(pod, mode)
    assert len([c for c in containers(pod) if c["name"] == SIDECAR]) == 1
    # once settled, another round changes nothing
    assert "patch" not in injector.review(pod)


def test_both_orders_give_the_sidecar_the_same_credentials(injector: Injector) -> None:
    pod = annotated(load_pod("web-with-migrations.yaml"))
    first, second = (chain(pod, injector, order, "irsa") for order in ("eks-first", "injector-first"))
    wanted = CREDENTIAL_NAMES | {"AWS_STS_REGIONAL_ENDPOINTS", "AWS_REGION"}
    assert {k: v for k, v in env_of(sidecar_of(first)).items() if k in wanted} == {
        k: v for k, v in env_of(sidecar_of(second)).items() if k in wanted
    }


@pytest.mark.parametrize("mode", ["irsa", "pod-identity"])
def test_an_eks_webhook_that_ignores_the_skip_list_is_undone_on_reinvocation(injector: Injector, mode: str) -> None:
    """An older EKS webhook gives credentials to every container after the injector ran: the re-invocation
    moves them to the sidecar."""
    pod = chain(annotated(load_pod("web-with-migrations.yaml")), injector, "injector-first", mode, honors_skip=False)
    validate(pod)
    check_credentials_reach_the_sidecar_only(pod, mode)


# ---------------------------------------------------------------------------------------------------------
# the process: TLS files that change, bad flags, SIGTERM


def test_certificate_files_are_re_read_when_they_change(tmp_path: Path, ca: trustme.CA) -> None:
    with Injector(tmp_path, ca) as injector:
        pod = annotated(load_pod("web-with-migrations.yaml"))
        assert injector.review(pod)["allowed"] is True
        renewed = trustme.CA()
        new_client = ssl.create_default_context(cafile=injector.ca_file(renewed))
        staging = tmp_path / "staging"
        cert_file, key_file = write_pair(renewed, staging)
        # as kubelet updates a Secret volume: each file replaced whole
        os.replace(key_file, injector.key_file)
        os.replace(cert_file, injector.cert_file)

        def served_with_the_new_pair() -> bool:
            try:
                return injector.post(json.dumps(admission_review(pod)).encode(), new_client)[0] == 200
            except ssl.SSLError:
                return False

        poll(served_with_the_new_pair, 30, "the renewed certificate")
        with pytest.raises(ssl.SSLError):
            injector.post(b"{}", injector.client)  # the old CA no longer verifies it
        # a pair caught half-written is not loaded: the last good one keeps serving
        Path(injector.cert_file).write_text("-----BEGIN CERTIFICATE-----\ncut short")
        assert injector.post(json.dumps(admission_review(pod)).encode(), new_client)[0] == 200
        assert injector.post(json.dumps(admission_review(pod)).encode(), new_client)[0] == 200
        warnings = [line for line in injector.process.lines() if line.get("level") == "warning"]
        assert len([w for w in warnings if "certificate files do not load" in w["message"]]) == 1
        assert injector.process.stop() == 0


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--image", "query-signing-proxy:0.1.0"], "--image"),
        (["--region", "nowhere"], "--region"),
        (["--proxy-port", "8978"], "--admin-port"),
        (["--config-map", "UPPER"], "--config-map"),
        (["--listen", "localhost"], "--listen"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(tmp_path: Path, ca: trustme.CA, flags: list[str], says: str) -> None:
    injector = Injector(tmp_path, ca, *flags)
    with injector.process as process:
        assert process.process is not None
        assert process.process.wait(60) == 2
    assert says in injector.log()


def test_certificate_files_that_do_not_load_exit_2(tmp_path: Path, ca: trustme.CA) -> None:
    injector = Injector(tmp_path, ca)
    Path(injector.key_file).write_text("not a key")
    with injector.process as process:
        assert process.process is not None and process.process.wait(60) == 2
    assert "--tls-cert-file/--tls-key-file" in injector.log()


def test_the_self_signed_command_makes_a_pair_the_injector_serves_and_the_api_server_verifies(tmp_path: Path) -> None:
    """deploy/injector/self-signed-cert.sh (docs/add-to-your-app.md): the API server calls the Service's DNS name and
    verifies against the caBundle the script prints."""
    import socket
    import subprocess

    out = subprocess.run(
        ["sh", str(ROOT / "deploy" / "injector" / "self-signed-cert.sh"), str(tmp_path / "tls"), "shop-system"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    ca_bundle = base64.b64decode(out.stdout.strip())
    assert ca_bundle == (tmp_path / "tls" / "ca.crt").read_bytes()
    args = ["injector", "--listen", "127.0.0.1:0", "--tls-cert-file", str(tmp_path / "tls" / "tls.crt")]
    args += ["--tls-key-file", str(tmp_path / "tls" / "tls.key"), "--image", IMAGE]
    with ProxyProcess(args, tmp_path, env=clean_aws_environ()) as process:

        def listening() -> dict[str, Any] | None:
            return next((line for line in process.lines() if line.get("message") == "listening"), None)

        port = poll(listening, 60, "the injector's listening line")["port"]
        context = ssl.create_default_context(cadata=ca_bundle.decode())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="query-signing-proxy-injector.shop-system.svc") as tls:
                tls.sendall(
                    b"GET /healthz HTTP/1.1\r\nHost: query-signing-proxy-injector.shop-system.svc\r\nConnection: close\r\n\r\n"
                )
                assert tls.recv(64).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                context.wrap_socket(raw, server_hostname="query-signing-proxy-injector.other.svc")


def test_the_sidecar_the_injector_writes_starts_with_its_command_line(tmp_path: Path) -> None:
    """The sidecar's args (ports made free ones) with the sample's config and the sidecar's AWS_REGION: the proxy
    serves the Query API on loopback and the admin endpoints where --admin-listen says."""
    from proxy.injector import PodSettings, sidecar_container

    sidecar = sidecar_container(PodSettings(IMAGE, "query-signing-proxy", REGION, 8977, 8978, True, "native"))
    config = tmp_path / "proxy.yaml"
    config.write_text((ROOT / "deploy" / "base" / "proxy.yaml").read_text())
    args = [a.replace("/etc/query-signing-proxy/proxy.yaml", str(config)) for a in sidecar["args"]]
    args = [re.sub(r":89\d\d$", ":0", a).replace("0.0.0.0:", "127.0.0.1:") for a in args]
    env = clean_aws_environ() | {e["name"]: e["value"] for e in sidecar["env"]}
    with ProxyProcess(args, tmp_path, env=env) as process:
        line = process.wait_listening()
        assert line["host"] == "127.0.0.1" and line["admin_port"] not in (None, line["port"])
        process.wait_status(f"http://127.0.0.1:{line['admin_port']}/healthz", 200)
        process.wait_status(f"http://127.0.0.1:{line['admin_port']}/readyz", 503)  # no credentials here
        assert process.stop() == 0
    bad = ProxyProcess(["--config", str(config), "--admin-listen", "0.0.0.0"], tmp_path, env=env)
    with bad as process:
        assert process.process is not None and process.process.wait(60) == 2
    assert "--admin-listen: expected HOST:PORT" in (tmp_path / "stderr.log").read_text()


@pytest.mark.parametrize("mode", ["irsa", "pod-identity"])
def test_a_skip_annotation_of_the_pods_own_naming_every_container(injector: Injector, mode: str) -> None:
    """Written by hand before the injector existed (the old sample did). Injector first: the names are kept and
    the sidecar still gets the credentials. EKS webhook first: it gave them to no container and will not run
    again, so the pod is refused with a message naming the annotation, rather than started with a proxy that
    can never sign."""
    pod = annotated(load_pod("web-with-migrations.yaml"))
    pod["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"] = "nginx,web,migrate,wait-for-db"
    settled = chain(pod, injector, "injector-first", mode)
    check_credentials_reach_the_sidecar_only(settled, mode)
    assert settled["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"] == "nginx,web,migrate,wait-for-db"
    after_eks = jsonpatch.apply_patch(pod, eks_webhook(pod, mode))
    response = injector.review(after_eks)
    assert response["allowed"] is False and "patch" not in response
    assert "eks.amazonaws.com/skip-containers" in response["status"]["message"]


def test_refusal_messages_stay_short_whatever_the_value(injector: Injector) -> None:
    pod = annotated(load_pod("web-with-migrations.yaml"), image="x" * 5000, mode="y" * 5000)
    pod["metadata"]["annotations"]["query-signing-proxy.io/" + "z" * 300] = "1"
    response = injector.review(pod)
    assert response["allowed"] is False and len(response["status"]["message"]) < 600


# ---------------------------------------------------------------------------------------------------------
# deploy/injector/require-injection: the pods the injector never saw are refused (Kubernetes 1.30+)

REQUIRE_INJECTION = Path(__file__).resolve().parents[2] / "deploy" / "injector" / "require-injection"


def admitted_by_policy(pod: dict[str, Any]) -> bool:
    """The ValidatingAdmissionPolicy of deploy/injector/require-injection on ``pod`` as the API server runs it
    (CEL, by cel-python): True when it is not matched or every validation holds."""
    import celpy

    policy = next(
        d
        for d in yaml.safe_load_all((REQUIRE_INJECTION / "validatingadmissionpolicy.yaml").read_text())
        if d["kind"] == "ValidatingAdmissionPolicy"
    )
    env = celpy.Environment()
    activation = {"object": celpy.json_to_cel(pod)}

    def holds(expression: str) -> bool:
        return bool(env.program(env.compile(expression)).evaluate(activation))

    if not all(holds(c["expression"]) for c in policy["spec"]["matchConditions"]):
        return True
    return all(holds(v["expression"]) for v in policy["spec"]["validations"])


@pytest.mark.parametrize("mode", ["native", "container"])
def test_the_require_injection_policy_admits_what_the_injector_made_and_refuses_what_it_never_saw(
    injector: Injector, mode: str
) -> None:
    """A pod annotated for injection in a namespace the injector does not watch reaches the API server as it was
    written: without the sidecar and without the skip annotation, so the EKS webhook gives its app the role's
    credentials. The policy refuses exactly that pod, and admits the same pod once the injector has run."""
    for name in ("web-with-migrations.yaml", "worker-with-aws-env.yaml"):
        asked = annotated(load_pod(name), mode=mode)
        assert not admitted_by_policy(asked)  # the injector never saw it
        assert admitted_by_policy(injector.admit(asked))
        assert admitted_by_policy(load_pod(name))  # not annotated: not looked at
        assert admitted_by_policy(annotated(load_pod(name), inject="false"))
    assert admitted_by_policy(sample_pod() | {"metadata": {"annotations": INJECT}})  # the sidecar by another path
