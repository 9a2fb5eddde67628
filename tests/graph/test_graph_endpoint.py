"""Graphs in-process: a real repository folder loaded by ModelRepository, real models,
every node kind, feedback, readiness and load failures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from shoal import InferenceRequest, RequestedOutput, Tensor
from shoal.errors import DeadlineExceeded, InvalidInput, ModelFailure, Unavailable
from shoal.graph.context import HEADERS
from shoal.graph import endpoint as graph_endpoint
from shoal.graph.endpoint import FeedbackResult, GraphEndpoint
from shoal.observe.metrics import Metrics
from shoal.repository.manager import ModelRepository
from shoal.serving.executor import Executor
from shoal.serving.registry import Registry

MODELS = {
    "ident": """
        from shoal import Model

        class Identity(Model):
            async def predict(self, request):
                return request.inputs
    """,
    "double": """
        from shoal import Model, TensorSpec

        class Double(Model):
            def load(self):
                self.inputs = [TensorSpec("x", "FP64", (-1, 2))]
                self.outputs = [TensorSpec("y", "FP64", (-1, 2))]

            def predict(self, request):
                return {"y": request.as_numpy() * 2}
    """,
    "slow": """
        import time
        from shoal import Model

        class Slow(Model):
            def predict(self, request):
                time.sleep(float(request.parameters.get("sleep", 0.1)))
                return request.inputs
    """,
    "boom": """
        from shoal import Model

        class Boom(Model):
            def predict(self, request):
                raise ValueError("kaboom")
    """,
}

PLUGINS = """
    import numpy as np
    from shoal import Model
    from shoal.graph import Combiner, Router

    class AddOne(Model):
        def preprocess(self, request):
            return {"x": request.as_numpy() + 1}

        async def postprocess(self, response):
            response.outputs[0].parameters["post"] = True
            return response

    class Sum(Combiner):
        def combine(self, responses):
            return {"sum": sum(r.outputs[0].data for r in responses)}

    class ByParameter(Router):
        def load(self):
            self.rewards = []

        def route(self, request):
            return request.parameters.get("arm", 0)

        def feedback(self, arm, reward, truth):
            if truth == "fail":
                raise RuntimeError("cannot learn now")
            self.rewards.append((arm, reward, truth))
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


def repository(root: Path, graph: dict[str, Any], name: str = "g") -> Path:
    for model, source in MODELS.items():
        write(root / model / "model.py", source)
        write(root / model / "model.yaml", "runtime: custom\n")
    write(root / name / "graph.yaml", yaml.safe_dump(graph))
    write(root / name / "plugins.py", PLUGINS)
    return root


Scenario = Callable[[ModelRepository, Registry], Awaitable[None]]


def run(root: Path, scenario: Scenario) -> None:
    async def main() -> None:
        executor = Executor(8)
        registry = Registry()
        repo = ModelRepository(root, registry, executor, Metrics(), state_dir=root / ".state")
        try:
            await repo.load_all()
            await scenario(repo, registry)
        finally:
            executor.shutdown()

    asyncio.run(main())


def x(*rows: list[float], name: str = "x", **parameters: Any) -> InferenceRequest:
    return InferenceRequest([Tensor.from_numpy(name, np.array(rows, dtype=np.float64))],
                            parameters=parameters)


def graph_of(registry: Registry, name: str = "g") -> GraphEndpoint:
    endpoint = registry.get(name)
    assert isinstance(endpoint, GraphEndpoint)
    return endpoint


def nodes(**spec: Any) -> dict[str, Any]:
    return {"nodes": {
        "ident": {"kind": "model", "model": "ident"},
        "double": {"kind": "model", "model": "double"},
        "boom": {"kind": "model", "model": "boom"},
        **spec,
    }}


