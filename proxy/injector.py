"""The sidecar injector's pod mutation: a pod annotated ``query-signing-proxy.io/inject: "true"`` in, the same pod
with query-signing-proxy beside its containers out (docs/add-to-your-app.md; served by :mod:`proxy.webhook`).

Pure functions of the pod (a dict as the API server sends it in an AdmissionReview) and the injector's flags:
nothing is read from the cluster. The whole new pod is built and checked before anything is answered, so a pod
is injected completely or refused with one line naming what was wrong, never half-injected; :func:`json_patch`
turns the old and new pod into the RFC 6902 patch the API server applies.

The EKS pod identity webhook (IRSA and EKS Pod Identity) gives ``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``
or ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` + ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` and a projected token
mount to every container the pod's ``eks.amazonaws.com/skip-containers`` annotation does not name
(aws/amazon-eks-pod-identity-webhook, ``pkg/handler/handler.go``). Admission webhooks run in an order this
injector does not choose, and the injector is called again (``reinvocationPolicy: IfNeeded``) when a later
webhook changed the pod, so every call makes the same pod whatever ran before: the sidecar is added once; the
app containers are named in the skip annotation; and credentials the EKS webhook already gave to app containers
move to the sidecar (the app never holds them).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "query-signing-proxy.io/"
ANNOTATIONS = ("inject", "config-map", "image", "region", "wire-sdk", "mode", "proxy-port", "admin-port")
SIDECAR = "query-signing-proxy"
LABEL = PREFIX + "sidecar"  # on every pod with the sidecar: what the PodMonitor selects
CONFIG_VOLUME = "query-signing-proxy-config"
TMP_VOLUME = "query-signing-proxy-tmp"
CONFIG_DIR = "/etc/query-signing-proxy"
CONFIG_KEY = "proxy.yaml"  # the ConfigMap's key holding the proxy's config
ADMIN_PORT_NAME = "qsp-admin"
UID = 65532  # the image's user and group (Dockerfile)
PLACEHOLDER = "placeholder"  # the SDK insists on signing; the proxy drops that signature and signs with the role
SKIP_CONTAINERS = "eks.amazonaws.com/skip-containers"
# What the EKS pod identity webhook gives a container: the credentials, and what comes along with them.
CREDENTIAL_ENV = (
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)
TOKEN_FILE_ENV = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
ALONG_ENV = ("AWS_STS_REGIONAL_ENDPOINTS", "AWS_REGION", "AWS_DEFAULT_REGION")
EKS_AUDIENCES = ("sts.amazonaws.com", "pods.eks.amazonaws.com")  # of the projected token volumes it adds
# Plain-container mode: kubelet sends SIGTERM to every container at once; the proxy's preStop hook holds its
# SIGTERM this long so the app's last requests still pass, then it drains within shutdown_grace_seconds (20).
CONTAINER_MODE_STOP_DELAY_SECONDS = 10
CONTAINER_MODE_GRACE_SECONDS = 40


class InjectionRefused(ValueError):
    """The pod cannot be injected as asked: ``str()`` is one line naming the annotation or field at fault.
    The webhook answers it with ``allowed: false`` and this message."""


@dataclass(frozen=True, slots=True)
class Defaults:
    """The injector's flags: what a pod gets when its annotations do not say otherwise."""

    image: str
    config_map: str = "query-signing-proxy"
    region: str | None = None
    proxy_port: int = 8977
    admin_port: int = 8978


@dataclass(frozen=True, slots=True)
class PodSettings:
    """The effective settings for one pod: the defaults with its annotations applied, all checked."""

    image: str
    config_map: str
    region: str | None
    proxy_port: int
    admin_port: int
    wire_sdk: bool
    mode: str  # "native" (an init container with restartPolicy: Always) or "container"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"


# ---------------------------------------------------------------------------------------------------------
# the annotations

# docker/distribution's reference grammar (reference/regexp.go): [domain/]path[:tag][@digest]; a domain is a
# first component holding "." or ":" or equal to "localhost".
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?)"
_IMAGE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$"
)
# RFC 1123 subdomain, as Kubernetes checks ConfigMap names (at most 253 characters).
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$")


