"""The process runtime on its own: model.yaml's keys, finding the command, the readiness
probes, stopping (SIGTERM, then SIGKILL; the whole process group) and the JSON client.

Programs here are real processes (the test child of tests/e2e, small shell scripts); the
end-to-end tests serve them through a real Shoal server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from shoal.errors import InvalidInput, LoadError
from shoal.repository.config import ModelConfig, read_config
from shoal.runtimes import create_model
from shoal.runtimes import process_supervisor as supervisor
from shoal.runtimes.process import ProcessModel, program_spec, resolve_command
from shoal.runtimes.process_probe import Verdict, probe
from shoal.runtimes.triton import json_request
from shoal.types import InferenceRequest, RequestedOutput, Tensor

CHILD = str(Path(__file__).parents[1] / "e2e" / "v2_child.py")


def config(**settings: Any) -> ModelConfig:
    return ModelConfig.model_validate(settings)


def refused(settings: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as info:
        ModelConfig.model_validate(settings)
    return str(info.value)


# -- model.yaml --------------------------------------------------------------------------


def test_command_means_runtime_process() -> None:
    assert config(command=["java", "-jar", "m.jar"]).runtime == "process"
    assert config(runtime="process", command=["x"], env={"A": "1"}, ready_timeout=5,
                  protocol="v2-grpc").protocol == "v2-grpc"


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"runtime": "process"}, "runtime: process needs command"),
        ({"runtime": "sklearn", "env": {"A": "1"}}, "env: a setting of runtime: process"),
        ({"runtime": "sklearn", "env": {}}, "env: a setting of runtime: process"),
        ({"ready_timeout": 5}, "ready_timeout: a setting of runtime: process ("),
        ({"runtime": "onnx", "command": ["x"], "protocol": "v2-rest"},
         "command, protocol: settings of runtime: process"),
        ({"url": "http://h:1", "protocol": "v2-grpc"}, "parameters.protocol"),
        ({"url": "http://h:1", "command": ["x"]}, "url and command"),
        ({"command": "java -jar m.jar"}, "['java', '-jar', 'm.jar'] (a string is not split"),
        ({"command": []}, "command"),
        ({"command": ["", "x"]}, "the program, is empty"),
        ({"command": ["x"], "env": {"PORT": "80"}}, "env.PORT: Shoal sets PORT"),
        ({"command": ["x"], "protocol": "grpc"}, "protocol"),
        ({"command": ["x"], "ready_timeout": 0}, "ready_timeout"),
    ],
)
def test_misplaced_or_wrong_process_keys_are_refused(settings: dict, fragment: str) -> None:
    assert fragment in refused(settings)


def test_model_yaml_errors_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "model.yaml").write_text("runtime: xgboost\ncommand: [java]\n")
    with pytest.raises(LoadError, match=r"model.yaml is invalid: .*command: a setting of runtime: "
                                        r"process .* runtime is xgboost"):
        read_config(tmp_path)


def test_an_artifact_beside_command_is_not_detected_as_another_runtime(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{}")  # weights a program reads, not XGBoost's
    (tmp_path / "v1").mkdir()  # a folder of the program's, not a misnamed version
    model = create_model("m", "1", tmp_path, tmp_path, config(command=["sh"]))
    assert isinstance(model, ProcessModel) and model.spec.executable.endswith("/sh")


def test_parameters_are_checked_and_configure_the_client(tmp_path: Path) -> None:
    model = create_model("m", "1", tmp_path, tmp_path,
                         config(command=["sh"], parameters={"timeout": 2, "model_name": "x"}))
    assert (model.settings.timeout, model.settings.retries, model.remote_name) == (2, 0, "x")
    with pytest.raises(LoadError, match=r"'timout' \(did you mean 'timeout'\?\)"):
        create_model("m", "1", tmp_path, tmp_path, config(command=["sh"], parameters={"timout": 2}))
    with pytest.raises(LoadError, match=r"runtime 'process': parameters.timeout"):
        create_model("m", "1", tmp_path, tmp_path, config(command=["sh"], parameters={"timeout": 0}))


def test_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_ADMIN_TOKEN", "secret")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/metrics")
    monkeypatch.setenv("KEPT", "yes")
    monkeypatch.setenv("SHOAL_R_WRAPPER", "/opt/shoal.R")
    monkeypatch.setenv("HOST", "0.0.0.0")  # the wrappers listen on $HOST: loopback only
    spec = program_spec("m", "3", tmp_path, tmp_path, config(command=["sh"], env={"MODEL_DIR": "."}))
    assert spec.env["KEPT"] == "yes" and spec.env["MODEL_DIR"] == "."
    assert spec.env["SHOAL_R_WRAPPER"] == "/opt/shoal.R"
    assert (spec.env["SHOAL_MODEL_NAME"], spec.env["SHOAL_MODEL_VERSION"]) == ("m", "3")
    assert "SHOAL_ADMIN_TOKEN" not in spec.env and "PROMETHEUS_MULTIPROC_DIR" not in spec.env
    assert (spec.protocol, spec.ready_timeout, spec.cwd) == ("v2-rest", 60.0, tmp_path)
    assert spec.env["HOST"] == "127.0.0.1"
    with pytest.raises(ValueError, match=r"env.HOST: Shoal sets PORT, HOST"):  # model.yaml
        program_spec("m", "3", tmp_path, tmp_path, config(command=["sh"], env={"HOST": "::"}))


# -- finding the command ---------------------------------------------------------------------


def script(path: Path, text: str = "#!/bin/sh\nexit 0\n", mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_commands_resolve_on_path_or_in_the_model_folder(tmp_path: Path) -> None:
    model_dir, version_dir = tmp_path / "m", tmp_path / "m" / "1"
    run = script(version_dir / "run.sh")
    shared = script(model_dir / "bin" / "serve")
    assert resolve_command("./run.sh", version_dir, model_dir, "") == str(run)
    assert resolve_command("../bin/serve", version_dir, model_dir, "") == str(shared)
    assert resolve_command(str(run), version_dir, model_dir, "") == str(run)
    assert resolve_command("sh", version_dir, model_dir, os.environ["PATH"]).endswith("/sh")


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("../../elsewhere/run.sh", "points outside the model's folder m/"),
        ("./missing.sh", "command not found: './missing.sh' (no such file"),
        ("./data.txt", "is not an executable file"),
        ("./lib", "is not an executable file"),
        ("no-such-program-anywhere", "command not found: 'no-such-program-anywhere' is not on PATH"),
        ("run.sh", "to run the file in the model's folder, write ./run.sh"),
    ],
)
def test_bad_commands_fail_the_load_naming_them(tmp_path: Path, command: str, fragment: str) -> None:
    model_dir, version_dir = tmp_path / "m", tmp_path / "m" / "1"
    script(version_dir / "run.sh")
    script(version_dir / "data.txt", "1,2\n", mode=0o644)
    (version_dir / "lib").mkdir()
    script(tmp_path / "elsewhere" / "run.sh")
    with pytest.raises(LoadError) as info:
        resolve_command(command, version_dir, model_dir, os.environ["PATH"])
    assert fragment in str(info.value)


def test_relative_path_entries_are_not_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script(tmp_path / "tool")
    monkeypatch.chdir(tmp_path)  # "." on PATH would find Shoal's working directory's tool
    with pytest.raises(LoadError, match="not on PATH"):
        resolve_command("tool", tmp_path / "v", tmp_path, ".")


# -- readiness probes --------------------------------------------------------------------------


def answering(reply: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(reply)
        await writer.drain()
        writer.close()

    return handle


@pytest.mark.parametrize(
    ("reply", "verdict", "said"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Verdict.READY, "HTTP/1.1 200 OK"),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", Verdict.WAIT, "answered HTTP/1.1 503"),
        (b"HTTP/1.0 404 File not found\r\n\r\n", Verdict.NOT_V2, "answered HTTP/1.0 404"),
        (b"\x00\x00\x12\x04\x00\x00\x00\x00\x00", Verdict.NOT_V2, "needs protocol: v2-grpc"),
        (b"", Verdict.WAIT, "closed without an answer"),
    ],
)
def test_rest_probe(reply: bytes, verdict: Verdict, said: str) -> None:
    async def main() -> tuple[Verdict, str]:
        server = await asyncio.start_server(answering(reply), "127.0.0.1", 0)
        async with server:
            return await probe("v2-rest", server.sockets[0].getsockname()[1])

    got, text = asyncio.run(main())
    assert got is verdict and said in text


def test_probes_of_a_closed_port_wait() -> None:
    port = supervisor.free_port()
    for protocol in ("v2-rest", "v2-grpc"):
        assert asyncio.run(probe(protocol, port))[0] is Verdict.WAIT


def test_grpc_probe_of_an_http1_server_is_not_v2() -> None:
    async def main() -> tuple[Verdict, str]:
        reply = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        server = await asyncio.start_server(answering(reply), "127.0.0.1", 0)
        async with server:
            return await probe("v2-grpc", server.sockets[0].getsockname()[1])

    verdict, said = asyncio.run(main())
    assert verdict is Verdict.NOT_V2 and "needs protocol: v2-rest" in said


# -- starting and stopping -------------------------------------------------------------------


def test_restart_pauses_grow_and_are_capped() -> None:
    assert [supervisor.restart_pause(n) for n in range(1, 6)] == [0, 0.5, 1, 2, 4]
    assert supervisor.restart_pause(50) == supervisor.MAX_BACKOFF_S


def gone(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] == "Z"


def test_stop_escalates_to_sigkill_and_takes_the_process_group(tmp_path: Path) -> None:
    async def main() -> None:
        model = create_model("m", "1", tmp_path, tmp_path, config(
            command=[sys.executable, CHILD], env={"CHILD_MODE": "stubborn"}))
        assert isinstance(model, ProcessModel)
        await model.load()
        row = Tensor.from_numpy("x", np.array([[1.0, 2.0]]))
        answer = await model.predict(InferenceRequest([row]))
        pid, helper = answer.parameters["pid"], answer.parameters["helper"]
        assert model.program is not None and model.state_reason() is None
        started = time.monotonic()
        await asyncio.wrap_future(model.program.stop(timeout=0.3))  # it ignores SIGTERM
        assert time.monotonic() - started >= 0.3
        run = model.run
        assert run is not None and run.exit_code == -9
        assert model.state_reason() == "its process was stopped"
        assert gone(pid)
        deadline = time.monotonic() + 5  # the group's SIGKILL is sent; init reaps the helper
        while not gone(helper):
            assert time.monotonic() < deadline, "the program's own child outlived it"
            await asyncio.sleep(0.02)
        await model.unload()  # a second stop is harmless

    asyncio.run(main())


def test_programs_start_with_default_signals_and_none_blocked() -> None:
    """A --workers worker ignores SIGINT and SIGTERM, and Python ignores SIGPIPE and SIGXFSZ:
    ignored signals survive exec, so the watcher resets them all for the program."""
    assert supervisor.EXEC_WRAPPER is not None
    pid_read, pid_write = os.pipe()

    def like_a_worker() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2, signal.SIGTERM])

    watcher = subprocess.Popen(
        [sys.executable, "-I", "-S", str(supervisor.EXEC_WRAPPER), str(os.getpid()),
         str(pid_write), "/bin/cat", "cat", "/proc/self/status"],
        stdout=subprocess.PIPE, preexec_fn=like_a_worker, pass_fds=(pid_write,),
        start_new_session=True,
    )
    os.close(pid_write)
    out, _ = watcher.communicate(timeout=30)
    program = int(os.read(pid_read, 64))
    os.close(pid_read)
    assert watcher.returncode == 0 and program != watcher.pid
    status = dict(line.split(":\t", 1) for line in out.decode().splitlines() if ":\t" in line)
    assert int(status["Pid"]) == program and int(status["PPid"]) == watcher.pid
    assert int(status["SigIgn"], 16) == 0 and int(status["SigBlk"], 16) == 0, status


def test_the_watcher_ends_as_its_program_did(tmp_path: Path) -> None:
    async def main() -> list[int]:
        codes = []
        for command in ("exit 5", "kill -TERM $$", "kill -SEGV $$"):
            spec = program_spec("m", "1", tmp_path, tmp_path, config(
                command=["sh", "-c", command], ready_timeout=5))
            program = supervisor.start(spec)
            with pytest.raises(LoadError) as info:
                await asyncio.wrap_future(program.ready)
            codes.append(str(info.value))
            await asyncio.wrap_future(program.stop())
        return codes

    exited, termed, segv = asyncio.run(main())
    assert "exited with code 5 " in exited
    assert "was killed by signal SIGTERM " in termed
    assert "was killed by signal SIGSEGV " in segv


def test_a_stop_before_the_first_ready_fails_the_load(tmp_path: Path) -> None:
    (tmp_path / "hold").touch()  # the child never listens

    async def main() -> None:
        spec = program_spec("m", "1", tmp_path, tmp_path, config(command=[sys.executable, CHILD]))
        program = supervisor.start(spec)
        while program._current is None:
            await asyncio.sleep(0.01)
        await asyncio.wrap_future(program.stop())
        with pytest.raises(LoadError, match="stopped before it was ready"):
            await asyncio.wait_for(asyncio.wrap_future(program.ready), 5)

    asyncio.run(main())


def test_a_swept_group_is_never_signalled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its leader reaped and the group swept, the group's number may be someone else's."""
    process = subprocess.Popen(["true"], start_new_session=True)
    process.wait()
    run = supervisor.Run(1, process, 0)
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda group, sig: sent.append((group, sig)))
    run.sweep()
    run.signal_group(signal.SIGKILL)
    run.sweep()  # the stop's _after_exit during a restart pause
    assert sent == [(process.pid, signal.SIGKILL)]


