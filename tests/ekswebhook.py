"""What the EKS pod identity webhook does to a pod, for the injector's ordering tests: a foreign component the
injector must live with, written from its behaviour (aws/amazon-eks-pod-identity-webhook, pkg/handler/handler.go),
not a copy of our own code.

For every init container and container that ``eks.amazonaws.com/skip-containers`` does not name, it adds what
is missing of: ``AWS_STS_REGIONAL_ENDPOINTS``, the region (``AWS_DEFAULT_REGION`` and ``AWS_REGION`` unless one
is set), the credentials (IRSA: ``AWS_ROLE_ARN`` and ``AWS_WEB_IDENTITY_TOKEN_FILE``; Pod Identity:
``AWS_CONTAINER_CREDENTIALS_FULL_URI`` and ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE``) and the token mount;
and the projected token volume to the pod (first in the list), plus a label in Pod Identity mode. Its patch
replaces ``/spec/containers`` and ``/spec/initContainers`` whole, as the real one does.

``honors_skip=False`` plays an older webhook that gives credentials to every container.
"""

from __future__ import annotations

import copy
from typing import Any

ROLE_ARN = "arn:aws:iam::111122223333:role/shop-secrets-reader"
REGION = "eu-west-1"
IRSA = {
    "volume": "aws-iam-token",
    "mount": "/var/run/secrets/eks.amazonaws.com/serviceaccount",
    "token": "token",
    "audience": "sts.amazonaws.com",
    "env": ("AWS_ROLE_ARN", ROLE_ARN, "AWS_WEB_IDENTITY_TOKEN_FILE"),
}
POD_IDENTITY = {
    "volume": "eks-pod-identity-token",
    "mount": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount",
    "token": "eks-pod-identity-token",
    "audience": "pods.eks.amazonaws.com",
    "env": (
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "http://169.254.170.23/v1/credentials",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    ),
}
CREDENTIAL_NAMES = {"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"} | {
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
}
TOKEN_DIRS = {IRSA["mount"], POD_IDENTITY["mount"]}


def eks_webhook(pod: dict[str, Any], mode: str = "irsa", honors_skip: bool = True) -> list[dict[str, Any]]:
    """The JSON patch the EKS pod identity webhook answers for ``pod`` (``mode``: ``irsa`` or ``pod-identity``)."""
    how = IRSA if mode == "irsa" else POD_IDENTITY
    annotations = pod.get("metadata", {}).get("annotations", {})
    skip = {n.strip() for n in annotations.get("eks.amazonaws.com/skip-containers", "").split(",") if n.strip()}
    if not honors_skip:
        skip = set()
    spec = pod["spec"]
    token_file = f"{how['mount']}/{how['token']}"
    name_var, name_value, file_var = how["env"]

    def mutate(container: dict[str, Any]) -> dict[str, Any]:
        container = copy.deepcopy(container)
        if container["name"] in skip:
            return container
        env = container.get("env", [])
        names = {e["name"] for e in env}
        if "AWS_STS_REGIONAL_ENDPOINTS" not in names:
            env.append({"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"})
        if not names & {"AWS_REGION", "AWS_DEFAULT_REGION"}:
            env += [{"name": "AWS_DEFAULT_REGION", "value": REGION}, {"name": "AWS_REGION", "value": REGION}]
        if not names & {name_var, file_var}:
            env += [{"name": name_var, "value": name_value}, {"name": file_var, "value": token_file}]
        container["env"] = env
        mounts = container.get("volumeMounts", [])
        if not any(m["name"] == how["volume"] for m in mounts):
            mounts.append({"name": how["volume"], "readOnly": True, "mountPath": how["mount"]})
        container["volumeMounts"] = mounts
        return container

    ops: list[dict[str, Any]] = []
    if mode == "pod-identity":
        labels = pod.get("metadata", {}).get("labels")
        if labels is None:
            ops.append(
                {"op": "add", "path": "/metadata/labels", "value": {"eks.amazonaws.com/pod-identity": "enabled"}}
            )
        else:
            ops.append({"op": "add", "path": "/metadata/labels/eks.amazonaws.com~1pod-identity", "value": "enabled"})
    volume = {
        "name": how["volume"],
        "projected": {
            "sources": [
                {"serviceAccountToken": {"audience": how["audience"], "expirationSeconds": 86400, "path": how["token"]}}
            ]
        },
    }
    if not any(v["name"] == how["volume"] for v in spec.get("volumes", [])):
        if "volumes" in spec:
            ops.append({"op": "add", "path": "/spec/volumes/0", "value": volume})
        else:
            ops.append({"op": "add", "path": "/spec/volumes", "value": [volume]})
    ops.append({"op": "add", "path": "/spec/containers", "value": [mutate(c) for c in spec["containers"]]})
    if spec.get("initContainers"):
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [mutate(c) for c in spec["initContainers"]]})
    return ops
