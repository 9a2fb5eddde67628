"""Graph metrics, in the server's Prometheus registry beside the request metrics.

Per node: latency. Per routing node and branch: requests routed, feedback received and the
sum of rewards (so a dashboard divides the two for each arm's mean reward).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..observe.metrics import LATENCY_BUCKETS, LabelCache


class GraphMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.node_latency = Histogram(
            "shoal_graph_node_duration_seconds", "Time spent in each graph node, children included.",
            ["graph", "node"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.routes = Counter(
            "shoal_graph_routes", "Requests each routing node sent down each branch.",
            ["graph", "node", "branch"], registry=registry,
        )
        self.feedback = Counter(
            "shoal_graph_feedback", "Feedback received per routing node and branch.",
            ["graph", "node", "branch"], registry=registry,
        )
        self.reward = Gauge(
            "shoal_graph_feedback_reward_sum",
            "Sum of the rewards received per routing node and branch.",
            ["graph", "node", "branch"], registry=registry, multiprocess_mode="sum",
        )
        #: Every labelled child made, so an unloaded graph's series can be dropped.
        self._labels = LabelCache()

    def node_observer(self, graph: str, node: str) -> Callable[[float], None]:
        return self._labels(self.node_latency, graph, node).observe

    def route_counter(self, graph: str, node: str, branches: list[str]) -> Callable[[int], None]:
        children = [self._labels(self.routes, graph, node, b) for b in branches]
        return lambda index: children[index].inc()

    def feedback_received(self, graph: str, node: str, branch: str, reward: float) -> None:
        self._labels(self.feedback, graph, node, branch).inc()
        self._labels(self.reward, graph, node, branch).inc(reward)

    def forget(self, graph: str) -> None:
        """Drop an unloaded graph's series."""
        for metric, labels in self._labels.of(graph):
            self._labels.remove(metric, labels)