def test_sequence_maps_tensors_and_returns_an_id(tmp_path: Path) -> None:
    spec = nodes(
        root={"kind": "sequence", "steps": [
            "double",                                  # y = 2x
            {"node": "double", "map": {"y": "x"}},     # y = 4x
            {"node": "ident", "map": {"y": "z"}},      # z = 4x
            {"node": "double2", "input": "request"},   # y = 2x, from the graph's request
        ]},
        double2={"kind": "model", "model": "double"},
    )

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        graph = graph_of(registry)
        response = await graph.infer(x([1.0, 2.0]))
        assert response.model_name == "g" and response.model_version == "1" and response.id
        assert [t.name for t in response.outputs] == ["y"]
        np.testing.assert_array_equal(response.outputs[0].data, [[2.0, 4.0]])  # from the request
        assert "routing" not in response.parameters
        assert graph.metadata()["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}]
        assert graph.metadata()["outputs"] == [{"name": "y", "datatype": "FP64", "shape": [-1, 2]}]

    run(repository(tmp_path, spec), scenario)


def test_a_missing_mapped_tensor_names_the_step(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "sequence", "steps": ["double", {"node": "ident", "map": {"nope": "x"}}]})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        with pytest.raises(ModelFailure, match="node 'root': step 2 \\(ident\\): no tensor 'nope'"):
            await graph_of(registry).infer(x([1.0, 2.0]))

    run(repository(tmp_path, spec), scenario)


def test_errors_name_the_innermost_node(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "sequence", "steps": ["ident", "boom"]})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        with pytest.raises(ModelFailure, match="^node 'boom': model 'boom' failed: ValueError"):
            await graph_of(registry).infer(x([1.0, 2.0]))

    run(repository(tmp_path, spec), scenario)


def test_ensemble_children_run_concurrently(tmp_path: Path) -> None:
    spec = nodes(
        root={"kind": "ensemble", "children": ["s1", "s2", "s3"], "combiner": "mean"},
        s1={"kind": "model", "model": "slow"}, s2={"kind": "model", "model": "slow"},
        s3={"kind": "model", "model": "slow"},
    )

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        started = time.perf_counter()
        response = await graph_of(registry).infer(x([1.0, 3.0], sleep=0.1))
        elapsed = time.perf_counter() - started
        np.testing.assert_array_equal(response.outputs[0].data, [[1.0, 3.0]])
        assert elapsed < 0.25, f"three 100 ms models took {elapsed:.3f} s"

    run(repository(tmp_path, spec), scenario)


def test_a_failing_ensemble_child_cancels_its_siblings(tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    write(tmp_path / "late" / "model.py", f"""
        import asyncio
        from pathlib import Path
        from shoal import Model

        class Late(Model):
            async def predict(self, request):
                await asyncio.sleep(0.3)
                Path({str(marker)!r}).write_text("ran to the end")
                return request.inputs
    """)
    write(tmp_path / "late" / "model.yaml", "runtime: custom\n")
    spec = nodes(
        root={"kind": "ensemble", "children": ["late_node", "boom_node"], "combiner": "collect"},
        late_node={"kind": "model", "model": "late"}, boom_node={"kind": "model", "model": "boom"},
    )

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        with pytest.raises(ModelFailure):
            await graph_of(registry).infer(x([1.0, 2.0]))
        await asyncio.sleep(0.5)

    run(repository(tmp_path, spec), scenario)
    assert not marker.exists()


def test_the_index_shows_a_graph_unavailable_while_a_model_it_calls_is_down(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "model", "model": "double"})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        row = next(r for r in repo.index() if r["name"] == "g")
        assert row["state"] == "READY"
        await repo.unload("double")
        row = next(r for r in repo.index() if r["name"] == "g")
        assert row["state"] == "UNAVAILABLE" and "root" in row["reason"]
        assert "g" not in {r["name"] for r in repo.index(ready_only=True)}

    run(repository(tmp_path, spec), scenario)


def test_switch_on_parameters_headers_and_values(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "switch", "cases": [
        {"when": "parameters.mode == 'double'", "node": "double"},
        {"when": "headers.\"x-beta\" == '1'", "node": "ident"},
        {"when": "max(inputs.x[0]) > `100`", "node": "boom"},
    ]})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        graph = graph_of(registry)
        assert (await graph.infer(x([1.0, 2.0], mode="double"))).parameters["routing"] == "root=double"
        HEADERS.set([(b"x-beta", b"1")])
        assert (await graph.infer(x([1.0, 2.0]))).parameters["routing"] == "root=ident"
        HEADERS.set(None)
        with pytest.raises(ModelFailure, match="node 'boom'"):
            await graph.infer(x([1.0, 200.0]))
        with pytest.raises(InvalidInput, match="no case of switch 'root' matched"):
            await graph.infer(x([1.0, 2.0]))

    run(repository(tmp_path, spec), scenario)