def _shown(value: str, limit: int = 80) -> str:
    """A value for an error message: quoted, and cut to ``limit`` characters (a message is one short line)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def check_image(image: str, key: str) -> str:
    """``image`` if it is a container image reference that names its registry; InjectionRefused naming ``key``.

    A reference without a domain and without a ``/`` (``query-signing-proxy:0.1.0``) is pulled from Docker Hub
    as ``docker.io/library/...``, the registry's official images: refused, since it is almost always a
    placeholder that was never replaced (write ``docker.io/library/NAME`` if that is really meant). Grammar:
    docker/distribution's ``reference`` package.
    """
    m = _IMAGE.match(image)
    if m is None or len(image) > 4096:
        raise InjectionRefused(f"{key}: {_shown(image)} is not a container image reference")
    if m["domain"] is None and "/" not in m["path"]:
        raise InjectionRefused(
            f"{key}: {_shown(image)} names no registry, so it would be pulled from Docker Hub as docker.io/library/"
            f"{m['path']}; name the registry you pushed the image to (registry.example.com/query-signing-proxy:TAG)"
        )
    return image


def check_region(region: str, key: str) -> str:
    """``region`` if it is an AWS region name of a partition botocore knows (its endpoints data), else
    InjectionRefused naming ``key``."""
    from .partitions import partition_of_region

    if partition_of_region(region) is None:
        raise InjectionRefused(f"{key}: {_shown(region)} is not an AWS region name (such as eu-west-1)")
    return region


def check_config_map(name: str, key: str) -> str:
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise InjectionRefused(f"{key}: {_shown(name)} is not a ConfigMap name (lowercase RFC 1123 subdomain)")
    return name


def check_port(text: str, key: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise InjectionRefused(f"{key}: must be a port number from 1 to 65535, got {_shown(text)}")
    return int(text)


def _flag(value: str, key: str) -> bool:
    if value not in ("true", "false"):
        raise InjectionRefused(f'{key}: must be "true" or "false", got {_shown(value)}')
    return value == "true"


def settings_for(annotations: Mapping[str, str], defaults: Defaults) -> PodSettings | None:
    """The pod's settings from its annotations over ``defaults``; None when it does not ask for the sidecar.

    Every annotation under ``query-signing-proxy.io/`` is checked, on every pod (a misspelt one is refused,
    not ignored). Raises InjectionRefused naming the annotation: unknown name, non-string value, or a value
    out of its rule (docs/add-to-your-app.md has the table).
    """
    ours: dict[str, str] = {}
    for key, value in annotations.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :]
        if name not in ANNOTATIONS:
            known = ", ".join(PREFIX + a for a in ANNOTATIONS)
            raise InjectionRefused(f"{_shown(key, 120)[1:-1]}: unknown annotation (known: {known})")
        if not isinstance(value, str):
            raise InjectionRefused(f"{key}: must be a string")
        ours[name] = value
    inject = _flag(ours["inject"], PREFIX + "inject") if "inject" in ours else False
    image = check_image(ours["image"], PREFIX + "image") if "image" in ours else defaults.image
    config_map = defaults.config_map
    if "config-map" in ours:
        config_map = check_config_map(ours["config-map"], PREFIX + "config-map")
    region = check_region(ours["region"], PREFIX + "region") if "region" in ours else defaults.region
    proxy_port = check_port(ours["proxy-port"], PREFIX + "proxy-port") if "proxy-port" in ours else defaults.proxy_port
    admin_port = check_port(ours["admin-port"], PREFIX + "admin-port") if "admin-port" in ours else defaults.admin_port
    wire_sdk = _flag(ours["wire-sdk"], PREFIX + "wire-sdk") if "wire-sdk" in ours else True
    mode = ours.get("mode", "native")
    if mode not in ("native", "container"):
        raise InjectionRefused(f'{PREFIX}mode: must be "native" or "container", got {_shown(mode)}')
    if proxy_port == admin_port:
        which = "admin-port" if "admin-port" in ours else "proxy-port"
        raise InjectionRefused(f"{PREFIX}{which}: the Query port and the admin port are both {proxy_port}")
    if not inject:
        return None
    if wire_sdk and region is None:
        raise InjectionRefused(
            f"{PREFIX}region: SDK apps need the region the proxy signs for, and the injector has no --region; "
            f'set the annotation, or {PREFIX}wire-sdk: "false"'
        )
    return PodSettings(image, config_map, region, proxy_port, admin_port, wire_sdk, mode)


# ---------------------------------------------------------------------------------------------------------
# the pod


def _list(parent: dict[str, Any], key: str, where: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InjectionRefused(f"{where}: must be a list of objects")
    return value


def _dict(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InjectionRefused(f"{where}: must be an object")
    return value


def _names(containers: list[dict[str, Any]]) -> list[str]:
    return [str(c.get("name", "")) for c in containers]


def has_sidecar(spec: dict[str, Any]) -> bool:
    """True when the pod already runs the proxy (injected before, or added by the kustomize component or by
    hand): a container or init container named ``query-signing-proxy``."""
    return SIDECAR in _names(_list(spec, "initContainers", "spec.initContainers") + _list(spec, "containers", ""))


def sidecar_container(settings: PodSettings) -> dict[str, Any]:
    """The proxy's container: the config from the ConfigMap, ``--listen``/``--admin-listen`` from the settings
    (so the ports the probes use are the ports it serves), probes on the admin port, the image's hardening."""
    probe = {"httpGet": {"port": ADMIN_PORT_NAME}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": SIDECAR,
        "image": settings.image,
        "args": [
            "--config",
            f"{CONFIG_DIR}/{CONFIG_KEY}",
            "--listen",
            f"127.0.0.1:{settings.proxy_port}",
            "--admin-listen",
            f"0.0.0.0:{settings.admin_port}",
        ],
        "ports": [{"name": ADMIN_PORT_NAME, "containerPort": settings.admin_port, "protocol": "TCP"}],
        # up to 2 minutes to obtain credentials; a native sidecar holds the app's start until this passes
        "startupProbe": _probe(probe, "/readyz", periodSeconds=2, failureThreshold=60),
        "readinessProbe": _probe(probe, "/readyz"),
        "livenessProbe": _probe(probe, "/healthz"),
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"cpu": "1", "memory": "192Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
    }
    if settings.region is not None:
        container["env"] = [{"name": "AWS_REGION", "value": settings.region}]
    if settings.mode == "native":
        container["restartPolicy"] = "Always"
    else:
        container["lifecycle"] = {
            # kubelet starts the next container only once this hook returns: the app starts after the proxy is ready
            "postStart": {"exec": {"command": ["python", "-c", _WAIT_READY.format(port=settings.admin_port)]}},
            "preStop": {
                "exec": {"command": ["python", "-c", f"import time; time.sleep({CONTAINER_MODE_STOP_DELAY_SECONDS})"]}
            },
        }
    return container


