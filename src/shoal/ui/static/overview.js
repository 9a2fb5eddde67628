/* Overview (/ui): every model and graph, live. */
"use strict";
(() => {
  const {el, fill, $, links, badge, last, num, ms, pct, duration} = UI;
  const tbody = $("#models tbody");
  const rows = new Map();  // name -> {tr, cells, sparks}

  function nameCell(model) {
    const page = model.kind === "graph" ? links.graph(model.name) : links.model(model.name);
    const extra = [];
    if (model.kind === "graph") extra.push(" ", badge("graph", "kind"));
    if (model.rollout && model.rollout.state !== "none") {
      const r = model.rollout;
      const what = [r.state, UI.isNum(r.canary_percent) ? `${num(r.canary_percent, 1)}%` : null]
        .filter(Boolean).join(" ");
      extra.push(" ", el("a", {href: links.rollout(model.name), class: "badge tag rollout-link",
                               title: "rollout"}, `rollout${what ? ` ${what}` : ""}`));
    }
    if (model.payload_sink) {
      extra.push(" ", el("span", {class: "badge tag", title: `payload log: ${model.payload_sink}`}, "payload log"));
    }
    return [el("a", {href: page, class: "model-link"}, model.name), extra];
  }

  function stateCell(model) {
    return [badge(model.state), model.reason && model.state !== "READY"
      ? el("span", {class: "reason"}, model.reason) : null];
  }

  function sparkCell(what, keys, colors) {
    const value = el("span", {class: "value"});
    const box = el("span", {class: "plot"});
    const td = el("td", {class: what}, el("div", {class: "spark"}, value, box));
    return {td, value, plot: UI.sparkline(box, keys, colors, 96)};
  }

  function newRow(model) {
    const cells = {
      name: el("td", {class: "name"}), state: el("td", {class: "state"}),
      versions: el("td", {class: "versions"}), runtime: el("td", {class: "runtime"}),
      replicas: el("td", {class: "num replicas"}),
    };
    const sparks = {rps: sparkCell("rps", ["rps"]),
                    latency: sparkCell("latency", ["p50_ms", "p99_ms"], ["#2563eb", "#f59e0b"]),
                    errors: sparkCell("errors", ["error_rate"], ["#dc2626"])};
    const tr = el("tr", {dataset: {name: model.name}},
                  Object.values(cells), sparks.rps.td, sparks.latency.td, sparks.errors.td);
    return {tr, cells, sparks, key: ""};
  }

  function update(row, model) {
    const key = JSON.stringify([model.kind, model.state, model.reason, model.versions,
                                model.runtime, model.replicas, model.rollout, model.payload_sink]);
    if (key !== row.key) {
      row.key = key;
      fill(row.cells.name, nameCell(model));
      fill(row.cells.state, stateCell(model));
      fill(row.cells.versions, (model.versions || []).join(", ") || "–");
      fill(row.cells.runtime, model.runtime || "–");
      // 0 worker processes: the model runs in the server's process (a graph always does).
      fill(row.cells.replicas, model.kind === "graph" || !UI.isNum(model.replicas) ? "–"
        : model.replicas > 0 ? String(model.replicas)
          : el("span", {class: "muted small", title: "in the server process"}, "in-process"));
    }
    const s = model.series || {};
    fill(row.sparks.rps.value, num(last(s.rps), 1));
    fill(row.sparks.latency.value, `${num(last(s.p50_ms), 1)} / ${num(last(s.p99_ms), 1)}`,
         el("small", {}, " ms"));
    fill(row.sparks.errors.value, pct(last(s.error_rate)));
    Object.values(row.sparks).forEach((spark) => spark.plot.update(s));
  }

  function render(data) {
    UI.header(data.server);
    const server = data.server || {};
    const models = (data.models || []).slice().sort((a, b) => a.name.localeCompare(b.name));
    const readyCount = models.filter((m) => m.state === "READY").length;
    fill($("#summary"),
         el("span", {}, `${models.length} served names, ${readyCount} ready`),
         el("span", {}, `uptime ${duration(server.uptime_s)}`),
         el("span", {}, `build ${server.version || "?"}`),
         server.started ? el("span", {}, `started ${UI.when(server.started)}`) : null);
    const seen = new Set();
    for (const model of models) {
      seen.add(model.name);
      let row = rows.get(model.name);
      if (!row) { row = newRow(model); rows.set(model.name, row); }
      update(row, model);
    }
    for (const [name, row] of rows) {
      if (!seen.has(name)) {
        Object.values(row.sparks).forEach((spark) => spark.plot.destroy());
        row.tr.remove();
        rows.delete(name);
      }
    }
    // Keep the table in name order, moving only rows out of place.
    let previous = null;
    for (const model of models) {
      const tr = rows.get(model.name).tr;
      const there = previous ? previous.nextSibling : tbody.firstChild;
      if (there !== tr) tbody.insertBefore(tr, there);
      previous = tr;
    }
    $("#none").classList.toggle("hidden", models.length > 0);
    UI.ready();
  }

  UI.poll("/ui/api/overview", render, (err) => {
    fill($("#summary"), el("span", {class: "message error"}, err.message));
  });
})();
