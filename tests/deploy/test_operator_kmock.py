"""The whole operator (kopf, its handlers, the client, the resync) against kmock, an in-memory
Kubernetes API over real HTTP on loopback (there is no API server here:
``../shared/reference/real-parts.md`` §1).

kmock stores objects and streams watch events, but it is no API server: it merges patches as
JSON (no server-side apply semantics; an apply of a missing object is a 404, and the client
falls back to POST), sets no ``uid`` / ``resourceVersion`` / ``generation``
(the test gives the ShoalServices a uid, as the API server would), runs no controllers (a
Deployment never becomes Available by itself: the test writes that status) and **no garbage
collector**. Deletion is therefore checked in two halves: every object carries a controller
owner reference to its ShoalService and the ShoalService has no finalizer (so the API server
deletes it at once and Kubernetes' garbage collector deletes what it owns); the test then does
what that collector would, and checks the operator does not bring anything back.

"Untouched" is checked as kmock can: the Deployment's stored history gains no version and no
write request reaches it (on a cluster: its ``resourceVersion`` and ``generation`` stay).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from e2e.file_server import serving

kmock = pytest.importorskip("kmock")  # Python >= 3.11
kopf = pytest.importorskip("kopf")

from shoal.deploy.operator.client import RESOURCES
from shoal.deploy.operator.runtime import run

from .conftest import build_repository

# kmock 0.8 reads its bundled discovery with a deprecated importlib call.
pytestmark = pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")

GROUP_PATH = "/apis/serving.shoal.io/v1alpha1/namespaces/ml/shoalservices"
VERBS = {"list", "watch", "get", "patch", "create", "update", "delete"}


def resource_key(api_version: str, plural: str) -> str:
    return f"{api_version}/{plural}" if "/" in api_version else f"v1/{plural}"


def new_emulator(unserved: tuple[str, ...] = ()) -> Any:
    """``unserved``: plurals of kinds the cluster does not serve (prometheus-operator's)."""
    emulator = kmock.KubernetesEmulator()
    emulator.resources.load_bundled()  # else kopf waits forever for namespaces and CRDs
    emulator.resources["serving.shoal.io/v1alpha1/shoalservices"] = kmock.ResourceInfo(
        kind="ShoalService", namespaced=True, verbs=VERBS, subresources={"status"})
    for (api_version, kind), plural in RESOURCES.items():
        name = resource_key(api_version, plural)
        if name not in emulator.resources and plural not in unserved:  # Istio, KEDA, prometheus-operator, core Service
            emulator.resources[name] = kmock.ResourceInfo(kind=kind, namespaced=True,
                                                          verbs=VERBS)
    return emulator


def shoal_service(name: str, uid: str, repository: Path | str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "serving.shoal.io/v1alpha1", "kind": "ShoalService",
            "metadata": {"name": name, "namespace": "ml", "uid": uid},
            "spec": {"repository": str(repository), "image": "ghcr.io/acme/shoal:1.0", **spec}}


async def eventually(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {what}")
        await asyncio.sleep(0.05)


class Cluster:
    """Reading and writing kmock's objects the way a test needs."""

    def __init__(self, emulator: Any) -> None:
        self.k = emulator

    def objects(self, plural: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        out = {}
        for (resource, namespace, name), obj in self.k.objects.items():
            if obj.deleted or (plural and resource.plural != plural):
                continue
            out[(resource.plural, name)] = obj.raw
        return out

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        return self.objects(plural).get((plural, name))

    def history(self, plural: str, name: str) -> int:
        for (resource, _, obj_name), obj in self.k.objects.items():
            if resource.plural == plural and obj_name == name:
                return len(obj.history)
        return 0

    def writes(self, plural: str) -> list[str]:
        return [f"{r.method.value} {r.url.path}" for r in list(self.k)
                if r.resource is not None and r.resource.plural == plural
                and r.method.value in ("POST", "PATCH", "PUT", "DELETE")]

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/merge-patch+json") -> Any:
        async with getattr(self.k, method)(path, json=body,
                                           headers={"Content-Type": content_type}) as response:
            assert response.status < 400, (response.status, await response.text())
            return await response.json()

    def condition(self, name: str, kind: str = "Ready") -> dict[str, Any] | None:
        obj = self.get("shoalservices", name)
        for item in ((obj or {}).get("status") or {}).get("conditions") or []:
            if item["type"] == kind:
                return item
        return None

    def collect_garbage(self) -> list[tuple[str, str]]:
        """What Kubernetes' garbage collector does: delete objects whose owner is gone."""
        alive = {o["metadata"].get("uid") for o in self.objects("shoalservices").values()}
        removed = []
        for (resource, _, name), obj in list(self.k.objects.items()):
            if obj.deleted:
                continue
            owners = obj.raw.get("metadata", {}).get("ownerReferences") or []
            if owners and not any(o["uid"] in alive for o in owners):
                obj.delete()
                removed.append((resource.plural, name))
        return removed


#: What the ShoalServices name (the operator refuses local paths); ``fetch_repository`` is
#: stood in for by the local folder.
REPOSITORY = "s3://models/prod"


def test_operator_against_kmock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.deploy.operator import runtime

    folder = build_repository(tmp_path / "models")
    monkeypatch.setattr(runtime, "fetch_repository", lambda uri, cache_dir: folder)
    repo = REPOSITORY
    threads = set(threading.enumerate())
    asyncio.run(asyncio.wait_for(scenario(repo, tmp_path / "cache"), timeout=60))
    assert set(threading.enumerate()) <= threads  # the operator and kmock left nothing running


async def scenario(repo: str, cache: Path) -> None:
    started = time.monotonic()
    async with new_emulator() as emulator, kmock.Server(emulator):
        cluster = Cluster(emulator)
        stop, ready = asyncio.Event(), asyncio.Event()
        connection = kopf.ConnectionInfo(server=str(emulator.url), scheme="Bearer", token="t")
        operator = asyncio.create_task(run(
            namespaces=["ml"], connection=connection, post_events=False, stop_flag=stop,
            ready_flag=ready, resync=0.3, retry_delay=1, cache_dir=cache))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            await steps(cluster, repo)
        finally:
            stop.set()
            await asyncio.wait_for(operator, 15)
    assert time.monotonic() - started < 40


async def steps(cluster: Cluster, repo: str) -> None:
    rollout = {"stable": "2", "canary": {"variant": "3", "percent": 10}}
    fraud = shoal_service("fraud", "uid-fraud", repo, istio=True, models=["fraud"],
                          rollout=rollout)
    # Invalid beside it: one the schema refuses (kmock, unlike the API server, stores it),
    # one only rendering refuses.
    percent = shoal_service("bad-percent", "uid-bad-1", repo, istio=True, models=["fraud"],
                            rollout={"canary": {"variant": "3", "percent": 150}})
    mesh = shoal_service("bad-mesh", "uid-bad-2", repo, mode="knative", istio=True)
    for body in (percent, fraud, mesh):
        await cluster.request("post", GROUP_PATH, body, "application/json")

    # -- create: the objects appear, owned by the ShoalService --------------------------------
    await eventually(lambda: cluster.condition("fraud", "Reconciled"), "fraud reconciled")
    for plural, name in [("deployments", "fraud-v2"), ("deployments", "fraud-v3"),
                         ("services", "fraud"), ("destinationrules", "fraud")]:
        obj = cluster.get(plural, name)
        assert obj is not None, (plural, name)
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["uid"] == "uid-fraud" and owner["controller"] is True
    owned = {k for k, o in cluster.objects().items()
             if any(r["uid"] == "uid-fraud" for r in o["metadata"].get("ownerReferences", []))}
    assert len(owned) == 8  # 2 Deployments, Service, 2 PDBs, ServiceMonitor, VS, DR

    status = (await eventually(lambda: cluster.get("shoalservices", "fraud").get("status", {})
                               .get("traffic"), "fraud's traffic"))
    assert status == [{"variant": "2", "role": "stable", "percent": 90},
                      {"variant": "3", "role": "canary", "percent": 10}]
    fraud_status = cluster.get("shoalservices", "fraud")["status"]
    assert fraud_status["url"] == "http://fraud.ml.svc.cluster.local:8080"
    assert cluster.condition("fraud")["status"] == "False"  # no Deployment is Available yet
    assert cluster.condition("fraud", "Reconciled")["status"] == "True"
    assert not cluster.get("shoalservices", "fraud")["metadata"].get("finalizers")

    # -- the invalid ones say which field, and own nothing ------------------------------------
    bad = await eventually(lambda: cluster.condition("bad-percent"), "bad-percent's condition")
    assert bad["status"] == "False" and bad["reason"] == "InvalidSpec"
    assert bad["message"].startswith("spec.rollout.canary.percent: 150 is greater than")
    bad = await eventually(lambda: cluster.condition("bad-mesh"), "bad-mesh's condition")
    assert bad["reason"] == "InvalidSpec" and bad["message"].startswith("spec.istio: ")
    assert not cluster.get("deployments", "bad-percent-v2")
    assert not cluster.get("services", "bad-mesh")

    # -- Ready once the Deployments are Available (a resync notices) --------------------------
    for name in ("fraud-v2", "fraud-v3"):
        await cluster.request("patch", f"/apis/apps/v1/namespaces/ml/deployments/{name}/status",
                              {"status": {"conditions": [{"type": "Available",
                                                          "status": "True"}]}})
    await eventually(lambda: (cluster.condition("fraud") or {}).get("status") == "True",
                     "fraud Ready")

    # -- a new canary percent: the VirtualService changes, the Deployments do not -------------
    histories = {n: cluster.history("deployments", n) for n in ("fraud-v2", "fraud-v3")}
    writes = len(cluster.writes("deployments"))
    await cluster.request("patch", f"{GROUP_PATH}/fraud",
                          {"spec": {"rollout": {"canary": {"percent": 30}}}})

    def weights() -> list[int] | None:
        service = cluster.get("virtualservices", "fraud")
        found = [r["weight"] for r in service["spec"]["http"][0]["route"]]
        return found if found == [70, 30] else None

    await eventually(weights, "VirtualService weights 70/30")
    await eventually(lambda: [t["percent"] for t in cluster.get("shoalservices", "fraud")
                              ["status"]["traffic"]] == [70, 30], "status traffic 70/30")
    await asyncio.sleep(0.7)  # two resyncs: they leave the Deployments alone too
    assert {n: cluster.history("deployments", n) for n in histories} == histories
    assert len(cluster.writes("deployments")) == writes

    # -- an object deleted by hand comes back -------------------------------------------------
    await cluster.request("delete", "/api/v1/namespaces/ml/services/fraud")
    await eventually(lambda: cluster.get("services", "fraud"), "Service fraud re-created")

    # -- fixing an invalid one reconciles it --------------------------------------------------
    await cluster.request("patch", f"{GROUP_PATH}/bad-percent",
                          {"spec": {"rollout": {"canary": {"percent": 20}}}})
    await eventually(lambda: cluster.get("deployments", "bad-percent-v3"), "bad-percent fixed")
    await eventually(lambda: (cluster.condition("bad-percent", "Reconciled") or {})
                     .get("status") == "True", "bad-percent Reconciled")

    # -- promotion: the old stable's Deployment and PDB are pruned ----------------------------
    await cluster.request("patch", f"{GROUP_PATH}/fraud",
                          {"spec": {"rollout": {"stable": "3", "canary": None}}})
    await eventually(lambda: not cluster.get("deployments", "fraud-v2")
                     and not cluster.get("poddisruptionbudgets", "fraud-v2"), "fraud-v2 pruned")
    route = cluster.get("virtualservices", "fraud")["spec"]["http"][0]["route"]
    assert route == [{"destination": {"host": "fraud.ml.svc.cluster.local", "subset": "v3"},
                      "weight": 100}]
    assert cluster.get("deployments", "bad-percent-v4")  # other ShoalServices' are not

    # -- delete: no finalizer holds it; what it owned goes with it ----------------------------
    left = {k for k, o in cluster.objects().items()
            if any(r["uid"] == "uid-fraud" for r in o["metadata"].get("ownerReferences", []))}
    await cluster.request("delete", f"{GROUP_PATH}/fraud")
    assert not cluster.get("shoalservices", "fraud")  # gone at once
    removed = set(cluster.collect_garbage())
    assert left <= removed and ("deployments", "bad-percent-v3") not in removed
    await asyncio.sleep(0.7)  # the operator forgot it: two resyncs re-create nothing
    assert not cluster.get("deployments", "fraud-v3")
    assert not cluster.get("services", "fraud")
    assert cluster.get("services", "bad-percent")


def test_the_shoal_operator_command_with_a_kubeconfig(tmp_path: Path) -> None:
    """``shoal operator -n ml`` as a user runs it: credentials from $KUBECONFIG, stopped by
    SIGTERM (kopf's graceful stop), exit status 0."""
    import tarfile

    folder = build_repository(tmp_path / "models")
    www = tmp_path / "www"
    www.mkdir()
    with tarfile.open(www / "models.tar.gz", "w:gz") as bundle:
        for child in sorted(folder.iterdir()):
            bundle.add(child, arcname=child.name)

    with serving(www) as url:
        asyncio.run(asyncio.wait_for(command_scenario(f"{url}/models.tar.gz", tmp_path),
                                     timeout=60))


async def command_scenario(repo: str, tmp_path: Path) -> None:
    import os
    import signal
    import sys

    import yaml

    # A cluster without prometheus-operator: the ServiceMonitor is skipped, with a warning
    # condition, and the rest is reconciled.
    async with new_emulator(unserved=("servicemonitors", "podmonitors")) as emulator, \
            kmock.Server(emulator):
        cluster = Cluster(emulator)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "me"}}],
            "clusters": [{"name": "kmock", "cluster": {"server": str(emulator.url)}}],
            "users": [{"name": "me", "user": {"token": "t"}}]}))
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shoal", "operator", "--namespace", "ml", "--no-events",
            "--resync", "1", "--cache-dir", str(tmp_path / "cache"), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            await cluster.request("post", GROUP_PATH, shoal_service("iris", "uid-iris", repo),
                                  "application/json")
            await eventually(lambda: cluster.condition("iris", "Reconciled"), "iris reconciled",
                             timeout=30)
            assert cluster.get("deployments", "iris") and cluster.get("services", "iris")
            reconciled = cluster.condition("iris", "Reconciled")
            assert reconciled["status"] == "True", reconciled
            assert reconciled["reason"] == "KindNotServed", reconciled
            assert "monitoring.coreos.com/v1 ServiceMonitor" in reconciled["message"]
            await cluster.request("patch", "/apis/apps/v1/namespaces/ml/deployments/iris/status",
                                  {"status": {"conditions": [{"type": "Available",
                                                              "status": "True"}]}})
            await eventually(lambda: (cluster.condition("iris") or {}).get("status") == "True",
                             "iris Ready without its ServiceMonitor", timeout=30)
            process.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(process.communicate(), 20)
            text = output.decode()
            assert process.returncode == 0, text
            assert "reconciling ShoalServices in ml (kubeconfig" in text
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
