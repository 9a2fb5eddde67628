"""``--istio``: a VirtualService that splits and mirrors, and a DestinationRule whose subsets
are the units' ``version`` labels.

The canary's share is a weighted route (weights are whole percents summing to 100); the
shadow is Istio's ``mirror`` with ``mirrorPercentage``: Envoy sends the copy and drops its
answer, off the client's path, as Shoal's own mirror does. The routes cover both the REST and
the gRPC port of the Service (Istio applies an HTTP route on every port of the host it
routes; gRPC is HTTP/2 to Istio).
"""

from __future__ import annotations

import warnings
from typing import Any
from urllib.parse import urlsplit

from .spec import DeploySpec
from .units import DeployWarning, Layout

API = "networking.istio.io/v1"


def _host(spec: DeploySpec) -> str:
    return f"{spec.name}.{spec.namespace}.svc.cluster.local" if spec.namespace else spec.name


def virtual_service(spec: DeploySpec, layout: Layout) -> dict[str, Any]:
    host = _host(spec)
    stable = layout.unit("stable")
    canary = layout.unit("canary")
    shadow = layout.unit("shadow")
    assert stable is not None
    route: dict[str, Any] = {"name": "shoal"}
    if canary is None:
        route["route"] = [{"destination": {"host": host, "subset": stable.version}, "weight": 100}]
    else:
        percent = float(layout.canary_percent or 0.0)
        whole = round(percent)
        if whole != percent:
            warnings.warn(f"Istio weights are whole percents: the canary gets {whole}%, not "
                          f"{percent:g}%", DeployWarning, stacklevel=2)
        route["route"] = [
            {"destination": {"host": host, "subset": stable.version}, "weight": 100 - whole},
            {"destination": {"host": host, "subset": canary.version}, "weight": whole},
        ]
    if shadow is not None:
        route["mirror"] = {"host": host, "subset": shadow.version}
    elif layout.shadow_url is not None:
        parts = urlsplit(layout.shadow_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        route["mirror"] = {"host": parts.hostname, "port": {"number": port}}
    if "mirror" in route:
        route["mirrorPercentage"] = {"value": float(layout.shadow_percent or 0.0)}
    return {
        "apiVersion": API,
        "kind": "VirtualService",
        "metadata": spec.metadata(spec.name),
        "spec": {"hosts": [host], "http": [route]},
    }


def destination_rule(spec: DeploySpec, layout: Layout) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "DestinationRule",
        "metadata": spec.metadata(spec.name),
        "spec": {
            "host": _host(spec),
            "subsets": [{"name": u.version, "labels": {"version": u.version}}
                        for u in layout.units],
        },
    }


def render_istio(spec: DeploySpec, layout: Layout) -> list[dict[str, Any]]:
    return [virtual_service(spec, layout), destination_rule(spec, layout)]
