"""Client commands: publish a collection, fetch one back, print the network status.

They talk to a beacon's JSON API (submitting signed records with POST /api/records) and
move data with their own libtorrent session, connecting straight to the holders whose
BitTorrent addresses are in chain state.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from chain.codec import encode
from chain.crypto import SigningKey
from chain.constants import KIND_RECORD
from chain.keys import NODE_KEY_FILE, load_keys, new_keys
from chain.types import Publish, Record, SignedRecord
from storage.collection import create_collection, parse_torrent
from storage.merkle import pieces_root

POLL_S = 1.0


class ClientError(Exception):
    """A client command could not complete; the message says why."""


def api_url(beacon: str, path: str) -> str:
    base = beacon if beacon.startswith("http") else f"http://{beacon}"
    return base.rstrip("/") + path


def get_json(beacon: str, path: str, timeout: float = 5.0):
    try:
        with urllib.request.urlopen(api_url(beacon, path), timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ClientError(f"GET {path}: HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(f"cannot reach beacon {beacon}: {exc}") from exc


def get_bytes(beacon: str, path: str, timeout: float = 10.0) -> bytes:
    try:
        with urllib.request.urlopen(api_url(beacon, path), timeout=timeout) as resp:
            return resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(f"GET {path}: {exc}") from exc


def post_record(beacon: str, record: SignedRecord) -> dict:
    req = urllib.request.Request(api_url(beacon, "/api/records"), data=encode(record), method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ClientError(f"beacon refused the record: HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(f"cannot reach beacon {beacon}: {exc}") from exc


def sign_record(key: SigningKey, chain_id: str, record) -> SignedRecord:
    payload = encode(record, Record)
    return SignedRecord(record, key.sign(chain_id.encode(), KIND_RECORD, payload))


def progress_bar(desc: str, total: int):
    """A tqdm bar on a terminal; silent otherwise."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not sys.stderr.isatty())


def load_or_create_key(datadir: Path | None) -> SigningKey:
    if datadir is None:
        datadir = Path(tempfile.mkdtemp(prefix="cairn-publisher-"))
    if not (datadir / NODE_KEY_FILE).exists():
        new_keys(datadir, vrf=False)
    return load_keys(datadir, vrf=False)[0]


def collection_summary(beacon: str, name: str) -> dict | None:
    try:
        return get_json(beacon, f"/api/collections/{urllib.parse.quote(name)}")
    except ClientError as exc:
        if "HTTP 404" in str(exc):
            return None
        raise


def publish(directory: Path, *, name: str | None, target: int, beacon: str, datadir: Path | None,
            seed_until_target: bool, bt_listen: str = "127.0.0.1:0", timeout_s: float = 600) -> int:
    from storage.torrent import TorrentSession

    if not Path(directory).is_dir():
        raise ClientError(f"{directory} is not a directory")
    key = load_or_create_key(datadir)
    status = get_json(beacon, "/api/status")
    total = sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file()) if Path(directory).is_dir() else 0
    with progress_bar("hashing", total) as bar:
        meta = create_collection(directory, name=name, progress=lambda done, _t: bar.update(done - bar.n))
    print(f"collection {meta.name}: {len(meta.files)} files, {meta.total_length} bytes, "
          f"{len(meta.shards)} shards, info hash {meta.info_hash_v2.hex()}")
    work = Path(tempfile.mkdtemp(prefix="cairn-seed-"))
    host, _, port = bt_listen.rpartition(":")
    session = TorrentSession(host, int(port), work / "state")
    try:
        # libtorrent looks for <save_path>/<torrent name>/...: point that name at the directory.
        (work / "data").mkdir()
        os.symlink(os.path.realpath(directory), work / "data" / meta.name)
        session.seed(meta.torrent, work / "data")
        record = Publish(key.public_key, meta.name, meta.torrent, target, (f"{host}:{session.port}",),
                         int(time.time() * 1000))
        reply = post_record(beacon, sign_record(key, status["chain_id"], record))
        print(f"submitted Publish record {reply.get('id', '')[:16]} to {beacon}")
        deadline = time.monotonic() + timeout_s
        while collection_summary(beacon, meta.name) is None:
            if time.monotonic() > deadline:
                raise ClientError("the collection did not appear on chain in time")
            time.sleep(POLL_S)
        print(f"collection {meta.name} is on chain")
        if not seed_until_target:
            return 0
        print(f"seeding until every shard has {target} verified holders")
        while True:
            info = collection_summary(beacon, meta.name) or {}
            total = len(info.get("shards") or [])
            print(f"  shards at target {info.get('shards_at_target')}/{total}", flush=True)
            if total and info.get("shards_at_target") == total:
                print("target reached; the publisher can go away")
                return 0
            if time.monotonic() > deadline:
                raise ClientError("the target was not reached in time")
            time.sleep(2 * POLL_S)
    finally:
        session.close(save=False)


