"""The ``ShoalService`` CRD (``serving.shoal.io/v1alpha1``), shipped as
``shoal/deploy/crds/shoalservice.yaml`` and printed by ``shoal k8s crd``.

:func:`render_options` turns a ShoalService into :func:`shoal.deploy.render`'s arguments, so an
operator reconciles exactly the objects ``shoal k8s render`` prints;
:func:`validate_resource` checks an instance against the CRD's ``openAPIV3Schema``.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

GROUP = "serving.shoal.io"
VERSION = "v1alpha1"
KIND = "ShoalService"
PLURAL = "shoalservices"
API_VERSION = f"{GROUP}/{VERSION}"

_AUTOSCALING = {"minReplicas": "min_replicas", "maxReplicas": "max_replicas",
                "targetConcurrency": "target_concurrency", "stableWindow": "stable_window",
                "panicWindow": "panic_window", "panicThreshold": "panic_threshold",
                "scaleToZeroAfter": "scale_to_zero_after"}
_OPTIONS = {"mode": "mode", "autoscaler": "autoscaler", "metric": "metric", "istio": "istio",
            "monitor": "monitor", "protocol": "protocol", "models": "models", "replicas": "replicas",
            "drainTimeout": "drain_timeout", "serviceAccountName": "service_account",
            "storageSecret": "storage_secret", "adminTokenSecret": "admin_token_secret"}


def crd_yaml() -> str:
    return resources.files(__package__).joinpath("crds/shoalservice.yaml").read_text()


@functools.lru_cache(maxsize=1)
def _crd() -> dict[str, Any]:
    return yaml.safe_load(crd_yaml())


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object (a fresh copy)."""
    import copy

    return copy.deepcopy(_crd())


def schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``v1alpha1``."""
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strict_schema() -> dict[str, Any]:
    """:func:`schema` refusing unknown fields, as the API server does for ``kubectl apply``
    (strict field validation; a CRD itself may not say ``additionalProperties: false``)."""

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    tree = schema()
    close(tree)
    return tree


def validate_resource(resource: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` (its ``path`` names the field) unless
    ``resource`` is a valid ShoalService, unknown fields refused. Needs ``jsonschema`` (the
    ``k8s`` extra). OpenAPI v3.0 schemas read as JSON Schema draft 4 (boolean
    ``exclusiveMinimum``)."""
    import jsonschema

    if resource.get("apiVersion") != API_VERSION or resource.get("kind") != KIND:
        raise jsonschema.ValidationError(f"not a {KIND} ({API_VERSION})")
    jsonschema.validate(resource, strict_schema(), cls=jsonschema.Draft4Validator)


def render_options(resource: dict[str, Any]) -> dict[str, Any]:
    """``render()``'s keyword arguments for a ShoalService: ``repository``, ``name``,
    ``image``, ``namespace`` and the options its spec sets."""
    spec = resource.get("spec", {})
    meta = resource.get("metadata", {})
    options: dict[str, Any] = {"repository": spec["repository"], "name": meta["name"],
                               "image": spec["image"]}
    if meta.get("namespace"):
        options["namespace"] = meta["namespace"]
    for key, arg in _OPTIONS.items():
        if key in spec:
            options[arg] = spec[key]
    if "autoscaling" in spec:
        options["autoscaling_override"] = {_AUTOSCALING[k]: v for k, v in spec["autoscaling"].items()}
    if "rollout" in spec:
        options["rollout_override"] = dict(spec["rollout"])
    if "resources" in spec:
        options["resources_override"] = dict(spec["resources"])
    return options
