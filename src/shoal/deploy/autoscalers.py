"""``autoscaling:`` as Knative's KPA annotations, an HPA or a KEDA ScaledObject.

The mapping is the table at the end of ``docs/autoscaling.md``:

====================  ===========================================  =================================
Shoal                 Knative (KPA) annotation                     HPA / KEDA
====================  ===========================================  =================================
min_replicas          min-scale                                    minReplicas (>= 1) / minReplicaCount
max_replicas          max-scale                                    maxReplicas / maxReplicaCount
target_concurrency    target (metric: concurrency)                 shoal_requests_in_flight per pod
stable_window         window (6s-1h)                               scaleDown stabilizationWindowSeconds
panic_window          panic-window-percentage                      -
panic_threshold       panic-threshold-percentage (110-1000)        -
scale_to_zero_after   scale-to-zero-pod-retention-period           KEDA cooldownPeriod
====================  ===========================================  =================================
"""

from __future__ import annotations

import math
from typing import Any

from ..serving.autoscale.config import ResolvedAutoscaling
from .spec import DeploySpec, RenderError, quantity

KNATIVE = "autoscaling.knative.dev/"
#: Knative's bounds (``autoscaling.knative.dev/window`` 6s-1h; panic threshold 110%-1000%).
WINDOW_MIN, WINDOW_MAX = 6, 3600
PANIC_THRESHOLD_MIN, PANIC_THRESHOLD_MAX = 110.0, 1000.0
IN_FLIGHT_METRIC = "shoal_requests_in_flight"
DCGM_METRIC = "DCGM_FI_DEV_GPU_UTIL"


def _number(value: float) -> str:
    return f"{round(value, 3):g}"


def knative_annotations(scaling: ResolvedAutoscaling) -> dict[str, str]:
    window = min(max(round(scaling.stable_window), WINDOW_MIN), WINDOW_MAX)
    panic_pct = min(max(100.0 * scaling.panic_window / window, 1.0), 100.0)
    threshold = min(max(100.0 * scaling.panic_threshold, PANIC_THRESHOLD_MIN), PANIC_THRESHOLD_MAX)
    out = {
        KNATIVE + "class": "kpa.autoscaling.knative.dev",
        KNATIVE + "metric": "concurrency",
        KNATIVE + "target": _number(scaling.target_concurrency),
        KNATIVE + "min-scale": str(scaling.min_replicas),
        KNATIVE + "max-scale": str(scaling.max_replicas),
        KNATIVE + "window": f"{window}s",
        KNATIVE + "panic-window-percentage": _number(panic_pct),
        KNATIVE + "panic-threshold-percentage": _number(threshold),
    }
    if scaling.min_replicas == 0:
        retention = max(0, math.ceil(scaling.scale_to_zero_after - scaling.stable_window))
        out[KNATIVE + "scale-to-zero-pod-retention-period"] = f"{retention}s"
    return out


#: The pod labels the ServiceMonitor copies onto Shoal's series (``podTargetLabels``), as
#: Prometheus names them.
INSTANCE_SERIES_LABEL = "app_kubernetes_io_instance"
VERSION_SERIES_LABEL = "version"
#: Kubernetes truncates a generated pod name's prefix (``<ReplicaSet>-``) to 58 characters.
_GENERATED_PREFIX = 58


def _namespace(spec: DeploySpec, what: str) -> str:
    if not spec.namespace:
        raise RenderError(
            f"--autoscaler keda {what}: its Prometheus query selects the pods' series by "
            "namespace, so give --namespace (the namespace the objects are applied in)")
    return spec.namespace


def pod_name_pattern(deployment: str) -> str:
    """A regular expression for the names of a Deployment's pods: ``NAME-<template hash>-<5
    characters>``, or the truncated prefix and 5 characters when that is too long."""
    if len(deployment) + 12 <= _GENERATED_PREFIX:  # NAME-<hash of up to 10>-
        return f"{deployment}-[a-z0-9]+-[a-z0-9]{{5}}"
    prefix = f"{deployment}-"[:_GENERATED_PREFIX]
    return f"{prefix}[-a-z0-9]*"


