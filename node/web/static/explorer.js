// Block explorer: a hash-routed single page over the node's JSON API.
// Routes: #/  #/blocks?before=N  #/block/<height|hash>  #/validators  #/peers?status=&offset=
//         #/peer/<id>  #/collections  #/collection/<name|info hash>  #/charts  #/search/<q>
import {
  ApiError, LiveConnection, absTime, api, badge, bar, clear, copyButton, fmtBytes, fmtInt, fmtPpm,
  fullHashEl, h, hashEl, setText, shortHex, startTicker, timeEl,
} from "./util.js";
import { barChart, lineChart, stackedBarChart } from "./charts.js";

const BLOCKS_PAGE = 20;
const PEERS_PAGE = 50;
const HEX64 = /^[0-9a-f]{64}$/;
// Columns whose cells are right-aligned numbers.
const NUMERIC_HEADERS = new Set(["Records", "Round", "Index", "#", "Proposed", "Missed rounds", "Evidence", "Holdings",
  "Proofs ✓ / missed / failed", "Target", "Size", "Shard", "Leaf", "Length"]);

const state = {
  status: null,
  validators: null,      // Map public_key -> validator
  renderToken: 0,
  route: null,
};

// ---------------------------------------------------------------- links and small views

const blockHref = (ref) => `#/block/${ref}`;
const peerHref = (id) => `#/peer/${id}`;
const collectionHref = (ref) => `#/collection/${encodeURIComponent(ref)}`;

function blockLink(height) {
  return h("a", { href: blockHref(height), class: "mono" }, `#${height}`);
}

function peerLink(id, n = 8) {
  return h("a", { href: peerHref(id), class: "mono", title: id }, shortHex(id, n));
}

function validatorName(key) {
  const v = state.validators && state.validators.get(key);
  return v ? v.name : null;
}

function proposerEl(key) {
  const name = validatorName(key);
  return h("span", { class: "proposer", title: key }, name ? h("strong", {}, name) : null,
    name ? " " : null, h("span", { class: "mono muted" }, shortHex(key, 6)));
}

function verdictBadge(v) {
  const norm = { pass: "passed", passed: "passed", miss: "missed", missed: "missed", invalid: "failed",
    failed: "failed", fail: "failed" }[v] || v;
  return badge(norm, norm);
}

function orDash(v) {
  return v === null || v === undefined || v === "" ? "–" : String(v);
}

function section(title, ...children) {
  return h("section", { class: "panel" }, title ? h("h2", {}, title) : null, ...children);
}

function table(headers, rows, attrs = {}) {
  return h("div", { class: "table-wrap" }, h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map((x) => (NUMERIC_HEADERS.has(x) ? h("th", { class: "num" }, x) : h("th", {}, x))))),
    h("tbody", {}, rows.length ? rows
      : h("tr", { class: "empty-row" }, h("td", { colspan: headers.length }, "Nothing here yet.")))));
}

function card(label, value, sub = null, attrs = {}) {
  return h("div", { class: "card", ...attrs }, h("div", { class: "card-label" }, label),
    h("div", { class: "card-value" }, value), sub ? h("div", { class: "card-sub" }, sub) : null);
}

function errorView(e) {
  const title = e instanceof ApiError
    ? ({ 404: "Not found", 400: "Bad request", 0: "Node unreachable" }[e.status] || `Error ${e.status}`)
    : "Something went wrong";
  return h("div", { id: "error", class: "panel error-panel", "data-status": e.status || "" },
    h("h1", {}, title), h("p", {}, e.detail || e.message || String(e)),
    h("p", {}, h("a", { href: "#/" }, "← Back to the overview")));
}

async function ensureValidators() {
  if (!state.validators) {
    const res = await api("/api/validators");
    state.validators = new Map(res.validators.map((v) => [v.public_key, v]));
  }
  return state.validators;
}

// ---------------------------------------------------------------- status (header, banner, home)

function applyStatus(st) {
  const prev = state.status;
  state.status = st;
  setText("chain-id", st.chain_id);
  setText("nav-head", `#${fmtInt(st.head_height)}`);
  document.getElementById("sync-banner").hidden = !st.syncing;
  document.body.classList.toggle("syncing", !!st.syncing);
  const headMoved = !prev || prev.head_height !== st.head_height;
  const storageMoved = !prev || ["replication_deficit", "shards_at_target", "shards_total", "peers_active",
    "peers_suspended", "peers_excluded", "collections"].some((k) => prev[k] !== st[k]);
  const r = state.route;
  if (!r) return;
  if (r.name === "home") {
    renderHomeCards(st);
    if (headMoved) refreshLatestBlocks();
  } else if (r.name === "blocks" && !r.query.get("before") && headMoved) {
    refreshBlocksPage(r);
  } else if (["collection", "collections", "peers"].includes(r.name) && (headMoved || storageMoved)) {
    render({ quiet: true });
  }
}

