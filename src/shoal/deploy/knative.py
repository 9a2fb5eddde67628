"""``--mode knative``: one Knative Service; a canary is a revision of its own.

- The revision template carries the KPA annotations (:func:`~shoal.deploy.autoscalers.knative_annotations`),
  ``containerConcurrency`` (the models' ``max_inflight`` added up, when every model sets
  one) and one port: REST on 8080 (``http1``), or gRPC on 8081 named ``h2c`` with
  ``--protocol grpc`` (Knative routes one port per Service).
- Revision names are content-addressed: ``NAME-<version>-<hash of the template>``. Applying
  the same render again changes nothing, a changed setting makes a new revision (Knative
  refuses a changed template under an old name), and the stable revision a canary's traffic
  block names is the one the same settings rendered without the canary: the revision that
  is running.
- With a canary the template is the canary's; ``traffic`` sends ``100 - percent`` to the
  stable revision (tag ``stable``) and ``percent`` to the canary (tag ``canary``), each also
  reachable at its tag's own URL. Without one, all traffic goes to the latest revision.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

from ..serving.autoscale.config import AutoscalingConfig, ResolvedAutoscaling
from .autoscalers import knative_annotations
from .pod import pod_spec
from .spec import DeploySpec
from .units import DeployWarning, Layout, Unit

#: Knative's revision names are DNS labels.
MAX_NAME = 63


def scaling(spec: DeploySpec) -> ResolvedAutoscaling:
    if spec.autoscaling_override is None and not any(m.autoscaling for m in spec.models):
        # No autoscaling: block: Shoal's meaning, a fixed count (--replicas).
        return AutoscalingConfig(min_replicas=spec.replicas,
                                 max_replicas=max(spec.replicas, 1)).resolved()
    return spec.autoscaling()


def template(spec: DeploySpec, unit: Unit) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "labels": {"app": spec.name, "version": unit.version},
            "annotations": knative_annotations(scaling(spec)),
        },
        "spec": pod_spec(spec, unit, knative=True),
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:7]
    prefix = f"{spec.name}-{unit.version}"[: MAX_NAME - len(digest) - 1].rstrip("-")
    body["metadata"] = {"name": f"{prefix}-{digest}", **body["metadata"]}
    return body


def knative_service(spec: DeploySpec, layout: Layout) -> dict[str, Any]:
    stable = layout.unit("stable")
    canary = layout.unit("canary")
    assert stable is not None
    current = template(spec, canary or stable)
    if canary is None:
        traffic: list[dict[str, Any]] = [{"latestRevision": True, "percent": 100}]
    else:
        percent = float(layout.canary_percent or 0.0)
        whole = round(percent)
        if whole != percent:
            warnings.warn(f"Knative splits traffic in whole percents: the canary gets {whole}%, "
                          f"not {percent:g}%", DeployWarning, stacklevel=2)
        stable_revision = spec.stable_revision or template(spec, stable)["metadata"]["name"]
        traffic = [
            {"revisionName": stable_revision, "percent": 100 - whole, "tag": "stable"},
            {"revisionName": current["metadata"]["name"], "percent": whole, "tag": "canary"},
        ]
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": spec.metadata(spec.name),
        "spec": {"template": current, "traffic": traffic},
    }


def pod_monitor(spec: DeploySpec) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": spec.metadata(spec.name),
        "spec": {
            "selector": {"matchLabels": {"serving.knative.dev/service": spec.name}},
            # The REST port (where /metrics is), whichever port Knative routes to.
            "podMetricsEndpoints": [{"targetPort": 8080, "path": "/metrics", "interval": "15s"}],
        },
    }


def render_knative(spec: DeploySpec, layout: Layout) -> list[dict[str, Any]]:
    objects = [knative_service(spec, layout)]
    if spec.monitor:
        objects.append(pod_monitor(spec))
    return objects