def concurrency_query(spec: DeploySpec, deployment: str, unit_version: str | None = None) -> str:
    """The in-flight requests of one Deployment's pods, added up (KEDA's default
    ``AverageValue`` divides by the replicas: the threshold is per pod). The series are
    selected by the labels the rendered ServiceMonitor attaches (the namespace, and the pods'
    ``app.kubernetes.io/instance`` and, with ``--istio``, ``version`` labels), never by pod
    name: another namespace's pods and truncated pod names are not an issue."""
    namespace = _namespace(spec, "--metric concurrency")
    selector = f'namespace="{namespace}",{INSTANCE_SERIES_LABEL}="{spec.name}"'
    if unit_version is not None:
        selector += f',{VERSION_SERIES_LABEL}="{unit_version}"'
    return f"sum({IN_FLIGHT_METRIC}{{{selector}}})"


def gpu_query(spec: DeploySpec, deployment: str) -> str:
    """The GPU utilisation of one Deployment's pods' GPUs, added up (divided by the replicas
    by KEDA: the threshold is per pod). DCGM's own ``pod`` and ``namespace`` labels become
    ``exported_pod`` and ``exported_namespace`` when a ServiceMonitor scrapes dcgm-exporter
    (the target's own labels win); DCGM's series have no other label of the pod's."""
    namespace = _namespace(spec, "--metric gpu")
    return (f'sum({DCGM_METRIC}{{exported_namespace="{namespace}",'
            f'exported_pod=~"{pod_name_pattern(deployment)}"}})')


def hpa(spec: DeploySpec, deployment: str, labels: dict[str, str]) -> dict[str, Any]:
    scaling = spec.autoscaling()
    if spec.metric == "cpu":
        if "cpu" not in spec.resources().get("requests", {}):
            raise RenderError("--metric cpu: an HPA on CPU utilisation needs a CPU request: "
                              "set resources.cpu in the models' model.yaml")
        metric: dict[str, Any] = {"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": spec.cpu_target}}}
    else:
        metric = {"type": "Pods", "pods": {
            "metric": {"name": IN_FLIGHT_METRIC},
            "target": {"type": "AverageValue",
                       "averageValue": quantity(scaling.target_concurrency)}}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": spec.metadata(deployment, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            # An HPA cannot scale to zero: min_replicas 0 becomes 1 (use KEDA or Knative).
            "minReplicas": max(1, scaling.min_replicas),
            "maxReplicas": max(1, scaling.max_replicas, scaling.min_replicas),
            "metrics": [metric],
            "behavior": {"scaleDown": {
                "stabilizationWindowSeconds": min(math.ceil(scaling.stable_window), 3600)}},
        },
    }


def scaled_object(spec: DeploySpec, deployment: str, labels: dict[str, str],
                  unit_version: str | None = None) -> dict[str, Any]:
    """A ScaledObject for one Deployment; ``unit_version``: the ``version`` label that tells
    its pods from the other Deployments' of the same name (``--istio``), else None."""
    scaling = spec.autoscaling()
    min_replicas = scaling.min_replicas
    if spec.metric == "gpu":
        # Per pod: the target utilisation of each of the pod's GPUs, added up.
        trigger = {"type": "prometheus", "name": "gpu-utilisation", "metadata": {
            "serverAddress": spec.prometheus_url, "query": gpu_query(spec, deployment),
            "threshold": str(spec.gpu_target * max(1, spec.gpus()))}}
    elif spec.metric == "cpu":
        if "cpu" not in spec.resources().get("requests", {}):
            raise RenderError("--metric cpu: KEDA's cpu trigger (CPU utilisation) needs a CPU "
                              "request: set resources.cpu in the models' model.yaml")
        trigger = {"type": "cpu", "name": "cpu", "metricType": "Utilization",
                   "metadata": {"value": str(spec.cpu_target)}}
        # KEDA refuses minReplicaCount 0 with only CPU or memory triggers.
        min_replicas = max(1, min_replicas)
    else:
        trigger = {"type": "prometheus", "name": "requests-in-flight", "metadata": {
            "serverAddress": spec.prometheus_url,
            "query": concurrency_query(spec, deployment, unit_version),
            "threshold": _number(scaling.target_concurrency)}}
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": spec.metadata(deployment, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max(1, scaling.max_replicas, min_replicas),
            "pollingInterval": 15,
            "cooldownPeriod": math.ceil(scaling.scale_to_zero_after),
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
                "stabilizationWindowSeconds": min(math.ceil(scaling.stable_window), 3600)}}}},
            "triggers": [trigger],
        },
    }
