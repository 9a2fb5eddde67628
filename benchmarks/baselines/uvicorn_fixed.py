"""Baseline: a bare ASGI app on uvicorn (httptools + uvloop, as Shoal runs it) that reads the
request body and answers every request with one fixed V2 JSON inference response.

It is the ceiling for a Python REST server on this machine: no routing framework, no
decoding, no model. Prints one JSON line {"event": "listening", "http_port": N, ...} on stdout.

    python benchmarks/baselines/uvicorn_fixed.py [--port 0]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

import uvicorn

BODY = json.dumps({
    "model_name": "logreg", "model_version": "1", "id": "",
    "outputs": [{"name": "predict", "datatype": "INT64", "shape": [1], "data": [1]}],
}, separators=(",", ":")).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
READY = b'{"ready":true}'
READY_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(READY)).encode())]


async def app(scope, receive, send):  # noqa: ANN001 - plain ASGI
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the body, as a real handler must
        message = await receive()
        more = message.get("more_body", False)
    if scope["path"].endswith("/health/ready"):
        await send({"type": "http.response.start", "status": 200, "headers": READY_HEADERS})
        await send({"type": "http.response.body", "body": READY})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                            http="httptools", loop="uvloop", server_header=False)
    server = uvicorn.Server(config)
    sys.stdout.write(json.dumps({"event": "listening", "host": args.host, "http_port": port,
                                 "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
