"""PyTorch overhead case: a 20-64-2 MLP saved with ``torch.export`` (``model.pt2``), one FP32 row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Case

FEATURES, HIDDEN, CLASSES = 20, 64, 2


def build(folder: Path) -> Case:
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES)
    ).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(mlp, (torch.ones(2, FEATURES),), dynamic_shapes=({0: batch},))
    folder.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(folder / "model.pt2"))

    row = np.random.default_rng(0).normal(size=(1, FEATURES)).astype(np.float32)
    module = torch.export.load(str(folder / "model.pt2")).module()

    def direct() -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(row)).numpy()

    # The exported program names its one input after forward's argument ("input" for Sequential).
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, FEATURES],
                        "data": row.reshape(-1).tolist()}]}
    return Case("pytorch", body, direct)
