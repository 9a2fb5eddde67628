"""Is a ``runtime: process`` program ready? One look at ``/v2/health/ready`` or ``ServerReady``.

Each probe answers one of three things: ready; not yet (nothing listens on ``$PORT`` yet, or
the program says it is not ready); or never (something listens there, but it is not a V2
server of the configured protocol: waiting longer cannot help, so the load fails at once,
saying so, instead of after ``ready_timeout``).

The REST probe is a bare HTTP/1.1 request on an asyncio connection: it runs on the
supervisor's own event loop and needs no client library. The gRPC probe uses grpcio's
blocking API on a short-lived thread (grpc.aio belongs to the serving loop).
"""

from __future__ import annotations

import asyncio
from enum import Enum

#: One probe's limit: a program that takes longer to answer its health route is not ready.
PROBE_TIMEOUT_S = 2.0
HOST = "127.0.0.1"


class Verdict(Enum):
    READY = "ready"
    WAIT = "not ready yet"
    NOT_V2 = "not a V2 server"


async def probe(protocol: str, port: int) -> tuple[Verdict, str]:
    """The verdict on the program listening (or not yet) on ``port``, and what it answered."""
    if protocol == "v2-grpc":
        return await asyncio.get_running_loop().run_in_executor(None, _grpc_probe, port)
    return await _rest_probe(port)


async def _rest_probe(port: int) -> tuple[Verdict, str]:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port), PROBE_TIMEOUT_S
        )
    except (OSError, asyncio.TimeoutError):
        return Verdict.WAIT, "nothing listens on $PORT yet"
    try:
        writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: " + HOST.encode()
                     + b"\r\nConnection: close\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), PROBE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        return Verdict.WAIT, "GET /v2/health/ready got no answer"
    finally:
        writer.close()
    if not status_line:
        return Verdict.WAIT, "GET /v2/health/ready: the connection closed without an answer"
    parts = status_line.split(None, 2)
    if not status_line.startswith(b"HTTP/1.") or len(parts) < 2 or not parts[1].isdigit():
        return Verdict.NOT_V2, (
            f"GET /v2/health/ready got {status_line[:40]!r}, which is not an HTTP/1.1 answer "
            "(a gRPC server needs protocol: v2-grpc)"
        )
    status = int(parts[1])
    said = status_line.decode("latin-1").strip()
    if status == 200:
        return Verdict.READY, said
    if status >= 500 or status == 429:  # up, not ready yet
        return Verdict.WAIT, f"GET /v2/health/ready answered {said}"
    return Verdict.NOT_V2, f"GET /v2/health/ready answered {said}"


def _grpc_probe(port: int) -> tuple[Verdict, str]:
    import grpc

    from ..protocol.grpc_gen import grpc_service_pb2 as pb
    from ..protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            answer = stub.ServerReady(pb.ServerReadyRequest(), timeout=PROBE_TIMEOUT_S)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code is grpc.StatusCode.UNAVAILABLE and "HTTP/2" in details:
                return Verdict.NOT_V2, (
                    "ServerReady: what listens on $PORT does not speak HTTP/2 (a REST server "
                    "needs protocol: v2-rest)"
                )
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return Verdict.WAIT, f"ServerReady: {code.name}"
            return Verdict.NOT_V2, f"ServerReady answered {code.name}: {details}"
    if answer.ready:
        return Verdict.READY, "ServerReady: ready"
    return Verdict.WAIT, "ServerReady: not ready"
