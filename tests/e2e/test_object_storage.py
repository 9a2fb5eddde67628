"""Repositories in object storage: a real S3 server (moto's ``moto_server``, started here on a
free port and stopped by its PID), ``shoal serve s3://...`` and ``shoal fetch`` as users run
them, and archives over HTTP from a local ``http.server``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .file_server import serving
from .moto_server import MotoServer, free_port
from .process import ShoalProcess

SCALE = """
    import numpy as np
    from shoal import Model, Tensor

    class Scale(Model):
        def predict(self, request):
            x = request.inputs[0].data
            return [Tensor.from_numpy("y", x * float(self.parameters.get("factor", 1)))]
"""

BODY = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}]}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "requests.log")
    try:
        yield server
    finally:
        server.stop()


def scale_model(prefix: str, factor: float) -> dict[str, str]:
    import textwrap

    return {f"{prefix}/model.py": textwrap.dedent(SCALE).lstrip(),
            f"{prefix}/model.yaml": f"runtime: custom\nparameters: {{factor: {factor}}}\n"}


def shoal(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60, check=False)


def infer(url: str, model: str) -> list[float]:
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=BODY, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]


def test_serve_from_s3_and_reload_refetches(moto: MotoServer, tmp_path: Path) -> None:
    bucket = "serve-bucket"
    moto.client.create_bucket(Bucket=bucket)
    moto.upload(bucket, {**scale_model("models/scale", 2), **scale_model("models/other", 5)})
    cache = tmp_path / "cache"
    server = ShoalProcess(f"s3://{bucket}/models", "--cache-dir", str(cache), env=moto.env)
    try:
        server.wait_ready()
        assert infer(server.url, "scale") == [2.0, 4.0]
        assert infer(server.url, "other") == [5.0, 10.0]
        [local] = [p for p in cache.iterdir()]  # one folder per URI
        inodes = {p: (local / p).stat().st_ino for p in ("scale/model.py", "other/model.py")}
        before = len(moto.object_gets(bucket))
        assert before == 4  # each object once

        # A new model.yaml in the bucket, then a repository load: the new version serves,
        # and only the changed object was downloaded.
        moto.upload(bucket, scale_model("models/scale", 3))
        response = httpx.post(f"{server.url}/v2/repository/models/scale/load", timeout=30)
        assert response.status_code == 200, response.text
        assert infer(server.url, "scale") == [3.0, 6.0]
        assert moto.object_gets(bucket)[before:] == ["models/scale/model.yaml"]
        assert {p: (local / p).stat().st_ino for p in inodes} == inodes  # linked, not fetched
        assert not [p.name for p in local.iterdir() if p.name.startswith(".shoal-fetch-")]

        # A re-fetch that fails keeps the previous copy serving, and says why.
        for key in scale_model("models/scale", 3):
            moto.client.delete_object(Bucket=bucket, Key=key)
        response = httpx.post(f"{server.url}/v2/repository/models/scale/load", timeout=30)
        assert response.status_code == 404
        assert "is not in the repository s3://serve-bucket/models" in response.json()["error"]
        assert infer(server.url, "scale") == [3.0, 6.0]
        for key in scale_model("models/other", 5):
            moto.client.delete_object(Bucket=bucket, Key=key)
        moto.client.delete_bucket(Bucket=bucket)
        response = httpx.post(f"{server.url}/v2/repository/models/other/load", timeout=60)
        assert response.status_code == 502
        assert "bucket does not exist" in response.json()["error"]
        assert infer(server.url, "other") == [5.0, 10.0]
    finally:
        server.stop()
    events = [e for e in server.log_events() if e["event"] == "model_reload_failed"]
    assert {e["model"] for e in events} == {"scale", "other"}


def test_unreadable_repository_fails_before_binding(moto: MotoServer, tmp_path: Path) -> None:
    port = str(free_port())
    started = time.monotonic()
    result = shoal("serve", "s3://no-such-bucket/models", "--http-port", port,
                   "--grpc-port", "0", "--cache-dir", str(tmp_path), env=moto.env)
    assert result.returncode != 0
    assert result.stdout == ""  # no "listening" line: no port was bound
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("cannot fetch the repository: cannot list s3://no-such-bucket/models: "
                    "The specified bucket does not exist")
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30

    fetched = shoal("fetch", "s3://no-such-bucket/models", str(tmp_path / "out"), env=moto.env)
    assert fetched.returncode == 1
    assert fetched.stderr.strip() == ("Error: cannot list s3://no-such-bucket/models: "
                                      "The specified bucket does not exist")


def test_shoal_fetch_downloads_only_what_changed(moto: MotoServer, tmp_path: Path) -> None:
    bucket = "fetch-bucket"
    moto.client.create_bucket(Bucket=bucket)
    moto.upload(bucket, {**scale_model("repo/a", 1), "repo/b/1/weights.bin": b"\x00" * 1000,
                         "repo/b/model.yaml": "runtime: custom\n", "repo/README.md": "hello"})
    target = tmp_path / "models"
    uri = f"s3://{bucket}/repo"

    first = shoal("fetch", uri, str(target), env=moto.env)
    assert first.returncode == 0, first.stderr
    assert "5 file(s) downloaded" in first.stdout
    assert (target / "b" / "1" / "weights.bin").stat().st_size == 1000
    assert (target / "README.md").read_text() == "hello"
    gets = len(moto.object_gets(bucket))

    again = shoal("fetch", uri, str(target), env=moto.env)
    assert again.returncode == 0 and "0 file(s) downloaded" in again.stdout
    assert len(moto.object_gets(bucket)) == gets  # listed, nothing downloaded

    moto.upload(bucket, {"repo/b/1/weights.bin": b"\x01" * 2000, "repo/c/model.yaml": "x: 1\n"})
    moto.client.delete_object(Bucket=bucket, Key="repo/a/model.py")
    moto.client.delete_object(Bucket=bucket, Key="repo/README.md")
    changed = shoal("fetch", uri, str(target), env=moto.env)
    assert changed.returncode == 0, changed.stderr
    assert sorted(moto.object_gets(bucket)[gets:]) == ["repo/b/1/weights.bin", "repo/c/model.yaml"]
    assert (target / "b" / "1" / "weights.bin").read_bytes() == b"\x01" * 2000
    assert not (target / "a" / "model.py").exists() and (target / "a" / "model.yaml").exists()
    assert not (target / "README.md").exists()

    one = shoal("fetch", uri, str(tmp_path / "one"), "--model", "b", env=moto.env)
    assert one.returncode == 0, one.stderr
    assert sorted(p.name for p in (tmp_path / "one").iterdir() if not p.name.startswith(".")) == ["b"]
    missing = shoal("fetch", uri, str(tmp_path / "one"), "--model", "nope", env=moto.env)
    assert missing.returncode == 1
    assert "model 'nope' is not in the repository s3://fetch-bucket/repo" in missing.stderr


def test_killed_fetch_leaves_the_previous_copy(moto: MotoServer, tmp_path: Path) -> None:
    """A fetch killed while it downloads a model leaves the complete previous copy; the next
    fetch clears what it left and completes."""
    bucket = "crash-bucket"
    moto.client.create_bucket(Bucket=bucket)
    moto.upload(bucket, {"repo/big/model.yaml": "version: 1\n", "repo/big/weights.bin": b"a" * 1000})
    target = tmp_path / "models"
    uri = f"s3://{bucket}/repo"
    assert shoal("fetch", uri, str(target), env=moto.env).returncode == 0

    moto.upload(bucket, {"repo/big/model.yaml": "version: 2\n",
                         "repo/big/weights.bin": os.urandom(48 * 1024 * 1024)})
    fetch = subprocess.Popen([sys.executable, "-m", "shoal", "fetch", uri, str(target)],
                             env={**os.environ, **moto.env}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not any((p / "weights.bin").exists() for p in target.glob(".shoal-fetch-big-*")):
            assert fetch.poll() is None, "the fetch finished before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        os.kill(fetch.pid, signal.SIGKILL)
    finally:
        fetch.wait()
    assert fetch.returncode == -signal.SIGKILL
    assert (target / "big" / "model.yaml").read_text() == "version: 1\n"
    assert (target / "big" / "weights.bin").read_bytes() == b"a" * 1000
    assert sorted(p.name for p in (target / "big").iterdir()) == ["model.yaml", "weights.bin"]

    done = shoal("fetch", uri, str(target), env=moto.env)
    assert done.returncode == 0, done.stderr
    assert (target / "big" / "model.yaml").read_text() == "version: 2\n"
    assert (target / "big" / "weights.bin").stat().st_size == 48 * 1024 * 1024
    assert not [p for p in target.iterdir() if p.name.startswith((".shoal-fetch-", ".shoal-old-"))]


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server for the files in a folder (archives of repositories)."""
    root = tmp_path / "www"
    root.mkdir()
    with serving(root) as url:
        yield url, root


