"""Collections: a directory published as one hybrid BitTorrent v1+v2 torrent, cut into shards.

Layout. Files are taken in the order of the v2 file tree (path components compared as
UTF-8 bytes, component by component), which is also the order of the v1 file list: a
hybrid torrent must list the same files in the same order in both. After every file
whose length is not a multiple of the piece length comes a v1 pad file (attr "p") up to
the next piece boundary, the last file included (libtorrent does the same), so every
file starts on a piece boundary and every piece belongs to exactly one file. Empty files
are listed but take no pieces and have no pieces root. `FileEntry.first_piece` is the
global piece index (the v1 piece index, which libtorrent uses for both) of the file's
first piece.

Piece length. A power of two >= 16 KiB. By default (`default_piece_length`) 256 KiB,
doubled while the collection would have more than TARGET_PIECES (8192) pieces, up to
MAX_DEFAULT_PIECE_LENGTH (16 MiB): small collections get pieces small enough for fine
shards and cheap proofs, large ones a torrent whose piece layers stay near 256 KiB.

Shards (`compute_shards`, pure and deterministic, MAX_SHARD_BYTES = 64 MiB by default):
  * a file of at most max_shard_bytes is one shard;
  * a larger file of P pieces is cut into n = ceil(P / k) piece-aligned shards, where
    k = max_shard_bytes // piece_length; the first P mod n shards get floor(P/n) + 1
    pieces and the rest floor(P/n), so every shard is <= max_shard_bytes and the shards
    of one file differ by at most one piece (even sizes make placement balance easier);
  * empty files have no shard.
Shards are numbered from 0 in file order, then piece order.

The torrent bytes are the whole story: `parse_torrent` rebuilds the same CollectionMeta
from them on any node, validating the piece layers against the pieces roots.
Everything but `create_collection`, `write_manifest` and `read_manifest` is pure.
"""
from __future__ import annotations

import bisect
import io
import json
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha1, sha256
from pathlib import Path
from types import MappingProxyType

from storage import bencode
from storage.errors import (
    BencodeError,
    CollectionChangedError,
    CollectionError,
    EmptyCollectionError,
    ManifestError,
    ShardError,
    SymlinkError,
    TorrentError,
)
from storage.merkle import (
    BLOCK_SIZE,
    HASH_SIZE,
    blocks_per_piece,
    ceil_log2,
    compute_root,
    reduce_to_root,
    root_from_piece_layer,
)

MAX_SHARD_BYTES = 64 * 1024 * 1024
DEFAULT_PIECE_LENGTH = 256 * 1024
MAX_DEFAULT_PIECE_LENGTH = 16 * 1024 * 1024
MAX_PIECE_LENGTH = 64 * 1024 * 1024
TARGET_PIECES = 8192

