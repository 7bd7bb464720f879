// Storage-peer dashboard: one status document (/api/status), refreshed live.
import {
  LiveConnection, api, badge, bar, clear, fmtBytes, fmtDuration, fmtInt, fmtPercent, fmtPpm, fmtRate,
  h, hashEl, setText, shortHex, startTicker,
} from "./util.js";
import { sparkline } from "./charts.js";

const HISTORY = 60;
const HELD_STATES = new Set(["held", "verified", "releasing"]);
const state = { cpu: [], last: null, lastAt: 0, rates: { up: null, down: null } };

function row(label, value, id = null) {
  return h("div", { class: "stat-row" }, h("span", { class: "muted" }, label), h("span", { class: "v", id }, value));
}

function renderDisk(st) {
  const d = st.disk || {};
  const frac = d.allocated ? d.used / d.allocated : 0;
  clear(document.getElementById("disk")).append(
    h("div", { class: "big" }, fmtBytes(d.used), h("span", { class: "muted small" }, ` used of ${fmtBytes(d.allocated)}`)),
    bar(frac, { cls: `disk-bar ${frac > 0.9 ? "danger" : frac > 0.75 ? "warn" : ""}`, label: `${fmtPercent(frac)} used` }),
    row("Allocated", fmtBytes(d.allocated), "disk-allocated"),
    row("Used", `${fmtBytes(d.used)} (${fmtPercent(frac)})`, "disk-used"),
    row("Free", fmtBytes(d.free), "disk-free"));
}

function renderReputation(st) {
  const c = st.challenges || {};
  const th = (st.thresholds || {}).suspend_below_ppm;
  const rep = st.reputation_ppm;
  const below = th !== undefined && rep < th;
  clear(document.getElementById("reputation")).append(
    h("div", { class: "big" }, h("span", { id: "reputation-ppm", class: below ? "danger" : "" }, fmtPpm(rep)),
      h("span", { class: "muted small" }, " reputation")),
    h("div", { class: "rep-gauge" }, bar(rep / 1e6, { cls: below ? "danger" : "ok", marker: th !== undefined ? th / 1e6 : null,
      label: `reputation ${fmtPpm(rep)}, suspended below ${fmtPpm(th)}` }),
    h("div", { class: "rep-legend" }, h("span", {}, "0%"),
      h("span", { id: "suspend-threshold", class: "danger" }, `suspended below ${fmtPpm(th)}`), h("span", {}, "100%"))),
    row("Challenges answered", fmtInt(c.answered), "challenges-answered"),
    row("Passed", fmtInt(c.passed), "challenges-passed"),
    row("Missed", fmtInt(c.missed), "challenges-missed"),
    row("Failed (invalid proof)", fmtInt(c.failed), "challenges-failed"));
}

function renderSystem(st) {
  const s = st.system || {};
  const now = performance.now();
  if (state.last && now > state.lastAt) {
    const dt = (now - state.lastAt) / 1000;
    if (dt > 0.2) {
      state.rates.up = Math.max(0, (s.net_sent - state.last.net_sent) / dt);
      state.rates.down = Math.max(0, (s.net_recv - state.last.net_recv) / dt);
    }
  }
  state.last = s;
  state.lastAt = now;
  state.cpu.push(s.cpu_percent || 0);
  if (state.cpu.length > HISTORY) state.cpu.shift();
  const ram = s.ram_total ? s.ram_used / s.ram_total : 0;
  clear(document.getElementById("system")).append(
    row("CPU", `${(s.cpu_percent || 0).toFixed(1)}%`, "cpu-percent"),
    sparkline(state.cpu, { max: 100 }),
    row("RAM", `${fmtBytes(s.ram_used)} / ${fmtBytes(s.ram_total)}`, "ram-used"),
    bar(ram, { cls: ram > 0.9 ? "danger" : "", label: `${fmtPercent(ram)} of RAM in use` }),
    row("Network sent", `${fmtBytes(s.net_sent)}${state.rates.up !== null ? ` · ${fmtRate(state.rates.up)}` : ""}`, "net-sent"),
    row("Network received", `${fmtBytes(s.net_recv)}${state.rates.down !== null ? ` · ${fmtRate(state.rates.down)}` : ""}`, "net-recv"));
}

