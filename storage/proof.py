"""Proofs of storage: one 16 KiB leaf of a file plus its sibling path to the pieces root.

A peer that holds a piece builds a proof for any leaf inside it from that piece alone:
the path within the piece's subtree comes from hashing the piece, the path above it from
the piece layer the torrent carries. Anyone with the torrent verifies it against the
file's pieces root; the path length is fixed by the file's length, so a proof cannot
claim to sit at another depth of the tree.

Wire format: msgpack array [leaf_index, data, path] with `path` an array of 32-byte
bins, in msgpack's one shortest encoding; decoding rejects anything else (other types,
non-minimal encodings, trailing bytes, oversize input).

`verify_proof`, `verify_shard_proof`, `build_proof` and the codec are pure;
`read_piece` is the one helper that touches the disk.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from hashlib import sha256

import msgpack

from storage.collection import CollectionMeta, FileEntry, Shard, file_piece_count, leaf_count, shard_first_leaf
from storage.errors import PieceReadError, ProofError
from storage.merkle import (
    BLOCK_SIZE,
    HASH_SIZE,
    MAX_TREE_HEIGHT,
    blocks_per_piece,
    ceil_log2,
    compute_leaf_hashes,
    num_leaves,
    pad_hash,
    reduce_to_root,
    sibling_path,
)

MAX_PATH_LENGTH = MAX_TREE_HEIGHT
# leaf index (<= 9 B) + bin16 header (3 B) + data + array headers + path of bin8 entries.
MAX_PROOF_BYTES = 1 + 9 + 3 + BLOCK_SIZE + 3 + MAX_PATH_LENGTH * (2 + HASH_SIZE)


@dataclass(frozen=True, slots=True)
class Proof:
    """Leaf `leaf_index` of a file (index within the file's tree), its bytes and sibling path."""

    leaf_index: int
    data: bytes
    path: tuple[bytes, ...]

    def encode(self) -> bytes:
        return msgpack.packb([self.leaf_index, self.data, list(self.path)], use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> Proof:
        if not isinstance(raw, (bytes, bytearray)):
            raise ProofError(f"proof is {type(raw).__name__}, not bytes")
        if len(raw) > MAX_PROOF_BYTES:
            raise ProofError(f"proof of {len(raw)} bytes is over the {MAX_PROOF_BYTES}-byte limit")
        try:
            obj = msgpack.unpackb(
                raw,
                raw=True,
                use_list=True,
                strict_map_key=True,
                max_bin_len=BLOCK_SIZE,
                max_str_len=0,
                max_array_len=MAX_PATH_LENGTH,
                max_map_len=0,
                max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises a zoo of types (ExtraData, ValueError, ...)
            raise ProofError(f"proof is not one msgpack value: {exc}") from exc
        proof = cls._from_obj(obj)
        # msgpack-python always writes the shortest form, so a round trip catches every
        # other encoding of the same value (wide ints, bin16 for short data, ...).
        if proof.encode() != bytes(raw):
            raise ProofError("proof is not in canonical msgpack encoding")
        return proof

    @classmethod
    def _from_obj(cls, obj: object) -> Proof:
        if type(obj) is not list or len(obj) != 3:
            raise ProofError("proof is not an array [leaf_index, data, path]")
        index, data, path = obj
        if type(index) is not int or index < 0:
            raise ProofError("leaf index is not a non-negative integer")
        if type(data) is not bytes or not 0 < len(data) <= BLOCK_SIZE:
            raise ProofError(f"leaf data is not 1..{BLOCK_SIZE} bytes")
        if type(path) is not list or any(type(h) is not bytes or len(h) != HASH_SIZE for h in path):
            raise ProofError(f"path is not an array of {HASH_SIZE}-byte hashes")
        return cls(index, data, tuple(path))


# ---------------------------------------------------------------------------- verify


def verify_proof(pieces_root: bytes, file_length: int, leaf_index: int, proof: Proof) -> None:
    """Check `proof` is leaf `leaf_index` of the file with this root and length; ProofError if not."""
    if file_length <= 0:
        raise ProofError("an empty file has nothing to prove")
    leaves = num_leaves(file_length)
    if not 0 <= leaf_index < leaves:
        raise ProofError(f"leaf {leaf_index} outside the file's {leaves} leaves")
    if proof.leaf_index != leaf_index:
        raise ProofError(f"proof is for leaf {proof.leaf_index}, not the challenged leaf {leaf_index}")
    expected = BLOCK_SIZE if leaf_index < leaves - 1 else file_length - BLOCK_SIZE * (leaves - 1)
    if len(proof.data) != expected:
        raise ProofError(f"leaf {leaf_index} holds {len(proof.data)} bytes, expected {expected}")
    height = ceil_log2(leaves)
    if len(proof.path) != height:
        raise ProofError(f"path has {len(proof.path)} hashes, the file's tree needs {height}")
    node = sha256(proof.data).digest()
    index = leaf_index
    for sibling in proof.path:
        node = sha256(sibling + node).digest() if index & 1 else sha256(node + sibling).digest()
        index >>= 1
    if node != pieces_root:
        raise ProofError(f"leaf {leaf_index} does not hash to the pieces root")


def verify_shard_proof(
    meta_or_file: CollectionMeta | FileEntry,
    shard: Shard,
    leaf_index_in_shard: int,
    proof: Proof,
    *,
    piece_length: int | None = None,
) -> None:
    """Like verify_proof, and also check the leaf lies inside `shard`.

    Given a FileEntry instead of the whole meta, pass the collection's `piece_length`.
    """
    if isinstance(meta_or_file, CollectionMeta):
        if not 0 <= shard.file_index < len(meta_or_file.files):
            raise ProofError(f"shard {shard.index} names file {shard.file_index}, not in the collection")
        file = meta_or_file.files[shard.file_index]
        piece_length = meta_or_file.piece_length
    else:
        file = meta_or_file
        if piece_length is None:
            raise ProofError("verify_shard_proof with a FileEntry needs piece_length")
    if not 0 <= leaf_index_in_shard < leaf_count(shard):
        raise ProofError(f"leaf {leaf_index_in_shard} outside shard {shard.index} ({leaf_count(shard)} leaves)")
    file_pieces = range(file.first_piece, file.first_piece + file_piece_count(file.length, piece_length))
    if shard.piece_count < 1 or shard.first_piece not in file_pieces or shard.first_piece + shard.piece_count - 1 not in file_pieces:
        raise ProofError(f"shard {shard.index} is not inside {file.path!r}")
    file_leaf = shard_first_leaf(file, shard, piece_length) + leaf_index_in_shard
    verify_proof(file.pieces_root, file.length, file_leaf, proof)


# ---------------------------------------------------------------------------- build


@functools.lru_cache(maxsize=16)
def _layer_levels(layer: bytes, pad_height: int) -> tuple[tuple[bytes, ...], ...]:
    """Every level of the tree above a piece layer, bottom first, each padded to even length.

    Cached because a peer answers many challenges on the same file; keyed by the layer
    bytes object, whose hash Python computes once and keeps.
    """
    level = [layer[i : i + HASH_SIZE] for i in range(0, len(layer), HASH_SIZE)]
    levels: list[tuple[bytes, ...]] = []
    for h in range(ceil_log2(len(level))):
        if len(level) % 2:
            level.append(pad_hash(pad_height + h))
        levels.append(tuple(level))
        level = [sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return tuple(levels)


def build_proof(meta: CollectionMeta, shard: Shard, leaf_index_in_shard: int, piece_bytes: bytes) -> Proof:
    """Proof for leaf `leaf_index_in_shard` of `shard`, from the one piece holding it.

    `piece_bytes` is that piece's file data (shorter than piece_length only for the file's
    last piece; no v1 padding). ProofError if the piece does not match the torrent, since
    then no valid proof can be built from it: the local copy is corrupt.
    """
    if not 0 <= leaf_index_in_shard < leaf_count(shard):
        raise ProofError(f"leaf {leaf_index_in_shard} outside shard {shard.index} ({leaf_count(shard)} leaves)")
    file = meta.files[shard.file_index]
    per_piece = blocks_per_piece(meta.piece_length)
    file_leaf = shard_first_leaf(file, shard, meta.piece_length) + leaf_index_in_shard
    piece_in_file, leaf_in_piece = divmod(file_leaf, per_piece)
    expected = min(meta.piece_length, file.length - piece_in_file * meta.piece_length)
    if len(piece_bytes) != expected:
        raise ProofError(f"piece {piece_in_file} of {file.path} is {expected} bytes, got {len(piece_bytes)}")
    leaves = compute_leaf_hashes(piece_bytes)
    data = bytes(piece_bytes[leaf_in_piece * BLOCK_SIZE : (leaf_in_piece + 1) * BLOCK_SIZE])
    if file.length <= meta.piece_length:
        if reduce_to_root(leaves, ceil_log2(len(leaves))) != file.pieces_root:
            raise ProofError(f"{file.path}: local data does not match the pieces root")
        return Proof(file_leaf, data, sibling_path(leaves, leaf_in_piece))
    piece_height = ceil_log2(per_piece)
    layer = meta.piece_layers.get(file.pieces_root)
    if layer is None:
        raise ProofError(f"{file.path}: the torrent has no piece layer for this file")
    if reduce_to_root(leaves, piece_height) != layer[piece_in_file * HASH_SIZE : (piece_in_file + 1) * HASH_SIZE]:
        raise ProofError(f"{file.path}: piece {piece_in_file} does not match the torrent's piece layer")
    lower = sibling_path(leaves, leaf_in_piece, height=piece_height)
    upper = tuple(level[(piece_in_file >> h) ^ 1] for h, level in enumerate(_layer_levels(layer, piece_height)))
    return Proof(file_leaf, data, lower + upper)


def read_piece(path: str | os.PathLike[str], piece_index_in_file: int, piece_length: int) -> bytes:
    """Exactly the bytes of one piece of a file on disk (short only for the last piece)."""
    offset = piece_index_in_file * piece_length
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if piece_index_in_file < 0 or offset >= size:
                raise PieceReadError(f"{path}: piece {piece_index_in_file} is past the end ({size} bytes)")
            want = min(piece_length, size - offset)
            data = os.pread(f.fileno(), want, offset)
    except OSError as exc:
        raise PieceReadError(f"cannot read piece {piece_index_in_file} of {path}: {exc.strerror}") from exc
    if len(data) != want:
        raise PieceReadError(f"{path}: short read of piece {piece_index_in_file} ({len(data)} of {want} bytes)")
    return data