# Limits on what parse_torrent accepts from the network (a Publish record).
MAX_TORRENT_BYTES = 32 * 1024 * 1024
MAX_FILES = 100_000
MAX_PATH_DEPTH = 32
MAX_COMPONENT_BYTES = 255
MAX_COLLECTION_BYTES = 1 << 50

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a collection. `path` is relative, "/"-separated; empty files have pieces_root b""."""

    path: str
    length: int
    pieces_root: bytes
    first_piece: int


@dataclass(frozen=True, slots=True)
class Shard:
    """A piece-aligned range of one file: the unit peers hold, claim and get challenged on."""

    index: int
    file_index: int
    first_piece: int
    piece_count: int
    length: int


@dataclass(frozen=True, slots=True)
class CollectionMeta:
    name: str
    info_hash_v1: bytes
    info_hash_v2: bytes
    piece_length: int
    files: tuple[FileEntry, ...]
    total_pieces: int
    torrent: bytes = field(repr=False)
    shards: tuple[Shard, ...]
    max_shard_bytes: int
    # pieces root -> concatenated piece-layer hashes; derived from `torrent`, kept parsed
    # so building a proof does not re-decode the torrent.
    piece_layers: Mapping[bytes, bytes] = field(repr=False, compare=False)

    @property
    def total_length(self) -> int:
        return sum(f.length for f in self.files)


# ---------------------------------------------------------------------------- pieces


def file_piece_count(length: int, piece_length: int) -> int:
    return -(-length // piece_length)


def default_piece_length(total_bytes: int) -> int:
    """Piece length for a collection of `total_bytes` (see the module docstring)."""
    piece_length = DEFAULT_PIECE_LENGTH
    while piece_length < MAX_DEFAULT_PIECE_LENGTH and total_bytes > piece_length * TARGET_PIECES:
        piece_length *= 2
    return piece_length


def _check_piece_length(piece_length: int, error: type[Exception]) -> None:
    if (
        type(piece_length) is not int
        or piece_length < BLOCK_SIZE
        or piece_length > MAX_PIECE_LENGTH
        or piece_length & (piece_length - 1)
    ):
        raise error(f"piece length {piece_length!r} is not a power of two in {BLOCK_SIZE}..{MAX_PIECE_LENGTH}")


# ---------------------------------------------------------------------------- shards


def compute_shards(files: Sequence[FileEntry], piece_length: int, max_shard_bytes: int = MAX_SHARD_BYTES) -> tuple[Shard, ...]:
    """Cut files into shards by the rule in the module docstring."""
    _check_piece_length(piece_length, ShardError)
    if max_shard_bytes < piece_length:
        raise ShardError(f"max shard size {max_shard_bytes} is below the piece length {piece_length}")
    max_pieces = max_shard_bytes // piece_length
    shards: list[Shard] = []
    for file_index, entry in enumerate(files):
        if entry.length == 0:
            continue
        pieces = file_piece_count(entry.length, piece_length)
        count = 1 if entry.length <= max_shard_bytes else -(-pieces // max_pieces)
        base, extra = divmod(pieces, count)
        piece = entry.first_piece
        for k in range(count):
            size = base + (1 if k < extra else 0)
            end_byte = min((piece - entry.first_piece + size) * piece_length, entry.length)
            start_byte = (piece - entry.first_piece) * piece_length
            shards.append(Shard(len(shards), file_index, piece, size, end_byte - start_byte))
            piece += size
    return tuple(shards)


def shard_pieces(shard: Shard) -> range:
    """Global piece indices of a shard."""
    return range(shard.first_piece, shard.first_piece + shard.piece_count)


def shard_of_piece(meta: CollectionMeta, piece: int) -> Shard:
    """The shard holding global piece `piece`; ShardError if no shard does."""
    i = bisect.bisect_right(meta.shards, piece, key=lambda s: s.first_piece) - 1
    if piece < 0 or i < 0 or piece not in shard_pieces(meta.shards[i]):
        raise ShardError(f"piece {piece} is in no shard of {meta.name!r} ({meta.total_pieces} pieces)")
    return meta.shards[i]


def leaf_count(shard: Shard) -> int:
    """Number of 16 KiB leaves in a shard (the last may be short)."""
    return -(-shard.length // BLOCK_SIZE)


def shard_first_leaf(file: FileEntry, shard: Shard, piece_length: int) -> int:
    """Index, in the file's tree, of the shard's first leaf."""
    return (shard.first_piece - file.first_piece) * blocks_per_piece(piece_length)


def shard_leaf_to_file_leaf(meta: CollectionMeta, shard: Shard, i: int) -> tuple[int, int]:
    """(file index, leaf index within that file) of leaf `i` of `shard`."""
    if not 0 <= i < leaf_count(shard):
        raise ShardError(f"leaf {i} outside shard {shard.index} ({leaf_count(shard)} leaves)")
    file = meta.files[shard.file_index]
    return shard.file_index, shard_first_leaf(file, shard, meta.piece_length) + i


# ---------------------------------------------------------------------------- names


def _check_component(name: str, error: type[Exception]) -> None:
    raw = name.encode("utf-8", "surrogateescape")
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise error(f"path component {name!r} is not allowed")
    if len(raw) > MAX_COMPONENT_BYTES:
        raise error(f"path component {name[:40]!r}... is over {MAX_COMPONENT_BYTES} bytes")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"path component {name!r} is not valid UTF-8") from exc


def _decode_component(raw: object, error: type[Exception]) -> str:
    if not isinstance(raw, bytes):
        raise error("path component is not a byte string")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"path component {raw!r} is not valid UTF-8") from exc
    _check_component(name, error)
    return name


# ---------------------------------------------------------------------------- scanning


@dataclass(frozen=True, slots=True)
class _Source:
    parts: tuple[str, ...]
    path: str  # the real path opened for hashing (symlinks resolved)
    size: int
    mtime_ns: int


def _sort_key(parts: tuple[str, ...]) -> tuple[bytes, ...]:
    # The v2 file tree is a bencoded dict per directory level, so its order compares
    # components as bytes, one level at a time ("a/b" before "a-c", unlike a plain string
    # sort of whole paths, which is what libtorrent's own creator uses and then cannot load).
    return tuple(p.encode("utf-8", "surrogateescape") for p in parts)


def _scan(root: Path) -> list[_Source]:
    if not root.exists():
        raise CollectionError(f"no such directory: {root}")
    if not root.is_dir():
        raise CollectionError(f"not a directory: {root}")
    root_real = os.path.realpath(root)
    found: list[_Source] = []
    _walk(root_real, (), root_real, {root_real}, found)
    found.sort(key=lambda s: _sort_key(s.parts))
    return found


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def _walk(directory: str, prefix: tuple[str, ...], root_real: str, ancestors: set[str], found: list[_Source]) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise CollectionError(f"cannot list {directory}: {exc.strerror}") from exc
    for entry in entries:
        parts = prefix + (entry.name,)
        shown = "/".join(parts)
        _check_component(entry.name, CollectionError)
        if len(parts) > MAX_PATH_DEPTH:
            raise CollectionError(f"{shown}: deeper than {MAX_PATH_DEPTH} directories")
        real = entry.path
        if entry.is_symlink():
            try:
                real = os.path.realpath(entry.path, strict=True)
            except FileNotFoundError as exc:
                raise SymlinkError(f"{shown}: dangling symlink") from exc
            except OSError as exc:
                raise SymlinkError(f"{shown}: symlink loop ({exc.strerror})") from exc
            if not _inside(real, root_real):
                raise SymlinkError(f"{shown}: symlink points outside the collection, to {real}")
        try:
            st = os.stat(real)
        except OSError as exc:
            raise CollectionError(f"cannot stat {shown}: {exc.strerror}") from exc
        if stat.S_ISDIR(st.st_mode):
            if real in ancestors:
                raise SymlinkError(f"{shown}: symlink loop (points to its own ancestor)")
            _walk(real, parts, root_real, ancestors | {real}, found)
        elif stat.S_ISREG(st.st_mode):
            found.append(_Source(parts, real, st.st_size, st.st_mtime_ns))
            if len(found) > MAX_FILES:
                raise CollectionError(f"more than {MAX_FILES} files")
        # Sockets, fifos and devices are not data: a collection holds regular files only.


# ---------------------------------------------------------------------------- hashing


@dataclass(frozen=True, slots=True)
class _Hashed:
    root: bytes  # b"" for an empty file
    layer: bytes  # concatenated piece-layer hashes; b"" for files of at most one piece
    v1_pieces: bytes  # concatenated SHA-1 of each piece, zero-padded to piece_length


def _read_full(f: io.FileIO, view: memoryview) -> int:
    filled = 0
    while filled < len(view):
        n = f.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


@dataclass(frozen=True, slots=True)
class _Buffers:
    """Scratch space shared by every file of one collection, so small files cost no allocation."""

    view: memoryview
    zeros: bytes

    @classmethod
    def for_piece(cls, piece_length: int) -> _Buffers:
        return cls(memoryview(bytearray(piece_length)), bytes(piece_length))


def _hash_file(src: _Source, piece_length: int, bufs: _Buffers, tick: Callable[[int], None]) -> _Hashed:
    """Read a file once, computing its BEP 52 tree and its v1 piece hashes together."""
    shown = "/".join(src.parts)
    if src.size == 0:
        return _Hashed(b"", b"", b"")
    piece_height = ceil_log2(blocks_per_piece(piece_length))
    view, zeros = bufs.view, bufs.zeros
    layer: list[bytes] = []
    leaves_small: list[bytes] = []
    v1: list[bytes] = []
    done = 0
    try:
        f = io.FileIO(src.path, "r")
    except OSError as exc:
        raise CollectionError(f"cannot read {shown}: {exc.strerror}") from exc
    with f:
        _check_unchanged(f.fileno(), src, shown)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            try:
                n = _read_full(f, view)
            except OSError as exc:
                raise CollectionError(f"cannot read {shown}: {exc.strerror}") from exc
            if n == 0:
                break
            if done + n > src.size:
                raise CollectionChangedError(f"{shown} grew while it was being hashed")
            chunk = view[:n]
            leaves = [sha256(chunk[i : i + BLOCK_SIZE]).digest() for i in range(0, n, BLOCK_SIZE)]
            piece_sha1 = sha1(chunk)
            if n < piece_length:
                # v1 hashes the pad file's zeros into the file's last piece.
                piece_sha1.update(zeros[: piece_length - n])
            v1.append(piece_sha1.digest())
            if src.size <= piece_length:
                leaves_small = leaves
            else:
                layer.append(reduce_to_root(leaves, piece_height))
            done += n
            tick(n)
            if n < piece_length:
                break
        if done != src.size:
            raise CollectionChangedError(f"{shown} shrank while it was being hashed ({done} of {src.size} bytes)")
        _check_unchanged(f.fileno(), src, shown)
    if layer:
        return _Hashed(root_from_piece_layer(layer, piece_length), b"".join(layer), b"".join(v1))
    return _Hashed(compute_root(leaves_small), b"", b"".join(v1))


def _check_unchanged(fd: int, src: _Source, shown: str) -> None:
    st = os.fstat(fd)
    if st.st_size != src.size or st.st_mtime_ns != src.mtime_ns:
        raise CollectionChangedError(f"{shown} changed while the collection was being hashed")


# ---------------------------------------------------------------------------- building


def create_collection(
    directory: str | os.PathLike[str],
    *,
    name: str | None = None,
    piece_length: int | None = None,
    progress: ProgressFn | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> CollectionMeta:
    """Hash `directory` and build its hybrid torrent. Reads every file exactly once.

    Raises CollectionError (or a subclass) for a missing directory, unreadable files,
    bad symlinks, an empty collection or files that change while being hashed.
    """
    root = Path(directory)
    name = name if name is not None else Path(os.path.realpath(root)).name
    _check_component(name, CollectionError)
    sources = _scan(root)
    total = sum(s.size for s in sources)
    if total == 0:
        raise EmptyCollectionError(f"{root} holds no data (no files, or only empty ones)")
    if total > MAX_COLLECTION_BYTES:
        raise CollectionError(f"{root} holds {total} bytes, over the {MAX_COLLECTION_BYTES}-byte limit")
    if piece_length is None:
        piece_length = default_piece_length(total)
    _check_piece_length(piece_length, CollectionError)

    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    bufs = _Buffers.for_piece(piece_length)
    hashed = [_hash_file(src, piece_length, bufs, tick) for src in sources]
    torrent = _build_torrent(name, piece_length, sources, hashed)
    try:
        return parse_torrent(torrent, max_shard_bytes=max_shard_bytes)
    except TorrentError as exc:
        # Only reachable through a bug here: what we build must be what we accept.
        raise CollectionError(f"built an invalid torrent: {exc}") from exc


def _build_torrent(name: str, piece_length: int, sources: Sequence[_Source], hashed: Sequence[_Hashed]) -> bytes:
    tree: dict[bytes, object] = {}
    files_v1: list[dict[bytes, object]] = []
    layers: dict[bytes, bytes] = {}
    for src, h in zip(sources, hashed):
        raw_parts = [p.encode("utf-8") for p in src.parts]
        node = tree
        for part in raw_parts[:-1]:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        leaf: dict[bytes, object] = {b"length": src.size}
        if h.root:
            leaf[b"pieces root"] = h.root
        node[raw_parts[-1]] = {b"": leaf}
        files_v1.append({b"length": src.size, b"path": raw_parts})
        tail = -src.size % piece_length
        if tail:
            files_v1.append({b"attr": b"p", b"length": tail, b"path": [b".pad", str(tail).encode()]})
        if h.layer:
            layers[h.root] = h.layer
    info = {
        b"file tree": tree,
        b"files": files_v1,
        b"meta version": 2,
        b"name": name.encode("utf-8"),
        b"piece length": piece_length,
        b"pieces": b"".join(h.v1_pieces for h in hashed),
    }
    return bencode.encode({b"info": info, b"piece layers": layers})


# ---------------------------------------------------------------------------- parsing


def _field(d: Mapping[bytes, object], key: bytes, kind: type, what: str) -> object:
    if key not in d:
        raise TorrentError(f"{what}: missing {key.decode()!r}")
    value = d[key]
    if type(value) is not kind:
        raise TorrentError(f"{what}: {key.decode()!r} is not {kind.__name__}")
    return value


def _int(d: Mapping[bytes, object], key: bytes, what: str) -> int:
    value = _field(d, key, int, what)
    return value if isinstance(value, int) else 0


def _bytes(d: Mapping[bytes, object], key: bytes, what: str) -> bytes:
    value = _field(d, key, bytes, what)
    return value if isinstance(value, bytes) else b""


def _list(d: Mapping[bytes, object], key: bytes, what: str) -> list[object]:
    value = _field(d, key, list, what)
    return value if isinstance(value, list) else []


def _dict(d: Mapping[bytes, object], key: bytes, what: str) -> dict[bytes, object]:
    value = _field(d, key, dict, what)
    return value if isinstance(value, dict) else {}


def _walk_tree(node: object, prefix: tuple[str, ...], out: list[tuple[tuple[str, ...], int, bytes]]) -> None:
    if not isinstance(node, dict) or not node:
        raise TorrentError(f"file tree at {'/'.join(prefix) or '<top>'} is not a non-empty dict")
    if b"" in node:
        if len(node) != 1 or not prefix:
            raise TorrentError(f"file tree at {'/'.join(prefix) or '<top>'} mixes a file with other entries")
        out.append((prefix, *_file_leaf(node[b""], "/".join(prefix))))
        if len(out) > MAX_FILES:
            raise TorrentError(f"more than {MAX_FILES} files")
        return
    if len(prefix) >= MAX_PATH_DEPTH:
        raise TorrentError(f"file tree deeper than {MAX_PATH_DEPTH}")
    for raw, child in node.items():
        _walk_tree(child, prefix + (_decode_component(raw, TorrentError),), out)


def _file_leaf(leaf: object, shown: str) -> tuple[int, bytes]:
    if not isinstance(leaf, dict):
        raise TorrentError(f"{shown}: file entry is not a dict")
    unknown = set(leaf) - {b"length", b"pieces root", b"attr"}
    if unknown:
        raise TorrentError(f"{shown}: unknown file keys {sorted(unknown)}")
    length = _int(leaf, b"length", shown)
    if not 0 <= length <= MAX_COLLECTION_BYTES:
        raise TorrentError(f"{shown}: length {length} out of range")
    attr = leaf.get(b"attr", b"")
    if not isinstance(attr, bytes) or b"p" in attr:
        raise TorrentError(f"{shown}: bad attr {attr!r} (pad files have no place in the v2 file tree)")
    if length == 0:
        if b"pieces root" in leaf:
            raise TorrentError(f"{shown}: an empty file has no pieces root")
        return 0, b""
    root = _bytes(leaf, b"pieces root", shown)
    if len(root) != HASH_SIZE:
        raise TorrentError(f"{shown}: pieces root is {len(root)} bytes, not {HASH_SIZE}")
    return length, root


def _v1_files(info: Mapping[bytes, object], name: str) -> list[tuple[tuple[str, ...], int, bool]]:
    """The v1 file list as (path, length, is_pad)."""
    if b"files" in info:
        if b"length" in info:
            raise TorrentError("info has both 'files' and 'length'")
        raw_files = _list(info, b"files", "info")
        if len(raw_files) > 2 * MAX_FILES + 1:
            raise TorrentError(f"more than {MAX_FILES} files")
        out = []
        for k, item in enumerate(raw_files):
            if not isinstance(item, dict):
                raise TorrentError(f"v1 file {k} is not a dict")
            length = _int(item, b"length", f"v1 file {k}")
            raw_path = _list(item, b"path", f"v1 file {k}")
            attr = item.get(b"attr", b"")
            if not isinstance(attr, bytes):
                raise TorrentError(f"v1 file {k}: attr is not a byte string")
            if not raw_path or len(raw_path) > MAX_PATH_DEPTH:
                raise TorrentError(f"v1 file {k}: bad path length")
            parts = tuple(_decode_component(p, TorrentError) for p in raw_path)
            if length < 0:
                raise TorrentError(f"v1 file {k}: negative length")
            out.append((parts, length, b"p" in attr))
        return out
    return [((name,), _int(info, b"length", "info"), False)]


def _check_v1_matches(v2: Sequence[tuple[tuple[str, ...], int, bytes]], v1: Sequence[tuple[tuple[str, ...], int, bool]], piece_length: int) -> int:
    """Check the v1 list is the v2 list plus exactly the pads a hybrid torrent needs; return its total length."""
    k = 0
    offset = 0
    for i, (parts, length, _root) in enumerate(v2):
        if k >= len(v1) or v1[k][2] or v1[k][:2] != (parts, length):
            raise TorrentError(f"v1 and v2 file lists disagree at {'/'.join(parts)}")
        offset += length
        k += 1
        tail = -length % piece_length
        if tail:
            is_last = i == len(v2) - 1
            if k < len(v1) and v1[k][2]:
                if v1[k][1] != tail:
                    raise TorrentError(f"pad after {'/'.join(parts)} is {v1[k][1]} bytes, not {tail}")
                offset += tail
                k += 1
            elif not is_last:
                raise TorrentError(f"{'/'.join(parts)} is not followed by a pad to the piece boundary")
    if k != len(v1):
        raise TorrentError("v1 file list has entries beyond the v2 file tree")
    return offset


def parse_torrent(torrent: bytes, *, max_shard_bytes: int = MAX_SHARD_BYTES) -> CollectionMeta:
    """Rebuild a CollectionMeta from .torrent bytes; TorrentError if they are not a valid hybrid torrent."""
    if len(torrent) > MAX_TORRENT_BYTES:
        raise TorrentError(f"torrent of {len(torrent)} bytes is over the {MAX_TORRENT_BYTES}-byte limit")
    try:
        top = bencode.decode(torrent, max_size=MAX_TORRENT_BYTES)
    except BencodeError as exc:
        raise TorrentError(f"not canonical bencode: {exc}") from exc
    if not isinstance(top, dict):
        raise TorrentError("torrent is not a dict")
    info = _dict(top, b"info", "torrent")
    layers_raw = top.get(b"piece layers", {})
    if not isinstance(layers_raw, dict):
        raise TorrentError("'piece layers' is not a dict")

    if _int(info, b"meta version", "info") != 2:
        raise TorrentError("meta version is not 2 (cairn needs BEP 52 pieces roots)")
    if b"pieces" not in info:
        raise TorrentError("no v1 'pieces': cairn needs a hybrid v1+v2 torrent")
    name = _decode_component(_bytes(info, b"name", "info"), TorrentError)
    piece_length = _int(info, b"piece length", "info")
    _check_piece_length(piece_length, TorrentError)
    pieces = _bytes(info, b"pieces", "info")

    v2: list[tuple[tuple[str, ...], int, bytes]] = []
    _walk_tree(_dict(info, b"file tree", "info"), (), v2)
    if b"files" not in info:
        # A single-file torrent: BEP 52 puts the file under the torrent's own name.
        if len(v2) != 1 or v2[0][0] != (name,):
            raise TorrentError("single-file torrent whose file tree is not {name: file}")
    v1_length = _check_v1_matches(v2, _v1_files(info, name), piece_length)
    total = sum(length for _, length, _ in v2)
    if total == 0:
        raise TorrentError("collection holds no bytes")
    if total > MAX_COLLECTION_BYTES:
        raise TorrentError(f"collection of {total} bytes is over the limit")
    total_pieces = sum(file_piece_count(length, piece_length) for _, length, _ in v2)
    if len(pieces) % 20 or len(pieces) // 20 != file_piece_count(v1_length, piece_length) or len(pieces) // 20 != total_pieces:
        raise TorrentError(f"v1 'pieces' is {len(pieces)} bytes, expected {total_pieces} SHA-1 hashes")

    files: list[FileEntry] = []
    piece = 0
    for parts, length, root in v2:
        files.append(FileEntry("/".join(parts), length, root, piece))
        piece += file_piece_count(length, piece_length)
    layers = _check_piece_layers(files, layers_raw, piece_length)

    try:
        shards = compute_shards(files, piece_length, max_shard_bytes)
    except ShardError as exc:
        raise TorrentError(f"cannot cut into shards: {exc}") from exc
    info_bytes = bencode.encode(info)  # canonical decode => re-encoding gives the original bytes
    return CollectionMeta(
        name=name,
        info_hash_v1=sha1(info_bytes).digest(),
        info_hash_v2=sha256(info_bytes).digest(),
        piece_length=piece_length,
        files=tuple(files),
        total_pieces=total_pieces,
        torrent=bytes(torrent),
        shards=shards,
        max_shard_bytes=max_shard_bytes,
        piece_layers=MappingProxyType(layers),
    )


def _check_piece_layers(files: Sequence[FileEntry], layers_raw: Mapping[bytes, object], piece_length: int) -> dict[bytes, bytes]:
    needed = {f.pieces_root: f for f in files if f.length > piece_length}
    extra = set(layers_raw) - set(needed)
    if extra:
        raise TorrentError(f"piece layers for {len(extra)} roots no file of the torrent has")
    layers: dict[bytes, bytes] = {}
    for root, entry in needed.items():
        layer = layers_raw.get(root)
        if not isinstance(layer, bytes):
            raise TorrentError(f"{entry.path}: piece layer missing")
        count = file_piece_count(entry.length, piece_length)
        if len(layer) != count * HASH_SIZE:
            raise TorrentError(f"{entry.path}: piece layer holds {len(layer)} bytes, expected {count * HASH_SIZE}")
        hashes = [layer[i : i + HASH_SIZE] for i in range(0, len(layer), HASH_SIZE)]
        if root_from_piece_layer(hashes, piece_length) != root:
            raise TorrentError(f"{entry.path}: piece layer does not hash to the pieces root")
        layers[root] = layer
    return layers


def piece_layer(meta: CollectionMeta, file: FileEntry) -> tuple[bytes, ...]:
    """The file's piece layer as hashes; empty for files of at most one piece."""
    raw = meta.piece_layers.get(file.pieces_root, b"") if file.length > meta.piece_length else b""
    return tuple(raw[i : i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE))


