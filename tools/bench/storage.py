"""Storage benchmarks: proof verification, proof building, collection hashing, transfer.

    python -m tools.bench.storage [--json] [--size-mib 256] [--skip-transfer]

Each figure is measured against an anchor doing the unavoidable work with plain hashlib,
so the ratios say how much cairn's own code costs on top, whatever the machine:
  * proof verification: decode + verify_proof, vs SHA-256 of one 16 KiB leaf plus one
    SHA-256 of 64 bytes per path level (goal: ratio >= 0.5);
  * collection hashing: create_collection (scan, SHA-256 per 16 KiB leaf, the merkle tree,
    SHA-1 per piece, torrent), vs reading the same files in 1 MiB chunks and feeding
    hashlib SHA-256 and SHA-1, the two digests a hybrid v1+v2 torrent needs (goal >= 0.8).
    Files are read once before timing, so both sides run from a warm page cache;
  * transfer: tools.bench.transfer.measure_transfer(), when that module exists.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from hashlib import sha1, sha256
from pathlib import Path

from storage.collection import CollectionMeta, create_collection, leaf_count, shard_leaf_to_file_leaf
from storage.merkle import BLOCK_SIZE
from storage.proof import Proof, build_proof, read_piece, verify_proof

MIB = 1024 * 1024
READ_CHUNK = MIB


def _best_rate(fn: Callable[[], object], seconds: float, rounds: int = 3) -> float:
    """Calls per second of fn, best of `rounds` runs of about `seconds` each (the CPU is shared)."""
    best = 0.0
    for _ in range(rounds):
        calls = 0
        start = time.perf_counter()
        while True:
            for _ in range(50):
                fn()
            calls += 50
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        best = max(best, calls / elapsed)
    return best


def _make_files(root: Path, total_bytes: int) -> None:
    root.mkdir(parents=True)
    rng = random.Random(7)
    # Two large files (one with a short tail) and a few small ones, like a real collection.
    sizes = [total_bytes // 2, total_bytes // 2 - 3 * MIB - 12345, MIB, MIB + 1, 1000, 12345]
    for i, size in enumerate(sizes):
        with open(root / f"file{i:02d}.bin", "wb") as f:
            left = size
            block = rng.randbytes(4 * MIB)
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n


def _anchor_hash(root: Path) -> None:
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    for path in sorted(root.iterdir()):
        h256, h1 = sha256(), sha1()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                h256.update(view[:n])
                h1.update(view[:n])
        h256.digest(), h1.digest()


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_hashing(root: Path, total: int) -> tuple[dict[str, object], CollectionMeta]:
    _anchor_hash(root)  # warm the page cache
    ours, anchor = [], []
    meta: CollectionMeta | None = None
    for _ in range(3):
        anchor.append(_timed(lambda: _anchor_hash(root)))
        start = time.perf_counter()
        meta = create_collection(root)
        ours.append(time.perf_counter() - start)
    assert meta is not None
    ours_mb_s = total / MIB / min(ours)
    anchor_mb_s = total / MIB / min(anchor)
    return {
        "hash_mb_s": round(ours_mb_s, 1),
        "hash_anchor_mb_s": round(anchor_mb_s, 1),
        "hash_anchor": "hashlib SHA-256 + SHA-1 over every byte (what a hybrid v1+v2 torrent needs), 1 MiB reads",
        "hash_rate_ratio": round(ours_mb_s / anchor_mb_s, 3),
        "piece_length": meta.piece_length,
    }, meta


def bench_proofs(root: Path, meta: CollectionMeta) -> dict[str, object]:
    shard = max(meta.shards, key=lambda s: s.length)
    file_index, _ = shard_leaf_to_file_leaf(meta, shard, 0)
    file = meta.files[file_index]
    path = root / file.path
    rng = random.Random(1)
    build_ms = []
    proofs = []
    for _ in range(40):
        i = rng.randrange(leaf_count(shard))
        _, file_leaf = shard_leaf_to_file_leaf(meta, shard, i)
        start = time.perf_counter()
        piece = read_piece(path, file_leaf * BLOCK_SIZE // meta.piece_length, meta.piece_length)
        proofs.append(build_proof(meta, shard, i, piece))
        build_ms.append((time.perf_counter() - start) * 1000)
    proof = proofs[-1]
    raw = proof.encode()

    def ours() -> None:
        verify_proof(file.pieces_root, file.length, proof.leaf_index, Proof.decode(raw))

    siblings = proof.path
    data = proof.data

    def anchor() -> None:
        node = sha256(data).digest()
        for sibling in siblings:
            node = sha256(node + sibling).digest()

    ours()
    anchor_rate = _best_rate(anchor, 0.3)
    ours_rate = _best_rate(ours, 0.3)
    return {
        "proof_verify_per_s": round(ours_rate),
        "proof_verify_anchor_per_s": round(anchor_rate),
        "proof_verify_ratio": round(ours_rate / anchor_rate, 3),
        "proof_path_len": len(proof.path),
        "proof_bytes": len(raw),
        # The first build also pays for the piece layer's tree; later ones hit the cache.
        "proof_build_ms": round(statistics.median(build_ms), 3),
        "proof_build_first_ms": round(build_ms[0], 3),
    }


def bench_transfer() -> tuple[dict[str, object], str | None]:
    nulls: dict[str, object] = {"transfer_ratio": None, "transfer_mb_s": None, "transport": None}
    try:
        from tools.bench.transfer import measure_transfer
    except ImportError as exc:
        return nulls, f"tools.bench.transfer is not importable yet ({exc})"
    try:
        result = measure_transfer()
    except Exception as exc:  # a broken transfer bench must not hide the storage figures
        return nulls, f"measure_transfer() failed: {type(exc).__name__}: {exc}"
    return {key: result.get(key) for key in nulls}, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.storage", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--size-mib", type=int, default=256, help="collection size to hash (default 256)")
    parser.add_argument("--skip-transfer", action="store_true", help="do not run the transfer benchmark")
    args = parser.parse_args(argv)

    total = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="cairn-bench-") as tmp:
        root = Path(tmp) / "collection"
        _make_files(root, total)
        total = sum(p.stat().st_size for p in root.iterdir())
        result: dict[str, object] = {"size_mib": round(total / MIB, 1)}
        hashing, meta = bench_hashing(root, total)
        result |= hashing
        result |= bench_proofs(root, meta)
    note = None
    if args.skip_transfer:
        result |= {"transfer_ratio": None, "transfer_mb_s": None, "transport": None}
        note = "transfer skipped (--skip-transfer)"
    else:
        transfer, note = bench_transfer()
        result |= transfer

    if args.json:
        if note:
            print(note, file=sys.stderr)
        print(json.dumps(result, sort_keys=True))
        return 0
    print(f"collection hashing ({result['size_mib']} MiB, piece {meta.piece_length // 1024} KiB, warm cache)")
    print(f"  cairn   {result['hash_mb_s']:>9} MiB/s  (SHA-256 per 16 KiB leaf + merkle tree + SHA-1 per piece)")
    print(f"  anchor  {result['hash_anchor_mb_s']:>9} MiB/s  ({result['hash_anchor']})")
    print(f"  ratio   {result['hash_rate_ratio']:>9}        (goal >= 0.8)")
    print(f"proof verification (decode + verify, path of {result['proof_path_len']} hashes, {result['proof_bytes']} B)")
    print(f"  cairn   {result['proof_verify_per_s']:>9} /s")
    print(f"  anchor  {result['proof_verify_anchor_per_s']:>9} /s  (hashlib: SHA-256 of 16 KiB + one per path level)")
    print(f"  ratio   {result['proof_verify_ratio']:>9}     (goal >= 0.5)")
    print(f"proof build (read one piece + build): median {result['proof_build_ms']} ms, first {result['proof_build_first_ms']} ms")
    if note:
        print(f"transfer: n/a: {note}")
    else:
        print(f"transfer ({result['transport']}): {result['transfer_mb_s']} MB/s, ratio {result['transfer_ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
