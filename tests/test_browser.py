"""The explorer and the dashboard in headless Chromium (playwright, Debian's /usr/bin/chromium).

By default the pages are served by the web layer over the in-memory providers of
tests/webutil.py. Every test finds its data through the JSON API, so the same tests run
against any server:
- CAIRN_EXPLORER_URL=http://127.0.0.1:7000 and CAIRN_DASHBOARD_URL=http://127.0.0.1:7100
  point them at a live network; or
- override the `explorer_target` / `dashboard_target` fixtures in a conftest.py with
  objects that follow `ExplorerTarget` / `DashboardTarget` below (a live network's
  target makes a deficit by stopping a holder, for instance).
Screenshots of every page go to test-artifacts/screenshots/.
"""
from __future__ import annotations

import json
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from webutil import MemoryDashboard, MemoryExplorer, ServerThread

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CAIRN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
TIMEOUT_MS = 10_000
expect.set_options(timeout=TIMEOUT_MS)


# ---------------------------------------------------------------------------- targets

class ExplorerTarget(Protocol):
    base_url: str

    def advance_head(self) -> None:
        """Make a new head appear (a live chain does this by itself: then do nothing)."""

    def drop_verified_holder(self, info_hash: str, shard: int) -> Callable[[], None]:
        """Take one verified holder of a shard away; return a function that restores it."""


class DashboardTarget(Protocol):
    base_url: str

    def tick(self) -> None:
        """Move the peer's status on (new head, download progress)."""


class DemoExplorer:
    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.base_url = server.base_url

    def advance_head(self) -> None:
        self.server.call(self.server.provider.advance)

    def drop_verified_holder(self, info_hash: str, shard: int) -> Callable[[], None]:
        p = self.server.provider
        before = list(p.shards[info_hash][shard]["verified_holders"])
        self.server.call(p.set_verified, info_hash, shard, before[:-1])
        return lambda: self.server.call(p.set_verified, info_hash, shard, before)


class DemoDashboard:
    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.base_url = server.base_url

    def tick(self) -> None:
        self.server.call(self.server.provider.tick, 1.0)


class LiveExplorer:
    def __init__(self, url: str) -> None:
        self.base_url = url.rstrip("/")

    def advance_head(self) -> None:
        pass  # the chain makes blocks on its own

    def drop_verified_holder(self, info_hash: str, shard: int) -> Callable[[], None]:
        raise NotImplementedError("override the explorer_target fixture to stop a holder of "
                                  f"{info_hash} shard {shard} on the live network")


class LiveDashboard:
    def __init__(self, url: str) -> None:
        self.base_url = url.rstrip("/")

    def tick(self) -> None:
        pass


@pytest.fixture(scope="module")
def explorer_target() -> Iterator[ExplorerTarget]:
    url = os.environ.get("CAIRN_EXPLORER_URL")
    if url:
        yield LiveExplorer(url)
        return
    server = ServerThread(MemoryExplorer, "beacon").start()
    try:
        yield DemoExplorer(server)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dashboard_target() -> Iterator[DashboardTarget]:
    url = os.environ.get("CAIRN_DASHBOARD_URL")
    if url:
        yield LiveDashboard(url)
        return
    server = ServerThread(MemoryDashboard, "peer").start()
    try:
        yield DemoDashboard(server)
    finally:
        server.stop()


# ---------------------------------------------------------------------------- browser

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):   # live-*.png belong to tests/test_browser_live.py
        if not old.name.startswith("live-"):
            old.unlink()
    return SHOTS


@pytest.fixture
def page(browser: Browser, shots_dir: Path) -> Iterator[Page]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    pg.on("console", lambda m: errors.append(f"console: {m.text}")
          if m.type == "error" and "Failed to load resource" not in m.text else None)
    try:
        yield pg
    finally:
        ctx.close()
    assert not errors, errors


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def api(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=10) as resp:
        return json.loads(resp.read())


def fmt_int(n: int) -> str:
    return f"{n:,}"


