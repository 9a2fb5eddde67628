/* Graph page (/ui/graphs/{name}): the diagram (SVG drawn here), routers, live charts. */
"use strict";
(() => {
  const {el, svg, fill, $, links, badge, num} = UI;
  const name = UI.pageName();
  const enc = encodeURIComponent(name);
  document.title = `${name} · graph · Shoal`;
  fill($("#title"), name);
  const updateCharts = UI.liveCharts($("#charts"));
  const ROUTING = new Set(["switch", "splitter", "bandit", "router"]);

  // ---- layout: layers by longest path from the root; an edge that skips layers passes
  //      through a point in each (so it goes around the boxes); each layer ordered by where
  //      its parents sit ------------------------------------------------------------------

  const BOX_W = 176, BOX_H = 46, GAP_X = 26, GAP_Y = 70, PAD = 12, PASS_W = 18;

  function layout(graph) {
    const names = graph.nodes.map((n) => n.name);
    const known = new Set(names);
    const edges = graph.edges.filter((e) => known.has(e.from) && known.has(e.to));
    const root = known.has(graph.root) ? graph.root : names[0];
    const depth = new Map([[root, 0]]);
    // Longest path from the root; the bound stops a cycle from going on for ever.
    for (let round = 0, changed = true; changed && round <= names.length; round++) {
      changed = false;
      for (const e of edges) {
        if (!depth.has(e.from) || e.to === root) continue;
        const d = depth.get(e.from) + 1;
        if (d <= names.length && (!depth.has(e.to) || depth.get(e.to) < d)) { depth.set(e.to, d); changed = true; }
      }
    }
    const deepest = Math.max(0, ...depth.values());
    names.forEach((n) => { if (!depth.has(n)) depth.set(n, deepest + 1); });  // unreachable: below
    // Items: the nodes, and a pass-through point for each layer an edge skips.
    const items = new Map(names.map((n) => [n, {id: n, node: true, depth: depth.get(n), parents: []}]));
    const routes = edges.map((e, i) => {
      const chain = [e.from];
      for (let d = depth.get(e.from) + 1; d < depth.get(e.to); d++) {
        const id = `\u0000${i}:${d}`;
        items.set(id, {id, node: false, depth: d, parents: [chain[chain.length - 1]]});
        chain.push(id);
      }
      if (depth.get(e.to) > depth.get(e.from)) items.get(e.to).parents.push(chain[chain.length - 1]);
      chain.push(e.to);
      return {edge: e, chain};
    });
    const layers = [];
    for (const item of items.values()) (layers[item.depth] = layers[item.depth] || []).push(item);
    const order = new Map();
    const spec = (item) => (item.node ? names.indexOf(item.id) : names.length);
    layers.forEach((layer) => {
      const weight = (item) => {
        const seen = item.parents.filter((p) => order.has(p)).map((p) => order.get(p));
        return seen.length ? seen.reduce((a, b) => a + b, 0) / seen.length : Infinity;
      };
      layer.sort((a, b) => weight(a) - weight(b) || spec(a) - spec(b));
      layer.forEach((item, i) => order.set(item.id, i / Math.max(1, layer.length - 1)));
    });
    // Coordinates: each layer centred.
    const rows = layers.filter(Boolean);
    const span = (layer) => layer.reduce((w, item) => w + (item.node ? BOX_W : PASS_W), 0) + GAP_X * (layer.length - 1);
    const width = Math.max(...rows.map(span)) + 2 * PAD;
    rows.forEach((layer, d) => {
      let x = (width - span(layer)) / 2;
      for (const item of layer) {
        const w = item.node ? BOX_W : PASS_W;
        Object.assign(item, {x, y: PAD + d * (BOX_H + GAP_Y), w});
        x += w + GAP_X;
      }
    });
    return {items, routes, width, height: rows.length * (BOX_H + GAP_Y) - GAP_Y + 2 * PAD};
  }

  const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

  function modelOf(target) {
    // "iris", "iris:2" or "iris version 2": the model's name (its page).
    return String(target || "").split(/[\s:]/)[0];
  }

  /** A path down through `points` ([x, y] pairs, top to bottom), curving between them. */
  function curve(points) {
    let d = `M ${points[0][0]} ${points[0][1]}`;
    for (let i = 1; i < points.length; i++) {
      const [x1, y1] = points[i - 1], [x2, y2] = points[i];
      if (x1 === x2) { d += ` L ${x2} ${y2}`; continue; }
      const mid = (y1 + y2) / 2;
      d += ` C ${x1} ${mid}, ${x2} ${mid}, ${x2} ${y2}`;
    }
    return d;
  }

  function diagram(graph) {
    if (!graph.nodes || !graph.nodes.length) return el("p", {class: "empty"}, "No nodes.");
    const {items, routes, width, height} = layout(graph);
    const byName = new Map(graph.nodes.map((n) => [n.name, n]));
    const root = svg("svg", {class: "graph", id: "graph-svg", viewBox: `0 0 ${width} ${height}`,
                             width, height, role: "img", "aria-label": `diagram of graph ${graph.name}`},
      svg("defs", {}, svg("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
                                     markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse"},
        svg("path", {d: "M 0 0 L 10 5 L 0 10 z", fill: "#94a3b8"}))));
    const lines = svg("g", {class: "edges"}), labels = svg("g", {class: "labels"}), boxes = svg("g", {class: "nodes"});
    const leaving = new Map();
    routes.forEach((r) => leaving.set(r.edge.from, [...(leaving.get(r.edge.from) || []), r]));
    for (const r of routes) {
      const from = items.get(r.edge.from), to = items.get(r.edge.to);
      const siblings = leaving.get(r.edge.from);
      // The edges leaving a box start side by side, in the order their ends sit.
      siblings.sort((a, b) => items.get(a.chain[1]).x - items.get(b.chain[1]).x);
      const spread = siblings.length > 1 ? (siblings.indexOf(r) / (siblings.length - 1) - 0.5) * BOX_W * 0.5 : 0;
      const back = to.depth <= from.depth;  // a cycle: drawn dashed, from the box's side
      const points = [[from.x + BOX_W / 2 + spread, from.y + BOX_H]];
      for (const id of r.chain.slice(1, -1)) {
        const pass = items.get(id);
        points.push([pass.x + PASS_W / 2, pass.y], [pass.x + PASS_W / 2, pass.y + BOX_H]);
      }
      points.push(back ? [to.x + BOX_W, to.y + BOX_H / 2] : [to.x + BOX_W / 2, to.y]);
      lines.appendChild(svg("path", {class: "edge", "marker-end": "url(#arrow)", "stroke-dasharray": back ? "4 3" : null,
        d: curve(points), dataset: {from: r.edge.from, to: r.edge.to}}));
      if (r.edge.label) {
        const text = clip(String(r.edge.label), 34);
        const [[x1, y1], [x2, y2]] = points;
        // Labels of edges leaving one box alternate up and down, so neighbours do not overlap.
        const lx = (x1 + x2) / 2, ly = (y1 + y2) / 2 + 4 + (siblings.indexOf(r) % 2 ? 9 : -5) * (siblings.length > 1);
        const w = text.length * 6 + 8;
        labels.appendChild(svg("g", {class: "edge-label"},
          svg("title", {}, String(r.edge.label)),
          svg("rect", {class: "label", x: lx - w / 2, y: ly - 11, width: w, height: 15, rx: 3}),
          svg("text", {class: "label", x: lx, y: ly, "text-anchor": "middle"}, text)));
      }
    }
    for (const item of items.values()) {
      if (!item.node) continue;
      const node = byName.get(item.id);
      const kind = node.kind || "";
      const second = node.target ? `${kind}: ${node.target}` : kind;
      const cls = ["node", ROUTING.has(kind) ? "routing" : "", kind === "model" ? "model" : "",
                   item.id === graph.root ? "root" : ""].filter(Boolean).join(" ");
      const box = svg("g", {class: "graph-node", dataset: {node: item.id, kind}},
        svg("title", {}, `${item.id} (${second})`),
        svg("rect", {class: cls, x: item.x, y: item.y, width: BOX_W, height: BOX_H, rx: 7}),
        svg("text", {class: "name", x: item.x + BOX_W / 2, y: item.y + 19, "text-anchor": "middle"}, clip(item.id, 26)),
        svg("text", {class: "kind", x: item.x + BOX_W / 2, y: item.y + 35, "text-anchor": "middle"}, clip(second, 30)));
      boxes.appendChild(kind === "model" && node.target ? svg("a", {href: links.model(modelOf(node.target))}, box) : box);
    }
    root.append(lines, boxes, labels);
    return root;
  }

  // ---- routers --------------------------------------------------------------------------

  function countOf(router, branch, index) {
    const counts = router.counts || router.routed;
    if (Array.isArray(counts)) return counts[index];
    if (counts && typeof counts === "object") return counts[branch];
    return undefined;
  }

  function routerCard(nodeName, router) {
    const branches = router.branches || Object.keys(router.arms || {});
    const arms = router.arms || {};
    const weights = router.weights || {};
    const hasCounts = branches.some((b, i) => countOf(router, b, i) !== undefined);
    const hasWeights = Object.keys(weights).length > 0;
    const hasArms = Object.keys(arms).length > 0;
    const head = [el("th", {}, "Branch")];
    if (hasCounts) head.push(el("th", {class: "num"}, "Routed"));
    if (hasWeights) head.push(el("th", {class: "num"}, "Weight"));
    if (hasArms) head.push(el("th", {class: "num"}, "Pulls"), el("th", {class: "num"}, "Mean reward"));
    return el("div", {class: "card router", dataset: {node: nodeName}},
      el("h2", {}, nodeName, " ", badge(router.kind || "router", "kind"),
         router.strategy ? el("span", {class: "small muted"}, ` ${router.strategy}`) : null),
      el("table", {},
        el("thead", {}, el("tr", {}, head)),
        el("tbody", {}, branches.map((b, i) => {
          const arm = arms[b] || {};
          const cells = [el("td", {}, b)];
          if (hasCounts) cells.push(el("td", {class: "num routed"}, num(countOf(router, b, i) ?? 0, 0)));
          if (hasWeights) cells.push(el("td", {class: "num"}, UI.isNum(weights[b]) ? `${num(weights[b], 1)} %` : "–"));
          if (hasArms) cells.push(el("td", {class: "num pulls"}, num(arm.pulls, 0)),
                                  el("td", {class: "num mean"}, num(arm.mean, 3)));
          return el("tr", {dataset: {branch: b}}, cells);
        }))));
  }

  function routers(state) {
    const all = (state && state.routers) || {};
    const names = Object.keys(all);
    if (!names.length) return el("p", {class: "empty"}, "This graph has no routing nodes.");
    return names.map((n) => routerCard(n, all[n]));
  }

  function render(graph) {
    $("#problem").classList.add("hidden");
    fill($("#title"), graph.name, " ", badge("graph", "kind"), " ", badge(graph.state));
    fill($("#facts"),
      graph.reason && graph.state !== "READY" ? el("span", {class: "message error"}, graph.reason) : null,
      el("span", {}, `${(graph.nodes || []).length} nodes, root ${graph.root || "–"}`),
      el("span", {}, el("a", {href: links.model(graph.name), id: "model-link"}, "metadata, try it, statistics")));
    UI.update($("#diagram"), [graph.name, graph.root, graph.nodes, graph.edges], () => diagram(graph));
    UI.update($("#routers"), graph.routers, () => routers(graph.routers));
    updateCharts(graph.series || {});
    UI.ready();
  }

  UI.poll(`/ui/api/graphs/${enc}`, render, (err) => {
    const problem = $("#problem");
    problem.textContent = err.status === 404 ? `No graph named "${name}": ${err.message}` : err.message;
    problem.classList.remove("hidden");
  });
})();