_WAIT_READY = (
    "import time, urllib.request\n"
    "deadline = time.monotonic() + 60\n"
    "while time.monotonic() < deadline:\n"
    "    try:\n"
    "        urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=1)\n"
    "        break\n"
    "    except Exception:\n"
    "        time.sleep(0.5)\n"
)


def _probe(base: dict[str, Any], path: str, **overrides: int) -> dict[str, Any]:
    probe = copy.deepcopy(base)
    probe["httpGet"]["path"] = path
    probe.update(overrides)
    return probe


def sidecar_volumes(settings: PodSettings) -> list[dict[str, Any]]:
    """The config volume (the ConfigMap's ``proxy.yaml``; a missing key fails the pod's start visibly) and /tmp."""
    return [
        {
            "name": CONFIG_VOLUME,
            "configMap": {"name": settings.config_map, "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}]},
        },
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}},
    ]


def sdk_env(settings: PodSettings) -> list[dict[str, str]]:
    """What an AWS SDK in an app container needs to call Secrets Manager through the proxy: the endpoint
    (``AWS_ENDPOINT_URL_SECRETS_MANAGER``, read by every current AWS SDK), placeholder keys, the region."""
    env = [
        {"name": "AWS_ENDPOINT_URL_SECRETS_MANAGER", "value": settings.endpoint},
        {"name": "AWS_ACCESS_KEY_ID", "value": PLACEHOLDER},
        {"name": "AWS_SECRET_ACCESS_KEY", "value": PLACEHOLDER},
    ]
    if settings.region is not None:
        env += [
            {"name": "AWS_REGION", "value": settings.region},
            {"name": "AWS_DEFAULT_REGION", "value": settings.region},
        ]
    return env


def _set_env(container: dict[str, Any], entries: list[dict[str, str]], where: str) -> None:
    """Set each entry in the container's ``env``: a same-named entry is replaced where it stands, others appended."""
    env = _list(container, "env", f"{where}.env")
    for entry in entries:
        for i, existing in enumerate(env):
            if existing.get("name") == entry["name"]:
                env[i] = dict(entry)
                break
        else:
            env.append(dict(entry))
    container["env"] = env


