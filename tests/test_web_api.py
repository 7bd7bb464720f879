"""The web layer over in-memory providers: every endpoint, bad parameters, /health, /metrics, SSE."""
from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from chain.codec import encode
from chain.types import PeerJoin, SignedRecord
from node.web import DashboardProvider, ExplorerProvider, make_web_app
from node.web.api import MAX_RECORD_POST_BYTES
from webutil import MemoryDashboard, MemoryExplorer

STATUS_FIELDS = {
    "chain_id", "role", "node_id", "version", "head_height", "head_hash", "head_time_ms",
    "finalized_height", "randomness", "syncing", "validators_total", "validators_online",
    "peers_active", "peers_suspended", "peers_excluded", "collections", "shards_total",
    "shards_at_target", "replication_deficit", "stored_bytes", "target_bytes"}
BLOCK_SUMMARY_FIELDS = {"height", "hash", "time_ms", "round", "proposer", "records", "randomness"}
BLOCK_DETAIL_FIELDS = BLOCK_SUMMARY_FIELDS | {"chain_id", "parent_hash", "vrf_proof", "state_root",
                                              "body_root", "signature", "commit", "raw_hex"}
VALIDATOR_FIELDS = {"index", "public_key", "vrf_public_key", "name", "address", "online", "proposed",
                    "missed_rounds", "evidence"}
PEER_FIELDS = {"id", "status", "reputation_ppm", "capacity", "used_bytes", "holdings", "bt_address",
               "api_address", "proofs_passed", "proofs_missed", "proofs_failed", "joined_height"}
COLLECTION_FIELDS = {"name", "info_hash", "info_hash_v1", "target", "size", "shards",
                     "shards_at_target", "deficit", "published_height"}
SHARD_FIELDS = {"index", "file", "size", "target", "verified_holders", "claimed", "assigned",
                "last_proof_height"}
DASHBOARD_FIELDS = {"role", "node_id", "chain_id", "head_height", "syncing", "disk", "shards",
                    "challenges", "reputation_ppm", "thresholds", "status", "system",
                    "connected_peers"}

DEADLINE_S = 10


@pytest.fixture
async def beacon():
    provider = MemoryExplorer()
    async with TestClient(TestServer(make_web_app(provider, role="beacon"))) as client:
        yield client, provider


@pytest.fixture
async def peer():
    provider = MemoryDashboard()
    async with TestClient(TestServer(make_web_app(provider, role="peer"))) as client:
        yield client, provider


async def get_json(client: TestClient, path: str, status: int = 200) -> Any:
    resp = await client.get(path)
    body = await resp.text()
    assert resp.status == status, f"{path}: {resp.status} {body}"
    assert resp.content_type == "application/json", f"{path}: {resp.content_type}"
    return json.loads(body)


async def expect_error(client: TestClient, path: str, status: int, method: str = "GET", **kw: Any) -> dict:
    resp = await client.request(method, path, **kw)
    body = await resp.text()
    assert resp.status == status, f"{method} {path}: expected {status}, got {resp.status} {body}"
    assert resp.content_type == "application/json"
    data = json.loads(body)
    assert set(data) == {"error", "detail"}, data
    assert data["error"] and data["detail"], data
    return data


def signed_record(seq: int = 0) -> bytes:
    return encode(SignedRecord(PeerJoin(peer=b"\x01" * 32, bt_address="127.0.0.1:6881",
                                        api_address="127.0.0.1:7100", capacity=1 << 20, seq=seq),
                               signature=b"\x02" * 64))


# ---------------------------------------------------------------------------- status and blocks

def test_memory_providers_satisfy_the_protocols():
    assert isinstance(MemoryExplorer(), ExplorerProvider)
    assert isinstance(MemoryDashboard(), DashboardProvider)


async def test_status_has_every_documented_field(beacon):
    client, provider = beacon
    st = await get_json(client, "/api/status")
    assert set(st) == STATUS_FIELDS
    assert st["role"] == "beacon"
    assert st["head_height"] == len(provider.blocks_list) - 1
    assert re.fullmatch(r"[0-9a-f]{64}", st["head_hash"])
    assert st["replication_deficit"] == 1 and st["shards_total"] == 7 and st["shards_at_target"] == 6


