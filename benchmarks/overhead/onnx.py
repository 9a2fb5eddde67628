"""ONNX overhead case: a 20-64-2 MLP graph (Gemm, Relu, Gemm), one FP32 row.

Building the graph needs the ``onnx`` package (a test dependency, not part of ``shoal[onnx]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Case

FEATURES, HIDDEN, CLASSES = 20, 64, 2


def build(folder: Path) -> Case:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(size=(FEATURES, HIDDEN)), "b1": rng.normal(size=HIDDEN),
        "w2": rng.normal(size=(HIDDEN, CLASSES)), "b2": rng.normal(size=CLASSES),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")

    row = rng.normal(size=(1, FEATURES)).astype(np.float32)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, FEATURES],
                        "data": row.reshape(-1).tolist()}]}
    return Case("onnx", body, lambda: session.run(["logits"], {"x": row}))