def fetch(name: str, dest: Path, *, beacon: str, timeout_s: float = 600) -> int:
    from storage.torrent import TorrentSession

    info = collection_summary(beacon, name)
    if info is None:
        raise ClientError(f"no collection named {name!r} on chain")
    torrent = get_bytes(beacon, f"/api/torrents/{info['info_hash']}")
    meta = parse_torrent(torrent)
    sources = [tuple(a.rsplit(":", 1)) for a in info.get("sources", [])]
    sources = [(h, int(p)) for h, p in sources]
    if not sources:
        raise ClientError(f"collection {name} has no holders to fetch from")
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cairn-fetch-"))
    session = TorrentSession("127.0.0.1", 0, work / "state")
    try:
        key = session.fetch(torrent, dest, range(meta.total_pieces), sources)
        all_pieces = range(meta.total_pieces)
        deadline = time.monotonic() + timeout_s
        with progress_bar(f"fetching {name}", meta.total_pieces) as bar:
            while True:
                have, want, down, _up = session.progress(key, all_pieces)
                bar.update(have - bar.n)
                if have == want:
                    break
                if time.monotonic() > deadline:
                    raise ClientError(f"fetch timed out with {have}/{want} pieces")
                session.add_peers(key, sources)
                session.wait_until(lambda: session.has_pieces(key, all_pieces), 1.0)
        # libtorrent reports a piece as had before its blocks leave the write buffer.
        session.flush(key)
        verify_collection(meta, dest)
        print(f"fetched {name} into {dest / meta.name}: {len(meta.files)} files verified against their pieces roots")
        return 0
    finally:
        session.close(save=False)


def verify_collection(meta, dest: Path) -> None:
    """Recompute every file's BEP 52 root from disk and compare with the torrent's."""
    for f in meta.files:
        path = dest / meta.name / f.path
        data = path.read_bytes() if f.length else b""
        if len(data) != f.length or (f.length and pieces_root(data) != f.pieces_root):
            raise ClientError(f"{path} does not match the collection (corrupt or incomplete)")


def status(beacon: str) -> int:
    st = get_json(beacon, "/api/status")
    print(format_status(st))
    return 0


def format_status(st: dict) -> str:
    lines = [
        f"chain        {st.get('chain_id')}",
        f"head         {st.get('head_height')}  ({(st.get('head_hash') or '')[:16]})",
        f"finalized    {st.get('finalized_height')}",
        f"randomness   {(st.get('randomness') or '')[:32]}",
        f"validators   {st.get('validators_online')}/{st.get('validators_total')} online",
        f"peers        {st.get('peers_active')} active, {st.get('peers_suspended')} suspended, {st.get('peers_excluded')} excluded",
        f"collections  {st.get('collections')}",
        f"shards       {st.get('shards_at_target')}/{st.get('shards_total')} at target, deficit {st.get('replication_deficit')}",
        f"stored       {st.get('stored_bytes')} of {st.get('target_bytes')} target bytes",
    ]
    if st.get("syncing"):
        lines.append("syncing      yes")
    return "\n".join(lines)
