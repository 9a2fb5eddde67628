"""The README's first command on a fresh clone: `./dev serve` installs what the example
repository needs into a new virtualenv, builds the example models and serves them.

It clones this repository's HEAD (what a new user gets; uncommitted changes are not in it) and
installs with pip as `./dev` does, through the machine's own pip configuration. About 20-35 s
on a 2-core machine; it runs in the default suite (marked `slow` so `-m "not slow"` can skip it).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        shutil.which("git") is None or not (ROOT / ".git").exists(),
        reason="needs git and a git checkout to clone",
    ),
]

LISTEN_TIMEOUT = 240  # the install, the example models and the bind: ~30 s here


def _drain(stream, sink: list[str], lines: queue.Queue | None = None) -> None:
    for line in stream:
        sink.append(line)
        if lines is not None:
            lines.put(line)
    if lines is not None:
        lines.put(None)


def test_dev_serve_from_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "shoal"
    venv = tmp_path / "venv"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    assert not any((clone / "examples" / "repository").rglob("*.joblib"))

    # The user's environment, less anything that points at another Python environment.
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHON")}
    env["SHOAL_VENV"] = str(venv)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["./dev", "serve", "--http-port", "0", "--grpc-port", "0"],
        cwd=clone, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: stopped below whatever happens
    )
    # Both pipes are drained as they are written (pip's output alone is ~100 lines).
    out: list[str] = []
    err: list[str] = []
    stdout_lines: queue.Queue = queue.Queue()
    readers = [threading.Thread(target=_drain, args=(proc.stdout, out, stdout_lines), daemon=True),
               threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True)]
    for reader in readers:
        reader.start()

    def said() -> str:
        return f"stdout:\n{''.join(out)}\nstderr (last 60 lines):\n{''.join(err[-60:])}"

    try:
        # stdout is the server's alone: its first line is the JSON "listening" line.
        try:
            first = stdout_lines.get(timeout=LISTEN_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"no listening line within {LISTEN_TIMEOUT} s\n{said()}")
        assert first is not None, f"./dev serve exited ({proc.wait()}) before listening\n{said()}"
        listening = json.loads(first)
        assert listening["event"] == "listening", said()
        url = f"http://127.0.0.1:{listening['http_port']}"

        with httpx.Client(base_url=url, timeout=10) as client:
            deadline = time.monotonic() + 60
            while client.get("/v2/health/ready").status_code != 200:
                assert proc.poll() is None, f"the server died\n{said()}"
                assert time.monotonic() < deadline, f"not ready within 60 s\n{said()}"
                time.sleep(0.1)
            elapsed = time.monotonic() - started

            answer = client.post("/v2/models/iris/infer", json={"inputs": [
                {"name": "input-0", "datatype": "FP64", "shape": [1, 4],
                 "data": [5.1, 3.5, 1.4, 0.2]}]})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["model_name"] == "iris"
            assert body["model_version"] == "2"
            assert body["outputs"][0]["name"] == "predict"
            assert body["outputs"][0]["data"] == [0]

        # What ./dev says, and pip's own output, went to stderr as it worked.
        log = "".join(err)
        assert "[dev] installing Shoal and scikit-learn" in log, said()
        assert "Successfully installed" in log, said()
        assert "[dev] building the example models" in log, said()
        print(f"fresh clone to ready: {elapsed:.1f} s")

        # Only the core and the examples extra: no framework the examples do not use.
        installed = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
        names = {p["name"].lower() for p in json.loads(installed)}
        assert "scikit-learn" in names
        assert not names & {"torch", "tensorflow", "xgboost", "xgboost-cpu", "lightgbm",
                            "catboost", "onnxruntime"}, sorted(names)

        proc.send_signal(signal.SIGTERM)  # ./dev execs shoal: this is the server
        assert proc.wait(timeout=60) == 0, said()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for reader in readers:
            reader.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        shutil.rmtree(venv, ignore_errors=True)  # ~300 MB; pytest keeps its last tmp dirs