def test_a_script_without_interpreter_line_says_so(tmp_path: Path) -> None:
    script(tmp_path / "serve", "echo no shebang\n")

    async def main() -> str:
        model = create_model("m", "1", tmp_path, tmp_path, config(command=["./serve"]))
        with pytest.raises(LoadError) as info:
            await model.load()
        return str(info.value)

    reason = asyncio.run(main())
    assert "exited with code 126" in reason and "before it was ready" in reason
    assert "Exec format error (a script needs a #! line" in reason


def test_a_cancelled_load_stops_the_program(tmp_path: Path) -> None:
    (tmp_path / "hold").touch()  # the child never listens

    async def main() -> None:
        model = create_model("m", "1", tmp_path, tmp_path, config(command=[sys.executable, CHILD]))
        assert isinstance(model, ProcessModel)
        loading = asyncio.create_task(model.load())
        while model.program is None or model.program._current is None:
            await asyncio.sleep(0.01)
        run = model.program._current
        loading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loading
        assert await supervisor.wait_exit(run, 5)

    asyncio.run(main())


# -- the JSON client ---------------------------------------------------------------------------


def test_json_requests_carry_data_and_not_the_clients_binary_choices() -> None:
    request = InferenceRequest(
        [Tensor.from_numpy("x", np.array([[1.5, 2.0]])),
         Tensor("s", "BYTES", (1,), np.array([b"h\xc3\xa9"], dtype=object))],
        id="r1", parameters={"binary_data_output": True, "tag": "t"},
        outputs=[RequestedOutput("y", {"binary_data": True, "class_count": 2})],
    )
    assert orjson.loads(json_request(request, "the process")) == {
        "id": "r1", "parameters": {"tag": "t"},
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 2], "data": [1.5, 2.0]},
                   {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["h\u00e9"]}],
        "outputs": [{"name": "y", "parameters": {"class_count": 2}}],
    }
    raw = InferenceRequest([Tensor("s", "BYTES", (1,), np.array([b"\xff"], dtype=object))])
    with pytest.raises(InvalidInput, match="takes JSON tensors only, and input 's' holds BYTES"):
        json_request(raw, "the process")



