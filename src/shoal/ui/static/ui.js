/* Shoal dashboard: what every page shares. No framework, no build step.
 *
 * - el(): builds DOM nodes; text always goes in as text nodes (never innerHTML), so names,
 *   reasons and payloads from the API are escaped by construction.
 * - getJSON() / send(): fetch helpers; both send the admin token when one is known (same
 *   origin only), send() asks for it on a 401.
 * - poll(): runs a page's refresh every 2 s (one request at a time) and shows the "server
 *   unreachable" banner.
 * - chart() / sparkline(): uPlot (vendored) with the dashboard's defaults.
 */
"use strict";

const UI = (() => {
  const TOKEN_KEY = "shoal-admin-token";
  const SVG_NS = "http://www.w3.org/2000/svg";

  // ---- DOM -----------------------------------------------------------------------------

  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach((c) => append(node, c)); return; }
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.setAttribute("class", value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "value" || key === "checked" || key === "disabled") node[key] = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  /** el("td", {class: "num"}, "text", childNode, [more]): an element; strings become text. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  /** The same for SVG elements. */
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  /** Replace a node's children. */
  function fill(node, ...children) {
    node.replaceChildren();
    append(node, children);
    return node;
  }

  const $ = (selector, root) => (root || document).querySelector(selector);

  /** fill(node, build(value)) only when `value` changed since the last call for `node`: a
   *  refresh that brings the same data leaves the DOM (and the user's selection) alone. */
  const shown = new WeakMap();
  function update(node, value, build) {
    const key = JSON.stringify(value === undefined ? null : value);
    if (shown.get(node) === key) return false;
    shown.set(node, key);
    fill(node, build(value));
    return true;
  }

  /** The last path segment (/ui/models/{name}), decoded. */
  function pageName() {
    const parts = location.pathname.replace(/\/+$/, "").split("/");
    return decodeURIComponent(parts[parts.length - 1] || "");
  }

  const enc = encodeURIComponent;
  const links = {
    model: (name) => `/ui/models/${enc(name)}`,
    graph: (name) => `/ui/graphs/${enc(name)}`,
    rollout: (name) => `/ui/rollouts/${enc(name)}`,
  };

  function badge(text, kind) {
    const state = String(text || "unknown");
    return el("span", {class: `badge ${kind || state.toLowerCase()}`}, state);
  }

  /** Tell the tests (and anyone timing the page) that the data is drawn: the pages call it
   *  at the end of a successful draw, never on an error path. */
  function ready() {
    if (document.body.dataset.ready !== "1") {
      window.shoalReadyMs = performance.now();
      document.body.dataset.ready = "1";
    }
  }

  /** The first answer was an error the page shows (a 404 for an unknown model): settled,
   *  but not drawn (ready() is not called). */
  function settled() {
    if (!document.body.dataset.failed) document.body.dataset.failed = "1";
  }

  // ---- formatting ----------------------------------------------------------------------

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const last = (values) => {
    for (let i = (values || []).length - 1; i >= 0; i--) if (isNum(values[i])) return values[i];
    return null;
  };
  function num(v, digits = 2) {
    if (!isNum(v)) return "–";
    if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
    return Number(v.toFixed(digits)).toString();
  }
  const ms = (v) => (isNum(v) ? `${num(v, v < 10 ? 2 : 1)} ms` : "–");
  const pct = (v) => (isNum(v) ? `${num(v * 100, 2)} %` : "–");
  function duration(seconds) {
    if (!isNum(seconds)) return "–";
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60), r = s % 60;
    if (d) return `${d}d ${h}h ${m}m`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${r}s`;
    return `${r}s`;
  }
  function clock(unixSeconds) {
    if (!isNum(unixSeconds)) return "–";
    return new Date(unixSeconds * 1000).toLocaleTimeString("en-GB", {hour12: false});
  }
  function when(value) {
    if (value === null || value === undefined || value === "") return "–";
    const date = isNum(value) ? new Date(value > 1e12 ? value : value * 1000) : new Date(value);
    if (Number.isNaN(date.getTime())) return String(value);
    return date.toLocaleString("en-GB", {hour12: false});
  }

  /** JSON for people: indented, but an array of numbers or strings stays on one line. */
  function pretty(value, indent = "") {
    const inner = `${indent}  `;
    if (Array.isArray(value)) {
      if (value.every((v) => v === null || typeof v !== "object")) return `[${value.map((v) => JSON.stringify(v)).join(", ")}]`;
      return `[\n${value.map((v) => inner + pretty(v, inner)).join(",\n")}\n${indent}]`;
    }
    if (value && typeof value === "object") {
      const keys = Object.keys(value);
      if (!keys.length) return "{}";
      return `{\n${keys.map((k) => `${inner}${JSON.stringify(k)}: ${pretty(value[k], inner)}`).join(",\n")}\n${indent}}`;
    }
    return JSON.stringify(value);
  }

  // ---- fetching ------------------------------------------------------------------------

  /** An HTTP answer that is not 2xx; `unreachable` when the server did not answer at all. */
  class ApiError extends Error {
    constructor(message, status, unreachable) {
      super(message);
      this.status = status;
      this.unreachable = !!unreachable;
    }
  }

  async function errorMessage(response) {
    const text = await response.text().catch(() => "");
    try {
      const body = JSON.parse(text);
      if (body && typeof body.error === "string") return body.error;
      if (body && typeof body.message === "string") return body.message;
    } catch (_) { /* not JSON */ }
    return text.trim() || `${response.status} ${response.statusText}`;
  }

  async function request(url, options) {
    let response;
    try {
      response = await fetch(url, {cache: "no-store", ...options});
    } catch (err) {
      throw new ApiError("server unreachable", 0, true);
    }
    return response;
  }

  /** GET `url` as JSON, with the admin token when one is known (it lets the model page show
   *  payload records on a server that has a token). */
  async function getJSON(url) {
    const headers = {Accept: "application/json"};
    const known = token.get();
    if (known && tokenProblem(known) === null && sameOrigin(url)) headers.Authorization = `Bearer ${known}`;
    const response = await request(url, {headers});
    if (!response.ok) throw new ApiError(await errorMessage(response), response.status, response.status >= 502);
    return response.json();
  }

  // ---- the admin token -----------------------------------------------------------------

  const token = {
    get: () => sessionStorage.getItem(TOKEN_KEY),
    set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
    clear: () => sessionStorage.removeItem(TOKEN_KEY),
  };

  /** Why `value` cannot be an admin token (an HTTP header carries printable ASCII only), or
   *  null when it can. */
  function tokenProblem(value) {
    if (!value) return "Enter the admin token.";
    if (!/^[\x20-\x7e]+$/.test(value)) return "The admin token can hold printable ASCII characters only (no accents, other scripts or control characters).";
    return null;
  }

  /** The token goes to this server only: never with a request to another origin. */
  function sameOrigin(url) {
    try { return new URL(url, location.href).origin === location.origin; } catch (_) { return false; }
  }

  const ASK = {
    first: "This server needs its admin token for changes (kept for this tab only):",
    refused: "The server refused the admin token. Enter it again:",
    unsendable: "The admin token kept for this tab cannot be sent (printable ASCII characters only). Enter it again:",
    records: "Payload records are shown with the server's admin token (kept for this tab only):",
  };

  /** Ask for the token in a small dialog; resolves to the token, or null when cancelled.
   *  `why` is a key of ASK (true: "refused", false: "first"). A token that cannot go in an
   *  HTTP header is refused in the dialog, saying why. */
  function askToken(why) {
    const reason = why === true ? "refused" : (why === false || !why ? "first" : why);
    return new Promise((resolve) => {
      const input = el("input", {type: "password", name: "token", autocomplete: "off",
                                 placeholder: "admin token", "aria-label": "admin token"});
      const problem = el("p", {class: "message error hidden", id: "token-problem", role: "alert"});
      const form = el("form", {method: "dialog"},
        el("p", {}, ASK[reason] || ASK.first),
        input,
        problem,
        el("div", {class: "row"},
          el("button", {class: "primary", value: "ok", type: "submit", id: "token-ok"}, "Use token"),
          el("button", {value: "cancel", type: "submit", formnovalidate: true, id: "token-cancel"}, "Cancel")));
      const dialog = el("dialog", {class: "token", id: "token-dialog"}, form);
      form.addEventListener("submit", (event) => {
        if (!event.submitter || event.submitter.value !== "ok") return;
        const wrong = tokenProblem(input.value.trim());
        if (wrong === null) return;
        event.preventDefault();  // stays open, saying why
        problem.textContent = wrong;
        problem.classList.remove("hidden");
        input.focus();
      });
      input.addEventListener("input", () => problem.classList.add("hidden"));
      dialog.addEventListener("close", () => {
        const value = dialog.returnValue === "ok" ? input.value.trim() : "";
        dialog.remove();
        resolve(value && tokenProblem(value) === null ? value : null);
      });
      document.body.appendChild(dialog);
      dialog.showModal();
      input.focus();
    });
  }

  /**
   * A control action (load, unload, rollout changes): JSON in, JSON out, with the admin token
   * when one is known. A 401 asks for the token, keeps it for the tab and retries.
   * Resolves to the answer's JSON; rejects with an ApiError carrying the API's message.
   */
  async function send(method, url, body) {
    let asked = false;
    for (;;) {
      let headers = {Accept: "application/json"};
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const known = token.get();
      if (known) {
        // A token that cannot go in a header (not Latin-1: fetch would throw a TypeError that
        // reads as "server unreachable" on every action): forgotten, and asked for again.
        try {
          headers = new Headers({...headers, Authorization: `Bearer ${known}`});
        } catch (err) {
          if (!(err instanceof TypeError)) throw err;
          token.clear();
          const entered = await askToken("unsendable");
          asked = true;
          if (!entered) throw new ApiError("the admin token kept for this tab could not be sent (no admin token given)", 401);
          token.set(entered);
          continue;
        }
      }
      const response = await request(url, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (response.status === 401) {
        const message = await errorMessage(response);
        if (known) token.clear();
        const entered = await askToken(asked || !!known);
        asked = true;
        if (!entered) throw new ApiError(`${message} (no admin token given)`, 401);
        token.set(entered);
        continue;
      }
      if (!response.ok) throw new ApiError(await errorMessage(response), response.status);
      const text = await response.text();
      try { return text ? JSON.parse(text) : {}; } catch (_) { return {text}; }
    }
  }

  /** Thrown by an action the user called off (a confirmation answered "cancel"). */
  class Cancelled extends Error {}

  /** Runs `action` for a button: disabled while it runs, its result or error in `out`. */
  async function act(button, out, label, action) {
    button.disabled = true;
    out.className = "message";
    out.textContent = `${label}…`;
    try {
      const result = await action();
      out.className = "message ok";
      out.textContent = `${label}: done`;
      return result;
    } catch (err) {
      if (err instanceof Cancelled) {
        out.className = "message";
        out.textContent = `${label}: cancelled, nothing changed`;
        return undefined;
      }
      out.className = "message error";
      out.textContent = `${label} failed: ${err.message}`;
      return undefined;
    } finally {
      button.disabled = false;
    }
  }

  // ---- refreshing ----------------------------------------------------------------------

  const INTERVAL_MS = 2000;

  function banner() {
    let node = $("#banner");
    if (!node) {
      node = el("div", {id: "banner", class: "banner", role: "status"});
      document.body.prepend(node);
    }
    return node;
  }

  function unreachable(on, detail) {
    const node = banner();
    node.textContent = on ? `Server unreachable${detail ? ` (${detail})` : ""}: retrying every 2 s` : "";
    node.classList.toggle("on", !!on);
  }

  /**
   * Fetch `url` now and every 2 s; `render(data)` draws it. `failed(err)` handles an answer
   * that is an HTTP error (a 404 for an unknown model); no answer at all shows the banner.
   *
   * One chain, one request at a time: `now()` (after a button's action) while a request is in
   * flight does not start another, it asks for one more right after it (however many times it
   * is called meanwhile). An answer is drawn only when nothing newer was drawn, and not when a
   * refresh was asked for after its request left (it may predate the action: the next one,
   * at once, is drawn instead). Returns {now()}: a promise settled when the page is drawn.
   */
  function poll(url, render, failed) {
    let timer = null;
    let running = null;   // the chain's promise while a request is in flight
    let again = false;    // now() was called during it: fetch once more when it ends
    let sent = 0;         // sequence number of the last request sent
    let drawn = 0;        // ... and of the answer drawn last
    let asked = 0;        // `sent` when now() was last called
    async function tick() {
      const mine = ++sent;
      try {
        const data = await getJSON(typeof url === "function" ? url() : url);
        if (mine <= drawn || mine <= asked) return;  // stale: a newer answer is (or will be) drawn
        drawn = mine;
        unreachable(false);
        render(data);
      } catch (err) {
        if (mine <= drawn || mine <= asked) return;
        drawn = mine;
        if (err.unreachable) unreachable(true, err.status ? `HTTP ${err.status}` : "");
        else {
          unreachable(false);
          if (failed) failed(err); else console.error(err);
          settled();
        }
      }
    }
    function run() {
      if (running) { again = true; return running; }
      clearTimeout(timer);
      timer = null;
      running = (async () => {
        try {
          do { again = false; await tick(); } while (again);
        } finally {
          running = null;
          timer = setTimeout(run, INTERVAL_MS);
        }
      })();
      return running;
    }
    run();
    return {now: () => {
      if (running) asked = sent;  // the answer in flight may predate what changed
      return run();
    }};
  }

  /** The header's server line, from /ui/api/overview's "server" (or nothing). */
  function header(server) {
    const node = $("#server");
    if (!node || !server) return;
    const parts = [`${server.name || "shoal"} ${server.version || ""}`.trim(),
                   `up ${duration(server.uptime_s)}`];
    if (server.pid) parts.push(`pid ${server.pid}`);
    if (server.http_workers > 1) parts.push(`${server.http_workers} HTTP workers`);
    if (server.admin_token) parts.push("admin token required for changes");
    fill(node, parts.join(" · "));
  }

  // ---- charts (uPlot) ------------------------------------------------------------------

  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#f59e0b"];

  /** The series as uPlot data: [t, ...columns], nulls kept (gaps). uPlot needs the times
   *  increasing: a sample at the same time as the one before is merged into it (its values
   *  fill that one's gaps), one that goes back in time is left out. */
  function columns(series, keys) {
    const t = (series && series.t) || [];
    const given = keys.map((key) => (series && series[key]) || []);
    const out = [[], ...keys.map(() => [])];
    for (let i = 0; i < t.length; i++) {
      if (!isNum(t[i])) continue;
      const n = out[0].length;
      if (n && t[i] < out[0][n - 1]) continue;
      if (n && t[i] === out[0][n - 1]) {
        given.forEach((values, k) => { if (out[k + 1][n - 1] == null) out[k + 1][n - 1] = values[i] ?? null; });
        continue;
      }
      out[0].push(t[i]);
      given.forEach((values, k) => out[k + 1].push(values[i] ?? null));
    }
    return out;
  }

  /** Tick labels for a time axis: HH:MM:SS, or HH:MM when the ticks are minutes apart. */
  function timeTicks(u, ticks, axis, space, incr) {
    return ticks.map((t) => {
      const text = new Date(t * 1000).toLocaleTimeString("en-GB", {hour12: false});
      return incr >= 60 ? text.slice(0, 5) : text;
    });
  }

  /**
   * A chart in `target`: lines for `keys` of SERIES, titled, with the latest values beside
   * the title (the legend), sized to its box. Returns {update(series)}.
   */
  function chart(target, title, keys, labels, unit) {
    const legend = el("span", {class: "legend"});
    const box = el("div", {class: "chart"}, el("h3", {}, title, " ", legend));
    target.appendChild(box);
    const plot = new uPlot({
      width: Math.max(200, box.clientWidth || 320), height: 150,
      legend: {show: false},
      cursor: {drag: {x: false, y: false}, points: {show: false}},
      scales: {x: {time: true}, y: {range: (u, lo, hi) => [0, hi > 0 ? hi * 1.1 : 1]}},
      axes: [
        {stroke: "#667085", grid: {stroke: "#eef1f5"}, ticks: {stroke: "#e3e7ee"}, space: 70,
         values: timeTicks},
        {stroke: "#667085", grid: {stroke: "#eef1f5"}, ticks: {stroke: "#e3e7ee"}, size: 44,
         values: (u, ticks) => ticks.map((v) => num(v, 3))},
      ],
      series: [{}, ...keys.map((key, i) => ({label: labels[i], stroke: COLORS[i], width: 1.5}))],
    }, columns({}, keys), box);
    // The box's width follows the layout (a grid column); the plot follows the box.
    new ResizeObserver(() => {
      const width = Math.max(200, Math.floor(box.clientWidth));
      if (Math.abs(width - plot.width) > 2) plot.setSize({width, height: 150});
    }).observe(box);
    return {
      update(series) {
        plot.setData(columns(series, keys));
        fill(legend, keys.map((key, i) => el("span", {style: `color:${COLORS[i]}`},
          `${labels[i]} ${num(last((series || {})[key]), 2)}${unit ? ` ${unit}` : ""}`)));
      },
    };
  }

  /** Dots only for a series with a value alone between gaps (a line cannot show it). */
  function isolated(u, index) {
    const values = u.data[index] || [];
    for (let i = 0; i < values.length; i++) {
      if (values[i] != null && values[i - 1] == null && values[i + 1] == null) return true;
    }
    return false;
  }

  /** A sparkline: one or two lines, no axes or legend. Returns {update(series), destroy()}. */
  function sparkline(target, keys, colors, width = 110, height = 26) {
    const plot = new uPlot({
      width, height,
      legend: {show: false},
      cursor: {show: false},
      select: {show: false},
      // A little room below zero, so that a flat zero line shows.
      scales: {x: {time: false}, y: {range: (u, lo, hi) => {
        const top = hi > 0 ? hi * 1.15 : 1;
        return [-top * 0.08, top];
      }}},
      axes: [{show: false}, {show: false}],
      series: [{}, ...keys.map((key, i) => ({stroke: (colors || COLORS)[i], width: 1.2,
                                              points: {show: isolated, size: 3}}))],
    }, columns({}, keys), target);
    return {update: (series) => plot.setData(columns(series, keys)), destroy: () => plot.destroy()};
  }

  /** The four live charts of the model and graph pages, in `target`; returns update(series). */
  function liveCharts(target) {
    const all = [
      chart(target, "Throughput", ["rps"], ["req/s"], ""),
      chart(target, "Latency", ["p50_ms", "p99_ms"], ["p50", "p99"], "ms"),
      chart(target, "Batch size", ["batch_size"], ["mean"], ""),
      chart(target, "Queue delay", ["queue_ms"], ["mean"], "ms"),
    ];
    return (series) => all.forEach((c) => c.update(series));
  }

  return {
    el, svg, fill, update, $, pageName, pretty, links, badge, ready,
    isNum, last, num, ms, pct, duration, clock, when,
    ApiError, Cancelled, getJSON, send, act, token, tokenProblem, askToken, poll, unreachable, header,
    chart, sparkline, liveCharts,
  };
})();
