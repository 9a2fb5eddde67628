"""The standard process_* / python_* collectors of /metrics, and the collector that lists
every server process under --http-workers."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.observe.metrics import (
    PROCESS_FILE,
    Metrics,
    ServerProcessCollector,
    _ProcessFile,
)

CHILD = textwrap.dedent("""
    import sys, time
    from shoal.observe.metrics import Metrics
    metrics = Metrics()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes it
""")


def families(text: bytes) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def test_one_process_gets_the_standard_collectors() -> None:
    metrics = Metrics()
    found = families(metrics.exposition())
    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds",
                 "process_start_time_seconds", "python_info", "python_gc_collections",
                 "python_gc_objects_collected", "shoal_requests"):
        assert name in found, name
    [rss] = found["process_resident_memory_bytes"]
    assert rss.labels == {} and rss.value > 1e6
    # Kept out of the registry that rollout statistics read back.
    assert not [f for f in metrics.registry.collect() if f.name.startswith(("process_", "python_"))]


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    started = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for child in started:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield started
    finally:
        for child in started:
            child.kill()
            child.wait()


def listed(collector: ServerProcessCollector) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for family in collector.collect():
        for sample in family.samples:
            found.setdefault(sample.name, set()).add(int(sample.labels["pid"]))
    return found


def test_every_live_server_process_is_listed_with_its_pid(
    tmp_path: Path, children: list[subprocess.Popen]
) -> None:
    pids = {child.pid for child in children}
    collector = ServerProcessCollector(str(tmp_path))
    found = listed(collector)
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes",
                 "process_cpu_seconds_total", "process_start_time_seconds", "process_open_fds",
                 "process_max_fds", "python_gc_collections_total",
                 "python_gc_objects_collected_total", "python_gc_objects_uncollectable_total"):
        assert found[name] == pids, name
    record = json.loads((tmp_path / PROCESS_FILE.format(pid=children[0].pid)).read_text())
    assert record["pid"] == children[0].pid and len(record["gc"]) == 3

    # A process that died drops out, and so does its file.
    children[0].kill()
    children[0].wait()
    assert listed(collector)["process_resident_memory_bytes"] == {children[1].pid}
    assert not (tmp_path / PROCESS_FILE.format(pid=children[0].pid)).exists()


def test_a_reused_pid_is_not_taken_for_the_process(tmp_path: Path) -> None:
    """A file naming a live pid with another start time: that process died, and the pid now
    belongs to another one."""
    other = os.getppid()
    path = tmp_path / PROCESS_FILE.format(pid=other)
    path.write_text(json.dumps({"pid": other, "start": 1, "gc": []}))
    assert listed(ServerProcessCollector(str(tmp_path))) == {}
    assert not path.exists()


def test_own_gc_counts_are_read_live_and_published_on_change(tmp_path: Path) -> None:
    published = _ProcessFile(str(tmp_path))
    path = Path(published.path)
    enabled = gc.isenabled()
    gc.disable()
    try:
        published.publish()
        first = path.stat().st_mtime_ns, path.read_text()
        published.publish()  # nothing changed: not rewritten
        assert (path.stat().st_mtime_ns, path.read_text()) == first
        gc.collect()
        collections = sum(s["collections"] for s in gc.get_stats())
        found = {f.name: f for f in ServerProcessCollector(str(tmp_path)).collect()}
        live = sum(s.value for s in found["python_gc_collections"].samples)
        assert live == collections  # its own process: gc.get_stats() now, not the file
        published.publish()
        assert sum(s["collections"] for s in json.loads(path.read_text())["gc"]) == collections
    finally:
        if enabled:
            gc.enable()
