"""The operator's own objects (``shoal k8s operator-manifests``): a ServiceAccount, the RBAC
it needs, and a Deployment running ``shoal operator``.

- Watching every namespace (the default): a ClusterRole and a ClusterRoleBinding.
- Watching given namespaces (``watch=["ml", ...]``): a Role and a RoleBinding in each, and
  nothing cluster-wide (kopf runs with resource scanning off, so it needs no access to
  namespaces or CRDs).

The rules are exactly what the operator does: read and watch ShoalServices and write their
status; update their ``finalizers`` (what setting ``blockOwnerDeletion`` in an owner reference
needs where OwnerReferencesPermissionEnforcement is on, as on OpenShift; the operator adds no
finalizer); get, list, create, patch and delete the kinds ``render`` produces
(:data:`~shoal.deploy.operator.client.RESOURCES`); create events. The CRD itself is
``shoal k8s crd``, applied once by a cluster administrator.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..crd import GROUP, PLURAL
from ..pod import container_security
from ..spec import RUN_AS_USER
from .client import RESOURCES

NAME = "shoal-operator"
LIVENESS_PORT = 8080


def rules() -> list[dict[str, Any]]:
    owned: dict[str, set[str]] = defaultdict(set)
    for api_version, _kind in RESOURCES:
        group = api_version.rpartition("/")[0]
        owned[group].add(RESOURCES[(api_version, _kind)])
    out: list[dict[str, Any]] = [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch",
                                                                            "update"]},
        # The owner references it sets say blockOwnerDeletion: with the
        # OwnerReferencesPermissionEnforcement admission plugin (OpenShift) that needs
        # update on the owner's finalizers, else every create is refused (403).
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
    ]
    for group in sorted(owned):
        out.append({"apiGroups": [group], "resources": sorted(owned[group]),
                    "verbs": ["get", "list", "create", "patch", "update", "delete"]})
    out.append({"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
                "verbs": ["create"]})
    return out


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "operator",
            "app.kubernetes.io/part-of": "shoal"}


def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = _labels()
    return meta


def operator_manifests(*, image: str, namespace: str = "shoal-system",
                       watch: list[str] | None = None, storage_secret: str | None = None,
                       resync: float = 30.0) -> list[dict[str, Any]]:
    """The operator's ServiceAccount, RBAC and Deployment, in ``namespace``.

    ``watch``: the namespaces it reconciles ShoalServices in (``None``: all).
    ``storage_secret``: a Secret whose keys become the operator's environment
    (``AWS_ACCESS_KEY_ID``, ...), to read the repositories it renders; or give the
    ServiceAccount workload identity (IRSA, GKE Workload Identity) instead.
    """
    subject = {"kind": "ServiceAccount", "name": NAME, "namespace": namespace}
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, namespace)},
    ]
    if watch is None:
        objects += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": _meta(NAME), "rules": rules()},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": _meta(NAME),
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": NAME},
             "subjects": [subject]},
        ]
        scope = ["--all-namespaces"]
    else:
        scope = []
        for ns in watch:
            scope += ["--namespace", ns]
            objects += [
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": _meta(NAME, ns), "rules": rules()},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": _meta(NAME, ns),
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": NAME},
                 "subjects": [subject]},
            ]
    container: dict[str, Any] = {
        "name": "operator",
        "image": image,
        "command": ["shoal", "operator", *scope, "--resync", f"{resync:g}",
                    "--liveness", f"http://0.0.0.0:{LIVENESS_PORT}/healthz"],
        "env": [{"name": "SHOAL_CACHE_DIR", "value": "/cache"}],
        "ports": [{"name": "health", "containerPort": LIVENESS_PORT, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"},
                          "initialDelaySeconds": 10, "periodSeconds": 30,
                          "timeoutSeconds": 10, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                      "limits": {"memory": "512Mi"}},
        "securityContext": {**container_security(), "readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    if storage_secret:
        container["envFrom"] = [{"secretRef": {"name": storage_secret}}]
    selector = {"app.kubernetes.io/name": NAME}
    objects.append({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(NAME, namespace),
        "spec": {
            "replicas": 1,  # standalone: one operator at a time
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": _labels()},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER,
                                        "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "cache", "emptyDir": {}},
                                {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    })
    return objects
