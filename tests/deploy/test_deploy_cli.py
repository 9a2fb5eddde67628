"""``shoal k8s render`` on the command line: YAML on stdout, notes and errors on stderr,
a reason instead of a traceback."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from shoal.cli.main import main

from .conftest import build_repository

IMAGE = "ghcr.io/acme/shoal:1.0"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["k8s", "render", *args])
    return result.exit_code, result.stdout, result.stderr


def test_knative_to_stdout(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "models")
    code, out, err = run(str(repo), "--name", "fraud", "--image", IMAGE, "--mode", "knative",
                         "--uri", "s3://models/prod")
    assert code == 0, err
    documents = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in documents] == ["Service", "PodMonitor"]
    assert out.startswith("---\napiVersion: serving.knative.dev/v1\n")
    assert "&id" not in out  # no YAML anchors: each object stands alone


def test_notes_go_to_stderr(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "models")
    (repo / "fraud" / "model.yaml").write_text(
        'rollout: {stable: "2", canary: {variant: "3", percent: 12.5}}\n')
    code, out, err = run(str(repo), "--name", "fraud", "--image", IMAGE, "--istio")
    assert code == 0
    assert "note: Istio weights are whole percents: the canary gets 12%" in err
    assert "note:" not in out


def test_errors_are_one_line(tmp_path: Path) -> None:
    repo = build_repository(tmp_path / "models")
    code, _, err = run(str(repo), "--name", "fraud", "--image", IMAGE, "--mode", "knative",
                       "--autoscaler", "keda")
    assert code == 1
    assert err.strip() == ("Error: --autoscaler is for --mode standard: a Knative Service scales "
                           "with Knative's own autoscaler (KPA)")
    code, _, err = run(str(tmp_path / "nope"), "--name", "fraud", "--image", IMAGE)
    assert code == 1 and "is not a folder" in err and "Traceback" not in err


def test_an_unreadable_repository_gives_the_stores_reason(tmp_path: Path) -> None:
    code, _, err = run("https://127.0.0.1:9/models.tar.gz", "--name", "fraud", "--image", IMAGE)
    assert code == 1
    assert err.startswith("Error: cannot read https://127.0.0.1:9/models.tar.gz")
    assert "Traceback" not in err


def test_a_repository_in_s3_is_read_and_fetched_by_the_pods(tmp_path: Path, monkeypatch) -> None:
    """A local S3 server (moto): the settings are read from the bucket, and the pods fetch it."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert moto.stdout is not None
        for line in moto.stdout:
            if "Running on" in line:
                break
        endpoint = f"http://127.0.0.1:{port}"
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        repo = build_repository(tmp_path / "models")
        for path in repo.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), "models", f"prod/{path.relative_to(repo)}")
        code, out, err = run("s3://models/prod", "--name", "fraud", "--image", IMAGE,
                             "--autoscaler", "keda", "--storage-secret", "s3-credentials",
                             "--namespace", "ml")
        assert code == 0, err
        documents = [d for d in yaml.safe_load_all(out) if d]
        deployment = next(d for d in documents if d["kind"] == "Deployment")
        fetch = deployment["spec"]["template"]["spec"]["initContainers"][0]
        assert fetch["args"] == ["fetch", "s3://models/prod", "/mnt/models/source"]
        scaled = next(d for d in documents if d["kind"] == "ScaledObject")
        assert scaled["spec"]["maxReplicaCount"] == 4  # from the bucket's fraud/model.yaml
        code, _, err = run("s3://no-such-bucket/prod", "--name", "fraud", "--image", IMAGE)
        assert code == 1 and err.startswith("Error: cannot read s3://no-such-bucket/prod")
        assert "Traceback" not in err
    finally:
        os.kill(moto.pid, signal.SIGTERM)
        moto.wait(10)