function renderHomeCards(st) {
  const grid = document.getElementById("home-cards");
  if (!grid) return;
  const storedFrac = st.target_bytes ? st.stored_bytes / st.target_bytes : 1;
  const cards = [
    card("Head", h("a", { id: "head-height", href: blockHref(st.head_height) }, fmtInt(st.head_height)),
      h("span", {}, "last block ", h("span", { id: "head-age", class: "rel strong", "data-ms": st.head_time_ms }, ""),
        h("br"), h("span", { id: "head-time", class: "muted small", title: new Date(st.head_time_ms).toISOString() }, absTime(st.head_time_ms)))),
    card("Finalized", h("a", { id: "finalized-height", href: blockHref(st.finalized_height) }, fmtInt(st.finalized_height)),
      st.head_height === st.finalized_height ? "head is final (BFT commit)"
        : `${st.head_height - st.finalized_height} blocks behind head`),
    card("Latest randomness", h("span", { class: "hash" },
      h("span", { id: "randomness", class: "mono", title: st.randomness }, shortHex(st.randomness, 10)),
      copyButton(st.randomness || "")), `ECVRF output of block ${fmtInt(st.head_height)}`),
    card("Validators online", h("span", { id: "validators-online" }, `${st.validators_online} / ${st.validators_total}`),
      h("a", { href: "#/validators" }, "see validators")),
    card("Storage peers", h("span", { class: "peer-counts" },
      h("a", { href: "#/peers?status=active", class: "ok" }, h("span", { id: "peers-active" }, fmtInt(st.peers_active)), " active"),
      h("a", { href: "#/peers?status=suspended", class: st.peers_suspended ? "warn" : "muted" },
        h("span", { id: "peers-suspended" }, fmtInt(st.peers_suspended)), " suspended"),
      h("a", { href: "#/peers?status=excluded", class: st.peers_excluded ? "danger" : "muted" },
        h("span", { id: "peers-excluded" }, fmtInt(st.peers_excluded)), " excluded"))),
    card("Stored vs target",
      h("span", {}, h("span", { id: "stored-bytes" }, fmtBytes(st.stored_bytes)), h("span", { class: "muted small" }, " of "),
        h("span", { id: "target-bytes", class: "small" }, fmtBytes(st.target_bytes))),
      bar(storedFrac, { cls: storedFrac >= 1 ? "ok" : "warn", label: `${(100 * storedFrac).toFixed(1)}% of target` })),
    card("Shards at target",
      h("span", { id: "shards-at-target" }, `${fmtInt(st.shards_at_target)} / ${fmtInt(st.shards_total)}`),
      h("span", { class: st.replication_deficit ? "danger strong" : "ok" },
        st.replication_deficit ? "deficit: " : "no deficit",
        h("span", { id: "replication-deficit", "data-value": st.replication_deficit },
          st.replication_deficit ? `${fmtInt(st.replication_deficit)} cop${st.replication_deficit === 1 ? "y" : "ies"} missing` : ""))),
    card("Collections", h("a", { id: "collections-count", href: "#/collections" }, fmtInt(st.collections)),
      `${fmtInt(st.shards_total)} shards`),
  ];
  clear(grid).append(...cards);
  const age = document.getElementById("head-age");
  if (age) age.textContent = relTimeNow(st.head_time_ms);
}

function relTimeNow(ms) {
  const s = (Date.now() - ms) / 1000;
  return s < 1 ? "just now" : s < 60 ? `${Math.floor(s)} s ago` : s < 3600 ? `${Math.floor(s / 60)} min ago` : `${Math.floor(s / 3600)} h ago`;
}

function blockRows(blocks) {
  return blocks.map((b) => h("tr", { "data-testid": "block-row", "data-height": b.height },
    h("td", {}, blockLink(b.height)),
    h("td", {}, hashEl(b.hash, { href: blockHref(b.hash), n: 10 })),
    h("td", {}, proposerEl(b.proposer)),
    h("td", { class: "num" }, fmtInt(b.records)),
    h("td", { class: "num" }, String(b.round)),
    h("td", {}, timeEl(b.time_ms))));
}

const BLOCK_HEADERS = ["Height", "Hash", "Proposer", "Records", "Round", "Time"];

async function refreshLatestBlocks() {
  const holder = document.getElementById("latest-blocks");
  if (!holder) return;
  try {
    const res = await api("/api/blocks?limit=10");
    await ensureValidators().catch(() => null);
    const fresh = document.getElementById("latest-blocks");
    if (fresh) clear(fresh).append(table(BLOCK_HEADERS, blockRows(res.blocks), { id: "latest-blocks-table" }));
  } catch (e) { /* keep the old list */ }
}

