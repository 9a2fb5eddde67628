"""What a rendered pod runs, in order, on this machine: the ``fetch`` init container
(``shoal fetch``, from a folder here instead of object storage), the ``view`` init container,
then ``shoal serve`` with the server container's arguments. The canary unit of an Istio
render serves the canary version only, under the public name, with no rollout of its own,
and a graph of the repository loads and answers through that model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
from click.testing import CliRunner
from e2e.process import ShoalProcess

from shoal.cli.main import main
from shoal.deploy import render

ECHO = Path(__file__).resolve().parents[2] / "examples" / "repository" / "echo"


def test_the_canary_pod_serves_the_canary(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for version in ("1", "2", "3"):
        (store / "fraud" / version).mkdir(parents=True)
        shutil.copy(ECHO / "model.py", store / "fraud" / version / "model.py")
    (store / "fraud" / "model.yaml").write_text(
        (ECHO / "model.yaml").read_text() + "version_policy: all\n"
        "autoscaling: {min_replicas: 1, max_replicas: 3}\n"
        'rollout: {stable: "2", canary: {variant: "3", percent: 10}}\n')
    # A graph over the model: its folder in the view must load (not a link out of the root).
    (store / "pipeline").mkdir()
    (store / "pipeline" / "graph.yaml").write_text("nodes:\n  root: {kind: model, model: fraud}\n")
    objects = render(store, name="fraud", image="shoal", istio=True, autoscaler="hpa",
                     uri=str(store))
    canary = next(o for o in objects if o["metadata"]["name"] == "fraud-v3"
                  and o["kind"] == "Deployment")
    pod = canary["spec"]["template"]["spec"]
    mount = tmp_path / "mnt"

    def in_pod(args: list[str]) -> list[str]:
        return [a.replace("/mnt/models", str(mount)) for a in args]

    for init in pod["initContainers"]:
        assert init["command"] == ["shoal"]
        result = CliRunner().invoke(main, in_pod(init["args"]))
        assert result.exit_code == 0, (init["name"], result.output)
    server = pod["containers"][0]
    args = in_pod(server["args"])
    assert args[:2] == ["serve", str(mount / "repo")]
    options = [a for i, a in enumerate(args[2:]) if a not in ("--http-port", "--grpc-port")
               and args[2:][i - 1] not in ("--http-port", "--grpc-port")]
    shoal = ShoalProcess(mount / "repo", *[a for a in options if a not in ("--host", "0.0.0.0")])
    try:
        shoal.wait_ready()
        metadata = httpx.get(f"{shoal.url}/v2/models/fraud").json()
        assert metadata["versions"] == ["3"]
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
        answer = httpx.post(f"{shoal.url}/v2/models/fraud/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "3"
        assert answer.json()["outputs"][0]["data"] == ["HI"]
        assert not (mount / "repo" / "pipeline").is_symlink()
        assert httpx.get(f"{shoal.url}/v2/models/pipeline/ready").status_code == 200
        through = httpx.post(f"{shoal.url}/v2/models/pipeline/infer", json=body)
        assert through.status_code == 200, through.text
        assert through.json()["outputs"][0]["data"] == ["HI"]
        rollout = httpx.get(f"{shoal.url}/v2/models/fraud/rollout").json()
        assert rollout["state"] == "none"  # Istio splits; the pod has no rollout of its own
        replicas = httpx.get(f"{shoal.url}/v2/models/fraud/replicas").json()
        assert replicas["versions"][0]["autoscaling"] is None  # the HPA scales pods instead
    finally:
        assert shoal.stop() == 0
    assert json.loads(pod["initContainers"][1]["args"][-1])["drop"] == ["autoscaling"]
