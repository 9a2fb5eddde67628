/* Model page (/ui/models/{name}): metadata, try it, explain, live charts, repository actions,
   statistics and recent payload records. */
"use strict";
(() => {
  const {el, fill, $, links, badge, num, ms, when} = UI;
  const name = UI.pageName();
  const enc = encodeURIComponent(name);
  document.title = `${name} · Shoal`;
  fill($("#title"), name);

  const updateCharts = UI.liveCharts($("#charts"));
  let formKey = null;       // the inputs the "try it" form was built for
  let payloadKey = null;    // the records the payload panel shows
  let inputs = [];          // [{spec, shape: <input>, data: <textarea>}]

  /** 0 worker processes: the model runs in the server's own process. */
  const replicas = (n) => (n > 0 ? `${n} worker process${n === 1 ? "" : "es"}` : "in the server process");
  /** The rollout status says "none" for a model without one. */
  const hasRollout = (r) => !!r && !!r.state && r.state !== "none";

  // ---- header, versions, config ----------------------------------------------------------

  function renderHeader(data) {
    fill($("#title"), data.name, " ", data.kind === "graph" ? badge("graph", "kind") : null,
         " ", badge(data.state));
    const facts = [];
    if (data.reason && data.state !== "READY") facts.push(el("span", {class: "message error"}, data.reason));
    facts.push(el("span", {}, `runtime ${data.runtime || "–"}`));
    if (UI.isNum(data.replicas) && data.kind !== "graph") facts.push(el("span", {}, replicas(data.replicas)));
    if (data.kind === "graph") facts.push(el("span", {}, el("a", {href: links.graph(name), id: "graph-link"}, "graph diagram and routers")));
    if (hasRollout(data.rollout)) {
      const state = data.rollout.state ? ` (${data.rollout.state})` : "";
      facts.push(el("span", {}, el("a", {href: links.rollout(name), id: "rollout-link"}, `rollout${state}`)));
    }
    fill($("#facts"), facts);
  }

  function renderVersions(versions) {
    UI.update($("#versions"), versions, () => versionTable(versions));
  }

  function versionTable(versions) {
    if (!versions || !versions.length) return el("p", {class: "empty"}, "No versions.");
    return el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "Version"), el("th", {}, "State"), el("th", {}, "Reason"))),
      el("tbody", {}, versions.map((v) => el("tr", {dataset: {version: v.version}},
        el("td", {}, v.version), el("td", {}, badge(v.state)), el("td", {class: "small"}, v.reason || "")))));
  }

  function renderConfig(config) {
    UI.update($("#config"), config, () => configLine(config));
  }

  function configLine(config) {
    if (!config) return null;
    const parts = [];
    const batch = config.max_batch_size;
    if (UI.isNum(batch) && batch > 1) {
      parts.push(`batches of up to ${batch}, waiting up to ${num(config.max_batch_delay_ms)} ms`);
    } else if (UI.isNum(batch)) parts.push("no adaptive batching");
    if (config.max_inflight) parts.push(`at most ${config.max_inflight} requests in flight`);
    if (config.timeout) parts.push(`timeout ${num(config.timeout)} s`);
    if (UI.isNum(config.workers)) parts.push(replicas(config.workers));
    return parts.join(" · ");
  }

  // ---- autoscaling: replicas now and since the page opened ---------------------------------

  const REPLICA_POINTS = 300;   // about ten minutes at the page's poll interval
  const replicaSeries = {t: [], ready: [], desired: []};
  let replicaChart = null;

  function renderAutoscaling(rows) {
    const card = $("#autoscaling-card");
    card.classList.toggle("hidden", !rows);
    if (!rows) return;
    if (!replicaChart) {
      replicaChart = UI.chart($("#replica-chart"), "Replicas over time", ["ready", "desired"],
                              ["ready", "desired"], "");
    }
    const sum = (key) => rows.reduce((total, row) => total + (row[key] || 0), 0);
    replicaSeries.t.push(Date.now() / 1000);
    replicaSeries.ready.push(sum("ready"));
    replicaSeries.desired.push(sum("desired"));
    for (const key of Object.keys(replicaSeries)) {
      if (replicaSeries[key].length > REPLICA_POINTS) replicaSeries[key].shift();
    }
    replicaChart.update(replicaSeries);
    const first = rows[0];
    const settings = first.autoscaling || {};
    const facts = [`${settings.min_replicas}–${settings.max_replicas} replicas, target ` +
                   `${num(settings.target_concurrency)} in flight each`];
    if (rows.some((row) => row.panicking)) facts.push("panicking");
    if (rows.some((row) => row.scaled_to_zero)) facts.push("scaled to zero");
    fill($("#autoscaling-facts"), facts.join(" · "));
    UI.update($("#replicas"), rows, () => replicaTable(rows));
  }

  function replicaTable(rows) {
    const body = [];
    for (const row of rows) {
      const why = row.last_scale
        ? `last: ${row.last_scale.from} → ${row.last_scale.to} (${row.last_scale.reason}, ${row.last_scale.at})`
        : "";
      body.push(el("p", {class: "small", dataset: {version: row.version}},
        `version ${row.version}: ${row.ready} ready of ${row.desired} wanted · reason ${row.reason} · ` +
        `concurrency ${num(row.concurrency.stable, 3)} (stable), ${num(row.concurrency.panic, 3)} (panic) ${why}`));
      if (!row.replicas.length) continue;
      body.push(el("table", {class: "replica-list"},
        el("thead", {}, el("tr", {}, ["PID", "State", "In flight", "Memory", "GPUs"].map((h) => el("th", {}, h)))),
        el("tbody", {}, row.replicas.map((r) => el("tr", {},
          el("td", {class: "mono"}, String(r.pid)), el("td", {}, badge(r.state.toUpperCase())),
          el("td", {class: "num"}, String(r.in_flight)),
          el("td", {class: "num"}, r.rss_bytes ? `${num(r.rss_bytes / 1048576, 0)} MiB` : "–"),
          el("td", {}, (r.gpus || []).join(", ") || "–"))))));
    }
    return body;
  }

  // ---- metadata and "try it" ------------------------------------------------------------

  function tensorTable(title, tensors) {
    return [el("h3", {class: "small muted"}, title),
      tensors && tensors.length ? el("table", {class: `tensors ${title.toLowerCase()}`},
        el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "Datatype"), el("th", {}, "Shape"))),
        el("tbody", {}, tensors.map((t) => el("tr", {},
          el("td", {class: "mono"}, t.name), el("td", {}, t.datatype),
          el("td", {class: "mono"}, `[${(t.shape || []).join(", ")}]`)))))
        : el("p", {class: "empty"}, "none declared")];
  }

  function renderMetadata(metadata) {
    UI.update($("#metadata"), metadata, () => metadataView(metadata));
  }

  function metadataView(metadata) {
    if (!metadata) return el("p", {class: "empty"}, "Not loaded: no metadata.");
    return [
      el("p", {class: "small muted"}, `platform ${metadata.platform || "–"} · versions ${(metadata.versions || []).join(", ") || "–"}`),
      el("div", {class: "grid"}, el("div", {}, tensorTable("Inputs", metadata.inputs)),
                                 el("div", {}, tensorTable("Outputs", metadata.outputs)))];
  }

  function zero(datatype) {
    if (datatype === "BOOL") return false;
    if (datatype === "BYTES") return "";
    return 0;
  }

  /** One row: every -1 (free) dimension as 1. */
  const oneRow = (shape) => (shape || []).map((d) => (d < 0 ? 1 : d));
  const count = (shape) => shape.reduce((n, d) => n * d, 1);

  function renderForm(metadata) {
    const specs = (metadata && metadata.inputs) || [];
    const key = JSON.stringify(specs);
    if (key === formKey) return;
    formKey = key;
    inputs = [];
    if (!metadata) { fill($("#try-form"), el("p", {class: "empty"}, "No metadata: the model is not loaded.")); return; }
    if (!specs.length) { fill($("#try-form"), el("p", {class: "empty"}, "The model declares no inputs.")); return; }
    fill($("#try-form"), specs.map((spec) => {
      const shape = oneRow(spec.shape);
      const shapeBox = el("input", {type: "text", class: "mono shape", value: shape.join(","),
                                    "aria-label": `${spec.name} shape`, size: 12});
      const data = el("textarea", {class: "data", spellcheck: "false", "aria-label": `${spec.name} data`,
                                   dataset: {input: spec.name},
                                   value: JSON.stringify(new Array(count(shape)).fill(zero(spec.datatype)))});
      inputs.push({spec, shape: shapeBox, data});
      return el("div", {class: "input"},
        el("label", {class: "field"}, spec.name, " ",
           el("span", {class: "muted"}, `${spec.datatype}, declared shape [${(spec.shape || []).join(", ")}]`)),
        el("div", {class: "row small"}, "shape", shapeBox),
        data);
    }));
  }

  /** The V2 request the form describes; throws with a readable message. */
  function buildRequest() {
    if (!inputs.length) throw new Error("no inputs to send");
    return {inputs: inputs.map(({spec, shape, data}) => {
      const dims = shape.value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
      if (dims.some((d) => !Number.isInteger(d) || d < 0)) throw new Error(`${spec.name}: shape must be whole numbers, like 1,4`);
      let values;
      try { values = JSON.parse(data.value); } catch (err) { throw new Error(`${spec.name}: the data is not JSON (${err.message})`); }
      return {name: spec.name, datatype: spec.datatype, shape: dims, data: values};
    })};
  }

  async function tryIt() {
    const out = $("#try-result"), answer = $("#answer");
    let body;
    try { body = buildRequest(); } catch (err) { out.className = "message error"; out.textContent = err.message; return; }
    const button = $("#send");
    button.disabled = true;
    out.className = "message"; out.textContent = "sending…";
    const started = performance.now();
    try {
      const response = await fetch(`/v2/models/${enc}/infer`, {
        method: "POST", headers: {"Content-Type": "application/json", Accept: "application/json"},
        body: JSON.stringify(body),
      });
      const text = await response.text();
      const elapsed = performance.now() - started;
      $("#latency").textContent = `answered in ${ms(elapsed)} (HTTP ${response.status}, measured in the page)`;
      let parsed = null;
      try { parsed = JSON.parse(text); } catch (_) { /* shown as text */ }
      if (response.ok) {
        out.className = "message ok"; out.textContent = "";
        answer.textContent = parsed ? UI.pretty(parsed) : text;
        answer.classList.remove("hidden");
      } else {
        out.className = "message error";
        out.textContent = (parsed && parsed.error) || text || `HTTP ${response.status}`;
        answer.classList.add("hidden");
      }
    } catch (err) {
      out.className = "message error"; out.textContent = "server unreachable";
    } finally {
      button.disabled = false;
    }
  }

  async function explain() {
    const out = $("#try-result"), target = $("#explanation");
    let body;
    try { body = buildRequest(); } catch (err) { out.className = "message error"; out.textContent = err.message; return; }
    const button = $("#explain");
    button.disabled = true;
    out.className = "message"; out.textContent = "explaining…";
    try {
      const response = await fetch(`/v2/models/${enc}/explain`, {
        method: "POST", headers: {"Content-Type": "application/json", Accept: "image/png"},
        body: JSON.stringify(body),
      });
      const type = response.headers.get("content-type") || "";
      if (response.ok && type.startsWith("image/")) {
        const url = URL.createObjectURL(await response.blob());
        const img = el("img", {class: "explanation", id: "explanation-image", alt: `explanation of ${name}'s answer`});
        img.addEventListener("load", () => URL.revokeObjectURL(url));
        img.src = url;
        fill(target, img);
        out.className = "message ok"; out.textContent = "";
      } else {
        const text = await response.text();
        let message = text;
        try { message = JSON.parse(text).error || text; } catch (_) { /* text */ }
        out.className = "message error"; out.textContent = `explain failed: ${message || `HTTP ${response.status}`}`;
      }
    } catch (err) {
      out.className = "message error"; out.textContent = "server unreachable";
    } finally {
      button.disabled = false;
    }
  }

  // ---- statistics and payload records ---------------------------------------------------

  function stat(entry, key) {
    const s = (entry.inference_stats || {})[key] || {};
    const n = UI.isNum(s.count) ? s.count : 0;
    const total = UI.isNum(s.ns) ? s.ns / 1e6 : 0;
    return el("td", {class: "num", title: n ? `mean ${ms(total / n)}` : ""},
              String(n), el("br"), el("span", {class: "small muted"}, ms(total)));
  }

  function renderStatistics(entries) {
    UI.update($("#statistics"), entries, () => statisticsTable(entries));
  }

  const LABELS = {success: "Success", fail: "Fail", queue: "Queue", compute_input: "Compute input",
                  compute_infer: "Compute infer", compute_output: "Compute output"};

  function statisticsTable(entries) {
    if (!entries || !entries.length) return el("p", {class: "empty"}, "No statistics yet.");
    const kinds = ["success", "fail", "queue", "compute_input", "compute_infer", "compute_output"];
    return [el("table", {id: "stats-table"},
      el("thead", {}, el("tr", {}, el("th", {}, "Version"), el("th", {class: "num"}, "Inferences"),
        el("th", {class: "num"}, "Executions"), kinds.map((k) => el("th", {class: "num"}, LABELS[k])),
        el("th", {}, "Last inference"))),
      el("tbody", {}, entries.map((entry) => el("tr", {dataset: {version: entry.version}},
        el("td", {}, entry.version || "–"),
        el("td", {class: "num inference-count"}, String(entry.inference_count ?? 0)),
        el("td", {class: "num execution-count"}, String(entry.execution_count ?? 0)),
        kinds.map((k) => stat(entry, k)),
        el("td", {class: "small"}, entry.last_inference ? when(entry.last_inference) : "never"))))),
      el("p", {class: "small muted"}, "Counts, with cumulative time below (hover for the mean).")];
  }

  /** A record's data as text; one too large to show (the server leaves it out) says how
   *  large it was. */
  function recordData(record) {
    if (UI.isNum(record.omitted_bytes) && (record.data == null && record.data_base64 == null)) {
      return `${num(record.omitted_bytes, 0)} bytes, not shown`;
    }
    if ("data" in record && record.data !== null) return typeof record.data === "string" ? record.data : UI.pretty(record.data);
    if ("data_base64" in record && record.data_base64 !== null) return `base64: ${record.data_base64}`;
    return "(no data)";
  }

  /** The server keeps payload records for its admin token: a note and a button that asks
   *  for it (kept for the tab, like the control buttons'); the next refresh sends it. */
  function needsToken() {
    const known = UI.token.get();
    const button = el("button", {type: "button", id: "show-records", class: "primary"},
                      "Show records (admin token)");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const entered = await UI.askToken(UI.token.get() ? "refused" : "records");
        if (!entered) return;
        UI.token.set(entered);
        payloadKey = null;
        if (poller) await poller.now();
      } finally {
        button.disabled = false;
      }
    });
    return el("div", {class: "needs-token", id: "payload-needs-token"},
      el("p", {class: "small"}, known
        ? "The server refused the admin token kept for this tab: the records are shown with the right one."
        : "This server shows payload records (requests and answers) only with its admin token."),
      el("div", {class: "row"}, button));
  }

  function renderPayload(payload) {
    $("#payload-card").classList.toggle("hidden", !payload);
    if (!payload) return;
    fill($("#payload-sink"), payload.sink ? `→ ${payload.sink}` : "");
    if (payload.needs_token || payload.recent === null) {
      const key = `needs-token|${UI.token.get() ? "refused" : "none"}`;
      if (key === payloadKey) return;
      payloadKey = key;
      fill($("#payload"), payload.needs_token ? needsToken() : el("p", {class: "empty"}, "No records."));
      return;
    }
    const recent = payload.recent || [];
    const key = JSON.stringify(recent.map((r) => [r.type, r.id, r.time]));
    if (key === payloadKey) return;
    payloadKey = key;
    const open = new Set([...document.querySelectorAll("#payload details[open]")].map((d) => d.dataset.key));
    if (!recent.length) { fill($("#payload"), el("p", {class: "empty"}, "No records yet.")); return; }
    fill($("#payload"), recent.map((record) => {
      const k = `${record.type}|${record.id}`;
      const short = String(record.type || "").split(".").pop();
      return el("details", {class: "record", dataset: {key: k}, open: open.has(k)},
        el("summary", {},
          el("span", {class: "badge kind", title: record.type || ""}, short || "record"),
          el("span", {class: "mono"}, record.id || ""),
          el("span", {class: "muted"}, when(record.time)),
          el("span", {}, `status ${record.status ?? "–"}`),
          record.modelversion ? el("span", {class: "muted"}, `version ${record.modelversion}`) : null,
          record.variant ? el("span", {class: "muted"}, record.variant) : null),
        el("pre", {class: "out"}, recordData(record)));
    }));
  }

  // ---- repository actions ---------------------------------------------------------------

  let poller = null;
  function repositoryAction(button, verb, label) {
    button.addEventListener("click", async () => {
      await UI.act(button, $("#action-result"), label,
                   () => UI.send("POST", `/v2/repository/models/${enc}/${verb}`));
      if (poller) poller.now();
    });
  }
  repositoryAction($("#load"), "load", "Load");
  repositoryAction($("#reload"), "load", "Reload");
  repositoryAction($("#unload"), "unload", "Unload");
  $("#send").addEventListener("click", tryIt);
  $("#explain").addEventListener("click", explain);

  function render(data) {
    $("#problem").classList.add("hidden");
    renderHeader(data);
    renderVersions(data.versions);
    renderConfig(data.config);
    renderMetadata(data.metadata);
    renderForm(data.metadata);
    $("#explain").classList.toggle("hidden", !data.explainer);
    updateCharts(data.series || {});
    renderAutoscaling(data.autoscaling);
    renderStatistics(data.statistics);
    renderPayload(data.payload);
    UI.ready();
  }

  poller = UI.poll(`/ui/api/models/${enc}`, render, (err) => {
    const problem = $("#problem");
    problem.textContent = err.status === 404 ? `No model or graph named "${name}": ${err.message}` : err.message;
    problem.classList.remove("hidden");
  });
})();