def open_page(page: Page, base: str, route: str = "") -> None:
    page.goto(f"{base}/{route}")
    expect(page.locator("#app[data-ready]")).to_have_count(1)


def search(page: Page, q: str) -> None:
    page.fill("#search", q)
    page.press("#search", "Enter")


def head_on_page(page: Page) -> int:
    return int(page.locator("#head-height").inner_text().replace(",", ""))


# ---------------------------------------------------------------------------- explorer

def test_home_shows_the_network_at_a_glance(page: Page, explorer_target: ExplorerTarget):
    base = explorer_target.base_url
    open_page(page, base)
    st = api(base, "/api/status")
    expect(page.locator("#head-height")).to_have_text(re.compile(r"^[\d,]+$"))
    assert head_on_page(page) >= st["head_height"]
    expect(page.locator("#validators-online")).to_have_text(f"{st['validators_online']} / {st['validators_total']}")
    for k in ("active", "suspended", "excluded"):
        expect(page.locator(f"#peers-{k}")).to_have_text(fmt_int(st[f"peers_{k}"]))
    expect(page.locator("#head-age")).to_have_text(re.compile(r"ago|just now"))
    expect(page.locator("#randomness")).to_have_attribute("title", re.compile(r"^[0-9a-f]{64}$"))
    expect(page.locator("#latest-blocks [data-testid=block-row]").first).to_be_visible()
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
    expect(page.locator("#live-indicator")).to_have_text("Live")
    expect(page.locator("#sync-banner")).to_be_hidden()
    shot(page, "explorer-home")


def test_home_updates_live_when_the_head_changes(page: Page, explorer_target: ExplorerTarget):
    open_page(page, explorer_target.base_url)
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
    old = head_on_page(page)
    explorer_target.advance_head()
    page.wait_for_function(
        "old => Number(document.querySelector('#head-height').textContent.replace(/,/g, '')) > old", arg=old)
    # the latest-blocks list follows the head too
    page.wait_for_function("""() => {
        const row = document.querySelector('#latest-blocks [data-testid=block-row]');
        const head = document.querySelector('#head-height').textContent.replace(/,/g, '');
        return row && row.dataset.height === head; }""")
    assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1  # no reload


def test_falls_back_to_polling_when_sse_fails(page: Page, explorer_target: ExplorerTarget):
    page.route("**/api/live", lambda route: route.abort())
    open_page(page, explorer_target.base_url)
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "polling")
    expect(page.locator("#live-indicator")).to_have_text("Polling")
    old = head_on_page(page)
    explorer_target.advance_head()
    page.wait_for_function(
        "old => Number(document.querySelector('#head-height').textContent.replace(/,/g, '')) > old", arg=old)
    shot(page, "explorer-home-polling")


def test_search_jumps_to_a_block_by_height_and_by_hash(page: Page, explorer_target: ExplorerTarget):
    base = explorer_target.base_url
    blocks = [b for b in api(base, "/api/blocks?limit=10")["blocks"] if b["height"] > 0]
    target = blocks[-1]
    open_page(page, base)
    search(page, str(target["height"]))
    expect(page).to_have_url(re.compile(rf"#/block/{target['height']}$"))
    expect(page.locator("#block-height")).to_have_text(fmt_int(target["height"]))
    expect(page.locator("#block-hash")).to_have_text(target["hash"])
    other = blocks[-2]
    search(page, other["hash"])
    expect(page.locator("#block-hash")).to_have_text(other["hash"])
    expect(page.locator("#block-height")).to_have_text(fmt_int(other["height"]))


def test_search_jumps_to_a_peer(page: Page, explorer_target: ExplorerTarget):
    base = explorer_target.base_url
    peer = api(base, "/api/peers?limit=1")["peers"][0]
    open_page(page, base)
    search(page, peer["id"])
    expect(page).to_have_url(re.compile(rf"#/peer/{peer['id']}$"))
    expect(page.locator("#peer-id")).to_have_text(peer["id"])
    expect(page.locator("#peer-status")).to_have_text(peer["status"])


