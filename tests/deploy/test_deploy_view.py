"""``shoal k8s view``: the repository one unit's pods serve, built from links in the pod."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from shoal.cli.main import main
from shoal.deploy import build_view, read_repository, render
from shoal.deploy.view import ViewError

from .conftest import build_repository


def plans(objects: list[dict]) -> dict[str, dict]:
    out = {}
    for d in objects:
        if d["kind"] != "Deployment":
            continue
        view = next(c for c in d["spec"]["template"]["spec"]["initContainers"] if c["name"] == "view")
        out[d["metadata"]["name"]] = json.loads(view["args"][view["args"].index("--plan") + 1])
    return out


def test_each_istio_unit_serves_its_variant_only(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "models")
    objects = render(repo, name="fraud", image="shoal", istio=True, autoscaler="keda",
                     namespace="ml")
    for name, plan in plans(objects).items():
        # What the init container runs, through the CLI.
        result = CliRunner().invoke(main, ["k8s", "view", str(repo), str(tmp_path / name),
                                           "--plan", json.dumps(plan)])
        assert result.exit_code == 0, result.output
        served = {m.name: m for m in read_repository(tmp_path / name)}
        assert set(served) == {"fraud", "gpu", "scorer", "java-model", "pipeline"}
        version = int(name.removeprefix("fraud-v"))
        fraud = served["fraud"]
        assert fraud.versions == [version] and fraud.served == [version]
        assert fraud.config.rollout is None and fraud.config.autoscaling is None
        assert fraud.config.max_inflight == 32  # the rest of model.yaml is kept
        assert (tmp_path / name / "fraud" / "background.npy").is_symlink()
        # scorer serves its newest version (latest: 1): only that one is in the view
        assert served["scorer"].versions == [2] and served["scorer"].config.workers == 2
        assert served["java-model"].config.command == ["java", "-jar", "model.jar"]
        assert served["pipeline"].graph
        # The server refuses a model folder that is a link out of the served root.
        assert not (tmp_path / name / "pipeline").is_symlink()
        assert (tmp_path / name / "pipeline").resolve().parent == (tmp_path / name).resolve()


def test_knative_unit_keeps_the_shadow_in_process(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "models")
    service = render(repo, name="fraud", image="shoal", mode="knative")[0]
    view = service["spec"]["template"]["spec"]["initContainers"][0]
    plan = json.loads(view["args"][-1])
    built = build_view(repo, tmp_path / "repo", plan)
    fraud = next(m for m in read_repository(built) if m.name == "fraud")
    assert fraud.served == [3, 4]
    assert fraud.config.rollout is not None
    assert fraud.config.rollout.to_json() == {"stable": "3", "shadow": {
        "variant": "4", "percent": 50.0, "max_pending": 64}}
    raw = yaml.safe_load((built / "fraud" / "model.yaml").read_text())
    assert raw["version_policy"] == "all" and "autoscaling" not in raw


def test_a_variant_that_is_another_model_is_served_under_the_public_name(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "models")
    plan = {"models": {"fraud": {"from": "scorer", "versions": [2]}}}
    built = build_view(repo, tmp_path / "repo", plan)
    (fraud,) = read_repository(built)
    assert fraud.name == "fraud" and fraud.served == [2] and fraud.config.workers == 2


def test_the_view_is_replaced_whole(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "models")
    dest = tmp_path / "repo"
    build_view(repo, dest, {"models": {"fraud": {"from": "fraud", "versions": [1]}}})
    build_view(repo, dest, {"models": {"gpu": {"from": "gpu", "versions": [1]}}})
    assert sorted(p.name for p in dest.iterdir()) == ["gpu"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "repo"]


@pytest.mark.parametrize(("plan", "message"), [
    ({"models": {"fraud": {"from": "nope"}}}, "not in the repository"),
    ({"models": {"fraud": {"from": "fraud", "versions": [9]}}}, "has no version 9"),
    ({"models": {"../x": {"from": "fraud"}}}, "invalid model name"),
])
def test_bad_plans_fail_with_a_reason(tmp_path: Path, plan: dict, message: str) -> None:
    repo = build_repository(tmp_path / "models")
    result = CliRunner().invoke(main, ["k8s", "view", str(repo), str(tmp_path / "repo"),
                                       "--plan", json.dumps(plan)])
    assert result.exit_code == 1
    assert message in result.output
    with pytest.raises(ViewError, match="not JSON"):
        from shoal.deploy.view import parse_plan

        parse_plan("{nope")


def test_an_autoscaling_override_reaches_the_servers_own_scaler(tmp_path: Path) -> None:
    """Without a Kubernetes autoscaler the pods keep Shoal's scaler: an ``autoscaling``
    override (a ShoalService's spec) is written into the served model.yaml files."""
    repo = build_repository(tmp_path / "models")
    override = {"min_replicas": 1, "max_replicas": 3, "target_concurrency": 5}
    objects = render(repo, name="fraud", image="shoal", autoscaling_override=override)
    (plan,) = plans(objects).values()
    assert plan["models"]["fraud"]["autoscaling"] == override
    assert "autoscaling" not in plan["models"]["pipeline"]
    built = build_view(repo, tmp_path / "repo", plan)
    served = {m.name: m for m in read_repository(built)}
    for name in ("fraud", "scorer"):
        scaling = served[name].autoscaling
        assert scaling is not None and scaling.max_replicas == 3
        assert scaling.resolved().target_concurrency == 5
    # With a Kubernetes autoscaler the override is the autoscaler's, and the files' go.
    hpa = render(repo, name="fraud", image="shoal", autoscaler="hpa", autoscaling_override=override)
    (plan,) = plans(hpa).values()
    assert "autoscaling" not in plan["models"]["fraud"] and plan["drop"] == ["autoscaling"]