def test_switch_default(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "switch", "cases": [{"when": "parameters.a", "node": "double"}],
                       "default": "ident"})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        assert (await graph_of(registry).infer(x([1.0, 2.0]))).parameters["routing"] == "root=ident"

    run(repository(tmp_path, spec), scenario)


def test_splitter_weights_and_sticky_keys(tmp_path: Path) -> None:
    spec = nodes(
        root={"kind": "splitter", "branches": [{"node": "ident", "weight": 80},
                                               {"node": "double", "weight": 20}]},
        sticky={"kind": "splitter", "sticky": "parameters.user",
                "branches": [{"node": "ident", "weight": 50}, {"node": "double", "weight": 50}]},
    )
    spec["root"] = "root"

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        graph = graph_of(registry)
        counts = Counter([(await graph.infer(x([1.0, 2.0]))).parameters["routing"] for _ in range(1000)])
        assert 720 <= counts["root=ident"] <= 880, counts
        sticky = graph.nodes["sticky"]
        from shoal.graph.context import Call

        for user in ("ann", "bob", "cid", "dee"):
            seen = set()
            for _ in range(5):
                call = Call("g", "id")
                await sticky.run(call, x([1.0, 2.0], user=user))
                seen.add(call.routing["sticky"])
            assert len(seen) == 1

    run(repository(tmp_path, spec), scenario)


def test_bandit_routes_learns_from_feedback_and_can_be_pinned(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "bandit", "strategy": "epsilon_greedy", "epsilon": 0.0,
                       "arms": ["ident", "double"], "seed": 1})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        graph = graph_of(registry)
        pinned = await graph.infer(x([1.0, 2.0], routing="root=double"))
        assert pinned.parameters["routing"] == "root=double"
        assert await graph.feedback(1.0, request_id=pinned.id) == FeedbackResult({"root": "double"})
        response = await graph.infer(x([1.0, 2.0], routing="root=ident"))
        assert await graph.feedback(0.0, routing={"root": "ident"}) == FeedbackResult({"root": "ident"})
        # Greedy now: 'double' has mean 1, 'ident' mean 0.
        assert (await graph.infer(x([1.0, 2.0]))).parameters["routing"] == "root=double"
        state = (await graph.router_state())["root"]["arms"]
        assert state["double"]["pulls"] == 1 and state["ident"]["pulls"] == 1
        for bad, message in [
            (lambda: graph.feedback(1.5, request_id=response.id), "between 0 and 1"),
            (lambda: graph.feedback(float("nan"), request_id=response.id), "finite"),
            (lambda: graph.feedback(1.0, routing={"nope": "ident"}), "no routing node 'nope'"),
            (lambda: graph.feedback(1.0, routing={"root": "nope"}), "no branch 'nope'"),
            (lambda: graph.feedback(1.0, request_id="unknown"), "no routing for request id"),
            (lambda: graph.feedback(1.0), "needs the request's 'id' or the 'routing'"),
            (lambda: graph.infer(x([1.0, 2.0], routing="root=zz")), "no branch 'zz'"),
        ]:
            with pytest.raises(InvalidInput, match=message):
                await bad()
        assert (await graph.router_state())["root"]["arms"] == state  # nothing changed

    run(repository(tmp_path, spec), scenario)


def test_feedback_by_id_counts_once(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "bandit", "strategy": "epsilon_greedy", "epsilon": 0.0,
                       "arms": ["ident", "double"], "seed": 1})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        graph = graph_of(registry)

        async def pulls() -> float:
            return (await graph.router_state())["root"]["arms"]["double"]["pulls"]

        first = await graph.infer(x([1.0, 2.0], routing="root=double"))
        assert await graph.feedback(1.0, request_id=first.id) == FeedbackResult({"root": "double"})
        duplicate = FeedbackResult({}, duplicate=True)
        assert await graph.feedback(1.0, request_id=first.id) == duplicate
        # Seldon's feedback echoes the routing with the puid: the id still counts once.
        assert await graph.feedback(0.0, {"root": "double"}, first.id) == duplicate
        with pytest.raises(InvalidInput, match="between 0 and 1"):  # checked like any feedback
            await graph.feedback(2.0, request_id=first.id)
        assert await pulls() == 1
        # Two at once (a client retrying before the first answer): one counts.
        second = await graph.infer(x([1.0, 2.0], routing="root=double"))
        both = await asyncio.gather(graph.feedback(1.0, request_id=second.id),
                                    graph.feedback(1.0, request_id=second.id))
        assert sorted(r.duplicate for r in both) == [False, True]
        assert await pulls() == 2
        # Routing alone names no request: it cannot be told from another request's feedback.
        assert await graph.feedback(1.0, {"root": "double"}) == FeedbackResult({"root": "double"})
        # A new request under a reused id is a new request.
        again = x([1.0, 2.0], routing="root=double")
        again.id = first.id
        await graph.infer(again)
        assert await graph.feedback(1.0, request_id=first.id) == FeedbackResult({"root": "double"})
        assert await pulls() == 4

    run(repository(tmp_path, spec), scenario)


