"""Proofs of storage: built from one piece, verified against libtorrent's roots, every forgery refused."""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import libtorrent as lt
import msgpack
import pytest

from storage.collection import CollectionMeta, Shard, create_collection, leaf_count, shard_leaf_to_file_leaf
from storage.errors import PieceReadError, ProofError, StorageError
from storage.merkle import BLOCK_SIZE, tree_height
from storage.proof import MAX_PROOF_BYTES, Proof, build_proof, read_piece, verify_proof, verify_shard_proof

KIB = 1024
PL = 64 * KIB
SIZES = {
    "one_byte": 1,
    "short": 20_000,
    "one_piece": PL,
    "multi": 5 * PL + 5000,  # 6 pieces, short last piece, tree padded to 8 pieces
    "twin_a": 3 * BLOCK_SIZE,
    "twin_b": 3 * BLOCK_SIZE,
}


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CollectionMeta]:
    root = tmp_path_factory.mktemp("proof") / "c"
    root.mkdir()
    for name, size in SIZES.items():
        (root / name).write_bytes(random.Random(name).randbytes(size))
    # Two pieces per shard, so "multi" is cut into three shards.
    return root, create_collection(root, piece_length=PL, max_shard_bytes=2 * PL)


def _prove(root: Path, meta: CollectionMeta, shard: Shard, i: int) -> Proof:
    file_index, file_leaf = shard_leaf_to_file_leaf(meta, shard, i)
    piece = file_leaf * BLOCK_SIZE // meta.piece_length
    return build_proof(meta, shard, i, read_piece(root / meta.files[file_index].path, piece, meta.piece_length))


def _shard(meta: CollectionMeta, path: str, k: int = 0) -> Shard:
    index = next(i for i, f in enumerate(meta.files) if f.path == path)
    return [s for s in meta.shards if s.file_index == index][k]


def test_every_leaf_of_every_shard_proves_against_libtorrents_root(collection: tuple[Path, CollectionMeta]) -> None:
    root, meta = collection
    layout = lt.torrent_info(meta.torrent).layout()
    lt_roots = {layout.file_path(i).split("/", 1)[1]: layout.root(i).to_bytes() for i in range(layout.num_files())}
    assert len(meta.shards) == 8
    for shard in meta.shards:
        file = meta.files[shard.file_index]
        for i in range(leaf_count(shard)):
            proof = _prove(root, meta, shard, i)
            data = (root / file.path).read_bytes()
            assert proof.data == data[proof.leaf_index * BLOCK_SIZE : (proof.leaf_index + 1) * BLOCK_SIZE]
            assert len(proof.path) == tree_height(file.length)
            verify_proof(lt_roots[file.path], file.length, proof.leaf_index, proof)
            verify_shard_proof(meta, shard, i, proof)
            verify_shard_proof(file, shard, i, proof, piece_length=meta.piece_length)
            assert Proof.decode(proof.encode()) == proof


def test_wire_size_is_about_16_and_a_half_kib(collection: tuple[Path, CollectionMeta]) -> None:
    root, meta = collection
    proof = _prove(root, meta, _shard(meta, "multi"), 0)
    assert BLOCK_SIZE < len(proof.encode()) < BLOCK_SIZE + 512 <= MAX_PROOF_BYTES


@pytest.fixture(scope="module")
def good(collection: tuple[Path, CollectionMeta]) -> tuple[CollectionMeta, Shard, Proof]:
    root, meta = collection
    shard = _shard(meta, "multi", 1)
    return meta, shard, _prove(root, meta, shard, 5)


