"""Baseline: a bare grpc.aio server whose ModelInfer returns one fixed ModelInferResponse.

The ceiling for a Python gRPC server on this machine: protobuf parsing of the request is done
by grpc (as in any servicer), but no decoding into tensors, no model. It uses the message
classes generated from proto/grpc_service.proto. ServerReady answers true. Prints one JSON line
{"event": "listening", "grpc_port": N, ...} on stdout.

    python benchmarks/baselines/grpc_fixed.py [--port 0] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import sys

import grpc

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

RESPONSE = pb.ModelInferResponse(
    model_name="logreg", model_version="1",
    outputs=[pb.ModelInferResponse.InferOutputTensor(name="predict", datatype="INT64", shape=[1])],
    raw_output_contents=[struct.pack("<q", 1)],
)


class Fixed(pb_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request, context):  # noqa: ANN001
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: ANN001
        return pb.ServerReadyResponse(ready=True)

    async def ModelInfer(self, request, context):  # noqa: ANN001
        return RESPONSE


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Fixed(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    sys.stdout.write(json.dumps({"event": "listening", "host": host, "grpc_port": bound,
                                 "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true",
                        help="run on uvloop, as Shoal does, instead of asyncio's default loop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
