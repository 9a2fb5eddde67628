"""Repository sources: URIs and the cache, the mirror's rules (only what changed, atomic per
model folder, removals, locking), refused names, and S3 against a real moto server started
here on a free port."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from e2e.file_server import serving

from shoal.errors import ModelNotFound
from shoal.repository.sources import (
    FetchError,
    RepositorySource,
    fetch_model,
    fetch_repository,
    is_remote,
    local_folder,
    sync,
)
from shoal.repository.stores import safe_relative
from shoal.repository.uris import cache_key, check_uri, display, identity
from shoal.settings import ServerSettings


def write(root: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).parts[0].startswith(".")}


# --- URIs and the cache --------------------------------------------------------------------


def test_uris_and_cache_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for uri in ("s3://b/p", "gs://b/p", "gcs://b", "https://h/r.tar.gz", "http://h/r.zip"):
        assert is_remote(uri)
    for uri in ("models", "/srv/models", "file:///srv/models", "C:\\models", Path("s3:/x")):
        assert not is_remote(uri)
    with pytest.raises(ValueError, match="cannot fetch a repository from ftp://"):
        check_uri("ftp://host/models")
    with pytest.raises(ValueError, match="names no bucket"):
        check_uri("s3:///models")

    secret = "https://user:hunter2@host.example:8443/repo.tar.gz?X-Amz-Signature=abc"
    assert display(secret) == "https://host.example:8443/repo.tar.gz"
    assert "hunter2" not in cache_key(secret) and "abc" not in cache_key(secret)
    # A fresh presigned URL for the same archive finds the same cache folder.
    assert cache_key(secret) == cache_key("https://host.example:8443/repo.tar.gz?X-Amz-Signature=x")
    assert cache_key("s3://b/p") != cache_key("s3://b/q")

    assert local_folder("s3://b/p", tmp_path) == tmp_path / cache_key("s3://b/p")
    monkeypatch.setenv("SHOAL_CACHE_DIR", str(tmp_path / "env"))
    assert local_folder("s3://b/p") == tmp_path / "env" / cache_key("s3://b/p")
    assert fetch_repository(str(tmp_path)) == tmp_path  # a local folder comes back as it is
    assert fetch_repository(f"file://{tmp_path}") == tmp_path
    assert fetch_model(str(tmp_path), "m") == tmp_path / "m"

    settings = ServerSettings(repository="s3://b/p", cache_dir=tmp_path)  # type: ignore[arg-type]
    assert settings.repository_uri == "s3://b/p"
    assert settings.repository == tmp_path / cache_key("s3://b/p")
    assert ServerSettings(repository=tmp_path).repository_uri is None


@pytest.mark.parametrize(("one", "other"), [
    ("https://ci.example/job/artifacts/download?job=fraud",
     "https://ci.example/job/artifacts/download?job=churn"),
    ("https://h/repo.tar.gz?version=1", "https://h/repo.tar.gz?version=2"),
    ("https://h/repo.tar.gz?version=1", "https://h/repo.tar.gz"),
])
def test_another_query_is_another_repository(one: str, other: str) -> None:
    assert cache_key(one) != cache_key(other)
    assert identity(one) != identity(other)


@pytest.mark.parametrize("signed", [
    ("https://b.s3.amazonaws.com/r.tar.gz?job=a&X-Amz-Algorithm=AWS4-HMAC-SHA256"
     "&X-Amz-Credential=AKIA%2F20260101&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900"
     "&X-Amz-SignedHeaders=host&X-Amz-Security-Token=tok&X-Amz-Signature=abc"),
    "https://b.s3.amazonaws.com/r.tar.gz?AWSAccessKeyId=AKIA&job=a&Signature=sig&Expires=17",
    ("https://storage.googleapis.com/b/r.tar.gz?x-goog-algorithm=GOOG4-RSA-SHA256"
     "&x-goog-credential=sa&x-goog-date=20260101T000000Z&x-goog-expires=900"
     "&x-goog-signedheaders=host&x-goog-signature=abc&job=a"),
    "https://storage.googleapis.com/b/r.tar.gz?GoogleAccessId=sa&job=a&Expires=1&Signature=s",
    "https://user:hunter2@b.s3.amazonaws.com/r.tar.gz?job=a",
])
def test_only_signatures_and_credentials_are_left_out_of_the_cache_key(signed: str) -> None:
    host = signed.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    path = "/" + signed.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
    assert identity(signed) == f"https://{host}{path}?job=a"
    fresh = signed.replace("abc", "xyz").replace("sig", "other").replace("hunter2", "pw2")
    assert cache_key(signed) == cache_key(fresh)  # a fresh presigned URL finds its cache
    for secret in ("abc", "hunter2", "tok", "AKIA"):
        assert secret not in cache_key(signed) and secret not in identity(signed)


def test_names_that_leave_the_repository_are_refused() -> None:
    for name in ("../evil", "a/../../evil", "/etc/passwd", "\\evil", "C:/evil", "a\\..\\evil",
                 "a\x00b"):
        with pytest.raises(FetchError, match="refusing"):
            safe_relative(name, "the object", "s3://b/p")
    with pytest.raises(FetchError, match="empty or '.' path components"):
        safe_relative("a//b", "the object", "s3://b/p")
    assert safe_relative("./models/a/b", "the member", "x", lenient=True) == "models/a/b"
    assert safe_relative("a/b/", "the object", "x") is None


# --- The mirror, from a local folder --------------------------------------------------------


def test_mirror_fetches_only_changes_and_swaps_whole_folders(tmp_path: Path) -> None:
    source, target = tmp_path / "store", tmp_path / "copy"
    write(source, {"a/model.yaml": "a1", "a/1/w.bin": "wa", "b/model.yaml": "b1",
                   "b/1/w.bin": "wb", "c/model.yaml": "c1", "README": "r"})
    first = sync(str(source), target)
    assert first.downloaded == 6 and sorted(first.changed) == ["a", "b", "c"]
    assert tree(target) == tree(source)
    write(target, {".shoal-state/bandits.json": "{}", "mine/notes.txt": "local"})
    c_folder = (target / "c").stat().st_ino
    b_weights = (target / "b" / "1" / "w.bin").stat().st_ino

    time.sleep(0.01)
    write(source, {"b/model.yaml": "b2"})
    (source / "a" / "1" / "w.bin").unlink()
    (source / "a" / "1").rmdir()
    (source / "a" / "model.yaml").unlink()
    (source / "a").rmdir()
    (source / "README").unlink()
    second = sync(str(source), target)
    assert second.changed == ["b"] and second.downloaded == 1 and second.reused == 1
    assert second.removed == ["a"]
    assert not (target / "a").exists() and not (target / "README").exists()
    assert (target / "b" / "model.yaml").read_text() == "b2"
    assert (target / "b" / "1" / "w.bin").stat().st_ino == b_weights  # linked, not copied
    assert (target / "c").stat().st_ino == c_folder  # an unchanged folder is not touched
    # What the store never had is left alone: hidden names, a folder made here.
    assert (target / ".shoal-state" / "bandits.json").exists()
    assert (target / "mine" / "notes.txt").read_text() == "local"

    third = sync(str(source), target)
    assert third.changed == [] and third.downloaded == 0


def test_one_model_and_missing_model(tmp_path: Path) -> None:
    source, target = tmp_path / "store", tmp_path / "copy"
    write(source, {"a/model.yaml": "a", "b/model.yaml": "b"})
    report = sync(str(source), target, ["b"])
    assert report.changed == ["b"] and sorted(p.name for p in target.iterdir()
                                              if not p.name.startswith(".")) == ["b"]
    with pytest.raises(ModelNotFound, match="model 'c' is not in the repository"):
        RepositorySource(str(source), target).fetch_model("c")
    assert (target / "b" / "model.yaml").read_text() == "b"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FetchError, match="holds no files"):
        sync(str(empty), tmp_path / "copy2")


def test_leftovers_of_a_dead_fetch_are_cleared(tmp_path: Path) -> None:
    source, target = tmp_path / "store", tmp_path / "copy"
    write(source, {"a/model.yaml": "a"})
    write(target, {".shoal-fetch-a-123-1-abc/model.yaml": "half",
                   ".shoal-old-a-9-9-def/model.yaml": "old", ".shoal-fetch.json.77.1": "{"})
    sync(str(source), target)
    assert sorted(p.name for p in target.iterdir()) == [".shoal-fetch.json", ".shoal-fetch.lock", "a"]


def test_concurrent_fetches_do_not_corrupt_each_other(tmp_path: Path) -> None:
    source, target = tmp_path / "store", tmp_path / "copy"
    write(source, {f"m{i}/{j}/w.txt": f"{i}-{j}" * 200 for i in range(6) for j in range(1, 4)})
    command = [sys.executable, "-m", "shoal", "fetch", "-q", str(source), str(target)]
    processes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            RepositorySource(str(source), target).fetch()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    assert not errors
    assert tree(target) == tree(source)
    assert not [p for p in target.iterdir() if p.name.startswith((".shoal-fetch-", ".shoal-old-"))]


def test_a_model_being_read_is_not_swapped(tmp_path: Path) -> None:
    source, target = tmp_path / "store", tmp_path / "copy"
    write(source, {"a/model.yaml": "1"})
    repository = RepositorySource(str(source), target)
    repository.fetch()
    write(source, {"a/model.yaml": "22"})

    async def scenario() -> None:
        async with repository.reading():
            fetching = asyncio.ensure_future(asyncio.to_thread(repository.fetch))
            await asyncio.sleep(0.3)
            assert not fetching.done()  # waits for the read to end
            assert (target / "a" / "model.yaml").read_text() == "1"
        await asyncio.wait_for(fetching, 10)

    asyncio.run(scenario())
    assert (target / "a" / "model.yaml").read_text() == "22"


def test_missing_extra_is_named(tmp_path: Path) -> None:
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(FetchError, match=r"pip install 'shoal\[gcs\]'"):
            fetch_repository("gs://bucket/models", tmp_path)
    else:  # pragma: no cover - only where gcsfs is installed
        pytest.skip("gcsfs is installed")


# --- S3 (a real moto server) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[object, dict[str, str]]]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    client = boto3.client("s3", endpoint_url=url, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    try:
        yield client, env
    finally:
        server.stop()


@pytest.fixture
def aws(s3: tuple[object, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> object:
    client, env = s3
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return client


def test_objects_changed_between_listing_and_download(aws: object, tmp_path: Path) -> None:
    """A fetch whose objects change or vanish after the listing fails and leaves the previous
    complete copy; nothing half-made is left where a load would look."""
    client = aws
    client.create_bucket(Bucket="between")  # type: ignore[attr-defined]
    put = lambda key, body: client.put_object(Bucket="between", Key=key, Body=body)  # type: ignore[attr-defined]
    put("repo/m/model.yaml", b"v1")
    put("repo/m/w.bin", b"1" * 100)
    source = RepositorySource("s3://between/repo", tmp_path / "copy")
    source.fetch()

    put("repo/m/model.yaml", b"v2")
    put("repo/m/w.bin", b"2" * 100)
    listing = source.listing()
    client.delete_object(Bucket="between", Key="repo/m/w.bin")  # type: ignore[attr-defined]
    with pytest.raises(FetchError, match="cannot download from s3://between/repo"):
        source.apply(listing)
    assert tree(tmp_path / "copy") == {"m/model.yaml": "v1", "m/w.bin": "1" * 100}

    put("repo/m/w.bin", b"3" * 100)
    listing = source.listing()
    put("repo/m/w.bin", b"4" * 150)  # rewritten meanwhile, another size
    with pytest.raises(FetchError, match="changed while it was fetched"):
        source.apply(listing)
    assert tree(tmp_path / "copy") == {"m/model.yaml": "v1", "m/w.bin": "1" * 100}
    assert not [p for p in (tmp_path / "copy").iterdir() if p.name.startswith(".shoal-fetch-")]

    report = source.fetch()  # and the next fetch completes
    assert tree(tmp_path / "copy") == {"m/model.yaml": "v2", "m/w.bin": "4" * 150}
    assert report.downloaded == 2


@pytest.mark.parametrize("key", ["repo/../evil.txt", "repo/m/../../evil.txt", "repo//evil.txt"])
def test_object_keys_that_leave_the_repository(aws: object, tmp_path: Path, key: str) -> None:
    client = aws
    bucket = "traversal" + str(abs(hash(key)) % 1000)
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    client.put_object(Bucket=bucket, Key="repo/m/model.yaml", Body=b"ok")  # type: ignore[attr-defined]
    client.put_object(Bucket=bucket, Key=key, Body=b"evil")  # type: ignore[attr-defined]
    target = tmp_path / "a" / "b" / "copy"
    with pytest.raises(FetchError, match="refusing the object"):
        fetch_repository(f"s3://{bucket}/repo", target.parent)
    assert not list(tmp_path.rglob("evil.txt"))


def test_store_errors_are_one_line(aws: object, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as caught:
        fetch_repository("s3://no-such-bucket/x", tmp_path)
    assert str(caught.value) == ("cannot list s3://no-such-bucket/x: The specified bucket does "
                                 "not exist")
    aws.create_bucket(Bucket="empty-bucket")  # type: ignore[attr-defined]
    with pytest.raises(FetchError, match="s3://empty-bucket/models holds no files"):
        fetch_repository("s3://empty-bucket/models", tmp_path)


# --- Archives over HTTP ----------------------------------------------------------------------


@pytest.fixture
def www(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    with serving(root) as url:
        yield url, root


def _tar(path: Path, members: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w:gz") as bundle:
        for member in members:
            data = b"evil" if member.isfile() else None
            if data is not None:
                member.size = len(data)
            bundle.addfile(member, io.BytesIO(data) if data is not None else None)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = link
    return member


@pytest.mark.parametrize("members, message", [
    ([_member("m/ok.txt"), _member("../evil.txt")], "'..' would leave the repository"),
    ([_member("/tmp/evil.txt")], "an absolute path"),
    ([_member("m/link", tarfile.SYMTYPE, "/etc/passwd")], "links are not supported"),
    ([_member("m/hard", tarfile.LNKTYPE, "../../evil.txt")], "links are not supported"),
    ([_member("m/dev", tarfile.CHRTYPE)], "special files are not supported"),
])
def test_tar_members_that_leave_the_repository(www: tuple[str, Path], tmp_path: Path,
                                               members: list[tarfile.TarInfo], message: str) -> None:
    url, root = www
    _tar(root / "repo.tar.gz", members)
    target = tmp_path / "deep" / "copy"
    with pytest.raises(FetchError, match=message):
        sync(f"{url}/repo.tar.gz", target)
    assert not list(tmp_path.rglob("evil.txt"))
    assert [p.name for p in target.iterdir()] == [".shoal-fetch.lock"]


@pytest.mark.parametrize("name", ["../evil.txt", "/evil.txt", "m/../../evil.txt"])
def test_zip_members_that_leave_the_repository(www: tuple[str, Path], tmp_path: Path,
                                               name: str) -> None:
    url, root = www
    with zipfile.ZipFile(root / "repo.zip", "w") as bundle:
        bundle.writestr("m/model.yaml", "ok")
        bundle.writestr(zipfile.ZipInfo(name), "evil")
    with pytest.raises(FetchError, match="refusing the archive member"):
        sync(f"{url}/repo.zip", tmp_path / "deep" / "copy")
    assert not list(tmp_path.rglob("evil.txt"))


def test_archive_errors(www: tuple[str, Path], tmp_path: Path) -> None:
    url, root = www
    with pytest.raises(FetchError, match="HTTP 404"):
        sync(f"{url}/missing.tar.gz", tmp_path / "a")
    (root / "junk.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(FetchError, match="is not a tar or zip archive"):
        sync(f"{url}/junk.tar.gz", tmp_path / "b")
