// jobctl live timeline: connects to the feed (jobctl/feed/SCHEMA.md) and
// draws one lane per domain. Plain ES2020, no build step.
"use strict";

(() => {
  const FEED_SCHEMA = 1;
  const TRACE_SCHEMA = 2; // jobctl.TRACE_SCHEMA_VERSION
  const SAMPLES = 2000; // latency samples kept per statistic
  const KEEP_S = 130; // history kept for the timeline (the widest window), in seconds
  const KEEP_MAX = 20000; // intervals (and marks) kept per lane at most
  const SLOTS = 3; // rows for concurrent regular jobs
  const LABEL_W = 200;
  const ROWS = { async: [0, 18], gate: [21, 8], jobs: [32, SLOTS * 8], wait: [58, 4], monitor: [64, 8] };
  const LANE_H = 84;
  const AXIS_H = 18;

  const $ = (id) => document.getElementById(id);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const OUTCOME_MARK = { error: "fail", aborted: "abort", destroyed: "destroy", cancelled: "cancelled" };
  const OUTCOME_WORDS = { ok: "finished", error: "failed", cancelled: "was cancelled", aborted: "was aborted", destroyed: "was ended by destroy" };
  function bytes(n) {
    if (typeof n !== "number") return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
  }
  // A trace event in plain words (the kinds: jobctl/_core/_trace.py, TraceKind).
  function words(e) {
    const d = e.detail || {};
    const job = e.job ? `${e.job} job` : "a job";
    switch (e.kind) {
      case "job.wait": return `${job} waits to begin`;
      case "job.wait_failed": return `${job} gave up waiting (${d.result || "?"})`;
      case "job.begin": return `${job} began${d.in_section ? " inside the window" : ""}`;
      case "job.end": return `${job} ${OUTCOME_WORDS[d.outcome] || "ended"}`;
      case "async.begin": return `${e.job || "async job"} started`;
      case "async.end": return `${e.job || "async job"} ${OUTCOME_WORDS[d.outcome] || "ended"}${d.error ? ": " + d.error : ""}`;
      case "async.phase": return `now in phase ${d.phase}`;
      case "async.allowed": return `jobs allowed in its windows: ${(d.allowed || []).join(", ") || "none"}`;
      case "async.progress": return `progress${progressText(d.progress) ? ": " + progressText(d.progress) : ""}`;
      case "gate.open": return "window opened: allowed jobs may begin";
      case "gate.close": return "window closing: no new job may begin";
      case "barrier.start": return `waiting for ${(d.pending || []).length} job(s) to finish`;
      case "barrier.end": return `jobs of the window finished (waited ${typeof d.waited === "number" ? (d.waited * 1000).toFixed(1) + " ms" : "?"})`;
      case "monitor.wait": return `${job} waits for the monitor`;
      case "monitor.wait_failed": return `${job} gave up waiting for the monitor`;
      case "monitor.enter": return `${job} took the monitor`;
      case "monitor.exit": return `${job} let go of the monitor`;
      case "command.sent": return `sent ${d.command || "a command"} to QEMU`;
      case "command.answered": return `QEMU answered ${d.command || "a command"}${d.error ? " with an error: " + d.error : ""}`;
      case "abort.request": return `abort requested${d.reason ? ": " + d.reason : ""}`;
      case "destroy.request": return "destroy requested";
      default: return e.kind.replace(/[._]/g, " ");
    }
  }
  function progressText(p) {
    if (!p || typeof p !== "object") return "";
    const parts = [];
    if (typeof p.percent === "number") parts.push(`${Math.round(p.percent)}%`);
    else if (p.total_mib) parts.push(`${Math.round((100 * p.transferred_mib) / p.total_mib)}%`);
    if (typeof p.remaining === "number") parts.push(`${bytes(p.remaining)} left`);
    if (p.status && p.status !== "active") parts.push(p.status);
    return parts.join(", ");
  }
  // A domain named "vm@host" (as jobctl demo and serve name them) is on that host.
  const vmOf = (name) => name.split("@")[0];
  const hostOf = (name) => (name.includes("@") ? name.slice(name.lastIndexOf("@") + 1) : "");
  const esc = (s) =>
    String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  // -- model ---------------------------------------------------------------

  class Lane {
    constructor(name) {
      this.name = name;
      this.intervals = []; // {key, row, cls, t0, t1, label, title, slot, id}
      this.open = new Map(); // key -> interval
      this.marks = []; // {row, cls, t, title}
      this.events = 0;
      this.asyncJob = null; // {id, job, owner}
      this.phase = null;
      this.phases = 0;
      this.progress = null;
      this.lastError = null; // {t, text}
      this.lastEnd = null; // {job, outcome, t}
    }
    begin(key, t, props) {
      this.end(key, t);
      const iv = Object.assign({ key, t0: t, t1: null, label: "", title: "" }, props);
      this.open.set(key, iv);
      this.intervals.push(iv);
      return iv;
    }
    end(key, t) {
      const iv = this.open.get(key);
      if (iv) {
        iv.t1 = Math.max(t, iv.t0);
        this.open.delete(key);
      }
      return iv;
    }
    freeSlot() {
      const used = new Set();
      for (const iv of this.open.values()) if (iv.row === "jobs") used.add(iv.slot);
      for (let s = 0; s < SLOTS; s++) if (!used.has(s)) return s;
      return SLOTS - 1;
    }
    mark(row, cls, t, title) {
      this.marks.push({ row, cls, t, title });
    }
    prune(before) {
      this.intervals = this.intervals.filter((iv) => iv.t1 === null || iv.t1 >= before);
      this.marks = this.marks.filter((m) => m.t >= before);
      const cut = this.intervals.length - KEEP_MAX;
      if (cut > 0) this.intervals = this.intervals.filter((iv, i) => i >= cut || iv.t1 === null);
      if (this.marks.length > KEEP_MAX) this.marks = this.marks.slice(-KEEP_MAX);
    }
  }

  const stats = {};
  for (const name of ["query_idle", "query_async", "wait_idle", "wait_async", "barrier"]) stats[name] = [];
  function sample(name, seconds) {
    const list = stats[name];
    list.push(seconds);
    if (list.length > SAMPLES) list.shift();
  }

  const ui = {
    lanes: new Map(),
    offset: null, // server clock minus local clock, seconds
    wallOffset: null, // wall-clock (UTC, s) minus the server's loop clock
    past: 0, // events of the recent past received on connecting
    seq: 0, // the last trace event applied (or covered by a snapshot)
    pendingStatus: null, // a status message ahead of the events drawn
    window: 30,
    pausedAt: null,
    events: 0,
    dropped: 0,
    recent: [],
    lastT: null, // time of the last event or snapshot applied
    gapStart: null, // history is lost from here until the next snapshot
    gaps: [], // {t0, t1}: periods whose events never arrived
  };

  const localNow = () => performance.now() / 1000;
  const serverNow = () => (ui.offset === null ? 0 : localNow() + ui.offset);
  function syncClock(t) {
    // The server's clock as seen now; keep the latest estimate that is not ahead of events.
    const offset = t - localNow();
    if (ui.offset === null || offset > ui.offset) ui.offset = offset;
  }

  // A loop-clock time as a local wall-clock time, with milliseconds.
  function clock(t, withMs = true) {
    if (ui.wallOffset === null) return t.toFixed(3);
    const d = new Date((t + ui.wallOffset) * 1000);
    const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withMs ? `${hms}.${pad(d.getMilliseconds(), 3)}` : hms;
  }
  const isoOf = (t) => (ui.wallOffset === null ? "" : new Date((t + ui.wallOffset) * 1000).toISOString());

  function lane(name) {
    let l = ui.lanes.get(name);
    if (!l) {
      l = new Lane(name);
      ui.lanes.set(name, l);
    }
    return l;
  }

  function who(e) {
    return `${e.job || "?"} #${e.job_id}${e.owner ? " by " + e.owner : ""}`;
  }

  function applyEvent(e, past) {
    const l = lane(e.domain);
    const t = e.t;
    const d = e.detail || {};
    ui.lastT = t;
    l.events += 1;
    ui.events += 1;
    switch (e.kind) {
      case "job.wait":
        l.begin("w" + e.job_id, t, { row: "wait", cls: "wait", title: `${who(e)} waiting`, during: !!l.asyncJob });
        break;
      case "job.wait_failed":
        l.end("w" + e.job_id, t);
        l.mark("jobs", d.result === "cancelled" ? "cancelled" : "fail", t, `${who(e)}: ${d.result}`);
        if (d.result !== "cancelled") l.lastError = { t, text: words(e) };
        break;
      case "job.begin": {
        const wait = l.end("w" + e.job_id, t);
        const during = !!l.asyncJob;
        if (e.job === "QUERY") {
          if (wait) sample(wait.during ? "wait_async" : "wait_idle", t - wait.t0);
          else if (!d.waited) sample(during ? "wait_async" : "wait_idle", 0);
        }
        const query = e.job === "QUERY" ? " query" : "";
        l.begin("j" + e.job_id, t, {
          row: "jobs",
          cls: "job" + query + (d.in_section ? " in-section" : ""),
          slot: l.freeSlot(),
          title: `${who(e)}${d.in_section ? " (in window)" : ""}`,
          job: e.job,
          during,
        });
        break;
      }
      case "job.end": {
        const iv = l.end("j" + e.job_id, t);
        if (iv) {
          if (d.outcome && d.outcome !== "ok") iv.cls += " " + d.outcome;
          if (d.outcome === "error") l.lastError = { t, text: `${e.job} job failed${d.error ? ": " + d.error : ""}` };
          if (iv.job === "QUERY") sample(iv.during ? "query_async" : "query_idle", t - iv.t0);
        }
        break;
      }
      case "async.begin":
        l.end("w" + e.job_id, t);
        l.asyncJob = { id: e.job_id, job: e.job, owner: e.owner };
        l.phase = null;
        l.progress = null;
        l.destination = null;
        l.begin("a", t, { row: "async", cls: "async", id: e.job_id, title: who(e) });
        break;
      case "async.end":
        for (const key of ["p", "g", "b", "a"]) l.end(key, t);
        if (d.outcome && d.outcome !== "ok") l.mark("async", OUTCOME_MARK[d.outcome] || "fail", t, `${who(e)}: ${words(e)}`);
        if (d.outcome === "error" || d.outcome === "aborted" || d.outcome === "destroyed") l.lastError = { t, text: words(e) };
        l.lastEnd = { job: e.job, outcome: d.outcome, t };
        l.asyncJob = null;
        l.progress = null;
        l.phase = null;
        break;
      case "async.phase":
        l.phase = d.phase;
        l.phases += 1;
        l.begin("p", t, {
          row: "async",
          id: e.job_id + ":" + d.phase,
          cls: "phase" + (l.phases % 2 ? " odd" : ""),
          label: d.phase,
          title: `phase ${d.phase}`,
        });
        break;
      case "async.progress":
        l.progress = d.progress;
        break;
      case "gate.open":
        l.begin("g", t, { row: "gate", cls: "window", title: "interruptible window" });
        break;
      case "gate.close":
        l.end("g", t);
        break;
      case "barrier.start":
        l.begin("b", t, { row: "gate", cls: "barrier", title: `barrier: ${(d.pending || []).length} job(s)` });
        break;
      case "barrier.end": {
        const iv = l.end("b", t);
        if (iv) iv.title = `barrier waited ${(d.waited * 1000).toFixed(1)} ms`;
        if (typeof d.waited === "number") sample("barrier", d.waited);
        break;
      }
      case "monitor.enter": {
        const byAsync = l.asyncJob && l.asyncJob.id === e.job_id;
        l.begin("m", t, { row: "monitor", cls: "monitor" + (byAsync ? " by-async" : ""), id: e.job_id, title: `monitor: ${who(e)}` });
        break;
      }
      case "monitor.exit": {
        const iv = l.open.get("m");
        if (iv && iv.id === e.job_id) l.end("m", t);
        break;
      }
      case "command.sent":
        l.mark("monitor", "command", t, `${d.command} (${who(e)})`);
        break;
      case "abort.request":
        l.mark("async", "abort", t, `abort requested: ${d.reason}`);
        break;
      case "destroy.request":
        l.mark("async", "destroy", t, "destroy requested");
        break;
      default:
        break; // async.allowed, command.answered: shown in the recent list only
    }
    ui.recent.unshift(Object.assign({ past: !!past }, e));
    if (ui.recent.length > 30) ui.recent.pop();
  }

  // A snapshot says what is open now: close what is not, open what is missing.
  // After lost events, what closed did so at some unknown time in the gap:
  // it is closed where the gap starts, and the gap is drawn.
  function applySnapshot(s) {
    const t = ui.gapStart === null ? s.t : ui.gapStart;
    if (ui.gapStart !== null) ui.gaps.push({ t0: ui.gapStart, t1: s.t });
    ui.gapStart = null;
    ui.lastT = s.t;
    const seen = new Set();
    for (const dom of s.domains) {
      seen.add(dom.name);
      const l = lane(dom.name);
      const want = new Map();
      const a = dom.async_job;
      if (a) {
        want.set("a", { id: a.id, props: { row: "async", cls: "async", id: a.id, title: who(a) }, since: a.since });
        if (a.phase) want.set("p", { id: a.id + ":" + a.phase, props: { row: "async", cls: "phase", id: a.id + ":" + a.phase, label: a.phase, title: `phase ${a.phase}` }, since: a.phase_since });
        l.asyncJob = { id: a.id, job: a.job, owner: a.owner };
        l.phase = a.phase;
        l.progress = a.progress;
      } else {
        l.asyncJob = null;
        l.phase = null;
      }
      const last = dom.last_async;
      if (last && last.outcome !== "ok" && (!l.lastError || l.lastError.t < last.t)) {
        l.lastError = { t: last.t, text: `${last.job} ${OUTCOME_WORDS[last.outcome] || "ended"}${last.error ? ": " + last.error : ""}` };
      }
      if (last && (!l.lastEnd || l.lastEnd.t < last.t)) l.lastEnd = { job: last.job, outcome: last.outcome, t: last.t };
      if (dom.interruptible) want.set("g", { id: "g", props: { row: "gate", cls: "window", id: "g", title: "interruptible window" }, since: dom.interruptible.since });
      if (dom.barrier) want.set("b", { id: "b", props: { row: "gate", cls: "barrier", id: "b", title: "barrier" }, since: dom.barrier.since });
      if (dom.monitor) want.set("m", { id: dom.monitor.id, props: { row: "monitor", cls: "monitor", id: dom.monitor.id, title: `monitor: ${who(dom.monitor)}` }, since: dom.monitor.since });
      for (const j of dom.regular_jobs) {
        const query = j.job === "QUERY" ? " query" : "";
        want.set("j" + j.id, { id: j.id, props: { row: "jobs", cls: "job" + query, id: j.id, job: j.job, title: who(j), during: !!a }, since: j.since });
      }
      for (const w of dom.waiters) want.set("w" + w.id, { id: w.id, props: { row: "wait", cls: "wait", id: w.id, title: `${who(w)} waiting`, during: !!a }, since: w.since });
      for (const [key, iv] of [...l.open]) {
        const w = want.get(key);
        if (!w || (iv.id !== undefined && iv.id !== w.id)) l.end(key, Math.min(t, w ? w.since : t));
      }
      for (const [key, w] of want) {
        if (l.open.has(key)) continue;
        const props = Object.assign({}, w.props);
        if (props.row === "jobs") props.slot = l.freeSlot();
        l.begin(key, Math.min(w.since, s.t), props);
      }
    }
    const all = s.subscription.domains === null;
    for (const [name, l] of ui.lanes) {
      if (seen.has(name) || (!all && !s.subscription.domains.includes(name))) continue;
      for (const key of [...l.open.keys()]) l.end(key, t);
      l.asyncJob = null;
      l.phase = null;
    }
  }

  // A new server process (after a reconnect) has a clock of its own: what
  // was drawn from the old one cannot be placed on it.
  function forget() {
    ui.lanes.clear();
    ui.gaps = [];
    ui.gapStart = null;
    ui.lastT = null;
    ui.offset = null;
    ui.seq = 0;
    ui.pendingStatus = null;
    for (const list of Object.values(stats)) list.length = 0;
  }

  // -- connection ----------------------------------------------------------

  function setStatus(state, text) {
    document.body.dataset.state = state;
    $("status").textContent = text;
  }

  function token() {
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
    return fromHash || new URLSearchParams(location.search).get("token");
  }

  let retry = 1;
  async function connect() {
    let config;
    try {
      const response = await fetch("config.json", { cache: "no-store" });
      config = await response.json();
    } catch (err) {
      setStatus("error", `no config: ${err}`);
      return later();
    }
    const tok = token();
    if (config.token_required && !tok) {
      setStatus("error", "this feed needs a token: open the page as …/#token=YOUR-TOKEN");
      return;
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let url = `${scheme}://${location.hostname}:${config.ws_port}${config.ws_path}`;
    if (tok) url += "?token=" + encodeURIComponent(tok);
    const ws = new WebSocket(url);
    ws.onopen = () => setStatus("connecting", "connected, waiting for the snapshot…");
    ws.onmessage = (m) => onMessage(ws, m.data);
    ws.onclose = (ev) => {
      if (ui.gapStart === null && ui.lastT !== null) ui.gapStart = ui.lastT;
      setStatus("closed", `disconnected (${ev.code}${ev.reason ? " " + ev.reason : ""}); retrying in ${retry} s`);
      later();
    };
  }
  function later() {
    setTimeout(connect, retry * 1000);
    retry = Math.min(retry * 2, 10);
  }

  function applyStatus() {
    const m = ui.pendingStatus;
    if (!m || (typeof m.seq === "number" && m.seq > ui.seq)) return;
    for (const [name, info] of Object.entries(m.domains || {})) lane(name).status = info;
    ui.pendingStatus = null;
  }

  function onMessage(ws, data) {
    let m;
    try {
      m = JSON.parse(data);
    } catch (err) {
      console.warn("jobctl feed: not JSON", err);
      return;
    }
    if (m.v !== FEED_SCHEMA) {
      ws.onclose = null; // no retry: this page cannot read that feed
      ws.close(1000);
      setStatus("error", `unsupported feed schema ${m.v} (this page speaks ${FEED_SCHEMA})`);
      return;
    }
    switch (m.type) {
      case "hello":
        if (typeof m.wall === "number") ui.wallOffset = m.wall - m.t;
        if (m.trace_schema !== TRACE_SCHEMA) setStatus("error", `unsupported trace schema ${m.trace_schema}`);
        if (ui.offset !== null && Math.abs(m.t - serverNow()) > 2) forget(); // another server's clock
        syncClock(m.t);
        break;
      case "snapshot":
        if (typeof m.wall === "number") ui.wallOffset = m.wall - m.t;
        syncClock(m.t);
        applySnapshot(m);
        ui.seq = Math.max(ui.seq, m.seq);
        applyStatus();
        retry = 1;
        setStatus("live", "live");
        break;
      case "events":
        if (m.history) ui.past += m.events.length; // the recent past, before the snapshot
        for (const e of m.events) {
          if (e.v !== TRACE_SCHEMA) continue;
          syncClock(e.t);
          applyEvent(e, m.history);
          ui.seq = Math.max(ui.seq, e.seq);
        }
        applyStatus();
        break;
      case "status": // what the embedder tells of each domain (host, run state)
        // Taken at event m.seq: shown once the page has drawn that far, so
        // that the run state and the jobs on screen are of the same moment.
        ui.pendingStatus = m;
        applyStatus();
        break;
      case "dropped":
        ui.dropped += m.count;
        if (ui.gapStart === null) ui.gapStart = ui.lastT;
        break;
      case "error":
        console.warn("jobctl feed error", m.code, m.message);
        break;
      default:
        break;
    }
  }

  // -- drawing -------------------------------------------------------------

  function pct(list, p) {
    const sorted = [...list].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
  }
  const ms = (s) => (s * 1000).toFixed(s < 0.01 ? 2 : 1);

  function drawLatency() {
    for (const row of document.querySelectorAll("#latency tr[data-stat]")) {
      const list = stats[row.dataset.stat];
      const cells = row.querySelectorAll("td");
      const values = list.length ? [list.length, ms(pct(list, 50)), ms(pct(list, 99)), ms(Math.max(...list))] : ["0", "", "", ""];
      values.forEach((v, i) => (cells[i].textContent = v));
    }
  }

  function tickStep(span) {
    for (const step of [1, 2, 5, 10, 15, 30, 60, 120]) if (span / step <= 12) return step;
    return 300;
  }

  function drawTimeline() {
    const svg = $("timeline");
    const width = Math.max(400, svg.parentElement.clientWidth);
    const plotW = width - LABEL_W - 8;
    const now = ui.pausedAt === null ? serverNow() : ui.pausedAt;
    const t0 = now - ui.window;
    const x = (t) => LABEL_W + Math.max(0, Math.min(plotW, ((t - t0) / ui.window) * plotW));
    const names = [...ui.lanes.keys()].sort();
    const height = AXIS_H + names.length * LANE_H + 4;
    const out = [];

    out.push('<g class="axis">');
    const step = tickStep(ui.window);
    for (let ago = 0; ago <= ui.window; ago += step) {
      const xx = x(now - ago).toFixed(1);
      const anchor = ago === 0 ? "end" : "middle";
      out.push(`<line x1="${xx}" x2="${xx}" y1="${AXIS_H - 4}" y2="${height}"/>`);
      out.push(`<text x="${xx}" y="${AXIS_H - 6}" text-anchor="${anchor}">${ago === 0 ? "now" : clock(now - ago, false)}</text>`);
    }
    out.push("</g>");

    names.forEach((name, i) => {
      const l = ui.lanes.get(name);
      const y = AXIS_H + i * LANE_H;
      const a = l.asyncJob;
      const progress = progressText(l.progress) ? " " + progressText(l.progress).split(",")[0] : "";
      const clip = (text) => (text.length > 22 ? text.slice(0, 21) + "…" : text);
      out.push(
        `<g class="lane" data-domain="${esc(name)}" data-events="${l.events}" data-async="${esc(a ? a.job : "")}" data-phase="${esc(l.phase || "")}">`,
      );
      out.push(`<rect class="lane-bg" x="0" y="${y}" width="${width}" height="${LANE_H - 4}" rx="3"/>`);
      out.push(`<text class="lane-name" x="8" y="${y + 16}">${esc(clip(name))}</text>`);
      out.push(`<text class="lane-info" x="8" y="${y + 32}">${esc(clip(a ? a.job : "idle"))}</text>`);
      if (a && l.phase) out.push(`<text class="lane-info" x="8" y="${y + 46}">${esc(clip(l.phase + progress))}</text>`);
      for (const [row, label] of [["async", "async job"], ["gate", "window"], ["jobs", "jobs"], ["monitor", "monitor"]]) {
        const [ry, rh] = ROWS[row];
        out.push(`<text class="row-label" x="${LABEL_W - 6}" y="${y + 4 + ry + rh / 2 + 3}" text-anchor="end">${label}</text>`);
      }
      const visible = l.intervals.filter((iv) => (iv.t1 === null || iv.t1 >= t0) && iv.t0 <= now);
      // Async bars first, then phases over them, then everything else.
      const order = (iv) => (iv.cls === "async" ? 0 : iv.row === "async" ? 1 : 2);
      visible.sort((p, q) => order(p) - order(q));
      for (const iv of visible) {
        let [ry, rh] = ROWS[iv.row];
        if (iv.row === "jobs") {
          ry += iv.slot * 8;
          rh = 7;
        }
        const x0 = x(iv.t0);
        const x1 = x(iv.t1 === null ? now : iv.t1);
        const w = Math.max(1.5, x1 - x0);
        out.push(
          `<rect class="${esc(iv.cls)}" x="${x0.toFixed(1)}" y="${y + 4 + ry}" width="${w.toFixed(1)}" height="${rh}"><title>${esc(iv.title)}</title></rect>`,
        );
        if (iv.row === "async" && iv.label && w > 40) {
          out.push(`<text class="phase-label" x="${(x0 + 4).toFixed(1)}" y="${y + 4 + ry + 13}">${esc(iv.label)}</text>`);
        }
      }
      for (const m of l.marks) {
        if (m.t < t0 || m.t > now) continue;
        const mx = x(m.t).toFixed(1);
        const [ry, rh] = ROWS[m.row];
        if (m.cls === "command") {
          out.push(`<line class="command" x1="${mx}" x2="${mx}" y1="${y + 4 + ry}" y2="${y + 4 + ry + rh}"><title>${esc(m.title)}</title></line>`);
        } else {
          const top = y + 4 + ry;
          out.push(`<path class="mark ${esc(m.cls)}" d="M${mx} ${top + 8} l-4 -8 h8 z"><title>${esc(m.title)}</title></path>`);
        }
      }
      out.push("</g>");
    });
    for (const gap of ui.gaps) {
      if (gap.t1 < t0) continue;
      const gx = x(gap.t0);
      const gw = Math.max(2, x(gap.t1) - gx);
      out.push(`<rect class="gap" x="${gx.toFixed(1)}" y="${AXIS_H - 4}" width="${gw.toFixed(1)}" height="${height - AXIS_H + 4}"><title>events lost here</title></rect>`);
    }
    const nx = x(now).toFixed(1);
    out.push(`<line class="now" x1="${nx}" x2="${nx}" y1="${AXIS_H - 4}" y2="${height}"/>`);

    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.innerHTML = out.join("");
    document.body.classList.toggle("has-lanes", names.length > 0);
  }

  function drawCounters() {
    $("n-events").textContent = ui.events;
    $("n-dropped").textContent = ui.dropped;
    $("n-domains").textContent = ui.lanes.size;
    $("n-past").textContent = ui.past;
    $("recent").innerHTML = ui.recent
      .map((e) => `<li class="${e.past ? "past" : "live"}" data-kind="${esc(e.kind)}"><time datetime="${isoOf(e.t)}">${clock(e.t)}</time> ${esc(e.domain)}: <b>${esc(words(e))}</b></li>`)
      .join("");
  }

  // One row per domain: where it is, what it does, how far, and what went wrong last.
  function drawDomains() {
    const rows = [];
    const names = [...ui.lanes.keys()].sort();
    for (const name of names) {
      const l = ui.lanes.get(name);
      const a = l.asyncJob;
      let state = "idle";
      let destination = "";
      const peers = names.filter((n) => n !== name && vmOf(n) === vmOf(name));
      if (a) {
        state = a.job === "MIGRATION_OUT" ? "migrating out" : a.job === "MIGRATION_IN" ? "receiving a migration" : `running ${a.job}`;
        if (a.job === "MIGRATION_OUT") {
          const to = peers.find((n) => { const p = ui.lanes.get(n).asyncJob; return p && p.job === "MIGRATION_IN"; });
          if (to) l.destination = hostOf(to) || to; // kept once the peer's job has ended
          destination = l.destination || "";
        }
      } else if (l.lastEnd && l.lastEnd.job === "MIGRATION_OUT" && l.lastEnd.outcome === "ok") {
        state = "moved away";
      } else if (l.lastEnd && l.lastEnd.job === "MIGRATION_IN" && l.lastEnd.outcome === "ok") {
        state = "running here";
      }
      const st = l.status || {};
      const phase = a ? [l.phase || "starting", progressText(l.progress)].filter(Boolean).join(" · ") : "";
      const error = l.lastError ? `${clock(l.lastError.t)} ${l.lastError.text}` : "";
      rows.push(
        `<tr data-domain="${esc(name)}"><th>${esc(vmOf(name))}</th><td class="host">${esc(st.host || hostOf(name))}</td>` +
          `<td class="run">${esc(st.run_state || "")}</td><td class="state">${esc(state)}</td><td class="phase">${esc(phase)}</td>` +
          `<td class="destination">${esc(destination)}</td><td class="error">${esc(error)}</td></tr>`,
      );
    }
    $("domains").querySelector("tbody").innerHTML = rows.join("");
  }

  function draw() {
    if (ui.pausedAt === null && ui.offset !== null) {
      const before = serverNow() - KEEP_S;
      for (const l of ui.lanes.values()) l.prune(before);
      ui.gaps = ui.gaps.filter((gap) => gap.t1 >= before);
    }
    drawTimeline();
    drawLatency();
    drawCounters();
    drawDomains();
  }

  // -- controls ------------------------------------------------------------

  for (const button of document.querySelectorAll("button[data-window]")) {
    button.addEventListener("click", () => {
      ui.window = Number(button.dataset.window);
      for (const b of document.querySelectorAll("button[data-window]")) b.classList.toggle("on", b === button);
      draw();
    });
  }
  $("pause").addEventListener("click", (ev) => {
    ui.pausedAt = ui.pausedAt === null ? serverNow() : null;
    ev.target.textContent = ui.pausedAt === null ? "pause" : "resume";
    draw();
  });

  setInterval(draw, 200);
  connect();
})();