def test_search_jumps_to_a_collection_by_name_and_info_hash(page: Page, explorer_target: ExplorerTarget):
    base = explorer_target.base_url
    col = api(base, "/api/collections")["collections"][0]
    by_name = api(base, "/api/search?q=" + urllib.parse.quote(col["name"]))["matches"]
    open_page(page, base)
    if len(by_name) == 1:
        search(page, col["name"])
        expect(page.locator("#collection-name")).to_have_text(col["name"])
        open_page(page, base)
    search(page, col["info_hash"])
    expect(page.locator("#collection-name")).to_have_text(col["name"])
    expect(page.locator("[data-testid=info-hash] [data-copy]")).to_have_attribute("data-copy", col["info_hash"])


def test_search_lists_several_matches_by_kind_or_none(page: Page, explorer_target: ExplorerTarget):
    base = explorer_target.base_url
    open_page(page, base)
    q = "o"
    matches = api(base, f"/api/search?q={q}")["matches"]
    search(page, q)
    if len(matches) > 1:
        expect(page).to_have_url(re.compile(r"#/search/o$"))
        expect(page.locator("[data-testid=search-result]")).to_have_count(len(matches))
        shot(page, "explorer-search")
        page.locator("[data-testid=search-result] a").first.click()
        expect(page).to_have_url(re.compile(re.escape(matches[0]["url"].split("#", 1)[1]) + "$"))
    search(page, "no-such-thing-anywhere")
    expect(page.locator("#no-matches")).to_contain_text("No block, peer or collection matches")


def test_blocks_list_pages_on_the_server(page: Page, explorer_target: ExplorerTarget):
    base = explorer_target.base_url
    open_page(page, base, "#/blocks")
    rows = page.locator("#blocks-table [data-testid=block-row]")
    expect(rows).to_have_count(20)
    top = int(rows.first.get_attribute("data-height"))
    last = int(rows.last.get_attribute("data-height"))
    assert last == top - 19
    shot(page, "explorer-blocks")
    page.click("#blocks-older")
    expect(page).to_have_url(re.compile(rf"#/blocks\?before={last}$"))
    expect(rows.first).to_have_attribute("data-height", str(last - 1))
    page.click("#blocks-newer")
    expect(page).to_have_url(re.compile(r"#/blocks(\?before=\d+)?$"))
    expect(page.locator("#blocks-table [data-testid=block-row][data-height='%d']" % last)).to_have_count(1)


def test_block_page_shows_every_field_signers_records_and_raw(page: Page, explorer_target: ExplorerTarget):
    base = explorer_target.base_url
    blocks = api(base, "/api/blocks?limit=100")["blocks"]
    chosen = max(blocks, key=lambda b: (b["records"], -b["height"]))
    detail = api(base, f"/api/blocks/{chosen['height']}")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_page(page, base, f"#/block/{chosen['height']}")
    for field in ("height", "hash", "chain_id", "round", "time_ms", "parent_hash", "proposer", "vrf_proof",
                  "randomness", "state_root", "body_root", "signature"):
        expect(page.locator(f"#block-header tr[data-field={field}]")).to_be_visible()
    for field in ("vrf_proof", "state_root", "body_root", "signature", "randomness", "parent_hash"):
        expect(page.locator(f"#block-header tr[data-field={field}] td")).to_contain_text(detail[field])
    expect(page.locator("#block-header tr[data-field=time_ms] time .rel")).to_have_text(re.compile("ago|just now|in "))
    expect(page.locator("[data-testid=signer-row]")).to_have_count(len(detail["commit"]["signers"]))
    expect(page.locator("[data-testid=record-row]")).to_have_count(len(detail["records"]))
    for kind in {r["kind"] for r in detail["records"]}:
        expect(page.locator(f".record-group[data-kind={kind}] h3")).to_contain_text(kind)
    page.click("#raw-view summary")
    expect(page.locator("#raw-hex")).to_be_visible()
    raw_on_page = re.sub(r"^[0-9a-f]{6}  ", "", page.locator("#raw-hex").inner_text(), flags=re.M)
    assert re.sub(r"\s", "", raw_on_page) == detail["raw_hex"]
    page.locator("#block-header tr[data-field=hash] button.copy").click()
    assert page.evaluate("() => navigator.clipboard.readText()") == detail["hash"]
    shot(page, "explorer-block")