async function viewHome() {
  const [st] = await Promise.all([state.status ? state.status : api("/api/status"), ensureValidators()]);
  if (!state.status) applyStatus(st);
  const el = h("div", { class: "page-home" },
    h("div", { class: "page-title" }, h("h1", {}, "Network overview"),
      h("span", { class: "muted" }, "Random beacon chain · storage peers · collections")),
    h("div", { id: "home-cards", class: "cards" }),
    section("Latest blocks", h("div", { id: "latest-blocks" }, h("p", { class: "muted" }, "Loading…")),
      h("p", {}, h("a", { href: "#/blocks" }, "All blocks →"))));
  return el;
}

// ---------------------------------------------------------------- blocks

async function refreshBlocksPage(r) {
  const holder = document.getElementById("blocks-list");
  if (!holder) return;
  try {
    const res = await api(`/api/blocks?limit=${BLOCKS_PAGE}`);
    const fresh = document.getElementById("blocks-list");
    if (fresh && state.route === r) clear(fresh).append(table(BLOCK_HEADERS, blockRows(res.blocks), { id: "blocks-table" }));
  } catch (_) { /* keep */ }
}

async function viewBlocks(r) {
  const before = r.query.get("before");
  const qs = new URLSearchParams({ limit: String(BLOCKS_PAGE) });
  if (before !== null && before !== "") qs.set("before", before);
  const [res] = await Promise.all([api(`/api/blocks?${qs}`), ensureValidators()]);
  const head = state.status ? state.status.head_height : null;
  let newer = null;
  if (before !== null && before !== "") {
    const nb = Number(before) + BLOCKS_PAGE;
    newer = head !== null && nb > head ? "#/blocks" : `#/blocks?before=${nb}`;
  }
  const older = res.next_before !== null && res.next_before !== undefined ? `#/blocks?before=${res.next_before}` : null;
  const range = res.blocks.length
    ? `Blocks ${fmtInt(res.blocks[0].height)} – ${fmtInt(res.blocks[res.blocks.length - 1].height)}` : "No blocks";
  const pager = (top) => h("div", { class: "pager" },
    h("a", { id: top ? "blocks-newer" : null, class: `button ${newer ? "" : "disabled"}`, href: newer || null, "aria-disabled": !newer }, "← Newer"),
    h("span", { id: top ? "blocks-range" : null, class: "muted" }, range),
    h("a", { id: top ? "blocks-older" : null, class: `button ${older ? "" : "disabled"}`, href: older || null, "aria-disabled": !older }, "Older →"));
  return h("div", {},
    h("div", { class: "page-title" }, h("h1", {}, "Blocks"), before ? h("a", { href: "#/blocks" }, "Latest") : null),
    section(null, pager(true), h("div", { id: "blocks-list" }, table(BLOCK_HEADERS, blockRows(res.blocks), { id: "blocks-table" })), pager(false)));
}

function recordValue(key, value) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "–");
  if (typeof value === "number") return h("span", { class: "num" }, fmtInt(value));
  if (typeof value === "boolean") return String(value);
  if (Array.isArray(value)) return value.length ? h("span", {}, value.map((v, i) => [i ? ", " : "", recordValue(key, v)])) : h("span", { class: "muted" }, "[]");
  if (typeof value === "object") return h("code", { class: "small" }, JSON.stringify(value));
  if (HEX64.test(value)) {
    if (key === "peer" || key === "validator") return hashEl(value, { href: peerOrValidator(key, value) });
    if (key === "collection") return hashEl(value, { href: collectionHref(value) });
    return hashEl(value);
  }
  if (/^[0-9a-f]{65,}$/.test(value)) return hashEl(value);
  return String(value);
}

function peerOrValidator(key, value) {
  return key === "validator" || validatorName(value) ? "#/validators" : peerHref(value);
}

function recordsByKind(records) {
  const groups = new Map();
  for (const rec of records) {
    if (!groups.has(rec.kind)) groups.set(rec.kind, []);
    groups.get(rec.kind).push(rec);
  }
  if (!groups.size) return h("p", { class: "muted", id: "no-records" }, "This block carries no records.");
  return h("div", { id: "records" }, [...groups.entries()].map(([kind, recs]) => {
    const keys = [...new Set(recs.flatMap((r) => Object.keys(r)))].filter((k) => k !== "kind");
    return h("div", { class: "record-group", "data-kind": kind },
      h("h3", {}, kind, " ", h("span", { class: "count" }, String(recs.length))),
      table(keys, recs.map((rec) => h("tr", { "data-testid": "record-row", "data-kind": kind },
        keys.map((k) => h("td", {}, recordValue(k, rec[k])))))));
  }));
}

