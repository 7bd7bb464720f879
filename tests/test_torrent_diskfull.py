"""The libtorrent adapter on a full disk: a real 2 MiB tmpfs, real sessions on loopback.

A shard bigger than the disk is fetched from a seeding session: the fetch must end in a
clear FileFailed (ENOSPC, naming the file), never in a ShardComplete, and the session
must go on working: the failed pieces can be dropped (their bytes freed), a shard that
fits is fetched, and once the disk grows the big shard is fetched after all.

These tests mount a tmpfs, so they need root (CI runs as root on this kind of machine).
They do not skip without it: a missing mount is a failure that says why.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import libtorrent as lt
import pytest

from tests.diskutil import mount_tmpfs, resize_tmpfs, unmount
from storage.torrent import FileFailed, ShardComplete, TorrentSession

PIECE = 64 * 1024
HOST = "127.0.0.1"
T = 20.0   # generous deadline for any single wait on a shared 2-core machine


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """(directory holding 'coll', torrent bytes): a 4 MiB file and a 100 kB one."""
    root = tmp_path_factory.mktemp("publisher")
    coll = root / "coll"
    coll.mkdir()
    (coll / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    (coll / "small.bin").write_bytes(os.urandom(100_000))
    ct = lt.create_torrent(lt.list_files(str(coll)), PIECE)
    lt.set_piece_hashes(ct, str(root))
    return root, lt.bencode(ct.generate())


def pieces_of(torrent: bytes) -> dict[str, range]:
    ti = lt.torrent_info(torrent)
    fs = ti.layout()
    out = {}
    for i in range(fs.num_files()):
        if not fs.file_flags(i) & lt.file_storage.flag_pad_file:
            off, size = fs.file_offset(i), fs.file_size(i)
            out[fs.file_path(i)] = range(off // PIECE, (off + size - 1) // PIECE + 1)
    return out


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "small-disk"
    mount_tmpfs(mnt, "2m")
    try:
        yield mnt
    finally:
        unmount(mnt)


def wait_file_failed(s: TorrentSession) -> FileFailed | None:
    seen: list[object] = []
    failed = lambda: next((e for e in seen if isinstance(e, FileFailed)), None)   # noqa: E731
    s.wait_until(lambda: seen.extend(s.poll()) or failed() is not None, T)
    assert not any(isinstance(e, ShardComplete) and len(e.pieces) > 2 for e in seen)
    return failed()


def test_fetch_onto_a_full_disk_fails_clearly_and_the_session_recovers(collection, small_disk, tmp_path):
    root, torrent = collection
    pieces = pieces_of(torrent)
    big, small = pieces["coll/big.bin"], pieces["coll/small.bin"]
    pub = TorrentSession(HOST, 0, tmp_path / "pub-state")
    peer = TorrentSession(HOST, 0, tmp_path / "peer-state")   # resume data on the big disk
    try:
        key = pub.seed(torrent, root)
        n = lt.torrent_info(torrent).num_pieces()
        assert pub.wait_until(lambda: pub.has_pieces(key, range(n)), T)
        src = [(HOST, pub.port)]
        # A shard that fits first: the torrent then outlives the failed fetch below (it is
        # re-added from resume data, not removed), which is where a stall could hide.
        peer.fetch(torrent, small_disk, small, src)
        assert peer.wait_until(lambda: peer.has_pieces(key, small), T)

        for attempt in (1, 2):     # a retry while the disk is still full fails the same way
            peer.fetch(torrent, small_disk, big, src)
            ev = wait_file_failed(peer)
            assert ev is not None, f"attempt {attempt}: no FileFailed for a fetch bigger than the disk"
            assert ev.info_hash == key and ev.disk_full and ev.os_errno == errno.ENOSPC, ev
            assert Path(ev.path) == small_disk / "coll" / "big.bin", ev.path
            assert "No space left on device" in ev.message and "big.bin" in ev.message, ev.message
            assert not peer.has_pieces(key, big)
            # libtorrent stops the torrent or its downloads; the session says so.
            assert peer.wait_until(lambda: peer.error(key) is not None, T)
            # The session still works: the failed fetch is dropped and its bytes freed...
            peer.drop_pieces(key, big)
            assert shutil.disk_usage(small_disk).used < 256 * 1024, "the partial download was not freed"
            assert peer.wait_until(lambda: peer.has_pieces(key, small), T), "the held shard was lost"
            assert peer.error(key) is None

        # ...and once the disk has room, the big shard is fetched after all.
        resize_tmpfs(small_disk, "16m")
        peer.fetch(torrent, small_disk, big, src)
        assert peer.wait_until(lambda: peer.has_pieces(key, big), T), f"error: {peer.error(key)}"
        peer.flush(key)
        for name in ("big.bin", "small.bin"):
            assert (small_disk / "coll" / name).read_bytes() == (root / "coll" / name).read_bytes()
        assert peer.error(key) is None
        assert peer.downloaded_bytes() >= 4 * 1024 * 1024 + 100_000
    finally:
        peer.close(save=False)
        pub.close(save=False)
