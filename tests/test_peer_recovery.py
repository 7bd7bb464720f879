"""A storage peer looks after its own disk: damaged shards, a full disk, kill -9.

Unit tests of the pieces that decide (the self-check verdict on a real collection, the
retry policy), then one live network of real `cairn` processes on loopback (4 beacons,
5 storage peers, the demo parameters and sample collection, target 3) where:

- one peer's data directory is a 2 MiB tmpfs, too small for its share: its downloads
  fail with a clear "disk full", shown on its dashboard, retried with growing delays,
  never claimed, and once the tmpfs grows it takes its share like everyone else;
- bytes of a held shard are overwritten on one peer's disk: its self-check finds it,
  the peer drops the shard on chain and discards its copy, the shard is back at 3
  verified holders, and the peer is neither excluded nor suspended and misses no proof;
- a peer holding verified shards is killed with -9 and started again on the same data
  dir: it downloads nothing, rewrites no data file, answers challenges again and its
  holdings stay verified.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from tests.diskutil import mount_tmpfs, resize_tmpfs, unmount
from node.peer import FETCH_RETRY_FIRST_MS, FETCH_RETRY_MAX_MS, FetchFailure, PieceChecker, retry_delay_ms, retry_due
from storage.collection import create_collection
from storage.index import ShardRecord, ShardState, check_shard
from storage.proof import build_proof
from tools.demo import DEMO_PARAMS, make_sample_collection
from tools.testnet import Network, http_json, wait_for

TARGET = 3
MiB = 1 << 20


# ---------------------------------------------------------------------------- unit: what decides

def shard_record(meta, shard, data_dir: Path) -> ShardRecord:
    return ShardRecord(meta.info_hash_v2.hex(), shard.index, ShardState.HELD, shard.first_piece,
                       shard.first_piece + shard.piece_count - 1,
                       (f"{meta.name}/{meta.files[shard.file_index].path}",), str(data_dir), shard.length,
                       None, None, 1, 1)


def test_self_check_verdict_on_a_real_collection(tmp_path: Path) -> None:
    """PieceChecker hashes pieces the way build_proof checks them: every shard of an intact
    copy passes, and a flipped byte, a truncation or a missing file is found."""
    data_dir = tmp_path / "data"
    sample = make_sample_collection(data_dir / "sample")
    meta = create_collection(sample, name="sample", max_shard_bytes=MiB)
    assert len(meta.shards) >= 8 and meta.piece_length == 256 * 1024

    def verdict(shard, samples=4):
        c = PieceChecker(data_dir, meta, shard)
        return check_shard(shard_record(meta, shard, data_dir), c.read, c.expected,
                           samples=samples, seed=os.urandom(8), digest=c.digest)

    for shard in meta.shards:
        res = verdict(shard, samples=shard.piece_count)
        assert res.ok and len(res.checked) == shard.piece_count, (shard, res)
        c = PieceChecker(data_dir, meta, shard)   # the same pieces build proofs
        build_proof(meta, shard, 0, c.read(shard.first_piece))

    big = max(meta.shards, key=lambda s: s.piece_count)
    file = meta.files[big.file_index]
    path = data_dir / "sample" / file.path
    offset = (big.first_piece - file.first_piece) * meta.piece_length
    middle = big.first_piece + big.piece_count // 2
    with open(path, "r+b") as f:      # one flipped byte in the shard's middle piece
        f.seek((middle - file.first_piece) * meta.piece_length + 5)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 1]))
    res = verdict(big, samples=big.piece_count)
    assert not res.ok and f"piece {middle} does not match" in res.reason
    others = [s for s in meta.shards if s.file_index == big.file_index and s is not big]
    assert others and all(verdict(s).ok for s in others), "a shard's check reads only its own pieces"

    os.truncate(path, offset + 1000)
    assert "piece" in verdict(big).reason
    path.unlink()
    assert verdict(big).reason == f"file missing: sample/{file.path}"


def test_fetch_retry_policy() -> None:
    delays = [retry_delay_ms(n) for n in range(1, 12)]
    assert delays[0] == FETCH_RETRY_FIRST_MS and delays[1] == 2 * FETCH_RETRY_FIRST_MS
    assert delays == sorted(delays) and delays[-1] == FETCH_RETRY_MAX_MS
    f = FetchFailure("disk full", "No space left on device", 1, failed_at=1000, retry_at=1000 + delays[0],
                     size=MiB, disk_full=True, free_after=100_000)
    soon = 1000 + FETCH_RETRY_FIRST_MS // 2
    later = 1000 + FETCH_RETRY_FIRST_MS
    assert not retry_due(f, soon, free=10 * MiB, pending=0)          # never before the first delay
    assert retry_due(f, later, free=10 * MiB, pending=0)              # space came back
    f2 = FetchFailure("disk full", "", 3, failed_at=1000, retry_at=1000 + delays[2], size=MiB,
                      disk_full=True, free_after=2 * MiB)
    assert not retry_due(f2, later, free=2 * MiB, pending=0)          # only the space it freed itself
    assert not retry_due(f2, later, free=3 * MiB, pending=2 * MiB + 1)  # taken by downloads under way
    assert retry_due(f2, later, free=3 * MiB, pending=0)
    assert retry_due(f2, f2.retry_at, free=0, pending=0)              # backoff over: try anyway
    other = FetchFailure("file error", "Permission denied", 1, 1000, 1000 + delays[0], MiB, False, 0)
    assert not retry_due(other, later - 1, free=10 * MiB, pending=0) and retry_due(other, later, 0, 0)


# ---------------------------------------------------------------------------- the live network

def shard_rows(net: Network) -> list[dict]:
    return http_json(net.beacons[0].api + "/api/collections/sample")["shards"]


def at_exactly_target(rows: list[dict]) -> bool:
    return bool(rows) and all(len(r["verified_holders"]) == TARGET for r in rows)


def peer_detail(net: Network, pid: str) -> dict:
    return http_json(f"{net.beacons[0].api}/api/peers/{pid}")


def verified_holdings(net: Network, pid: str) -> set[tuple[str, int]]:
    return {(h["collection"], h["shard"]) for h in peer_detail(net, pid)["holdings"] if h["state"] == "verified"}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("recovery-net")
    network = Network(root, chain_id="cairn-recovery-test")
    network.create(4, DEMO_PARAMS)
    for _ in range(4):
        network.add_peer("64MiB")
    network.full = network.add_peer("64MiB", name="fullpeer")
    network.small_disk = network.full.datadir / "data"
    mount_tmpfs(network.small_disk, "2m")    # its share of the sample is ~3.7 MiB
    try:
        network.start_all()
        wait_for(lambda: all(h is not None and h >= 1 for h in network.heights()), 60, what="first block")
        network.sample = make_sample_collection(root / "sample")
        network.publisher = network.publish(network.sample, "sample", target=TARGET)
        network.ids = {wait_for(lambda p=p: http_json(p.api + "/api/status")["node_id"], 30): p
                       for p in network.peers}
        yield network
    finally:
        network.stop_all()
        try:
            unmount(network.small_disk)
        finally:
            for node in network.all_nodes():
                if node.proc is not None and node.proc.returncode not in (0, None, -9):
                    print(f"--- {node.name} exited {node.proc.returncode}\n{node.log_tail(30)}")


def converged(net: Network) -> list[dict]:
    """Give the full peer its room back (if a test before did not) and wait for every shard
    at exactly 3 verified holders."""
    resize_tmpfs(net.small_disk, "64m")
    return wait_for(lambda: (r := shard_rows(net)) and at_exactly_target(r) and r, 120,
                    what="every shard at 3 verified holders")


def quiet(net: Network) -> list[dict]:
    """converged, and no copy moving: every shard's assigned peers are exactly its 3
    verified holders (no rebalance migration or release in flight, none to come while
    nothing changes: targets are a function of chain state)."""
    converged(net)
    return wait_for(lambda: (r := shard_rows(net)) and all(
        len(x["verified_holders"]) == TARGET and sorted(x["assigned"]) == sorted(x["verified_holders"])
        for x in r) and r, 120, what="every shard at 3 verified holders with no copy moving")


def id_of(net: Network, node) -> str:
    return next(pid for pid, p in net.ids.items() if p is node)


def test_full_disk_fails_clearly_backs_off_and_recovers(net):
    full = net.full
    fid = id_of(net, full)
    row = wait_for(lambda: next((s for s in full.status()["shards"] if s["state"] == "failed"), None), 90,
                   what="a shard shown as failed on the peer with the full disk")
    assert row["error_cause"] == "disk full", row
    assert "No space left on device" in row["error"] and row["retry_in_s"] >= 0, row
    chain_row = shard_rows(net)[row["shard"]]
    assert fid not in chain_row["verified_holders"] + chain_row["claimed"], "a failed shard was claimed"

    # One clear error line per failed attempt, naming the shard and the cause, and the
    # delay before the next attempt grows (exponential backoff, capped). The disk holds
    # some of its shards, so some keep failing.
    def failures() -> dict[str, list[int]]:
        per_shard: dict[str, list[int]] = {}
        for shard, cause, detail, delay in re.findall(
                r"cannot fetch shard (\w+/\d+): ([a-z ]+) \((.*)\); partial download discarded, attempt \d+ in (\d+) s",
                full.log_path.read_text()):
            assert cause == "disk full" and "No space left on device" in detail, (shard, cause, detail)
            per_shard.setdefault(shard, []).append(int(delay))
        return per_shard

    per_shard = wait_for(lambda: (f := failures()) and max(len(d) for d in f.values()) >= 3 and f, 60,
                         what="a shard failing three times")
    for shard, delays in per_shard.items():
        assert delays == sorted(delays) and len(set(delays)) == len(delays), (shard, delays)
        assert delays[0] == FETCH_RETRY_FIRST_MS // 1000 and max(delays) <= FETCH_RETRY_MAX_MS // 1000
    assert "Traceback" not in full.log_path.read_text() and full.running()
    assert full.status()["status"] == "active"

    # Space comes back: the peer takes its share without being told.
    resize_tmpfs(net.small_disk, "64m")
    converged(net)

    def all_verified():
        # Its own view and the chain's agree (read together: rebalance may still move copies).
        st, rows = full.status(), shard_rows(net)
        on_chain = {r["index"] for r in rows if fid in r["verified_holders"]}
        return (st["shards"] and all(s["state"] == "verified" for s in st["shards"])
                and {s["shard"] for s in st["shards"]} == on_chain and st)

    st = wait_for(all_verified, 60, what="every shard of the full peer verified, on its disk and on chain")
    assert not any("error" in s for s in st["shards"])
    assert full.running() and st["status"] == "active"


def test_corrupted_shard_is_dropped_and_repaired(net):
    rows = quiet(net)           # no migration may release the victim's copy meanwhile
    victim = net.peers[0]
    vid = id_of(net, victim)
    mine = [r for r in rows if vid in r["verified_holders"]]
    assert mine, "the victim holds no verified shard"
    target = max(mine, key=lambda r: r["size"])
    # The shard's bytes in its file: shards of one file are consecutive and piece aligned.
    offset = sum(r["size"] for r in rows if r["file"] == target["file"] and r["index"] < target["index"])
    path = victim.datadir / "data" / "sample" / target["file"]
    original = (net.sample / target["file"]).read_bytes()[offset:offset + target["size"]]
    before = peer_detail(net, vid)
    lost_before = victim.status()["self_check"]["lost"]

    with open(path, "r+b") as f:       # a damaged disk: 4 KiB of garbage inside the shard
        f.seek(offset + 1000)
        f.write(os.urandom(4096))
        f.flush()
        os.fsync(f.fileno())

    wait_for(lambda: victim.status()["self_check"]["lost"] > lost_before, 30,
             what="the victim to find the damaged shard")
    # Found by the self-check, or by a challenge that hit it first: both drop it.
    assert re.search(rf"shard \w+/{target['index']} is damaged on disk \((self-check|proof of leaf \d+): "
                     r".*does not match", victim.log_path.read_text())
    seen = {"statuses": set(), "dropped": False}

    def repaired():
        p = peer_detail(net, vid)
        seen["statuses"].add(p["status"])
        r = shard_rows(net)
        row = r[target["index"]]
        if vid not in row["verified_holders"] + row["claimed"]:
            seen["dropped"] = True
        return seen["dropped"] and at_exactly_target(r) and r

    rows = wait_for(repaired, 90, what="the damaged shard back at 3 verified holders")
    after = peer_detail(net, vid)
    assert seen["statuses"] == {"active"}, f"the honest peer was {seen['statuses']}"
    assert after["proofs_failed"] == 0 and after["proofs_missed"] == before["proofs_missed"]
    if vid in rows[target["index"]]["verified_holders"]:
        # Assigned back to it: fetched again from scratch, so its copy is clean now.
        with open(path, "rb") as f:
            f.seek(offset)
            assert hashlib.sha256(f.read(target["size"])).digest() == hashlib.sha256(original).digest()
    assert victim.running() and victim.status()["status"] == "active"


def test_peer_killed_with_sigkill_resumes_without_downloading(net):
    """The peer with the (once) full disk: its libtorrent resume data was rewritten by
    every failed download it discarded, and it fetched shards after the last of those, so
    a resume file saved only at a clean stop (or at a drop) would be stale here.  It waits
    for a quiet network first, so that no migration legitimately moves a copy to or from
    the victim while it restarts."""
    quiet(net)
    victim = net.full
    vid = id_of(net, victim)
    held = verified_holdings(net, vid)
    assert held
    data = victim.datadir / "data"
    files = {f: (f.stat().st_mtime_ns, f.stat().st_size) for f in data.rglob("*") if f.is_file()}
    assert files
    before = peer_detail(net, vid)

    victim.kill()
    victim.start()
    wait_for(lambda: victim.status(), 30, what="the restarted peer's API")
    statuses = set()

    def answering():
        p = peer_detail(net, vid)
        statuses.add(p["status"])
        # Answers built by the restarted process from its disk, and passes on chain.
        return victim.status()["challenges"]["answered"] >= 3 and p["proofs_passed"] >= before["proofs_passed"] + 3 and p

    after = wait_for(answering, 60, what="the restarted peer to answer and pass three challenges")
    st = victim.status()
    assert st["transfer"]["downloaded"] == 0, "the restarted peer downloaded data it already had"
    assert {f: (f.stat().st_mtime_ns, f.stat().st_size) for f in files} == files, "a data file was rewritten"
    assert after["proofs_failed"] == 0 and after["proofs_missed"] == before["proofs_missed"]
    assert statuses == {"active"} and st["status"] == "active", statuses
    assert verified_holdings(net, vid) == held
    assert st["shards"] and all(s["state"] == "verified" for s in st["shards"]), st["shards"]
