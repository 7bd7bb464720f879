"""The libtorrent adapter with real sessions on loopback (TCP), no mocks.

The collection: three small files and one 4 MiB file, 64 KiB pieces, a hybrid v1+v2
torrent made by libtorrent itself, so every file starts on a piece boundary.
"""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import libtorrent as lt
import pytest

from storage.errors import TorrentError
from storage.torrent import (
    HashFailed, PieceFinished, ResumeRejected, ShardComplete, StateChanged, TorrentSession,
    UnknownTorrent, info_hash_of,
)

PIECE = 64 * 1024
HOST = "127.0.0.1"
T = 20.0   # generous deadline for any single wait on a shared 2-core machine


# ------------------------------------------------------------------ fixtures and helpers

@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """(directory holding the collection dir 'coll', torrent bytes)."""
    root = tmp_path_factory.mktemp("publisher")
    coll = root / "coll"
    (coll / "docs").mkdir(parents=True)
    rnd = os.urandom
    (coll / "docs" / "a.txt").write_bytes(rnd(1000))
    (coll / "b.bin").write_bytes(rnd(70_000))   # spans two pieces
    (coll / "c.bin").write_bytes(rnd(5))
    (coll / "big.bin").write_bytes(rnd(4 * 1024 * 1024))
    ct = lt.create_torrent(lt.list_files(str(coll)), PIECE)
    lt.set_piece_hashes(ct, str(root))
    return root, lt.bencode(ct.generate())