def test_archives_over_http(http_files: tuple[str, Path], tmp_path: Path) -> None:
    import textwrap

    from shoal.repository.sources import sync

    url, www = http_files
    repo = tmp_path / "src" / "models"  # packed with its folder: tar czf r.tgz models/
    for name, factor in (("scale", 2), ("other", 5)):
        (repo / name).mkdir(parents=True)
        (repo / name / "model.py").write_text(textwrap.dedent(SCALE).lstrip())
        (repo / name / "model.yaml").write_text(f"runtime: custom\nparameters: {{factor: {factor}}}\n")

    def pack() -> None:
        with tarfile.open(www / "repo.tar.gz", "w:gz") as bundle:
            bundle.add(repo, arcname="models")
        with zipfile.ZipFile(www / "repo.zip", "w") as bundle:
            for path in sorted(repo.rglob("*")):
                if path.is_file():
                    bundle.write(path, path.relative_to(repo).as_posix())

    pack()
    target = tmp_path / "from-tar"
    report = sync(f"{url}/repo.tar.gz", target)
    assert sorted(report.changed) == ["other", "scale"]
    assert (target / "scale" / "model.py").is_file()
    inode = (target / "other" / "model.py").stat().st_ino
    again = sync(f"{url}/repo.tar.gz", target)
    assert again.not_modified and again.changed == [] and again.downloaded == 0

    (repo / "scale" / "model.yaml").write_text("runtime: custom\nparameters: {factor: 7}\n")
    pack()
    later = time.time() + 5
    os.utime(www / "repo.tar.gz", (later, later))  # a newer Last-Modified, to the second
    changed = sync(f"{url}/repo.tar.gz", target)
    assert changed.changed == ["scale"] and changed.downloaded == 1
    assert "factor: 7" in (target / "scale" / "model.yaml").read_text()
    assert (target / "other" / "model.py").stat().st_ino == inode

    # A zip archive, served: shoal serve http://.../repo.zip
    server = ShoalProcess(f"{url}/repo.zip", "--cache-dir", str(tmp_path / "cache"))
    try:
        server.wait_ready()
        assert infer(server.url, "scale") == [7.0, 14.0]
    finally:
        server.stop()