async def test_blocks_default_page_is_newest_first(beacon):
    client, provider = beacon
    res = await get_json(client, "/api/blocks")
    head = len(provider.blocks_list) - 1
    assert [b["height"] for b in res["blocks"]] == list(range(head, head - 20, -1))
    assert all(set(b) == BLOCK_SUMMARY_FIELDS for b in res["blocks"])
    assert res["next_before"] == head - 19


async def test_blocks_paging_walks_back_to_genesis_once(beacon):
    client, provider = beacon
    seen: list[int] = []
    before = None
    for _ in range(100):
        q = "/api/blocks?limit=7" + (f"&before={before}" if before is not None else "")
        res = await get_json(client, q)
        seen += [b["height"] for b in res["blocks"]]
        before = res["next_before"]
        if before is None:
            break
    assert seen == list(range(len(provider.blocks_list) - 1, -1, -1))


@pytest.mark.parametrize("limit", ["1", "100"])
async def test_blocks_limit_bounds_accepted(beacon, limit):
    client, _ = beacon
    res = await get_json(client, f"/api/blocks?limit={limit}")
    assert len(res["blocks"]) == min(int(limit), 57)


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=1000", "limit=-1", "limit=abc",
                                   "limit=1.5", "limit=%201", "before=abc", "before=-5",
                                   "before=99999999999999999999"])
async def test_blocks_bad_params_are_400(beacon, query):
    client, _ = beacon
    err = await expect_error(client, f"/api/blocks?{query}", 400)
    assert err["error"] == "bad request"
    assert query.split("=")[0] in err["detail"]


async def test_block_by_height_and_by_hash(beacon):
    client, provider = beacon
    b = await get_json(client, "/api/blocks/3")
    assert BLOCK_DETAIL_FIELDS <= set(b)
    assert b["height"] == 3 and b["hash"] == provider.blocks_list[3]["hash"]
    assert b["parent_hash"] == provider.blocks_list[2]["hash"]
    assert b["records"][0]["kind"] == "PeerJoin"
    assert set(b["commit"]) == {"round", "signers"}
    assert {"index", "public_key", "name"} <= set(b["commit"]["signers"][0])
    by_hash = await get_json(client, f"/api/blocks/{b['hash'].upper()}")
    assert by_hash["height"] == 3
    assert (await get_json(client, "/api/blocks/003"))["height"] == 3


@pytest.mark.parametrize("ref", ["abc", "-1", "1.5", "0x12", "a" * 63, "g" * 64, "a" * 65, "12abc"])
async def test_block_malformed_ref_is_400(beacon, ref):
    client, _ = beacon
    await expect_error(client, f"/api/blocks/{ref}", 400)


async def test_unknown_block_is_404(beacon):
    client, _ = beacon
    err = await expect_error(client, "/api/blocks/999999", 404)
    assert "999999" in err["detail"]
    await expect_error(client, f"/api/blocks/{'ab' * 32}", 404)


# ---------------------------------------------------------------------------- validators, peers

async def test_validators(beacon):
    client, _ = beacon
    res = await get_json(client, "/api/validators")
    assert len(res["validators"]) == 4
    assert all(set(v) == VALIDATOR_FIELDS for v in res["validators"])


async def test_peers_filter_and_paging(beacon):
    client, _ = beacon
    res = await get_json(client, "/api/peers")
    assert res["total"] == 6 and len(res["peers"]) == 6
    assert all(set(p) == PEER_FIELDS for p in res["peers"])
    active = await get_json(client, "/api/peers?status=active")
    assert active["total"] == 4 and {p["status"] for p in active["peers"]} == {"active"}
    page = await get_json(client, "/api/peers?offset=2&limit=2")
    assert [p["id"] for p in page["peers"]] == [p["id"] for p in res["peers"][2:4]]
    assert page["total"] == 6
    assert (await get_json(client, "/api/peers?status="))["total"] == 6


@pytest.mark.parametrize("query", ["status=gone", "offset=-1", "offset=x", "limit=0", "limit=101"])
async def test_peers_bad_params_are_400(beacon, query):
    client, _ = beacon
    await expect_error(client, f"/api/peers?{query}", 400)


