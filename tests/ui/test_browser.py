"""The dashboard's pages in a real browser (headless Chromium through Playwright) against a
real ``shoal serve``: what each page shows is checked against the JSON API, and the page's
buttons against the API's state afterwards.

The browser is Debian's chromium (``/usr/bin/chromium``, or ``SHOAL_CHROMIUM``): Playwright
never downloads one here. ``./dev test`` installs it when it is missing; a browser that cannot
be launched fails these tests, it does not skip them.

Screenshots of every page go to a test folder (its path is printed) and, when
``SHOAL_UI_SCREENSHOTS`` names a folder, there too. The page render times of the 50-model test
go to ``timings.json`` beside them and to ``SHOAL_UI_TIMINGS`` when set. With
``SHOAL_UI_DOCS_IMAGES`` naming a folder (``docs/images``), the overview and model tests run
longer traffic and write the README's ``dashboard-overview.png`` and ``dashboard-model.png``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e.models import IDENTITY, custom, sklearn_iris, write
from e2e.process import ShoalProcess
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

import shoal

from .conftest import StartShoal, build_many_models, iris_body, iris_rows

CHROMIUM = os.environ.get("SHOAL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Pages refresh every 2 s: a change shows within a couple of refreshes.
REFRESH = 12_000
TOKEN = "s3cret-admin-token"


# -- the browser, pages and artifacts -----------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One browser for this module: Playwright's sync API keeps an event loop running in the
    thread while it is open, which no other module's ``asyncio.run`` may meet."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: install Debian's chromium (apt-get install -y "
                    "chromium; ./dev test does) or set SHOAL_CHROMIUM", pytrace=False)
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except PlaywrightError as exc:
            pytest.fail(f"cannot launch {CHROMIUM}: {exc}", pytrace=False)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage); a script error in it fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(REFRESH)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"script errors in the page: {errors}"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ui-artifacts")
    print(f"\ndashboard screenshots and timings: {folder}")
    return folder


Shoot = Callable[..., Path]


@pytest.fixture
def shoot(artifacts: Path) -> Shoot:
    """``shoot(page, name)``: a full-page screenshot, in the artifacts (and SHOAL_UI_SCREENSHOTS)."""

    def take(tab: Page, name: str, **options: Any) -> Path:
        path = artifacts / f"{name}.png"
        options.setdefault("full_page", True)
        tab.screenshot(path=str(path), **options)
        extra = os.environ.get("SHOAL_UI_SCREENSHOTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(extra) / path.name)
        return path

    return take


def docs_images() -> Path | None:
    folder = os.environ.get("SHOAL_UI_DOCS_IMAGES")
    return Path(folder) if folder else None


def open_page(tab: Page, url: str) -> None:
    """Navigate and wait until the page has drawn its first data (an error answer, like a
    404, does not count: see ``open_failing_page``)."""
    tab.goto(url)
    tab.wait_for_selector("body[data-ready='1']")


def open_failing_page(tab: Page, url: str) -> None:
    """Navigate to a page whose data is an error (a 404): wait until it shows it."""
    tab.goto(url)
    tab.wait_for_selector("body[data-failed='1']")
    assert tab.evaluate("document.body.dataset.ready") is None, "an error answer marked the page ready"


# -- the server side --------------------------------------------------------------------------


def api(server: ShoalProcess, path: str) -> Any:
    response = httpx.get(f"{server.url}{path}", timeout=30)
    response.raise_for_status()
    return response.json()


def index(server: ShoalProcess) -> dict[str, list[str]]:
    """Model -> the states of its versions, from the repository index."""
    found: dict[str, list[str]] = {}
    for entry in httpx.post(f"{server.url}/v2/repository/index", timeout=30).json():
        found.setdefault(entry["name"], []).append(entry.get("state", ""))
    return found


def infer(server: ShoalProcess, name: str, body: dict[str, Any] | None = None,
          path: str | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}{path or f'/v2/models/{name}/infer'}",
                      json=body or iris_body(), timeout=30)


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@contextmanager
def traffic(server: ShoalProcess) -> Iterator[None]:
    """Requests to most of the repository's models in the background while the block runs
    (a rate that swells and ebbs, so the charts have a shape)."""
    stop = threading.Event()
    boom = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}

    def run() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                i += 1
                client.post("/v2/models/iris/infer", json=iris_body(1 + i % 3))
                client.post("/v2/models/canary/infer", json=iris_body())
                client.post("/v2/models/ab/infer",
                            json={**iris_body(), "parameters": {"route": "bandit" if i % 2 else "-"}})
                if i % 3 == 0:
                    client.post("/v2/models/logged/infer", json=iris_body())
                if i % 4 == 0:
                    client.post("/v2/models/boom/infer", json=boom)  # fails: a 500
                stop.wait(0.01 + 0.03 * (1 + math.sin(time.monotonic() / 4)))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(30)


def number(text: str) -> float:
    return float(text.replace(",", "").split()[0])


# -- the overview ------------------------------------------------------------------------------


def test_overview_shows_every_model_as_the_api_does(ui_server: ShoalProcess, page: Page,
                                                    shoot: Shoot) -> None:
    docs = docs_images()
    with traffic(ui_server):
        if docs:
            time.sleep(45)  # the README's picture: charts with some history
        open_page(page, f"{ui_server.url}/ui")
        overview = api(ui_server, "/ui/api/overview")
        rows = page.locator("#models tbody tr")
        expect(rows).to_have_count(len(overview["models"]))
        for model in overview["models"]:
            row = page.locator(f"#models tr[data-name='{model['name']}']")
            expect(row.locator("td.state .badge")).to_have_text(model["state"])
            expect(row.locator("td.versions")).to_have_text(", ".join(model["versions"]) or "–")
            expect(row.locator("td.runtime")).to_have_text(model["runtime"] or "–")
            link = row.locator("a.model-link")
            expect(link).to_have_text(model["name"])
            kind = "graphs" if model["kind"] == "graph" else "models"
            expect(link).to_have_attribute("href", f"/ui/{kind}/{model['name']}")
            if model["state"] != "READY":
                expect(row.locator(".reason")).to_have_text(model["reason"])
        assert {m["name"] for m in overview["models"]} >= {"iris", "canary", "logged", "boom",
                                                            "broken", "ab"}
        expect(page.locator("tr[data-name='broken'] td.state .badge")).to_have_text("UNAVAILABLE")
        expect(page.locator("tr[data-name='canary'] a.rollout-link")).to_have_attribute(
            "href", "/ui/rollouts/canary")
        expect(page.locator("tr[data-name='logged'] td.name")).to_contain_text("payload log")
        expect(page.locator("#summary")).to_contain_text(f"build {shoal.__version__}")
        expect(page.locator("#server")).to_contain_text(f"pid {overview['server']['pid']}")
        # Live: with requests coming, the request rate shows above zero, boom's errors at 100 %.
        page.wait_for_function(
            "() => parseFloat(document.querySelector(\"tr[data-name='iris'] td.rps .value\")"
            ".textContent) > 0", timeout=REFRESH)
        expect(page.locator("tr[data-name='boom'] td.errors .value")).to_have_text(
            "100 %", timeout=REFRESH)
        assert page.locator("#models canvas").count() >= 3 * len(overview["models"])
        page.wait_for_timeout(2500)  # one more refresh, so the sparklines have the traffic
        shoot(page, "overview")
        if docs:
            docs.mkdir(parents=True, exist_ok=True)
            page.set_viewport_size({"width": 1200, "height": 900})
            page.wait_for_timeout(500)
            height = page.evaluate("document.querySelector('main .card').getBoundingClientRect().bottom") + 16
            page.screenshot(path=str(docs / "dashboard-overview.png"),
                            clip={"x": 0, "y": 0, "width": 1200, "height": height})
    expect(page.locator("#banner")).to_be_hidden()


# -- the model page -----------------------------------------------------------------------------


def test_model_page_shows_metadata_statistics_and_tries_a_request(
        ui_server: ShoalProcess, page: Page, shoot: Shoot) -> None:
    open_page(page, f"{ui_server.url}/ui/models/iris")
    data = api(ui_server, "/ui/api/models/iris")
    expect(page.locator("#title .badge").last).to_have_text(data["state"])
    for version in data["versions"]:
        row = page.locator(f"#versions tr[data-version='{version['version']}']")
        expect(row.locator(".badge")).to_have_text(version["state"])
    for tensor in data["metadata"]["inputs"]:
        row = page.locator("table.inputs tbody tr", has_text=tensor["name"])
        expect(row).to_contain_text(tensor["datatype"])
        expect(row).to_contain_text(f"[{', '.join(str(d) for d in tensor['shape'])}]")
    for tensor in data["metadata"]["outputs"]:
        expect(page.locator("table.outputs")).to_contain_text(tensor["name"])
    expect(page.locator("#config")).to_contain_text(f"batches of up to {data['config']['max_batch_size']}")

    # Statistics: the count the page shows rises with requests, to what the API says.
    count = page.locator("#stats-table tr[data-version='2'] .inference-count")
    before = int(count.inner_text())
    for _ in range(5):
        assert infer(ui_server, "iris", path="/v2/models/iris/versions/2/infer").status_code == 200
    expect(count).to_have_text(str(before + 5), timeout=REFRESH)
    after = api(ui_server, "/ui/api/models/iris")["statistics"]
    assert next(e for e in after if e["version"] == "2")["inference_count"] == before + 5

    # Try it: the form is built from the metadata (one row, zeros), and answers as the API does.
    form = page.locator("#try-form textarea[data-input='input-0']")
    expect(form).to_have_value("[0,0,0,0]")
    expect(page.locator("#try-form input.shape")).to_have_value("1,4")
    # A bad request shows the API's error message.
    form.fill("[1, 2]")
    page.click("#send")
    expect(page.locator("#try-result")).to_have_class("message error")
    expect(page.locator("#try-result")).not_to_be_empty()
    row = iris_rows(1)[0].tolist()
    form.fill(json.dumps(row))
    page.click("#send")
    answer = page.locator("#answer")
    expect(answer).to_be_visible()
    shown = json.loads(answer.inner_text())
    expected = infer(ui_server, "iris", {"inputs": [
        {"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": row}]}).json()
    assert shown["model_name"] == "iris"
    assert {o["name"]: o["data"] for o in shown["outputs"]} == {
        o["name"]: o["data"] for o in expected["outputs"]}
    expect(page.locator("#latency")).to_contain_text("answered in")
    expect(page.locator("#latency")).to_contain_text("HTTP 200")

    # Explain: the model has an explainer; the PNG is shown.
    assert data["explainer"] is True
    page.click("#explain")
    image = page.locator("#explanation-image")
    expect(image).to_be_visible(timeout=60_000)
    page.wait_for_function("() => document.querySelector('#explanation-image').naturalWidth > 0")
    shoot(page, "model")
    docs = docs_images()
    if docs:
        docs.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1200, "height": 900})
        page.wait_for_timeout(500)
        page.screenshot(path=str(docs / "dashboard-model.png"), full_page=True)


def test_model_page_without_explainer_hides_the_button_and_links_the_rollout(
        ui_server: ShoalProcess, page: Page) -> None:
    open_page(page, f"{ui_server.url}/ui/models/canary")
    expect(page.locator("#explain")).to_be_hidden()
    expect(page.locator("#rollout-link")).to_have_attribute("href", "/ui/rollouts/canary")
    open_page(page, f"{ui_server.url}/ui/models/ab")
    expect(page.locator("#graph-link")).to_have_attribute("href", "/ui/graphs/ab")
    open_page(page, f"{ui_server.url}/ui/models/broken")
    expect(page.locator("#facts")).to_contain_text(
        api(ui_server, "/ui/api/models/broken")["reason"])
    open_failing_page(page, f"{ui_server.url}/ui/models/no-such-model")
    expect(page.locator("#problem")).to_be_visible()
    expect(page.locator("#problem")).to_contain_text("no-such-model")


def test_payload_records_newest_first(ui_server: ShoalProcess, page: Page, shoot: Shoot) -> None:
    ids = [f"ui-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for request_id in ids:
        assert infer(ui_server, "logged", {**iris_body(), "id": request_id}).status_code == 200
    open_page(page, f"{ui_server.url}/ui/models/logged")
    records = page.locator("#payload details.record")
    expect(records.first).to_contain_text(ids[-1], timeout=REFRESH)
    recent = api(ui_server, "/ui/api/models/logged")["payload"]["recent"]
    assert recent[0]["id"] == ids[-1]
    expect(records).to_have_count(len(recent))
    summaries = [records.nth(i).locator("summary").inner_text() for i in range(4)]
    assert [ids[-1] in s for s in summaries] == [True, True, False, False]
    assert [ids[0] in s for s in summaries] == [False, False, True, True]
    # Collapsed until opened; opened, it shows the data.
    body = records.first.locator("pre")
    expect(body).to_be_hidden()
    records.first.locator("summary").click()
    expect(body).to_be_visible()
    assert str(round(float(iris_rows(1)[0][0]), 1)) in body.inner_text() or "outputs" in body.inner_text()
    expect(page.locator("#payload-sink")).to_contain_text("file://")
    shoot(page, "model-payload")


def test_a_payload_record_too_large_to_show_says_how_large(ui_server: ShoalProcess,
                                                           page: Page) -> None:
    rows = 5000  # about 90 KiB of JSON: over the 64 KiB the model page shows
    big = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [rows, 4],
                       "data": [5.1, 3.5, 1.4, 0.2] * rows}]}
    assert infer(ui_server, "logged", big).status_code == 200
    # The newest records are this request's and its answer's (compared by place: a record
    # kept without its data may get a new id each time it is listed).
    newest = api(ui_server, "/ui/api/models/logged")["payload"]["recent"][:2]
    assert [e["type"].rsplit(".", 1)[1] for e in newest] == ["request", "response"]
    assert newest[0]["data"] is None and newest[0]["omitted_bytes"] > 64 * 1024
    open_page(page, f"{ui_server.url}/ui/models/logged")
    records = page.locator("#payload details.record")
    for i, event in enumerate(newest):
        record = records.nth(i)
        expect(record.locator("summary .badge")).to_have_text(event["type"].rsplit(".", 1)[1])
        body = record.locator("pre")  # its text, opened or not
        if event.get("omitted_bytes") is not None:
            expect(body).to_have_text(f"{event['omitted_bytes']:,} bytes, not shown")
        else:  # shown as the API has it (the answer, when it is small)
            expect(body).to_contain_text("outputs")
    expect(records.first.locator("pre")).not_to_contain_text("null")
    records.first.locator("summary").click()
    expect(page.locator("#payload details.record[open] pre").first).to_contain_text("bytes, not shown")


def test_payload_records_on_a_server_with_an_admin_token_need_it(
        ui_repository: Path, start_shoal: StartShoal, page: Page, shoot: Shoot) -> None:
    server = start_shoal(ui_repository, "--admin-token", TOKEN)
    request_id = f"guarded-{uuid.uuid4().hex[:12]}"
    assert infer(server, "logged", {**iris_body(), "id": request_id}).status_code == 200
    # The API: no records without the token, the records with it.
    payload = api(server, "/ui/api/models/logged")["payload"]
    assert payload["recent"] is None and payload["needs_token"] is True
    guarded = httpx.get(f"{server.url}/ui/api/models/logged",
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()["payload"]
    assert any(e["id"] == request_id for e in guarded["recent"])

    sent: list[str | None] = []
    page.on("request", lambda r: sent.append(r.headers.get("authorization"))
            if "/ui/api/models/logged" in r.url else None)
    open_page(page, f"{server.url}/ui/models/logged")
    note = page.locator("#payload-needs-token")
    expect(note).to_be_visible()
    expect(note).to_contain_text("admin token")
    expect(page.locator("#payload details.record")).to_have_count(0)
    assert sent and all(h is None for h in sent)  # no token known: none sent
    shoot(page, "model-payload-needs-token")
    page.get_by_role("button", name="Show records (admin token)").click()
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    # Cancelled: nothing changes.
    dialog.locator("#token-cancel").click()
    expect(dialog).to_have_count(0)
    expect(note).to_be_visible()
    # A wrong token: still no records, and the note says the token was refused.
    page.click("#show-records")
    dialog.locator("input").fill("not-the-token")
    page.click("#token-ok")
    expect(note).to_contain_text("refused", timeout=REFRESH)
    expect(page.locator("#payload details.record")).to_have_count(0)
    # The token: the page fetches the model again with it and shows the records.
    page.click("#show-records")
    expect(dialog).to_contain_text("refused")
    dialog.locator("input").fill(TOKEN)
    page.click("#token-ok")
    records = page.locator("#payload details.record")
    expect(records.first).to_contain_text(request_id, timeout=REFRESH)
    expect(note).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('shoal-admin-token')") == TOKEN
    assert sent[-1] == f"Bearer {TOKEN}"
    # Kept for the tab: the next refreshes send it too, and the records stay.
    count = len(sent)
    page.wait_for_timeout(4500)  # two refreshes
    assert len(sent) > count and all(h == f"Bearer {TOKEN}" for h in sent[count:])
    expect(records.first).to_contain_text(request_id)


# -- the graph page -----------------------------------------------------------------------------


def test_graph_page_draws_every_node_and_counts_routes(ui_server: ShoalProcess, page: Page,
                                                       shoot: Shoot) -> None:
    open_page(page, f"{ui_server.url}/ui/graphs/ab")
    graph = api(ui_server, "/ui/api/graphs/ab")
    for node in graph["nodes"]:
        box = page.locator(f"#graph-svg g.graph-node[data-node='{node['name']}']")
        expect(box).to_have_count(1)
        expect(box).to_contain_text(node["name"])
        expect(box).to_contain_text(node["kind"])
    expect(page.locator("#graph-svg path.edge")).to_have_count(len(graph["edges"]))
    labels = page.evaluate(
        "() => [...document.querySelectorAll('#graph-svg g.edge-label title')].map(t => t.textContent)")
    assert sorted(labels) == sorted(e["label"] for e in graph["edges"] if e["label"])
    expect(page.locator("#graph-svg rect.root")).to_have_count(1)

    routers = graph["routers"]["routers"]
    for name, router in routers.items():
        card = page.locator(f"#routers .router[data-node='{name}']")
        expect(card.locator("tbody tr")).to_have_count(len(router["branches"]))
    # Requests through the bandit: its routed counts rise; feedback moves its pulls and reward.
    routed = page.locator("#routers .router[data-node='bandit'] td.routed")

    def shown_total() -> float:
        return sum(number(t) for t in routed.all_inner_texts())

    before = shown_total()
    answers = [infer(ui_server, "ab", {**iris_body(), "parameters": {"route": "bandit"}})
               for _ in range(6)]
    assert all(a.status_code == 200 for a in answers)
    feedback = httpx.post(f"{ui_server.url}/v2/models/ab/feedback",
                          json={"id": answers[0].json()["id"], "reward": 1.0}, timeout=30)
    assert feedback.status_code == 200, feedback.text
    page.wait_for_function(
        "(total) => [...document.querySelectorAll(\"#routers .router[data-node='bandit'] td.routed\")]"
        ".reduce((n, td) => n + parseFloat(td.textContent.replace(/,/g, '')), 0) >= total",
        arg=before + 6, timeout=REFRESH)
    arms = api(ui_server, "/ui/api/graphs/ab")["routers"]["routers"]["bandit"]["arms"]
    for arm, figures in arms.items():
        row = page.locator(f"#routers .router[data-node='bandit'] tr[data-branch='{arm}']")
        expect(row.locator("td.pulls")).to_have_text(f"{figures['pulls']:g}", timeout=REFRESH)
        assert number(row.locator("td.mean").inner_text()) == pytest.approx(figures["mean"], abs=5e-4)
    assert sum(a["pulls"] for a in arms.values()) >= 1
    assert page.locator("#charts .chart").count() == 4
    shoot(page, "graph")


# -- repository actions, the admin token --------------------------------------------------------


def test_load_and_unload_from_the_model_page(ui_repository: Path, start_shoal: StartShoal,
                                             page: Page) -> None:
    server = start_shoal(ui_repository)
    open_page(page, f"{server.url}/ui/models/iris")
    assert "READY" in index(server)["iris"]
    page.click("#unload")
    expect(page.locator("#action-result")).to_have_text("Unload: done")
    assert "READY" not in index(server).get("iris", [])
    expect(page.locator("#title .badge").last).not_to_have_text("READY", timeout=REFRESH)
    page.click("#load")
    expect(page.locator("#action-result")).to_have_text("Load: done")
    assert "READY" in index(server)["iris"]
    expect(page.locator("#title .badge").last).to_have_text("READY", timeout=REFRESH)
    page.click("#reload")
    expect(page.locator("#action-result")).to_have_text("Reload: done")
    assert index(server)["iris"] == ["READY", "READY"]


def test_admin_token_is_asked_for_on_401_and_kept_for_the_tab(
        ui_repository: Path, start_shoal: StartShoal, page: Page, shoot: Shoot) -> None:
    server = start_shoal(ui_repository, "--admin-token", TOKEN)
    open_page(page, f"{server.url}/ui/models/iris")
    page.click("#unload")
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    shoot(page, "token-dialog", full_page=False)
    # A wrong token: refused, asked again.
    dialog.locator("input").fill("not-the-token")
    page.click("#token-ok")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("refused")
    dialog.locator("input").fill(TOKEN)
    page.click("#token-ok")
    expect(page.locator("#action-result")).to_have_text("Unload: done")
    expect(dialog).to_have_count(0)
    assert "READY" not in index(server).get("iris", [])
    assert page.evaluate("sessionStorage.getItem('shoal-admin-token')") == TOKEN
    # Kept for the tab: the next action does not ask.
    page.click("#load")
    expect(page.locator("#action-result")).to_have_text("Load: done")
    expect(dialog).to_have_count(0)
    assert "READY" in index(server)["iris"]
    # Cancelling the dialog: the action fails with the API's message.
    page.evaluate("sessionStorage.removeItem('shoal-admin-token')")
    page.click("#unload")
    expect(dialog).to_be_visible()
    dialog.locator("button", has_text="Cancel").click()
    expect(page.locator("#action-result")).to_contain_text("Unload failed")
    assert "READY" in index(server)["iris"]


def test_a_token_that_cannot_be_sent_is_refused_in_the_dialog_and_forgotten(
        tmp_path: Path, start_shoal: StartShoal, page: Page) -> None:
    repository = tmp_path / "repository"
    custom(repository / "ok", IDENTITY)
    server = start_shoal(repository, "--admin-token", TOKEN)
    open_page(page, f"{server.url}/ui/models/ok")
    dialog = page.locator("#token-dialog")
    problem = dialog.locator("#token-problem")
    # Typed in the dialog: a token an HTTP header cannot carry, or none, is refused there.
    page.click("#unload")
    expect(dialog).to_be_visible()
    for wrong, says in (("пароль", "printable ASCII"), ("tökén", "printable ASCII"),
                        ("   ", "Enter the admin token")):
        dialog.locator("input").fill(wrong)
        page.click("#token-ok")
        expect(dialog).to_be_visible()
        expect(problem).to_be_visible()
        expect(problem).to_contain_text(says)
        assert page.evaluate("sessionStorage.getItem('shoal-admin-token')") is None
    dialog.locator("input").fill(TOKEN)
    page.click("#token-ok")
    expect(page.locator("#action-result")).to_have_text("Unload: done")
    assert "READY" not in index(server).get("ok", [])

    # One kept for the tab that cannot go in a header (set before the dialog checked, say):
    # the refreshes go on without it, an action forgets it and asks again.
    page.evaluate("sessionStorage.setItem('shoal-admin-token', 'токен')")
    page.wait_for_timeout(2500)  # a refresh or so
    expect(page.locator("#banner")).to_be_hidden()
    page.click("#load")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("cannot be sent")
    assert page.evaluate("sessionStorage.getItem('shoal-admin-token')") is None
    dialog.locator("input").fill(TOKEN)
    page.click("#token-ok")
    expect(page.locator("#action-result")).to_have_text("Load: done")
    assert page.evaluate("sessionStorage.getItem('shoal-admin-token')") == TOKEN
    assert "READY" in index(server)["ok"]
    expect(page.locator("#banner")).to_be_hidden()


# -- refreshing: one request at a time, never an older answer over a newer one ------------------

#: Wraps the page's fetch: the answers to /ui/api/ reach the page window.shoalApiDelay ms late
#: (the server answered at once: an old answer), and the requests are counted (started, in
#: flight at once at most).
SLOW_API = """
(() => {
  const real = window.fetch.bind(window);
  const log = window.shoalApi = {started: 0, inflight: 0, most: 0};
  window.shoalApiDelay = 0;
  window.fetch = async (input, init) => {
    const url = typeof input === "string" ? input : input.url;
    if (!url.includes("/ui/api/")) return real(input, init);
    const delay = window.shoalApiDelay;
    log.started++; log.inflight++; log.most = Math.max(log.most, log.inflight);
    try {
      const response = await real(input, init);
      await new Promise((resolve) => setTimeout(resolve, delay));
      return response;
    } finally {
      log.inflight--;
    }
  };
})();
"""

CLICK_UNTIL_DONE = """async ([selector, times]) => {
  const button = document.querySelector(selector);
  for (let i = 0; i < times; i++) {
    button.click();
    await new Promise((resolve) => setTimeout(resolve, 10));
    while (button.disabled) await new Promise((resolve) => setTimeout(resolve, 10));
  }
}"""


def test_refreshes_are_one_chain_and_a_stale_answer_is_not_drawn(
        tmp_path: Path, start_shoal: StartShoal, page: Page) -> None:
    repository = tmp_path / "repository"
    custom(repository / "ok", IDENTITY)
    custom(repository / "other", IDENTITY)
    server = start_shoal(repository)
    page.add_init_script(SLOW_API)
    open_page(page, f"{server.url}/ui/models/ok")
    log = "window.shoalApi"

    # Slow answers (1 s) and an action after another: each asks for a refresh, but only one
    # request is ever in flight, and the refreshes asked meanwhile are one more, not one each.
    page.evaluate("window.shoalApiDelay = 1000")
    started = time.monotonic()
    before = page.evaluate(f"{log}.started")
    page.evaluate(CLICK_UNTIL_DONE, ["#load", 12])
    expect(page.locator("#action-result")).to_have_text("Load: done")
    page.wait_for_timeout(3000)
    elapsed = time.monotonic() - started
    made = page.evaluate(f"{log}.started") - before
    assert page.evaluate(f"{log}.most") == 1, "two refreshes were in flight at once"
    # One at a time, each at least 1 s: no more than the time allows (12 actions would be 12).
    assert 1 <= made <= elapsed / 1.0 + 1, f"{made} requests in {elapsed:.1f} s"
    # Left alone: one every 2 s plus the request's own second, not several chains.
    before = page.evaluate(f"{log}.started")
    page.wait_for_timeout(6000)
    assert page.evaluate(f"{log}.started") - before <= 3

    # A refresh in flight when an action ends (sent before it): its answer (READY) is not
    # drawn over the one after the action, even when it comes last.
    page.evaluate("window.shoalApiDelay = 0")
    page.wait_for_timeout(2500)
    expect(page.locator("#title .badge").last).to_have_text("READY")
    page.evaluate("""() => {
      window.shoalTitles = [];
      new MutationObserver(() => {
        const badges = document.querySelectorAll('#title .badge');
        if (badges.length) window.shoalTitles.push(badges[badges.length - 1].textContent);
      }).observe(document.querySelector('#title'), {childList: true, subtree: true});
    }""")
    page.evaluate("window.shoalApiDelay = 2500")
    waiting = page.evaluate(f"{log}.started")
    page.wait_for_function(f"(n) => {log}.started > n && {log}.inflight === 1", arg=waiting)
    page.evaluate("window.shoalApiDelay = 50")
    page.click("#unload")
    expect(page.locator("#action-result")).to_have_text("Unload: done")
    expect(page.locator("#title .badge").last).to_have_text("UNAVAILABLE", timeout=REFRESH)
    page.wait_for_timeout(3000)  # the slow answer has come by now
    titles = page.evaluate("window.shoalTitles")
    assert titles and "READY" not in titles, titles
    assert page.evaluate(f"{log}.most") == 1


# -- the rollout page ---------------------------------------------------------------------------


def test_rollout_page_sets_the_split_and_promotes(ui_repository: Path, start_shoal: StartShoal,
                                                  page: Page, shoot: Shoot) -> None:
    server = start_shoal(ui_repository)
    rollout = f"{server.url}/v2/models/canary/rollout"
    open_page(page, f"{server.url}/ui/rollouts/canary")
    status = httpx.get(rollout).json()
    assert status["state"] == "progressing"
    expect(page.locator("#title .badge")).to_have_text(status["state"])
    for role in ("stable", "canary", "shadow"):
        expect(page.locator(f"#variants-table tr[data-role='{role}'] td.variant")).to_have_text(
            f"version {status['variants'][role]['variant']}")
    expect(page.locator("#split-bar .canary")).to_contain_text("50%")
    expect(page.locator("#percent")).to_have_value("50")

    # Requests: the page's per-variant counts follow the API's.
    for _ in range(20):
        assert infer(server, "canary").status_code == 200
    wait_for(lambda: httpx.get(rollout).json()["variants"]["shadow"]["requests"] >= 20)
    status = httpx.get(rollout).json()
    for role in ("stable", "canary"):
        expect(page.locator(f"#variants-table tr[data-role='{role}'] td.requests")).to_have_text(
            str(status["variants"][role]["requests"]), timeout=REFRESH)
    assert status["variants"]["stable"]["requests"] + status["variants"]["canary"]["requests"] == 20
    expect(page.locator("#shadow-table tr[data-output]").first).to_be_visible(timeout=REFRESH)

    # A refused change shows the API's message and changes nothing.
    page.fill("#percent", "150")
    page.click("#set-percent")
    expect(page.locator("#action-result")).to_contain_text("canary.percent")
    assert httpx.get(rollout).json()["canary_percent"] == 50.0
    # Set the percentage.
    page.fill("#percent", "20")
    page.click("#set-percent")
    expect(page.locator("#action-result")).to_have_text("Set canary %: done")
    assert httpx.get(rollout).json()["canary_percent"] == 20.0
    expect(page.locator("#split-bar .canary")).to_contain_text("20%", timeout=REFRESH)
    shoot(page, "rollout")
    # Pause and resume.
    page.click("#pause")
    expect(page.locator("#action-result")).to_have_text("Pause: done")
    assert httpx.get(rollout).json()["state"] == "paused"
    expect(page.locator("#title .badge")).to_have_text("paused", timeout=REFRESH)
    page.click("#resume")
    expect(page.locator("#action-result")).to_have_text("Resume: done")
    assert httpx.get(rollout).json()["state"] == "progressing"
    # Promote: the canary becomes the stable variant.
    page.click("#promote")
    expect(page.locator("#action-result")).to_have_text("Promote: done")
    status = httpx.get(rollout).json()
    assert status["state"] == "promoted"
    assert status["variants"]["stable"]["variant"] == "2"
    expect(page.locator("#title .badge")).to_have_text("promoted", timeout=REFRESH)
    expect(page.locator("#variants-table tr[data-role='stable'] td.variant")).to_have_text(
        "version 2", timeout=REFRESH)
    expect(page.locator("#history-table")).to_contain_text("promote")
    # Roll back: undone.
    page.click("#rollback")
    expect(page.locator("#action-result")).to_have_text("Roll back: done")
    assert httpx.get(rollout).json()["variants"]["stable"]["variant"] == "1"


PROGRESSIVE = {"stable": "1", "canary": {
    "variant": "2", "sticky": 'headers."x-user-id"',
    "analysis": {"steps": [10, 50, 100], "interval": "1h", "max_error_rate": 0.05,
                 "max_latency_ratio": 2, "min_requests": 7}}}


def test_setting_the_percent_of_a_progressive_paused_rollout_asks_first(
        tmp_path: Path, start_shoal: StartShoal, page: Page) -> None:
    repository = tmp_path / "repository"
    for version in ("1", "2"):
        sklearn_iris(repository / "canary" / version)
    write(repository / "canary" / "model.yaml", yaml.safe_dump({"version_policy": "all"}))
    server = start_shoal(repository)
    rollout = f"{server.url}/v2/models/canary/rollout"
    plain = {"stable": "1", "canary": {"variant": "2", "percent": 50}}
    assert httpx.put(rollout, json=plain, timeout=30).status_code == 200
    open_page(page, f"{server.url}/ui/rollouts/canary")
    expect(page.locator("#split-bar .canary")).to_contain_text("50%")

    # Changed behind the page's back (the CLI): progressive steps with guards, then paused.
    assert httpx.put(rollout, json=PROGRESSIVE, timeout=30).status_code == 200
    assert httpx.post(f"{rollout}/pause", timeout=30).status_code == 200
    before = httpx.get(rollout, timeout=30).json()
    assert before["state"] == "paused" and before["spec"]["canary"]["analysis"]
    puts: list[str] = []
    page.on("request", lambda r: puts.append(r.url) if r.method == "PUT" else None)
    messages: list[str] = []

    def answer(accept: bool) -> Callable[[Any], None]:
        def handle(dialog: Any) -> None:
            messages.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()
        return handle

    # Cancelled: no request, nothing changes.
    page.once("dialog", answer(False))
    page.fill("#percent", "30")
    page.click("#set-percent")
    expect(page.locator("#action-result")).to_contain_text("cancelled")
    assert len(messages) == 1
    for words in ("30%", "ends the progressive steps", "10%, 50%, 100%", "max_error_rate 0.05",
                  "max_latency_ratio 2", "min_requests 7", "a paused rollout resumes"):
        assert words in messages[0], (words, messages[0])
    page.wait_for_timeout(500)
    assert puts == []
    after = httpx.get(rollout, timeout=30).json()
    assert after["spec"] == before["spec"] and after["state"] == "paused"
    assert after["revision"] == before["revision"]

    # Accepted: the spec as the server had it (sticky kept), at 30 %, without the steps.
    page.once("dialog", answer(True))
    page.fill("#percent", "30")
    page.click("#set-percent")
    expect(page.locator("#action-result")).to_have_text("Set canary %: done")
    assert len(messages) == 2 and len(puts) == 1
    status = httpx.get(rollout, timeout=30).json()
    assert status["state"] == "progressing" and status["canary_percent"] == 30.0
    assert status["spec"]["canary"] == {"variant": "2", "percent": 30.0,
                                        "sticky": PROGRESSIVE["canary"]["sticky"]}
    assert status["spec"]["stable"] == "1"
    expect(page.locator("#split-bar .canary")).to_contain_text("30%", timeout=REFRESH)

    # Nothing to warn about (no steps, not paused): no question asked.
    page.fill("#percent", "40")
    page.click("#set-percent")
    expect(page.locator("#action-result")).to_have_text("Set canary %: done")
    assert len(messages) == 2
    assert httpx.get(rollout, timeout=30).json()["canary_percent"] == 40.0


def test_rollout_page_for_a_model_without_one(ui_server: ShoalProcess, page: Page) -> None:
    open_page(page, f"{ui_server.url}/ui/rollouts/iris")
    expect(page.locator("#title")).to_contain_text("no rollout")
    expect(page.locator("#actions-card")).to_be_hidden()


# -- escaping, and a server that goes away ------------------------------------------------------

EVIL = '<img src=x onerror="window.pwned=1"><b id="injected">bold</b>'
FAILS_TO_LOAD = f"""
    from shoal import Model

    class Evil(Model):
        def load(self):
            raise RuntimeError({EVIL!r})

        def predict(self, request):
            return request.as_numpy()
