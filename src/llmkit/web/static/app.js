// llmkit dashboard: vanilla JS, no dependencies. Charts are inline SVG drawn here; data comes from /ui/api/*
// and the server's OpenAI routes, always with the API key the user gave (kept in sessionStorage: this tab only).
"use strict";

const KEY = "llmkit.apiKey";
const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = ["var(--c1)", "var(--c2)", "var(--c3)", "var(--c4)", "var(--c5)", "var(--c6)"];
const $ = (sel, el = document) => el.querySelector(sel);
let info = null;
let chat = [];          // the conversation sent with each request: [{role, content}]
let busy = false;

// ---------------------------------------------------------------------------------------------------------
// DOM and HTTP helpers

function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid != null) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}

function s(tag, attrs = {}, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) el.setAttribute(k, v);
  for (const kid of kids.flat()) if (kid != null) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}

class AuthError extends Error {}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: "Bearer " + key } : { ...extra };
}

async function errorOf(r) {
  try { return (await r.json()).error.message; } catch (e) { return `${r.status} ${r.statusText}`; }
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: authHeaders(opts.headers) });
  if (r.status === 401) { needKey(await errorOf(r)); throw new AuthError("401"); }
  if (!r.ok) throw new Error(await errorOf(r));
  return r.json();
}

function banner(text) {
  const b = $("#banner");
  b.textContent = text || "";
  b.hidden = !text;
}

function needKey(why) {
  banner(`This server needs an API key (${why}). Enter it above: it is kept in this browser tab only.`);
  $("#key").focus();
}

const fmt = {
  s: (v) => v == null ? "–" : v < 1 ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(2)} s`,
  n: (v, d = 1) => v == null ? "–" : Number(v).toFixed(d),
  pct: (v) => v == null ? "–" : `${(100 * v).toFixed(1)}%`,
  time: (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }),
  metric: (v) => typeof v !== "number" ? String(v) : Number.isInteger(v) ? String(v) : Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3),
};

// ---------------------------------------------------------------------------------------------------------
// Charts (inline SVG)

function niceTicks(lo, hi, n = 4) {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((x) => x >= raw);
  const out = [];
  const top = Math.ceil(hi / step - 1e-9) * step;  // the first tick at or above the data, so nothing is drawn above the axis
  for (let v = Math.floor(lo / step) * step; v <= top + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function noData(el, text) {
  el.replaceChildren(h("div", { class: "nodata" }, text));
}

// series: [{name, color, pts: [[unix s, value|null]], dots?: [bool]}]; opts: {x0, x1, fmt, threshold, bars, barW}
function chart(el, series, opts = {}) {
  const W = el.clientWidth || 300, H = el.clientHeight || 190;
  const m = { l: 42, r: 8, t: 20, b: 20 };
  const all = series.flatMap((x) => x.pts.map((p) => p[1])).filter((v) => v != null);
  const x0 = opts.x0, x1 = opts.x1 > opts.x0 ? opts.x1 : opts.x0 + 1;
  let yMax = opts.stackedMax ?? Math.max(...all, opts.threshold ?? 0);
  yMax = yMax > 0 ? yMax * 1.1 : 1;
  const ticks = niceTicks(0, yMax);
  yMax = ticks[ticks.length - 1];
  const X = (t) => m.l + (W - m.l - m.r) * (t - x0) / (x1 - x0);
  const Y = (v) => H - m.b - (H - m.t - m.b) * v / yMax;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "plot", "data-points": all.length });
  for (const v of ticks) {
    svg.append(s("line", { class: v ? "grid" : "axis", x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }),
               s("text", { x: m.l - 6, y: Y(v) + 3.5, "text-anchor": "end" }, (opts.fmt || fmt.metric)(v)));
  }
  const nx = Math.max(2, Math.min(5, Math.floor((W - m.l) / 90)));
  for (let i = 0; i <= nx; i++) {
    const t = x0 + (x1 - x0) * i / nx;
    svg.append(s("text", { x: X(t), y: H - 5, "text-anchor": i === 0 ? "start" : i === nx ? "end" : "middle" },
                 fmt.time(t).replace(/^(\d\d:\d\d):00$/, "$1")));
  }
  if (opts.threshold != null) {
    svg.append(s("line", { x1: m.l, x2: W - m.r, y1: Y(opts.threshold), y2: Y(opts.threshold), stroke: "var(--bad)",
                           "stroke-dasharray": "4 3", "stroke-width": 1.2 }),
               s("text", { x: W - m.r, y: Y(opts.threshold) - 4, "text-anchor": "end", fill: "var(--bad)" }, "alert"));
  }
  if (opts.bars) {  // stacked bars, one stack per window
    const bw = Math.max(3, (X(x0 + opts.barW) - X(x0)) * 0.7);
    const base = {};
    for (const ser of series) {
      for (const [t, v] of ser.pts) {
        if (!v) continue;
        const b0 = base[t] || 0;
        svg.append(s("rect", { class: "bar", x: X(t + opts.barW / 2) - bw / 2, y: Y(b0 + v), width: bw,
                               height: Y(b0) - Y(b0 + v), fill: ser.color, rx: 1.5 },
                     s("title", {}, `${ser.name}: ${v} at ${fmt.time(t)}`)));
        base[t] = b0 + v;
      }
    }
  } else {
    for (const ser of series) {
      let d = "", pen = false;
      for (const [t, v] of ser.pts) {
        if (v == null) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${X(t).toFixed(1)},${Y(v).toFixed(1)}`;
        pen = true;
      }
      if (d) svg.append(s("path", { class: "line", d, fill: "none", stroke: ser.color, "stroke-width": 2,
                                    "stroke-linejoin": "round", "stroke-dasharray": ser.dash }));
      ser.pts.forEach(([t, v], i) => {
        if (v == null) return;
        const bad = ser.dots && ser.dots[i];
        svg.append(s("circle", { cx: X(t), cy: Y(v), r: bad ? 4 : 2.6, fill: bad ? "var(--bad)" : ser.color },
                     s("title", {}, `${ser.name}: ${(opts.fmt || fmt.metric)(v)} at ${fmt.time(t)}`)));
      });
    }
  }
  const legend = s("g", { class: "legend" });
  let lx = m.l;
  for (const ser of series) {
    legend.append(s("rect", { x: lx, y: 4, width: 10, height: 10, rx: 2, fill: ser.color }),
                  s("text", { x: lx + 14, y: 13 }, ser.name));
    lx += 24 + ser.name.length * 6.2;
  }
  svg.append(legend);
  el.replaceChildren(svg);
}

