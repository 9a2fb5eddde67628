"""The dashboard's server side against a real server: the JSON endpoints under ``/ui/api``,
the pages and static files, ``--no-ui``, and the time series under ``--http-workers``.

Fixtures (the repository, the shared server) are in ``conftest.py``.
"""

from __future__ import annotations

import http.client
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import shoal
from shoal.ui.series import BOUNDS, FIRST_BUCKET, SLOTS, SeriesRecorder, point, quantile

from e2e.process import ShoalProcess

from .conftest import SAMPLE_INTERVAL, StartShoal, build_many_models, iris_body

SERIES_KEYS = {"t", "rps", "p50_ms", "p99_ms", "error_rate", "batch_size", "queue_ms"}


@pytest.fixture(scope="module")
def client(ui_server: ShoalProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ui_server.url, timeout=30) as http:
        yield http


def wait_for(check: Callable[[], Any], timeout: float = 15.0, every: float = 0.1) -> Any:
    """Call ``check`` until it returns something true; that value (or the last one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def by_name(overview: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in overview["models"]}


def requests_in(series: dict[str, list[Any]], since: float = 0.0) -> float:
    """How many requests a series counts (after ``since``): rate times interval, summed."""
    times, rates = series["t"], series["rps"]
    total = 0.0
    for i in range(1, len(times)):
        if times[i] > since and rates[i] is not None:
            total += rates[i] * (times[i] - times[i - 1])
    return total


def check_series_shape(series: dict[str, list[Any]]) -> None:
    assert set(series) == SERIES_KEYS
    assert len({len(v) for v in series.values()}) == 1, {k: len(v) for k, v in series.items()}
    assert all(a < b for a, b in zip(series["t"], series["t"][1:])), series["t"]
    for rps in series["rps"]:
        assert rps is None or rps >= 0


# -- the overview ----------------------------------------------------------------------------


def test_overview_lists_every_model_and_the_server(client: httpx.Client) -> None:
    reply = client.get("/ui/api/overview")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    overview = reply.json()
    server = overview["server"]
    assert server["name"] == "shoal" and server["version"] == shoal.__version__
    assert isinstance(server["pid"], int) and server["http_workers"] == 1
    assert server["admin_token"] is False
    assert server["sample_interval_s"] == SAMPLE_INTERVAL
    assert 0 < server["uptime_s"] < 600
    assert abs(server["started"] + server["uptime_s"] - time.time()) < 5

    models = by_name(overview)
    assert list(models) == sorted(models)
    assert set(models) == {"ab", "boom", "broken", "canary", "iris", "logged"}
    iris = models["iris"]
    assert iris["kind"] == "model" and iris["state"] == "READY" and iris["reason"] == ""
    assert iris["versions"] == ["1", "2"] and iris["runtime"] == "sklearn"
    assert iris["replicas"] == 0 and iris["rollout"] is None and iris["payload_sink"] is None
    broken = models["broken"]
    assert broken["state"] == "UNAVAILABLE" and "model.joblib" in broken["reason"]
    assert broken["versions"] == []
    graph = models["ab"]
    assert (graph["kind"], graph["state"], graph["runtime"], graph["versions"]) == (
        "graph", "READY", "graph", ["1"])
    assert models["boom"]["runtime"] == "custom"
    assert models["canary"]["rollout"] == {
        "state": "progressing", "stable": "1", "canary": "2", "canary_percent": 50.0,
        "shadow": "3",
    }
    assert models["logged"]["payload_sink"].startswith("file://")
    for model in models.values():
        check_series_shape(model["series"])


def test_series_rise_after_requests(client: httpx.Client) -> None:
    started = time.time()
    for _ in range(30):
        assert client.post("/v2/models/iris/infer", json=iris_body(2)).status_code == 200
    for _ in range(10):
        assert client.post("/v2/models/boom/infer", json=iris_body(1)).status_code == 500
    for _ in range(10):  # a client error counts as a failed request too
        assert client.post("/v2/models/logged/infer", json={"inputs": []}).status_code == 400

    def counted() -> dict[str, dict[str, Any]] | None:
        models = by_name(client.get("/ui/api/overview").json())
        if (requests_in(models["iris"]["series"], started) >= 29.9
                and requests_in(models["boom"]["series"], started) >= 9.9
                and requests_in(models["logged"]["series"], started) >= 9.9):
            return models
        return None

    models = wait_for(counted)
    assert models is not None, "the series never counted the requests"
    iris = models["iris"]["series"]
    check_series_shape(iris)
    busy = [i for i, t in enumerate(iris["t"]) if t > started and iris["rps"][i]]
    assert busy
    for i in busy:
        assert 0 < iris["p50_ms"][i] <= iris["p99_ms"][i] <= BOUNDS[-2] * 1000
        assert iris["error_rate"][i] == 0.0
        assert iris["batch_size"][i] >= 1  # iris batches (max_batch_size: 8)
        assert iris["queue_ms"][i] >= 0
    for i, rps in enumerate(iris["rps"]):
        if not rps:  # nothing happened: nothing to say about latency or errors
            assert iris["p50_ms"][i] is None and iris["error_rate"][i] is None
    for name in ("boom", "logged"):
        series = models[name]["series"]
        rates = [e for i, e in enumerate(series["error_rate"])
                 if series["t"][i] > started and series["rps"][i]]
        assert rates and all(e == 1.0 for e in rates), (name, series)
        assert all(b is None for b in series["batch_size"])  # no batching there

    # The model page's statistics count the same requests (Triton's statistics).
    detail = client.get("/ui/api/models/iris").json()
    assert sum(s["inference_count"] for s in detail["statistics"]) >= 60


# -- one model -------------------------------------------------------------------------------


def test_model_detail(client: httpx.Client) -> None:
    reply = client.get("/ui/api/models/iris")
    assert reply.status_code == 200, reply.text
    detail = reply.json()
    assert set(detail) == {"name", "kind", "state", "reason", "versions", "runtime", "replicas",
                           "autoscaling", "metadata", "config", "statistics", "series",
                           "rollout", "explainer", "payload"}
    assert detail["autoscaling"] is None  # not autoscaled
    assert (detail["name"], detail["kind"], detail["state"], detail["reason"]) == (
        "iris", "model", "READY", "")
    assert detail["versions"] == [{"version": "1", "state": "READY", "reason": ""},
                                  {"version": "2", "state": "READY", "reason": ""}]
    assert detail["metadata"] == client.get("/v2/models/iris").json()
    assert detail["config"] == {"max_batch_size": 8, "max_batch_delay_ms": 2.0,
                                "max_inflight": 0, "timeout": 0.0, "workers": 0}
    stats = client.get("/v2/models/iris/stats").json()["model_stats"]
    assert [(s["name"], s["version"]) for s in detail["statistics"]] == [
        (s["name"], s["version"]) for s in stats]
    assert detail["rollout"] == {"model": "iris", "state": "none"}
    assert detail["explainer"] is True and detail["payload"] is None
    check_series_shape(detail["series"])

    boom = client.get("/ui/api/models/boom").json()
    assert boom["explainer"] is False and boom["runtime"] == "custom"


def test_model_detail_of_a_model_that_failed(client: httpx.Client) -> None:
    detail = client.get("/ui/api/models/broken").json()
    assert detail["state"] == "UNAVAILABLE" and "model.joblib" in detail["reason"]
    assert detail["metadata"] is None and detail["statistics"] == []
    assert [(v["version"], v["state"]) for v in detail["versions"]] == [("1", "UNAVAILABLE")]
    assert "model.joblib" in detail["versions"][0]["reason"]
    check_series_shape(detail["series"])


def test_model_detail_has_the_rollout_status(client: httpx.Client) -> None:
    for _ in range(6):
        assert client.post("/v2/models/canary/infer", json=iris_body(1)).status_code == 200
    detail = client.get("/ui/api/models/canary").json()
    status = client.get("/v2/models/canary/rollout").json()
    volatile = ("window_seconds",)
    mine = {k: v for k, v in detail["rollout"].items() if k not in volatile}
    theirs = {k: v for k, v in status.items() if k not in volatile}
    if mine != theirs:  # a shadow request may have finished in between: once more
        detail = client.get("/ui/api/models/canary").json()
        status = client.get("/v2/models/canary/rollout").json()
        mine = {k: v for k, v in detail["rollout"].items() if k not in volatile}
        theirs = {k: v for k, v in status.items() if k not in volatile}
    assert mine == theirs
    assert mine["state"] == "progressing" and set(mine["variants"]) == {"stable", "canary", "shadow"}
    assert sum(mine["variants"][r]["requests"] for r in ("stable", "canary")) >= 6


def test_model_detail_has_recent_payload_records(client: httpx.Client) -> None:
    for i in range(3):
        body = iris_body(1 + i)
        assert client.post("/v2/models/logged/infer", json=body).status_code == 200
    payload = client.get("/ui/api/models/logged").json()["payload"]
    assert payload["sink"].startswith("file://")
    recent = payload["recent"]
    assert recent, payload
    assert all(e["inferenceservicename"] == "logged" for e in recent)
    requests = [e for e in recent if e["type"].endswith(".request")]
    # Newest first: the last request sent (3 rows) comes first.
    assert requests[0]["data"]["inputs"][0]["shape"] == [3, 4]
    times = [e["time"] for e in requests]  # each record's request, then its response
    assert times == sorted(times, reverse=True)
    assert all("omitted_bytes" not in e for e in recent)

    # A big record is listed without its data (the page shows how big it was).
    rows = 5000
    big = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [rows, 4],
                       "data": [5.1, 3.5, 1.4, 0.2] * rows}]}
    assert client.post("/v2/models/logged/infer", json=big).status_code == 200
    newest = client.get("/ui/api/models/logged").json()["payload"]["recent"][:2]
    assert [e["type"].rsplit(".", 1)[1] for e in newest] == ["request", "response"]
    # Kept without its data (the request and its answer): how big it was is shown instead.
    for event in newest:
        assert event["data"] is None and event["omitted_bytes"] > 64 * 1024


@pytest.mark.parametrize(("path", "status"), [
    ("/ui/api/models/nosuch", 404),
    ("/ui/api/models/bad..name", 400),
    ("/ui/api/models/.hidden", 400),
    ("/ui/api/graphs/nosuch", 404),
    ("/ui/api/graphs/iris", 404),  # a model, not a graph
    ("/ui/api/graphs/bad..name", 400),
])
def test_unknown_and_invalid_names(client: httpx.Client, path: str, status: int) -> None:
    reply = client.get(path)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert isinstance(reply.json()["error"], str)


def test_the_api_only_reads(client: httpx.Client) -> None:
    for path in ("/ui/api/overview", "/ui/api/models/iris", "/ui/api/graphs/ab"):
        reply = client.post(path, json={})
        assert reply.status_code == 405, reply.text
        assert "error" in reply.json()


# -- one graph -------------------------------------------------------------------------------


def test_graph_detail(client: httpx.Client) -> None:
    reply = client.get("/ui/api/graphs/ab")
    assert reply.status_code == 200, reply.text
    graph = reply.json()
    assert set(graph) == {"name", "state", "reason", "root", "nodes", "edges", "routers", "series"}
    assert (graph["name"], graph["state"], graph["reason"], graph["root"]) == ("ab", "READY", "", "root")
    assert {(n["name"], n["kind"], n["target"]) for n in graph["nodes"]} == {
        ("root", "switch", None), ("bandit", "bandit", None),
        ("old", "model", "iris:1"), ("new", "model", "iris:2"),
    }
    assert sorted((e["from"], e["to"], e["label"]) for e in graph["edges"]) == [
        ("bandit", "new", None), ("bandit", "old", None),
        ("root", "bandit", "parameters.route == 'bandit'"), ("root", "new", "default"),
    ]
    routers = graph["routers"]
    assert routers["name"] == "ab"
    bandit = routers["routers"]["bandit"]
    assert bandit["kind"] == "bandit" and bandit["strategy"] == "epsilon_greedy"
    assert set(bandit["arms"]) == {"old", "new"}
    assert set(routers["routers"]["root"]["counts"]) == {"bandit", "new"}
    check_series_shape(graph["series"])

    # Without the counts the dashboard adds, the routers are what /routers answers.
    plain = client.get("/v2/models/ab/routers").json()
    for state in routers["routers"].values():
        state.pop("counts")
    assert routers == plain


def test_graph_routers_count_branches_and_rewards(client: httpx.Client) -> None:
    def counts() -> dict[str, dict[str, float]]:
        routers = client.get("/ui/api/graphs/ab").json()["routers"]["routers"]
        return {name: state["counts"] for name, state in routers.items()}

    before = counts()
    routings = []
    for _ in range(5):
        reply = client.post("/v2/models/ab/infer",
                            json={**iris_body(1), "parameters": {"route": "bandit"}})
        assert reply.status_code == 200, reply.text
        routings.append(reply.json()["parameters"]["routing"])
    for _ in range(3):
        assert client.post("/v2/models/ab/infer", json=iris_body(1)).status_code == 200
    after = counts()
    assert after["root"]["bandit"] - before["root"]["bandit"] == 5
    assert after["root"]["new"] - before["root"]["new"] == 3
    assert sum(after["bandit"].values()) - sum(before["bandit"].values()) == 5

    arms_before = client.get("/ui/api/graphs/ab").json()["routers"]["routers"]["bandit"]["arms"]
    feedback = client.post("/v2/models/ab/feedback", json={"routing": "bandit=old", "reward": 1})
    assert feedback.status_code == 200, feedback.text

    def rewarded() -> Any:
        arms = client.get("/ui/api/graphs/ab").json()["routers"]["routers"]["bandit"]["arms"]
        return arms if arms["old"]["pulls"] > arms_before["old"]["pulls"] else None

    arms = wait_for(rewarded, timeout=5)
    assert arms is not None
    assert arms["old"]["reward"] == arms_before["old"]["reward"] + 1
    assert 0 < arms["old"]["mean"] <= 1


# -- pages and static files ------------------------------------------------------------------


def raw_get(url: str, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    """A GET sent exactly as written (httpx would normalise ``..`` away)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


