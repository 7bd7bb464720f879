"""Collections: hybrid torrents libtorrent accepts as its own, shards, parsing, manifests."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import libtorrent as lt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import bencode
from storage.collection import (
    MAX_SHARD_BYTES,
    CollectionMeta,
    FileEntry,
    compute_shards,
    create_collection,
    default_piece_length,
    leaf_count,
    parse_torrent,
    read_manifest,
    shard_leaf_to_file_leaf,
    shard_of_piece,
    shard_pieces,
    write_manifest,
)
from storage.errors import (
    CollectionChangedError,
    CollectionError,
    EmptyCollectionError,
    ManifestError,
    ShardError,
    StorageError,
    SymlinkError,
    TorrentError,
)
from storage.merkle import BLOCK_SIZE, ZERO_HASH, pieces_root

KIB = 1024
MIB = 1024 * KIB
PL = 64 * KIB


def _write(root: Path, files: dict[str, int | bytes]) -> dict[str, bytes]:
    out = {}
    for name, spec in files.items():
        data = spec if isinstance(spec, bytes) else random.Random(name).randbytes(spec)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        out[name] = data
    return out


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "photos"
    data = _write(
        root,
        {
            "a/one": 1,
            "b.bin": 40_000,
            "empty": b"",
            "sub/big": 5 * PL + 123,
            "sub/exact": 2 * PL,
            "z/deep/er/tail": BLOCK_SIZE,
        },
    )
    return root, data


def _libtorrent_entry(root: Path, piece_length: int) -> dict:
    creator = lt.create_torrent(lt.list_files(str(root)), piece_length)
    lt.set_piece_hashes(creator, str(root.parent))
    return creator.generate()


def test_collection_is_the_torrent_libtorrent_makes(sample: tuple[Path, dict[str, bytes]]) -> None:
    root, data = sample
    meta = create_collection(root, piece_length=PL)
    entry = _libtorrent_entry(root, PL)
    # Same info dict byte for byte, hence the same v1 and v2 info hashes and piece layers.
    assert bencode.decode(meta.torrent)[b"info"] == entry[b"info"]
    assert bencode.decode(meta.torrent)[b"piece layers"] == entry[b"piece layers"]

    info = lt.torrent_info(meta.torrent)
    assert info.info_hashes().v1.to_bytes() == meta.info_hash_v1
    assert info.info_hashes().v2.to_bytes() == meta.info_hash_v2
    assert info.num_pieces() == meta.total_pieces
    layout = info.layout()
    real = [i for i in range(layout.num_files()) if not layout.file_flags(i) & lt.file_storage.flag_pad_file]
    assert [layout.file_path(i) for i in real] == [f"photos/{f.path}" for f in meta.files]
    for i, f in zip(real, meta.files):
        assert layout.file_size(i) == f.length == len(data[f.path])
        assert layout.file_offset(i) == f.first_piece * PL
        assert layout.root(i).to_bytes() == (f.pieces_root or ZERO_HASH)
        assert f.pieces_root == (pieces_root(data[f.path]) or b"")
    assert meta.name == "photos"
    assert meta.total_length == sum(len(d) for d in data.values())


def test_file_tree_order_compares_components_not_strings(tmp_path: Path) -> None:
    # "a/b" < "a-c/x" < "a.b" in the v2 file tree; a plain string sort (libtorrent's own
    # creator) puts "a/b" last and makes a torrent libtorrent then refuses to load.
    root = tmp_path / "c"
    _write(root, {"a/b": 3, "a-c/x": 4, "a.b": 5})
    meta = create_collection(root)
    assert [f.path for f in meta.files] == ["a/b", "a-c/x", "a.b"]
    layout = lt.torrent_info(meta.torrent).layout()
    roots = [layout.root(i).to_bytes() for i in range(layout.num_files()) if not layout.file_flags(i) & lt.file_storage.flag_pad_file]
    assert roots == [f.pieces_root for f in meta.files]


def test_progress_reports_every_byte_once(sample: tuple[Path, dict[str, bytes]]) -> None:
    root, data = sample
    seen: list[tuple[int, int]] = []
    create_collection(root, piece_length=PL, progress=lambda done, total: seen.append((done, total)))
    total = sum(len(d) for d in data.values())
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_same_directory_same_torrent(sample: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = sample
    assert create_collection(root).torrent == create_collection(root).torrent


def test_default_piece_length_grows_with_size() -> None:
    assert default_piece_length(1) == 256 * KIB
    assert default_piece_length(2 * 1024 * MIB) == 256 * KIB
    assert default_piece_length(2 * 1024 * MIB + 1) == 512 * KIB
    assert default_piece_length(1 << 50) == 16 * MIB


def test_missing_not_a_dir_and_empty_collections_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CollectionError, match="no such directory"):
        create_collection(tmp_path / "nope")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(CollectionError, match="not a directory"):
        create_collection(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyCollectionError):
        create_collection(tmp_path / "empty")
    _write(tmp_path / "zeros", {"a": b"", "b/c": b""})
    with pytest.raises(EmptyCollectionError):
        create_collection(tmp_path / "zeros")


def test_bad_piece_length_is_refused(sample: tuple[Path, dict[str, bytes]]) -> None:
    for bad in (8 * KIB, 48 * KIB, 0):
        with pytest.raises(CollectionError, match="piece length"):
            create_collection(sample[0], piece_length=bad)


def test_symlinks_inside_are_followed_and_bad_ones_named(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _write(root, {"real/data": 1000})
    (root / "alias").symlink_to("real/data")
    meta = create_collection(root)
    assert [f.path for f in meta.files] == ["alias", "real/data"]
    assert meta.files[0].pieces_root == meta.files[1].pieces_root

    (tmp_path / "outside").write_bytes(b"secret")
    (root / "leak").symlink_to(tmp_path / "outside")
    with pytest.raises(SymlinkError, match="leak: symlink points outside"):
        create_collection(root)
    (root / "leak").unlink()

    (root / "real" / "up").symlink_to("..")
    with pytest.raises(SymlinkError, match="real/up: symlink loop"):
        create_collection(root)
    (root / "real" / "up").unlink()

    (root / "self").symlink_to("self")
    with pytest.raises(SymlinkError, match="self: symlink loop"):
        create_collection(root)
    (root / "self").unlink()

    (root / "gone").symlink_to("nowhere")
    with pytest.raises(SymlinkError, match="gone: dangling"):
        create_collection(root)


def test_special_files_are_not_data(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _write(root, {"data": 10})
    os.mkfifo(root / "pipe")
    assert [f.path for f in create_collection(root).files] == ["data"]


def test_file_vanishing_before_it_is_read_is_named(sample: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = sample

    def remove_tail(done: int, total: int) -> None:
        if done > 0 and (root / "z/deep/er/tail").exists():
            (root / "z/deep/er/tail").unlink()

    with pytest.raises(CollectionError, match="cannot read z/deep/er/tail"):
        create_collection(root, piece_length=PL, progress=remove_tail)


def test_file_growing_while_hashed_is_refused(sample: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = sample

    def grow_big(done: int, total: int) -> None:
        # Called after each piece: the first piece of sub/big lands after a/one and b.bin.
        if done > 40_001:
            with open(root / "sub/big", "ab") as f:
                f.write(b"more")

    with pytest.raises(CollectionChangedError, match="sub/big"):
        create_collection(root, piece_length=PL, progress=grow_big)


def test_file_rewritten_in_place_is_refused(sample: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = sample
    fired = []

    def touch_big(done: int, total: int) -> None:
        if done > 40_001 and not fired:
            fired.append(done)
            st = os.stat(root / "sub/big")
            os.utime(root / "sub/big", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    with pytest.raises(CollectionChangedError, match="sub/big changed"):
        create_collection(root, piece_length=PL, progress=touch_big)


# ---------------------------------------------------------------------------- shards


def _files(lengths: list[int], piece_length: int) -> list[FileEntry]:
    out, piece = [], 0
    for i, n in enumerate(lengths):
        out.append(FileEntry(f"f{i}", n, b"r" * 32 if n else b"", piece))
        piece += -(-n // piece_length)
    return out


def test_shards_by_the_documented_rule() -> None:
    files = _files([10, 0, 4 * PL, 10 * PL + 1], PL)
    shards = compute_shards(files, PL, 4 * PL)
    assert [(s.file_index, s.first_piece, s.piece_count, s.length) for s in shards] == [
        (0, 0, 1, 10),
        (2, 1, 4, 4 * PL),  # exactly max_shard_bytes: one shard
        (3, 5, 4, 4 * PL),  # 11 pieces, at most 4 each: 3 shards of 4, 4, 3
        (3, 9, 4, 4 * PL),
        (3, 13, 3, 2 * PL + 1),
    ]
    assert [s.index for s in shards] == [0, 1, 2, 3, 4]
    with pytest.raises(ShardError):
        compute_shards(files, PL, PL - 1)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=40 * PL), min_size=1, max_size=8),
    max_pieces=st.integers(min_value=1, max_value=12),
)
def test_shards_cover_every_piece_once_within_the_limit(lengths: list[int], max_pieces: int) -> None:
    files = _files(lengths, PL)
    limit = max_pieces * PL
    shards = compute_shards(files, PL, limit)
    assert shards == compute_shards(files, PL, limit)
    covered = [p for s in shards for p in shard_pieces(s)]
    assert covered == list(range(sum(-(-n // PL) for n in lengths)))
    for i, f in enumerate(files):
        mine = [s for s in shards if s.file_index == i]
        assert sum(s.length for s in mine) == f.length
        assert all(s.length <= limit for s in mine)
        assert (len(mine) == 1) == (0 < f.length <= limit) or f.length == 0
        if mine:
            sizes = [s.piece_count for s in mine]
            assert max(sizes) - min(sizes) <= 1


def test_shard_helpers(sample: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = sample
    meta = create_collection(root, piece_length=PL, max_shard_bytes=2 * PL)
    big = next(i for i, f in enumerate(meta.files) if f.path == "sub/big")
    big_shards = [s for s in meta.shards if s.file_index == big]
    assert [s.piece_count for s in big_shards] == [2, 2, 2]  # 6 pieces, at most 2 per shard
    second = big_shards[1]
    for piece in shard_pieces(second):
        assert shard_of_piece(meta, piece) == second
    assert leaf_count(second) == 2 * PL // BLOCK_SIZE
    assert leaf_count(big_shards[2]) == -(-(PL + 123) // BLOCK_SIZE)
    assert shard_leaf_to_file_leaf(meta, second, 3) == (big, 2 * PL // BLOCK_SIZE + 3)
    with pytest.raises(ShardError):
        shard_leaf_to_file_leaf(meta, second, leaf_count(second))
    with pytest.raises(ShardError):
        shard_of_piece(meta, meta.total_pieces)
    with pytest.raises(ShardError):
        shard_of_piece(meta, -1)
    assert MAX_SHARD_BYTES == 64 * MIB


# ---------------------------------------------------------------------------- parsing


def test_parse_rebuilds_the_same_meta(sample: tuple[Path, dict[str, bytes]]) -> None:
    meta = create_collection(sample[0], piece_length=PL)
    again = parse_torrent(meta.torrent)
    assert again == meta
    assert again.piece_layers == meta.piece_layers


def test_parse_accepts_libtorrents_own_torrent(sample: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = sample
    meta = create_collection(root, piece_length=PL)
    theirs = parse_torrent(lt.bencode(_libtorrent_entry(root, PL)))
    assert (theirs.info_hash_v1, theirs.info_hash_v2, theirs.files, theirs.shards) == (
        meta.info_hash_v1,
        meta.info_hash_v2,
        meta.files,
        meta.shards,
    )


def test_parse_accepts_a_single_file_torrent(tmp_path: Path) -> None:
    (tmp_path / "movie.bin").write_bytes(random.Random(3).randbytes(3 * PL + 1))
    creator = lt.create_torrent(lt.list_files(str(tmp_path / "movie.bin")), PL)
    lt.set_piece_hashes(creator, str(tmp_path))
    meta = parse_torrent(lt.bencode(creator.generate()))
    info = lt.torrent_info(meta.torrent)
    assert info.info_hashes().v2.to_bytes() == meta.info_hash_v2
    assert [(f.path, f.length, f.pieces_root, f.first_piece) for f in meta.files] == [
        ("movie.bin", 3 * PL + 1, info.layout().root(0).to_bytes(), 0)
    ]


def _mutated(torrent: bytes, change) -> bytes:
    top = bencode.decode(torrent)
    change(top)
    return bencode.encode(top)


def _first_layer_root(top: dict) -> bytes:
    return next(iter(top[b"piece layers"]))


@pytest.mark.parametrize(
    "change, rule",
    [
        (lambda t: t[b"piece layers"].__setitem__(_first_layer_root(t), b"\x00" * len(t[b"piece layers"][_first_layer_root(t)])), "does not hash to the pieces root"),
        (lambda t: t[b"piece layers"].__setitem__(_first_layer_root(t), t[b"piece layers"][_first_layer_root(t)][:-32]), "piece layer holds"),
        (lambda t: t[b"piece layers"].pop(_first_layer_root(t)), "piece layer missing"),
        (lambda t: t[b"piece layers"].__setitem__(b"\x01" * 32, b"\x00" * 64), "no file of the torrent has"),
        (lambda t: t[b"info"].pop(b"pieces"), "hybrid"),
        (lambda t: t[b"info"].__setitem__(b"meta version", 1), "meta version"),
        (lambda t: t[b"info"].__setitem__(b"pieces", t[b"info"][b"pieces"][:-20]), "expected"),
        (lambda t: t[b"info"].__setitem__(b"piece length", 48 * KIB), "piece length"),
        (lambda t: t[b"info"].__setitem__(b"name", b".."), "not allowed"),
        (lambda t: t[b"info"][b"files"].reverse(), "disagree"),
        (lambda t: t[b"info"][b"files"].pop(1), "pad"),
        (lambda t: t[b"info"][b"file tree"].__setitem__(b"..", {b"": {b"length": 1, b"pieces root": b"r" * 32}}), "not allowed"),
        (lambda t: t[b"info"][b"file tree"][b"empty"][b""].__setitem__(b"pieces root", b"r" * 32), "empty file has no pieces root"),
        (lambda t: t[b"info"][b"file tree"][b"b.bin"][b""].__setitem__(b"length", -1), "out of range"),
    ],
)
def test_parse_rejects_broken_torrents(sample: tuple[Path, dict[str, bytes]], change, rule: str) -> None:
    meta = create_collection(sample[0], piece_length=PL)
    with pytest.raises(TorrentError, match=rule):
        parse_torrent(_mutated(meta.torrent, change))


def test_parse_rejects_non_canonical_bytes_and_other_torrent_kinds(sample: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = sample
    meta = create_collection(root, piece_length=PL)
    with pytest.raises(TorrentError, match="trailing"):
        parse_torrent(meta.torrent + b"x")
    with pytest.raises(TorrentError, match="unsorted"):
        parse_torrent(b"d12:piece layersde4:infodee")
    with pytest.raises(TorrentError, match="over the"):
        parse_torrent(b"d" + b"0" * (33 * MIB))
    for flag in (lt.create_torrent.v1_only, lt.create_torrent.v2_only):
        creator = lt.create_torrent(lt.list_files(str(root)), PL, flag)
        lt.set_piece_hashes(creator, str(root.parent))
        with pytest.raises(TorrentError):
            parse_torrent(lt.bencode(creator.generate()))


def test_errors_share_one_base() -> None:
    for cls in (CollectionError, SymlinkError, TorrentError, ShardError, ManifestError):
        assert issubclass(cls, StorageError)


# ---------------------------------------------------------------------------- manifest


def test_manifest_round_trip_and_tampering(sample: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    meta = create_collection(sample[0], piece_length=PL)
    manifest = tmp_path / "photos.json"
    torrent_path = write_manifest(meta, manifest)
    assert torrent_path == tmp_path / "photos.torrent"
    assert torrent_path.read_bytes() == meta.torrent
    loaded = read_manifest(manifest)
    assert isinstance(loaded, CollectionMeta) and loaded == meta

    doc = json.loads(manifest.read_text())
    doc["files"][0]["length"] += 1
    manifest.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="does not match"):
        read_manifest(manifest)

    write_manifest(meta, manifest)
    torrent_path.write_bytes(meta.torrent[:-1])
    with pytest.raises(ManifestError, match="photos.torrent"):
        read_manifest(manifest)
    torrent_path.unlink()
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(manifest)
    with pytest.raises(ManifestError):
        read_manifest(tmp_path / "missing.json")


# ---------------------------------------------------------------------------- bencode

_values = st.recursive(
    st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(_values)
def test_bencode_round_trips_and_agrees_with_libtorrent(value) -> None:
    raw = bencode.encode(value)
    assert bencode.decode(raw) == value
    assert raw == lt.bencode(value)


@pytest.mark.parametrize(
    "raw",
    [b"i03e", b"i-0e", b"i-e", b"ie", b"i1", b"03:abc", b"4:abc", b"d1:bi1e1:ai2ee", b"d1:ai1e1:ai2ee",
     b"di1ei2ee", b"i1ei2e", b"l", b"", b"x", b"l" * 100 + b"e" * 100, b"i" + b"9" * 30 + b"e"],
)
def test_bencode_rejects_non_canonical_input(raw: bytes) -> None:
    with pytest.raises(bencode.BencodeError):
        bencode.decode(raw)


def test_bencode_limits_and_unencodable_values() -> None:
    with pytest.raises(bencode.BencodeError, match="over the"):
        bencode.decode(b"4:abcd", max_size=5)
    for bad in (True, 1.5, None, {1: 2}, {"a": 1, b"a": 2}):
        with pytest.raises(bencode.BencodeError):
            bencode.encode(bad)
