"""The local shard index: lifecycle, persistence across reopen, self-check."""
from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import libtorrent as lt
import pytest

from storage.index import (
    IndexCorrupt, IndexStateError, LocalIndex, ShardState, sample_pieces,
)
from storage.kv import LevelDBKV, MemoryKV

IH = "ab" * 32
IH2 = "cd" * 32
PIECE = 16 * 1024


def make_shard_file(root: Path, name: str, pieces: int) -> list[bytes]:
    data = [os.urandom(PIECE) for _ in range(pieces)]
    (root / name).write_bytes(b"".join(data))
    return data


def reader(path: Path, first_piece: int):
    def read(p: int) -> bytes:
        with open(path, "rb") as f:
            f.seek((p - first_piece) * PIECE)
            return f.read(PIECE)
    return read


def test_lifecycle_and_listing() -> None:
    idx = LocalIndex(MemoryKV())
    r = idx.begin_fetch(IH, 3, range(10, 20), ["coll/big.bin"], "/data", 10 * PIECE, now=100)
    assert r.state is ShardState.FETCHING and r.pieces == range(10, 20) and r.created_at == 100
    assert idx.held() == []
    idx.mark_held(IH, 3, now=150)
    idx.begin_fetch(IH, 1, range(0, 5), ["coll/a"], "/data", 5 * PIECE, now=160)
    idx.begin_fetch(IH2, 0, range(0, 1), ["x"], "/data", 7, now=170)
    idx.mark_held(IH2, 0, now=171)
    # Canonical order: by torrent, then by shard number.
    assert [(s.info_hash, s.shard) for s in idx.shards()] == [(IH, 1), (IH, 3), (IH2, 0)]
    assert [(s.info_hash, s.shard) for s in idx.held()] == [(IH, 3), (IH2, 0)]
    assert [s.shard for s in idx.shards(info_hash=IH)] == [1, 3]
    assert idx.held_bytes() == 10 * PIECE + 7

    rec = idx.record_proof(IH, 3, height=42, ok=True, now=200)
    assert (rec.proof_height, rec.proof_ok, rec.updated_at, rec.created_at) == (42, True, 200, 100)
    with pytest.raises(IndexStateError):
        idx.record_proof(IH, 3, height=41, ok=True, now=201)   # heights never go back

    idx.mark_dropping(IH, 3, now=300)
    assert [(s.info_hash, s.shard) for s in idx.held()] == [(IH2, 0)]
    idx.remove(IH, 3)
    assert idx.get(IH, 3) is None


def test_illegal_transitions_are_refused() -> None:
    idx = LocalIndex(MemoryKV())
    with pytest.raises(IndexStateError):
        idx.mark_held(IH, 0, now=1)                      # unknown shard
    idx.begin_fetch(IH, 0, range(0, 4), ["f"], "/d", 4 * PIECE, now=1)
    with pytest.raises(IndexStateError):
        idx.remove(IH, 0)                                # still fetching: drop first
    idx.mark_held(IH, 0, now=2)
    with pytest.raises(IndexStateError):
        idx.begin_fetch(IH, 0, range(0, 4), ["f"], "/d", 4 * PIECE, now=3)   # already held
    with pytest.raises(IndexStateError):
        idx.begin_fetch(IH, 1, range(5, 5), ["f"], "/d", 0, now=3)          # empty range
    with pytest.raises(IndexStateError):
        idx.get("not hex", 0)
    idx.mark_lost(IH, 0, "disk failed", now=4)
    assert idx.get(IH, 0).reason == "disk failed"
    again = idx.begin_fetch(IH, 0, range(0, 4), ["f"], "/d", 4 * PIECE, now=5)
    assert again.state is ShardState.FETCHING and again.created_at == 1 and again.reason == ""


def test_survives_reopen_on_leveldb(tmp_path: Path) -> None:
    idx = LocalIndex.open(tmp_path / "index")
    idx.begin_fetch(IH, 7, range(100, 164), ["coll/big.bin"], tmp_path, 64 * PIECE, now=10)
    idx.mark_held(IH, 7, now=20)
    idx.record_proof(IH, 7, height=5, ok=False, now=30)
    before = idx.get(IH, 7)
    idx.close()
    idx = LocalIndex.open(tmp_path / "index")
    try:
        assert idx.get(IH, 7) == before
        assert idx.held() == [before]
    finally:
        idx.close()


def test_batch_is_atomic_and_corrupt_records_are_reported(tmp_path: Path) -> None:
    kv = LevelDBKV(tmp_path / "kv")
    idx = LocalIndex(kv)
    try:
        a = idx.begin_fetch(IH, 0, range(0, 2), ["f"], "/d", 2, now=1)
        b = idx.begin_fetch(IH, 1, range(2, 4), ["f"], "/d", 2, now=1)
        idx.apply([replace(a, state=ShardState.HELD, updated_at=2)], removals=[(IH, 1)])
        assert [s.state for s in idx.shards()] == [ShardState.HELD]
        assert idx.get(IH, b.shard) is None
        kv.put(b"shard/" + bytes.fromhex(IH2) + (0).to_bytes(4, "big"), b"\xc1junk")
        with pytest.raises(IndexCorrupt):
            list(idx.shards())
    finally:
        idx.close()