# ---------------------------------------------------------------------------- manifest

MANIFEST_FORMAT = "cairn-collection/1"


def _manifest_dict(meta: CollectionMeta, torrent_name: str) -> dict[str, object]:
    return {
        "format": MANIFEST_FORMAT,
        "name": meta.name,
        "info_hash_v1": meta.info_hash_v1.hex(),
        "info_hash_v2": meta.info_hash_v2.hex(),
        "piece_length": meta.piece_length,
        "total_pieces": meta.total_pieces,
        "total_length": meta.total_length,
        "max_shard_bytes": meta.max_shard_bytes,
        "torrent": torrent_name,
        "files": [
            {"path": f.path, "length": f.length, "pieces_root": f.pieces_root.hex(), "first_piece": f.first_piece}
            for f in meta.files
        ],
        "shards": [
            {"index": s.index, "file_index": s.file_index, "first_piece": s.first_piece, "piece_count": s.piece_count, "length": s.length}
            for s in meta.shards
        ],
    }


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(meta: CollectionMeta, path: str | os.PathLike[str]) -> Path:
    """Write a JSON manifest at `path` and the torrent beside it (same stem, .torrent); return the torrent path."""
    manifest_path = Path(path)
    torrent_path = manifest_path.with_suffix(".torrent")
    if torrent_path == manifest_path:
        raise ManifestError(f"manifest path {manifest_path} must not end in .torrent")
    try:
        _atomic_write(torrent_path, meta.torrent)
        text = json.dumps(_manifest_dict(meta, torrent_path.name), indent=2) + "\n"
        _atomic_write(manifest_path, text.encode("utf-8"))
    except OSError as exc:
        raise ManifestError(f"cannot write manifest {manifest_path}: {exc.strerror}") from exc
    return torrent_path


def read_manifest(path: str | os.PathLike[str]) -> CollectionMeta:
    """Read a manifest and its torrent; ManifestError unless both agree."""
    manifest_path = Path(path)
    try:
        doc = json.loads(manifest_path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {manifest_path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{manifest_path} is not a {MANIFEST_FORMAT} manifest")
    torrent_name = doc.get("torrent")
    max_shard = doc.get("max_shard_bytes")
    if not isinstance(torrent_name, str) or "/" in torrent_name or type(max_shard) is not int:
        raise ManifestError(f"{manifest_path}: bad 'torrent' or 'max_shard_bytes'")
    torrent_path = manifest_path.with_name(torrent_name)
    try:
        meta = parse_torrent(torrent_path.read_bytes(), max_shard_bytes=max_shard)
    except OSError as exc:
        raise ManifestError(f"cannot read {torrent_path}: {exc.strerror}") from exc
    except (TorrentError, ShardError) as exc:
        raise ManifestError(f"{torrent_path}: {exc}") from exc
    if _manifest_dict(meta, torrent_name) != doc:
        raise ManifestError(f"{manifest_path} does not match {torrent_path}")
    return meta

