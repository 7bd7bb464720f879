"""The storage package's error hierarchy.

Every error raised on purpose by storage/ derives from `StorageError`, so callers in
node/ can catch one base and still tell the cases apart by class. Messages name the file,
piece or rule at fault, because they end up in front of an operator.
"""


class StorageError(Exception):
    """Base of every error raised by storage/."""


class BencodeError(StorageError):
    """Bytes are not the one canonical bencoding of a value, or a value cannot be bencoded."""


class TorrentError(StorageError):
    """Torrent metadata is malformed, inconsistent, over a limit, or not a hybrid v1+v2 torrent."""


class CollectionError(StorageError):
    """A directory cannot be published as a collection (missing, unreadable, unsupported)."""


class SymlinkError(CollectionError):
    """A symlink in a collection loops, dangles, or points outside the collection."""


class EmptyCollectionError(CollectionError):
    """A collection holds no bytes at all: there is nothing to store or prove."""


class CollectionChangedError(CollectionError):
    """A file changed (size or mtime) while it was being hashed; the hashes would lie."""


class ShardError(StorageError):
    """Shard parameters are invalid, or a piece/leaf lies in no shard."""


class ManifestError(StorageError):
    """A collection manifest is missing, malformed, or disagrees with its .torrent."""


class PieceReadError(StorageError):
    """A piece could not be read from disk in full."""


class ProofError(StorageError):
    """A proof of storage is malformed or does not verify against the pieces root."""
