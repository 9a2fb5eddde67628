"""Every example in the README runs, against a real server on the example repository.

The README is read at test time, so an example that stops working (or stops printing what
the README says it prints) fails here instead of failing a user:

- ``bash`` blocks: each command runs (``localhost:8080`` and ``:8081`` point at the test's
  server; ``shoal`` client commands find it through ``SHOAL_URL``). Comment lines starting
  at column 0 right after a command are its expected output: JSON is compared as JSON (not
  when it elides with ``…``), ``error: ...`` means exit status 1 with that message on stderr,
  other text must match stdout line by line. ``./dev`` commands are covered by
  ``test_fresh_clone.py``.
- ``python`` blocks run as scripts with the same substitutions; ``json`` blocks parse;
  ``yaml`` blocks parse, and a ``model.yaml`` example must validate (an unknown key fails).
- A block preceded by ``<!-- readme-test: skip: why -->`` is not run (benchmarks, say).

Between blocks, rollouts set by an example are removed, so each block starts from the example
repository as ``./dev serve`` serves it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from shoal.repository.config import ModelConfig

from e2e.process import ShoalProcess

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:?\s*(.*?)\s*-->")
#: Commands a test of their own covers (they install, or take minutes).
NOT_RUN_HERE = ("./dev ", "benchmarks/", ".venv/bin/python benchmarks/", "pip ")


@dataclass
class Block:
    language: str
    code: str
    line: int
    skip: str | None

    @property
    def id(self) -> str:
        return f"README.md:{self.line}:{self.language or 'text'}"


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    lines = README.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        skip = SKIP.search(before)
        blocks.append(Block(match.group(1), "\n".join(body), start + 1, skip.group(1) if skip else None))
        index += 1
    return blocks


BLOCKS = readme_blocks()


def commands(code: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) pairs: a command spans lines while a quote is open or
    a line ends with a backslash; column-0 comment lines after it are its output."""
    found: list[tuple[str, list[str]]] = []
    pending = ""
    for line in code.splitlines():
        if not pending and line.startswith("#"):
            if found:
                found[-1][1].append(line[1:].removeprefix(" "))
            continue
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue  # blank, or an indented remark about the previous command
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # a quote still open
            continue
        found.append((pending, []))
        pending = ""
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    repository = tmp_path_factory.mktemp("readme") / "repository"
    shutil.copytree(ROOT / "examples" / "repository", repository,
                    ignore=shutil.ignore_patterns(".shoal-state", "*.joblib"))
    subprocess.run([sys.executable, str(ROOT / "examples" / "build_models.py"), str(repository)],
                   check=True, capture_output=True)
    process = ShoalProcess(repository)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def pointed_at(text: str, server: ShoalProcess) -> str:
    for host in ("localhost", "127.0.0.1"):
        text = text.replace(f"{host}:8080", f"127.0.0.1:{server.http_port}")
        text = text.replace(f"{host}:8081", f"127.0.0.1:{server.grpc_port}")
    return text


def environment(server: ShoalProcess) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "SHOAL_URL": server.url}


@pytest.fixture(autouse=True)
def no_rollouts_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "server" in request.fixturenames:
        server = request.getfixturevalue("server")
        for name in ("iris", "iris-graph", "echo", "iris-stump", "diabetes"):
            httpx.delete(f"{server.url}/v2/models/{name}/rollout")


def check_output(command: str, expected: list[str], done: subprocess.CompletedProcess[str]) -> None:
    where = f"{command!r}: stdout {done.stdout!r}, stderr {done.stderr!r}"
    text = "\n".join(expected).strip()
    if text.startswith("error:"):
        assert done.returncode == 1, where
        assert done.stderr.strip() == text, where
        return
    assert done.returncode == 0, where
    if not text or "…" in text:
        return
    if text[0] in "{[":
        assert json.loads(done.stdout) == json.loads(text), where
        return
    assert [line.rstrip() for line in done.stdout.strip().splitlines()] == [
        line.rstrip() for line in expected if line.strip()
    ], where


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in ("bash", "sh", "shell")],
                         ids=lambda b: b.id)
def test_shell_examples_run(block: Block, server: ShoalProcess, tmp_path: Path) -> None:
    if block.skip is not None:
        pytest.skip(block.skip)
    ran = 0
    for command, expected in commands(block.code):
        if command.startswith(NOT_RUN_HERE):
            continue
        done = subprocess.run(["bash", "-c", pointed_at(command, server)], capture_output=True,
                              text=True, timeout=120, env=environment(server), cwd=tmp_path)
        check_output(command, expected, done)
        if command.startswith("curl") and not expected:
            assert '"error"' not in done.stdout, f"{command!r}: {done.stdout[:300]}"
        if command.startswith("curl") and expected and "…" in "".join(expected):
            assert not done.stdout.startswith('{"error"'), f"{command!r}: {done.stdout[:300]}"
        ran += 1
    if not ran:
        pytest.skip("only commands covered elsewhere (./dev, benchmarks)")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language == "python"], ids=lambda b: b.id)
def test_python_examples_run(block: Block, server: ShoalProcess, tmp_path: Path) -> None:
    if block.skip is not None:
        pytest.skip(block.skip)
    script = tmp_path / "example.py"
    script.write_text(pointed_at(block.code, server))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=180, env=environment(server), cwd=tmp_path)
    assert done.returncode == 0, f"README.md:{block.line}: {done.stderr[-2000:]}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in ("json", "yaml")],
                         ids=lambda b: b.id)
def test_data_examples_parse(block: Block) -> None:
    if block.language == "json":
        json.loads(block.code)
        return
    data = yaml.safe_load(block.code)
    assert isinstance(data, dict), f"README.md:{block.line}: not a mapping"
    if "nodes" not in data:  # a model.yaml example: every key known
        ModelConfig.model_validate(data)


def test_the_readme_has_examples_of_each_kind() -> None:
    """The harness reads what it thinks it reads (a broken fence would hide every example)."""
    languages = {b.language for b in BLOCKS}
    assert {"bash", "python", "yaml", "json"} <= languages
    assert sum(len(commands(b.code)) for b in BLOCKS if b.language == "bash") >= 10
