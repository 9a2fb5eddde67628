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
from .spec import DeploySpec, quantity

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


def _pod_selector(spec: DeploySpec, deployment: str) -> str:
    namespace = f'namespace="{spec.namespace}",' if spec.namespace else ""
    # A Deployment's pods are NAME-<template hash>-<5 characters>.
    return f'{namespace}pod=~"{deployment}-[a-z0-9]+-[a-z0-9]{{5}}"'


def concurrency_query(spec: DeploySpec, deployment: str) -> str:
    return f"sum({IN_FLIGHT_METRIC}{{{_pod_selector(spec, deployment)}}})"


def gpu_query(spec: DeploySpec, deployment: str) -> str:
    return f"avg({DCGM_METRIC}{{{_pod_selector(spec, deployment)}}})"


def hpa(spec: DeploySpec, deployment: str, labels: dict[str, str]) -> dict[str, Any]:
    scaling = spec.autoscaling()
    if spec.metric == "cpu":
        if "cpu" not in spec.resources().get("requests", {}):
            from .spec import RenderError

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


def scaled_object(spec: DeploySpec, deployment: str, labels: dict[str, str]) -> dict[str, Any]:
    scaling = spec.autoscaling()
    if spec.metric == "gpu":
        trigger = {"type": "prometheus", "name": "gpu-utilisation", "metadata": {
            "serverAddress": spec.prometheus_url, "query": gpu_query(spec, deployment),
            "threshold": str(spec.gpu_target)}}
    elif spec.metric == "cpu":
        trigger = {"type": "cpu", "name": "cpu", "metricType": "Utilization",
                   "metadata": {"value": str(spec.cpu_target)}}
    else:
        trigger = {"type": "prometheus", "name": "requests-in-flight", "metadata": {
            "serverAddress": spec.prometheus_url, "query": concurrency_query(spec, deployment),
            "threshold": _number(scaling.target_concurrency)}}
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": spec.metadata(deployment, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": max(1, scaling.max_replicas),
            "pollingInterval": 15,
            "cooldownPeriod": math.ceil(scaling.scale_to_zero_after),
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
                "stabilizationWindowSeconds": min(math.ceil(scaling.stable_window), 3600)}}}},
            "triggers": [trigger],
        },
    }
