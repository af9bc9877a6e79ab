// gearstash web: fills the server-rendered pages from the JSON API and the event streams.
// Job output is untrusted: it is only ever written with textContent (never as markup), and
// every URL it goes into is encoded. Live updates pause while the tab is hidden.
"use strict";

(function () {
  const body = document.body;
  const base = body.dataset.base || "";
  const csrf = body.dataset.csrf || "";
  const SVG = "http://www.w3.org/2000/svg";

  // ------------------------------------------------------------------ helpers

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  async function post(url, fields) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "x-csrf-token": csrf, "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(fields || {}),
    });
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  // bytes as the API sends them: a string (UTF-8) or {"base64": "..."}
  function bytesText(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "string") return value;
    if (typeof value === "object" && typeof value.base64 === "string") {
      const raw = atob(value.base64);
      const hex = [];
      for (let i = 0; i < raw.length && i < 4096; i++) hex.push(raw.charCodeAt(i).toString(16).padStart(2, "0"));
      return "binary, " + raw.length + " bytes\nhex: " + hex.join(" ") + (raw.length > 4096 ? " …" : "") +
        "\nbase64: " + value.base64;
    }
    return JSON.stringify(value);
  }

  function when(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const d = new Date(seconds * 1000);
    return d.toLocaleString();
  }

  function duration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "";
    if (seconds < 60) return Math.round(seconds) + " s";
    if (seconds < 3600) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function jobURL(ref) {
    return base + "/jobs/" + encodeURIComponent(ref);
  }

  const live = document.getElementById("live");
  function setLive(on) {
    if (!live) return;
    live.className = "live " + (on === true ? "on" : on === false ? "off" : "paused");
    live.title = on === true ? "live" : on === false ? "not live" : "paused (tab hidden)";
  }

  // Runs fn now and every `ms` while the tab is visible; paused while hidden.
  function every(ms, fn) {
    let timer = null;
    const run = async () => {
      timer = null;
      try { await fn(); setLive(true); } catch (e) { setLive(false); }
      if (document.visibilityState === "visible") timer = setTimeout(run, ms);
    };
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") { if (timer === null) run(); }
      else { if (timer !== null) { clearTimeout(timer); timer = null; } setLive(null); }
    });
    run();
  }

  function progressBar(numerator, denominator) {
    const outer = el("div", null, "progress small");
    const inner = el("div", null, "bar");
    const pct = denominator > 0 ? Math.max(0, Math.min(100, (100 * numerator) / denominator)) : 0;
    inner.style.width = pct.toFixed(1) + "%";
    outer.appendChild(inner);
    outer.title = denominator > 0 ? numerator + " / " + denominator : "no status yet";
    return outer;
  }

  function stateBadge(state) {
    return el("span", state, "state " + state);
  }

  function showError(message) {
    const line = document.getElementById("error-line");
    if (line) { line.textContent = message; line.hidden = false; }
  }

  // ------------------------------------------------------------------ overview

  function drawBars(box, series) {
    clear(box);
    const n = series.complete.length;
    const max = Math.max(1, ...series.complete.map((c, i) => c + series.failed[i]));
    const width = 600, height = 120;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", class: "bars" });
    const w = width / n;
    for (let i = 0; i < n; i++) {
      const c = series.complete[i], f = series.failed[i];
      const hc = (height * c) / max, hf = (height * f) / max;
      if (c) chart.appendChild(svg("rect", { x: i * w, y: height - hc, width: Math.max(1, w - 1), height: hc, class: "complete" }));
      if (f) chart.appendChild(svg("rect", { x: i * w, y: height - hc - hf, width: Math.max(1, w - 1), height: hf, class: "failed" }));
    }
    box.appendChild(chart);
  }

  function drawCounts(box, counts, link) {
    clear(box);
    for (const [state, count] of Object.entries(counts)) {
      const item = el(link ? "a" : "span", null, "count " + state);
      if (link) item.href = base + "/jobs?state=" + encodeURIComponent(state);
      item.appendChild(el("span", count, "n"));
      item.appendChild(el("span", state, "label"));
      box.appendChild(item);
    }
  }

  function drawServers(box, servers) {
    clear(box);
    if (!servers.length) box.appendChild(el("p", "No job server configured.", "muted"));
    for (const s of servers) {
      const section = el("div", null, "server");
      const head = el("h3", s.server);
      head.appendChild(el("span", s.reachable ? " reachable" : " unreachable", s.reachable ? "ok" : "bad"));
      section.appendChild(head);
      if (!s.reachable) {
        section.appendChild(el("p", s.error || "", "muted"));
      } else {
        const table = el("table", null, "functions");
        const hr = el("tr");
        for (const h of ["Function", "Queued", "Running", "Workers"]) hr.appendChild(el("th", h));
        table.appendChild(hr);
        for (const f of s.functions) {
          const tr = el("tr");
          for (const v of [f.function, f.queued, f.running, f.workers]) tr.appendChild(el("td", v));
          table.appendChild(tr);
        }
        section.appendChild(table);
        section.appendChild(el("p", s.workers.length + " worker connection(s)", "muted"));
      }
      box.appendChild(section);
    }
  }

  function overview() {
    const counts = document.getElementById("counts");
    const chart = document.getElementById("throughput");
    const servers = document.getElementById("servers");
    let round = 0;
    every(3000, async () => {
      const tasks = [getJSON(base + "/api/servers").then((d) => drawServers(servers, d.servers))];
      if (counts) tasks.push(getJSON(base + "/api/counts").then((d) => drawCounts(counts, d, true)));
      if (chart && round % 5 === 0) tasks.push(getJSON(base + "/api/throughput").then((d) => drawBars(chart, d)));
      round++;
      await Promise.all(tasks);
    });
    const submit = document.getElementById("submit");
    if (submit) submit.addEventListener("submit", async (e) => {
      e.preventDefault();
      const out = document.getElementById("submitted");
      clear(out);
      const fields = {};
      for (const name of ["function", "workload", "unique"]) {
        const v = submit.elements[name].value;
        if (v) fields[name] = v;
      }
      try {
        const d = await post(base + "/api/submit", fields);
        const a = el("a", d.ref);
        a.href = jobURL(d.ref);
        out.appendChild(el("span", "Submitted: "));
        out.appendChild(a);
      } catch (err) { out.textContent = err.message; }
    });
    const purge = document.getElementById("purge");
    if (purge) purge.addEventListener("click", async () => {
      const out = document.getElementById("purged");
      try { out.textContent = (await post(base + "/api/purge")).purged + " purged"; }
      catch (e) { out.textContent = e.message; }
    });
  }

  // ------------------------------------------------------------------ jobs list

  function jobRow(job) {
    const tr = el("tr", null, "job " + job.state);
    const name = el("td");
    const a = el("a", bytesText(job.handle));
    a.href = jobURL(job.ref);
    name.appendChild(a);
    name.appendChild(el("div", job.server, "muted small"));
    tr.appendChild(name);
    tr.appendChild(el("td", bytesText(job.function)));
    const st = el("td");
    st.appendChild(stateBadge(job.state));
    tr.appendChild(st);
    const pr = el("td");
    if (job.denominator > 0 || job.state === "running") {
      pr.appendChild(progressBar(job.numerator, job.denominator));
    }
    tr.appendChild(pr);
    tr.appendChild(el("td", job.attempt));
    tr.appendChild(el("td", when(job.updated_at), "small"));
    return tr;
  }

  function jobs() {
    const lookup = document.getElementById("lookup");
    lookup.addEventListener("submit", (e) => {
      e.preventDefault();
      const ref = lookup.elements.ref.value.trim();
      if (ref) location.href = jobURL(ref);
    });
    const filters = document.getElementById("filters");
    if (!filters) return;
    const params = new URLSearchParams(location.search);
    for (const name of ["state", "function", "server", "q"]) {
      if (params.get(name)) filters.elements[name].value = params.get(name);
    }
    filters.addEventListener("submit", (e) => {
      e.preventDefault();
      const q = new URLSearchParams();
      for (const name of ["state", "function", "server", "q"]) {
        const v = filters.elements[name].value.trim();
        if (v) q.set(name, v);
      }
      location.search = q.toString();
    });
    const rows = document.getElementById("rows");
    const counts = document.getElementById("counts");
    const more = document.getElementById("more");
    const query = new URLSearchParams();
    for (const name of ["state", "function", "server", "q"]) if (params.get(name)) query.set(name, params.get(name));
    let older = [];  // rows of later pages, kept as loaded
    let next = null;
    async function first() {
      const q = new URLSearchParams(query);
      q.set("counts", "1");
      const page = await getJSON(base + "/api/jobs?" + q.toString());
      clear(rows);
      for (const job of page.jobs) rows.appendChild(jobRow(job));
      for (const tr of older) rows.appendChild(tr);
      if (!older.length) next = page.cursor;
      more.hidden = !next;
      drawCounts(counts, page.counts, false);
      if (!page.jobs.length) {
        const tr = el("tr");
        const td = el("td", "No jobs.", "muted");
        td.colSpan = 6;
        tr.appendChild(td);
        rows.appendChild(tr);
      }
    }
    more.addEventListener("click", async () => {
      if (!next) return;
      const q = new URLSearchParams(query);
      q.set("cursor", next);
      const page = await getJSON(base + "/api/jobs?" + q.toString());
      for (const job of page.jobs) { const tr = jobRow(job); older.push(tr); rows.appendChild(tr); }
      next = page.cursor;
      more.hidden = !next;
    });
    every(2000, first);
  }

  // ------------------------------------------------------------------ one job

  function job() {
    const ref = body.dataset.ref;
    const jsonURL = ref ? base + "/api/jobs/" + encodeURIComponent(ref) : body.dataset.json;
    const eventsURL = ref ? jsonURL + "/events" : body.dataset.events;
    const view = { status: [], chunks: 0, warnings: 0, attempt: null, state: "unknown", ref: ref || "", restarts: 0 };
    const $ = (id) => document.getElementById(id);
    let source = null;
    let lastId = "";
    let finished = false;

    function setState(state) {
      view.state = state;
      const badge = $("state");
      badge.textContent = state;
      badge.className = "state " + state;
      if (view.workload !== undefined) resubmittable();
    }

    function facts(data) {
      const dl = $("facts");
      clear(dl);
      const rows = [
        ["Function", bytesText(data.function)],
        ["Server", data.server],
        ["Handle", "handle" in data ? bytesText(data.handle) : undefined],
        ["Unique", "unique" in data ? bytesText(data.unique) : undefined],
        ["Attempt", data.attempt],
        ["Restarts", Math.max(0, (data.attempt || 0) - 1)],
        ["Worker", "worker" in data ? data.worker || "–" : undefined],
        ["Started", when(data.started_at)],
        ["Finished", when(data.finished_at)],
        ["Updated", when(data.updated_at)],
      ];
      for (const [k, v] of rows) {
        if (v === undefined) continue;  // a token view leaves out server, handle, unique, worker
        dl.appendChild(el("dt", k));
        dl.appendChild(el("dd", v));
      }
    }

    function progress() {
      const points = view.status.filter((p) => p.denominator > 0);
      const bar = $("bar");
      if (!points.length) {
        bar.style.width = view.state === "complete" ? "100%" : "0%";
        $("percent").textContent = view.state === "complete" ? "done" : "no progress reported yet";
        $("eta").textContent = "";
        drawHistory(points);
        return;
      }
      const last = points[points.length - 1];
      const frac = Math.max(0, Math.min(1, last.numerator / last.denominator));
      bar.style.width = (100 * frac).toFixed(1) + "%";
      $("percent").textContent = (100 * frac).toFixed(1) + " % (" + last.numerator + " / " + last.denominator + ")";
      let eta = "";
      if (view.state === "running" && points.length >= 2 && frac < 1) {
        const first = points[0];
        const f0 = first.numerator / first.denominator;
        const rate = (frac - f0) / (last.at - first.at);
        if (rate > 0) eta = "about " + duration((1 - frac) / rate - (Date.now() / 1000 - last.at)) + " left";
      }
      $("eta").textContent = eta;
      drawHistory(points);
    }

    function drawHistory(points) {
      const box = $("chart");
      clear(box);
      if (points.length < 2) return;
      const width = 600, height = 80;
      const t0 = points[0].at, t1 = points[points.length - 1].at;
      const span = Math.max(t1 - t0, 1e-6);
      const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", class: "history" });
      const coords = points.map((p) => {
        const x = (width * (p.at - t0)) / span;
        const y = height - height * Math.min(1, p.numerator / p.denominator);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      chart.appendChild(svg("polyline", { points: coords.join(" "), class: "line" }));
      box.appendChild(chart);
    }

    function addChunk(list, value) {
      const li = el("li");
      li.appendChild(el("pre", bytesText(value)));
      $(list).appendChild(li);
    }

    function restart(attempt) {
      view.attempt = attempt;
      view.status = [];
      view.chunks = view.warnings = 0;
      clear($("chunks"));
      clear($("warnings"));
      $("warnings-box").hidden = true;
      progress();
    }

    function counters() {
      $("chunk-count").textContent = "(" + view.chunks + " chunk" + (view.chunks === 1 ? "" : "s") + ")";
    }

    function ending(data) {
      if (data.result !== null && data.result !== undefined) {
        $("result").textContent = bytesText(data.result);
        $("result-box").hidden = false;
      }
      if (data.error) {
        $("exception").textContent = data.error.kind + ": " + data.error.message;
        $("traceback").textContent = data.error.traceback || "";
        $("exception-box").hidden = false;
      }
    }

    // the captured workload (a token's view has none: the box stays hidden)
    function workload(data) {
      if (!("workload" in data)) return;
      const pre = $("workload");
      const captured = data.workload !== null && data.workload !== undefined;
      pre.textContent = captured ? bytesText(data.workload) : "not captured (the worker ran without --capture-workload, or it was over the size cap)";
      pre.className = captured ? "" : "muted";
      $("workload-box").hidden = false;
      view.workload = captured;
      resubmittable();
    }

    function resubmittable() {
      const button = $("resubmit");
      button.hidden = !(body.dataset.admin === "yes" && ref && view.workload && ["failed", "lost"].includes(view.state));
    }

    function whole(data) {
      view.ref = data.ref || view.ref;
      $("title").textContent = "handle" in data ? bytesText(data.handle) : "Shared job: " + bytesText(data.function);
      setState(data.state);
      facts(data);
      workload(data);
      view.attempt = data.attempt;
      view.status = (data.status || []).slice();
      clear($("chunks"));
      clear($("warnings"));
      for (const c of data.data || []) addChunk("chunks", c);
      for (const w of data.warnings || []) addChunk("warnings", w);
      view.chunks = (data.data || []).length;
      view.warnings = (data.warnings || []).length;
      $("warnings-box").hidden = view.warnings === 0;
      counters();
      ending(data);
      progress();
      // the stream starts after what this page already shows (attempt 0: nothing stored yet)
      lastId = (data.attempt || 0) + "." + view.chunks + "." + view.warnings + "." + view.status.length;
    }

    function handlers(es) {
      const note = (e) => { if (e.lastEventId) lastId = e.lastEventId; };
      es.addEventListener("open", () => setLive(true));
      es.addEventListener("error", () => { if (!finished) setLive(false); });
      es.addEventListener("state", (e) => {
        note(e);
        const d = JSON.parse(e.data);
        setState(d.state);
        if (d.attempt !== view.attempt && view.attempt !== null && view.attempt !== 0 && d.attempt) restart(d.attempt);
        view.attempt = d.attempt;
        const dl = $("facts");
        if (d.function !== undefined) facts(Object.assign({}, currentFacts(), d));
        if (!dl.firstChild) facts(d);
        progress();
      });
      es.addEventListener("restart", (e) => { note(e); restart(JSON.parse(e.data).attempt); });
      es.addEventListener("status", (e) => { note(e); view.status.push(JSON.parse(e.data)); progress(); });
      es.addEventListener("chunk", (e) => {
        note(e);
        addChunk("chunks", JSON.parse(e.data).data);
        view.chunks++;
        counters();
      });
      es.addEventListener("warning", (e) => {
        note(e);
        addChunk("warnings", JSON.parse(e.data).data);
        view.warnings++;
        $("warnings-box").hidden = false;
      });
      es.addEventListener("final", (e) => {
        note(e);
        const d = JSON.parse(e.data);
        finished = true;
        setState(d.state);
        facts(d);
        ending(d);
        progress();
        es.close();
        source = null;
        setLive(null);
        live.title = "finished";
      });
    }

    let known = {};
    function currentFacts() { return known; }

    function connect() {
      if (finished || source) return;
      const url = eventsURL + (lastId ? "?last_event_id=" + encodeURIComponent(lastId) : "");
      source = new EventSource(url);
      handlers(source);
    }

    function disconnect() {
      if (source) { source.close(); source = null; }
      setLive(null);
    }

    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") connect(); else disconnect();
    });

    getJSON(jsonURL).then((data) => {
      known = data;
      whole(data);
      if (["complete", "failed", "expired"].includes(data.state)) { finished = true; setLive(null); return; }
      if (document.visibilityState === "visible") connect();
    }).catch((e) => { showError(e.message); setLive(false); });

    if ($("copy")) $("copy").addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(view.ref); $("copy").textContent = "Copied"; }
      catch (e) { showError("copy failed: " + view.ref); }
    });
    if (body.dataset.tokens === "yes") {
      const share = $("share");
      share.hidden = false;
      share.addEventListener("click", async () => {
        try {
          const d = await post(base + "/api/jobs/" + encodeURIComponent(view.ref) + "/share");
          const p = $("shared");
          clear(p);
          const a = el("a", location.origin + d.path);
          a.href = d.path;
          p.appendChild(el("span", "Link valid for " + duration(d.ttl) + ": "));
          p.appendChild(a);
          p.hidden = false;
        } catch (e) { showError(e.message); }
      });
    }
    if (body.dataset.admin === "yes" && ref) {
      $("resubmit").addEventListener("click", async () => {
        if (!confirm("Submit this job again with the same function and workload?")) return;
        try { const d = await post(jsonURL + "/resubmit"); location.assign(d.path); }
        catch (e) { showError(e.message); }
      });
      const forget = $("forget");
      forget.hidden = false;
      forget.addEventListener("click", async () => {
        if (!confirm("Forget this job's stored record?")) return;
        try { const d = await post(jsonURL + "/forget"); showError(d.forgotten + " record(s) forgotten"); }
        catch (e) { showError(e.message); }
      });
    }
  }

  const pages = { overview, jobs, job };
  const start = pages[body.dataset.page];
  if (start) start();
})();
