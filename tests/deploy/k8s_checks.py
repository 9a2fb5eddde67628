"""Offline checks of rendered Kubernetes objects (there is no API server here).

- Built-in kinds: ``kubernetes-validate --strict`` (unknown fields fail) for Kubernetes 1.30
  and the newest version it ships.
- Knative, Istio, KEDA and prometheus-operator objects: their cloudcoil typed models, which
  check types but *drop* unknown fields, so every field that does not survive a round trip
  through the model is reported as unknown; plus the rules those models do not know
  (annotation values, one port, weights summing to 100, subsets that select pods, ...), most
  taken from Knative's own webhook validation.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
from cloudcoil.models.istio.networking import v1 as istio
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.knative_serving.serving import v1 as knative
from cloudcoil.models.prometheus_operator import v1 as prometheus

K8S_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
BUILTIN = {
    ("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"), ("v1", "Pod"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
}
TYPED: dict[tuple[str, str], Any] = {
    ("serving.knative.dev/v1", "Service"): knative.Service,
    ("networking.istio.io/v1", "VirtualService"): istio.VirtualService,
    ("networking.istio.io/v1", "DestinationRule"): istio.DestinationRule,
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): prometheus.PodMonitor,
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
GO_DURATION = re.compile(r"^(\d+(\.\d+)?(h|m|s|ms))+$")


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["apiVersion"], obj["kind"]


def validate_builtin(obj: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def dropped_fields(given: Any, kept: Any, path: str = "") -> list[str]:
    """Fields of ``given`` that the typed model did not keep (it ignores unknown fields)."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "."]
        out = []
        for name, value in given.items():
            if name not in kept:
                out.append(f"{path}.{name}")
            else:
                out += dropped_fields(value, kept[name], f"{path}.{name}")
        return out
    if isinstance(given, list):
        if not isinstance(kept, list) or len(kept) != len(given):
            return [path]
        return [p for i, (a, b) in enumerate(zip(given, kept)) for p in dropped_fields(a, b, f"{path}[{i}]")]
    return []


def _without_resources(obj: Any) -> Any:
    """cloudcoil's Knative model types a quantity as ``int | str`` with a *pattern* on the int
    branch, which pydantic cannot apply (any quantity pydantic can read as an int, "2" or
    "1.0", raises TypeError: a bug of the generated model). The typed check leaves the
    containers' ``resources`` out; the Pod validation of the same containers
    (:func:`check_knative`) checks them."""
    if isinstance(obj, dict):
        return {k: _without_resources(v) for k, v in obj.items() if k != "resources"}
    if isinstance(obj, list):
        return [_without_resources(v) for v in obj]
    return obj


def validate_typed(obj: dict[str, Any]) -> None:
    if key(obj) == ("serving.knative.dev/v1", "Service"):
        obj = _without_resources(obj)
    model = TYPED[key(obj)].model_validate(obj)
    kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    unknown = dropped_fields(obj, kept)
    assert not unknown, f"{obj['kind']} {obj['metadata']['name']}: unknown fields {unknown}"


def validate(objects: list[dict[str, Any]]) -> None:
    """Every check that applies to each object, and the references between them."""
    for obj in objects:
        assert DNS_LABEL.fullmatch(obj["metadata"]["name"]), obj["metadata"]["name"]
        if key(obj) in BUILTIN:
            validate_builtin(obj)
        elif key(obj) in TYPED:
            validate_typed(obj)
        else:
            raise AssertionError(f"no check for {key(obj)}")
        if key(obj) == ("serving.knative.dev/v1", "Service"):
            check_knative(obj)
    check_references(objects)
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), names


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_references(objects: list[dict[str, Any]]) -> None:
    deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for d in deployments.values():
        assert selects(d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])
        container = d["spec"]["template"]["spec"]["containers"][0]
        port_names = {p["name"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in port_names
    for svc in [o for o in objects if key(o) == ("v1", "Service")]:
        matched = [labels for labels in pod_labels if selects(svc["spec"]["selector"], labels)]
        assert matched, "the Service selects no pods"
        for d in deployments.values():
            if selects(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]):
                names = {p["name"] for p in d["spec"]["template"]["spec"]["containers"][0]["ports"]}
                assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names
    for scaler in by_kind(objects, "HorizontalPodAutoscaler") + by_kind(objects, "ScaledObject"):
        assert scaler["spec"]["scaleTargetRef"]["name"] in deployments
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        assert any(selects(pdb["spec"]["selector"]["matchLabels"], labels) for labels in pod_labels)
    rules = by_kind(objects, "DestinationRule")
    for vs in by_kind(objects, "VirtualService"):
        (rule,) = rules
        subsets = {s["name"]: s["labels"] for s in rule["spec"]["subsets"]}
        assert len(subsets) == len(rule["spec"]["subsets"])
        for labels in subsets.values():
            assert sum(selects(labels, p) for p in pod_labels) == 1, labels
        assert vs["spec"]["hosts"] == [rule["spec"]["host"]]
        for route in vs["spec"]["http"]:
            weights = [d.get("weight", 100) for d in route["route"]]
            assert all(isinstance(w, int) and 0 <= w <= 100 for w in weights)
            assert sum(weights) == 100, weights
            for destination in route["route"]:
                assert destination["destination"]["subset"] in subsets
            if "mirror" in route:
                if "subset" in route["mirror"]:
                    assert route["mirror"]["subset"] in subsets
                assert 0 <= route["mirrorPercentage"]["value"] <= 100


# -- Knative: what its webhook checks (knative.dev/serving pkg/apis/serving/k8s_validation.go)
KNATIVE_RESERVED_PORTS = {8012, 8013, 8022, 9090, 9091, 8008}
KNATIVE_RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
KNATIVE_POD_FIELDS = {"serviceAccountName", "containers", "initContainers", "volumes",
                      "containerConcurrency", "timeoutSeconds", "imagePullSecrets",
                      "enableServiceLinks",
                      "tolerations"}  # tolerations: kubernetes.podspec-tolerations
KNATIVE_CONTAINER_FIELDS = {"name", "args", "command", "env", "workingDir", "envFrom", "image",
                            "imagePullPolicy", "livenessProbe", "ports", "readinessProbe",
                            "resources", "securityContext", "terminationMessagePath",
                            "terminationMessagePolicy", "volumeMounts", "startupProbe"}
KNATIVE_SECURITY_FIELDS = {"capabilities", "readOnlyRootFilesystem", "runAsGroup",
                           "runAsNonRoot", "runAsUser", "allowPrivilegeEscalation",
                           "seccompProfile"}
AUTOSCALING = "autoscaling.knative.dev/"


def seconds(duration: str) -> float:
    assert GO_DURATION.fullmatch(duration), duration
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ms|h|m|s)", duration))