STATIC = Path(shoal.__file__).parent / "ui" / "static"


@pytest.mark.parametrize(("path", "page"), [
    ("/ui", "overview.html"), ("/ui/", "overview.html"),
    ("/ui/models/iris", "model.html"), ("/ui/graphs/ab", "graph.html"),
    ("/ui/rollouts/canary", "rollout.html"),
])
def test_pages(client: httpx.Client, path: str, page: str) -> None:
    reply = client.get(path)
    if not (STATIC / page).is_file():
        assert reply.status_code == 404
        pytest.skip(f"{page} is not written yet")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert reply.headers["cache-control"] == "no-cache"
    assert reply.content == (STATIC / page).read_bytes()


def test_static_files(client: httpx.Client) -> None:
    css = client.get("/ui/static/vendor/uplot/uPlot.min.css")
    assert css.status_code == 200
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert "max-age" in css.headers["cache-control"]
    assert css.content == (STATIC / "vendor" / "uplot" / "uPlot.min.css").read_bytes()
    script = client.get("/ui/static/vendor/uplot/uPlot.iife.min.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    # Revalidation: the same file again is a 304 without a body.
    again = client.get("/ui/static/vendor/uplot/uPlot.min.css",
                       headers={"if-none-match": css.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/ui/static/vendor/uplot").status_code == 404  # a folder
    assert client.get("/ui/static/nosuch.js").status_code == 404
    head = client.head("/ui/static/vendor/uplot/uPlot.min.css")
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize("path", [
    "/ui/static/../routes.py",
    "/ui/static/../../server/app.py",
    "/ui/static/%2e%2e/routes.py",
    "/ui/static/..%2froutes.py",
    "/ui/static/vendor/../../routes.py",
    "/ui/static/vendor/%2e%2e/%2e%2e/series.py",
    "/ui/static//etc/passwd",
    "/ui/static/%2fetc/passwd",
    "/ui/static/.hidden",
    "/ui/static/vendor/uplot/..%5c..%5c..%5croutes.py",
    "/ui/static/%00",
])
def test_static_path_traversal_is_refused(ui_server: ShoalProcess, path: str) -> None:
    status, headers, body = raw_get(ui_server.url, path)
    assert status == 404, (status, body[:200])
    assert headers["content-type"] == "application/json"
    assert b"import" not in body and b"root:" not in body


# -- --no-ui, the admin token, several processes ---------------------------------------------


UI_PATHS = ["/ui", "/ui/", "/ui/models/iris", "/ui/api/overview", "/ui/api/models/iris",
            "/ui/api/graphs/ab", "/ui/static/vendor/uplot/uPlot.min.css"]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_no_ui(start_shoal: StartShoal, ui_repository: Path, how: str) -> None:
    server = (start_shoal(ui_repository, "--no-ui") if how == "flag"
              else start_shoal(ui_repository, env={"SHOAL_NO_UI": "1"}))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path in UI_PATHS:
            reply = http.get(path)
            assert reply.status_code == 404, (path, reply.text)
            assert "error" in reply.json()
        assert http.post("/v2/models/iris/infer", json=iris_body(1)).status_code == 200


def test_http_workers_answer_the_same_series(
    start_shoal: StartShoal, tmp_path: Path,
) -> None:
    """Under --http-workers every process reads the totals of all, at the same instants."""
    from e2e.models import sklearn_iris

    sklearn_iris(tmp_path / "repo" / "iris" / "1")
    server = start_shoal(tmp_path / "repo", "--http-workers", "2", "--admin-token", "s3cret")
    time.sleep(2 * SAMPLE_INTERVAL)  # both have taken their baseline (on the next multiple)
    sent = 40
    for _ in range(sent):  # a new connection each: the kernel spreads them over both
        assert httpx.post(f"{server.url}/v2/models/iris/infer", json=iris_body(1)).status_code == 200
    # Each process answers for all once it has sampled after the last request: poll both
    # (the kernel picks which answers) until each has, rather than guess how long that takes.
    answers: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        overview = httpx.get(f"{server.url}/ui/api/overview").json()
        if requests_in(by_name(overview)["iris"]["series"]) == pytest.approx(sent, abs=0.05):
            answers[overview["server"]["pid"]] = overview
            if len(answers) == 2:
                break
        time.sleep(0.05)
    assert len(answers) == 2, f"not both processes counted all {sent} requests: {answers}"
    for overview in answers.values():
        assert overview["server"]["http_workers"] == 2
        assert overview["server"]["admin_token"] is True  # the UI's reads need no token
        check_series_shape(by_name(overview)["iris"]["series"])
    first, second = (by_name(o)["iris"]["series"] for o in answers.values())
    # Both sample at the same wall-clock instants (multiples of the interval). Points are not
    # compared one by one: a point taken while requests were still arriving depends on when,
    # within its instant's millisecond or so, each process read the files.
    common = sorted(set(first["t"]) & set(second["t"]))
    assert len(common) >= 3
    assert all(abs(t / SAMPLE_INTERVAL - round(t / SAMPLE_INTERVAL)) < 1e-6 for t in common)


def test_overview_with_fifty_models_is_fast(
    start_shoal: StartShoal, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    root = build_many_models(tmp_path / "many", 50)
    server = start_shoal(root)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for i in range(50):
            assert http.post(f"/v2/models/m{i:02d}/infer", json=iris_body(1)).status_code == 200
        timings = {}
        for path in ("/ui/api/overview", "/ui/api/models/m00", "/ui"):
            seconds = []
            for _ in range(10):
                started = time.perf_counter()
                reply = http.get(path)
                seconds.append(time.perf_counter() - started)
                assert reply.status_code in (200, 404), reply.text
            timings[path] = statistics.median(seconds)
        overview = http.get("/ui/api/overview").json()
        assert len(overview["models"]) == 50
        assert all(m["state"] == "READY" for m in overview["models"])
        # An unloaded model stays listed, with why it is not ready.
        assert http.post("/v2/repository/models/m49/unload").status_code == 200
        m49 = by_name(http.get("/ui/api/overview").json())["m49"]
        assert (m49["state"], m49["reason"], m49["versions"]) == ("UNAVAILABLE", "unloaded", [])
        assert http.get("/ui/api/models/m49").json()["metadata"] is None
        assert http.post("/v2/repository/models/m49/load").status_code == 200
        assert by_name(http.get("/ui/api/overview").json())["m49"]["state"] == "READY"
    with capsys.disabled():
        print("\n  50 models: " + ", ".join(f"{p} {s * 1000:.1f} ms" for p, s in timings.items()))
    assert timings["/ui/api/overview"] < 0.5


# -- the series' arithmetic ------------------------------------------------------------------


def totals(requests: float = 0, errors: float = 0, buckets: dict[int, float] | None = None
           ) -> list[float]:
    values = [0.0] * SLOTS
    values[0], values[1] = requests, errors
    for index, count in (buckets or {}).items():
        values[FIRST_BUCKET + index] = count
    return values


def test_quantile_interpolates_within_the_bucket() -> None:
    buckets = [0.0] * len(BOUNDS)
    buckets[3] = 10  # (0.002, 0.005]
    assert quantile(0.5, buckets) == pytest.approx(3.5)  # halfway through: 2 + 3 * 0.5 ms
    assert quantile(0.99, buckets) == pytest.approx(2 + 3 * 0.99)
    buckets[0] = 10  # (0, 0.0005]
    assert quantile(0.25, buckets) == pytest.approx(0.25)
    only_inf = [0.0] * len(BOUNDS)
    only_inf[-1] = 4
    assert quantile(0.5, only_inf) == BOUNDS[-2] * 1000  # the largest finite bound
    assert quantile(0.5, [0.0] * len(BOUNDS)) is None


def test_point_rates_and_resets() -> None:
    rps, p50, p99, error_rate, batch, queue = point(
        totals(10, 1, {3: 5}), totals(30, 6, {3: 25}), 2.0)
    assert (rps, error_rate) == (10.0, 0.25)
    assert p50 == pytest.approx(3.5) and p99 == pytest.approx(4.97)
    assert batch is None and queue is None
    # Nothing happened: a rate of zero, nothing else to say.
    assert point(totals(30, 6), totals(30, 6), 2.0) == (0.0, None, None, None, None, None)
    # A total that went down (a version unloaded, a model reloaded): that interval is unknown,
    # never a spike of what the other series had counted all along.
    assert point(totals(30, 6, {3: 25}), totals(4, 0, {3: 4}), 2.0) == (None,) * 6
    assert point(totals(30, 6, {3: 25}), totals(1500, 6, {3: 25}), 2.0)[0] == 735.0


def test_recorder_keeps_a_window_and_aligns_new_models() -> None:
    recorder = SeriesRecorder(metrics=None, interval=1.0, window=5.0)  # type: ignore[arg-type]
    recorder.record(100.0, {"a": totals(0)})
    for k in range(1, 9):
        found = {"a": totals(k * 2)}
        if k >= 6:
            found["b"] = totals((k - 5) * 3, k - 5)
        recorder.record(100.0 + k, found)
    a, b = recorder.series("a"), recorder.series("b")
    assert a["t"] == [104.0, 105.0, 106.0, 107.0, 108.0]
    assert a["rps"] == [2.0] * 5
    assert b["rps"] == [0.0, 0.0, 3.0, 3.0, 3.0]  # before its first request: no traffic
    assert b["error_rate"][:2] == [None, None]
    assert b["error_rate"][2:] == pytest.approx([1 / 3] * 3, rel=1e-5)
    never = recorder.series("never")
    assert never["t"] == a["t"] and never["rps"] == [0.0] * 5 and never["p50_ms"] == [None] * 5


def test_since_keeps_only_the_newer_points(client: httpx.Client) -> None:
    full = wait_for(lambda: (lambda o: o if len(o["t"]) >= 3 else None)(
        by_name(client.get("/ui/api/overview").json())["iris"]["series"]))
    assert full is not None
    since = full["t"][-2]
    for path in ("/ui/api/overview", "/ui/api/models/iris", "/ui/api/graphs/ab"):
        reply = client.get(path, params={"since": since})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        series = (by_name(body)["iris"] if "models" in body else body)["series"]
        check_series_shape(series)
        assert series["t"] and all(t > since for t in series["t"])
        assert series["t"][0] == full["t"][-1]
        assert client.get(path, params={"since": "soon"}).status_code == 400


FILE_READER_CHECK = """
import json, os, random
from shoal.observe.metrics import Metrics
from shoal.ui import series

metrics = Metrics()
reader = series._FileReader(os.environ["PROMETHEUS_MULTIPROC_DIR"])
answers = []
for round_ in range(3):  # the second and third read parse only what was appended
    for i in range(5 + round_):
        for version in ("1", "2"):
            for outcome in ("success", "500", "cancelled"):
                metrics.request_counted(f"m{i}", version, "v2-rest", outcome, random.random() / 50)
            metrics.batch_observer(f"m{i}", version)(3, [0.001, 0.004])
    metrics.request_counted("_unknown", "", "v2-rest", "404", 0.001)
    answers.append([reader.read(), series._read_collected(metrics), series._read_children(metrics)])
print(json.dumps(answers))
"""


def test_the_file_reader_reads_what_the_metrics_hold(tmp_path: Path) -> None:
    """Under --http-workers the series come from the metric files; the totals read there are
    the ones the metrics themselves hold (read by collect(), and from their children)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    output = subprocess.run([sys.executable, "-c", FILE_READER_CHECK], env=env, check=True,
                            capture_output=True, text=True).stdout
    for from_files, collected, children in json.loads(output):
        assert "_unknown" not in from_files
        assert from_files.keys() == collected.keys() == children.keys()
        for name in from_files:
            assert from_files[name] == pytest.approx(collected[name])
            assert children[name] == pytest.approx(collected[name])
    first, last = json.loads(output)[0][0], json.loads(output)[-1][0]
    assert (first["m0"][0], first["m0"][1]) == (6, 2)  # 2 versions x 3 outcomes; 500s failed
    assert last["m0"][0] == 18 and len(last) == 7
