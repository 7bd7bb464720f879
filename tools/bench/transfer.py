"""Transfer benchmark: a cairn TorrentSession pair vs a raw libtorrent session pair.

One single-file shard (>= 256 MiB) moves from a seeder to a fetcher over loopback TCP,
once through two cairn `TorrentSession`s (events, piece bookkeeping and all) and once
through two bare `lt.session`s with the very same settings, alert mask included. The
ratio cairn/raw says what the adapter costs; the goal is >= 0.9.

Rounds alternate raw and cairn, and the best round of each side counts, so a burst of
load from another process on the shared machine hurts both sides alike rather than one.

    python -m tools.bench.transfer [--json] [--size-mb 256] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import libtorrent as lt

from storage.torrent import ShardComplete, TorrentSession, session_settings

HOST = "127.0.0.1"
PIECE = 256 * 1024
TIMEOUT_S = 120.0   # per transfer: a stuck transfer fails the bench instead of hanging it
MIN_SIZE_MB = 256


class BenchError(RuntimeError):
    """A transfer did not complete in time, or the data did not arrive intact."""


def _make_shard(root: Path, size_mb: int) -> bytes:
    """Write one random file of size_mb MiB under root/shard/, return the torrent bytes."""
    d = root / "shard"
    d.mkdir(parents=True)
    chunk = os.urandom(4 * 1024 * 1024)
    with open(d / "data.bin", "wb") as f:
        for i in range(size_mb // 4):
            # Vary every chunk so no two pieces are equal (dedupe-proof, like real data).
            f.write(i.to_bytes(8, "big") + chunk[8:])
        f.write(os.urandom((size_mb % 4) * 1024 * 1024))
    ct = lt.create_torrent(lt.list_files(str(d)), PIECE)
    lt.set_piece_hashes(ct, str(root))
    return lt.bencode(ct.generate())


def _raw_session() -> lt.session:
    return lt.session(session_settings(HOST, 0))


def _raw_wait(ses: lt.session, done, what: str, flushed: list[bool] | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"raw libtorrent: {what} not done within {TIMEOUT_S} s")
        ses.wait_for_alert(int(min(left, 0.25) * 1000))
        # Same alert volume as cairn, thrown away unread but for the flush fence.
        for a in ses.pop_alerts():
            if flushed is not None and isinstance(a, lt.cache_flushed_alert):
                flushed.append(True)


def _raw_add(ses: lt.session, torrent: bytes, save: Path, peers: list[tuple[str, int]]) -> lt.torrent_handle:
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = str(save)
    atp.flags &= ~lt.torrent_flags.auto_managed
    atp.flags &= ~lt.torrent_flags.paused
    atp.peers = peers
    return ses.add_torrent(atp)


def _raw_round(seed_port: int, torrent: bytes, dest: Path) -> float:
    leech = _raw_session()
    try:
        t0 = time.perf_counter()
        h = _raw_add(leech, torrent, dest, [(HOST, seed_port)])
        _raw_wait(leech, lambda: h.status().is_seeding, "transfer")
        # Cairn reports a shard complete only once its bytes are in the file (a flush
        # fence behind libtorrent's queued writes); the raw side must end in that state too.
        flushed: list[bool] = []
        h.flush_cache()
        _raw_wait(leech, lambda: bool(flushed), "flush", flushed)
        return time.perf_counter() - t0
    finally:
        del leech


def _cairn_round(seed_port: int, torrent: bytes, dest: Path, state: Path) -> float:
    leech = TorrentSession(HOST, 0, state)
    try:
        n = lt.torrent_info(torrent).num_pieces()
        t0 = time.perf_counter()
        leech.fetch(torrent, dest, range(n), [(HOST, seed_port)])
        ok = leech.wait_until(lambda: any(isinstance(e, ShardComplete) for e in leech.poll()),
                              TIMEOUT_S)
        elapsed = time.perf_counter() - t0
        if not ok:
            raise BenchError(f"cairn: transfer not done within {TIMEOUT_S} s")
        return elapsed
    finally:
        leech.close(save=False)


def _same_file(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 22), fb.read(1 << 22)
            if x != y:
                return False
            if not x:
                return True


def measure_transfer(size_mb: int = 256, rounds: int = 3) -> dict[str, object]:
    """Move a size_mb MiB shard cairn<->cairn and raw<->raw; report speeds and their ratio."""
    if size_mb < MIN_SIZE_MB:
        raise ValueError(f"the shard must be at least {MIN_SIZE_MB} MiB, got {size_mb}")
    root = Path(tempfile.mkdtemp(prefix="cairn-bench-transfer-", dir="/tmp"))
    raw_seed = None
    cairn_seed = None
    try:
        torrent = _make_shard(root, size_mb)
        src = root / "shard" / "data.bin"
        raw_seed = _raw_session()
        h = _raw_add(raw_seed, torrent, root, [])
        _raw_wait(raw_seed, lambda: h.status().is_seeding, "seed check")
        cairn_seed = TorrentSession(HOST, 0, root / "cairn-seed-state")
        key = cairn_seed.seed(torrent, root)
        n = lt.torrent_info(torrent).num_pieces()
        if not cairn_seed.wait_until(lambda: cairn_seed.has_pieces(key, range(n)), TIMEOUT_S):
            raise BenchError("cairn seeder did not finish checking its data")

        raw_times, cairn_times = [], []
        for r in range(rounds):
            dest = root / f"raw-{r}"
            raw_times.append(_raw_round(raw_seed.listen_port(), torrent, dest))
            if not _same_file(src, dest / "shard" / "data.bin"):
                raise BenchError("raw transfer delivered different bytes")
            shutil.rmtree(dest)
            dest = root / f"cairn-{r}"
            cairn_times.append(_cairn_round(cairn_seed.port, torrent, dest, root / f"cs-{r}"))
            if not _same_file(src, dest / "shard" / "data.bin"):
                raise BenchError("cairn transfer delivered different bytes")
            shutil.rmtree(dest)
        mb = size_mb  # MiB moved per round
        cairn_mb_s = mb / min(cairn_times)
        raw_mb_s = mb / min(raw_times)
        return {
            "transfer_ratio": round(cairn_mb_s / raw_mb_s, 3),
            "transfer_mb_s": round(cairn_mb_s, 1),
            "raw_mb_s": round(raw_mb_s, 1),
            "transport": "tcp",
            "size_mb": size_mb,
            "rounds": rounds,
            "piece_kib": PIECE // 1024,
        }
    finally:
        if cairn_seed is not None:
            cairn_seed.close(save=False)
        del raw_seed
        shutil.rmtree(root, ignore_errors=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    res = measure_transfer(args.size_mb, args.rounds)
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        print(f"cairn {res['transfer_mb_s']} MiB/s, raw libtorrent {res['raw_mb_s']} MiB/s, "
              f"ratio {res['transfer_ratio']} over {res['transport']} "
              f"({res['size_mb']} MiB shard, best of {res['rounds']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