function renderShards(st) {
  const shards = st.shards || [];
  const held = shards.filter((s) => HELD_STATES.has(s.state)).length;
  const summary = document.getElementById("shards-summary");
  clear(summary).append(h("span", { id: "shards-held" }, String(held)), " held of ",
    h("span", { id: "shards-assigned" }, String(shards.length)), " assigned");
  const down = shards.reduce((a, s) => a + (s.down_rate || 0), 0);
  const up = shards.reduce((a, s) => a + (s.up_rate || 0), 0);
  const rows = shards.map((s) => h("tr", { "data-testid": "shard-row", "data-state": s.state },
    h("td", {}, h("strong", {}, s.name || shortHex(s.collection)), h("span", { class: "muted mono small" }, ` ${shortHex(s.collection, 6)}`)),
    h("td", { class: "num" }, String(s.shard)),
    h("td", { title: s.error || null }, badge(s.state === "failed" && s.error_cause ? `failed: ${s.error_cause}` : s.state, s.state)),
    h("td", { class: "num" }, fmtBytes(s.bytes)),
    h("td", {}, h("div", { class: "progress-cell" },
      bar(s.progress, { cls: s.progress >= 1 ? "ok" : "", label: fmtPercent(s.progress) }),
      h("span", { class: "num small", "data-testid": "shard-progress" }, fmtPercent(s.progress)))),
    h("td", { class: "num" }, fmtRate(s.down_rate)),
    h("td", { class: "num" }, fmtRate(s.up_rate)),
    h("td", { class: "num" }, s.progress >= 1 ? "done" : s.eta_s === null || s.eta_s === undefined ? "–" : fmtDuration(s.eta_s))));
  const headers = ["Collection", "Shard", "State", "Size", "Progress", "Down", "Up", "ETA"];
  clear(document.getElementById("shards")).append(
    h("div", { class: "stat-row" }, h("span", { class: "muted" }, "Total transfer"),
      h("span", { class: "v", id: "total-rates" }, `↓ ${fmtRate(down)}  ↑ ${fmtRate(up)}`)),
    h("div", { class: "table-wrap" }, h("table", { id: "shards-table" },
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: ["Shard", "Size", "Down", "Up", "ETA"].includes(x) ? "num" : null }, x)))),
      h("tbody", {}, rows.length ? rows : h("tr", { class: "empty-row" },
        h("td", { colspan: headers.length }, "No shards assigned yet: the targets have not picked this peer."))))));
}

function renderConnected(st) {
  const peers = st.connected_peers || [];
  clear(document.getElementById("connected")).append(h("div", { class: "table-wrap" }, h("table", { id: "connected-table" },
    h("thead", {}, h("tr", {}, ["Role", "Id", "Address"].map((x) => h("th", {}, x)))),
    h("tbody", {}, peers.length ? peers.map((p) => h("tr", { "data-testid": "connected-row" },
      h("td", {}, badge(p.role, p.role === "beacon" ? "assigned" : "ok")), h("td", {}, hashEl(p.id)),
      h("td", { class: "mono" }, p.address)))
      : h("tr", { class: "empty-row" }, h("td", { colspan: 3 }, "Not connected to anyone."))))));
}

function apply(st) {
  setText("chain-id", st.chain_id);
  setText("nav-head", `#${fmtInt(st.head_height)}`);
  const nid = document.getElementById("node-id");
  nid.textContent = shortHex(st.node_id, 10);
  nid.title = st.node_id;
  clear(document.getElementById("peer-status-badge")).append(h("span", { id: "peer-status" }, badge(st.status)));
  document.getElementById("sync-banner").hidden = !st.syncing;
  for (const fn of [renderDisk, renderReputation, renderSystem, renderShards, renderConnected]) {
    try { fn(st); } catch (e) { console.error(e); }
  }
  document.getElementById("app").dataset.ready = "1";
}

async function main() {
  startTicker();
  try { apply(await api("/api/status")); } catch (e) { console.error(e); }
  new LiveConnection(document.getElementById("live-indicator"), apply).start();
}

main();
