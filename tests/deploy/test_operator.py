"""The ShoalService operator's handlers as plain functions (no cluster, no kopf event loop):
a ShoalService in, the objects to apply, the plan against live objects, the status out; the
operator's own manifests validated like every other render; the command's errors."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from click.testing import CliRunner

from shoal.cli.main import main
from shoal.deploy.crd import validate_resource
from shoal.deploy.operator import (
    HASH_ANNOTATION,
    InvalidSpec,
    check,
    desired_objects,
    invalid_status,
    observe,
    operator_manifests,
    plan,
    runtime,
    stale,
    status_for,
)
from shoal.deploy.operator.client import RESOURCES, ssl_context
from shoal.deploy.operator.reconcile import (
    condition,
    key,
    merge_conditions,
    render_field,
)

from .conftest import build_repository
from .k8s_checks import K8S_VERSIONS, validate

UID = "0b6c2a52-5d1e-4a8e-9a51-3f1f0f7e0c11"


def shoal_service(repository: Path | str, name: str = "fraud", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.shoal.io/v1alpha1", "kind": "ShoalService",
        "metadata": {"name": name, "namespace": "ml", "uid": UID, "generation": 1},
        "spec": {"repository": str(repository), "image": "ghcr.io/acme/shoal:1.0", **spec},
    }


ISTIO = {"istio": True, "models": ["fraud"],
         "rollout": {"stable": "2", "canary": {"variant": "3", "percent": 10}}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("operator") / "models")


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def live_copy(objects: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """What an API server returns: the object plus what it adds."""
    out = {}
    for obj in objects:
        live = copy.deepcopy(obj)
        live["metadata"].update(resourceVersion="17", generation=1, uid="x",
                                creationTimestamp="2026-12-01T10:00:00Z")
        live["status"] = {}
        if obj["kind"] == "Deployment":
            live["spec"]["revisionHistoryLimit"] = 10  # a default the server fills in
            live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
        out[key(obj)] = live
    return out


# -- what to apply --------------------------------------------------------------------------


def test_desired_objects_are_owned_and_valid(repo: Path) -> None:
    desired = desired_objects(shoal_service(repo, **ISTIO))
    objects = desired.objects
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "VirtualService",
                                            "DestinationRule", "PodDisruptionBudget"}
    for obj in objects:
        meta = obj["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["ownerReferences"] == [{
            "apiVersion": "serving.shoal.io/v1alpha1", "kind": "ShoalService", "name": "fraud",
            "uid": UID, "controller": True, "blockOwnerDeletion": True}]
        assert len(meta["annotations"][HASH_ANNOTATION]) == 16
    validate(objects)  # kubernetes-validate --strict / typed models, as every render
    assert [d["metadata"]["name"] for d in by_kind(objects, "Deployment")] == ["fraud-v2", "fraud-v3"]


def test_a_remote_repository_is_read_from_the_local_copy(repo: Path) -> None:
    desired = desired_objects(shoal_service("s3://models/prod", **ISTIO), repository=repo)
    pod = by_kind(desired.objects, "Deployment")[0]["spec"]["template"]["spec"]
    fetch = next(c for c in pod["initContainers"] if c["name"] == "fetch")
    assert "s3://models/prod" in fetch["args"]  # the pods fetch from the store, not the cache


def test_same_spec_same_objects(repo: Path) -> None:
    one = desired_objects(shoal_service(repo, **ISTIO)).objects
    two = desired_objects(shoal_service(repo, **ISTIO)).objects
    assert one == two


def test_notes_of_what_cannot_be_rendered(repo: Path) -> None:
    spec = copy.deepcopy(ISTIO)
    spec["rollout"]["canary"]["percent"] = 12.5
    desired = desired_objects(shoal_service(repo, **spec))
    assert any("whole percents" in note for note in desired.notes)


# -- invalid ShoalServices name the field ----------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    ({"rollout": {"canary": {"variant": "3", "percent": 150}}}, "spec.rollout.canary.percent"),
    ({"mode": "serverless"}, "spec.mode"),
    ({"autoscaling": {"minReplica": 1}}, "spec.autoscaling.minReplica"),
    ({"resources": {"memory": "lots"}}, "spec.resources.memory"),
])
def test_schema_errors_name_the_field(repo: Path, change: dict[str, Any], field: str) -> None:
    resource = shoal_service(repo, **change)
    with pytest.raises(InvalidSpec) as caught:
        check(resource)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_missing_image_is_named(repo: Path) -> None:
    resource = shoal_service(repo)
    del resource["spec"]["image"]
    with pytest.raises(InvalidSpec, match=r"^spec\.image: 'image' is a required property"):
        check(resource)


@pytest.mark.parametrize(("change", "field"), [
    ({"mode": "knative", "istio": True}, "spec.istio"),
    ({"mode": "knative", "autoscaler": "hpa"}, "spec.autoscaler"),
    ({"istio": True, "models": ["fraud"],
      "rollout": {"canary": {"variant": "9", "percent": 5}}}, "spec.rollout.canary.variant"),
    ({"models": ["nope"]}, "spec.models"),
    ({"autoscaler": "keda", "metric": "gpu", "models": ["scorer"]}, "spec.metric"),
    ({"istio": True, "rollout": {"model": "ghost", "stable": "1"}}, "spec.rollout.model"),
])
def test_render_errors_name_the_field(repo: Path, change: dict[str, Any], field: str) -> None:
    resource = shoal_service(repo, **change)
    check(resource)  # the schema accepts it: only rendering finds the problem
    with pytest.raises(InvalidSpec) as caught:
        desired_objects(resource)
    assert caught.value.field == field, caught.value


def test_an_unreadable_repository_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec) as caught:
        desired_objects(shoal_service(tmp_path / "missing"))
    assert caught.value.field == "spec.repository"


@pytest.mark.parametrize(("message", "field"), [
    ("--name 'Fraud': use lower-case letters", "metadata.name"),
    ("--drain-timeout cannot be negative", "spec.drainTimeout"),
    ("autoscaling: min_replicas is over max_replicas", "spec.autoscaling"),
    ("resources: resources.cpu 'x' is not a CPU amount like 2 or 500m", "spec.resources.cpu"),
    ("fraud: rollout.shadow.variant 'http://x/y': Istio mirrors", "spec.rollout.shadow.variant"),
    ("models a, b each have a rollout: Kubernetes splits", "spec.models"),
    ("cannot read s3://b/p: NoSuchBucket", "spec.repository"),
    ("something else entirely", "spec"),
])
def test_render_field(message: str, field: str) -> None:
    assert render_field(message) == field


def test_invalid_status(repo: Path) -> None:
    resource = shoal_service(repo, rollout={"canary": {"variant": "3", "percent": 150}})
    with pytest.raises(InvalidSpec) as caught:
        check(resource)
    status = invalid_status(resource, caught.value, at="2026-12-01T10:00:00Z")
    ready, reconciled = status["conditions"]
    assert ready["type"] == "Ready" and ready["status"] == "False"
    assert ready["reason"] == reconciled["reason"] == "InvalidSpec"
    assert ready["message"].startswith("spec.rollout.canary.percent: 150 is greater than")
    assert status["observedGeneration"] == 1 and ready["observedGeneration"] == 1
    assert "url" not in status  # what runs from an earlier spec keeps its url


# -- plan: what changes, what is left alone ---------------------------------------------------


def test_plan_creates_then_keeps(repo: Path) -> None:
    objects = desired_objects(shoal_service(repo, **ISTIO)).objects
    assert {verb for verb, _ in plan(objects, {})} == {"create"}
    live = live_copy(objects)
    assert {verb for verb, _ in plan(objects, live)} == {"keep"}  # server defaults are fine


def test_a_new_canary_percent_changes_only_the_virtual_service(repo: Path) -> None:
    before = desired_objects(shoal_service(repo, **ISTIO)).objects
    spec = copy.deepcopy(ISTIO)
    spec["rollout"]["canary"]["percent"] = 30
    after = desired_objects(shoal_service(repo, **spec)).objects
    verbs = {(obj["kind"], obj["metadata"]["name"]): verb
             for verb, obj in plan(after, live_copy(before))}
    assert verbs.pop(("VirtualService", "fraud")) == "apply"
    assert set(verbs.values()) == {"keep"}, verbs  # Deployments, Service, PDBs, DR untouched
    route = by_kind(after, "VirtualService")[0]["spec"]["http"][0]["route"]
    assert [r["weight"] for r in route] == [70, 30]


def test_a_new_knative_canary_percent_keeps_the_revision(repo: Path) -> None:
    def render(percent: int) -> list[dict[str, Any]]:
        return desired_objects(shoal_service(repo, mode="knative", models=["fraud"], rollout={
            "stable": "2", "canary": {"variant": "3", "percent": percent}})).objects

    before, after = render(20), render(30)
    assert [(verb, obj["kind"]) for verb, obj in plan(after, live_copy(before))] == [
        ("apply", "Service"), ("keep", "PodMonitor")]
    old, new = by_kind(before, "Service")[0]["spec"], by_kind(after, "Service")[0]["spec"]
    assert old["template"] == new["template"]  # the same revision: Knative makes no new one
    assert [t["percent"] for t in new["traffic"]] == [70, 30]


def test_a_hand_edit_or_a_dropped_field_is_applied_again(repo: Path) -> None:
    objects = desired_objects(shoal_service(repo, **ISTIO)).objects
    live = live_copy(objects)
    deployment = live[key(by_kind(objects, "Deployment")[0])]
    deployment["spec"]["replicas"] = 5  # kubectl scale by hand
    service = live[key(by_kind(objects, "Service")[0])]
    service["metadata"]["annotations"][HASH_ANNOTATION] = "rendered-from-older"
    verbs = {obj["metadata"]["name"] + "/" + obj["kind"]: verb for verb, obj in plan(objects, live)}
    assert verbs["fraud-v2/Deployment"] == "apply"
    assert verbs["fraud/Service"] == "apply"
    assert verbs["fraud-v3/Deployment"] == "keep"


def test_promotion_prunes_the_old_stable(repo: Path) -> None:
    before = desired_objects(shoal_service(repo, **ISTIO)).objects
    promoted = desired_objects(shoal_service(repo, istio=True, models=["fraud"],
                                             rollout={"stable": "3"})).objects
    foreign = copy.deepcopy(by_kind(before, "Deployment")[0])
    foreign["metadata"]["name"] = "someone-elses"
    foreign["metadata"]["ownerReferences"][0]["uid"] = "another-uid"
    gone = stale(promoted, [*before, foreign], UID)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in gone) == [
        ("Deployment", "fraud-v2"), ("PodDisruptionBudget", "fraud-v2")]


# -- status: readiness, url, traffic ---------------------------------------------------------


def available(live: dict[Any, dict[str, Any]]) -> None:
    for obj in live.values():
        if obj["kind"] == "Deployment":
            obj["status"] = {"observedGeneration": 1,
                             "conditions": [{"type": "Available", "status": "True"}]}


def test_observe_istio(repo: Path) -> None:
    resource = shoal_service(repo, **ISTIO)
    objects = desired_objects(resource).objects
    live = live_copy(objects)
    seen = observe(resource, objects, live)
    assert not seen.ready and seen.reason == "Progressing"
    assert "Deployment fraud-v2 is not Available" in seen.message
    assert seen.url == "http://fraud.ml.svc.cluster.local:8080"
    assert seen.traffic == [{"variant": "2", "role": "stable", "percent": 90},
                            {"variant": "3", "role": "canary", "percent": 10}]
    available(live)
    assert observe(resource, objects, live).ready
    del live[key(by_kind(objects, "Service")[0])]
    seen = observe(resource, objects, live)
    assert not seen.ready and seen.message == "Service fraud is missing"


def test_observe_istio_shadow_and_default_stable(repo: Path) -> None:
    resource = shoal_service(repo, istio=True, models=["fraud"],
                             rollout={"shadow": {"variant": "3", "percent": 25}})
    objects = desired_objects(resource).objects
    seen = observe(resource, objects, live_copy(objects))
    # The stable variant defaults to the newest served version (4, from its version label).
    assert seen.traffic == [{"variant": "4", "role": "stable", "percent": 100},
                            {"variant": "3", "role": "shadow", "percent": 25.0}]


def test_observe_knative(repo: Path) -> None:
    resource = shoal_service(repo, mode="knative", models=["fraud"], rollout={"stable": "2", "canary": {"variant": "3", "percent": 20}})
    objects = desired_objects(resource).objects
    live = live_copy(objects)
    service = live[key(by_kind(objects, "Service")[0])]
    seen = observe(resource, objects, live)
    assert [(t["variant"], t["role"], t["percent"]) for t in seen.traffic] == [
        ("2", "stable", 80), ("3", "canary", 20)]
    assert seen.url == "http://fraud.ml.svc.cluster.local" and not seen.ready
    service["status"] = {"url": "http://fraud.ml.example.com", "observedGeneration": 1,
                         "conditions": [{"type": "Ready", "status": "True"}],
                         "traffic": [{"revisionName": "fraud-v2-abcdef0", "percent": 75,
                                      "tag": "stable"},
                                     {"revisionName": "fraud-v3-1234567", "percent": 25,
                                      "tag": "canary"}]}
    seen = observe(resource, objects, live)
    assert seen.ready and seen.url == "http://fraud.ml.example.com"
    assert seen.traffic[1] == {"variant": "3", "role": "canary", "percent": 25,
                               "revisionName": "fraud-v3-1234567", "tag": "canary"}


def test_observe_without_a_mesh_reports_no_split(repo: Path) -> None:
    resource = shoal_service(repo)
    objects = desired_objects(resource).objects
    assert observe(resource, objects, live_copy(objects)).traffic == []


def test_conditions_keep_their_transition_time() -> None:
    old = [{"type": "Ready", "status": "False", "reason": "Progressing", "message": "m",
            "lastTransitionTime": "2026-12-01T10:00:00Z"},
           {"type": "Custom", "status": "True"}]
    same = merge_conditions(old, [condition("Ready", False, "Progressing", "other")], 2,
                            "2026-12-01T11:00:00Z")
    assert same[0]["lastTransitionTime"] == "2026-12-01T10:00:00Z"
    assert same[0]["observedGeneration"] == 2 and same[1]["type"] == "Custom"
    flipped = merge_conditions(old, [condition("Ready", True, "Available", "ok")], 2,
                               "2026-12-01T11:00:00Z")
    assert flipped[0]["lastTransitionTime"] == "2026-12-01T11:00:00Z"


def test_status_for(repo: Path) -> None:
    resource = shoal_service(repo, **ISTIO)
    objects = desired_objects(resource).objects
    live = live_copy(objects)
    available(live)
    status = status_for(resource, condition("Reconciled", True, "Applied", "8 objects"),
                        observe(resource, objects, live), at="2026-12-01T10:00:00Z")
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [
        ("Ready", "True"), ("Reconciled", "True")]
    assert status["url"].endswith(":8080") and len(status["traffic"]) == 2
    # The status fits the CRD's schema (strict: unknown fields refused).
    validate_resource({**resource, "status": status})


# -- the operator's own manifests ------------------------------------------------------------


@pytest.mark.parametrize("watch", [None, ["ml", "research"]])
def test_operator_manifests_validate(watch: list[str] | None) -> None:
    import kubernetes_validate

    objects = operator_manifests(image="ghcr.io/acme/shoal:1.0", watch=watch,
                                 storage_secret="s3-credentials")
    for obj in objects:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    kinds = [o["kind"] for o in objects]
    if watch is None:
        assert kinds == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"]
    else:
        assert kinds == ["ServiceAccount", "Role", "RoleBinding", "Role", "RoleBinding",
                         "Deployment"]
        assert {o["metadata"]["namespace"] for o in objects if o["kind"] == "Role"} == \
            {"ml", "research"}
    deployment = objects[-1]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    scope = ["--all-namespaces"] if watch is None else \
        ["--namespace", "ml", "--namespace", "research"]
    assert container["command"][:2 + len(scope)] == ["shoal", "operator", *scope]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    role = objects[1]
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"]}
    for api_version, kind in RESOURCES:
        group = api_version.rpartition("/")[0]
        assert (group, RESOURCES[(api_version, kind)]) in granted
    assert ("serving.shoal.io", "shoalservices/status") in granted


def test_operator_manifests_command() -> None:
    result = CliRunner().invoke(main, ["k8s", "operator-manifests", "--image", "shoal:1",
                                       "--watch-namespace", "ml", "-n", "ops"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.output) if d]
    assert docs[0] == {"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": "shoal-operator", "namespace": "ops",
                                    "labels": docs[0]["metadata"]["labels"]}}
    assert docs[-1]["spec"]["template"]["spec"]["containers"][0]["image"] == "shoal:1"


# -- the command and its credentials ---------------------------------------------------------


def test_operator_needs_a_scope() -> None:
    result = CliRunner().invoke(main, ["operator"])
    assert result.exit_code == 2
    assert "--namespace NS (repeatable) or --all-namespaces" in result.output


@pytest.fixture()
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr(runtime, "SERVICE_ACCOUNT_TOKEN", str(tmp_path / "no-token"))
    return tmp_path


def test_no_kubeconfig_nor_in_cluster_config(no_cluster: Path) -> None:
    result = CliRunner().invoke(main, ["operator", "--all-namespaces"])
    assert result.exit_code == 1
    assert "no Kubernetes credentials" in result.output
    assert "Traceback" not in result.output


def test_a_kubeconfig_that_is_not_there(no_cluster: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(no_cluster / "missing.yaml"))
    result = CliRunner().invoke(main, ["operator", "-n", "ml"])
    assert result.exit_code == 1
    assert "missing.yaml, which does not exist" in result.output


def test_credentials_from_a_kubeconfig(no_cluster: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = no_cluster / "config.yaml"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443",
                                                "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "secret-token"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(config))
    assert runtime.find_credentials() == f"kubeconfig {config}"
    info = asyncio.run(runtime.login(runtime.settings()))
    assert info.server == "https://10.0.0.1:6443" and info.token == "secret-token"
    assert ssl_context(info).check_hostname is False


def test_login_without_credentials_says_so(no_cluster: Path) -> None:
    with pytest.raises(kopf.LoginError, match="no Kubernetes credentials"):
        asyncio.run(runtime.login(runtime.settings()))


def test_run_wants_a_scope() -> None:
    with pytest.raises(ValueError, match="namespaces"):
        asyncio.run(runtime.run())


# -- the reconcile loop with an in-memory API (no kopf) ----------------------------------------


class MemoryClient:
    """The KubeClient calls the operator makes, on a dict. ``unserved``: kinds the cluster
    does not serve (their CRDs are not installed): discovery leaves them out, and any request
    for them is a 404, as on a cluster."""

    def __init__(self, unserved: set[tuple[str, str]] | None = None) -> None:
        self.objects: dict[Any, dict[str, Any]] = {}
        self.writes: list[str] = []
        self.unserved = unserved or set()
        self.shoal_services: dict[str, dict[str, Any]] = {}  # path -> ShoalService
        self.statuses: list[dict[str, Any]] = []

    def _check(self, obj: dict[str, Any], method: str) -> None:
        from shoal.deploy.operator.client import KubeError

        if (obj["apiVersion"], obj["kind"]) in self.unserved:
            raise KubeError(404, "NotFound", "the server could not find the requested resource",
                            f"{method} {obj['kind']}")

    async def served(self, api_version: str, kind: str) -> bool:
        return (api_version, kind) not in self.unserved

    async def request(self, method: str, path: str, **_: Any) -> Any:
        assert method == "GET", (method, path)
        return copy.deepcopy(self.shoal_services.get(path))

    async def patch_status(self, path: str, status: dict[str, Any]) -> None:
        self.statuses.append(copy.deepcopy(status))

    async def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get(key(obj)))

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._check(obj, "POST")
        self.writes.append(f"create {obj['kind']} {obj['metadata']['name']}")
        self.objects[key(obj)] = copy.deepcopy(obj)
        return obj

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:  # creates too, as SSA does
        self._check(obj, "PATCH")
        verb = "apply" if key(obj) in self.objects else "create"
        self.writes.append(f"{verb} {obj['kind']} {obj['metadata']['name']}")
        status = (self.objects.get(key(obj)) or {}).get("status")
        self.objects[key(obj)] = copy.deepcopy(obj)
        if status is not None:  # a write of the spec keeps the status, as on a cluster
            self.objects[key(obj)]["status"] = status
        return obj

    async def list(self, api_version: str, kind: str, namespace: str,
                   label_selector: str | None = None) -> list[dict[str, Any]] | None:
        if (api_version, kind) in self.unserved:
            return None
        return [copy.deepcopy(o) for k, o in self.objects.items() if k[:2] == (api_version, kind)]

    async def delete(self, obj: dict[str, Any]) -> None:
        self.writes.append(f"delete {obj['kind']} {obj['metadata']['name']}")
        del self.objects[key(obj)]

    async def close(self) -> None:
        pass


def test_reconcile_fetches_a_remote_repository_into_the_cache(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[tuple[str, Path]] = []

    def fetch(uri: str, cache_dir: Path) -> Path:
        fetched.append((uri, cache_dir))
        return repo

    monkeypatch.setattr(runtime, "fetch_repository", fetch)
    operator = runtime.Operator(cache_dir=tmp_path / "cache")
    client = MemoryClient()
    operator.client = client  # type: ignore[assignment]
    resource = shoal_service("s3://models/prod", **ISTIO)
    status = asyncio.run(operator.reconcile(resource))
    assert fetched == [("s3://models/prod", tmp_path / "cache")]
    assert len(client.writes) == 8 and all(w.startswith("create") for w in client.writes)
    reconciled = next(c for c in status["conditions"] if c["type"] == "Reconciled")
    assert reconciled["status"] == "True" and reconciled["message"] == "8 objects as rendered"
    assert status["traffic"][1] == {"variant": "3", "role": "canary", "percent": 10}

    # The canary moves: one write, to the VirtualService.
    client.writes.clear()
    moved = copy.deepcopy(resource)
    moved["spec"]["rollout"]["canary"]["percent"] = 40
    asyncio.run(operator.reconcile(moved))
    assert client.writes == ["apply VirtualService fraud"]

    # Promoted: the old stable's PDB is deleted; its Deployment waits for fraud-v3 to be
    # Available (test_old_deployments_wait_for_their_replacements).
    client.writes.clear()
    promoted = copy.deepcopy(resource)
    promoted["spec"]["rollout"] = {"stable": "3"}
    asyncio.run(operator.reconcile(promoted))
    assert sorted(w for w in client.writes if w.startswith("delete")) == [
        "delete PodDisruptionBudget fraud-v2"]


def test_an_unreadable_repository_is_retried_with_the_store_s_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.repository.stores import FetchError

    def fetch(uri: str, cache_dir: Path) -> Path:
        raise FetchError("s3://models/prod: NoSuchBucket: The specified bucket does not exist")

    monkeypatch.setattr(runtime, "fetch_repository", fetch)
    operator = runtime.Operator(cache_dir=tmp_path)
    operator.client = MemoryClient()  # type: ignore[assignment]
    with pytest.raises(runtime.ReconcileFailed) as caught:
        asyncio.run(operator.reconcile(shoal_service("s3://models/prod")))
    (reconciled,) = caught.value.status["conditions"]
    assert reconciled["reason"] == "RepositoryUnavailable"
    assert "NoSuchBucket" in reconciled["message"]


def test_an_invalid_spec_is_not_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "fetch_repository", lambda *a, **k: pytest.fail("fetched"))
    operator = runtime.Operator(cache_dir=tmp_path)
    operator.client = MemoryClient()  # type: ignore[assignment]
    status = asyncio.run(operator.reconcile(shoal_service("s3://models/prod", mode="serverless")))
    assert status["conditions"][0]["message"].startswith("spec.mode: 'serverless' is not one of")


@pytest.mark.parametrize(("uri", "message"), [
    ("s3://", "spec.repository: 's3://' names no bucket"),
    ("ftp://models/prod", "spec.repository: cannot fetch a repository from ftp://"),
])
def test_a_repository_shoal_cannot_fetch_is_an_invalid_spec(tmp_path: Path, uri: str,
                                                            message: str) -> None:
    operator = runtime.Operator(cache_dir=tmp_path)
    operator.client = MemoryClient()  # type: ignore[assignment]
    status = asyncio.run(operator.reconcile(shoal_service(uri)))
    assert status["conditions"][0]["message"].startswith(message)


def memory_operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo: Path,
                    client: MemoryClient | None = None
                    ) -> tuple[runtime.Operator, MemoryClient]:
    monkeypatch.setattr(runtime, "fetch_repository", lambda uri, cache_dir: repo)
    operator = runtime.Operator(cache_dir=tmp_path / "cache")
    client = client or MemoryClient()
    operator.client = client  # type: ignore[assignment]
    return operator, client


def make_available(client: MemoryClient, *names: str) -> None:
    for (_, kind, name), obj in client.objects.items():
        if kind == "Deployment" and name in names:
            obj["status"] = {"conditions": [{"type": "Available", "status": "True"}]}


def watched(operator: runtime.Operator, client: MemoryClient,
            resource: dict[str, Any]) -> None:
    """As the watch would: the operator knows ``resource``, and the API server has it."""
    from shoal.deploy.operator.reconcile import resource_path

    operator.known[runtime._ident(resource)] = resource
    client.shoal_services[resource_path(resource)] = resource


# -- spec.monitor and kinds the cluster does not serve ----------------------------------------


def test_monitor_false_renders_no_monitor(repo: Path) -> None:
    on = desired_objects(shoal_service(repo)).objects
    assert by_kind(on, "ServiceMonitor")
    resource = shoal_service(repo, monitor=False)
    check(resource)  # the schema has spec.monitor
    off = desired_objects(resource).objects
    assert not by_kind(off, "ServiceMonitor") and len(off) == len(on) - 1
    knative = desired_objects(shoal_service(repo, mode="knative", monitor=False)).objects
    assert [o["kind"] for o in knative] == ["Service"]  # no PodMonitor
    with pytest.raises(InvalidSpec, match=r"^spec\.monitor: "):
        check(shoal_service(repo, monitor="no"))


def test_kinds_the_cluster_does_not_serve_are_skipped(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monitor = ("monitoring.coreos.com/v1", "ServiceMonitor")
    operator, client = memory_operator(tmp_path, monkeypatch, repo,
                                       MemoryClient(unserved={monitor}))
    resource = shoal_service("s3://models/prod", **ISTIO)
    status = asyncio.run(operator.reconcile(resource))  # no ReconcileFailed
    assert not any(k[:2] == monitor for k in client.objects)
    assert len(client.objects) == 7  # everything else was applied
    ready, reconciled = status["conditions"]
    assert reconciled["status"] == "True" and reconciled["reason"] == "KindNotServed"
    assert "does not serve monitoring.coreos.com/v1 ServiceMonitor" in reconciled["message"]
    assert "spec.monitor: false" in reconciled["message"]
    assert "ServiceMonitor" not in ready["message"]  # not waited for

    # Ready once the Deployments are Available, on the resync, as everywhere else.
    watched(operator, client, resource)
    make_available(client, "fraud-v2", "fraud-v3")
    asyncio.run(operator.resync_once())
    ready = next(c for c in client.statuses[-1]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready

    # Pruning still happens (the promotion deletes the old PDB at once).
    promoted = copy.deepcopy(resource)
    promoted["spec"]["rollout"] = {"stable": "3"}
    client.writes.clear()
    asyncio.run(operator.reconcile(promoted))
    assert "delete PodDisruptionBudget fraud-v2" in client.writes

    # prometheus-operator installed later: the resync applies the ServiceMonitor.
    watched(operator, client, promoted)
    client.unserved.clear()
    asyncio.run(operator.resync_once())
    assert any(k[:2] == monitor for k in client.objects)
    reconciled = next(c for c in client.statuses[-1]["conditions"] if c["type"] == "Reconciled")
    assert reconciled["reason"] == "Applied"


def test_a_real_client_tells_an_unserved_kind_by_discovery() -> None:
    from shoal.deploy.operator.client import KubeClient

    answers = {"/apis/apps/v1": {"resources": [{"name": "deployments"},
                                               {"name": "deployments/status"}]},
               "/apis/monitoring.coreos.com/v1": None}  # the group is not there: a 404
    asked: list[str] = []

    async def scenario() -> list[bool]:
        client = KubeClient(lambda: None)  # type: ignore[arg-type,return-value]

        async def request(method: str, path: str, **_: Any) -> Any:
            asked.append(path)
            return answers[path]

        client.request = request  # type: ignore[method-assign]
        return [await client.served("apps/v1", "Deployment"),
                await client.served("monitoring.coreos.com/v1", "ServiceMonitor"),
                await client.served("monitoring.coreos.com/v1", "PodMonitor"),
                await client.served("apps/v1", "Deployment")]

    assert asyncio.run(scenario()) == [True, False, False, True]
    assert asked == ["/apis/apps/v1", "/apis/monitoring.coreos.com/v1"]  # answers are kept


# -- pruning waits for what replaces an old Deployment ----------------------------------------


def test_old_deployments_wait_for_their_replacements(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    operator, client = memory_operator(tmp_path, monkeypatch, repo)
    resource = shoal_service("s3://models/prod", **ISTIO)
    asyncio.run(operator.reconcile(resource))
    make_available(client, "fraud-v2", "fraud-v3")

    # Istio off: one Deployment "fraud" replaces fraud-v2 and fraud-v3.
    plain = copy.deepcopy(resource)
    plain["spec"] = {"repository": "s3://models/prod", "image": "ghcr.io/acme/shoal:1.0",
                     "models": ["fraud"]}
    client.writes.clear()
    asyncio.run(operator.reconcile(plain))
    deletes = sorted(w for w in client.writes if w.startswith("delete"))
    assert "delete VirtualService fraud" in deletes  # other kinds go at once
    assert not [w for w in deletes if "Deployment" in w]  # fraud is not Available yet
    names = {k[2] for k in client.objects if k[1] == "Deployment"}
    assert names == {"fraud", "fraud-v2", "fraud-v3"}

    watched(operator, client, plain)
    client.writes.clear()
    asyncio.run(operator.resync_once())  # still not Available: kept
    assert not [w for w in client.writes if w.startswith("delete")]

    make_available(client, "fraud")
    asyncio.run(operator.resync_once())
    assert sorted(w for w in client.writes if w.startswith("delete")) == [
        "delete Deployment fraud-v2", "delete Deployment fraud-v3"]
    client.writes.clear()
    asyncio.run(operator.resync_once())  # nothing more to prune, nothing written
    assert client.writes == []


def test_a_promotion_deletes_the_old_stable_once_the_new_one_is_available(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    operator, client = memory_operator(tmp_path, monkeypatch, repo)
    resource = shoal_service("s3://models/prod", **ISTIO)
    asyncio.run(operator.reconcile(resource))
    make_available(client, "fraud-v2", "fraud-v3")
    promoted = copy.deepcopy(resource)
    promoted["spec"]["rollout"] = {"stable": "3"}
    client.writes.clear()
    asyncio.run(operator.reconcile(promoted))  # fraud-v3 is up: fraud-v2 goes at once
    assert sorted(w for w in client.writes if w.startswith("delete")) == [
        "delete Deployment fraud-v2", "delete PodDisruptionBudget fraud-v2"]


# -- what a ShoalService may name, and what is shown of it -------------------------------------


def test_a_local_repository_is_refused(repo: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "fetch_repository", lambda *a, **k: pytest.fail("fetched"))
    operator = runtime.Operator(cache_dir=tmp_path)
    client = MemoryClient()
    operator.client = client  # type: ignore[assignment]
    for path in (str(repo), f"file://{repo}", "/etc"):
        status = asyncio.run(operator.reconcile(shoal_service(path)))
        _, reconciled = status["conditions"]
        assert reconciled["reason"] == "InvalidSpec" and reconciled["status"] == "False"
        assert reconciled["message"].startswith("spec.repository: ")
        assert "local path" in reconciled["message"]
    assert client.objects == {} and client.writes == []


SECRET_URI = ("https://deploy:hunter2@ci.example/repo.tar.gz?job=fraud"
              "&X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef")


def _leaks(text: str) -> list[str]:
    return [s for s in ("hunter2", "deadbeef", "AKIAEXAMPLE") if s in text]


def test_credentials_stay_out_of_status_and_logs(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from shoal.deploy.operator.client import KubeError

    def unreadable(uri: str, cache_dir: Path) -> Path:
        raise OSError(f"connection reset while reading {uri}")

    monkeypatch.setattr(runtime, "fetch_repository", unreadable)
    operator = runtime.Operator(cache_dir=tmp_path)
    client = MemoryClient()
    operator.client = client  # type: ignore[assignment]
    with pytest.raises(runtime.ReconcileFailed) as caught:
        asyncio.run(operator.reconcile(shoal_service(SECRET_URI)))
    assert "ci.example/repo.tar.gz" in str(caught.value)
    assert _leaks(str(caught.value)) == [] and _leaks(str(caught.value.status)) == []

    # The API server refuses an object (its message quotes the init container's args). The
    # renderer itself refuses such a URI today (InvalidSpec, below); the operator redacts
    # whatever a message quotes regardless.
    monkeypatch.setattr(runtime, "fetch_repository", lambda uri, cache_dir: repo)
    plain = runtime.desired_objects

    def rendered(resource: dict[str, Any], **kwargs: Any) -> Any:
        resource = copy.deepcopy(resource)
        resource["spec"]["repository"] = "https://ci.example/repo.tar.gz"
        return plain(resource, **kwargs)

    monkeypatch.setattr(runtime, "desired_objects", rendered)

    async def refuse(obj: dict[str, Any]) -> dict[str, Any]:
        raise KubeError(422, "Invalid", f"spec.template.spec.initContainers[0].args: {SECRET_URI}",
                        f"PATCH {obj['kind']}")

    client.apply = refuse  # type: ignore[method-assign]
    with pytest.raises(runtime.ReconcileFailed) as caught:
        asyncio.run(operator.reconcile(shoal_service(SECRET_URI)))
    assert _leaks(str(caught.value)) == [] and _leaks(str(caught.value.status)) == []

    # An invalid spec whose message quotes the repository.
    monkeypatch.setattr(runtime, "desired_objects", lambda *a, **k: (_ for _ in ()).throw(
        InvalidSpec("spec.repository", f"cannot read {SECRET_URI}: no models")))
    with caplog.at_level("DEBUG"):
        status = asyncio.run(operator.reconcile(shoal_service(SECRET_URI)))
    assert "cannot read https://ci.example/repo.tar.gz" in status["conditions"][0]["message"]
    assert _leaks(str(status)) == []
    assert _leaks(caplog.text) == []


def test_redact() -> None:
    assert runtime.redact(f"x {SECRET_URI} y", SECRET_URI) == "x https://ci.example/repo.tar.gz y"
    assert runtime.redact("s3://b/p is fine", "s3://b/p") == "s3://b/p is fine"


# -- RBAC for blockOwnerDeletion ----------------------------------------------------------------


@pytest.mark.parametrize("watch", [None, ["ml"]])
def test_operator_may_set_block_owner_deletion(watch: list[str] | None) -> None:
    """OwnerReferencesPermissionEnforcement (OpenShift) lets an owner reference say
    blockOwnerDeletion only with update on the owner's finalizers."""
    objects = operator_manifests(image="shoal:1", watch=watch)
    role = next(o for o in objects if o["kind"] in ("ClusterRole", "Role"))
    assert {"apiGroups": ["serving.shoal.io"], "resources": ["shoalservices/finalizers"],
            "verbs": ["update"]} in role["rules"]
