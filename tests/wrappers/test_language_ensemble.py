"""A graph that ensembles a Python, a Java and an R model (issue 16): three languages behind one
name, over V2 REST, V2 gRPC and V1, each child's answer checked against its own language.

Each model scales the row sums of ``x`` ([n, 2] FP64) by its own factor (Python 1, Java 2,
R 3), so the ensemble's ``mean`` combiner must answer 2x the row sum, and each child alone its
own multiple: a child served by the wrong program, or not at all, changes the numbers.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from e2e.models import write
from e2e.process import ShoalProcess

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
JAVA_BUILD = ROOT / "wrappers" / "java" / "build.sh"
R_WRAPPER = ROOT / "wrappers" / "r" / "shoal.R"

PYTHON_MODEL = """
    import numpy as np
    from shoal import Model

    class Sum(Model):
        def predict(self, request):
            return {"y": request.as_numpy().sum(axis=1) * 1.0}
"""

JAVA_MODEL = """
    package example;

    import io.shoal.wrapper.Model;
    import io.shoal.wrapper.ModelServer;
    import io.shoal.wrapper.Tensor;
    import java.util.LinkedHashMap;
    import java.util.Map;

    public final class Doubled implements Model {
        @Override
        public Map<String, Tensor> predict(Map<String, Tensor> inputs) {
            Tensor x = inputs.values().iterator().next();
            double[] values = x.toDoubles();
            int rows = (int) x.dim(0), cols = (int) x.dim(1);
            double[] out = new double[rows];
            for (int r = 0; r < rows; r++) {
                for (int c = 0; c < cols; c++) out[r] += values[r * cols + c];
                out[r] *= 2.0;
            }
            Map<String, Tensor> result = new LinkedHashMap<>();
            result.put("y", Tensor.ofDoubles("y", Tensor.shape(rows), out));
            return result;
        }

        public static void main(String[] args) throws Exception {
            ModelServer.run(new Doubled(), args);
        }
    }
"""

R_MODEL = """
    shoal_serve(
      function(inputs) list(y = rowSums(inputs$x) * 3),
      metadata = list(
        inputs = list(list(name = "x", datatype = "FP64", shape = c(-1, 2))),
        outputs = list(list(name = "y", datatype = "FP64", shape = c(-1)))
      )
    )
"""

GRAPH = """
    inputs: [{name: x, datatype: FP64, shape: [-1, 2]}]
    nodes:
      root:
        kind: ensemble
        children: [python, java, r]
        combiner: mean
      python: {kind: model, model: python-sum}
      java: {kind: model, model: java-sum}
      r: {kind: model, model: r-sum}
"""


def missing() -> str | None:
    for tool, package in (("javac", "openjdk-17-jdk-headless"), ("Rscript", "r-base-core")):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian: {package}; ./dev test installs it)"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("languages")
    write(root / "python-sum" / "model.py", PYTHON_MODEL)
    write(root / "python-sum" / "model.yaml", "runtime: custom\n")

    source = root / "java-src"
    write(source / "example" / "Doubled.java", JAVA_MODEL)
    subprocess.run(["bash", str(JAVA_BUILD), "--model", str(source),
                    "--out", str(root / "java-sum" / "1" / "lib")],
                   check=True, capture_output=True, timeout=300)
    write(root / "java-sum" / "model.yaml",
          'command: ["java", "-cp", "lib/*", "example.Doubled"]\n')

    write(root / "r-sum" / "1" / "model.R", R_MODEL)
    shutil.copy(R_WRAPPER, root / "r-sum" / "1" / "shoal.R")
    write(root / "r-sum" / "model.yaml", 'command: ["Rscript", "shoal.R", "model.R"]\n')

    write(root / "trio" / "graph.yaml", GRAPH)
    process = ShoalProcess(root)
    try:
        process.wait_ready(timeout=120)
        yield process
    finally:
        process.stop()


ROWS = np.array([[1.0, 2.0], [0.5, -4.0], [10.0, 0.25]])


def v2_rest(server: ShoalProcess, model: str) -> list[float]:
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", timeout=60, json={
        "inputs": [{"name": "x", "datatype": "FP64", "shape": list(ROWS.shape),
                    "data": ROWS.ravel().tolist()}]})
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]


def test_each_language_answers_its_own_multiple(server: ShoalProcess) -> None:
    sums = ROWS.sum(axis=1)
    for model, factor in (("python-sum", 1), ("java-sum", 2), ("r-sum", 3)):
        assert v2_rest(server, model) == pytest.approx(sums * factor), model


def test_the_ensemble_over_three_languages_on_every_protocol(server: ShoalProcess) -> None:
    expected = ROWS.sum(axis=1) * 2.0  # mean of 1x, 2x and 3x
    assert v2_rest(server, "trio") == pytest.approx(expected)

    request = pb.ModelInferRequest(model_name="trio")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=list(ROWS.shape))
    tensor.contents.fp64_contents.extend(ROWS.ravel().tolist())
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    raw = reply.raw_output_contents[0] if reply.raw_output_contents else None
    got = (np.frombuffer(raw, dtype="<f8") if raw is not None
           else np.array(reply.outputs[0].contents.fp64_contents))
    assert got.tolist() == pytest.approx(expected)

    v1 = httpx.post(f"{server.url}/v1/models/trio:predict", timeout=60,
                    json={"instances": ROWS.tolist()})
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == pytest.approx(expected.tolist())


def test_a_bad_input_is_refused_at_the_graph_not_by_a_child(server: ShoalProcess) -> None:
    response = httpx.post(f"{server.url}/v2/models/trio/infer", timeout=60, json={
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]})
    assert response.status_code == 400
    assert "shape" in response.json()["error"]