async def test_peer_detail(beacon):
    client, provider = beacon
    pid = provider.peers_list[0]["id"]
    p = await get_json(client, f"/api/peers/{pid}")
    assert PEER_FIELDS <= set(p)
    assert p["holdings"] and {"collection", "name", "shard", "state", "verified_height"} <= set(p["holdings"][0])
    assert p["reputation_history"] and set(p["reputation_history"][0]) == {"height", "reputation_ppm"}
    assert {"height", "challenge_id", "collection", "shard", "leaf", "verdict"} <= set(p["proofs"][0])


async def test_unknown_and_malformed_peer(beacon):
    client, _ = beacon
    await expect_error(client, f"/api/peers/{'cd' * 32}", 404)
    for bad in ["xyz", "ab" * 31, "zz" * 32]:
        await expect_error(client, f"/api/peers/{bad}", 400)


# ---------------------------------------------------------------------------- collections, search, charts

async def test_collections_and_detail_by_name_and_hashes(beacon):
    client, provider = beacon
    res = await get_json(client, "/api/collections")
    assert [c["name"] for c in res["collections"]] == ["demo-photos", "field-recordings"]
    assert all(set(c) == COLLECTION_FIELDS for c in res["collections"])
    c = res["collections"][0]
    assert c["deficit"] == 0 and c["shards_at_target"] == c["shards"] == 4
    for ref in ("demo-photos", c["info_hash"], c["info_hash"].upper(), c["info_hash_v1"]):
        d = await get_json(client, f"/api/collections/{ref}")
        assert d["name"] == "demo-photos"
        assert {"files", "shards"} <= set(d)
        assert all(set(s) == SHARD_FIELDS for s in d["shards"])
    short = await get_json(client, "/api/collections/field-recordings")
    assert short["deficit"] == 1
    assert [len(s["verified_holders"]) for s in short["shards"]] == [2, 3, 3]


async def test_collection_unknown_and_malformed(beacon):
    client, _ = beacon
    await expect_error(client, "/api/collections/no-such-thing", 404)
    await expect_error(client, f"/api/collections/{'ef' * 32}", 404)
    await expect_error(client, "/api/collections/" + "n" * 300, 400)
    await expect_error(client, "/api/collections/bad%0Aname", 400)


async def test_search_finds_each_kind(beacon):
    client, provider = beacon
    res = await get_json(client, "/api/search?q=12")
    assert res["matches"] == [{"kind": "block", "label": "Block 12", "ref": "12", "url": "/#/block/12"}]
    h = provider.blocks_list[5]["hash"]
    res = await get_json(client, f"/api/search?q={h}")
    assert [m["url"] for m in res["matches"]] == ["/#/block/5"]
    pid = provider.peers_list[1]["id"]
    res = await get_json(client, f"/api/search?q={pid}")
    assert [(m["kind"], m["url"]) for m in res["matches"]] == [("peer", f"/#/peer/{pid}")]
    res = await get_json(client, "/api/search?q=%20demo-photos%20")
    assert res["query"] == "demo-photos"
    assert [m["kind"] for m in res["matches"]] == ["collection"]
    assert res["matches"][0]["url"].startswith("/#/collection/")
    assert (await get_json(client, "/api/search?q=nothing-like-this"))["matches"] == []
    assert len((await get_json(client, "/api/search?q=o"))["matches"]) == 2


@pytest.mark.parametrize("query", ["", "q=", "q=%20%20", "q=" + "x" * 300, "q=a%00b"])
async def test_search_bad_query_is_400(beacon, query):
    client, _ = beacon
    await expect_error(client, f"/api/search?{query}", 400)


async def test_charts(beacon):
    client, provider = beacon
    ch = await get_json(client, "/api/charts")
    assert ch["redundancy"] == {"2": 1, "3": 6}
    assert set(ch["proofs_per_epoch"][0]) == {"epoch", "passed", "missed", "failed"}
    assert ch["block_intervals"] and set(ch["block_intervals"][0]) == {"height", "interval_ms"}
    assert all(x["interval_ms"] > 0 for x in ch["block_intervals"])


# ---------------------------------------------------------------------------- records

async def test_post_record_accepts_then_reports_known(beacon):
    client, _ = beacon
    data = signed_record()
    headers = {"Content-Type": "application/octet-stream"}
    resp = await client.post("/api/records", data=data, headers=headers)
    assert resp.status == 202
    first = await resp.json()
    assert first["accepted"] is True and re.fullmatch(r"[0-9a-f]{64}", first["id"])
    resp = await client.post("/api/records", data=data, headers=headers)
    assert resp.status == 200
    assert await resp.json() == {"accepted": False, "id": first["id"]}