function rawHexView(hex) {
  const lines = (hex.match(/.{1,64}/g) || []).map((l, i) =>
    `${(i * 32).toString(16).padStart(6, "0")}  ${l.replace(/(.{8})/g, "$1 ").trim()}`);
  return h("details", { id: "raw-view", class: "raw" },
    h("summary", {}, `Raw block: ${fmtInt(hex.length / 2)} bytes, canonical encoding`, " ", copyButton(hex, "Copy raw hex")),
    h("pre", { id: "raw-hex", class: "mono" }, lines.join("\n")));
}

async function viewBlock(r) {
  const [b] = await Promise.all([api(`/api/blocks/${encodeURIComponent(r.arg)}`), ensureValidators()]);
  const head = state.status ? state.status.head_height : b.height;
  const zero = "0".repeat(64);
  const field = (name, label, value) => h("tr", { "data-field": name }, h("th", {}, label), h("td", {}, value));
  const fields = h("table", { class: "kv", id: "block-header" }, h("tbody", {},
    field("height", "Height", h("span", { id: "block-height", class: "mono" }, fmtInt(b.height))),
    field("hash", "Hash", fullHashEl(b.hash, { id: "block-hash" })),
    field("chain_id", "Chain id", h("span", { class: "mono" }, b.chain_id)),
    field("round", "Round", String(b.round)),
    field("time_ms", "Time", timeEl(b.time_ms)),
    field("parent_hash", "Parent hash", fullHashEl(b.parent_hash, { href: b.parent_hash !== zero && b.height > 0 ? blockHref(b.height - 1) : null })),
    field("proposer", "Proposer", h("span", {}, validatorName(b.proposer) ? h("strong", {}, validatorName(b.proposer), " ") : null,
      fullHashEl(b.proposer))),
    field("vrf_proof", "VRF proof", fullHashEl(b.vrf_proof)),
    field("randomness", "Randomness", fullHashEl(b.randomness)),
    field("state_root", "State root", fullHashEl(b.state_root)),
    field("body_root", "Body root", fullHashEl(b.body_root)),
    field("signature", "Proposer signature", fullHashEl(b.signature))));
  const commit = b.commit || { round: null, signers: [] };
  const records = Array.isArray(b.records) ? b.records : [];
  return h("div", {},
    h("div", { class: "page-title" },
      h("h1", {}, "Block ", h("span", { class: "mono" }, `#${fmtInt(b.height)}`)),
      h("span", { class: "pager-inline" },
        b.height > 0 ? h("a", { id: "block-prev", class: "button", href: blockHref(b.height - 1) }, "← Parent") : null,
        b.height < head ? h("a", { id: "block-next", class: "button", href: blockHref(b.height + 1) }, "Child →") : null)),
    section("Header", fields),
    section(`Commit: round ${commit.round}, ${commit.signers.length} signatures`,
      table(["Index", "Validator", "Public key"], commit.signers.map((sg) => h("tr", { "data-testid": "signer-row" },
        h("td", { class: "num" }, String(sg.index)), h("td", {}, sg.name || "–"), h("td", {}, hashEl(sg.public_key, { n: 12 })))),
      { id: "commit-signers" })),
    section(`Records (${records.length})`, recordsByKind(records)),
    section("Raw", b.raw_hex ? rawHexView(b.raw_hex) : h("p", { class: "muted" }, "Not available.")));
}

// ---------------------------------------------------------------- validators

async function viewValidators() {
  const res = await api("/api/validators");
  state.validators = new Map(res.validators.map((v) => [v.public_key, v]));
  const online = res.validators.filter((v) => v.online).length;
  return h("div", {},
    h("div", { class: "page-title" }, h("h1", {}, "Validators"),
      h("span", { class: "muted" }, `${online} of ${res.validators.length} online`)),
    section(null, table(["#", "Name", "Status", "Public key", "VRF key", "Address", "Proposed", "Missed rounds", "Evidence"],
      res.validators.map((v) => h("tr", { "data-testid": "validator-row" },
        h("td", { class: "num" }, String(v.index)), h("td", {}, h("strong", {}, v.name)),
        h("td", {}, v.online ? badge("online", "active") : badge("offline", "suspended")),
        h("td", {}, hashEl(v.public_key)), h("td", {}, hashEl(v.vrf_public_key)),
        h("td", { class: "mono" }, v.address),
        h("td", { class: "num" }, fmtInt(v.proposed)), h("td", { class: "num" }, fmtInt(v.missed_rounds)),
        h("td", { class: "num" }, (v.evidence || []).length ? h("span", { class: "danger strong" }, String(v.evidence.length)) : "0"))),
      { id: "validators-table" })));
}