def test_watch_follows_the_bucket(moto: MotoServer, tmp_path: Path) -> None:
    """--watch on a bucket: each look fetches the repository again; new, changed and removed
    model folders are loaded, reloaded and unloaded as for a local folder."""
    bucket = "watch-bucket"
    moto.client.create_bucket(Bucket=bucket)
    moto.upload(bucket, scale_model("models/scale", 2))
    server = ShoalProcess(f"s3://{bucket}/models", "--cache-dir", str(tmp_path), "--watch",
                          "--watch-interval", "0.2", env=moto.env)

    def wait_for(condition: object, what: str) -> None:
        deadline = time.monotonic() + 20
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    def answers(model: str) -> list[float] | None:
        response = httpx.post(f"{server.url}/v2/models/{model}/infer", json=BODY, timeout=10)
        return response.json()["outputs"][0]["data"] if response.status_code == 200 else None

    try:
        server.wait_ready()
        assert answers("scale") == [2.0, 4.0]
        moto.upload(bucket, {**scale_model("models/scale", 4), **scale_model("models/fresh", 10)})
        wait_for(lambda: answers("scale") == [4.0, 8.0], "the changed model")
        wait_for(lambda: answers("fresh") == [10.0, 20.0], "the new model")
        for key in scale_model("models/scale", 4):
            moto.client.delete_object(Bucket=bucket, Key=key)
        wait_for(lambda: httpx.get(f"{server.url}/v2/models/scale").status_code == 404,
                 "the removed model")
        assert answers("fresh") == [10.0, 20.0]
    finally:
        server.stop()