def file_pieces(torrent: bytes) -> dict[str, range]:
    """Real (non-pad) file path -> the global pieces it occupies."""
    ti = lt.torrent_info(torrent)
    fs = ti.layout()
    out = {}
    for i in range(fs.num_files()):
        if fs.file_flags(i) & lt.file_storage.flag_pad_file:
            continue
        off, size = fs.file_offset(i), fs.file_size(i)
        out[fs.file_path(i)] = range(off // PIECE, (off + size - 1) // PIECE + 1)
    return out


def read_piece(root: Path, torrent: bytes, piece: int) -> bytes:
    ti = lt.torrent_info(torrent)
    fs = ti.layout()
    out = b""
    for sl in ti.map_block(piece, 0, ti.piece_size(piece)):
        if fs.file_flags(sl.file_index) & lt.file_storage.flag_pad_file:
            continue
        with open(root / fs.file_path(sl.file_index), "rb") as f:
            f.seek(sl.offset)
            out += f.read(sl.size)
    return out


def assert_same_pieces(a: Path, b: Path, torrent: bytes, pieces: range | set[int]) -> None:
    for p in pieces:
        assert read_piece(a, torrent, p) == read_piece(b, torrent, p), f"piece {p} differs"


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def sessions(tmp_path: Path):
    """Factory of sessions that are all closed at the end of the test."""
    made: list[TorrentSession] = []

    def make(name: str) -> TorrentSession:
        s = TorrentSession(HOST, 0, tmp_path / name / "state")
        made.append(s)
        return s

    yield make
    for s in made:
        s.close(save=False)


def wait_complete(s: TorrentSession, key: str, pieces) -> bool:
    """Wait for the ShardComplete of exactly `pieces`: verified and readable from the files."""
    want = ShardComplete(key, frozenset(pieces))
    seen: list[object] = []
    return s.wait_until(lambda: (seen.extend(s.poll()) or want in seen), T)


def seeded_publisher(make, collection) -> tuple[TorrentSession, str]:
    root, torrent = collection
    pub = make("pub")
    key = pub.seed(torrent, root)
    n = lt.torrent_info(torrent).num_pieces()
    assert pub.wait_until(lambda: pub.has_pieces(key, range(n)), T)
    return pub, key


# ------------------------------------------------------------------ transfers

def test_partial_holders_serve_a_fourth_peer(collection, sessions, tmp_path: Path) -> None:
    root, torrent = collection
    fp = file_pieces(torrent)
    big = fp["coll/big.bin"]
    pub, key = seeded_publisher(sessions, collection)
    assert key == info_hash_of(torrent)
    src = [(HOST, pub.port)]
    sets = {
        "a": set(big[:20]),
        "b": set(big[20:45]) | set(fp["coll/b.bin"]),
        "c": set(big[45:]) | set(fp["coll/docs/a.txt"]) | set(fp["coll/c.bin"]),
    }
    holders = {name: sessions(name) for name in sets}
    for name, s in holders.items():
        s.fetch(torrent, tmp_path / name / "data", sets[name], src)
    for name, s in holders.items():
        assert wait_complete(s, key, sets[name]), name
        assert s.has_pieces(key, sets[name])
        have, total, _, _ = s.progress(key, sets[name])
        assert have == total == len(sets[name])
        others = set(range(lt.torrent_info(torrent).num_pieces())) - sets[name]
        assert s.progress(key, others)[0] == 0   # nothing beyond what was asked
        assert_same_pieces(root, tmp_path / name / "data", torrent, sets[name])
    # Files with no wanted piece are never created, pad files neither.
    assert files_under(tmp_path / "a" / "data") == {"coll/big.bin"}
    assert files_under(tmp_path / "b" / "data") == {"coll/big.bin", "coll/b.bin"}

    pub.close(save=False)
    # Every piece now lives only on the partial holders.
    everything = set().union(*sets.values())
    assert everything == set(range(lt.torrent_info(torrent).num_pieces()))
    d = sessions("d")
    d.fetch(torrent, tmp_path / "d" / "data", everything,
            [(HOST, holders[n].port) for n in sorted(holders)])
    assert wait_complete(d, key, everything)
    for rel in fp:
        assert (tmp_path / "d" / "data" / rel).read_bytes() == (root / rel).read_bytes(), rel


def test_fetch_extends_the_wanted_set(collection, sessions, tmp_path: Path) -> None:
    root, torrent = collection
    big = file_pieces(torrent)["coll/big.bin"]
    pub, key = seeded_publisher(sessions, collection)
    p = sessions("p")
    first, second = set(big[:4]), set(big[10:14])
    p.fetch(torrent, tmp_path / "p", first, [(HOST, pub.port)])
    assert wait_complete(p, key, first)
    # Once finished, libtorrent closes connections it has no use for: peers are given again.
    p.fetch(torrent, tmp_path / "p", second, [(HOST, pub.port)])
    assert wait_complete(p, key, second)
    assert not p.has_pieces(key, set(big[4:10]))
    assert_same_pieces(root, tmp_path / "p", torrent, first | second)
    # Asking for what is already held completes at once.
    p.fetch(torrent, tmp_path / "p", first, [])
    assert wait_complete(p, key, first)


# ------------------------------------------------------------------ dropping reclaims disk

def blocks(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_drop_deletes_whole_files_and_punches_holes(collection, sessions, tmp_path: Path) -> None:
    root, torrent = collection
    fp = file_pieces(torrent)
    n = lt.torrent_info(torrent).num_pieces()
    pub, key = seeded_publisher(sessions, collection)
    p = sessions("p")
    data = tmp_path / "p" / "data"
    p.fetch(torrent, data, range(n), [(HOST, pub.port)])
    assert p.wait_until(lambda: p.has_pieces(key, range(n)), T)
    p.flush(key)   # verified pieces may still be queued for writing: count blocks after
    big, bbin = data / "coll" / "big.bin", data / "coll" / "b.bin"
    assert bbin.exists() and blocks(big) >= 4 * 1024 * 1024

    # Whole-file case: every piece of b.bin dropped -> the file is gone.
    p.drop_pieces(key, fp["coll/b.bin"])
    assert not bbin.exists()
    assert not p.has_pieces(key, fp["coll/b.bin"])

    # Hole-punch case: 1 MiB from the middle of big.bin.
    mid = fp["coll/big.bin"][16:32]
    before = blocks(big)
    p.drop_pieces(key, mid)
    assert before - blocks(big) >= 16 * PIECE   # the space really came back
    assert big.stat().st_size == 4 * 1024 * 1024
    assert not p.has_pieces(key, mid)
    kept = set(range(n)) - set(mid) - set(fp["coll/b.bin"])
    assert p.has_pieces(key, kept)   # no re-download, no re-hash needed
    assert_same_pieces(root, data, torrent, kept)
    assert p.progress(key, kept)[0] == len(kept)

    # A dropped piece asked for again is fetched again (the drop was not a ban).
    p.fetch(torrent, data, mid[:2], [(HOST, pub.port)])
    assert wait_complete(p, key, mid[:2])
    assert_same_pieces(root, data, torrent, mid[:2])

    # Dropping the rest removes the torrent, its files and its resume file.
    p.save_resume_data()
    assert (p.state_dir / f"{key}.resume").exists()
    p.drop_pieces(key, range(n))
    assert key not in p.torrents()
    assert files_under(data) == set()
    assert not (p.state_dir / f"{key}.resume").exists()
    with pytest.raises(UnknownTorrent):
        p.has_pieces(key, [0])


# ------------------------------------------------------------------ restart

def test_restart_resumes_without_download_or_rehash(collection, sessions, tmp_path: Path) -> None:
    root, torrent = collection
    big = file_pieces(torrent)["coll/big.bin"]
    pub, key = seeded_publisher(sessions, collection)
    state = tmp_path / "p" / "state"
    data = tmp_path / "p" / "data"
    held, dropped = set(big[:24]), set(big[24:32])
    p = TorrentSession(HOST, 0, state)
    p.fetch(torrent, data, held | dropped, [(HOST, pub.port)])
    assert p.wait_until(lambda: p.has_pieces(key, held | dropped), T)
    p.drop_pieces(key, dropped)
    p.close()   # saves resume data

    q = sessions("p")   # same state_dir
    assert q.torrents() == [key]
    assert q.wait_until(lambda: q.has_pieces(key, held), 5.0)
    q.add_peers(key, [(HOST, pub.port)])   # a peer it could download from, were it to try
    evs = q.poll(0.5)
    assert q.stats(key).total_download == 0
    assert not q.has_pieces(key, dropped)   # the drop survived the restart
    assert not any(isinstance(e, StateChanged) and e.state == "checking_files" for e in evs)
    assert not any(isinstance(e, ResumeRejected) for e in evs)
    assert_same_pieces(root, data, torrent, held)


def test_torn_resume_file_is_set_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / ("ab" * 32 + ".resume")).write_bytes(b"d8:not bencode")
    s = TorrentSession(HOST, 0, state)
    try:
        assert s.torrents() == []
        assert any(isinstance(e, ResumeRejected) for e in s.poll())
        assert (state / ("ab" * 32 + ".resume.bad")).exists()
    finally:
        s.close()


# ------------------------------------------------------------------ bad input

def test_corrupt_torrent_bytes_raise_a_clear_error(collection, sessions, tmp_path: Path) -> None:
    _, torrent = collection
    s = sessions("s")
    for bad in (b"", b"garbage", torrent[: len(torrent) // 2], b"d4:infod4:name1:xee"):
        with pytest.raises(TorrentError):
            s.fetch(bad, tmp_path / "x", [0], [])
        with pytest.raises(TorrentError):
            info_hash_of(bad)
    with pytest.raises(TorrentError):
        s.fetch(torrent, tmp_path / "x", [10_000], [])
    with pytest.raises(UnknownTorrent):
        s.progress("00" * 32, [0])
    assert s.torrents() == []


def test_peer_serving_corrupt_data_causes_hash_failure(collection, sessions, tmp_path: Path) -> None:
    root, torrent = collection
    big = file_pieces(torrent)["coll/big.bin"]
    liar_root = tmp_path / "liar" / "data"
    shutil.copytree(root / "coll", liar_root / "coll")
    liar = sessions("liar")
    key = liar.seed(torrent, liar_root)
    n = lt.torrent_info(torrent).num_pieces()
    assert liar.wait_until(lambda: liar.has_pieces(key, range(n)), T)
    # After the check passed, rot one piece on disk: libtorrent will serve it as is.
    bad, good = big[5], big[6]
    with open(liar_root / "coll" / "big.bin", "r+b") as f:
        f.seek((bad - big[0]) * PIECE + 100)
        f.write(b"\xff" * 64)
        f.flush()
        os.fsync(f.fileno())

    v = sessions("victim")
    v.fetch(torrent, tmp_path / "victim", {bad, good}, [(HOST, liar.port)])
    seen: list[object] = []
    assert v.wait_until(lambda: (seen.extend(v.poll()) or HashFailed(key, bad) in seen), T)
    assert v.wait_until(lambda: v.has_pieces(key, [good]), T)
    assert not v.has_pieces(key, [bad])
    assert PieceFinished(key, bad) not in seen
    assert ShardComplete(key, frozenset({bad, good})) not in seen


# ------------------------------------------------------------------ asyncio

async def test_async_events_arrive_through_the_alert_fd(collection, sessions, tmp_path: Path) -> None:
    root, torrent = collection
    big = file_pieces(torrent)["coll/big.bin"]
    pub, key = seeded_publisher(sessions, collection)
    p = sessions("p")
    want = frozenset(big[:8])
    got: list[object] = []

    async def consume() -> None:
        async for ev in p.events():
            got.append(ev)
            if isinstance(ev, ShardComplete):
                return

    # Alerts are only processed on the loop, so the consumer subscribes (when the task
    # first runs, at the await below) before any event of this fetch can be emitted.
    task = asyncio.create_task(consume())
    p.fetch(torrent, tmp_path / "p", want, [(HOST, pub.port)])
    async with asyncio.timeout(T):
        await task
    assert got[-1] == ShardComplete(key, want)
    assert {e.piece for e in got if isinstance(e, PieceFinished)} == set(want)
    # wait_for re-checks a predicate as events come in.
    more = set(big[8:12])
    p.fetch(torrent, tmp_path / "p", more, [(HOST, pub.port)])
    assert await p.wait_for(lambda: p.has_pieces(key, more), T)
    p.flush(key)   # verified is not yet written: flush before reading the files
    p.request_stats()
    assert_same_pieces(root, tmp_path / "p", torrent, set(want) | more)


# ------------------------------------------------------------------ cairn-made torrents

def test_cairn_collection_torrent_moves_shard_by_shard(sessions, tmp_path: Path) -> None:
    """A torrent from storage.collection works in libtorrent, and its shards map to pieces."""
    from storage.collection import create_collection, shard_pieces

    pub_root = tmp_path / "pubroot"
    coll = pub_root / "coll"
    coll.mkdir(parents=True)
    (coll / "small.txt").write_bytes(os.urandom(3000))
    (coll / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 777))
    meta = create_collection(coll, piece_length=PIECE, max_shard_bytes=1024 * 1024)
    assert info_hash_of(meta.torrent) == meta.info_hash_v2.hex()
    assert len(meta.shards) >= 4   # big.bin is cut into several shards

    pub = sessions("pub")
    key = pub.seed(meta.torrent, pub_root)
    assert key == meta.info_hash_v2.hex()
    assert pub.wait_until(lambda: pub.has_pieces(key, range(meta.total_pieces)), T)
    p = sessions("p")
    shard = meta.shards[2]
    want = shard_pieces(shard)
    p.fetch(meta.torrent, tmp_path / "p", want, [(HOST, pub.port)])
    assert wait_complete(p, key, want)
    path = meta.files[shard.file_index].path
    first = meta.files[shard.file_index].first_piece
    start = (shard.first_piece - first) * PIECE
    with open(tmp_path / "p" / "coll" / path, "rb") as got, open(coll / path, "rb") as exp:
        got.seek(start)
        exp.seek(start)
        assert got.read(shard.length) == exp.read(shard.length)