// ---------------------------------------------------------------- peers

async function viewPeers(r) {
  const status = r.query.get("status") || "";
  const offset = Number(r.query.get("offset") || 0);
  const qs = new URLSearchParams({ offset: String(offset), limit: String(PEERS_PAGE) });
  if (status) qs.set("status", status);
  const res = await api(`/api/peers?${qs}`);
  const st = state.status;
  const tab = (value, label, count) => h("a", { href: value ? `#/peers?status=${value}` : "#/peers",
    class: `tab ${status === value ? "active" : ""}`, "data-filter": value || "all" }, label,
    count !== null && count !== undefined ? h("span", { class: "count" }, fmtInt(count)) : null);
  const pageHref = (off) => `#/peers?${new URLSearchParams({ ...(status ? { status } : {}), offset: String(off) })}`;
  return h("div", {},
    h("div", { class: "page-title" }, h("h1", {}, "Storage peers"), h("span", { class: "muted" }, `${fmtInt(res.total)} peers`)),
    h("div", { class: "tabs" }, tab("", "All", st ? st.peers_active + st.peers_suspended + st.peers_excluded : null),
      tab("active", "Active", st && st.peers_active), tab("suspended", "Suspended", st && st.peers_suspended),
      tab("excluded", "Excluded", st && st.peers_excluded)),
    section(null, table(["Peer", "Status", "Reputation", "Capacity used", "Holdings", "Proofs ✓ / missed / failed", "BitTorrent", "Joined"],
      res.peers.map((p) => h("tr", { "data-testid": "peer-row", "data-status": p.status },
        h("td", {}, hashEl(p.id, { href: peerHref(p.id) })), h("td", {}, badge(p.status)),
        h("td", {}, h("div", { class: "cell-bar" }, h("span", {}, fmtPpm(p.reputation_ppm)), bar(p.reputation_ppm / 1e6, { cls: p.reputation_ppm < 600000 ? "warn" : "ok" }))),
        h("td", {}, h("div", { class: "cell-bar" }, h("span", { class: "small" }, `${fmtBytes(p.used_bytes)} / ${fmtBytes(p.capacity)}`), bar(p.capacity ? p.used_bytes / p.capacity : 0))),
        h("td", { class: "num" }, fmtInt(p.holdings)),
        h("td", { class: "num" }, h("span", { class: "ok" }, fmtInt(p.proofs_passed)), " / ",
          h("span", { class: p.proofs_missed ? "warn" : "muted" }, fmtInt(p.proofs_missed)), " / ",
          h("span", { class: p.proofs_failed ? "danger" : "muted" }, fmtInt(p.proofs_failed))),
        h("td", { class: "mono small" }, p.bt_address), h("td", {}, blockLink(p.joined_height)))),
      { id: "peers-table" }),
      h("div", { class: "pager" },
        h("a", { id: "peers-prev", class: `button ${offset > 0 ? "" : "disabled"}`, href: offset > 0 ? pageHref(Math.max(0, offset - PEERS_PAGE)) : null }, "← Previous"),
        h("span", { class: "muted" }, res.total ? `${offset + 1}–${Math.min(offset + PEERS_PAGE, res.total)} of ${fmtInt(res.total)}` : ""),
        h("a", { id: "peers-next", class: `button ${offset + PEERS_PAGE < res.total ? "" : "disabled"}`,
          href: offset + PEERS_PAGE < res.total ? pageHref(offset + PEERS_PAGE) : null }, "Next →"))));
}

