/* Rollout page (/ui/rollouts/{name}): the split, each variant's figures side by side, shadow
   agreement, and the buttons that change it. */
"use strict";
(() => {
  const {el, fill, $, links, badge, num, pct, when} = UI;
  const name = UI.pageName();
  const enc = encodeURIComponent(name);
  const base = `/v2/models/${enc}/rollout`;
  document.title = `${name} · rollout · Shoal`;
  fill($("#title"), name);
  let percentShown = null; // the percentage last put in the input (a user's edit is kept)

  /** "3" is version 3 of this model; anything else is another model or a URL. */
  const variantText = (v) => (/^\d+$/.test(String(v)) ? `version ${v}` : String(v ?? "–"));
  const seconds = (v) => (UI.isNum(v) ? UI.ms(v * 1000) : "–");

  function splitBar(status) {
    const canary = UI.isNum(status.canary_percent) ? status.canary_percent : 0;
    const variants = status.variants || {};
    const stableName = (variants.stable || {}).variant || "stable";
    const parts = [el("div", {class: "stable", style: `width:${100 - canary}%`, title: `stable ${stableName}`},
                      canary < 100 ? `stable ${variantText(stableName)} · ${num(100 - canary, 1)}%` : "")];
    if (variants.canary) {
      parts.push(el("div", {class: "canary", style: `width:${canary}%`, title: `canary ${variants.canary.variant}`},
                    canary > 0 ? `canary ${variantText(variants.canary.variant)} · ${num(canary, 1)}%` : ""));
    }
    return el("div", {class: "split", id: "split-bar"}, parts);
  }

  function variantsTable(status) {
    const variants = status.variants || {};
    const roles = ["stable", "canary", "shadow"].filter((r) => variants[r]);
    if (!roles.length) return el("p", {class: "empty"}, "No variants.");
    return [el("table", {id: "variants-table"},
      el("thead", {}, el("tr", {},
        ["Role", "Variant", "Requests", "5xx", "4xx", "Error rate", "p50", "p99", "Notes"].map((h, i) =>
          el("th", {class: i >= 2 && i <= 7 ? "num" : ""}, h)))),
      el("tbody", {}, roles.map((role) => {
        const v = variants[role];
        const notes = role === "shadow"
          ? `mirrors ${num(v.percent, 1)}% · ${v.pending ?? 0} pending · ${v.skipped ?? 0} skipped`
          : role === "canary" ? `${num(status.canary_percent, 1)}% of traffic` : "";
        return el("tr", {dataset: {role}},
          el("td", {class: "fit"}, badge(role, "kind")), el("td", {class: "variant"}, variantText(v.variant)),
          el("td", {class: "num requests"}, String(v.requests ?? 0)),
          el("td", {class: "num"}, String(v.errors ?? 0)),
          el("td", {class: "num"}, String(v.client_errors ?? 0)),
          el("td", {class: "num"}, pct(v.error_rate)),
          el("td", {class: "num"}, seconds(v.p50_seconds)),
          el("td", {class: "num"}, seconds(v.p99_seconds)),
          el("td", {class: "small muted"}, notes));
      }))),
      el("p", {class: "small muted"},
         `Figures since the last change (${num(status.window_seconds, 0)} s). 5xx count against the variant, 4xx are the client's.`)];
  }

  function shadowTable(shadow) {
    const outputs = Object.entries(shadow.outputs || {});
    if (!outputs.length) return el("p", {class: "empty"}, "Nothing compared yet.");
    return el("table", {id: "shadow-table"},
      el("thead", {}, el("tr", {}, el("th", {}, "Output"), el("th", {class: "num"}, "Compared"),
        el("th", {class: "num"}, "Mismatches"), el("th", {class: "num"}, "Agreement"),
        el("th", {class: "num"}, "Mean |difference|"))),
      el("tbody", {}, outputs.map(([output, f]) => el("tr", {dataset: {output}},
        el("td", {class: "mono"}, output), el("td", {class: "num"}, String(f.compared ?? 0)),
        el("td", {class: "num"}, String(f.mismatches ?? 0)),
        el("td", {class: "num agreement"}, "agreement" in f ? pct(f.agreement) : "–"),
        el("td", {class: "num"}, "mean_abs_difference" in f ? num(f.mean_abs_difference, 4) : "–")))));
  }

  function historyList(history) {
    if (!history || !history.length) return el("p", {class: "empty"}, "No changes yet.");
    return el("table", {id: "history-table"}, el("tbody", {}, history.slice().reverse().map((h) =>
      el("tr", {}, el("td", {class: "small muted fit"}, when(h.at)),
                   el("td", {class: "fit"}, badge(h.event || "", "kind")), el("td", {class: "small"}, h.detail || "")))));
  }

  function render(status) {
    $("#problem").classList.add("hidden");
    const none = !status.state || status.state === "none";
    fill($("#title"), name, " ", badge(none ? "no rollout" : status.state, none ? "" : status.state));
    const facts = [el("span", {}, el("a", {href: links.model(name), id: "model-link"}, "model page"))];
    if (!none) {
      facts.push(el("span", {}, `canary at ${num(status.canary_percent, 1)}%`));
      if (status.step) facts.push(el("span", {}, `step ${status.step.index + 1} of ${status.step.of}, ${num(status.step.interval_seconds, 0)} s each`));
      if (status.since) facts.push(el("span", {}, `since ${when(status.since)}`));
    }
    fill($("#facts"), facts, status.reason ? el("div", {class: "small", id: "reason"}, `Reason: ${status.reason}`) : null);
    ["#split-card", "#actions-card"].forEach((s) => $(s).classList.toggle("hidden", none));
    if (none) {
      fill($("#history"), el("p", {class: "empty"},
        `No rollout for ${name}. Set one with "shoal rollout set ${name} --canary VARIANT=PERCENT" or PUT ${base}.`));
      $("#shadow-card").classList.add("hidden");
      UI.ready();
      return;
    }
    fill($("#split"), splitBar(status));
    UI.update($("#variants"), [status.variants, status.canary_percent, Math.round(status.window_seconds || 0)],
              () => variantsTable(status));
    const shadow = (status.variants || {}).shadow;
    $("#shadow-card").classList.toggle("hidden", !shadow);
    if (shadow) UI.update($("#shadow"), shadow.outputs, () => shadowTable(shadow));
    UI.update($("#history"), status.history, () => historyList(status.history));
    const canary = (status.spec || {}).canary;
    $("#set-percent").disabled = !canary;
    fill($("#percent-note"), !canary ? "no canary in this rollout"
      : canary.analysis ? "setting it by hand ends the progressive steps and their guards"
      : status.state === "paused" ? "setting it by hand resumes the rollout" : "");
    const input = $("#percent");
    if (document.activeElement !== input && (percentShown === null || String(percentShown) === input.value)) {
      input.value = UI.isNum(status.canary_percent) ? String(status.canary_percent) : "";
      percentShown = input.value;
    }
    UI.ready();
  }

  let poller = null;
  function bind(button, label, action) {
    $(button).addEventListener("click", async () => {
      const result = await UI.act($(button), $("#action-result"), label, action);
      if (result !== undefined) percentShown = null;
      if (poller) poller.now();
    });
  }

  /** What setting the percentage by hand changes besides the percentage, in words (empty
   *  when nothing): a PUT of the spec ends the progressive steps with their guards, and
   *  starts the rollout again (a paused one resumes). */
  function sideEffects(status) {
    const changes = [];
    const analysis = ((status.spec || {}).canary || {}).analysis;
    if (analysis) {
      const steps = (analysis.steps || []).map((s) => `${num(s, 2)}%`).join(", ");
      const guards = ["max_error_rate", "max_latency_ratio", "min_requests"]
        .filter((k) => analysis[k] !== undefined && analysis[k] !== null)
        .map((k) => `${k} ${analysis[k]}`);
      changes.push(`ends the progressive steps (${steps || "–"}${UI.isNum(analysis.interval) ? ` every ${num(analysis.interval, 2)} s` : ""})` +
                   (guards.length ? ` and its guards: ${guards.join(", ")}` : "") +
                   " (no automatic rollback any more)");
    }
    if (status.state === "paused") changes.push("a paused rollout resumes");
    return changes;
  }

  bind("#set-percent", "Set canary %", async () => {
    const percent = Number($("#percent").value);
    if ($("#percent").value.trim() === "" || !Number.isFinite(percent)) throw new Error("enter a percentage (0-100)");
    // The spec as it is now (changed through the CLI since the last refresh, perhaps), not
    // as the last refresh drew it.
    const fresh = await UI.getJSON(base);
    const spec = JSON.parse(JSON.stringify(fresh.spec || {}));
    if (!fresh.state || fresh.state === "none") throw new Error("there is no rollout any more");
    if (!spec.canary) throw new Error("this rollout has no canary");
    const changes = sideEffects(fresh);
    if (changes.length && !window.confirm(
        `Set the canary of ${name} to ${num(percent, 2)}% by hand?\n\nThis also:\n` +
        changes.map((c) => `- ${c}`).join("\n"))) {
      throw new UI.Cancelled("cancelled");
    }
    spec.canary.percent = percent;
    delete spec.canary.analysis;  // a percentage set by hand replaces the steps
    return UI.send("PUT", base, spec);
  });
  bind("#promote", "Promote", () => UI.send("POST", `${base}/promote`));
  bind("#rollback", "Roll back", () => UI.send("POST", `${base}/rollback`));
  bind("#pause", "Pause", () => UI.send("POST", `${base}/pause`));
  bind("#resume", "Resume", () => UI.send("POST", `${base}/resume`));

  poller = UI.poll(base, render, (err) => {
    const problem = $("#problem");
    problem.textContent = err.message;
    problem.classList.remove("hidden");
  });
})();