def test_feedback_that_failed_can_be_sent_again(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "router", "path": "plugins.py", "class": "ByParameter",
                       "arms": ["ident", "double"]})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        graph = graph_of(registry)
        response = await graph.infer(x([1.0, 2.0]))
        with pytest.raises(ModelFailure, match="cannot learn now"):
            await graph.feedback(1.0, request_id=response.id, truth="fail")
        assert await graph.feedback(1.0, request_id=response.id) == FeedbackResult({"root": "ident"})
        assert (await graph.feedback(1.0, request_id=response.id)).duplicate
        assert graph.routers["root"].plugin.rewards == [("ident", 1.0, None)]  # type: ignore[attr-defined]

    run(repository(tmp_path, spec), scenario)


def test_remembered_requests_and_their_feedback_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_endpoint, "REMEMBERED_REQUESTS", 3)
    spec = nodes(root={"kind": "bandit", "strategy": "thompson", "arms": ["ident", "double"]})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        graph = graph_of(registry)
        ids = [(await graph.infer(x([1.0, 2.0]))).id for _ in range(3)]
        for request_id in ids:
            await graph.feedback(1.0, request_id=request_id)
        for _ in range(3):  # the three are forgotten, with their feedback
            await graph.infer(x([1.0, 2.0]))
        assert len(graph._recent) == 3 and not graph._rewarded
        with pytest.raises(InvalidInput, match="no routing for request id"):
            await graph.feedback(1.0, request_id=ids[0])

    run(repository(tmp_path, spec), scenario)


@pytest.mark.parametrize(
    "spec",
    [
        nodes(root={"kind": "sequence", "steps": ["ident", "double"]}),
        nodes(root={"kind": "switch", "cases": [{"when": "parameters.d", "node": "double"}],
                    "default": "ident"}),
    ],
    ids=["no routers", "no learning router"],
)
def test_feedback_to_a_graph_that_learns_nothing_is_taken(tmp_path: Path, spec: dict[str, Any]) -> None:
    """As for a plain model (and in Seldon Core): nothing to update, whatever the request."""

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        graph = graph_of(registry)
        response = await graph.infer(x([1.0, 2.0]))
        for request_id in (response.id, "never-served", None):
            assert await graph.feedback(1.0, request_id=request_id) == FeedbackResult({})
        for bad, message in [
            (lambda: graph.feedback(float("inf"), request_id=response.id), "finite"),
            (lambda: graph.feedback(1.0, routing={"nope": "ident"}), "no routing node 'nope'"),
        ]:
            with pytest.raises(InvalidInput, match=message):
                await bad()
        assert not graph._recent  # nothing to remember

    run(repository(tmp_path, spec), scenario)


def test_a_request_that_took_no_learning_router_has_nothing_to_update(tmp_path: Path) -> None:
    bandit = {"kind": "bandit", "strategy": "thompson", "arms": ["ident", "double"]}
    switch = nodes(root={"kind": "switch", "cases": [{"when": "parameters.learn", "node": "pick"}],
                         "default": "ident"}, pick=bandit)
    unreached = nodes(spare=bandit)  # a bandit on no path: requests take no router at all
    unreached["root"] = "ident"
    repository(tmp_path, switch, "switch")
    repository(tmp_path, unreached, "unreached")

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        for name, routing in (("switch", "root=ident"), ("unreached", None)):
            graph = graph_of(registry, name)
            response = await graph.infer(x([1.0, 2.0]))
            assert response.parameters.get("routing") == routing
            assert await graph.feedback(1.0, request_id=response.id) == FeedbackResult({})
            again = await graph.feedback(1.0, request_id=response.id)
            assert again == FeedbackResult({}, duplicate=True)
            with pytest.raises(InvalidInput, match="no routing for request id"):
                await graph.feedback(1.0, request_id="never-served")

    run(tmp_path, scenario)


