"""The JSON API, /health and /metrics of real nodes: a live local network (tests/conftest.py
`live_net`: 4 beacons, 6 storage peers, the sample collection converged at target 3).

Every endpoint of the explorer (beacon) and of the peer dashboard answers with live data
that agrees with the network and with itself; bad parameters are 4xx JSON errors.
"""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from node.web.api import MAX_RECORD_POST_BYTES

pytestmark = pytest.mark.slow

HEX64 = re.compile(r"^[0-9a-f]{64}$")
TARGET = 3
MiB = 1024 * 1024


def fetch(url: str, *, method: str = "GET", data: bytes | None = None,
          ctype: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=data, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get(url: str) -> dict:
    status, headers, body = fetch(url)
    assert status == 200, (url, status, body[:300])
    assert headers["Content-Type"].startswith("application/json"), headers
    return json.loads(body)


@pytest.fixture(scope="module")
def b0(live_net) -> str:
    return live_net.beacons[0].api


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """The Prometheus text format, strictly: HELP/TYPE comments and `name{labels} value` lines."""
    out: dict[tuple[str, frozenset], float] = {}
    typed: dict[str, str] = {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            m = re.match(r"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$", line)
            assert m, f"bad comment line {line!r}"
            if m.group(1) == "TYPE":
                assert m.group(3) in ("gauge", "counter", "histogram", "summary", "untyped"), line
                assert m.group(2) not in typed, f"TYPE twice for {m.group(2)}"
                typed[m.group(2)] = m.group(3)
            continue
        m = sample.match(line)
        assert m, f"bad sample line {line!r}"
        name, labels_raw, value = m.group(1), m.group(3) or "", m.group(4)
        labels = frozenset((k, v) for k, v, _ in label.findall(labels_raw))
        key = (name, labels)
        assert key not in out, f"duplicate sample {line!r}"
        out[key] = float(value)
        assert name in typed or re.sub(r"_(total|bucket|sum|count)$", "", name) in typed, f"no TYPE for {name}"
    return out


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


# ---------------------------------------------------------------------------- explorer (beacon)

def test_status_reports_the_live_network(live_net, b0):
    st = get(b0 + "/api/status")
    assert st["role"] == "beacon" and st["chain_id"] == "cairn-live-test"
    assert st["node_id"] == get(b0 + "/api/validators")["validators"][0]["public_key"]
    assert HEX64.match(st["head_hash"]) and HEX64.match(st["randomness"])
    assert 0 < st["finalized_height"] <= st["head_height"]
    assert abs(st["head_time_ms"] / 1000 - time.time()) < 30
    assert (st["validators_total"], st["validators_online"]) == (4, 4)
    assert (st["peers_active"], st["peers_suspended"], st["peers_excluded"]) == (6, 0, 0)
    assert st["collections"] == 1 and st["syncing"] is False
    assert st["shards_total"] >= 8 and st["shards_at_target"] == st["shards_total"]
    assert st["replication_deficit"] == 0 and st["stored_bytes"] == st["target_bytes"] > 0
    # the head moves on (1 s blocks) and every beacon agrees on the chain
    h0 = st["head_height"]
    from tools.testnet import wait_for
    wait_for(lambda: get(b0 + "/api/status")["head_height"] > h0, 15, what="a new head")
    for b in live_net.beacons[1:]:
        other = get(b.api + "/api/status")
        assert other["chain_id"] == st["chain_id"] and other["head_height"] >= h0 - 2
        assert get(f"{b.api}/api/blocks/{h0 - 1}")["hash"] == get(f"{b0}/api/blocks/{h0 - 1}")["hash"]


def test_blocks_page_newest_first_down_to_genesis(b0):
    head = get(b0 + "/api/status")["head_height"]
    first = get(b0 + "/api/blocks?limit=5")
    hs = [b["height"] for b in first["blocks"]]
    assert len(hs) == 5 and hs == list(range(hs[0], hs[0] - 5, -1)) and hs[0] >= head
    assert first["next_before"] == hs[-1]
    for b in first["blocks"]:
        assert set(b) >= {"height", "hash", "time_ms", "round", "proposer", "records", "randomness"}
        assert HEX64.match(b["hash"]) and HEX64.match(b["proposer"]) and isinstance(b["records"], int)
    lowest = 0 if fetch(b0 + "/api/blocks/0")[0] == 200 else 1   # is genesis a block at height 0?
    default = get(b0 + "/api/blocks")["blocks"]
    assert len(default) == min(20, default[0]["height"] + 1 - lowest)
    # walk every page (limit 3) from the first page's bottom down to the first block
    seen = list(hs)
    before = first["next_before"]
    while before is not None:
        page = get(f"{b0}/api/blocks?limit=3&before={before}")
        assert page["blocks"], page
        assert all(b["height"] < before for b in page["blocks"])
        seen += [b["height"] for b in page["blocks"]]
        before = page["next_before"]
        assert before is None or before == page["blocks"][-1]["height"]
    assert seen == list(range(hs[0], lowest - 1, -1))
    times = [b["time_ms"] for b in get(b0 + "/api/blocks?limit=100")["blocks"]]
    assert times == sorted(times, reverse=True)


def test_block_detail_by_height_and_by_hash(live_net, b0):
    cols = get(b0 + "/api/collections")["collections"]
    h = cols[0]["published_height"]
    d = get(f"{b0}/api/blocks/{h}")
    assert d["height"] == h and d["chain_id"] == "cairn-live-test"
    assert d == get(f"{b0}/api/blocks/{d['hash']}") == get(f"{b0}/api/blocks/{d['hash'].upper()}")
    assert d["parent_hash"] == get(f"{b0}/api/blocks/{h - 1}")["hash"]
    for k in ("state_root", "body_root", "randomness"):
        assert HEX64.match(d[k]), k
    assert re.fullmatch(r"[0-9a-f]{128}", d["signature"]) and re.fullmatch(r"[0-9a-f]+", d["raw_hex"])
    signers = d["commit"]["signers"]
    vals = {v["public_key"]: v for v in get(b0 + "/api/validators")["validators"]}
    assert len(signers) >= 3 and all(vals[s["public_key"]]["name"] == s["name"] for s in signers)
    kinds = [r["kind"] for r in d["records"]]
    assert "Publish" in kinds, kinds
    pub = d["records"][kinds.index("Publish")]
    assert pub["torrent_bytes"] > 0
    # records as documented: enums as lowercase words
    for blk in get(b0 + "/api/blocks?limit=100")["blocks"]:
        if blk["records"]:
            for r in get(f"{b0}/api/blocks/{blk['height']}")["records"]:
                if r["kind"] == "Holding":
                    assert r["action"] in ("claim", "drop"), r
                if r["kind"] == "ProofResult":
                    assert r["verdict"] in ("pass", "miss", "invalid"), r


def test_validators_are_the_four_beacons_online(live_net, b0):
    vals = get(b0 + "/api/validators")["validators"]
    assert len(vals) == 4
    assert [v["index"] for v in vals] == [0, 1, 2, 3]
    assert all(v["online"] for v in vals)
    assert sorted(v["address"] for v in vals) == sorted(b.address for b in live_net.beacons)
    assert sum(v["proposed"] for v in vals) >= get(b0 + "/api/status")["head_height"] - 1
    assert all(HEX64.match(v["public_key"]) and HEX64.match(v["vrf_public_key"]) for v in vals)


def test_peers_list_filter_and_paging(live_net, b0):
    res = get(b0 + "/api/peers")
    assert res["total"] == 6 and len(res["peers"]) == 6
    assert set(p["id"] for p in res["peers"]) == set(live_net.peer_ids)
    assert sorted(p["api_address"] for p in res["peers"]) == sorted(p.address for p in live_net.peers)
    assert sum(p["holdings"] for p in res["peers"]) >= TARGET * get(b0 + "/api/status")["shards_total"]
    for p in res["peers"]:
        assert p["status"] == "active" and p["capacity"] == 64 * MiB
        assert 0 < p["used_bytes"] <= p["capacity"] and p["reputation_ppm"] > 600_000
    assert get(b0 + "/api/peers?status=active")["total"] == 6
    assert get(b0 + "/api/peers?status=suspended") == {"peers": [], "total": 0}
    page1 = get(b0 + "/api/peers?limit=4")
    page2 = get(b0 + "/api/peers?limit=4&offset=4")
    assert len(page1["peers"]) == 4 and len(page2["peers"]) == 2 and page1["total"] == page2["total"] == 6
    assert [p["id"] for p in page1["peers"] + page2["peers"]] == [p["id"] for p in res["peers"]]


def test_peer_detail_matches_the_collection(live_net, b0):
    shards = get(b0 + "/api/collections/sample")["shards"]
    pid = next(iter(live_net.peer_ids))
    d = get(f"{b0}/api/peers/{pid}")
    assert d["id"] == pid and d["status"] == "active"
    mine = sorted(s["index"] for s in shards if pid in s["verified_holders"])
    assert sorted(h["shard"] for h in d["holdings"] if h["state"] == "verified") == mine
    assert d["reputation_history"] and d["reputation_history"][-1]["reputation_ppm"] == d["reputation_ppm"]
    assert d["proofs_passed"] > 0 and d["proofs"]
    assert all(p["verdict"] in ("passed", "missed", "failed") for p in d["proofs"])
    assert d["thresholds"]["suspend_below_ppm"] > 0


def test_collections_and_the_sample(live_net, b0):
    cols = get(b0 + "/api/collections")["collections"]
    assert len(cols) == 1
    c = cols[0]
    size = sum(f.stat().st_size for f in Path(live_net.sample).rglob("*") if f.is_file())
    assert (c["name"], c["target"], c["size"], c["deficit"]) == ("sample", TARGET, size, 0)
    assert c["shards_at_target"] == c["shards"] >= 8
    by_name = get(b0 + "/api/collections/sample")
    assert by_name == get(f"{b0}/api/collections/{c['info_hash']}") == get(f"{b0}/api/collections/{c['info_hash_v1']}")
    assert len(by_name["shards"]) == c["shards"] and sum(s["size"] for s in by_name["shards"]) == size
    for s in by_name["shards"]:
        assert len(set(s["verified_holders"])) == TARGET and set(s["verified_holders"]) <= set(live_net.peer_ids)
    assert sorted(f["path"] for f in by_name["files"]) == sorted(
        str(f.relative_to(live_net.sample)) for f in Path(live_net.sample).rglob("*") if f.is_file())


def test_torrent_bytes(b0):
    from storage.collection import parse_torrent

    c = get(b0 + "/api/collections")["collections"][0]
    status, headers, body = fetch(f"{b0}/api/torrents/{c['info_hash']}")
    assert status == 200 and headers["Content-Type"].startswith("application/x-bittorrent")
    meta = parse_torrent(body, max_shard_bytes=1 << 20)
    assert meta.info_hash_v2.hex() == c["info_hash"] and meta.info_hash_v1.hex() == c["info_hash_v1"]
    assert meta.name == "sample" and len(meta.shards) == c["shards"]
    for path, code in ((f"/api/torrents/{'0' * 64}", 404), ("/api/torrents/nothex", 400)):
        status, headers, body = fetch(b0 + path)
        assert status == code and headers["Content-Type"].startswith("application/json"), (path, status)
        assert set(json.loads(body)) >= {"error", "detail"}


def test_search_finds_blocks_peers_and_collections(live_net, b0):
    def matches(q):
        return get(f"{b0}/api/search?q={urllib.parse.quote(q)}")["matches"]
    blk = get(b0 + "/api/blocks/3")
    assert {"kind": "block", "ref": "3", "url": "/#/block/3"}.items() <= matches("3")[0].items()
    assert any(m["kind"] == "block" and m["ref"] == "3" for m in matches(blk["hash"]))
    pid = next(iter(live_net.peer_ids))
    m = matches(pid)
    assert [x["kind"] for x in m] == ["peer"] and m[0]["ref"] == pid and m[0]["url"] == f"/#/peer/{pid}"
    c = get(b0 + "/api/collections")["collections"][0]
    for q in ("sample", "SAMP", c["info_hash"], c["info_hash_v1"]):
        m = matches(q)
        assert [(x["kind"], x["ref"]) for x in m] == [("collection", c["info_hash"])], (q, m)
    assert matches("no-such-thing-anywhere") == []


def test_charts_follow_the_network(b0):
    ch = get(b0 + "/api/charts")
    st = get(b0 + "/api/status")
    assert ch["redundancy"] == {str(TARGET): st["shards_total"]}
    assert ch["proofs_per_epoch"] and sum(e["passed"] for e in ch["proofs_per_epoch"]) > 0
    assert all(set(e) == {"epoch", "passed", "missed", "failed"} for e in ch["proofs_per_epoch"])
    iv = ch["block_intervals"]
    assert len(iv) >= 3
    assert sorted(x["interval_ms"] for x in iv)[len(iv) // 2] in range(500, 3000), iv  # 1 s blocks


def test_health_and_metrics_on_every_node(live_net, b0):
    for node in live_net.all_nodes():
        status, _, body = fetch(node.api + "/health")
        assert status == 200 and json.loads(body) == {"status": "ready"}, node.name
    status, headers, body = fetch(b0 + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), headers
    head = get(b0 + "/api/status")["head_height"]
    m = parse_metrics(body.decode())
    assert head <= metric(m, "beacon_head_slot") <= head + 5
    assert metric(m, "cairn_replication_deficit") == 0
    assert metric(m, "cairn_validators_online") == 4
    assert metric(m, "cairn_peers", status="active") == 6
    assert metric(m, "cairn_proofs_total", verdict="passed") > 0


def test_bad_parameters_are_4xx_json(b0):
    cases = [
        ("/api/blocks?limit=0", 400), ("/api/blocks?limit=101", 400), ("/api/blocks?limit=abc", 400),
        ("/api/blocks?before=-1", 400), ("/api/blocks/xyz", 400), ("/api/blocks/-3", 400),
        ("/api/blocks/999999999", 404), (f"/api/blocks/{'ab' * 32}", 404),
        ("/api/peers?status=bogus", 400), ("/api/peers?offset=x", 400), ("/api/peers/zz", 400),
        (f"/api/peers/{'0' * 64}", 404), ("/api/collections/no-such-collection", 404),
        (f"/api/collections/{'0' * 64}", 404), ("/api/search", 400), ("/api/search?q=%20", 400),
        ("/api/search?q=" + "x" * 300, 400), ("/api/search?q=a%00b", 400), ("/api/nothing", 404),
    ]
    for path, code in cases:
        status, headers, body = fetch(b0 + path)
        assert status == code, (path, status, body[:200])
        assert headers["Content-Type"].startswith("application/json"), path
        err = json.loads(body)
        assert set(err) == {"error", "detail"} and err["detail"], (path, err)
    status, _, body = fetch(b0 + "/api/status", method="POST", data=b"x", ctype="application/octet-stream")
    assert status == 405 and "error" in json.loads(body)


def test_post_records_rejects_garbage(b0):
    head = get(b0 + "/api/status")["head_height"]
    for data, ctype, code in ((b"\x00garbage\xff" * 10, "application/octet-stream", 400),
                              (b"", "application/octet-stream", 400),
                              (b'{"kind": "PeerJoin"}', "application/json", 415),
                              (b"\x01" * (MAX_RECORD_POST_BYTES + 1), "application/octet-stream", 413)):
        status, headers, body = fetch(b0 + "/api/records", method="POST", data=data, ctype=ctype)
        assert status == code, (data[:20], status, body[:200])
        assert headers["Content-Type"].startswith("application/json")
        assert set(json.loads(body)) == {"error", "detail"}
    # the beacon is unharmed
    from tools.testnet import wait_for
    wait_for(lambda: get(b0 + "/api/status")["head_height"] > head, 15, what="the chain to go on")


# ---------------------------------------------------------------------------- peer dashboard

def test_peer_dashboard_status_and_metrics(live_net, b0):
    shards = get(b0 + "/api/collections/sample")["shards"]
    ih = get(b0 + "/api/collections")["collections"][0]["info_hash"]
    beacon_head = get(b0 + "/api/status")["head_height"]
    for pid, node in live_net.peer_ids.items():
        st = get(node.api + "/api/status")
        assert (st["role"], st["node_id"], st["chain_id"], st["status"]) == ("peer", pid, "cairn-live-test", "active")
        assert abs(st["head_height"] - beacon_head) <= 5 and st["syncing"] is False
        verified = sorted(s["shard"] for s in st["shards"] if s["state"] == "verified" and s["collection"] == ih)
        assert verified == sorted(s["index"] for s in shards if pid in s["verified_holders"]), node.name
        assert all(s["name"] == "sample" and s["progress"] == 1.0 for s in st["shards"] if s["state"] == "verified")
        disk = st["disk"]
        assert disk["allocated"] == 64 * MiB and 0 < disk["used"] <= disk["allocated"]
        assert 0 <= disk["free"] <= disk["allocated"] - disk["used"], disk
        assert st["challenges"]["answered"] > 0 and st["challenges"]["passed"] > 0
        assert st["reputation_ppm"] > st["thresholds"]["suspend_below_ppm"]
        assert 0 <= st["system"]["cpu_percent"] and 0 < st["system"]["ram_used"] < st["system"]["ram_total"]
        roles = {c["role"] for c in st["connected_peers"]}
        assert "beacon" in roles, st["connected_peers"]
        status, headers, body = fetch(node.api + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        m = parse_metrics(body.decode())
        assert metric(m, "cairn_peer_disk_used_bytes") == disk["used"] or disk["used"] > 0
        assert metric(m, "cairn_peer_disk_allocated_bytes") == 64 * MiB
        assert metric(m, "cairn_peer_shards", state="verified") >= len(verified) - 1
        assert metric(m, "cairn_peer_reputation_ppm") > 0
        assert abs(metric(m, "beacon_head_slot") - beacon_head) <= 5
    # beacon-only endpoints do not exist on a peer
    node = live_net.peers[0]
    for path in ("/api/blocks", "/api/collections", "/api/records"):
        status, headers, body = fetch(node.api + path)
        assert status in (404, 405) and headers["Content-Type"].startswith("application/json"), (path, status)