"""


def test_api_text_is_escaped_and_a_lost_server_shows_a_banner(
        tmp_path: Path, start_shoal: StartShoal, page: Page, shoot: Shoot) -> None:
    repository = tmp_path / "repository"
    custom(repository / "evil", FAILS_TO_LOAD)
    custom(repository / "ok", IDENTITY)  # a server with no model ready is not ready
    server = start_shoal(repository)
    for path in ("/ui", "/ui/models/evil"):
        open_page(page, f"{server.url}{path}")
        expect(page.locator("main")).to_contain_text(EVIL)
        assert page.locator("#injected").count() == 0
        assert page.evaluate("window.pwned") is None
    shoot(page, "model-unavailable")
    open_page(page, f"{server.url}/ui")
    server.stop()
    banner = page.locator("#banner")
    expect(banner).to_be_visible(timeout=REFRESH)
    expect(banner).to_contain_text("unreachable")
    expect(page.locator("#models tr[data-name='evil']")).to_be_visible()  # not a blank page
    shoot(page, "overview-unreachable", full_page=False)


# -- render times with 50 models ------------------------------------------------------------------

RUNS = 5


def many_models(root: Path) -> Path:
    """50 iris models, a graph over two of them and a rollout on another."""
    build_many_models(root, 50)
    write(root / "m01" / "model.yaml",
          yaml.safe_dump({"rollout": {"canary": {"variant": "m02", "percent": 10}}}))
    write(root / "split" / "graph.yaml", yaml.safe_dump({"nodes": {
        "root": {"kind": "splitter", "branches": [{"node": "a", "weight": 50},
                                                  {"node": "b", "weight": 50}]},
        "a": {"kind": "model", "model": "m00"},
        "b": {"kind": "model", "model": "m03"},
    }}))
    return root


#: What each page shows once its data is drawn (checked the moment it says it is ready).
DRAWN = {
    "overview": ("#models tbody tr[data-name]", 51),
    "model": ("#metadata table.inputs tbody tr", 1),
    "graph": ("#graph-svg g.graph-node", 3),
    "rollout": ("#variants-table tbody tr[data-role]", 2),
}


def test_every_page_renders_quickly_with_50_models(tmp_path: Path, start_shoal: StartShoal,
                                                   browser: Browser, artifacts: Path,
                                                   shoot: Shoot,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    server = start_shoal(many_models(tmp_path / "many"))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(50):
            assert client.post(f"/v2/models/m{i:02d}/infer", json=iris_body()).status_code == 200
        assert client.post("/v2/models/split/infer", json=iris_body()).status_code == 200
    assert len(api(server, "/ui/api/overview")["models"]) == 51
    pages = {"overview": "/ui", "model": "/ui/models/m00", "graph": "/ui/graphs/split",
             "rollout": "/ui/rollouts/m01"}
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    times: dict[str, list[float]] = {}
    try:
        tab = context.new_page()
        for name, path in pages.items():
            selector, least = DRAWN[name]
            for _ in range(RUNS):
                # Navigation start to the page's data drawn (the page marks it when it is, and
                # only then: not on an error answer).
                open_page(tab, f"{server.url}{path}")
                ready_ms, drawn, failed = tab.evaluate(
                    "(selector) => [window.shoalReadyMs,"
                    " document.querySelectorAll(selector).length,"
                    " !!document.querySelector('#problem:not(.hidden)')]",
                    selector)
                assert drawn >= least, f"{name}: ready with {drawn} of {selector} (at least {least})"
                assert not failed, f"{name}: ready, but showing a problem"
                times.setdefault(name, []).append(round(ready_ms, 1))
            if name == "overview":
                expect(tab.locator("#models tbody tr")).to_have_count(51)
                shoot(tab, "overview-50-models")
    finally:
        context.close()
    report = {
        "models": 51, "runs": RUNS, "browser": CHROMIUM,
        "ms": times,
        "median_ms": {k: statistics.median(v) for k, v in times.items()},
        "max_ms": {k: max(v) for k, v in times.items()},
    }
    (artifacts / "timings.json").write_text(json.dumps(report, indent=2))
    if os.environ.get("SHOAL_UI_TIMINGS"):
        Path(os.environ["SHOAL_UI_TIMINGS"]).write_text(json.dumps(report, indent=2))
    with capsys.disabled():  # on the console, even without -s
        print(f"\npage render times with 51 models, {RUNS} runs each (ms, navigation start to "
              f"data drawn, {CHROMIUM}):")
        for name, values in times.items():
            print(f"  {name:9} median {statistics.median(values):7.1f}  max {max(values):7.1f}"
                  f"  all {values}")
    # The target is 500 ms (reported in the benchmark README); a loaded CI machine gets room.
    for name, values in times.items():
        assert max(values) < 2000, f"{name} took {max(values)} ms to render"


def test_model_page_shows_an_autoscaled_models_replicas(tmp_path: Path, start_shoal: StartShoal,
                                                        page: Page, shoot: Shoot) -> None:
    custom(tmp_path / "scaled" / "1", IDENTITY, "")
    write(tmp_path / "scaled" / "model.yaml",
          "runtime: custom\nautoscaling: {min_replicas: 1, max_replicas: 3, target_concurrency: 2}\n")
    server = start_shoal(tmp_path)
    api = httpx.get(f"{server.url}/v2/models/scaled/replicas").json()["versions"][0]
    pid = api["replicas"][0]["pid"]
    open_page(page, f"{server.url}/ui/models/scaled")
    card = page.locator("#autoscaling-card")
    expect(card).to_be_visible()
    expect(page.locator("#autoscaling-facts")).to_contain_text("1–3 replicas, target 2 in flight each")
    expect(page.locator("#replicas table.replica-list tbody tr")).to_have_count(1)
    expect(page.locator("#replicas tbody td").first).to_have_text(str(pid))
    expect(page.locator("#replica-chart .chart")).to_have_count(1)
    expect(page.locator("#facts")).to_contain_text("1 worker process")
    shoot(page, "model-autoscaled")
    # A model that is not autoscaled has no such card.
    custom(tmp_path / "plain" / "1", IDENTITY, "")
    write(tmp_path / "plain" / "model.yaml", "runtime: custom\n")
    assert httpx.post(f"{server.url}/v2/repository/models/plain/load").status_code == 200
    open_page(page, f"{server.url}/ui/models/plain")
    expect(page.locator("#autoscaling-card")).to_be_hidden()
