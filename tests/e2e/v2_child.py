"""A small V2 server for the process runtime's tests: Shoal starts it as a model's program.

It serves one model, named by ``$SHOAL_MODEL_NAME``, on ``127.0.0.1:$PORT``: input ``x``
(FP64, [-1, 2]), output ``y = x * SCALE + OFFSET`` (``$SCALE``, default 2; ``$OFFSET``,
default 0), with its own pid and parent's pid in the response's parameters. V2 REST (JSON
tensors, standard library only) by default; V2 gRPC with ``--grpc``.

What the tests make it do:

- an input value of 666 makes it write a line and exit with code 3 before answering;
- a negative input value is refused with 400 (gRPC: INVALID_ARGUMENT) and its own message;
- a file named ``hold`` in its working directory holds its start (it listens only once the
  file is gone), so a test controls when a restart becomes ready;
- ``$CHILD_MODE``: ``exit`` writes a line and exits with code 2 at once; ``never-ready``
  listens but answers 503 on the health route forever; ``wrong-name`` serves the model
  under another name; ``stubborn`` ignores SIGTERM and starts a ``sleep`` of its own (its
  pid in the response's parameters as ``helper``); ``busy`` answers every inference 503
  (gRPC: UNAVAILABLE) with ``child: busy, request N``, N counting the inference requests it
  received.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("SHOAL_MODEL_NAME", "model")
MODE = os.environ.get("CHILD_MODE", "")
SCALE = float(os.environ.get("SCALE", "2"))
OFFSET = float(os.environ.get("OFFSET", "0"))
CRASH = 666.0
METADATA = {
    "name": NAME, "versions": [os.environ.get("SHOAL_MODEL_VERSION", "1")],
    "platform": "python-child",
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}],
    "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1, 2]}],
}
SERVED = "someone-else" if MODE == "wrong-name" else NAME


class Refused(Exception):
    pass


class Busy(Exception):
    pass


REQUESTS = [0]


def busy() -> None:
    REQUESTS[0] += 1
    raise Busy(f"child: busy, request {REQUESTS[0]}")


def compute(values: list[float]) -> list[float]:
    if CRASH in values:
        sys.stderr.write("child: crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    if any(v < 0 for v in values):
        raise Refused(f"child: x must be non-negative, got {min(values)}")
    return [v * SCALE + OFFSET for v in values]


HELPER: list[int] = []


def parameters() -> dict[str, int]:
    return {"pid": os.getpid(), "ppid": os.getppid(), **({"helper": HELPER[0]} if HELPER else {})}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Shoal's client uses it

    def log_message(self, format: str, *args: object) -> None:
        pass

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        model = f"/v2/models/{SERVED}"
        if self.path == "/v2/health/ready":
            self.answer(503 if MODE == "never-ready" else 200, {"ready": MODE != "never-ready"})
        elif self.path == "/v2":
            self.answer(200, {"name": "v2-child", "version": "1", "extensions": []})
        elif self.path == model:
            self.answer(200, METADATA)
        elif self.path == f"{model}/ready":
            self.answer(200, {"ready": True})
        else:
            self.answer(404, {"error": f"child: no route {self.path}"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path != f"/v2/models/{SERVED}/infer":
            self.answer(404, {"error": f"child: no route {self.path}"})
            return
        tensor = next((t for t in body["inputs"] if t["name"] == "x"), None)
        if tensor is None:
            self.answer(400, {"error": "child: no input x"})
            return
        try:
            if MODE == "busy":
                busy()
            data = compute([float(v) for v in tensor["data"]])
        except Refused as exc:
            self.answer(400, {"error": str(exc)})
            return
        except Busy as exc:
            self.answer(503, {"error": str(exc)})
            return
        self.answer(200, {
            "model_name": NAME, "id": body.get("id", ""), "parameters": parameters(),
            "outputs": [{"name": "y", "datatype": "FP64", "shape": tensor["shape"], "data": data}],
        })


def serve_grpc(port: int) -> None:
    import asyncio

    import grpc
    import numpy as np

    from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
    from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerLive(self, request, context):
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request, context):
            return pb.ServerReadyResponse(ready=MODE != "never-ready")

        async def ModelReady(self, request, context):
            return pb.ModelReadyResponse(ready=request.name == SERVED)

        async def ModelMetadata(self, request, context):
            if request.name != SERVED:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"child: no model {request.name}")
            tensors = [pb.ModelMetadataResponse.TensorMetadata(**t) for t in METADATA["inputs"]]
            outputs = [pb.ModelMetadataResponse.TensorMetadata(**t) for t in METADATA["outputs"]]
            return pb.ModelMetadataResponse(name=NAME, versions=["1"], platform="python-child-grpc",
                                            inputs=tensors, outputs=outputs)

        async def ModelInfer(self, request, context):
            shape = list(request.inputs[0].shape)
            values = np.frombuffer(request.raw_input_contents[0], dtype="<f8").tolist()
            try:
                if MODE == "busy":
                    busy()
                result = compute(values)
            except Refused as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except Busy as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            answer = pb.ModelInferResponse(model_name=NAME, id=request.id)
            for key, value in parameters().items():
                answer.parameters[key].int64_param = value
            answer.outputs.add(name="y", datatype="FP64", shape=shape)
            answer.raw_output_contents.append(np.asarray(result, dtype="<f8").tobytes())
            return answer

    async def main() -> None:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"child: gRPC on {port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def main() -> None:
    print(f"child: starting in {os.getcwd()} as pid {os.getpid()}", flush=True)
    sys.stderr.write("child: a line on stderr\n")
    sys.stderr.flush()
    if MODE == "exit":
        sys.stderr.write("child: bad configuration, giving up\n")
        sys.exit(2)
    if MODE == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        HELPER.append(subprocess.Popen(["sleep", "300"]).pid)
    while os.path.exists("hold"):  # the test removes it when this start may go on
        time.sleep(0.01)
    port = int(os.environ["PORT"])
    if "--grpc" in sys.argv:
        serve_grpc(port)
        return
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"child: REST on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