def _check_room(spec: dict[str, Any], settings: PodSettings) -> None:
    """Refuse a pod whose names or ports the sidecar would collide with, whose loopback is the node's, or whose
    containers see each other's processes (the app would read the proxy's credentials through /proc)."""
    if spec.get("hostNetwork") is True:
        raise InjectionRefused(
            "spec.hostNetwork: the proxy's Query API listens on loopback, which a host-network pod shares with "
            "the whole node"
        )
    for key, whose in (("shareProcessNamespace", "every container of the pod"), ("hostPID", "the whole node")):
        if spec.get(key) is True:
            raise InjectionRefused(
                f"spec.{key}: the proxy's process would be visible to {whose}, and a process running as its user "
                "reads its files and memory through /proc (the service account token, the role's credentials)"
            )
    taken = {str(v.get("name")) for v in _list(spec, "volumes", "spec.volumes")}
    for name in (CONFIG_VOLUME, TMP_VOLUME):
        if name in taken:
            raise InjectionRefused(f"spec.volumes: the pod already has a volume named {name}")
    for kind in ("initContainers", "containers"):
        for c in _list(spec, kind, f"spec.{kind}"):
            for p in _list(c, "ports", f"spec.{kind}[{c.get('name')}].ports"):
                port = p.get("containerPort")
                for key, ours in (("proxy-port", settings.proxy_port), ("admin-port", settings.admin_port)):
                    if port == ours:
                        raise InjectionRefused(
                            f"{PREFIX}{key}: port {ours} is already declared by container {_shown(str(c.get('name')))}"
                        )
                if p.get("name") == ADMIN_PORT_NAME:
                    raise InjectionRefused(f"spec.{kind}[{c.get('name')}]: a port is already named {ADMIN_PORT_NAME}")


def _move_credentials(spec: dict[str, Any]) -> None:
    """Credentials the EKS pod identity webhook gave to app containers go to the sidecar (when it has none of
    its own) and leave the app containers: the variables, and the mount holding the token file."""
    init = _list(spec, "initContainers", "spec.initContainers")
    containers = _list(spec, "containers", "spec.containers")
    sidecar = next(c for c in init + containers if c.get("name") == SIDECAR)
    apps = [c for c in init + containers if c is not sidecar]
    donor_env: list[dict[str, Any]] = []
    donor_mounts: list[dict[str, Any]] = []
    for app in apps:
        env = _list(app, "env", f"container {app.get('name')} env")
        creds = [e for e in env if e.get("name") in CREDENTIAL_ENV]
        if not creds:
            continue
        token_dirs = [str(e.get("value", "")).rsplit("/", 1)[0] for e in creds if e.get("name") in TOKEN_FILE_ENV]
        mounts = _list(app, "volumeMounts", f"container {app.get('name')} volumeMounts")
        token_mounts = [m for m in mounts if m.get("mountPath") in token_dirs]
        if not donor_env:
            donor_env = creds + [e for e in env if e.get("name") in ALONG_ENV]
            donor_mounts = token_mounts
        app["env"] = [e for e in env if e.get("name") not in CREDENTIAL_ENV]
        if not app["env"]:
            del app["env"]
        if token_mounts:
            app["volumeMounts"] = [m for m in mounts if m not in token_mounts]
            if not app["volumeMounts"]:
                del app["volumeMounts"]
    sidecar_env = _list(sidecar, "env", "the sidecar's env")
    if donor_env and not any(e.get("name") in CREDENTIAL_ENV for e in sidecar_env):
        have = {e.get("name") for e in sidecar_env}
        sidecar["env"] = sidecar_env + [copy.deepcopy(e) for e in donor_env if e.get("name") not in have]
        mounts = _list(sidecar, "volumeMounts", "the sidecar's volumeMounts")
        have_mounts = {(m.get("name"), m.get("mountPath")) for m in mounts}
        sidecar["volumeMounts"] = mounts + [
            copy.deepcopy(m) for m in donor_mounts if (m.get("name"), m.get("mountPath")) not in have_mounts
        ]