def test_bandit_state_survives_a_reload(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "bandit", "strategy": "thompson", "arms": ["ident", "double"]})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        await graph_of(registry).feedback(1.0, routing={"root": "double"})
        await repo.load("g")
        assert (await graph_of(registry).router_state())["root"]["arms"]["double"]["pulls"] == 1
        assert (tmp_path / ".state" / "g" / "root.json").is_file()

    run(repository(tmp_path, spec), scenario)


def test_routing_picks_up_another_process_feedback_off_the_loop(tmp_path: Path) -> None:
    """Two graph instances on one state directory, as two server processes would have."""
    spec = nodes(root={"kind": "bandit", "strategy": "epsilon_greedy", "epsilon": 0.0,
                       "arms": ["ident", "double"]})
    repository(tmp_path, spec)

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        other_registry = Registry()
        other = ModelRepository(tmp_path, other_registry, repo.executor, Metrics(),
                                state_dir=tmp_path / ".state")
        await other.load_all()
        reader, writer = graph_of(registry), graph_of(other_registry)
        store = reader.routers["root"].store  # type: ignore[attr-defined]
        store.refresh = 0.0  # a reload is due at every request
        await writer.feedback(1.0, routing={"root": "double"})
        await writer.feedback(0.0, routing={"root": "ident"})
        assert store.counts()[0].sum() == 0  # routing reads memory only
        await reader.infer(x([1.0, 2.0]))  # asks for a reload, on a worker thread
        await reader.routers["root"]._reloading  # type: ignore[attr-defined]
        assert store.counts()[0].tolist() == [1.0, 1.0]
        routed = [(await reader.infer(x([1.0, 2.0]))).parameters["routing"] for _ in range(5)]
        assert routed == ["root=double"] * 5  # greedy on what the other instance learned

    run(tmp_path, scenario)


def test_transformer_custom_combiner_and_custom_router(tmp_path: Path) -> None:
    spec = nodes(
        root={"kind": "sequence", "steps": ["prep", "pick"]},
        prep={"kind": "transformer", "path": "plugins.py", "class": "AddOne"},
        pick={"kind": "router", "path": "plugins.py", "class": "ByParameter", "arms": ["wrapped", "sum"]},
        wrapped={"kind": "transformer", "path": "plugins.py", "class": "AddOne", "child": "ident"},
        sum={"kind": "ensemble", "children": ["ident", "double"],
             "combiner": {"path": "plugins.py", "class": "Sum"}},
    )

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        graph = graph_of(registry)
        first = await graph.infer(x([1.0, 2.0]))
        # prep adds one (no child: its request is its answer), wrapped adds one more.
        np.testing.assert_array_equal(first.outputs[0].data, [[3.0, 4.0]])
        assert first.outputs[0].parameters == {"post": True}
        assert first.parameters["routing"] == "pick=wrapped"
        second = await graph.infer(x([1.0, 2.0], arm="sum"))
        assert second.outputs[0].name == "sum"
        np.testing.assert_array_equal(second.outputs[0].data, [[6.0, 9.0]])  # 2,3 + 4,6
        assert await graph.feedback(0.5, request_id=second.id, truth=[1]) == FeedbackResult({"pick": "sum"})
        plugin = graph.routers["pick"].plugin  # type: ignore[attr-defined]
        assert plugin.rewards == [("sum", 0.5, [1])]
        with pytest.raises(ModelFailure, match="route\\(\\) returned 7"):
            await graph.infer(x([1.0, 2.0], arm=7))

    run(repository(tmp_path, spec), scenario)