# -- the loopback HTTP client ----------------------------------------------------------------


class Script:
    """A loopback server that answers each request with the next of ``replies`` (None: say
    nothing until the client closes), counting the connections it accepted."""

    def __init__(self, replies: list[bytes | None]) -> None:
        self.replies = replies
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while self.replies:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            reply = self.replies.pop(0)
            if reply is None:  # until the client gives up and closes
                await reader.read()
                break
            writer.write(reply)
            await writer.drain()
            if b"Connection: close" in reply or b"HTTP/1.0" in reply:
                break
        writer.close()


def loopback(replies: list[bytes | None], calls: int, timeout: float = 5.0) -> tuple[list, int]:
    """Each call's (status, body) or error, and how many connections the server saw."""
    from shoal.runtimes.process_http import Pool

    async def main() -> tuple[list, int]:
        script = Script(replies)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        pool = Pool("127.0.0.1", server.sockets[0].getsockname()[1])
        results: list = []
        async with server:
            for _ in range(calls):
                try:
                    answer = await pool.send(b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", timeout)
                    results.append((answer.status, answer.body))
                except Exception as exc:  # noqa: BLE001 - the test looks at which
                    results.append(exc)
            pool.close()
        return results, script.connections

    return asyncio.run(main())


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_keep_alive_connections_are_reused() -> None:
    assert loopback([OK, OK, OK], 3) == ([(200, b"ok")] * 3, 1)


def test_chunked_close_and_read_until_close_answers() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    closing = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbad"
    until_close = b"HTTP/1.0 200 OK\r\n\r\nall of it"
    results, connections = loopback([chunked, closing, until_close, OK], 4)
    assert results == [(200, b"abcde"), (400, b"bad"), (200, b"all of it"), (200, b"ok")]
    assert connections == 3  # the closed ones are not reused


def test_a_silent_program_times_out_and_garbage_is_refused() -> None:
    results, _ = loopback([None], 1, timeout=0.2)
    assert isinstance(results[0], TimeoutError)
    results, _ = loopback([b"SSH-2.0-OpenSSH\r\n\r\n"], 1)
    assert "not HTTP/1.1" in str(results[0])


def test_loopback_remote_errors() -> None:
    from shoal.errors import DeadlineExceeded, ModelFailure
    from shoal.runtimes.process_http import LoopbackRemote
    from shoal.runtimes.triton import RemoteDown, RemoteUnreachable

    model = create_model("m", "1", Path("."), Path("."), config(command=["sh"],
                                                                 parameters={"timeout": 0.2}))
    assert isinstance(model, ProcessModel)

    async def call(port: int) -> Exception:
        model.point_at("http", f"http://127.0.0.1:{port}")
        remote = LoopbackRemote(model, "127.0.0.1", port)
        try:
            await remote.ready()
        except Exception as exc:  # noqa: BLE001
            return exc
        finally:
            await remote.close()
        raise AssertionError("no error")

    async def main() -> list[Exception]:
        errors = [await call(supervisor.free_port())]
        for reply in (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 19\r\n\r\n{\"error\": \"nope\"}  ",
                      b"garbage\r\n\r\n", None,
                      b"HTTP/1.1 503 Busy\r\nContent-Length: 17\r\n\r\n{\"error\": \"busy\"}"):
            script = Script([reply])
            server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
            async with server:
                errors.append(await call(server.sockets[0].getsockname()[1]))
        return errors

    refused, rejected, garbage, silent, busy = asyncio.run(main())
    assert isinstance(refused, RemoteUnreachable) and "is unreachable" in str(refused)
    # An answered 503 is the program's word, not a connection that failed.
    assert isinstance(busy, RemoteDown) and not isinstance(busy, RemoteUnreachable)
    assert str(busy).endswith("answered 503: busy")
    assert isinstance(rejected, InvalidInput) and str(rejected).endswith("answered 400: nope")
    assert isinstance(garbage, ModelFailure) and "sent an answer that is not HTTP/1.1" in str(garbage)
    assert isinstance(silent, DeadlineExceeded) and "did not answer within 0.2 s" in str(silent)
