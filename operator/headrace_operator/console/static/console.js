// The Headrace console: plain JavaScript, no build step, no dependency but uPlot.
// Every text that comes from the API goes into the page with textContent (or an
// attribute set through the DOM), never as HTML, so nothing it holds can run.
// Once loaded, the page marks itself for tests: body[data-state=ready], each
// list row [data-name][data-phase], each chart [data-state][data-points].
"use strict";

(function () {
  const REFRESH_MS = 10000;
  const CHART_REFRESH_MS = 30000;
  const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989",
                  "#0a7f8a", "#953800", "#57606a", "#2da44e", "#e16f24", "#6639ba"];

  // ---------------------------------------------------------------- DOM helpers

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else e.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function table(headers, rows) {
    return el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows));
  }

  function card(title, ...body) {
    return el("section", { class: "card" }, el("h2", {}, title), body);
  }

  function phaseClass(phase) {
    if (phase === "Running" || phase === "Finished") return "badge ok";
    if (phase === "Failed") return "badge bad";
    if (phase === "Suspended" || phase === "Pending") return "badge";
    return "badge info";
  }

  // Conditions whose True is good, whose True is bad; the others are only facts.
  const GOOD_WHEN_TRUE = new Set(["Ready", "SnapshotHealthy"]);
  const BAD_WHEN_TRUE = new Set(["Degraded"]);

  function conditionChip(c) {
    let cls = "badge";
    if (GOOD_WHEN_TRUE.has(c.type) && c.status !== "Unknown") cls = c.status === "True" ? "badge ok" : "badge warn";
    if (BAD_WHEN_TRUE.has(c.type) && c.status !== "Unknown") cls = c.status === "True" ? "badge bad" : "badge ok";
    return el("span", { class: cls, title: c.reason || "" }, c.type + "=" + c.status);
  }

  function fmtNumber(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(2);
  }

  function fmtUnit(unit, v) {
    if (v === null || v === undefined) return "–";
    switch (unit) {
      case "percentunit": return (v * 100).toFixed(Math.abs(v) < 0.01 && v !== 0 ? 3 : 1) + "%";
      case "ops": return fmtNumber(v) + "/s";
      case "s": return v < 1 ? (v * 1000).toFixed(0) + " ms" : v.toFixed(2) + " s";
      case "bytes": return fmtNumber(v) + " B";
      case "Bps": return fmtNumber(v) + " B/s";
      default: return fmtNumber(v);
    }
  }

  function ago(iso) {
    if (!iso) return "–";
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return String(iso);
    const s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) throw new Error((body && body.error) || (r.status + " " + r.statusText));
    return body;
  }

  function setMain(...children) {
    const main = document.getElementById("main");
    main.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  }

  function stamp() {
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  // ---------------------------------------------------------------- the list

  function listRow(d) {
    const href = "/dataflows/" + encodeURIComponent(d.namespace) + "/" + encodeURIComponent(d.name);
    const snap = d.lastSnapshot;
    return el("tr", { "data-name": d.name, "data-namespace": d.namespace, "data-phase": d.phase },
      el("td", {}, d.namespace),
      el("td", {}, el("a", { href: href }, d.name)),
      el("td", {}, el("span", { class: phaseClass(d.phase) }, d.phase)),
      el("td", { class: "num" }, String(d.readyReplicas) + " / " + (d.replicas === null || d.replicas === undefined ? "–" : String(d.replicas))),
      el("td", {}, el("div", { class: "chips" }, d.conditions.map(conditionChip))),
      el("td", { class: "num" }, fmtNumber(d.lag)),
      el("td", {}, snap ? ["epoch " + String(snap.epoch) + ", ", el("span", { title: snap.time || "" }, ago(snap.time))] : "–"),
      el("td", { class: "num" }, String(d.keptSnapshots)));
  }

  async function showList() {
    document.getElementById("crumbs").textContent = "Dataflows";
    document.title = "Dataflows · Headrace";
    try {
      const body = await getJSON("/api/dataflows");
      const rows = body.dataflows.map(listRow);
      const scope = body.namespaces.length ? "namespaces " + body.namespaces.join(", ") : "all namespaces";
      setMain(
        el("h1", {}, "Dataflows", el("span", { class: "muted" }, "(" + rows.length + ", " + scope + ")")),
        el("section", { class: "card" },
          rows.length
            ? table(["Namespace", "Name", "Phase", "Ready", "Conditions", "Lag", "Last snapshot", "Kept"], rows)
            : el("p", { class: "muted" }, "No Dataflows yet.")),
        body.prometheus ? null : el("p", { class: "muted" }, "No Prometheus configured: charts and lag are off (console.prometheusUrl)."));
      document.getElementById("main").setAttribute("data-count", String(rows.length));
    } catch (e) {
      setMain(el("p", { class: "error" }, "Could not load the Dataflows: " + e.message));
    }
    stamp();
    document.body.setAttribute("data-state", "ready");
  }

  // ---------------------------------------------------------------- one Dataflow

  function facts(pairs) {
    return el("dl", { class: "facts" },
      pairs.filter((p) => p[1] !== null && p[1] !== undefined && p[1] !== "")
        .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v instanceof Node ? v : String(v))]));
  }

  function jsonBlock(obj) {
    return el("pre", {}, JSON.stringify(obj, null, 2));
  }

  function graphSection(d) {
    if (!d.graph || !d.graph.steps.length) {
      return card("Graph", el("p", { class: "muted" }, "Not available" + (d.graphError ? ": " + d.graphError : ".")));
    }
    const steps = d.graph.steps;
    const byId = new Map(steps.map((s) => [s.id, s]));
    const layer = new Map();
    function depth(s, seen) {
      if (layer.has(s.id)) return layer.get(s.id);
      if (seen.has(s.id)) return 0;
      seen.add(s.id);
      let l = 0;
      for (const f of s.from) if (byId.has(f)) l = Math.max(l, depth(byId.get(f), seen) + 1);
      layer.set(s.id, l);
      return l;
    }
    steps.forEach((s) => depth(s, new Set()));
    const columns = [];
    for (const s of steps) {
      const l = layer.get(s.id);
      (columns[l] = columns[l] || []).push(s);
    }
    const W = 170, H = 40, GX = 50, GY = 16;
    const pos = new Map();
    columns.forEach((col, x) => col.forEach((s, y) => pos.set(s.id, { x: 10 + x * (W + GX), y: 10 + y * (H + GY) })));
    const width = 20 + columns.length * (W + GX) - GX;
    const height = 20 + Math.max(...columns.map((c) => c.length)) * (H + GY) - GY;
    const root = svg("svg", { class: "graph", width: width, height: height, viewBox: "0 0 " + width + " " + height,
                              "data-steps": steps.length });
    for (const s of steps) {
      const to = pos.get(s.id);
      for (const f of s.from) {
        const from = pos.get(f);
        if (!from) continue;
        const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2, mx = (x1 + x2) / 2;
        root.appendChild(svg("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }));
      }
    }
    for (const s of steps) {
      const p = pos.get(s.id);
      const g = svg("g", { transform: `translate(${p.x},${p.y})` });
      g.appendChild(svg("title", {}, s.id + (s.substeps ? " (" + s.substeps + " substeps)" : "")));
      g.appendChild(svg("rect", { width: W, height: H, rx: 5 }));
      g.appendChild(svg("text", { x: 8, y: 17 }, s.name.length > 24 ? s.name.slice(0, 23) + "…" : s.name));
      g.appendChild(svg("text", { x: 8, y: 32, class: "type" }, s.type));
      root.appendChild(g);
    }
    const note = d.graph.source === "worker" ? null
      : el("p", { class: "muted" }, "No worker answered (" + d.graphError + "): the stateful steps of " + d.graph.source + ".");
    return card("Graph (" + d.graph.flowId + ")", note, root);
  }

  function statusSection(d) {
    const ex = d.execution || {};
    const tr = d.transition;
    return card("Status",
      facts([
        ["Phase", el("span", { class: phaseClass(d.phase) }, d.phase)],
        ["Replicas", String(d.readyReplicas) + " ready of " + String(d.replicas)],
        ["Image", d.image], ["Flow", d.flow],
        ["Generation", String(d.generation) + " (observed " + String(d.observedGeneration) + ", deployed " + String(d.deployedGeneration) + ")"],
        ["Execution", ex.id ? ex.id + ", " + ex.workerCount + " workers, started " + ago(ex.startedAt) + ", " + ex.restarts + " restarts" : null],
        ["Transition", tr ? tr.type + " " + tr.fromReplicas + " → " + tr.toReplicas + " (" + tr.stage + ", since " + ago(tr.startedAt) + ")" : "none in progress"],
        ["Lag", fmtNumber(d.lag)],
        ["Last error", d.lastError ? d.lastError.reason + ": " + d.lastError.message + " (" + ago(d.lastError.time) + ")" : null],
        ["Stopped", d.stopped ? d.stopped.reason + ": " + d.stopped.message : null],
        ["Rollback", d.rollback ? d.rollback.state + (d.rollback.message ? ": " + d.rollback.message : "") : null],
      ]),
      el("h2", { class: "sub" }, "Conditions"),
      table(["Type", "Status", "Reason", "Message", "Since"],
        d.conditionsFull.map((c) => el("tr", {}, el("td", {}, c.type), el("td", {}, conditionChip(c)),
          el("td", {}, c.reason || ""), el("td", {}, c.message || ""), el("td", {}, ago(c.lastTransitionTime))))));
  }

  function eventsSection(d) {
    if (!d.events.length) return card("Events", el("p", { class: "muted" }, "None posted by the operator replica serving this page since it started (a standby posts none)."));
    return card("Events",
      table(["When", "Type", "Reason", "Message"], d.events.slice().reverse().map((e) =>
        el("tr", {}, el("td", { title: e.time }, ago(e.time)),
          el("td", {}, el("span", { class: e.type === "Warning" ? "badge warn" : "badge" }, e.type)),
          el("td", {}, e.reason), el("td", {}, e.message)))));
  }

  function autoscalerSection(d) {
    const a = d.autoscaler;
    const rows = (a.decisions || []).slice().reverse().map((x) => el("tr", {},
      el("td", { title: x.time }, ago(x.time)), el("td", {}, x.action),
      el("td", { class: "num" }, String(x.currentReplicas) + " → " + String(x.recommendedReplicas)),
      el("td", {}, x.applied ? "yes" : (x.blocked || "no")), el("td", {}, x.reason || "")));
    const last = a.lastEvaluation;
    return card("Autoscaler (" + a.mode + ")",
      last ? facts([
        ["Last evaluation", ago(last.time) + ": " + last.action + ", recommends " + last.recommendedReplicas + (last.reason ? " (" + last.reason + ")" : "")],
        ["Utilisation", fmtUnit("percentunit", last.utilization)],
        ["Input rate", fmtUnit("ops", last.inputRate)],
        ["True processing rate", fmtUnit("ops", last.trueProcessingRate)],
        ["Backlog", fmtNumber(last.lag)],
      ]) : el("p", { class: "muted" }, "No evaluation yet."),
      rows.length ? table(["When", "Action", "Replicas", "Applied", "Why"], rows) : null);
  }

  function snapshotsSection(d) {
    const s = d.snapshot;
    const rows = d.snapshots.slice().reverse().map((k) => el("tr", {},
      el("td", {}, k.name), el("td", { class: "num" }, String(k.epoch)),
      el("td", { title: k.time || "" }, ago(k.time)), el("td", { class: "num" }, fmtUnit("bytes", k.size))));
    return card("Snapshots",
      s ? facts([["Last committed", "epoch " + s.epoch + ", " + ago(s.time)],
                 ["Bytes", s.bytes === undefined ? null : fmtUnit("bytes", s.bytes)]])
        : el("p", { class: "muted" }, "Nothing committed yet."),
      el("h2", { class: "sub" }, "Kept snapshots"),
      rows.length ? table(["Name", "Epoch", "Taken", "Size"], rows) : el("p", { class: "muted" }, "None."));
  }

  function errorsSection(d) {
    if (!d.errors.length) return null;
    return card("Item errors", table(["Step", "Policy", "Count", "Last seen"], d.errors.map((e) =>
      el("tr", {}, el("td", {}, e.stepId), el("td", {}, e.policy), el("td", { class: "num" }, String(e.count)), el("td", {}, ago(e.lastSeen))))));
  }

  // ---------------------------------------------------------------- charts

  const plots = new Map();

  function chartBox(c) {
    return el("div", { class: "chart", "data-panel": c.name, "data-state": "loading", "data-points": "0" },
      el("h3", {}, c.title), el("p", { class: "desc" }, c.description), el("div", { class: "note" }, "Loading…"));
  }

  async function loadChart(ns, name, box, range) {
    const panel = box.getAttribute("data-panel");
    const url = "/api/dataflows/" + encodeURIComponent(ns) + "/" + encodeURIComponent(name) +
      "/series?panel=" + encodeURIComponent(panel) + "&range=" + encodeURIComponent(range);
    let body;
    try {
      body = await getJSON(url);
    } catch (e) {
      box.replaceChildren(box.children[0], box.children[1], el("div", { class: "note error" }, e.message));
      box.setAttribute("data-state", "error");
      return;
    }
    const points = body.series.reduce((n, s) => n + s.points, 0);
    box.setAttribute("data-points", String(points));
    box.setAttribute("data-series", String(body.series.length));
    const old = plots.get(panel);
    if (old) { old.destroy(); plots.delete(panel); }
    box.replaceChildren(box.children[0], box.children[1]);
    if (!body.series.length || typeof uPlot === "undefined") {
      box.appendChild(el("div", { class: "note" }, body.series.length ? "uPlot did not load." : "No data in this range."));
      box.setAttribute("data-state", body.series.length ? "error" : "empty");
      return;
    }
    const holder = el("div", {});
    box.appendChild(holder);
    const width = Math.max(300, box.clientWidth - 20);
    const opts = {
      width: width, height: 200,
      legend: { live: false },
      scales: { x: { time: true } },
      axes: [{}, { size: 70, values: (u, vals) => vals.map((v) => fmtUnit(body.unit, v)) }],
      series: [{}].concat(body.series.map((s, i) => ({
        label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
        value: (u, v) => fmtUnit(body.unit, v),
      }))),
    };
    const dataCols = [body.times].concat(body.series.map((s) => s.values));
    plots.set(panel, new uPlot(opts, dataCols, holder));
    box.setAttribute("data-state", "loaded");
  }

  async function loadCharts(ns, name) {
    const range = document.getElementById("range").value;
    const boxes = Array.from(document.querySelectorAll(".chart"));
    await Promise.all(boxes.map((b) => loadChart(ns, name, b, range)));
  }

  async function showDataflow(ns, name, first) {
    const crumbs = document.getElementById("crumbs");
    crumbs.replaceChildren(el("a", { href: "/" }, "Dataflows"), " / " + ns + " / " + name);
    document.title = name + " · Headrace";
    document.getElementById("range-picker").hidden = false;
    let d;
    try {
      d = await getJSON("/api/dataflows/" + encodeURIComponent(ns) + "/" + encodeURIComponent(name));
    } catch (e) {
      setMain(el("p", { class: "error" }, "Could not load " + ns + "/" + name + ": " + e.message));
      stamp();
      document.body.setAttribute("data-state", "ready");
      return;
    }
    let charts = document.getElementById("charts");
    if (!charts) {
      charts = el("div", { class: "grid", id: "charts" }, d.charts.map(chartBox));
    }
    setMain(
      el("h1", { "data-name": d.name, "data-phase": d.phase }, d.namespace + " / " + d.name,
         el("span", { class: phaseClass(d.phase) }, d.phase)),
      statusSection(d),
      graphSection(d),
      card("Charts", charts),
      eventsSection(d),
      autoscalerSection(d),
      snapshotsSection(d),
      errorsSection(d));
    stamp();
    if (first) {
      await loadCharts(ns, name);
      document.body.setAttribute("data-state", "ready");
    }
  }

  // ---------------------------------------------------------------- routing

  function route() {
    const m = window.location.pathname.match(/^\/dataflows\/([^/]+)\/([^/]+)\/?$/);
    if (!m) {
      showList();
      setInterval(showList, REFRESH_MS);
      return;
    }
    const ns = decodeURIComponent(m[1]), name = decodeURIComponent(m[2]);
    showDataflow(ns, name, true);
    setInterval(() => showDataflow(ns, name, false), REFRESH_MS);
    setInterval(() => loadCharts(ns, name), CHART_REFRESH_MS);
    document.getElementById("range").addEventListener("change", () => loadCharts(ns, name));
  }

  route();
})();
