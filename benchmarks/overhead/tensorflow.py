"""TensorFlow overhead case: a 20-64-2 MLP as a SavedModel signature, one FP32 row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Case

FEATURES, HIDDEN, CLASSES = 20, 64, 2


def build(folder: Path) -> Case:
    import tensorflow as tf

    rng = np.random.default_rng(0)

    class MLP(tf.Module):
        def __init__(self) -> None:
            self.w1 = tf.Variable(rng.normal(size=(FEATURES, HIDDEN)).astype(np.float32))
            self.b1 = tf.Variable(rng.normal(size=HIDDEN).astype(np.float32))
            self.w2 = tf.Variable(rng.normal(size=(HIDDEN, CLASSES)).astype(np.float32))
            self.b2 = tf.Variable(rng.normal(size=CLASSES).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32)])
        def serve(self, x):
            hidden = tf.nn.relu(tf.matmul(x, self.w1) + self.b1)
            return {"logits": tf.matmul(hidden, self.w2) + self.b2}

    module = MLP()
    folder.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})

    row = rng.normal(size=(1, FEATURES)).astype(np.float32)
    loaded = tf.saved_model.load(str(folder))
    signature = loaded.signatures["serving_default"]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, FEATURES],
                        "data": row.reshape(-1).tolist()}]}
    return Case("tensorflow", body, lambda: signature(x=tf.constant(row))["logits"].numpy())
