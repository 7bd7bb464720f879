"""BEP 52 merkle trees: the per-file SHA-256 trees of BitTorrent v2.

A file is cut into 16 KiB blocks; each block's SHA-256 is a leaf (the last block may be
shorter and is hashed as it is, never padded with bytes). The leaf layer is padded with
zero hashes (32 zero bytes) up to a power of two, and each parent is
SHA-256(left || right). The root of that tree is the file's *pieces root*, the value a
v2 torrent carries in its file tree. An empty file has no tree and no root.

The *piece layer* is the level of the same tree whose nodes each cover one piece
(`piece_length` bytes, a power of two >= 16 KiB). The torrent only carries it for files
longer than one piece. Past the end of the file that level is padded with the root of an
all-zero subtree of one piece ("pad hash"), which is what padding the leaves with zero
hashes gives anyway, so one tree describes both.

Everything here is pure and deterministic: no I/O, no clock, no floats.
"""
from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha256

BLOCK_SIZE = 16384
HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
# 2**64 leaves of 16 KiB is far past any file a filesystem holds; bounding the height
# bounds every loop and every path a peer can send us.
MAX_TREE_HEIGHT = 64


def _pad_hashes() -> tuple[bytes, ...]:
    pads = [ZERO_HASH]
    for _ in range(MAX_TREE_HEIGHT):
        pads.append(sha256(pads[-1] + pads[-1]).digest())
    return tuple(pads)


_PADS = _pad_hashes()


def pad_hash(height: int) -> bytes:
    """Root of an all-zero-hash subtree with 2**height leaves (height 0: the zero hash)."""
    if not 0 <= height <= MAX_TREE_HEIGHT:
        raise ValueError(f"tree height {height} outside 0..{MAX_TREE_HEIGHT}")
    return _PADS[height]


def ceil_log2(n: int) -> int:
    """Smallest h with 2**h >= n (n >= 1)."""
    if n < 1:
        raise ValueError(f"ceil_log2 of {n}")
    return (n - 1).bit_length()


def num_leaves(file_length: int) -> int:
    """Number of 16 KiB blocks (leaves) of a file; 0 for an empty file."""
    if file_length < 0:
        raise ValueError(f"negative file length {file_length}")
    return -(-file_length // BLOCK_SIZE)


def tree_height(file_length: int) -> int:
    """Height of a file's tree = length of every proof path for that file."""
    n = num_leaves(file_length)
    if n == 0:
        raise ValueError("a zero-length file has no merkle tree")
    return ceil_log2(n)


def blocks_per_piece(piece_length: int) -> int:
    """Leaves per piece; validates that piece_length is a power of two >= 16 KiB."""
    if piece_length < BLOCK_SIZE or piece_length & (piece_length - 1):
        raise ValueError(f"piece length {piece_length} is not a power of two >= {BLOCK_SIZE}")
    return piece_length // BLOCK_SIZE


def compute_leaf_hashes(data: bytes | bytearray | memoryview) -> tuple[bytes, ...]:
    """SHA-256 of each 16 KiB block of `data` (the last block may be shorter)."""
    view = memoryview(data)
    return tuple(sha256(view[i : i + BLOCK_SIZE]).digest() for i in range(0, len(view), BLOCK_SIZE))


def _parents(level: list[bytes]) -> list[bytes]:
    return [sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]


def reduce_to_root(hashes: Sequence[bytes], height: int, pad_height: int = 0) -> bytes:
    """Root of a subtree of 2**height nodes whose first nodes are `hashes`.

    The missing nodes are pad_hash(pad_height) at the bottom level; higher up they are the
    matching larger pad hashes, added lazily so a short layer costs what it holds, not 2**height.
    """
    if not hashes:
        raise ValueError("no hashes to reduce")
    if len(hashes) > (1 << height):
        raise ValueError(f"{len(hashes)} hashes do not fit a subtree of height {height}")
    level = list(hashes)
    for h in range(height):
        if len(level) % 2:
            level.append(pad_hash(pad_height + h))
        level = _parents(level)
    return level[0]


def compute_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """A file's pieces root from all its leaf hashes. An empty file has no root: ValueError."""
    if not leaf_hashes:
        raise ValueError("a zero-length file has no pieces root")
    return reduce_to_root(leaf_hashes, ceil_log2(len(leaf_hashes)))


def piece_hash(piece_leaf_hashes: Sequence[bytes], piece_length: int) -> bytes:
    """Piece-layer node for one piece: its leaves padded with zero hashes to a full piece."""
    return reduce_to_root(piece_leaf_hashes, ceil_log2(blocks_per_piece(piece_length)))


def compute_piece_layer(leaf_hashes: Sequence[bytes], piece_length: int) -> tuple[bytes, ...]:
    """The piece layer of a file from all its leaf hashes.

    Empty for files of at most one piece: BEP 52 torrents carry no layer for those, since
    the pieces root already is the hash of the only piece's subtree.
    """
    per_piece = blocks_per_piece(piece_length)
    if len(leaf_hashes) <= per_piece:
        return ()
    return tuple(
        piece_hash(leaf_hashes[i : i + per_piece], piece_length)
        for i in range(0, len(leaf_hashes), per_piece)
    )


def root_from_piece_layer(layer: Sequence[bytes], piece_length: int) -> bytes:
    """A file's pieces root from its piece layer (padded with pad hashes of one piece)."""
    if not layer:
        raise ValueError("empty piece layer")
    return reduce_to_root(layer, ceil_log2(len(layer)), ceil_log2(blocks_per_piece(piece_length)))


def sibling_path(hashes: Sequence[bytes], index: int, *, height: int | None = None, pad_height: int = 0) -> tuple[bytes, ...]:
    """Siblings of node `index` from the bottom level up to (not including) the root.

    By default the level is a file's leaf layer and the tree is as tall as that file's;
    `height`/`pad_height` let a caller take the path within a piece's subtree or over a
    piece layer, the two halves a proof is built from.
    """
    if not 0 <= index < len(hashes):
        raise ValueError(f"index {index} outside 0..{len(hashes) - 1}")
    if height is None:
        height = ceil_log2(len(hashes))
    if len(hashes) > (1 << height):
        raise ValueError(f"{len(hashes)} hashes do not fit a subtree of height {height}")
    path: list[bytes] = []
    level = list(hashes)
    for h in range(height):
        if len(level) % 2:
            level.append(pad_hash(pad_height + h))
        path.append(level[index ^ 1])
        level = _parents(level)
        index //= 2
    return tuple(path)


def root_from_path(leaf_hash: bytes, index: int, path: Sequence[bytes]) -> bytes:
    """Fold a leaf hash up its sibling path; bit h of `index` says which side it is on at level h."""
    if index < 0 or index >> len(path):
        raise ValueError(f"index {index} does not fit a path of length {len(path)}")
    node = leaf_hash
    for sibling in path:
        node = sha256(sibling + node).digest() if index & 1 else sha256(node + sibling).digest()
        index >>= 1
    return node


def pieces_root(data: bytes | bytearray | memoryview) -> bytes | None:
    """Pieces root of a whole file held in memory, or None for an empty file."""
    leaves = compute_leaf_hashes(data)
    return compute_root(leaves) if leaves else None
