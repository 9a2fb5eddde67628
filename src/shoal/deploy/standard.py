"""``--mode standard``: Deployments, a Service, PodDisruptionBudgets, and an autoscaler each.

One Deployment per unit (:mod:`shoal.deploy.units`): ``NAME`` without ``--istio``,
``NAME-<version>`` with it (``fraud-v2``, ``fraud-v3``), so that a canary, a promotion or a
rollback changes Istio's routes and never restarts a Deployment. The Service ``NAME`` selects
every unit's pods (Istio's subsets pick among them by their ``version`` label).
"""

from __future__ import annotations

from typing import Any

from . import autoscalers
from .pod import mesh_annotations, pod_spec
from .spec import GRPC_PORT, HTTP_PORT, DeploySpec
from .units import Layout, Unit

ROLE_LABEL = "serving.shoal.io/role"


def deployment_name(spec: DeploySpec, unit: Unit) -> str:
    return f"{spec.name}-{unit.version}" if spec.istio else spec.name


def unit_labels(unit: Unit) -> dict[str, str]:
    return {"version": unit.version}


def service_selector(spec: DeploySpec) -> dict[str, str]:
    """Every pod of the deployment ``NAME``: ``app: NAME`` alone would also select another
    workload labelled ``app: NAME``; ``app.kubernetes.io/name: shoal`` and
    ``app.kubernetes.io/instance: NAME`` make it Shoal's pods of this deployment only."""
    return {"app": spec.name, "app.kubernetes.io/name": "shoal",
            "app.kubernetes.io/instance": spec.name}


def selector(spec: DeploySpec, unit: Unit) -> dict[str, str]:
    """A Deployment's selector cannot change: with ``--istio`` each version has a Deployment
    of its own (its selector includes the version); without, the one Deployment selects by
    name only, so a new version is a rolling update of it."""
    labels = service_selector(spec)
    return {**labels, "version": unit.version} if spec.istio else labels


def deployment(spec: DeploySpec, unit: Unit) -> dict[str, Any]:
    name = deployment_name(spec, unit)
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": spec.metadata(name, {**unit_labels(unit), ROLE_LABEL: unit.role}),
        "spec": {},
    }
    if spec.autoscaler == "none":
        body["spec"]["replicas"] = spec.replicas
    # With an autoscaler the replica count is the autoscaler's: not written here, so that
    # applying the manifests again does not reset it.
    body["spec"].update({
        "selector": {"matchLabels": selector(spec, unit)},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            # The selector's labels last: labels given by the user cannot unselect the pods.
            "metadata": {"labels": {**spec.base_labels(), **unit_labels(unit),
                                    **selector(spec, unit)},
                         **({"annotations": mesh_annotations(spec)} if spec.istio else {})},
            "spec": pod_spec(spec, unit, knative=False),
        },
    })
    return body


def service(spec: DeploySpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": spec.metadata(spec.name),
        "spec": {
            "type": "ClusterIP",
            "selector": service_selector(spec),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP",
                 "appProtocol": "http"},
                # h2c: gRPC over cleartext HTTP/2 (Istio and Gateway API read appProtocol).
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                 "appProtocol": "kubernetes.io/h2c"},
            ],
        },
    }


def disruption_budget(spec: DeploySpec, unit: Unit) -> dict[str, Any]:
    name = deployment_name(spec, unit)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": spec.metadata(name, unit_labels(unit)),
        "spec": {
            # At most one pod away at a time; never blocks a drain of a one-replica Deployment.
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(spec, unit)},
        },
    }


def service_monitor(spec: DeploySpec) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": spec.metadata(spec.name),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/instance": spec.name,
                                         "app.kubernetes.io/managed-by": "shoal"}},
            # The pods' labels that KEDA's query selects on (app_kubernetes_io_instance,
            # version), besides the namespace and pod every target has.
            "podTargetLabels": ["app.kubernetes.io/instance", "version"],
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
        },
    }


def render_standard(spec: DeploySpec, layout: Layout) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for unit in layout.units:
        objects.append(deployment(spec, unit))
    objects.append(service(spec))
    for unit in layout.units:
        objects.append(disruption_budget(spec, unit))
        name = deployment_name(spec, unit)
        labels = unit_labels(unit)
        if spec.autoscaler == "hpa":
            objects.append(autoscalers.hpa(spec, name, labels))
        elif spec.autoscaler == "keda":
            objects.append(autoscalers.scaled_object(
                spec, name, labels, unit.version if spec.istio else None))
    if spec.monitor:
        objects.append(service_monitor(spec))
    return objects