async function viewPeer(r) {
  const p = await api(`/api/peers/${encodeURIComponent(r.arg)}`);
  const threshold = p.thresholds && p.thresholds.suspend_below_ppm;
  const hist = (p.reputation_history || []).map((x) => ({ x: x.height, y: x.reputation_ppm / 1e4 }));
  const used = p.capacity ? p.used_bytes / p.capacity : 0;
  const holdings = Array.isArray(p.holdings) ? p.holdings : [];
  const proofs = p.proofs || [];
  return h("div", {},
    h("div", { class: "page-title" }, h("h1", {}, "Peer"), badge(p.status),
      h("span", { id: "peer-status", class: "sr-only" }, p.status)),
    h("p", { class: "id-line" }, fullHashEl(p.id, { id: "peer-id" })),
    h("div", { class: "cards" },
      card("Reputation", h("span", { id: "peer-reputation" }, fmtPpm(p.reputation_ppm)),
        threshold ? h("span", { class: p.reputation_ppm < threshold ? "danger" : "muted" },
          `suspended below ${fmtPpm(threshold)}`) : null),
      card("Capacity used", h("span", { id: "peer-capacity" }, `${fmtBytes(p.used_bytes)} / ${fmtBytes(p.capacity)}`),
        bar(used, { cls: used > 0.9 ? "warn" : "", label: `${(100 * used).toFixed(1)}% used` })),
      card("Holdings", h("span", { id: "peer-holdings" }, fmtInt(holdings.length)), "shards held and verified"),
      card("Proofs", h("span", { class: "triple" },
        h("span", {}, h("span", { id: "proofs-passed", class: "ok" }, fmtInt(p.proofs_passed)), h("small", {}, "passed")),
        h("span", {}, h("span", { id: "proofs-missed", class: p.proofs_missed ? "warn" : "" }, fmtInt(p.proofs_missed)), h("small", {}, "missed")),
        h("span", {}, h("span", { id: "proofs-failed", class: p.proofs_failed ? "danger" : "" }, fmtInt(p.proofs_failed)), h("small", {}, "failed")))),
      card("Addresses", h("span", { class: "mono small" }, "bt ", p.bt_address, h("br"), "api ", p.api_address)),
      card("Joined", h("span", {}, "block ", blockLink(p.joined_height)))),
    section("Reputation over time", h("div", { id: "reputation-chart", class: "chart-box" },
      lineChart(hist, { width: 1160, height: 260, title: "Reputation (%) by block height", xLabel: "block height", yLabel: "reputation %",
        yMin: 0, yMax: 100, fmtY: (v) => `${Math.round(v)}%`, fmtX: (v) => `#${v}`,
        threshold: threshold ? { value: threshold / 1e4, label: `suspension threshold ${fmtPpm(threshold)}` } : null }))),
    section(`Holdings (${holdings.length})`, table(["Collection", "Shard", "State", "Verified at"],
      holdings.map((x) => h("tr", { "data-testid": "holding-row" },
        h("td", {}, h("a", { href: collectionHref(x.collection) }, x.name || shortHex(x.collection))),
        h("td", { class: "num" }, String(x.shard)), h("td", {}, badge(x.state)),
        h("td", {}, x.state !== "verified" || x.verified_height === null || x.verified_height === undefined ? "–" : blockLink(x.verified_height)))),
      { id: "holdings-table" })),
    section(`Recent proofs (${proofs.length})`, table(["Height", "Challenge", "Collection", "Shard", "Leaf", "Verdict"],
      proofs.map((x) => h("tr", { "data-testid": "proof-row", "data-verdict": x.verdict },
        h("td", {}, blockLink(x.height)), h("td", {}, hashEl(x.challenge_id)),
        h("td", {}, x.collection ? h("a", { href: collectionHref(x.collection), class: "mono", title: x.collection }, shortHex(x.collection))
          : h("span", { class: "muted" }, "–")),
        h("td", { class: "num" }, orDash(x.shard)), h("td", { class: "num" }, orDash(x.leaf)),
        h("td", {}, verdictBadge(x.verdict)))),
      { id: "proofs-table" })));
}

// ---------------------------------------------------------------- collections

function holdersEl(n, target) {
  const cls = n >= target ? "ok" : n === 0 ? "danger" : "warn";
  const pips = [];
  for (let i = 0; i < Math.max(n, target); i++) pips.push(h("span", { class: `pip ${i < n ? "on" : ""}` }));
  return h("span", { class: `holders ${cls}` },
    h("span", { class: "holders-count", "data-testid": "shard-holders", "data-verified": n, "data-target": target }, `${n}/${target}`),
    h("span", { class: "pips", "aria-hidden": "true" }, pips));
}

async function viewCollections() {
  const res = await api("/api/collections");
  return h("div", {},
    h("div", { class: "page-title" }, h("h1", {}, "Collections"), h("span", { class: "muted" }, `${res.collections.length} published`)),
    section(null, table(["Name", "Info hash (v2)", "Target", "Size", "Shards at target", "Deficit", "Published"],
      res.collections.map((c) => h("tr", { "data-testid": "collection-row", "data-deficit": c.deficit },
        h("td", {}, h("a", { href: collectionHref(c.info_hash) }, h("strong", {}, c.name))),
        h("td", {}, hashEl(c.info_hash)), h("td", { class: "num" }, String(c.target)),
        h("td", { class: "num" }, fmtBytes(c.size)),
        h("td", {}, holdersEl(c.shards_at_target, c.shards)),
        h("td", {}, c.deficit ? badge(`${c.deficit} missing`, "deficit") : badge("none", "ok")),
        h("td", {}, blockLink(c.published_height)))),
      { id: "collections-table" })));
}