async def test_post_bad_records(beacon):
    client, _ = beacon
    octet = {"Content-Type": "application/octet-stream"}
    err = await expect_error(client, "/api/records", 400, "POST", data=b"\x93\x01\x02", headers=octet)
    assert "SignedRecord" in err["detail"]
    await expect_error(client, "/api/records", 400, "POST", data=signed_record() + b"\x00", headers=octet)
    await expect_error(client, "/api/records", 400, "POST", data=b"", headers=octet)
    await expect_error(client, "/api/records", 415, "POST", data=b"{}", headers={"Content-Type": "application/json"})
    await expect_error(client, "/api/records", 413, "POST", data=b"\x00" * (MAX_RECORD_POST_BYTES + 1),
                       headers=octet)
    await expect_error(client, "/api/records", 405, "GET")


# ---------------------------------------------------------------------------- health, errors, pages

@pytest.mark.parametrize("state,code", [("ready", 200), ("syncing", 206), ("not_ready", 503)])
async def test_health_codes(beacon, state, code):
    client, provider = beacon
    await provider.set_health(state)
    resp = await client.get("/health")
    assert resp.status == code
    assert await resp.json() == {"status": state}
    st = await get_json(client, "/api/status")
    assert st["syncing"] is (state == "syncing")


async def test_unknown_endpoint_and_method_are_json(beacon):
    client, _ = beacon
    await expect_error(client, "/api/nope", 404)
    await expect_error(client, "/api/status", 405, "POST")


async def test_provider_bug_is_a_json_500_without_internals(beacon):
    client, provider = beacon

    def broken() -> list:
        raise RuntimeError("secret internal state")
    provider.validators = broken
    err = await expect_error(client, "/api/validators", 500)
    assert "secret" not in err["detail"]


async def test_async_provider_methods_are_awaited(beacon):
    client, provider = beacon
    sync_status = provider.status

    async def status() -> dict:
        await asyncio.sleep(0)
        return sync_status()
    provider.status = status
    assert (await get_json(client, "/api/status"))["role"] == "beacon"


async def test_pages_and_static_files(beacon):
    client, _ = beacon
    resp = await client.get("/")
    html = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "/static/explorer.js" in html and 'id="search"' in html and 'id="live-indicator"' in html
    for name, ctype in [("explorer.js", "javascript"), ("charts.js", "javascript"), ("util.js", "javascript"),
                        ("style.css", "text/css")]:
        resp = await client.get(f"/static/{name}")
        assert resp.status == 200 and ctype in resp.content_type, name
    resp = await client.get("/static/../api.py")
    assert resp.status in (403, 404)
    assert "make_web_app" not in await resp.text()


def test_bad_role_is_rejected():
    with pytest.raises(ValueError):
        make_web_app(MemoryExplorer(), role="validator")  # type: ignore[arg-type]


async def test_node_can_add_its_p2p_route():
    app = make_web_app(MemoryExplorer(), role="beacon")

    async def p2p(request: web.Request) -> web.Response:
        return web.Response(text="p2p here")
    app.router.add_get("/p2p", p2p)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/p2p")
        assert resp.status == 200 and await resp.text() == "p2p here"


# ---------------------------------------------------------------------------- /metrics

_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_prometheus(text: str) -> dict[str, dict[str, Any]]:
    """A strict little parser of the text format: {family: {type, help, samples: {labels: value}}}."""
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in families, f"duplicate family {name}"
            families[name] = {"help": help_, "type": None, "samples": {}}
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("gauge", "counter"), line
            families[name]["type"] = kind
        else:
            m = _SAMPLE_RE.match(line)
            assert m, f"bad sample line {line!r}"
            name, labels_raw, value = m.groups()
            assert name in families and families[name]["type"], f"{name} has no HELP/TYPE"
            labels: tuple[tuple[str, str], ...] = ()
            if labels_raw:
                pairs = _LABEL_RE.findall(labels_raw)
                assert ",".join(f'{k}="{v}"' for k, v, _ in pairs) == labels_raw, line
                labels = tuple((k, v) for k, v, _ in pairs)
            assert labels not in families[name]["samples"], f"duplicate sample {line}"
            families[name]["samples"][labels] = float(value)
    return families


