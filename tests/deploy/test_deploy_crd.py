"""The ShoalService CRD: a valid CustomResourceDefinition, instances checked against its
``openAPIV3Schema`` with jsonschema, and a ShoalService rendered as ``shoal k8s render`` would."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from shoal.cli.main import main
from shoal.deploy import crd, crd_yaml, render, render_options, validate_resource

from .conftest import build_repository
from .k8s_checks import validate, validate_builtin

EXAMPLE: dict[str, Any] = {
    "apiVersion": "serving.shoal.io/v1alpha1",
    "kind": "ShoalService",
    "metadata": {"name": "fraud", "namespace": "ml"},
    "spec": {
        "repository": "s3://models/prod",
        "image": "ghcr.io/acme/shoal:1.0",
        "mode": "standard",
        "autoscaler": "keda",
        "istio": True,
        "autoscaling": {"minReplicas": 0, "maxReplicas": 8, "targetConcurrency": 4,
                        "stableWindow": "90s", "scaleToZeroAfter": 600},
        "rollout": {"model": "fraud", "stable": "2",
                    "canary": {"variant": "3", "percent": 20},
                    "shadow": {"variant": "4", "percent": 100}},
        "resources": {"cpu": "2", "memory": "4Gi", "gpus": 1},
        "storageSecret": "s3-credentials",
    },
    "status": {
        "observedGeneration": 3, "url": "http://fraud.ml.svc.cluster.local:8080",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
                        "lastTransitionTime": "2026-12-01T10:00:00Z"}],
        "traffic": [{"variant": "2", "role": "stable", "percent": 80},
                    {"variant": "3", "role": "canary", "percent": 20}],
    },
}


def test_the_crd_is_a_valid_custom_resource_definition() -> None:
    definition = crd()
    validate_builtin(definition)  # Kubernetes 1.30 and the newest, strict
    assert definition["metadata"]["name"] == "shoalservices.serving.shoal.io"
    (version,) = definition["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert {"repository", "image", "mode", "autoscaling", "rollout", "resources"} <= set(spec["properties"])
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert {"conditions", "url", "traffic"} <= set(status["properties"])


def test_schema_is_structural() -> None:
    """What the API server demands of a CRD schema: a type everywhere (or int-or-string),
    no additionalProperties beside properties."""

    def walk(node: dict[str, Any], path: str) -> None:
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")


def test_shoal_k8s_crd_prints_it() -> None:
    result = CliRunner().invoke(main, ["k8s", "crd"])
    assert result.exit_code == 0
    assert yaml.safe_load(result.output) == crd()
    assert result.output == crd_yaml()


def test_valid_examples() -> None:
    validate_resource(EXAMPLE)
    minimal = {"apiVersion": "serving.shoal.io/v1alpha1", "kind": "ShoalService",
               "metadata": {"name": "iris"},
               "spec": {"repository": "gs://b/models", "image": "shoal:1", "mode": "knative"}}
    validate_resource(minimal)


@pytest.mark.parametrize(("path", "value", "where"), [
    (("spec", "rollout", "canary", "percent"), 150, "percent"),
    (("spec", "mode"), "serverless", "mode"),
    (("spec", "autoscaling", "minReplicas"), -1, "minReplicas"),
    (("spec", "autoscaling", "stableWindow"), "a minute", "stableWindow"),
    (("spec", "autoscaling", "targetConcurrency"), 0, "targetConcurrency"),
    (("spec", "resources", "memory"), "lots", "memory"),
    (("spec", "autoscaling", "minReplica"), 1, "minReplica"),  # a typo: unknown fields refused
    (("status", "conditions", 0, "status"), "yes", "status"),
])
def test_invalid_examples_name_the_field(path: tuple[Any, ...], value: Any, where: str) -> None:
    resource = copy.deepcopy(EXAMPLE)
    node: Any = resource
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate_resource(resource)
    assert where in "/".join(str(p) for p in caught.value.absolute_path) + caught.value.message


def test_missing_required_fields() -> None:
    resource = copy.deepcopy(EXAMPLE)
    del resource["spec"]["image"]
    with pytest.raises(jsonschema.ValidationError, match="'image' is a required property"):
        validate_resource(resource)


def test_a_shoal_service_renders_like_the_command(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "models")
    resource = copy.deepcopy(EXAMPLE)
    resource["spec"]["repository"] = str(repo)  # a folder here; object storage on a cluster
    options = render_options(resource)
    assert options["autoscaling_override"]["target_concurrency"] == 4
    objects = render(**options, uri="s3://models/prod")
    validate(objects)
    scaled = next(o for o in objects if o["kind"] == "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == 8 and scaled["spec"]["cooldownPeriod"] == 600
    route = next(o for o in objects if o["kind"] == "VirtualService")["spec"]["http"][0]
    assert [d["weight"] for d in route["route"]] == [80, 20]
    assert route["mirrorPercentage"] == {"value": 100.0}
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {o["metadata"]["namespace"] for o in objects} == {"ml"}