async function viewCollection(r) {
  const c = await api(`/api/collections/${encodeURIComponent(r.arg)}`);
  const shards = c.shards || [];
  const below = shards.filter((s) => s.verified_holders.length < s.target);
  const health = c.deficit > 0
    ? h("div", { id: "deficit-banner", class: "banner banner-danger", role: "alert" },
      h("strong", {}, "Under target: "),
      `${c.deficit} verified cop${c.deficit === 1 ? "y" : "ies"} missing on ${below.length} shard${below.length === 1 ? "" : "s"} `,
      `(${below.map((s) => `shard ${s.index}: ${s.verified_holders.length}/${s.target}`).join(", ")}). `,
      "The targets assign new holders; they count once their proofs pass.")
    : h("div", { id: "at-target-banner", class: "banner banner-ok", role: "status" },
      `All ${shards.length} shards have their ${c.target} verified copies.`);
  return h("div", {},
    h("div", { class: "page-title" }, h("h1", { id: "collection-name" }, c.name),
      c.deficit ? badge(`deficit ${c.deficit}`, "deficit") : badge("at target", "ok")),
    health,
    h("div", { class: "cards" },
      card("Info hash (v2)", hashEl(c.info_hash, { n: 12, testid: "info-hash" })),
      card("Info hash (v1)", hashEl(c.info_hash_v1, { n: 12 })),
      card("Redundancy target", h("span", { id: "collection-target" }, `${c.target} copies`)),
      card("Size", fmtBytes(c.size), `${(c.files || []).length} files`),
      card("Shards at target", h("span", { id: "collection-at-target" }, `${c.shards_at_target} / ${shards.length}`)),
      card("Published", h("span", {}, "block ", blockLink(c.published_height)))),
    section("Shards", table(["Shard", "File", "Size", "Verified / target", "Verified holders", "Claimed", "Assigned", "Last proof"],
      shards.map((s) => h("tr", { "data-testid": "shard-row", "data-shard": s.index,
        class: s.verified_holders.length < s.target ? "row-deficit" : "" },
        h("td", { class: "num" }, String(s.index)), h("td", { class: "mono small" }, s.file),
        h("td", { class: "num" }, fmtBytes(s.size)), h("td", {}, holdersEl(s.verified_holders.length, s.target)),
        h("td", {}, peerList(s.verified_holders)), h("td", {}, peerList(s.claimed)),
        h("td", {}, peerList(s.assigned)),
        h("td", {}, s.last_proof_height === null || s.last_proof_height === undefined ? h("span", { class: "muted" }, "never") : blockLink(s.last_proof_height)))),
      { id: "shards-table" })),
    section("Files", table(["Path", "Length"], (c.files || []).map((f) => h("tr", {},
      h("td", { class: "mono" }, f.path), h("td", { class: "num" }, fmtBytes(f.length)))), { id: "files-table" })));
}

function peerList(ids) {
  if (!ids || !ids.length) return h("span", { class: "muted" }, "–");
  return h("span", { class: "peer-list" }, ids.map((id) => peerLink(id, 6)));
}

// ---------------------------------------------------------------- charts

async function viewCharts() {
  const [ch, cols] = await Promise.all([api("/api/charts"), api("/api/collections")]);
  const target = Math.max(0, ...cols.collections.map((c) => c.target));
  const maxCopies = Math.max(target, ...Object.keys(ch.redundancy).map(Number));
  const red = [];
  for (let k = 0; k <= maxCopies; k++) {
    red.push({ label: String(k), value: ch.redundancy[String(k)] || 0, cls: target && k < target ? "below" : "at",
      title: `${ch.redundancy[String(k)] || 0} shards with ${k} verified copies` });
  }
  if (!Object.values(ch.redundancy).some((n) => n > 0)) red.length = 0;  // no shards yet: "No data yet"
  const epochs = ch.proofs_per_epoch || [];
  const intervals = ch.block_intervals || [];
  return h("div", {},
    h("div", { class: "page-title" }, h("h1", {}, "Charts")),
    h("div", { class: "chart-grid" },
      section("Redundancy distribution", h("p", { class: "muted small" }, "Shards by number of verified copies", target ? ` (target ${target})` : ""),
        h("div", { id: "chart-redundancy", class: "chart-box" },
          barChart(red, { title: "Shards by verified copies", xLabel: "verified copies", yLabel: "shards",
            marker: target ? { label: String(target), text: "target" } : null }))),
      section("Proofs per epoch", h("p", { class: "muted small" }, "Verdicts of the storage challenges of each epoch"),
        h("div", { id: "chart-proofs", class: "chart-box" },
          stackedBarChart(epochs.map((e) => String(e.epoch)), [
            { name: "passed", cls: "passed", values: epochs.map((e) => e.passed) },
            { name: "missed", cls: "missed", values: epochs.map((e) => e.missed) },
            { name: "failed", cls: "failed", values: epochs.map((e) => e.failed) },
          ], { title: "Proof verdicts per epoch", xLabel: "epoch", yLabel: "proofs" }))),
      section("Block interval", h("p", { class: "muted small" }, "Time between consecutive blocks (chain growth)"),
        h("div", { id: "chart-intervals", class: "chart-box" },
          lineChart(intervals.map((x) => ({ x: x.height, y: x.interval_ms / 1000 })), {
            title: "Seconds between blocks", xLabel: "block height", yLabel: "seconds", yMin: 0,
            fmtY: (v) => `${v.toFixed(1)} s`, fmtX: (v) => `#${v}`, cls: "intervals" })))));
}

