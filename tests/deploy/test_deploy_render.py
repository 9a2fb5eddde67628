"""``shoal.deploy.render``: every mode and option from one repository, each object checked
offline (``k8s_checks``), and what each setting of the repository becomes."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from shoal.deploy import DeployWarning, RenderError, render

from .conftest import FRAUD, build_repository
from .k8s_checks import by_kind, validate, validate_builtin, validate_typed

IMAGE = "ghcr.io/acme/shoal:1.0"

COMBINATIONS = [
    {},
    {"autoscaler": "hpa"},
    {"autoscaler": "hpa", "metric": "cpu"},
    {"autoscaler": "hpa", "istio": True},
    {"autoscaler": "keda", "namespace": "ml"},
    {"autoscaler": "keda", "metric": "gpu", "istio": True, "uri": "s3://models/prod",
     "namespace": "ml"},
    {"autoscaler": "keda", "metric": "cpu"},
    {"istio": True, "namespace": "ml", "admin_token_secret": "shoal-token"},
    {"mode": "knative"},
    {"mode": "knative", "protocol": "grpc", "uri": "gs://models/prod", "storage_secret": "gcs"},
    {"mode": "knative", "namespace": "ml", "service_account": "models-reader"},
]


def objects_for(repository: Path, **options: Any) -> list[dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeployWarning)
        return render(repository, name="fraud", image=IMAGE, **options)


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, [o["metadata"]["name"] for o in by_kind(objects, kind)]
    return found[0]


def container(pod_owner: dict[str, Any]) -> dict[str, Any]:
    spec = pod_owner["spec"]["template"]["spec"]
    (server,) = spec["containers"]
    return server


def plan_of(pod_owner: dict[str, Any]) -> dict[str, Any]:
    view = next(c for c in pod_owner["spec"]["template"]["spec"]["initContainers"]
                if c["name"] == "view")
    return json.loads(view["args"][view["args"].index("--plan") + 1])


@pytest.mark.parametrize("options", COMBINATIONS, ids=lambda o: ",".join(
    f"{k}={v}" for k, v in o.items()) or "standard")
def test_every_combination_passes_the_offline_checks(repository: Path, options: dict[str, Any]) -> None:
    objects = objects_for(repository, **options)
    validate(objects)
    if options.get("namespace"):
        assert {o["metadata"]["namespace"] for o in objects} == {options["namespace"]}


# -- standard mode -----------------------------------------------------------------------------


def test_standard_deployment(repository: Path) -> None:
    objects = objects_for(repository, drain_timeout=45)
    deployment = one(objects, "Deployment", "fraud")
    pod = deployment["spec"]["template"]["spec"]
    server = container(deployment)
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert server["args"][:2] == ["serve", "/mnt/models/repo"]
    assert server["args"][server["args"].index("--host") + 1] == "0.0.0.0"
    assert server["args"][server["args"].index("--drain-timeout") + 1] == "45"
    assert pod["terminationGracePeriodSeconds"] == 45 + 10  # preStop 5 s + margin 5 s
    assert server["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    assert deployment["spec"]["replicas"] == 1  # no autoscaler
    # Resources: fraud 500m/1Gi, scorer 250m x 2 workers, java-model 1/512Mi, gpu 4Gi + 1 GPU.
    assert server["resources"] == {
        "requests": {"cpu": "2", "memory": "5632Mi"},
        "limits": {"memory": "5632Mi", "nvidia.com/gpu": "1"},
    }
    assert "--gpus" in server["args"] and server["args"][server["args"].index("--gpus") + 1] == "0"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    service = one(objects, "Service", "fraud")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == 8080
    assert ports["grpc"]["port"] == 8081
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_without_a_mesh_the_rollout_stays_in_the_process(repository: Path) -> None:
    objects = objects_for(repository)
    assert len(by_kind(objects, "Deployment")) == 1
    plan = plan_of(one(objects, "Deployment"))
    fraud = plan["models"]["fraud"]
    assert fraud["versions"] == [1, 2, 3, 4]
    assert fraud["rollout"]["canary"] == {"variant": "3", "percent": 10.0}
    assert "drop" not in plan  # no Kubernetes autoscaler: the server's own scaler stays
    assert plan["models"]["pipeline"] == {"from": "pipeline", "graph": True}
    assert plan["models"]["java-model"] == {"from": "java-model"}  # runtime: process, unversioned


def test_hpa_from_autoscaling(repository: Path) -> None:
    objects = objects_for(repository, autoscaler="hpa")
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] == 1  # min_replicas 0: an HPA cannot scale to zero
    assert hpa["maxReplicas"] == 4
    assert hpa["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "shoal_requests_in_flight"},
        "target": {"type": "AverageValue", "averageValue": "2"}}}]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 60
    assert "replicas" not in one(objects, "Deployment")["spec"]  # the HPA's to set
    assert plan_of(one(objects, "Deployment"))["drop"] == ["autoscaling"]

    cpu = one(objects_for(repository, autoscaler="hpa", metric="cpu", cpu_target=70),
              "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert cpu == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]


def test_keda_from_autoscaling(repository: Path) -> None:
    objects = objects_for(repository, autoscaler="keda", namespace="ml")
    scaled = one(objects, "ScaledObject")["spec"]
    assert scaled["minReplicaCount"] == 0
    assert scaled["maxReplicaCount"] == 4
    assert scaled["cooldownPeriod"] == 300
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["threshold"] == "2"
    # Selected by namespace and the labels the ServiceMonitor attaches, not by pod name.
    assert trigger["metadata"]["query"] == (
        'sum(shoal_requests_in_flight{namespace="ml",app_kubernetes_io_instance="fraud"})')
    assert one(objects, "ServiceMonitor")["spec"]["podTargetLabels"] == [
        "app.kubernetes.io/instance", "version"]
    istio = objects_for(repository, autoscaler="keda", namespace="ml", istio=True)
    assert one(istio, "ScaledObject", "fraud-v3")["spec"]["triggers"][0]["metadata"]["query"] == (
        'sum(shoal_requests_in_flight{namespace="ml",app_kubernetes_io_instance="fraud",'
        'version="v3"})')
    # KEDA's AverageValue divides the query by the replicas: a sum, the threshold per pod
    # (an average would ask for fewer pods as they are added). DCGM's pod labels, as a
    # ServiceMonitor on dcgm-exporter stores them.
    gpu = one(objects_for(repository, autoscaler="keda", metric="gpu", gpu_target=60,
                          namespace="ml"), "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert gpu["query"] == ('sum(DCGM_FI_DEV_GPU_UTIL{exported_namespace="ml",'
                            'exported_pod=~"fraud-[a-z0-9]+-[a-z0-9]{5}"})')
    assert gpu["threshold"] == "60"
    for metric in ("concurrency", "gpu"):
        with pytest.raises(RenderError, match="--namespace"):
            objects_for(repository, autoscaler="keda", metric=metric)


def test_keda_cpu_trigger(repository: Path, tmp_path: Path) -> None:
    scaled = one(objects_for(repository, autoscaler="keda", metric="cpu"), "ScaledObject")
    assert scaled["spec"]["triggers"][0]["type"] == "cpu"
    assert scaled["spec"]["minReplicaCount"] == 1  # min_replicas 0: KEDA refuses it for cpu
    no_cpu = build_repository(tmp_path / "m", FRAUD.replace("cpu: 500m, ", ""))
    with pytest.raises(RenderError, match="--metric cpu.*CPU request"):
        objects_for(no_cpu, autoscaler="keda", metric="cpu", models=["fraud", "gpu"])


def test_fractional_target_is_a_quantity(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "m", FRAUD.replace("target_concurrency: 2", "target_concurrency: 1.5"))
    hpa = one(objects_for(repo, autoscaler="hpa"), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "1500m"
    validate_builtin(hpa)


def test_several_autoscaled_models_take_the_most_cautious_settings(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "m")
    (repo / "scorer" / "model.yaml").write_text(
        "resources: {cpu: 250m}\nautoscaling: {min_replicas: 2, max_replicas: 3, "
        "target_concurrency: 4, stable_window: 120s}\n")
    hpa = one(objects_for(repo, autoscaler="hpa"), "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 4)
    assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == "2"
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120


# -- Istio ---------------------------------------------------------------------------------------


def test_istio_one_deployment_per_variant(repository: Path) -> None:
    objects = objects_for(repository, autoscaler="hpa", istio=True)
    deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
    assert set(deployments) == {"fraud-v2", "fraud-v3", "fraud-v4"}
    for name, version in (("fraud-v2", 2), ("fraud-v3", 3), ("fraud-v4", 4)):
        d = deployments[name]
        assert d["spec"]["template"]["metadata"]["labels"]["version"] == f"v{version}"
        fraud = plan_of(d)["models"]["fraud"]
        assert fraud == {"from": "fraud", "versions": [version]}  # no rollout left in the pod
    assert {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(objects, "HorizontalPodAutoscaler")} \
        == set(deployments)
    vs = one(objects, "VirtualService")["spec"]
    (route,) = vs["http"]
    assert [(d["destination"]["subset"], d["weight"]) for d in route["route"]] == [("v2", 90), ("v3", 10)]
    assert route["mirror"] == {"host": "fraud", "subset": "v4"}
    assert route["mirrorPercentage"] == {"value": 50.0}
    rule = one(objects, "DestinationRule")["spec"]
    assert rule["subsets"] == [{"name": f"v{v}", "labels": {"version": f"v{v}"}} for v in (2, 3, 4)]


def test_istio_without_a_rollout_routes_everything_to_one_subset(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "m", FRAUD.split("rollout:")[0])
    objects = objects_for(repo, istio=True, models=["fraud"])
    validate(objects)
    assert [d["metadata"]["name"] for d in by_kind(objects, "Deployment")] == ["fraud-v4"]
    route = one(objects, "VirtualService")["spec"]["http"][0]
    assert route["route"] == [{"destination": {"host": "fraud", "subset": "v4"}, "weight": 100}]
    assert "mirror" not in route


def test_istio_variants_that_are_other_models_and_a_remote_shadow(tmp_path: Path) -> None:
    rollout = ('rollout: {canary: {variant: "scorer:1", percent: 25}, '
               'shadow: {variant: "http://shadow.ml:8000", percent: 5}}\n')
    repo = build_repository(tmp_path / "m", FRAUD.split("rollout:")[0] + rollout)
    objects = objects_for(repo, istio=True)
    validate(objects)
    canary = one(objects, "Deployment", "fraud-scorer-v1")
    assert plan_of(canary)["models"]["fraud"] == {"from": "scorer", "versions": [1]}
    route = one(objects, "VirtualService")["spec"]["http"][0]
    assert [d["weight"] for d in route["route"]] == [75, 25]
    assert route["mirror"] == {"host": "shadow.ml", "port": {"number": 8000}}
    assert route["mirrorPercentage"] == {"value": 5.0}


# -- Knative -------------------------------------------------------------------------------------


def test_knative_service(repository: Path) -> None:
    objects = objects_for(repository, mode="knative")
    service = one(objects, "Service")
    template = service["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/metric": "concurrency",
        "autoscaling.knative.dev/target": "2",
        "autoscaling.knative.dev/min-scale": "0",
        "autoscaling.knative.dev/max-scale": "4",
        "autoscaling.knative.dev/window": "60s",
        "autoscaling.knative.dev/panic-window-percentage": "10",
        "autoscaling.knative.dev/panic-threshold-percentage": "200",
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "240s",
        # For an Istio-injected namespace (nothing otherwise).
        "sidecar.istio.io/nativeSidecar": "true",
        "proxy.istio.io/config": '{"terminationDrainDuration":"35s"}',
    }
    spec = template["spec"]
    assert spec["containerConcurrency"] == 0  # java-model and scorer set no max_inflight
    assert container(service)["ports"] == [{"name": "http1", "containerPort": 8080}]
    grpc = container(one(objects_for(repository, mode="knative", protocol="grpc"), "Service"))
    assert grpc["ports"] == [{"name": "h2c", "containerPort": 8081}]
    assert grpc["readinessProbe"]["httpGet"]["port"] == 8080
    # The canary is the template; the traffic block keeps 90 % on the stable revision.
    assert template["metadata"]["name"].startswith("fraud-v3-")
    assert service["spec"]["traffic"] == [
        {"revisionName": service["spec"]["traffic"][0]["revisionName"], "percent": 90, "tag": "stable"},
        {"revisionName": template["metadata"]["name"], "percent": 10, "tag": "canary"},
    ]
    # Knative has no mirroring: the shadow stays in each revision's process.
    fraud = plan_of(service)["models"]["fraud"]
    assert fraud["versions"] == [3, 4]
    assert fraud["rollout"] == {"stable": "3", "shadow": {"variant": "4", "percent": 50.0,
                                                          "max_pending": 64}}
    assert one(objects, "PodMonitor")["spec"]["selector"]["matchLabels"] == {
        "serving.knative.dev/service": "fraud"}
    assert one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["targetPort"] == 8080


def test_knative_grpc_pod_monitor_scrapes_the_rest_port(repository: Path) -> None:
    """In gRPC mode 8080 is no declared port (Prometheus discovers declared ports only): the
    PodMonitor selects the h2c port and scrapes 8080 of the same pod IP."""
    monitor = one(objects_for(repository, mode="knative", protocol="grpc"), "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["targetPort"] == 8081
    addresses = [r for r in endpoint["relabelings"] if r["targetLabel"] == "__address__"]
    assert [r["replacement"] for r in addresses] == ["[$1]:8080", "$1:8080"]
    assert all(r["sourceLabels"] == ["__meta_kubernetes_pod_ip"] for r in addresses)


def test_knative_stable_revision_is_the_running_one(tmp_path: Path) -> None:
    """Revisions are named after their content: the stable revision a canary's traffic names
    is the one the same settings without the canary rendered (and applied) before."""
    base = FRAUD.split("rollout:")[0]
    shadow = 'shadow: {variant: "4", percent: 50}}\n'
    before = build_repository(tmp_path / "before", base + 'rollout: {stable: "2", ' + shadow)
    after = build_repository(tmp_path / "after", FRAUD)
    running = one(objects_for(before, mode="knative", uri="s3://m/p"), "Service")
    canary = one(objects_for(after, mode="knative", uri="s3://m/p"), "Service")
    assert running["spec"]["traffic"] == [{"latestRevision": True, "percent": 100}]
    assert canary["spec"]["traffic"][0]["revisionName"] == running["spec"]["template"]["metadata"]["name"]
    # Rendering again is a no-op; another setting is another revision.
    again = one(objects_for(after, mode="knative", uri="s3://m/p"), "Service")
    assert again == canary
    other = one(objects_for(after, mode="knative", uri="s3://m/p", drain_timeout=10), "Service")
    assert other["spec"]["template"]["metadata"]["name"] != canary["spec"]["template"]["metadata"]["name"]
    # Promoting (stable: "3", the shadow kept) renders the canary's revision again, with all traffic.
    promoted = build_repository(tmp_path / "promoted", base + 'rollout: {stable: "3", ' + shadow)
    done = one(objects_for(promoted, mode="knative", uri="s3://m/p"), "Service")
    assert done["spec"]["template"] == canary["spec"]["template"]
    assert done["spec"]["traffic"] == [{"latestRevision": True, "percent": 100}]
    # The stable variant named when there was no rollout before: another revision ran then.
    plain = build_repository(tmp_path / "plain", base)
    unrolled = one(objects_for(plain, mode="knative", uri="s3://m/p"), "Service")
    with pytest.warns(DeployWarning, match=r"--stable-revision " +
                      unrolled["spec"]["template"]["metadata"]["name"]):
        render(after, name="fraud", image=IMAGE, mode="knative", uri="s3://m/p")
    pinned = one(objects_for(after, mode="knative", stable_revision="fraud-00007"), "Service")
    assert pinned["spec"]["traffic"][0]["revisionName"] == "fraud-00007"


def test_knative_without_autoscaling_is_a_fixed_count(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "m", "max_inflight: 16\n")
    service = one(objects_for(repo, mode="knative", models=["fraud"], replicas=2), "Service")
    annotations = service["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "2"
    assert annotations["autoscaling.knative.dev/max-scale"] == "2"
    assert service["spec"]["template"]["spec"]["containerConcurrency"] == 16


def test_knative_bounds(tmp_path: Path) -> None:
    odd = FRAUD.replace("stable_window: 60s", "stable_window: 2s").replace(
        "panic_window: 6s", "panic_window: 1s").replace("panic_threshold: 2.0", "panic_threshold: 1.0")
    service = one(objects_for(build_repository(tmp_path / "m", odd), mode="knative"), "Service")
    annotations = service["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/window"] == "6s"  # Knative's minimum
    assert annotations["autoscaling.knative.dev/panic-threshold-percentage"] == "110"
    validate([service])


# -- object storage ------------------------------------------------------------------------------


def test_object_storage_gets_a_fetch_init_container(repository: Path) -> None:
    objects = objects_for(repository, uri="s3://models/prod", storage_secret="s3-creds")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    fetch, view = pod["initContainers"]
    assert fetch["command"] + fetch["args"] == ["shoal", "fetch", "s3://models/prod", "/mnt/models/source"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert view["args"][:4] == ["k8s", "view", "/mnt/models/source", "/mnt/models/repo"]
    assert pod["volumes"] == [{"name": "models", "emptyDir": {}}]
    mounts = {c["name"]: c["volumeMounts"] for c in pod["initContainers"] + pod["containers"]}
    assert all(m == [{"name": "models", "mountPath": "/mnt/models"}] for m in mounts.values())
    only = objects_for(repository, uri="s3://models/prod", models=["fraud", "scorer"])
    args = one(only, "Deployment")["spec"]["template"]["spec"]["initContainers"][0]["args"]
    assert args[3:] == ["--model", "fraud", "--model", "scorer"]


def test_a_folder_is_served_from_the_image(repository: Path) -> None:
    pod = one(objects_for(repository), "Deployment")["spec"]["template"]["spec"]
    (view,) = pod["initContainers"]
    assert view["args"][2] == "/models"


# -- what cannot be rendered -----------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"name": "Fraud"}, "--name 'Fraud'"),
    ({"mode": "knative", "autoscaler": "hpa"}, "--autoscaler is for --mode standard"),
    ({"mode": "knative", "istio": True}, "--istio is for --mode standard"),
    ({"metric": "gpu", "autoscaler": "hpa"}, "needs --autoscaler keda"),
    ({"mode": "serverless"}, "--mode 'serverless'"),
    ({"models": ["nope"]}, "--model nope"),
    ({"image": ""}, "--image"),
])
def test_bad_options(repository: Path, options: dict[str, Any], message: str) -> None:
    arguments = {"name": "fraud", "image": IMAGE, **options}
    with pytest.raises(RenderError, match=message.replace("(", r"\(")):
        render(repository, **arguments)


def test_autoscaler_without_autoscaling_settings(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "m", "max_inflight: 4\n")
    with pytest.raises(RenderError, match="no model of the repository has an autoscaling"):
        render(repo, name="fraud", image=IMAGE, autoscaler="hpa", models=["fraud", "scorer"])


def test_two_rollouts_need_one_deployment_each(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "m")
    (repo / "scorer" / "model.yaml").write_text('rollout: {canary: {variant: "1", percent: 5}}\n')
    with pytest.raises(RenderError, match=r"fraud, scorer each have a rollout.*--model"):
        render(repo, name="fraud", image=IMAGE, istio=True)
    validate(objects_for(repo, istio=True, models=["fraud", "gpu"]))


def test_unknown_variant_and_invalid_model_yaml(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "m", FRAUD.replace('variant: "3"', 'variant: "7"'))
    with pytest.raises(RenderError, match="no version 7"):
        render(repo, name="fraud", image=IMAGE, istio=True)
    (repo / "fraud" / "model.yaml").write_text("autoscaling: {min_replica: 1}\n")
    with pytest.raises(RenderError, match=r"fraud: model.yaml is invalid: autoscaling.min_replica"):
        render(repo, name="fraud", image=IMAGE)


def test_progressive_steps_and_stickiness_are_reported(tmp_path: Path) -> None:
    rollout = ('rollout: {stable: "2", canary: {variant: "3", sticky: \'headers."x-user"\', '
               'analysis: {steps: [5, 50, 100], interval: 60s}}}\n')
    repo = build_repository(tmp_path / "m", FRAUD.split("rollout:")[0] + rollout)
    with pytest.warns(DeployWarning) as caught:
        objects = render(repo, name="fraud", image=IMAGE, istio=True)
    text = " ".join(str(w.message) for w in caught)
    assert "first step, 5%" in text and "sticky" in text
    weights = [d["weight"] for d in one(objects, "VirtualService")["spec"]["http"][0]["route"]]
    assert weights == [95, 5]


# -- the checks themselves catch what they are for ----------------------------------------------------


def test_the_checks_catch_mistakes(repository: Path) -> None:
    objects = objects_for(repository, autoscaler="keda", istio=True, namespace="ml")
    deployment = copy.deepcopy(one(objects, "Deployment", "fraud-v2"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagee"] = IMAGE
    with pytest.raises(Exception, match="imagee"):
        validate_builtin(deployment)
    scaled = copy.deepcopy(one(objects, "ScaledObject", "fraud-v2"))
    scaled["spec"]["minReplicas"] = 0  # KEDA says minReplicaCount
    with pytest.raises(AssertionError, match=r"\.spec\.minReplicas"):
        validate_typed(scaled)
    broken = copy.deepcopy(objects)
    one(broken, "VirtualService")["spec"]["http"][0]["route"][1]["weight"] = 20
    with pytest.raises(AssertionError):
        validate(broken)
    knative = copy.deepcopy(objects_for(repository, mode="knative"))
    one(knative, "Service")["spec"]["template"]["metadata"]["annotations"][
        "autoscaling.knative.dev/window"] = "2s"
    with pytest.raises(AssertionError):
        validate(knative)
    knative = copy.deepcopy(objects_for(repository, mode="knative"))
    one(knative, "Service")["spec"]["template"]["spec"]["containers"][0]["ports"].append(
        {"name": "h2c", "containerPort": 8081})
    with pytest.raises((AssertionError, ValueError)):
        validate(knative)


def test_long_variant_names_stay_dns_labels(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "m", FRAUD.split("rollout:")[0]
                            + 'rollout: {canary: {variant: "a-rather-long-challenger-model-name", percent: 5}}\n')
    (repo / "a-rather-long-challenger-model-name" / "1").mkdir(parents=True)
    objects = objects_for(repo, istio=True, models=["fraud"])
    validate(objects)
    names = [d["metadata"]["name"] for d in by_kind(objects, "Deployment")]
    assert names[0] == "fraud-v4" and len(names[1]) <= 63 and names[1].startswith("fraud-a-rather")


def test_istio_sidecar_starts_first_and_waits_for_the_drain(repository: Path) -> None:
    objects = objects_for(repository, istio=True, autoscaler="hpa", drain_timeout=45)
    for deployment in by_kind(objects, "Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["sidecar.istio.io/nativeSidecar"] == "true"  # before fetch runs
        assert json.loads(annotations["proxy.istio.io/config"]) == {
            "terminationDrainDuration": "50s"}  # preStop 5 s + drain 45 s
    plain = one(objects_for(repository), "Deployment")
    assert "annotations" not in plain["spec"]["template"]["metadata"]


def test_selectors_are_this_deployments_shoal_pods(repository: Path) -> None:
    mine = {"app": "fraud", "app.kubernetes.io/name": "shoal",
            "app.kubernetes.io/instance": "fraud"}
    objects = objects_for(repository, labels={"app.kubernetes.io/instance": "other"})
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == mine
    assert one(objects, "Service")["spec"]["selector"] == mine
    assert one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == mine
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert mine.items() <= labels.items()  # a user's label cannot unselect the pods
    istio = objects_for(repository, istio=True)
    v3 = one(istio, "Deployment", "fraud-v3")
    assert v3["spec"]["selector"]["matchLabels"] == {**mine, "version": "v3"}
    assert one(istio, "PodDisruptionBudget", "fraud-v3")["spec"]["selector"]["matchLabels"] == {
        **mine, "version": "v3"}


@pytest.mark.parametrize(("memory", "expected"), [
    ("1G", "1G"), ("1500M", "1500M"), ("512Mi", "512Mi"), ("1024Gi", "1Ti"), ("2000M", "2G"),
    ('"1000"', "1k"), ('"1536"', "1536")])
def test_memory_is_a_canonical_quantity(tmp_path: Path, memory: str, expected: str) -> None:
    """The API server stores a quantity in its canonical form: anything else is a change
    each time the objects are applied (the operator would apply them at every resync)."""
    repo = build_repository(tmp_path / "m", f"resources: {{cpu: 500m, memory: {memory}}}\n")
    server = container(one(objects_for(repo, models=["fraud"]), "Deployment"))
    assert server["resources"]["requests"] == {"cpu": "500m", "memory": expected}
    assert server["resources"]["limits"] == {"memory": expected}


@pytest.mark.parametrize("uri", ["s3://key:s3cr3t@models/prod",
                                 "https://host/models.tar.gz?X-Amz-Signature=s3cr3t"])
def test_credentials_in_the_uri_are_refused_and_never_shown(repository: Path, uri: str) -> None:
    """The URI is written into the Deployment's args: credentials belong in a Secret."""
    with pytest.raises(RenderError, match="--storage-secret") as raised:
        objects_for(repository, uri=uri)
    assert "s3cr3t" not in str(raised.value)
    with pytest.raises(RenderError) as raised:
        render(uri, name="fraud", image=IMAGE)  # refused before it is read
    assert "s3cr3t" not in str(raised.value)


def test_a_read_error_does_not_show_the_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from shoal.repository import sources

    render_module = importlib.import_module("shoal.deploy.render")

    def fail(uri: str, **_: Any) -> None:
        raise OSError("no such bucket")

    monkeypatch.setattr(sources, "fetch_repository", fail)
    with pytest.raises(RenderError, match="cannot read s3://models/prod: no such bucket") as raised, \
            render_module.local_copy("s3://key:s3cr3t@models/prod"):
        pass
    assert "s3cr3t" not in str(raised.value)