def test_unknown_block_says_not_found(page: Page, explorer_target: ExplorerTarget):
    open_page(page, explorer_target.base_url, "#/block/987654321")
    expect(page.locator("#error h1")).to_have_text("Not found")
    expect(page.locator("#error")).to_contain_text("987654321")


def test_validators_and_peers_pages(page: Page, explorer_target: ExplorerTarget):
    base = explorer_target.base_url
    vals = api(base, "/api/validators")["validators"]
    open_page(page, base, "#/validators")
    expect(page.locator("[data-testid=validator-row]")).to_have_count(len(vals))
    expect(page.locator("#validators-table")).to_contain_text(vals[0]["name"])
    shot(page, "explorer-validators")
    total = api(base, "/api/peers")["total"]
    open_page(page, base, "#/peers")
    expect(page.locator("[data-testid=peer-row]")).to_have_count(min(total, 50))
    shot(page, "explorer-peers")
    active = api(base, "/api/peers?status=active")["total"]
    page.click(".tabs [data-filter=active]")
    expect(page.locator("[data-testid=peer-row]")).to_have_count(min(active, 50))
    expect(page.locator("[data-testid=peer-row][data-status=active]")).to_have_count(min(active, 50))


def test_peer_page_shows_reputation_holdings_and_proofs(page: Page, explorer_target: ExplorerTarget):
    base = explorer_target.base_url
    peers = api(base, "/api/peers")["peers"]
    chosen = max(peers, key=lambda p: p["holdings"])
    detail = api(base, f"/api/peers/{chosen['id']}")
    open_page(page, base, f"#/peer/{chosen['id']}")
    expect(page.locator("#peer-reputation")).to_have_text(f"{chosen['reputation_ppm'] / 10000:.1f}%")
    expect(page.locator("#reputation-chart svg path.line")).to_have_attribute(
        "data-points", str(len(detail["reputation_history"])))
    expect(page.locator("[data-testid=holding-row]")).to_have_count(len(detail["holdings"]))
    expect(page.locator("[data-testid=proof-row]")).to_have_count(len(detail["proofs"]))
    expect(page.locator("#proofs-passed")).to_have_text(fmt_int(detail["proofs_passed"]))
    expect(page.locator("#proofs-missed")).to_have_text(fmt_int(detail["proofs_missed"]))
    expect(page.locator("#proofs-failed")).to_have_text(fmt_int(detail["proofs_failed"]))
    shot(page, "explorer-peer")
    troubled = [p for p in peers if p["status"] != "active"]
    if troubled:
        open_page(page, base, f"#/peer/{troubled[0]['id']}")
        expect(page.locator("#peer-status")).to_have_text(troubled[0]["status"])
        shot(page, f"explorer-peer-{troubled[0]['status']}")


def test_collection_page_shows_holders_per_shard_and_a_deficit(page: Page, explorer_target: ExplorerTarget):
    base = explorer_target.base_url
    cols = api(base, "/api/collections")["collections"]
    full = next(c for c in cols if c["deficit"] == 0)
    t = full["target"]
    open_page(page, base, "#/collections")
    expect(page.locator("[data-testid=collection-row]")).to_have_count(len(cols))
    shot(page, "explorer-collections")
    open_page(page, base, f"#/collection/{full['info_hash']}")
    holders = page.locator("[data-testid=shard-row] [data-testid=shard-holders]")
    expect(holders).to_have_count(full["shards"])
    expect(holders).to_have_text([f"{t}/{t}"] * full["shards"])
    expect(page.locator("#at-target-banner")).to_be_visible()
    expect(page.locator("#deficit-banner")).to_have_count(0)
    shot(page, "explorer-collection")
    restore = explorer_target.drop_verified_holder(full["info_hash"], 0)
    try:
        # the open page refreshes itself: no reload
        expect(page.locator("#deficit-banner")).to_be_visible()
        expect(page.locator("#deficit-banner")).to_contain_text("1 verified copy missing")
        expect(holders.first).to_have_text(f"{t - 1}/{t}")
        expect(page.locator("[data-testid=shard-row]").first).to_have_class(re.compile("row-deficit"))
        expect(holders.nth(1)).to_have_text(f"{t}/{t}")
        shot(page, "explorer-collection-deficit")
    finally:
        restore()
    expect(page.locator("#at-target-banner")).to_be_visible()


