"""A custom model: upper-cases text and reports its length."""

import numpy as np

from shoal import InferenceRequest, Model


class Echo(Model):
    def predict(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        texts = request.input("text").as_strings()
        return {
            "upper": np.array([t.upper() for t in texts], dtype=object),
            "length": np.array([len(t) for t in texts], dtype=np.int64),
        }
