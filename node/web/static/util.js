// Shared helpers for the explorer and the dashboard: DOM building, formatting, times,
// copy buttons, the JSON API client and the live connection (SSE, polling fallback).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function setText(id, text) {
  const el = document.getElementById(id);
  if (el && el.textContent !== String(text)) el.textContent = String(text);
  return el;
}

// ---------------------------------------------------------------- formatting

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "–";
  n = Number(n);
  let i = 0;
  while (Math.abs(n) >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(n >= 100 ? 0 : n >= 10 ? 1 : 2)} ${UNITS[i]}`;
}

export function fmtRate(n) {
  return n ? `${fmtBytes(n)}/s` : "–";
}

export function fmtInt(n) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US");
}

export function fmtPpm(ppm) {
  if (ppm === null || ppm === undefined) return "–";
  return `${(ppm / 10000).toFixed(1)}%`;
}

export function fmtPercent(x) {
  return `${(100 * (x || 0)).toFixed(x >= 0.995 || x === 0 ? 0 : 1)}%`;
}

export function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function shortHex(hex, n = 8) {
  if (!hex) return "–";
  return hex.length <= 2 * n + 1 ? hex : `${hex.slice(0, n)}…${hex.slice(-4)}`;
}

// ---------------------------------------------------------------- times

const pad = (x, w = 2) => String(x).padStart(w, "0");

export function absTime(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function relTime(ms, now = Date.now()) {
  const diff = now - ms;
  const s = Math.abs(diff) / 1000;
  let txt;
  if (s < 1) return "just now";
  if (s < 60) txt = `${Math.floor(s)} s`;
  else if (s < 3600) txt = `${Math.floor(s / 60)} min`;
  else if (s < 86400) txt = `${Math.floor(s / 3600)} h`;
  else txt = `${Math.floor(s / 86400)} d`;
  return diff >= 0 ? `${txt} ago` : `in ${txt}`;
}

// <time> showing the absolute time and a relative one that the ticker keeps fresh.
export function timeEl(ms, { relOnly = false } = {}) {
  if (ms === null || ms === undefined) return h("span", { class: "muted" }, "–");
  const iso = new Date(ms).toISOString();
  return h("time", { class: "ts", datetime: iso, title: `${absTime(ms)} (${iso})`, "data-ms": ms },
    relOnly ? null : h("span", { class: "abs" }, absTime(ms)),
    h("span", { class: "rel", "data-ms": ms }, relTime(ms)));
}

export function startTicker() {
  const tick = () => {
    const now = Date.now();
    for (const el of document.querySelectorAll(".rel[data-ms]")) {
      const t = relTime(Number(el.dataset.ms), now);
      if (el.textContent !== t) el.textContent = t;
    }
  };
  tick();
  return setInterval(tick, 1000);
}

// ---------------------------------------------------------------- copy buttons

const SVG_NS = "http://www.w3.org/2000/svg";

function copyIcon() {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("width", "12");
  svg.setAttribute("height", "12");
  svg.setAttribute("aria-hidden", "true");
  for (const [x, y] of [[5, 1], [1, 5]]) {
    const r = document.createElementNS(SVG_NS, "rect");
    for (const [k, v] of Object.entries({ x, y, width: 10, height: 10, rx: 2, fill: "none", stroke: "currentColor", "stroke-width": 1.6 })) r.setAttribute(k, v);
    svg.appendChild(r);
  }
  return svg;
}

export function copyButton(text, label = "Copy") {
  const btn = h("button", { type: "button", class: "copy", title: "Copy to clipboard", "data-copy": text,
    "aria-label": `${label}` }, copyIcon());
  btn.addEventListener("click", async (ev) => {
    ev.preventDefault();
    ev.stopPropagation();
    let ok = false;
    try { await navigator.clipboard.writeText(text); ok = true; } catch (_) {
      const ta = h("textarea", { style: { position: "fixed", opacity: "0" } });
      ta.value = text;
      document.body.appendChild(ta);
      ta.select();
      try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
      ta.remove();
    }
    btn.textContent = ok ? "✓" : "✗";
    btn.classList.add("copied");
    setTimeout(() => { clear(btn).append(copyIcon()); btn.classList.remove("copied"); }, 1200);
  });
  return btn;
}

// A hash shown short (full on hover) with a copy button; a link when href is given.
export function hashEl(hex, { href = null, n = 8, testid = null } = {}) {
  if (!hex) return h("span", { class: "muted" }, "–");
  const inner = href ? h("a", { href, class: "mono", title: hex }, shortHex(hex, n))
    : h("span", { class: "mono", title: hex }, shortHex(hex, n));
  return h("span", { class: "hash", "data-testid": testid }, inner, copyButton(hex));
}

export function fullHashEl(hex, { href = null, id = null } = {}) {
  if (!hex) return h("span", { class: "muted" }, "–");
  const inner = href ? h("a", { href, class: "mono wrap", id }, hex) : h("span", { class: "mono wrap", id }, hex);
  return h("span", { class: "hash full" }, inner, copyButton(hex));
}

export function badge(text, kind = text) {
  return h("span", { class: `badge badge-${kind}`, "data-status": kind }, text);
}

export function bar(fraction, { cls = "", label = null, marker = null } = {}) {
  const f = Math.max(0, Math.min(1, Number(fraction) || 0));
  return h("div", { class: `bar ${cls}`, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": Math.round(f * 100), title: label },
    h("div", { class: "bar-fill", style: { width: `${(f * 100).toFixed(1)}%` } }),
    marker === null ? null : h("div", { class: "bar-marker", style: { left: `${(marker * 100).toFixed(1)}%` } }));
}

// ---------------------------------------------------------------- API

export class ApiError extends Error {
  constructor(status, error, detail) {
    super(detail || error || `HTTP ${status}`);
    this.status = status;
    this.error = error;
    this.detail = detail;
  }
}

export async function api(path, opts = {}) {
  let resp;
  try {
    resp = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store", ...opts });
  } catch (e) {
    throw new ApiError(0, "unreachable", "the node did not answer");
  }
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) throw new ApiError(resp.status, body && body.error, body && body.detail);
  return body;
}

// ---------------------------------------------------------------- live updates

const LIVE_TEXT = { connecting: "Connecting…", live: "Live", polling: "Polling", offline: "Offline" };
const LIVE_TITLE = {
  connecting: "Connecting to the node's live stream",
  live: "Live: the node pushes every new head (Server-Sent Events)",
  polling: "Live stream unavailable: refreshing every 2 s",
  offline: "The node is not answering; retrying",
};

// Calls onStatus(status) on every update. SSE first; on failure, polls /api/status every
// 2 s and tries SSE again every 20 s.
export class LiveConnection {
  constructor(indicator, onStatus, { pollMs = 2000, retrySseMs = 20000 } = {}) {
    this.indicator = indicator;
    this.onStatus = onStatus;
    this.pollMs = pollMs;
    this.retrySseMs = retrySseMs;
    this.es = null;
    this.pollTimer = null;
    this.retryTimer = null;
  }

  setState(state) {
    this.state = state;
    if (!this.indicator) return;
    this.indicator.dataset.state = state;
    this.indicator.title = LIVE_TITLE[state];
    const label = this.indicator.querySelector(".live-text");
    if (label) label.textContent = LIVE_TEXT[state];
  }

  start() {
    this.setState("connecting");
    this.openSse();
  }

  openSse() {
    if (typeof EventSource === "undefined") { this.startPolling(); return; }
    let es;
    try { es = new EventSource("/api/live"); } catch (_) { this.startPolling(); return; }
    this.es = es;
    es.addEventListener("open", () => { this.stopPolling(); this.setState("live"); });
    es.addEventListener("status", (ev) => {
      this.stopPolling();
      if (this.state !== "live") this.setState("live");
      try { this.onStatus(JSON.parse(ev.data)); } catch (e) { console.error(e); }
    });
    es.addEventListener("error", () => {
      es.close();
      if (this.es === es) this.es = null;
      this.startPolling();
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => { if (!this.es) this.openSse(); }, this.retrySseMs);
    });
  }

  startPolling() {
    if (this.pollTimer) return;
    this.setState("polling");
    const poll = async () => {
      try {
        const st = await api("/api/status");
        if (this.pollTimer) this.setState("polling");
        this.onStatus(st);
      } catch (_) {
        if (this.pollTimer) this.setState("offline");
      }
    };
    this.pollTimer = setInterval(poll, this.pollMs);
    poll();
  }

  stopPolling() {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
  }
}
