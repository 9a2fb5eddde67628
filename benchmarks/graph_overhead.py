"""What a graph hop costs in-process: sequences of identity models against one identity model.

Builds a throwaway repository (an identity model with an async ``predict``, one with a plain
``predict`` that runs on the worker threads, and sequence graphs of 1 to 10 of them), loads
it with Shoal's own repository manager, and times ``endpoint.infer`` on one event loop (uvloop,
as the server runs). Two figures per chain length N:

- graph overhead per hop = (p50(sequence of N) - N x p50(one model)) / N: what the graph
  itself adds around each model call;
- marginal cost per hop = (p50(sequence of N) - p50(one model)) / (N - 1): what one more step
  costs, the model's own endpoint included (the issue's "sequence vs one model").

Usage: python benchmarks/graph_overhead.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import uvloop
import yaml

from shoal import InferenceRequest, Tensor
from shoal.observe.metrics import Metrics
from shoal.repository.manager import ModelRepository
from shoal.serving.executor import Executor
from shoal.serving.registry import Registry

MODELS = {
    "identity-async": "async def predict(self, request):\n    return request.inputs",
    "identity-sync": "def predict(self, request):\n    return request.inputs",
}
CHAINS = (1, 2, 5, 10)
ROUNDS = 5


def build(root: Path) -> None:
    for name, method in MODELS.items():
        folder = root / name
        folder.mkdir(parents=True)
        source = "from shoal import Model\n\nclass Identity(Model):\n" + textwrap.indent(method, "    ")
        (folder / "model.py").write_text(source + "\n")
        (folder / "model.yaml").write_text("runtime: custom\n")
        for n in CHAINS:
            nodes = {f"step{i}": {"kind": "model", "model": name} for i in range(n)}
            nodes["root"] = {"kind": "sequence", "steps": [f"step{i}" for i in range(n)]}
            graph = root / f"{name}-chain{n}"
            graph.mkdir()
            (graph / "graph.yaml").write_text(yaml.safe_dump({"nodes": nodes}))


async def p50(endpoint: object, requests: int) -> float:
    data = np.zeros((1, 20))
    samples = []
    for i in range(requests + 100):
        request = InferenceRequest([Tensor.from_numpy("x", data)])
        started = time.perf_counter()
        await endpoint.infer(request)  # type: ignore[attr-defined]
        if i >= 100:  # warm-up
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def main(requests: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        build(root)
        executor = Executor()
        registry = Registry()
        repository = ModelRepository(root, registry, executor, Metrics(), state_dir=root / ".state")
        await repository.load_all()
        failed = [row for row in repository.index() if row["state"] != "READY"]
        assert not failed, failed
        print(f"p50 of {requests} sequential in-process requests, [1, 20] FP64, microseconds\n")
        print("| model | one model | N | sequence of N | graph overhead / hop | marginal / hop |")
        print("|---|---:|---:|---:|---:|---:|")
        for model in MODELS:
            for n in CHAINS:
                # Interleaved rounds, so drift in machine load hits both sides alike.
                ones, chains = [], []
                for _ in range(ROUNDS):
                    ones.append(await p50(registry.get(model), requests // ROUNDS))
                    chains.append(await p50(registry.get(f"{model}-chain{n}"), requests // ROUNDS))
                one, chain = statistics.median(ones), statistics.median(chains)
                overhead = (chain - n * one) / n
                marginal = f"{(chain - one) / (n - 1) * 1e6:.1f}" if n > 1 else "-"
                print(f"| {model} | {one * 1e6:.1f} | {n} | {chain * 1e6:.1f} | "
                      f"{overhead * 1e6:.1f} | {marginal} |")
        executor.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    uvloop.run(main(parser.parse_args().requests))