def _flip(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def test_forged_proofs_are_refused(good: tuple[CollectionMeta, Shard, Proof]) -> None:
    meta, shard, proof = good
    file = meta.files[shard.file_index]
    verify_shard_proof(meta, shard, 5, proof)
    forgeries = {
        "wrong leaf data": replace(proof, data=_flip(proof.data, 100)),
        "short leaf data": replace(proof, data=proof.data[:-1]),
        "claims another index": replace(proof, leaf_index=proof.leaf_index + 1),
        "truncated path": replace(proof, path=proof.path[:-1]),
        "path too long": replace(proof, path=proof.path + (bytes(32),)),
        "tampered sibling": replace(proof, path=(proof.path[0], _flip(proof.path[1]), *proof.path[2:])),
        "swapped siblings": replace(proof, path=(proof.path[1], proof.path[0], *proof.path[2:])),
    }
    for what, forged in forgeries.items():
        with pytest.raises(ProofError):
            verify_shard_proof(meta, shard, 5, forged)
            pytest.fail(what)
    with pytest.raises(ProofError, match="not the challenged leaf"):
        verify_proof(file.pieces_root, file.length, proof.leaf_index + 1, proof)


def test_proof_must_answer_the_challenged_leaf_of_the_challenged_shard(collection: tuple[Path, CollectionMeta], good: tuple[CollectionMeta, Shard, Proof]) -> None:
    root, meta = collection
    _, shard, proof = good
    with pytest.raises(ProofError, match="outside shard"):
        verify_shard_proof(meta, shard, leaf_count(shard), proof)
    with pytest.raises(ProofError, match="outside shard"):
        verify_shard_proof(meta, shard, -1, proof)
    # The same leaf index in the neighbouring shard is another leaf of the file.
    with pytest.raises(ProofError):
        verify_shard_proof(meta, _shard(meta, "multi", 0), 5, proof)
    file = meta.files[shard.file_index]
    stray = replace(shard, first_piece=file.first_piece + 5, piece_count=2)
    with pytest.raises(ProofError, match="not inside"):
        verify_shard_proof(file, stray, 0, proof, piece_length=meta.piece_length)
    with pytest.raises(ProofError, match="needs piece_length"):
        verify_shard_proof(file, shard, 5, proof)
    with pytest.raises(ProofError, match="outside the file"):
        verify_proof(file.pieces_root, file.length, 10_000, replace(proof, leaf_index=10_000))
    with pytest.raises(ProofError, match="empty file"):
        verify_proof(file.pieces_root, 0, 0, proof)


def test_a_leaf_of_another_file_is_refused(collection: tuple[Path, CollectionMeta]) -> None:
    root, meta = collection
    a, b = _shard(meta, "twin_a"), _shard(meta, "twin_b")
    proof_a = _prove(root, meta, a, 1)
    verify_shard_proof(meta, a, 1, proof_a)
    with pytest.raises(ProofError, match="does not hash to the pieces root"):
        verify_shard_proof(meta, b, 1, proof_a)


def test_corrupt_or_misread_pieces_build_no_proof(collection: tuple[Path, CollectionMeta]) -> None:
    root, meta = collection
    for path, k in (("multi", 1), ("short", 0)):
        shard = _shard(meta, path, k)
        file = meta.files[shard.file_index]
        piece = (shard.first_piece - file.first_piece)
        data = read_piece(root / file.path, piece, meta.piece_length)
        with pytest.raises(ProofError, match="does not match"):
            build_proof(meta, shard, 0, _flip(data, len(data) - 1))
        with pytest.raises(ProofError, match="bytes, got"):
            build_proof(meta, shard, 0, data + b"\x00")
    with pytest.raises(ProofError, match="outside shard"):
        build_proof(meta, shard, leaf_count(shard), data)


def test_read_piece_reads_exactly_one_piece(collection: tuple[Path, CollectionMeta]) -> None:
    root, meta = collection
    data = (root / "multi").read_bytes()
    assert read_piece(root / "multi", 2, PL) == data[2 * PL : 3 * PL]
    assert read_piece(root / "multi", 5, PL) == data[5 * PL :]
    with pytest.raises(PieceReadError, match="past the end"):
        read_piece(root / "multi", 6, PL)
    with pytest.raises(PieceReadError, match="cannot read"):
        read_piece(root / "missing", 0, PL)
    assert issubclass(PieceReadError, StorageError) and issubclass(ProofError, StorageError)


def test_decode_rejects_everything_but_the_canonical_encoding(good: tuple[CollectionMeta, Shard, Proof]) -> None:
    _, _, proof = good
    raw = proof.encode()
    path = [bytes(h) for h in proof.path]
    bad = {
        "trailing bytes": raw + b"\x00",
        "truncated": raw[:-1],
        "wide int": b"\x93\xce" + proof.leaf_index.to_bytes(4, "big") + raw[2:],
        "str data": msgpack.packb([proof.leaf_index, proof.data.decode("latin-1"), path], use_bin_type=True),
        "bool index": msgpack.packb([True, proof.data, path], use_bin_type=True),
        "negative index": msgpack.packb([-1, proof.data, path], use_bin_type=True),
        "two fields": msgpack.packb([proof.leaf_index, proof.data], use_bin_type=True),
        "map": msgpack.packb({"i": proof.leaf_index}, use_bin_type=True),
        "short hash": msgpack.packb([proof.leaf_index, proof.data, [h[:31] for h in path]], use_bin_type=True),
        "empty data": msgpack.packb([proof.leaf_index, b"", path], use_bin_type=True),
        "oversize data": msgpack.packb([proof.leaf_index, b"x" * (BLOCK_SIZE + 1), path], use_bin_type=True),
        "oversize input": b"\x00" * (MAX_PROOF_BYTES + 1),
        "not bytes": "text",
    }
    for what, blob in bad.items():
        with pytest.raises(ProofError):
            Proof.decode(blob)  # type: ignore[arg-type]
            pytest.fail(what)
