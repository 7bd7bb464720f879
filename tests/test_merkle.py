"""BEP 52 merkle trees, cross-checked against the roots and piece layers libtorrent computes."""
from __future__ import annotations

import random
import tempfile
from hashlib import sha256
from pathlib import Path

import libtorrent as lt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.merkle import (
    BLOCK_SIZE,
    ZERO_HASH,
    compute_leaf_hashes,
    compute_piece_layer,
    compute_root,
    pad_hash,
    pieces_root,
    root_from_path,
    root_from_piece_layer,
    sibling_path,
    tree_height,
)

KIB = 1024


def _data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


def libtorrent_view(files: dict[str, bytes], piece_length: int) -> tuple[dict[str, bytes | None], dict[bytes, bytes]]:
    """Roots per file (None for empty files) and piece layers of the torrent libtorrent makes."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "c"
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        creator = lt.create_torrent(lt.list_files(str(root)), piece_length)
        lt.set_piece_hashes(creator, tmp)
        entry = creator.generate()
    info = lt.torrent_info(lt.bencode(entry))
    layout = info.layout()
    roots: dict[str, bytes | None] = {}
    for i in range(layout.num_files()):
        if layout.file_flags(i) & lt.file_storage.flag_pad_file:
            continue
        raw = layout.root(i).to_bytes()
        roots[layout.file_path(i).split("/", 1)[1]] = None if raw == ZERO_HASH else raw
    return roots, dict(entry.get(b"piece layers", {}))


def test_pad_hashes_are_roots_of_zero_subtrees() -> None:
    assert pad_hash(0) == ZERO_HASH
    assert pad_hash(1) == sha256(ZERO_HASH * 2).digest()
    assert pad_hash(3) == compute_root([ZERO_HASH] * 8)


def test_leaf_hashes_cover_16k_blocks_and_a_short_tail() -> None:
    data = _data(2 * BLOCK_SIZE + 5)
    assert compute_leaf_hashes(data) == (
        sha256(data[:BLOCK_SIZE]).digest(),
        sha256(data[BLOCK_SIZE : 2 * BLOCK_SIZE]).digest(),
        sha256(data[2 * BLOCK_SIZE :]).digest(),
    )
    assert compute_leaf_hashes(b"") == ()


def test_one_block_file_root_is_its_leaf_hash() -> None:
    assert pieces_root(b"x") == sha256(b"x").digest()


def test_three_leaves_pad_with_a_zero_hash() -> None:
    a, b, c = (sha256(bytes([i])).digest() for i in range(3))
    left = sha256(a + b).digest()
    right = sha256(c + ZERO_HASH).digest()
    assert compute_root([a, b, c]) == sha256(left + right).digest()


def test_empty_file_has_no_root() -> None:
    assert pieces_root(b"") is None
    with pytest.raises(ValueError):
        compute_root([])
    with pytest.raises(ValueError):
        tree_height(0)


@pytest.mark.parametrize("leaves", [1, 2, 3, 5, 8, 13])
def test_every_leaf_path_folds_to_the_root(leaves: int) -> None:
    hashes = [sha256(bytes([i])).digest() for i in range(leaves)]
    root = compute_root(hashes)
    for i in range(leaves):
        path = sibling_path(hashes, i)
        assert len(path) == tree_height(leaves * BLOCK_SIZE)
        assert root_from_path(hashes[i], i, path) == root
        if leaves > 1:
            assert root_from_path(hashes[i], i ^ 1, path) != root


@pytest.mark.parametrize("piece_length", [16 * KIB, 32 * KIB, 64 * KIB])
@pytest.mark.parametrize("size", [BLOCK_SIZE + 1, 64 * KIB, 64 * KIB * 3 + 1, 640 * KIB - 1])
def test_piece_layer_hashes_up_to_the_same_root(piece_length: int, size: int) -> None:
    leaves = compute_leaf_hashes(_data(size))
    layer = compute_piece_layer(leaves, piece_length)
    if size <= piece_length:
        assert layer == ()
    else:
        assert len(layer) == -(-size // piece_length)
        assert root_from_piece_layer(layer, piece_length) == compute_root(leaves)


EDGE_SIZES = {
    "empty": 0,
    "one_byte": 1,
    "block_minus_1": BLOCK_SIZE - 1,
    "block": BLOCK_SIZE,
    "block_plus_1": BLOCK_SIZE + 1,
    "one_piece": 64 * KIB,
    "three_pieces": 3 * 64 * KIB,
    "four_pieces": 4 * 64 * KIB,
    "five_pieces_and_a_bit": 5 * 64 * KIB + 7,
    "many_pieces": 37 * 64 * KIB + 12345,
}


@pytest.mark.parametrize("piece_length", [16 * KIB, 64 * KIB])
def test_roots_and_piece_layers_equal_libtorrents(piece_length: int) -> None:
    files = {name: _data(size) for name, size in EDGE_SIZES.items()}
    lt_roots, lt_layers = libtorrent_view(files, piece_length)
    assert set(lt_roots) == set(files)
    for name, data in files.items():
        assert pieces_root(data) == lt_roots[name], name
        layer = compute_piece_layer(compute_leaf_hashes(data), piece_length)
        if layer:
            assert b"".join(layer) == lt_layers[lt_roots[name]], name
        elif lt_roots[name] is not None:
            assert lt_roots[name] not in lt_layers, name


@settings(max_examples=20, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=700 * KIB), min_size=1, max_size=3),
    piece_length=st.sampled_from([16 * KIB, 32 * KIB, 128 * KIB]),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_random_sizes_match_libtorrent(sizes: list[int], piece_length: int, seed: int) -> None:
    # libtorrent refuses a torrent with no bytes at all, so one file is never empty.
    files = {f"f{i}": _data(n, seed) for i, n in enumerate(sizes)} | {"z": b"z"}
    lt_roots, lt_layers = libtorrent_view(files, piece_length)
    for name, data in files.items():
        leaves = compute_leaf_hashes(data)
        assert pieces_root(data) == lt_roots[name]
        if len(data) > piece_length:
            assert b"".join(compute_piece_layer(leaves, piece_length)) == lt_layers[lt_roots[name]]
