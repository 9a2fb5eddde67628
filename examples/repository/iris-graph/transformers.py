"""The example graph's preprocessor: CSV text rows in, the classifiers' feature matrix out."""

import numpy as np

from shoal import Model, TensorSpec


class ParseCSV(Model):
    def load(self):
        # Declared, so clients see it in the graph's metadata (and V1 rows are named "text").
        self.inputs = [TensorSpec("text", "BYTES", (-1,))]

    def preprocess(self, request):
        rows = request.input("text").as_strings()
        features = np.array([[float(v) for v in row.split(",")] for row in rows])
        if features.ndim != 2 or features.shape[1] != 4:
            raise ValueError("each row needs four comma-separated numbers")
        return {"input-0": features}