def test_a_reload_picks_up_edited_user_code_under_the_same_module(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "transformer", "path": "plugins.py", "class": "AddOne", "child": "ident"})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        first = await graph_of(registry).infer(x([1.0, 2.0]))
        np.testing.assert_array_equal(first.outputs[0].data, [[2.0, 3.0]])
        modules = {name for name in sys.modules if name.startswith("shoal_graphs.")}
        write(tmp_path / "g" / "plugins.py", PLUGINS.replace("+ 1}", "+ 10}"))
        await repo.load("g")
        second = await graph_of(registry).infer(x([1.0, 2.0]))
        np.testing.assert_array_equal(second.outputs[0].data, [[11.0, 12.0]])
        assert {name for name in sys.modules if name.startswith("shoal_graphs.")} == modules

    run(repository(tmp_path, spec), scenario)


def test_requested_outputs_and_timeout(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "sequence", "steps": ["slow"]}, slow={"kind": "model", "model": "slow"})
    spec["timeout"] = 0.05

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        graph = graph_of(registry)
        request = x([1.0, 2.0], sleep=0)
        request.outputs = [RequestedOutput("nope")]
        with pytest.raises(InvalidInput, match="graph 'g' has no output 'nope'"):
            await graph.infer(request)
        with pytest.raises(DeadlineExceeded):
            await graph.infer(x([1.0, 2.0], sleep=0.3))

    run(repository(tmp_path, spec), scenario)


def test_readiness_follows_the_models(tmp_path: Path) -> None:
    spec = nodes(root={"kind": "sequence", "steps": ["double"]})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        graph = graph_of(registry)
        assert graph.ready
        await repo.unload("double")
        assert not graph.ready
        with pytest.raises(Unavailable, match="node 'double': model 'double' is not served"):
            registry.get("g")
        await repo.load("double")
        assert registry.get("g") is graph

    run(repository(tmp_path, spec), scenario)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (nodes(root={"kind": "model", "model": "ghost"}), "node 'root': unknown model 'ghost'"),
        (nodes(root={"kind": "model", "model": "g"}), "node 'root': a graph cannot call itself"),
        (nodes(root={"kind": "model", "model": "other"}), "node 'root': 'other' is a graph"),
        (nodes(root={"kind": "transformer", "path": "plugins.py", "class": "Nope"}),
         "node 'root': plugins.py has no class 'Nope'"),
        (nodes(root={"kind": "transformer", "path": "../x.py", "class": "Nope"}),
         "node 'root': '../x.py' is outside the graph folder"),
        (nodes(root={"kind": "bandit", "strategy": "thompson", "arms": ["ident"]}),
         "node 'root': a bandit needs at least two arms"),
        (nodes(root={"kind": "remote", "url": "ftp://host", "model": "m"}),
         "node 'root': url 'ftp://host': use http://"),
        (nodes(root={"kind": "remote", "url": "http://host:1/x", "model": "m", "protocol": "v2-grpc"}),
         "node 'root': url 'http://host:1/x' is http"),
    ],
)
def test_a_broken_graph_fails_alone(tmp_path: Path, spec: dict[str, Any], reason: str) -> None:
    repository(tmp_path, spec)
    write(tmp_path / "other" / "graph.yaml", yaml.safe_dump(nodes(root={"kind": "sequence", "steps": ["ident"]})))

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        rows = {row["name"]: row for row in repo.index()}
        assert rows["g"]["state"] == "UNAVAILABLE" and reason in rows["g"]["reason"]
        assert rows["double"]["state"] == "READY" and rows["other"]["state"] == "READY"
        assert (await graph_of(registry, "other").infer(x([1.0, 2.0]))).outputs

    run(tmp_path, scenario)


def test_a_remote_node_without_aiohttp_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if the triton extra were missing
    monkeypatch.delitem(sys.modules, "shoal.graph.nodes.remote", raising=False)
    spec = nodes(root={"kind": "remote", "url": "http://127.0.0.1:9", "model": "m"})

    async def scenario(repo: ModelRepository, registry: Registry) -> None:
        row = {r["name"]: r for r in repo.index()}["g"]
        assert row["state"] == "UNAVAILABLE"
        assert "node 'root': remote nodes need aiohttp: pip install 'shoal[triton]'" in row["reason"]
        assert registry.get("double").ready

    run(repository(tmp_path, spec), scenario)


def test_the_server_needs_no_http_client_library() -> None:
    """httpx and aiohttp are optional (tests, the triton extra): importing the server and
    the graph package must not need them."""
    code = ("import sys; sys.modules['httpx'] = sys.modules['aiohttp'] = None; "
            "import shoal.server.app, shoal.graph.build")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
