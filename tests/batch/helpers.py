"""Helpers for the batch tests: small models, data in every input format, reading outputs
back, a local S3 server (moto) and ``shoal batch`` as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml
from e2e.moto_server import MotoServer  # noqa: F401  (the tests' S3 server)
from sklearn.linear_model import LogisticRegression

FEATURES = [f"f{i}" for i in range(4)]

PICKY = """
    import numpy as np
    from shoal import Model

    class Picky(Model):
        '''Sums each row; a row whose first value is 666 makes the whole call fail.'''

        def predict(self, request):
            x = request.as_numpy()
            if (x[:, 0] == 666).any():
                raise ValueError("666 is not a value this model takes")
            return {"total": x.sum(axis=1), "pair": np.stack([x[:, 0], -x[:, 0]], axis=1)}
"""

GATE = """
    import os
    import threading
    from shoal import Model

    class Gate(Model):
        '''Sums each row. With SHOAL_TEST_GATE (a FIFO) and SHOAL_TEST_GATE_AT set, the call
        whose rows hold that first value writes a byte to the FIFO and never returns: the
        test then knows the job is midway, and kills it.'''

        def predict(self, request):
            x = request.as_numpy()
            gate, at = os.environ.get("SHOAL_TEST_GATE"), os.environ.get("SHOAL_TEST_GATE_AT")
            if gate and at and (x[:, 0] == float(at)).any():
                with open(gate, "w") as fifo:
                    fifo.write("x")
                threading.Event().wait()
            return {"total": x.sum(axis=1)}
"""

TWO_INPUTS = """
    import numpy as np
    from shoal import Model

    class TwoInputs(Model):
        def predict(self, request):
            a, b = request.as_numpy("a"), request.as_numpy("b")
            return {"score": a[:, 0] * 10 + b.sum(axis=1)}
"""

#: Picky, refusing the input (a 400 through a server) rather than failing (a 500).
REFUSING = PICKY.replace("raise ValueError(", "raise InvalidInput(").replace(
    "from shoal import Model", "from shoal import Model\n    from shoal.errors import InvalidInput")

BROKEN = """
    from shoal import Model

    class Broken(Model):
        '''Fails on every call, whatever its rows: a 500 through a server.'''

        def predict(self, request):
            raise RuntimeError("the model's disk is gone")
"""

ROUTES = """
    import numpy as np
    from shoal import Model

    class Double(Model):
        def predict(self, request):
            return {"total": request.as_numpy().sum(axis=1) * 2}
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


def custom(folder: Path, source: str, config: dict[str, Any] | None = None) -> None:
    write(folder / "model.py", source)
    write(folder / "model.yaml", yaml.safe_dump({"runtime": "custom", **(config or {})}))


def build_repository(root: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    (root / "lr").mkdir()
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), root / "lr" / "model.joblib")
    custom(root / "picky", PICKY)
    custom(root / "gate", GATE)
    custom(root / "two", TWO_INPUTS, {"inputs": [
        {"name": "a", "datatype": "FP64", "shape": [-1, 1]},
        {"name": "b", "datatype": "FP64", "shape": [-1, 2]},
    ]})
    custom(root / "double", ROUTES)
    custom(root / "broken", BROKEN)
    custom(root / "refusing", REFUSING)
    # A sequence (the model behind a transformer) and a switch that routes on each row.
    write(root / "pipeline" / "graph.yaml", yaml.safe_dump({
        "nodes": {"root": {"kind": "sequence", "steps": ["score"]},
                  "score": {"kind": "model", "model": "lr"}},
    }))
    write(root / "route" / "graph.yaml", yaml.safe_dump({
        "nodes": {"root": {"kind": "switch", "default": "plain",
                           "cases": [{"when": 'inputs."input-0"[0][0] > `0`', "node": "twice"}]},
                  "plain": {"kind": "model", "model": "picky", "outputs": ["total"]},
                  "twice": {"kind": "model", "model": "double"}},
    }))
    return root


def lr_model(repository: Path) -> Any:
    return joblib.load(repository / "lr" / "model.joblib")


def features(rows: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, len(FEATURES)))


def table(rows: int, seed: int = 1, first_id: int = 1000) -> pa.Table:
    x = features(rows, seed)
    return pa.table({"id": np.arange(first_id, first_id + rows),
                     **{name: x[:, i] for i, name in enumerate(FEATURES)}})


def write_input(tbl: pa.Table, path: Path | str, fmt: str, fs: Any = None) -> None:
    """``tbl`` (an ``id`` column and feature columns) as ``fmt``; ``.npy`` keeps the features only."""
    opener = fs.open if fs is not None else open
    with opener(str(path), "wb") as handle:
        if fmt == "parquet":
            pq.write_table(tbl, handle, row_group_size=max(1, tbl.num_rows // 3))
        elif fmt == "csv":
            pacsv.write_csv(tbl, handle)
        elif fmt == "jsonl":
            handle.write(b"".join(json.dumps(r).encode() + b"\n" for r in tbl.to_pylist()))
        elif fmt == "npy":
            np.save(handle, np.stack([tbl[c].to_numpy() for c in FEATURES], axis=1))
        else:
            raise ValueError(fmt)


def read_output(folder: Path | str, fmt: str, fs: Any = None) -> pa.Table:
    """Every shard of an output folder, in shard name order, as one table."""
    import pyarrow.json as pajson

    if fs is None:
        names = sorted(str(p) for p in Path(folder).rglob(f"*.{fmt}") if not p.name.startswith((".", "_")))
        opener: Any = open
    else:
        names = sorted(p for p in fs.find(str(folder)) if p.endswith(f".{fmt}")
                       and not p.rsplit("/", 1)[-1].startswith((".", "_")))
        opener = fs.open
    tables = []
    for name in names:
        with opener(name, "rb") as handle:
            if fmt == "parquet":
                tables.append(pq.read_table(handle))
            elif fmt == "csv":
                tables.append(pacsv.read_csv(handle))
            else:
                tables.append(pajson.read_json(handle))
    return pa.concat_tables(tables)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shoal_batch(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``shoal batch ...`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "shoal", "batch", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=120, **kwargs,
    )
