"""The explorer and the dashboard of a live local network in headless Chromium.

The network is tests/conftest.py `live_net` (4 beacons, 6 storage peers, the sample
collection converged at target 3). The generic page tests of tests/test_browser.py that
hold on a chain making a block every second run here against the live beacon and peer;
the tests below check what only a live network shows: search by real ids, the head moving
by itself, a killed holder's shards going below target and being repaired, a peer's own
dashboard. Screenshots: test-artifacts/screenshots/live-*.png.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

import test_browser
from test_browser import (  # noqa: F401  (fixtures and generic tests reused on the live network)
    SHOTS, LiveDashboard, LiveExplorer, api, browser, fmt_int, head_on_page, open_page, page, search,
    test_block_page_shows_every_field_signers_records_and_raw, test_dashboard_updates_live,
    test_falls_back_to_polling_when_sse_fails, test_home_shows_the_network_at_a_glance,
    test_home_updates_live_when_the_head_changes, test_search_jumps_to_a_block_by_height_and_by_hash,
    test_search_jumps_to_a_collection_by_name_and_info_hash, test_search_jumps_to_a_peer,
    test_syncing_banner, test_unknown_block_says_not_found, test_validators_and_peers_pages)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TARGET = 3


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("live-*.png"):
        old.unlink()
    return SHOTS


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"live-{name}.png"), full_page=True)


@pytest.fixture(autouse=True)
def _live_shot_names(monkeypatch):
    """The reused tests of test_browser.py save their screenshots as live-*.png too."""
    monkeypatch.setattr(test_browser, "shot", shot)


@pytest.fixture(scope="module")
def explorer_target(live_net) -> LiveExplorer:
    return LiveExplorer(live_net.beacons[0].api)


@pytest.fixture(scope="module")
def dashboard_target(live_net) -> LiveDashboard:
    return LiveDashboard(live_net.peers[0].api)


def head_value(page: Page) -> int:
    return head_on_page(page)


# ---------------------------------------------------------------------------- explorer

def test_live_search_jumps_to_block_peer_and_collection(page: Page, live_net):
    base = live_net.beacons[0].api
    height = api(base, "/api/status")["head_height"] - 2
    blk = api(base, f"/api/blocks/{height}")
    open_page(page, base)
    search(page, str(height))
    expect(page).to_have_url(re.compile(rf"#/block/{height}$"))
    expect(page.locator("#block-height")).to_have_text(fmt_int(height))
    expect(page.locator("#block-hash")).to_have_text(blk["hash"])
    shot(page, "search-block")

    pid, node = next(iter(live_net.peer_ids.items()))
    search(page, pid)
    expect(page).to_have_url(re.compile(rf"#/peer/{pid}$"))
    expect(page.locator("#peer-id")).to_have_text(pid)
    expect(page.locator("#peer-status")).to_have_text("active")
    expect(page.locator("[data-testid=holding-row]")).to_have_count(
        len(api(base, f"/api/peers/{pid}")["holdings"]))
    shot(page, "search-peer")

    search(page, "sample")
    col = api(base, "/api/collections")["collections"][0]
    expect(page).to_have_url(re.compile(rf"#/collection/{col['info_hash']}$"))
    expect(page.locator("#collection-name")).to_have_text("sample")
    shot(page, "search-collection")


def test_live_home_head_moves_without_reload(page: Page, live_net):
    open_page(page, live_net.beacons[0].api)
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
    old = head_value(page)
    # two new blocks arrive by themselves (1 s blocks); the page follows them over SSE
    page.wait_for_function(
        "old => Number(document.querySelector('#head-height').textContent.replace(/,/g, '')) >= old + 2",
        arg=old, timeout=15_000)
    page.wait_for_function("""() => {
        const row = document.querySelector('#latest-blocks [data-testid=block-row]');
        const head = document.querySelector('#head-height').textContent.replace(/,/g, '');
        return row && row.dataset.height === head; }""")
    assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
    expect(page.locator("#validators-online")).to_have_text("4 / 4")
    expect(page.locator("#peers-active")).to_have_text("6")
    shot(page, "home")


# ---------------------------------------------------------------------------- dashboard

def test_live_peer_dashboard_shows_its_shards_and_reputation(page: Page, live_net):
    base = live_net.beacons[0].api
    pid, node = max(live_net.peer_ids.items(), key=lambda kv: len(api(base, f"/api/peers/{kv[0]}")["holdings"]))
    st = api(node.api, "/api/status")
    held = [s for s in st["shards"] if s["state"] in ("held", "verified", "releasing")]
    assert held, st["shards"]
    open_page(page, node.api)
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "live")
    expect(page.locator("[data-testid=shard-row]")).to_have_count(len(st["shards"]))
    expect(page.locator("#shards-held")).to_have_text(str(len(held)))
    expect(page.locator("#reputation-ppm")).to_have_text(f"{st['reputation_ppm'] / 10000:.1f}%")
    expect(page.locator("#peer-status")).to_have_text("active")
    for k in ("allocated", "used", "free"):
        expect(page.locator(f"#disk-{k}")).to_have_text(re.compile(r"\d.*B"))
    expect(page.locator("#disk-allocated")).to_have_text(re.compile(r"64(\.0)? MiB"))
    text = page.locator("body").inner_text()
    assert "sample" in text
    old = int(page.locator("#nav-head").inner_text().lstrip("#").replace(",", ""))
    page.wait_for_function(
        "old => Number(document.querySelector('#nav-head').textContent.replace(/[#,]/g, '')) > old", arg=old)
    shot(page, "dashboard")
    # and the same peer in the explorer
    open_page(page, base, f"#/peer/{pid}")
    expect(page.locator("#peer-id")).to_have_text(pid)
    expect(page.locator("[data-testid=holding-row]")).to_have_count(len(api(base, f"/api/peers/{pid}")["holdings"]))
    shot(page, "explorer-peer")


# ---------------------------------------------------------------------------- repair (kills a peer: keep last)

SHARD_TEXTS = "() => [...document.querySelectorAll('[data-testid=shard-row] [data-testid=shard-holders]')].map(e => e.textContent)"


def test_live_collection_at_target_then_deficit_then_repaired(page: Page, live_net):
    base = live_net.beacons[0].api
    col = api(base, "/api/collections")["collections"][0]
    n = col["shards"]
    open_page(page, base, f"#/collection/{col['info_hash']}")
    holders = page.locator("[data-testid=shard-row] [data-testid=shard-holders]")
    expect(holders).to_have_count(n)
    expect(holders).to_have_text([f"{TARGET}/{TARGET}"] * n)
    expect(page.locator("#at-target-banner")).to_be_visible()
    expect(page.locator("#deficit-banner")).to_have_count(0)
    shot(page, "collection")

    # kill -9 the peer holding the most shards; the open page must show the shards it held
    # below target, then back at 3/3 on other peers (no reload)
    rows = api(base, f"/api/collections/{col['info_hash']}")["shards"]
    counts: dict[str, int] = {}
    for r in rows:
        for p in r["verified_holders"]:
            counts[p] = counts.get(p, 0) + 1
    victim_id = max(counts, key=counts.get)
    victim_shards = {r["index"] for r in rows if victim_id in r["verified_holders"]}
    victim = live_net.peer_ids[victim_id]
    t0 = time.monotonic()
    victim.kill()
    page.wait_for_function(
        f"() => ({SHARD_TEXTS})().some(t => t !== '{TARGET}/{TARGET}')", timeout=90_000, polling=100)
    t_deficit = time.monotonic() - t0
    shot(page, "collection-deficit")
    texts = page.evaluate(SHARD_TEXTS)
    below = {i for i, t in enumerate(texts) if t != f"{TARGET}/{TARGET}"}
    assert below and below <= victim_shards, (texts, victim_shards)
    assert all(t == f"{TARGET - 1}/{TARGET}" for i, t in enumerate(texts) if i in below), texts
    expect(page.locator("#deficit-banner")).to_be_visible()
    # back to 3/3 everywhere, without the victim
    page.wait_for_function(
        f"() => {{ const t = ({SHARD_TEXTS})(); return t.length === {n} && t.every(x => x === '{TARGET}/{TARGET}'); }}",
        timeout=120_000, polling=250)
    t_repaired = time.monotonic() - t0
    expect(page.locator("#at-target-banner")).to_be_visible()
    expect(page.locator("#deficit-banner")).to_have_count(0)
    assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
    shot(page, "collection-repaired")
    rows = api(base, f"/api/collections/{col['info_hash']}")["shards"]
    assert all(victim_id not in r["verified_holders"] and len(r["verified_holders"]) == TARGET for r in rows)
    print(f"deficit shown {t_deficit:.1f}s after the kill, repaired after {t_repaired:.1f}s")
    open_page(page, base, f"#/peer/{victim_id}")
    expect(page.locator("#peer-status")).to_have_text(re.compile("suspended|excluded"))
    shot(page, "explorer-peer-suspended")