def test_charts_page_draws_three_charts(page: Page, explorer_target: ExplorerTarget):
    base = explorer_target.base_url
    ch = api(base, "/api/charts")
    open_page(page, base, "#/charts")
    for k, n in ch["redundancy"].items():
        expect(page.locator(f"#chart-redundancy g.bar-group[data-label='{k}']")).to_have_attribute("data-value", str(n))
    expect(page.locator("#chart-proofs g.stack")).to_have_count(len(ch["proofs_per_epoch"]))
    expect(page.locator("#chart-intervals path.line")).to_have_attribute("data-points", str(len(ch["block_intervals"])))
    shot(page, "explorer-charts")


def test_syncing_banner(page: Page, explorer_target: ExplorerTarget):
    if not isinstance(explorer_target, DemoExplorer):
        open_page(page, explorer_target.base_url)
        banner = expect(page.locator("#sync-banner"))
        if api(explorer_target.base_url, "/api/status")["syncing"]:
            banner.to_be_visible()
        else:
            banner.to_be_hidden()
        return
    server = explorer_target.server
    open_page(page, explorer_target.base_url)
    expect(page.locator("#sync-banner")).to_be_hidden()
    server.call(server.provider.set_health, "syncing")
    try:
        expect(page.locator("#sync-banner")).to_be_visible()
        expect(page.locator("#sync-banner")).to_contain_text("catching up")
        shot(page, "explorer-syncing")
    finally:
        server.call(server.provider.set_health, "ready")
    expect(page.locator("#sync-banner")).to_be_hidden()


# ---------------------------------------------------------------------------- dashboard

def test_dashboard_shows_disk_shards_challenges_and_system(page: Page, dashboard_target: DashboardTarget):
    base = dashboard_target.base_url
    st = api(base, "/api/status")
    open_page(page, base)
    rows = page.locator("[data-testid=shard-row]")
    expect(rows).to_have_count(len(st["shards"]))
    held = sum(1 for s in st["shards"] if s["state"] in ("held", "verified", "releasing"))
    expect(page.locator("#shards-held")).to_have_text(str(held))
    expect(page.locator("#shards-assigned")).to_have_text(str(len(st["shards"])))
    for k in ("allocated", "used", "free"):
        expect(page.locator(f"#disk-{k}")).to_have_text(re.compile(r"\d.*B"))
    th = st["thresholds"]["suspend_below_ppm"]
    expect(page.locator("#suspend-threshold")).to_have_text(f"suspended below {th / 10000:.1f}%")
    expect(page.locator("#reputation-ppm")).to_have_text(f"{st['reputation_ppm'] / 10000:.1f}%")
    expect(page.locator("#challenges-answered")).to_have_text(fmt_int(st["challenges"]["answered"]))
    expect(page.locator("#cpu-percent")).to_have_text(re.compile(r"^\d+\.\d%$"))
    expect(page.locator("#ram-used")).to_have_text(re.compile(r"B / .*B$"))
    expect(page.locator("[data-testid=connected-row]")).to_have_count(len(st["connected_peers"]))
    expect(page.locator("#peer-status")).to_have_text(st["status"])
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
    shot(page, "dashboard")


def test_dashboard_updates_live(page: Page, dashboard_target: DashboardTarget):
    open_page(page, dashboard_target.base_url)
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
    old = int(page.locator("#nav-head").inner_text().lstrip("#").replace(",", ""))
    dashboard_target.tick()
    page.wait_for_function(
        "old => Number(document.querySelector('#nav-head').textContent.replace(/[#,]/g, '')) > old", arg=old)