def _check_credentials_reach(spec: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Refuse a pod the EKS webhook has already handled without giving anyone credentials: its token volume is
    there but no container holds the variables, because the pod's own skip annotation named every container.
    The EKS webhook is not called again, so the sidecar would never get them."""
    token_volumes = [
        v
        for v in _list(spec, "volumes", "spec.volumes")
        for source in (v.get("projected") or {}).get("sources") or []
        if isinstance(source, dict) and (source.get("serviceAccountToken") or {}).get("audience") in EKS_AUDIENCES
    ]
    sidecar = next(
        c for c in _list(spec, "initContainers", "") + _list(spec, "containers", "") if c.get("name") == SIDECAR
    )
    if token_volumes and not any(e.get("name") in CREDENTIAL_ENV for e in _list(sidecar, "env", "the sidecar's env")):
        listed = _dict(metadata, "annotations", "metadata.annotations").get(SKIP_CONTAINERS)
        raise InjectionRefused(
            f"metadata.annotations[{SKIP_CONTAINERS}]: {_shown(str(listed))} kept the EKS webhook, which has "
            "already run, from giving credentials to any container, so the proxy would have none; leave the "
            "annotation to the injector (it names the app containers itself)"
        )


def _skip_apps(metadata: dict[str, Any], spec: dict[str, Any]) -> None:
    """Name every app container (and init container) in ``eks.amazonaws.com/skip-containers``, keeping the
    names already there: the EKS webhook then gives IRSA / Pod Identity credentials to the sidecar alone."""
    names = _names(_list(spec, "initContainers", "spec.initContainers") + _list(spec, "containers", "spec.containers"))
    apps = [n for n in names if n and n != SIDECAR]
    annotations = _dict(metadata, "annotations", "metadata.annotations")
    listed = [n.strip() for n in str(annotations.get(SKIP_CONTAINERS, "")).split(",") if n.strip()]
    if SIDECAR in listed:
        raise InjectionRefused(f"metadata.annotations[{SKIP_CONTAINERS}]: names {SIDECAR}, which needs the credentials")
    wanted = listed + [n for n in apps if n not in listed]
    if wanted and wanted != listed:
        annotations[SKIP_CONTAINERS] = ",".join(wanted)
        metadata["annotations"] = annotations


def mutate(pod: dict[str, Any], defaults: Defaults) -> dict[str, Any]:
    """The pod as it must be admitted (a new dict; ``pod`` is not changed).

    A pod that does not ask for the sidecar comes back equal. One that asks gets, once: the sidecar (first among
    the init containers in ``native`` mode, first among the containers in ``container`` mode), its two volumes,
    ``fsGroup`` 65532 when the pod sets none (so the proxy can read the projected token), the label
    ``query-signing-proxy.io/sidecar: "true"`` and, unless ``wire-sdk`` is ``"false"``, the SDK variables in
    every other container. On every call, injected before or not: the skip annotation names every app
    container and EKS credentials found in app containers move to the sidecar.

    Raises InjectionRefused (one line naming the annotation or field) for a bad annotation, a pod shape the
    sidecar cannot join (host network, a volume, port or port name already taken), or a malformed pod.
    """
    metadata = _dict(pod, "metadata", "metadata")
    settings = settings_for(_dict(metadata, "annotations", "metadata.annotations"), defaults)
    if settings is None:
        return copy.deepcopy(pod)
    new = copy.deepcopy(pod)
    metadata, spec = new.setdefault("metadata", {}), _dict(new, "spec", "spec")
    new["spec"] = spec
    if not _list(spec, "containers", "spec.containers"):
        raise InjectionRefused("spec.containers: the pod has no containers")
    if not has_sidecar(spec):
        _check_room(spec, settings)
        if settings.wire_sdk:
            for kind in ("initContainers", "containers"):
                for c in _list(spec, kind, f"spec.{kind}"):
                    _set_env(c, sdk_env(settings), f"spec.{kind}[{c.get('name')}]")
        where = "initContainers" if settings.mode == "native" else "containers"
        spec[where] = [sidecar_container(settings)] + _list(spec, where, f"spec.{where}")
        spec["volumes"] = _list(spec, "volumes", "spec.volumes") + sidecar_volumes(settings)
        security = _dict(spec, "securityContext", "spec.securityContext")
        if security.get("fsGroup") is None:
            spec["securityContext"] = {**security, "fsGroup": UID}
        if settings.mode == "container":
            grace = spec.get("terminationGracePeriodSeconds")
            if not isinstance(grace, int) or grace < CONTAINER_MODE_GRACE_SECONDS:
                spec["terminationGracePeriodSeconds"] = CONTAINER_MODE_GRACE_SECONDS
        labels = _dict(metadata, "labels", "metadata.labels")
        metadata["labels"] = {**labels, LABEL: "true"}
        _move_credentials(spec)
        _check_credentials_reach(spec, metadata)
    else:
        _move_credentials(spec)
    _skip_apps(metadata, spec)
    return new


def json_patch(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 operations turning ``old`` into ``new``, one per changed field of ``metadata`` and ``spec``
    (each field replaced whole: the API server applies the patch to exactly the object it sent)."""
    ops: list[dict[str, Any]] = []
    for section in ("metadata", "spec"):
        before, after = old.get(section) or {}, new.get(section) or {}
        if section not in old and after:
            ops.append({"op": "add", "path": f"/{section}", "value": after})
            continue
        for key in sorted(set(before) | set(after)):
            path = f"/{section}/" + key.replace("~", "~0").replace("/", "~1")
            if key not in after:
                ops.append({"op": "remove", "path": path})
            elif key not in before:
                ops.append({"op": "add", "path": path, "value": after[key]})
            elif before[key] != after[key]:
                ops.append({"op": "replace", "path": path, "value": after[key]})
    return ops