def test_sample_pieces_is_deterministic_and_covers_the_ends() -> None:
    idx = LocalIndex(MemoryKV())
    rec = idx.begin_fetch(IH, 0, range(50, 150), ["f"], "/d", 100 * PIECE, now=1)
    s1 = sample_pieces(rec, 6, b"seed")
    assert s1 == sample_pieces(rec, 6, b"seed")
    assert len(s1) == 6 and 50 in s1 and 149 in s1 and all(50 <= p < 150 for p in s1)
    assert sample_pieces(rec, 100, b"x") == tuple(range(50, 150))
    assert sample_pieces(rec, 500, b"x") == tuple(range(50, 150))


def test_self_check_passes_then_catches_corruption_and_loss(tmp_path: Path) -> None:
    data = make_shard_file(tmp_path, "shard.bin", 32)
    expected = {10 + i: hashlib.sha256(d).digest() for i, d in enumerate(data)}
    idx = LocalIndex(MemoryKV())
    idx.begin_fetch(IH, 0, range(10, 42), ["shard.bin"], tmp_path, 32 * PIECE, now=1)
    idx.mark_held(IH, 0, now=2)
    read = reader(tmp_path / "shard.bin", 10)

    ok = idx.self_check(IH, 0, read, expected.__getitem__, now=3, samples=32)
    assert ok.ok and ok.checked == tuple(range(10, 42))

    # Flip one byte of piece 25: a full sample must find it and mark the shard lost.
    with open(tmp_path / "shard.bin", "r+b") as f:
        f.seek((25 - 10) * PIECE + 7)
        f.write(bytes([data[15][7] ^ 1]))
    bad = idx.self_check(IH, 0, read, expected.__getitem__, now=4, samples=32)
    assert not bad.ok and "piece 25" in bad.reason
    rec = idx.get(IH, 0)
    assert rec.state is ShardState.LOST and rec.updated_at == 4
    assert idx.held() == []
    with pytest.raises(IndexStateError):   # only held shards are checked
        idx.self_check(IH, 0, read, expected.__getitem__, now=5)

    # Re-fetched, then the file vanishes: lost without reading anything.
    idx.begin_fetch(IH, 0, range(10, 42), ["shard.bin"], tmp_path, 32 * PIECE, now=6)
    idx.mark_held(IH, 0, now=7)
    (tmp_path / "shard.bin").unlink()
    gone = idx.self_check(IH, 0, read, expected.__getitem__, now=8)
    assert not gone.ok and gone.checked == () and "missing" in gone.reason
    assert idx.get(IH, 0).state is ShardState.LOST


def test_self_check_truncated_file_is_lost(tmp_path: Path) -> None:
    data = make_shard_file(tmp_path, "s.bin", 8)
    expected = [hashlib.sha256(d).digest() for d in data]
    idx = LocalIndex(MemoryKV())
    idx.begin_fetch(IH, 0, range(0, 8), ["s.bin"], tmp_path, 8 * PIECE, now=1)
    idx.mark_held(IH, 0, now=1)
    os.truncate(tmp_path / "s.bin", 3 * PIECE)
    res = idx.self_check(IH, 0, reader(tmp_path / "s.bin", 0), expected.__getitem__, now=2, samples=2)
    assert not res.ok and idx.get(IH, 0).state is ShardState.LOST   # the last piece reads short


def test_self_check_with_libtorrent_v1_piece_hashes(tmp_path: Path) -> None:
    """The index stays libtorrent-free; the caller plugs in a torrent's own piece hashes."""
    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "big.bin").write_bytes(os.urandom(20 * 65536 + 123))
    ct = lt.create_torrent(lt.list_files(str(coll)), 65536)
    lt.set_piece_hashes(ct, str(tmp_path))
    ti = lt.torrent_info(lt.bencode(ct.generate()))
    n = ti.num_pieces()

    def read(p: int) -> bytes:
        with open(coll / "big.bin", "rb") as f:
            f.seek(p * 65536)
            return f.read(ti.piece_size(p))

    idx = LocalIndex(MemoryKV())
    idx.begin_fetch(IH, 0, range(0, n), ["coll/big.bin"], tmp_path, ti.total_size(), now=1)
    idx.mark_held(IH, 0, now=1)
    res = idx.self_check(IH, 0, read, lambda p: ti.hash_for_piece(p), now=2, samples=n,
                         digest=lambda b: hashlib.sha1(b).digest())
    assert res.ok and len(res.checked) == n
