"""graph.yaml validation: every failure names the node at fault."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.errors import LoadError
from shoal.graph.spec import BanditNode, SequenceNode, Step, parse_graph, read_graph

MODEL = {"kind": "model", "model": "m"}


def graph(**nodes: Any) -> dict[str, Any]:
    return {"nodes": {"a": MODEL, "b": {"kind": "model", "model": "n"}, **nodes}}


def test_a_valid_graph_parses_with_step_shorthand() -> None:
    spec = parse_graph(graph(root={"kind": "sequence", "steps": ["a", {"node": "b", "map": {"y": "x"}}]}))
    root = spec.nodes["root"]
    assert isinstance(root, SequenceNode)
    assert root.steps == [Step(node="a"), Step(node="b", map={"y": "x"})]


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ({"root": {"kind": "sequence", "steps": ["a", "ghost"]}}, "node 'root': unknown node 'ghost'"),
        ({"root": {"kind": "sequence", "steps": ["loop"]},
          "loop": {"kind": "transformer", "path": "t.py", "class": "T", "child": "root"}},
         "cycle: root -> loop -> root"),
        ({"root": {"kind": "splitter", "branches": [{"node": "a", "weight": 60}, {"node": "b", "weight": 30}]}},
         "node 'root': branch weights add up to 90, not 100"),
        ({"root": {"kind": "bandit", "strategy": "thompson", "arms": ["a"]}},
         "node 'root': a bandit needs at least two arms, got 1"),
        ({"root": {"kind": "switch", "cases": [{"when": "parameters.x ==", "node": "a"}]}},
         "node 'root': case 1 condition 'parameters.x ==' is not a valid JMESPath expression"),
        ({"root": {"kind": "splitter", "sticky": "headers.[", "branches": [{"node": "a", "weight": 100}]}},
         "node 'root': sticky key 'headers.[' is not a valid JMESPath"),
        ({"root": {"kind": "bandit", "strategy": "greedy", "arms": ["a", "b"]}}, "node 'root': strategy"),
        ({"root": {"kind": "model", "model": "m", "colour": "red"}}, "node 'root': colour: Extra inputs"),
        ({"root": {"kind": "teleport"}}, "node 'root': Input tag 'teleport'"),
        ({"root": {"kind": "bandit", "strategy": "ucb1", "arms": ["a", "a"]}}, "node 'root': arm 'a' is listed twice"),
        ({"root": {"kind": "ensemble", "children": []}}, "node 'root': children"),
        ({"bad/name": MODEL, "root": {"kind": "sequence", "steps": ["bad/name"]}}, "node 'bad/name': invalid name"),
    ],
)
def test_invalid_graphs_fail_naming_the_node(nodes: dict[str, Any], message: str) -> None:
    with pytest.raises(LoadError, match=None) as caught:
        parse_graph(graph(**nodes))
    assert message in str(caught.value)


def test_the_root_must_exist() -> None:
    with pytest.raises(LoadError, match="root node 'main' is not among the nodes"):
        parse_graph({"root": "main", "nodes": {"a": MODEL}})


def test_weights_are_percentages_within_rounding() -> None:
    spec = parse_graph(graph(root={"kind": "splitter", "branches": [
        {"node": "a", "weight": 33.33}, {"node": "b", "weight": 66.67}]}))
    assert spec.nodes["root"].kind == "splitter"


def test_bandit_defaults() -> None:
    spec = parse_graph(graph(root={"kind": "bandit", "strategy": "epsilon_greedy", "arms": ["a", "b"]}))
    root = spec.nodes["root"]
    assert isinstance(root, BanditNode) and root.epsilon == 0.1 and root.seed is None


def test_shared_children_are_not_cycles() -> None:
    # A diamond: two parents reach the same node.
    parse_graph(graph(
        root={"kind": "ensemble", "children": ["left", "right"], "combiner": "mean"},
        left={"kind": "sequence", "steps": ["a"]},
        right={"kind": "sequence", "steps": ["a"]},
    ))


def test_read_graph_reports_bad_yaml(tmp_path: Any) -> None:
    (tmp_path / "graph.yaml").write_text("nodes: [unclosed")
    with pytest.raises(LoadError, match="not valid YAML"):
        read_graph(tmp_path)
    (tmp_path / "graph.yaml").write_text("- a list")
    with pytest.raises(LoadError, match="must be a mapping"):
        read_graph(tmp_path)