// ---------------------------------------------------------------------------------------------------------
// Monitor

let lastSeries = null, lastDrift = null;

async function refreshMonitor() {
  if (!info || !info.request_log) return;
  const minutes = $("#span").value;
  const [series, drift] = await Promise.all([api(`/ui/api/series?minutes=${minutes}`), api("/ui/api/drift")]);
  lastSeries = series; lastDrift = drift;
  drawMonitor();
}

function drawMonitor() {
  const series = lastSeries, drift = lastDrift;
  if (!series) return;
  $("#logname").textContent = series.log;
  const ws = series.windows || [], tot = series.total || {};
  const x1 = series.now, x0 = series.x0 ?? series.now - 60 * $("#span").value;
  const lastDriftPt = drift && drift.points.length ? drift.points[drift.points.length - 1] : null;
  const kpi = (k, v, alert) => h("div", { class: "kpi" + (alert ? " alert" : "") }, h("div", { class: "k" }, k), h("div", { class: "v" }, v));
  $("#kpis").replaceChildren(
    kpi("requests", tot.requests ?? 0), kpi("p50 latency", fmt.s(tot.latency_p50)), kpi("p95 latency", fmt.s(tot.latency_p95)),
    kpi("tokens / s", fmt.n(tot.tokens_per_s)), kpi("errors · refused", `${fmt.pct(tot.error_rate)} · ${fmt.pct(tot.refusal_rate)}`, tot.error_rate > 0),
    kpi("drift score", lastDriftPt ? fmt.metric(lastDriftPt.score) : "–", lastDriftPt && lastDriftPt.drifted));
  const mid = (w) => (w.start + w.end) / 2;
  if (!ws.length) {
    for (const id of ["#c-latency", "#c-tps", "#c-guard"]) noData($(id), "no requests in this span yet");
  } else {
    chart($("#c-latency"), [
      { name: "p50", color: COLORS[0], pts: ws.map((w) => [mid(w), w.latency_p50]) },
      { name: "p95", color: COLORS[1], pts: ws.map((w) => [mid(w), w.latency_p95]) },
      { name: "TTFT p50", color: COLORS[2], dash: "4 3", pts: ws.map((w) => [mid(w), w.ttft_p50]) },
    ], { x0, x1, fmt: (v) => v.toPrecision(2) });
    chart($("#c-tps"), [{ name: "tokens/s", color: COLORS[4], pts: ws.map((w) => [mid(w), w.tokens_per_s]) }], { x0, x1 });
    const rails = [...new Set(ws.flatMap((w) => Object.keys(w.guard)))].sort();
    if (!rails.length) noData($("#c-guard"), info.guard ? "no rail fired in this span" : "no guard policy on this server");
    else {
      const stacked = Math.max(...ws.map((w) => Object.values(w.guard).reduce((a, b) => a + b, 0)));
      chart($("#c-guard"), rails.map((r, i) => ({ name: r, color: COLORS[(i + 3) % COLORS.length],
                                                   pts: ws.map((w) => [w.start, w.guard[r] || 0]) })),
            { x0, x1, bars: true, barW: series.window_s, stackedMax: stacked, fmt: (v) => String(v) });
    }
  }
  if (!drift || !drift.enabled) {
    noData($("#c-drift"), "drift monitor off: serve with --drift-reference DATASET");
    $("#driftnote").textContent = "";
  } else {
    $("#driftnote").textContent = `${drift.method} vs ${drift.reference.split("/").slice(-2).join("/")}`;
    if (!drift.points.length) noData($("#c-drift"), `waiting for the first test (at least 30 prompts; ${drift.pending} pending)`);
    else chart($("#c-drift"), [{ name: drift.method === "mmd" ? "MMD²" : "ROC AUC", color: COLORS[5],
                                 pts: drift.points.map((p) => [p.time, p.score]), dots: drift.points.map((p) => p.drifted) }],
               { x0: Math.min(x0, drift.points[0].time), x1, threshold: drift.threshold });
  }
  const src = series.rag_sources || [];
  $("#sources").hidden = !src.length;
  if (src.length) {
    const top = src[0].count;
    $("#sources").replaceChildren(h("figcaption", {}, "Top RAG sources ", h("span", { class: "muted" }, "in this span")),
      h("table", {}, src.map((x) => h("tr", {}, h("td", { class: "mono", style: "width:45%" }, x.source),
        h("td", {}, h("div", { class: "bar", style: `width:${100 * x.count / top}%` })), h("td", { style: "width:40px;text-align:right" }, x.count)))));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Playground

async function loadModels() {
  const list = await api("/v1/models");
  const sel = $("#model");
  sel.replaceChildren();
  const models = list.data.filter((m) => m.id !== info.embedder);
  const bases = models.filter((m) => !m.parent);
  for (const b of bases) {
    sel.append(h("option", { value: b.id }, b.id));
    for (const a of models.filter((m) => m.parent === b.id)) sel.append(h("option", { value: a.id }, `  ↳ ${a.id} (adapter)`));
  }
  for (const a of models.filter((m) => m.parent && !bases.some((b) => b.id === m.parent))) sel.append(h("option", { value: a.id }, a.id));
  const cs = $("#collection");
  cs.replaceChildren(h("option", { value: "" }, "none"), ...info.collections.map((c) => h("option", { value: c }, c)));
  const g = $("#guard");
  if (!info.guard) g.replaceChildren(h("span", { class: "pill" }, "off"), h("div", { class: "muted" }, "No guard policy on this server (--guard)."));
  else g.replaceChildren(
    ...["input", "output"].map((side) => h("div", {}, h("span", { class: "muted" }, side + ": "),
      info.guard[side].length ? info.guard[side].map((r) => h("span", { class: "pill ok", title: r.action }, `${r.rail} · ${r.action}`)) : h("span", { class: "pill" }, "none"))),
    h("div", { class: "muted", style: "margin-top:4px" }, "The guard is the server's policy: it applies to every request and has no per-request off switch."));
  if (!info.logprobs) {
    $("#logprobs").checked = false; $("#logprobs").disabled = true;
    $("#logprobs").parentElement.title = "the output rails redact text; the server refuses logprobs (they would carry what was redacted)";
  }
}

function tokenSpan(text, lp) {
  const span = h("span", { class: "tok" }, text);
  if (lp) {
    const p = Math.exp(lp.logprob);
    if (p < 0.2) span.classList.add("p3"); else if (p < 0.5) span.classList.add("p2");
    span.dataset.lp = JSON.stringify(lp);
  }
  return span;
}

// Text and logprobs may arrive apart: under a guard the server holds text back (its output rails read whole
// sentences) while each token's logprobs go out as it is made. The text is what is shown; each token's entry is
// matched to it by bytes (a character split over byte tokens takes several entries), then drawn as one span.
const UTF8 = new TextDecoder("utf-8", { fatal: true }), ENC = new TextEncoder();
const MAX_GROUP = 8;

function align(bubble, st, end) {
  while (st.text && st.queue.length) {
    let matched = 0, str = "";
    for (let n = 1; n <= Math.min(MAX_GROUP, st.queue.length); n++) {
      const bytes = st.queue.slice(0, n).flatMap((e) => e.bytes || [...ENC.encode(e.token)]);
      try { str = UTF8.decode(new Uint8Array(bytes)); } catch (e) { continue; }
      if (str && st.text.startsWith(str)) { matched = n; break; }
    }
    if (!matched) {
      if (st.queue.length < MAX_GROUP && !end) return;  // the rest of a character may still come
      break;  // the text and the tokens disagree (a stop sequence cut, a rail replaced the reply): show the text
    }
    const group = st.queue.splice(0, matched);
    const lp = group.length === 1 ? group[0] : { ...group[0], token: str, logprob: group.reduce((a, e) => a + e.logprob, 0) };
    bubble.append(tokenSpan(str, lp));
    st.text = st.text.slice(str.length);
  }
  if (st.text && (end || !st.queue.length && !st.lp) || st.text && st.queue.length >= MAX_GROUP) {
    bubble.append(tokenSpan(st.text, null));
    st.text = "";
    st.queue = [];
  }
}

function showTip(ev) {
  const t = ev.target.closest(".tok");
  const tip = $("#tip");
  if (!t || !t.dataset.lp) { tip.hidden = true; return; }
  const lp = JSON.parse(t.dataset.lp);
  const vis = (x) => JSON.stringify(x).slice(1, -1).replace(/ /g, "␣");
  const rows = (lp.top_logprobs || []).map((a) => h("tr", { class: a.token === lp.token ? "chosen" : "" },
    h("td", {}, vis(a.token)), h("td", { class: "barcell" }, h("div", { class: "b", style: `width:${(100 * Math.exp(a.logprob)).toFixed(1)}%` })),
    h("td", {}, `${(100 * Math.exp(a.logprob)).toFixed(1)}%`)));
  tip.replaceChildren(h("div", {}, h("b", {}, vis(lp.token)), `  p ${(100 * Math.exp(lp.logprob)).toFixed(1)}%  · logprob ${lp.logprob.toFixed(3)}`),
                      rows.length ? h("table", {}, rows) : null);
  tip.hidden = false;
  const r = t.getBoundingClientRect();
  tip.style.left = `${Math.min(r.left, window.innerWidth - 330)}px`;
  tip.style.top = `${r.bottom + 6}px`;
}

function renderCitations(box, cites) {
  box.replaceChildren(...cites.map((c) => h("div", { class: "cite", "data-index": c.index, onclick: (e) => e.currentTarget.classList.toggle("open") },
    h("div", { class: "head" }, h("span", { class: "n" }, `[${c.index}]`), h("span", { class: "src" }, c.source + (c.page ? ` p.${c.page}` : "")),
      c.heading ? h("span", {}, "— " + c.heading) : null, h("span", { class: "score" }, `score ${fmt.metric(c.score)}`)),
    h("div", { class: "text" }, c.text))));
}

async function feedback(btn, id, rating) {
  try {
    await api("/v1/feedback", { method: "POST", headers: { "Content-Type": "application/json" },
                                body: JSON.stringify({ request_id: id, rating }) });
    btn.parentElement.querySelectorAll("button").forEach((b) => b.classList.remove("on"));
    btn.classList.add("on");
  } catch (e) { if (!(e instanceof AuthError)) btn.title = e.message; }
}

async function send(text) {
  if (busy || !text.trim()) return;
  busy = true; $("#send").disabled = true;
  const log = $("#chat");
  $(".empty", log)?.remove();
  log.append(h("div", { class: "msg user" }, text));
  const bubble = h("div", { class: "bubble streaming" });
  const cites = h("div", { class: "cites" });
  const meta = h("div", { class: "meta" });
  const msg = h("div", { class: "msg bot" }, bubble, cites, meta);
  log.append(msg);
  log.scrollTop = log.scrollHeight;
  const model = $("#model").value, collection = $("#collection").value;
  const messages = [...chat, { role: "user", content: text }];
  const body = { model, messages, stream: true, stream_options: { include_usage: true },
                 max_tokens: +$("#maxtok").value, temperature: +$("#temp").value };
  if ($("#logprobs").checked) { body.logprobs = true; body.top_logprobs = +$("#toplp").value; }
  if (collection) body.rag = { collection, top_k: +$("#topk").value };
  const t0 = performance.now();
  let ttft = null, reply = "", id = null, usage = null, finish = null, citations = [];
  const toks = { text: "", queue: [], lp: !!body.logprobs };  // text not shown yet, and logprob entries not matched to text yet
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", body: JSON.stringify(body),
                                                     headers: authHeaders({ "Content-Type": "application/json" }) });
    if (r.status === 401) { const why = await errorOf(r); needKey(why); throw new Error(why); }
    if (!r.ok) throw new Error(await errorOf(r));
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "", done = false;
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buf += dec.decode(value, { stream: true });
      const events = buf.split(/\r?\n\r?\n/);
      buf = events.pop();
      for (const ev of events) {
        const data = ev.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") { done = true; break; }
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        id = chunk.id || id;
        if (chunk.citations) { citations = chunk.citations; renderCitations(cites, citations); }
        if (chunk.usage) usage = chunk.usage;
        const c = chunk.choices && chunk.choices[0];
        if (!c) continue;
        const piece = c.delta && c.delta.content;
        if (c.logprobs && c.logprobs.content) toks.queue.push(...c.logprobs.content);
        if (piece) {
          if (ttft == null) ttft = performance.now() - t0;
          reply += piece;
          toks.text += piece;
        }
        align(bubble, toks, false);
        log.scrollTop = log.scrollHeight;
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    align(bubble, toks, true);
    chat = [...messages, { role: "assistant", content: reply }];
    const cited = new Set([...reply.matchAll(/\[(\d+)\]/g)].map((m) => +m[1]));
    cites.querySelectorAll(".cite").forEach((el) => el.classList.toggle("cited", cited.has(+el.dataset.index)));
    const secs = (performance.now() - t0) / 1000;
    const n = usage ? usage.completion_tokens : null;
    meta.append(h("span", {}, model), collection ? h("span", {}, `rag: ${collection} · ${citations.length} sources`) : null,
                n != null ? h("span", {}, `${n} tokens`) : null, ttft != null ? h("span", {}, `TTFT ${fmt.s(ttft / 1000)}`) : null,
                n ? h("span", {}, `${(n / secs).toFixed(1)} tok/s`) : null, finish ? h("span", {}, finish) : null);
    if (id && info.request_log) {
      meta.append(h("button", { title: "rate this answer good (/v1/feedback)", onclick: (e) => feedback(e.currentTarget, id, 1) }, "✓ good"),
                  h("button", { title: "rate this answer bad (/v1/feedback)", onclick: (e) => feedback(e.currentTarget, id, -1) }, "✗ bad"));
    }
    if (!reply) bubble.append(h("span", { class: "muted" }, "(empty reply)"));
  } catch (e) {
    bubble.append(h("span", { class: "err" }, e.message));
  } finally {
    bubble.classList.remove("streaming");
    busy = false; $("#send").disabled = false;
    setTimeout(() => refreshMonitor().catch(() => {}), 300);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Runs, lineage, registry

const KIND_COLORS = { input: "#8a93a6", dataset: "var(--c3)", model: "var(--c1)", compressed: "var(--c2)", gguf: "var(--c2)",
                      eval: "var(--c4)", rag: "var(--c6)", index: "var(--c6)" };

async function openFile(ev, rel) {
  if (!sessionStorage.getItem(KEY)) return;  // no key: the plain link works
  ev.preventDefault();
  const r = await fetch("/ui/files/" + rel, { headers: authHeaders() });
  if (!r.ok) { banner(await errorOf(r)); return; }
  window.open(URL.createObjectURL(await r.blob()), "_blank");
}

async function loadRuns() {
  const data = await api("/ui/api/runs");
  const t = $("#runtable");
  $("#runsroot").textContent = data.root || "";
  if (!data.root) { t.replaceChildren(h("tr", {}, h("td", { class: "muted" }, "No runs folder: pass --runs DIR."))); return; }
  if (!data.runs.length) { t.replaceChildren(h("tr", {}, h("td", { class: "muted" }, `No runs in ${data.root} yet (llmkit run RECIPE).`))); return; }
  t.replaceChildren(h("tr", {}, ["stage", "kind", "fingerprint", "finished", "metrics", ""].map((x) => h("th", {}, x))));
  for (const run of data.runs) {
    const row = h("tr", { class: "run", onclick: () => showGraph(run.name, row) },
                  h("td", { colspan: 6 }, `${run.name} `, h("span", { class: "muted" }, `· ${run.stages.length} stages · ${(run.finished_at || "").replace("T", " ").slice(0, 19)}`)));
    t.append(row);
    for (const st of run.stages) {
      const ms = Object.entries(st.metrics || {}).slice(0, 4).map(([k, v]) => `${k} ${fmt.metric(v)}`).join(" · ");
      const rel = st.report;
      t.append(h("tr", {}, h("td", {}, st.stage), h("td", {}, st.kind || h("span", { class: "err" }, "unreadable")),
        h("td", { class: "mono" }, st.fingerprint || ""), h("td", { class: "mono" }, (st.finished_at || "").replace("T", " ").slice(0, 19)),
        h("td", { class: "metrics" }, st.error || ms,
          st.passed == null ? null : h("span", { class: "pill " + (st.passed ? "ok" : "bad"), style: "margin-left:6px" }, st.passed ? "gates pass" : "gates fail")),
        h("td", {}, rel ? h("a", { href: "/ui/files/" + rel, target: "_blank", onclick: (e) => openFile(e, rel) }, "report") : "")));
    }
  }
  const first = t.querySelector("tr.run");
  if (first) first.click();
}

async function showGraph(name, row) {
  document.querySelectorAll("tr.run").forEach((r) => r.classList.toggle("sel", r === row));
  $("#graphname").textContent = name;
  const g = await api(`/ui/api/runs/${encodeURIComponent(name)}/graph`);
  drawGraph($("#graph"), g);
}

// A stage with many raw inputs (a RAG index of 40 files) would make the graph a tall column of file boxes:
// past MAX_INPUTS they become one node that lists them on hover.
const MAX_INPUTS = 3;

function collapseInputs(g) {
  const kind = Object.fromEntries(g.nodes.map((n) => [n.id, n.kind]));
  const nodes = [...g.nodes], edges = [];
  const drop = new Set();
  const into = {};
  for (const e of g.edges) (into[e.to] ||= []).push(e);
  for (const [to, es] of Object.entries(into)) {
    const raw = es.filter((e) => kind[e.from] === "input");
    if (raw.length <= MAX_INPUTS) { edges.push(...es); continue; }
    edges.push(...es.filter((e) => kind[e.from] !== "input"));
    raw.forEach((e) => drop.add(e.from));
    const id = `inputs:${to}`;
    nodes.push({ id, kind: "input", label: `${raw.length} files`, detail: raw.map((e) => e.name || e.from).join("\n") });
    edges.push({ from: id, to, name: `${raw.length} files` });
  }
  const used = new Set(edges.flatMap((e) => [e.from, e.to]));
  return { nodes: nodes.filter((n) => !drop.has(n.id) || used.has(n.id) && edges.some((e) => e.from === n.id)), edges };
}

function drawGraph(el, g) {
  if (!g.nodes.length) { noData(el, "no manifests"); return; }
  g = collapseInputs(g);
  const byId = Object.fromEntries(g.nodes.map((n) => [n.id, n]));
  const parents = {};
  for (const e of g.edges) (parents[e.to] ||= []).push(e.from);
  const depth = {};
  const d = (id, seen = new Set()) => {
    if (depth[id] != null) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    return (depth[id] = Math.max(-1, ...(parents[id] || []).map((p) => d(p, seen))) + 1);
  };
  g.nodes.forEach((n) => d(n.id));
  const cols = [];
  for (const n of g.nodes) (cols[depth[n.id]] ||= []).push(n);
  const NW = 176, NH = 42, GX = 64, GY = 12;
  const W = cols.length * (NW + GX) - GX + 16, H = Math.max(...cols.map((c) => c.length)) * (NH + GY) - GY + 16;
  const pos = {};
  cols.forEach((c, i) => c.forEach((n, j) => { pos[n.id] = { x: 8 + i * (NW + GX), y: 8 + j * (NH + GY) + (H - 16 - (c.length * (NH + GY) - GY)) / 2 }; }));
  const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "lineage" });
  for (const e of g.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const x1 = a.x + NW, y1 = a.y + NH / 2, x2 = b.x, y2 = b.y + NH / 2, mx = (x1 + x2) / 2;
    svg.append(s("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 4},${y2}` }, s("title", {}, e.name)),
               s("path", { d: `M${x2 - 6},${y2 - 3.5} L${x2},${y2} L${x2 - 6},${y2 + 3.5}`, fill: "#b9c1d3" }));
  }
  for (const n of g.nodes) {
    const p = pos[n.id], color = KIND_COLORS[n.kind] || "var(--c5)";
    const label = n.label.length > 25 ? "…" + n.label.slice(-24) : n.label;
    svg.append(s("g", { class: "node", transform: `translate(${p.x},${p.y})` },
      s("title", {}, n.detail || n.id),
      s("rect", { width: NW, height: NH, fill: n.kind === "input" ? "#f7f8fa" : "#fff", stroke: color, "stroke-dasharray": n.inside === false ? "4 3" : null }),
      s("rect", { width: 4, height: NH - 10, x: 5, y: 5, fill: color, rx: 2 }),
      s("text", { class: "kind", x: 15, y: 16 }, n.kind),
      s("text", { x: 15, y: 32 }, label)));
  }
  el.replaceChildren(svg);
}

async function loadRegistry() {
  const t = $("#regtable");
  const reg = await api("/ui/api/registry");
  $("#reguri").textContent = reg.uri || "";
  if (!reg.available) { t.replaceChildren(h("tr", {}, h("td", { class: "muted" }, `Registry unavailable: ${reg.why}`))); return; }
  if (!reg.versions.length) { t.replaceChildren(h("tr", {}, h("td", { class: "muted" }, "No registered models yet (llmkit register ARTIFACT --name N)."))); return; }
  t.replaceChildren(h("tr", {}, ["model", "version", "aliases", "format", "created", "source"].map((x) => h("th", {}, x))),
    ...reg.versions.map((v) => h("tr", {}, h("td", {}, v.name), h("td", {}, `v${v.version}`),
      h("td", {}, v.aliases.map((a) => h("span", { class: "pill alias" }, "@" + a))), h("td", {}, v.format),
      h("td", {}, v.created ? new Date(v.created).toLocaleString() : ""), h("td", { class: "mono" }, v.source_path))));
}

// ---------------------------------------------------------------------------------------------------------
// Start

async function start() {
  banner("");
  try {
    info = await api("/ui/api/info");
  } catch (e) {
    if (!(e instanceof AuthError)) banner("Could not load the dashboard: " + e.message);
    return;
  }
  $("#mode").textContent = info.server ? `server · ${info.models.length} model${info.models.length === 1 ? "" : "s"}` : "runs";
  document.querySelectorAll("[data-needs=server]").forEach((el) => { el.hidden = !info.server; });
  document.querySelectorAll("[data-needs=log]").forEach((el) => { el.hidden = !info.request_log; });
  const jobs = [loadRuns(), loadRegistry()];
  if (info.server) jobs.push(loadModels());
  if (info.request_log) jobs.push(refreshMonitor());
  for (const r of await Promise.allSettled(jobs)) {
    if (r.status === "rejected" && !(r.reason instanceof AuthError)) banner(r.reason.message);
  }
}

$("#keyform").addEventListener("submit", (e) => {
  e.preventDefault();
  const k = $("#key").value.trim();
  if (k) sessionStorage.setItem(KEY, k); else sessionStorage.removeItem(KEY);
  $("#key").value = "";
  $("#keystate").textContent = k ? "key set" : "";
  start();
});
$("#keystate").textContent = sessionStorage.getItem(KEY) ? "key set" : "";
$("#chatform").addEventListener("submit", (e) => { e.preventDefault(); const p = $("#prompt"); const t = p.value; p.value = ""; send(t); });
$("#prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#chatform").requestSubmit(); } });
$("#clear").addEventListener("click", () => { chat = []; $("#chat").replaceChildren(h("div", { class: "empty muted" }, "New chat.")); });
$("#span").addEventListener("change", () => refreshMonitor().catch(() => {}));
document.addEventListener("mouseover", showTip);
window.addEventListener("resize", () => drawMonitor());
setInterval(() => { if (!document.hidden) refreshMonitor().catch(() => {}); }, 5000);
start();