async def test_metrics_beacon(beacon):
    client, provider = beacon
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fam = parse_prometheus(await resp.text())
    head = len(provider.blocks_list) - 1

    def value(name: str, **labels: str) -> float:
        return fam[name]["samples"][tuple(sorted(labels.items()))]
    assert value("beacon_head_slot") == head
    assert value("cairn_head_height") == head
    assert value("cairn_finalized_height") == head
    assert value("beacon_finalized_epoch") == head // 10
    assert value("cairn_peers", status="active") == 4
    assert value("cairn_peers", status="suspended") == 1
    assert value("cairn_peers", status="excluded") == 1
    assert value("cairn_proofs_total", verdict="passed") == 412
    assert fam["cairn_proofs_total"]["type"] == "counter"
    assert value("cairn_replication_deficit") == 1
    assert value("cairn_validators_online") == 3
    assert value("cairn_stored_bytes") > 0 and value("cairn_target_bytes") >= value("cairn_stored_bytes")
    await provider.advance(2)
    fam = parse_prometheus(await (await client.get("/metrics")).text())
    assert fam["beacon_head_slot"]["samples"][()] == head + 2


async def test_metrics_peer(peer):
    client, provider = peer
    fam = parse_prometheus(await (await client.get("/metrics")).text())
    st = provider.status()
    assert fam["cairn_peer_disk_allocated_bytes"]["samples"][()] == st["disk"]["allocated"]
    assert fam["cairn_peer_disk_used_bytes"]["samples"][()] == st["disk"]["used"]
    assert fam["cairn_peer_shards"]["samples"][(("state", "downloading"),)] == 1
    assert fam["cairn_peer_challenges_total"]["samples"][(("verdict", "missed"),)] == 1
    assert fam["cairn_peer_status"]["samples"][(("status", "active"),)] == 1
    assert fam["cairn_peer_reputation_ppm"]["samples"][()] == 964_000
    assert fam["cairn_system_ram_total_bytes"]["samples"][()] > 0


# ---------------------------------------------------------------------------- peer role

async def test_peer_role_serves_dashboard_and_status_only(peer):
    client, _ = peer
    st = await get_json(client, "/api/status")
    assert set(st) == DASHBOARD_FIELDS
    assert set(st["disk"]) == {"allocated", "used", "free"}
    assert {"collection", "name", "shard", "state", "bytes", "progress", "down_rate", "up_rate", "eta_s"} \
        <= set(st["shards"][0])
    assert set(st["system"]) == {"cpu_percent", "ram_used", "ram_total", "net_sent", "net_recv"}
    await expect_error(client, "/api/blocks", 404)
    await expect_error(client, "/api/records", 404, "POST", data=b"x")
    html = await (await client.get("/")).text()
    assert "/static/dashboard.js" in html
    assert (await client.get("/health")).status == 200


# ---------------------------------------------------------------------------- /api/live (SSE)

async def read_event(resp: Any, deadline: float) -> dict:
    """The next `status` event of an SSE stream, before the deadline."""
    event, data = None, []
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(resp.content.readline(), deadline - time.monotonic())
        assert line, "stream ended"
        text = line.decode().rstrip("\n")
        if text.startswith("event:"):
            event = text[6:].strip()
        elif text.startswith("data:"):
            data.append(text[5:].strip())
        elif text == "" and data:
            if event == "status":
                return json.loads("\n".join(data))
            event, data = None, []
    raise AssertionError("no event before the deadline")


async def test_live_pushes_a_status_per_new_head(beacon):
    client, provider = beacon
    resp = await client.get("/api/live")
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    deadline = time.monotonic() + DEADLINE_S
    first = await read_event(resp, deadline)
    assert set(first) == STATUS_FIELDS
    head = first["head_height"]
    await provider.advance()
    nxt = await read_event(resp, deadline)
    assert nxt["head_height"] == head + 1
    await provider.advance(3)
    while nxt["head_height"] != head + 4:
        nxt = await read_event(resp, deadline)
    resp.close()