// ---------------------------------------------------------------- search

function hashPart(url) {
  const i = url.indexOf("#");
  return i >= 0 ? url.slice(i) : url;
}

async function doSearch(q) {
  q = q.trim();
  if (!q) return;
  try {
    const res = await api(`/api/search?q=${encodeURIComponent(q)}`);
    if (res.matches.length === 1) {
      location.hash = hashPart(res.matches[0].url);
      return;
    }
  } catch (_) { /* the search page shows the error */ }
  const target = `#/search/${encodeURIComponent(q)}`;
  if (location.hash === target) render(); else location.hash = target;
}

async function viewSearch(r) {
  const q = r.arg;
  const res = await api(`/api/search?q=${encodeURIComponent(q)}`);
  const kinds = [["block", "Blocks"], ["peer", "Peers"], ["collection", "Collections"]];
  const groups = kinds.map(([kind, title]) => {
    const ms = res.matches.filter((m) => m.kind === kind);
    return ms.length ? section(`${title} (${ms.length})`, h("ul", { class: "results" },
      ms.map((m) => h("li", { "data-testid": "search-result", "data-kind": kind },
        h("a", { href: hashPart(m.url) }, m.label))))) : null;
  });
  return h("div", {},
    h("div", { class: "page-title" }, h("h1", {}, "Search"), h("span", { class: "muted" }, `“${q}”`)),
    res.matches.length ? groups : h("div", { id: "no-matches", class: "panel" },
      h("p", {}, `No block, peer or collection matches “${q}”.`),
      h("p", { class: "muted" }, "Try a block height, a 64-hex block hash, a peer id, a collection name or its info hash.")));
}

// ---------------------------------------------------------------- router

const ROUTES = {
  home: viewHome, blocks: viewBlocks, block: viewBlock, validators: viewValidators, peers: viewPeers,
  peer: viewPeer, collections: viewCollections, collection: viewCollection, charts: viewCharts, search: viewSearch,
};

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, "");
  const qi = raw.indexOf("?");
  const path = qi >= 0 ? raw.slice(0, qi) : raw;
  const query = new URLSearchParams(qi >= 0 ? raw.slice(qi + 1) : "");
  const parts = path.split("/").filter(Boolean).map((p) => { try { return decodeURIComponent(p); } catch (_) { return p; } });
  return { name: parts[0] || "home", arg: parts.slice(1).join("/"), query };
}

// quiet: a live refresh of the page in view (no scrolling, errors keep the old view).
async function render({ quiet = false } = {}) {
  const r = quiet && state.route ? state.route : parseRoute();
  state.route = r;
  const token = ++state.renderToken;
  const app = document.getElementById("app");
  if (!quiet) app.removeAttribute("data-ready");
  app.dataset.page = r.name;
  const navRoute = { block: "blocks", peer: "peers", collection: "collections" }[r.name] || r.name;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.route === navRoute);
  const view = ROUTES[r.name];
  let el;
  try {
    el = view ? await view(r) : errorView(new ApiError(404, "not found", `No page “${r.name}”.`));
  } catch (e) {
    if (quiet) return;
    el = errorView(e);
  }
  if (token !== state.renderToken) return;
  clear(app).append(el);
  if (r.name === "home" && state.status) {
    renderHomeCards(state.status);
    await refreshLatestBlocks();
    if (token !== state.renderToken) return;
  }
  app.dataset.ready = "1";
  document.title = `${titleFor(r)} · Cairn explorer`;
  if (!quiet && r.name !== "search") window.scrollTo(0, 0);
}

function titleFor(r) {
  return { home: "Overview", blocks: "Blocks", block: `Block ${r.arg}`, validators: "Validators", peers: "Peers",
    peer: `Peer ${shortHex(r.arg)}`, collections: "Collections", collection: `Collection ${r.arg}`, charts: "Charts",
    search: `Search ${r.arg}` }[r.name] || "Cairn";
}

function main() {
  document.getElementById("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    doSearch(document.getElementById("search").value);
  });
  window.addEventListener("hashchange", () => render());
  startTicker();
  new LiveConnection(document.getElementById("live-indicator"), applyStatus).start();
  render();
}

main();