def check_knative(svc: dict[str, Any]) -> None:
    template = svc["spec"]["template"]
    pod = template["spec"]
    name = svc["metadata"]["name"]
    revision = template["metadata"].get("name")
    if revision is not None:
        assert revision.startswith(name + "-") and len(revision) <= 63
        assert DNS_LABEL.fullmatch(revision)
    assert set(pod) <= KNATIVE_POD_FIELDS, set(pod) - KNATIVE_POD_FIELDS
    (container,) = pod["containers"]
    assert set(container) <= KNATIVE_CONTAINER_FIELDS, set(container) - KNATIVE_CONTAINER_FIELDS
    for c in [container, *pod.get("initContainers", [])]:
        assert set(c.get("securityContext", {})) <= KNATIVE_SECURITY_FIELDS
        assert "add" not in c.get("securityContext", {}).get("capabilities", {})
        assert not {e["name"] for e in c.get("env", [])} & KNATIVE_RESERVED_ENV
    for c in pod.get("initContainers", []):
        assert not {"livenessProbe", "readinessProbe", "startupProbe", "lifecycle"} & set(c)
    (port,) = container["ports"]  # one port across all containers
    assert port.get("name", "") in {"", "h2c", "http1"}
    assert port["containerPort"] not in KNATIVE_RESERVED_PORTS
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = container[probe_name]
        probe_port = probe["httpGet"].get("port")
        assert probe_port is None or isinstance(probe_port, int) or probe_port == port.get("name")
        if not probe.get("periodSeconds"):
            assert "failureThreshold" not in probe and "timeoutSeconds" not in probe
    mounted = {m["name"] for c in [container, *pod.get("initContainers", [])]
               for m in c.get("volumeMounts", [])}
    assert {v["name"] for v in pod.get("volumes", [])} == mounted
    assert pod.get("containerConcurrency", 0) >= 0
    # The same containers as a core Pod: strict Kubernetes validation of every container field.
    # Knative's defaulting gives a probe without a port the container's port first.
    core = copy.deepcopy({k: v for k, v in pod.items()
                          if k not in ("containerConcurrency", "timeoutSeconds")})
    for probe_name in ("readinessProbe", "livenessProbe"):
        core["containers"][0][probe_name]["httpGet"].setdefault("port", port["containerPort"])
    validate_builtin({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "knative"}, "spec": core})
    check_knative_annotations(template["metadata"].get("annotations", {}))
    traffic = svc["spec"].get("traffic", [])
    assert sum(t["percent"] for t in traffic) == 100
    assert all(isinstance(t["percent"], int) and 0 <= t["percent"] <= 100 for t in traffic)
    tags = [t["tag"] for t in traffic if "tag" in t]
    assert len(tags) == len(set(tags)) and all(DNS_LABEL.fullmatch(t) for t in tags)
    for t in traffic:
        assert ("revisionName" in t) != bool(t.get("latestRevision"))
        if "revisionName" in t:
            assert t["revisionName"].startswith(name + "-") and len(t["revisionName"]) <= 63


def check_knative_annotations(annotations: dict[str, str]) -> None:
    assert all(isinstance(v, str) for v in annotations.values())
    ours = {k.removeprefix(AUTOSCALING): v for k, v in annotations.items() if k.startswith(AUTOSCALING)}
    known = {"class", "metric", "target", "min-scale", "max-scale", "window",
             "panic-window-percentage", "panic-threshold-percentage",
             "scale-to-zero-pod-retention-period", "initial-scale", "target-utilization-percentage"}
    assert set(ours) <= known, set(ours) - known
    assert ours.get("class") in (None, "kpa.autoscaling.knative.dev")
    assert ours.get("metric") in (None, "concurrency", "rps")
    if "target" in ours:
        assert float(ours["target"]) >= 0.01
    low = int(ours.get("min-scale", "0"))
    high = int(ours.get("max-scale", "0"))
    assert low >= 0 and high >= 0 and (high == 0 or low <= high)
    if "window" in ours:
        assert 6 <= seconds(ours["window"]) <= 3600
    if "panic-window-percentage" in ours:
        assert 1 <= float(ours["panic-window-percentage"]) <= 100
    if "panic-threshold-percentage" in ours:
        assert 110 <= float(ours["panic-threshold-percentage"]) <= 1000
    if "scale-to-zero-pod-retention-period" in ours:
        assert seconds(ours["scale-to-zero-pod-retention-period"]) >= 0