async def test_live_stream_ends_on_shutdown():
    provider = MemoryExplorer()
    server = TestServer(make_web_app(provider, role="beacon"))
    client = TestClient(server)
    await client.start_server()
    resp = await client.get("/api/live")
    await read_event(resp, time.monotonic() + DEADLINE_S)
    started = time.monotonic()
    await client.close()
    assert time.monotonic() - started < 5


async def test_live_on_peer_dashboard(peer):
    client, provider = peer
    resp = await client.get("/api/live")
    deadline = time.monotonic() + DEADLINE_S
    first = await read_event(resp, deadline)
    await provider.tick()
    nxt = await read_event(resp, deadline)
    while nxt["head_height"] == first["head_height"]:
        nxt = await read_event(resp, deadline)
    assert nxt["head_height"] == first["head_height"] + 1
    resp.close()


# ---------------------------------------------------------------------------- docs/openapi.json

OPENAPI = json.loads((Path(__file__).resolve().parent.parent / "docs" / "openapi.json").read_text())
_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
          "boolean": bool, "null": type(None)}


def check_schema(value: Any, schema: dict, where: str = "$") -> None:
    """Checks the parts of JSON Schema that docs/openapi.json uses."""
    if "$ref" in schema:
        schema = OPENAPI["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "oneOf" in schema:
        errors = []
        for sub in schema["oneOf"]:
            try:
                check_schema(value, sub, where)
                return
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{where}: matches no alternative: {errors}")
    if "const" in schema:
        assert value == schema["const"], f"{where}: {value!r} != {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(value, _TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in types)
        assert ok, f"{where}: {value!r} is not {types}"
    if "pattern" in schema and isinstance(value, str):
        assert re.search(schema["pattern"], value), f"{where}: {value!r} !~ {schema['pattern']}"
    if isinstance(value, dict):
        for k in schema.get("required", []):
            assert k in value, f"{where}: missing {k}"
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                check_schema(value[k], sub, f"{where}.{k}")
        if isinstance(schema.get("additionalProperties"), dict):
            for k, v in value.items():
                check_schema(v, schema["additionalProperties"], f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            check_schema(v, schema["items"], f"{where}[{i}]")


def test_openapi_documents_every_route():
    documented = {(path, m.upper()) for path, ops in OPENAPI["paths"].items() for m in ops}
    served = set()
    for role, provider in (("beacon", MemoryExplorer()), ("peer", MemoryDashboard())):
        for route in make_web_app(provider, role=role).router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter") or info.get("prefix")
            if route.method == "HEAD" or path in ("/", "/index.html") or path.startswith("/static"):
                continue
            served.add((re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path), route.method))
    assert served == documented


async def test_responses_match_openapi(beacon):
    client, provider = beacon
    pid = provider.peers_list[0]["id"]
    ih = provider.collections_list[1]["info_hash"]
    for path, spec_path in [("/api/status", "/api/status"), ("/api/blocks", "/api/blocks"),
                            ("/api/blocks/5", "/api/blocks/{ref}"), ("/api/blocks/3", "/api/blocks/{ref}"),
                            ("/api/validators", "/api/validators"), ("/api/peers", "/api/peers"),
                            (f"/api/peers/{pid}", "/api/peers/{id}"), ("/api/collections", "/api/collections"),
                            (f"/api/collections/{ih}", "/api/collections/{ref}"), ("/api/search?q=o", "/api/search"),
                            ("/api/charts", "/api/charts"), ("/health", "/health")]:
        schema = OPENAPI["paths"][spec_path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        check_schema(await get_json(client, path), schema, path)
    err_schema = OPENAPI["components"]["schemas"]["Error"]
    check_schema(await expect_error(client, "/api/blocks?limit=0", 400), err_schema)


async def test_dashboard_matches_openapi(peer):
    client, _ = peer
    schema = OPENAPI["components"]["schemas"]["DashboardStatus"]
    check_schema(await get_json(client, "/api/status"), schema)


def test_pages_fetch_nothing_from_outside_the_node():
    static = Path(__file__).resolve().parent.parent / "node" / "web" / "static"
    files = sorted(static.iterdir())
    assert {f.name for f in files} >= {"index.html", "dashboard.html", "explorer.js", "dashboard.js", "charts.js",
                                       "util.js", "style.css"}
    for f in files:
        text = f.read_text().replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{f.name} refers outside"
        assert "@import" not in text and "cdn" not in text.lower(), f.name
