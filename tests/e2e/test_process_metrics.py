"""The standard process_* / python_* metrics in /metrics, with one server process and under
--http-workers (every live server process, labelled pid, whichever process answers)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .models import custom
from .process import ShoalProcess
from .test_http_workers import server_processes
from .test_workers import PID

GC = ("python_gc_objects_collected_total", "python_gc_objects_uncollectable_total",
      "python_gc_collections_total")


def scrape(url: str) -> dict[str, list]:
    with httpx.Client() as client:  # a fresh connection: under --http-workers the kernel picks
        text = client.get(f"{url}/metrics").text
    found: dict[str, list] = {}
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), "a family is listed twice"
    for family in families:
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def rss_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def started(pid: int) -> float:
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def assert_sane(found: dict[str, list], pid: int, labels: dict[str, str]) -> None:
    """The process_* series of ``pid`` (those with ``labels``) are that process's."""

    def value(name: str) -> float:
        [sample] = [s for s in found[name] if s.labels == labels]
        return sample.value

    rss = value("process_resident_memory_bytes")
    assert 20e6 < rss < 20e9 and abs(rss - rss_of(pid)) < 0.25 * rss  # a Python with numpy
    assert value("process_virtual_memory_bytes") >= rss
    assert 0 < value("process_cpu_seconds_total") < 600
    assert abs(value("process_start_time_seconds") - started(pid)) < 0.1  # that process's
    assert time.time() - 600 < value("process_start_time_seconds") <= time.time()
    assert 3 <= value("process_open_fds") <= value("process_max_fds")
    for name in GC:
        generations = {s.labels["generation"] for s in found[name] if
                       {k: v for k, v in s.labels.items() if k != "generation"} == labels}
        assert generations == {"0", "1", "2"}, name
    assert all(s.value >= 0 for name in GC for s in found[name])


def test_one_process(server: ShoalProcess) -> None:
    found = scrape(server.url)
    assert_sane(found, server.listening["pid"], {})
    [info] = found["python_info"]
    assert info.labels["version"] == platform.python_version()
    assert all("pid" not in s.labels for name in GC for s in found[name])
    assert sum(s.value for s in found["python_gc_collections_total"]) > 0


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("process-metrics")
    custom(root / "pid", PID)
    process = ShoalProcess(root, "--http-workers", "2")
    process.wait_ready()
    yield process
    assert process.stop() == 0


def test_every_server_process_labelled_whichever_answers(workers: ShoalProcess) -> None:
    pids = server_processes(workers.listening["pid"])
    assert len(pids) == 2
    for _ in range(8):  # fresh connections: both processes answer some of these
        found = scrape(workers.url)
        for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                     "process_start_time_seconds", "process_open_fds", *GC):
            assert {int(s.labels["pid"]) for s in found[name]} == pids, name
        for pid in pids:
            assert_sane(found, pid, {"pid": str(pid)})
        [info] = found["python_info"]  # the same for every process: once, unlabelled
        assert "pid" not in info.labels
        assert "shoal_requests_total" in found or "shoal_model_state" in found  # still summed


def test_a_dead_process_drops_out(tmp_path: Path) -> None:
    custom(tmp_path / "pid", PID)
    process = ShoalProcess(tmp_path, "--http-workers", "2")
    try:
        process.wait_ready()
        before = server_processes(process.listening["pid"])
        dead = next(iter(before))
        os.kill(dead, 9)
        deadline = time.monotonic() + 30
        while len(now := server_processes(process.listening["pid"])) < 2 or now == before:
            assert time.monotonic() < deadline, "no replacement process"
            time.sleep(0.05)
        process.wait_ready()

        def listed(found: dict[str, list], name: str) -> set[int]:
            return {int(s.labels["pid"]) for s in found[name]}

        # The replacement registers once its interpreter has started (before it loads).
        while listed(scrape(process.url), "process_resident_memory_bytes") != now:
            assert time.monotonic() < deadline, "the replacement never appeared"
            time.sleep(0.1)
        for _ in range(4):
            found = scrape(process.url)
            assert listed(found, "process_resident_memory_bytes") == now
            assert listed(found, "python_gc_collections_total") == now
            assert dead not in listed(found, "process_cpu_seconds_total")
    finally:
        assert process.stop() == 0
