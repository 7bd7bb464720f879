"""The chain state: typed values under byte keys, committed to by the state root.

Key layout (the namespace before the first "/" fixes the value's type, VALUE_TYPES):

    chain                                  ChainInfo: height, timestamp, randomness
    validators                             tuple[ValidatorInfo, ...], from genesis
    peer/<peer key>                        Peer (it also holds the peer's last accepted record seq)
    seq/<author key>                       int: the last accepted record seq of an author that is not a peer
    collection/<info_hash_v2>              Collection
    shard/<info_hash_v2><shard u32>        ShardHolders: who claims / has proven the shard
    holdings/<peer key>                    PeerHoldings: the shards a peer holds, sorted
    holder-peers/<u8>                      PeerKeys: peers holding any shard, by their key's first byte
    challenge/<challenge id>               OpenChallenge
    deadline/<height u64>                  ChallengeIds: challenges issued with this deadline
    peer-challenges/<peer key>             ChallengeIds: the peer's open challenges
    claims/<height u64>                    PendingClaims: claims of that block awaiting their challenge
    grace/<height u64>                     PeerKeys: peers suspended so that their grace ends here
    randomness/<height u64>                32 bytes, for the last RANDOMNESS_HISTORY_BLOCKS
    evidence/<validator><height u64><round u64><kind u8>   EvidenceEntry

Integers in keys are big endian, so byte order is numeric order.

A State is immutable. A block is applied to an Overlay (a write buffer over the state);
only if every rule passes does `commit_overlay` turn it into the next State, sharing
everything unchanged with the previous one. The new State keeps the encoded changes
(`diff`), which is all the store has to write.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from chain.challenges import Challenge
from chain.codec import Hash32, PubKey, decode, get_encoder, with_fast_init
from chain.state_root import EMPTY_TREE, StateTree, compute_leaf_hash, update_tree
from chain.types import Address, Genesis, Name, ValidatorInfo
from storage.collection import Shard

# ---------------------------------------------------------------------------- values

ACTIVE = 1
SUSPENDED = 2
EXCLUDED = 3
LEFT = 4

# Values are built for every record and state change: with_fast_init (chain/codec.py)
# gives them the same __init__ at about half the cost of a frozen dataclass's own.


@with_fast_init
@dataclass(frozen=True, slots=True)
class ChainInfo:
    height: int
    timestamp_ms: int
    randomness: Hash32


@with_fast_init
@dataclass(frozen=True, slots=True)
class Peer:
    bt_address: Address
    api_address: Address
    capacity: int
    status: int                      # ACTIVE, SUSPENDED, EXCLUDED or LEFT
    status_height: int               # when the status last changed
    reputation_ppm: int
    registered_height: int
    registration_randomness: Hash32  # keys the peer's rank in target placement
    proofs_passed: int = 0           # verdicts on its challenges, for the explorer
    proofs_missed: int = 0
    proofs_failed: int = 0
    seq: int = 0                     # last accepted record seq of this peer as an author


@with_fast_init
@dataclass(frozen=True, slots=True)
class Collection:
    publisher: PubKey
    name: Name
    info_hash_v1: bytes
    torrent_digest: Hash32           # sha256 of the torrent in the Publish record
    piece_length: int
    target: int
    published_height: int            # the block whose body holds the torrent
    seeders: tuple[Address, ...]     # where the data can be fetched before any peer holds it
    shards: tuple[Shard, ...]


@with_fast_init
@dataclass(frozen=True, slots=True)
class Holder:
    peer: PubKey
    claimed_height: int
    verified_height: int             # 0: not proven yet


@with_fast_init
@dataclass(frozen=True, slots=True)
class ShardHolders:
    holders: tuple[Holder, ...]      # sorted by peer key


@with_fast_init
@dataclass(frozen=True, slots=True)
class ShardRef:
    collection: Hash32
    shard: int


@with_fast_init
@dataclass(frozen=True, slots=True)
class PeerHoldings:
    shards: tuple[ShardRef, ...]     # sorted: the canonical order challenges draw over


@with_fast_init
@dataclass(frozen=True, slots=True)
class OpenChallenge:
    """An open chain.challenges.Challenge, stored under its id (the key) without it."""
    peer: PubKey
    collection: Hash32
    shard: int
    leaf: int
    issued_height: int
    deadline_height: int
    attempt: int


@with_fast_init
@dataclass(frozen=True, slots=True)
class ChallengeIds:
    ids: tuple[Hash32, ...]          # sorted


@with_fast_init
@dataclass(frozen=True, slots=True)
class PendingClaim:
    peer: PubKey
    collection: Hash32
    shard: int


@with_fast_init
@dataclass(frozen=True, slots=True)
class PendingClaims:
    claims: tuple[PendingClaim, ...]  # sorted by (peer, collection, shard)


@with_fast_init
@dataclass(frozen=True, slots=True)
class PeerKeys:
    peers: tuple[PubKey, ...]        # sorted


@with_fast_init
@dataclass(frozen=True, slots=True)
class EvidenceEntry:
    recorded_height: int
    block_hash_a: bytes
    block_hash_b: bytes


NO_SHARD_HOLDERS = ShardHolders(())
NO_PEER_HOLDINGS = PeerHoldings(())
NO_CHALLENGE_IDS = ChallengeIds(())
NO_PENDING_CLAIMS = PendingClaims(())
NO_PEER_KEYS = PeerKeys(())

VALUE_TYPES: Mapping[bytes, Any] = {
    b"chain": ChainInfo,
    b"validators": tuple[ValidatorInfo, ...],
    b"peer": Peer,
    b"seq": int,
    b"collection": Collection,
    b"shard": ShardHolders,
    b"holdings": PeerHoldings,
    b"holder-peers": PeerKeys,
    b"challenge": OpenChallenge,
    b"deadline": ChallengeIds,
    b"peer-challenges": ChallengeIds,
    b"claims": PendingClaims,
    b"grace": PeerKeys,
    b"randomness": Hash32,
    b"evidence": EvidenceEntry,
}

# ---------------------------------------------------------------------------- keys

KEY_CHAIN = b"chain"
KEY_VALIDATORS = b"validators"


def get_peer_key(peer: bytes) -> bytes:
    return b"peer/" + peer


def get_seq_key(author: bytes) -> bytes:
    return b"seq/" + author


def get_collection_key(info_hash: bytes) -> bytes:
    return b"collection/" + info_hash


def get_shard_key(info_hash: bytes, shard: int) -> bytes:
    return b"shard/" + info_hash + shard.to_bytes(4, "big")


def get_holdings_key(peer: bytes) -> bytes:
    return b"holdings/" + peer


def get_holder_peers_key(bucket: int) -> bytes:
    return b"holder-peers/" + bytes([bucket])


def get_holder_bucket(peer: bytes) -> int:
    # HOLDER_PEER_BUCKETS (256) buckets by first key byte: a peer's first claim or last drop
    # rewrites 1/256 of the list, and the epoch step still lists every holding peer in key order.
    return peer[0]


def get_challenge_key(challenge_id: bytes) -> bytes:
    return b"challenge/" + challenge_id


def get_deadline_key(height: int) -> bytes:
    return b"deadline/" + height.to_bytes(8, "big")


def get_peer_challenges_key(peer: bytes) -> bytes:
    return b"peer-challenges/" + peer


def get_claims_key(height: int) -> bytes:
    return b"claims/" + height.to_bytes(8, "big")


def get_grace_key(height: int) -> bytes:
    return b"grace/" + height.to_bytes(8, "big")


def get_randomness_key(height: int) -> bytes:
    return b"randomness/" + height.to_bytes(8, "big")


def get_evidence_key(validator: bytes, height: int, round_: int, kind: int) -> bytes:
    return b"evidence/" + validator + height.to_bytes(8, "big") + round_.to_bytes(8, "big") + bytes([kind])


def get_value_type(key: bytes) -> Any:
    value_type = VALUE_TYPES.get(key.partition(b"/")[0])
    if value_type is None:
        raise KeyError(f"no state namespace for key {key[:24]!r}")
    return value_type


# One encoder per namespace, compiled once: every value a block changes is encoded.
VALUE_ENCODERS: Mapping[bytes, Callable[[object], bytes]] = {
    namespace: get_encoder(value_type) for namespace, value_type in VALUE_TYPES.items()}


def encode_value(key: bytes, value: object) -> bytes:
    encoder = VALUE_ENCODERS.get(key.partition(b"/")[0])
    if encoder is None:
        raise KeyError(f"no state namespace for key {key[:24]!r}")
    return encoder(value)


def decode_value(key: bytes, data: bytes) -> object:
    return decode(data, get_value_type(key))


# ---------------------------------------------------------------------------- persistent map

_MISSING = object()


class PersistentMap:
    """An immutable map kept as a stack of dicts, newest first; None in a layer is a deletion.

    `updated` pushes a layer and merges the top two while the top is at least half the
    size of the one below, so there are O(log n) layers and each key is copied O(log n)
    times in all: deriving a new map never copies the whole state.
    """

    __slots__ = ("layers",)

    def __init__(self, layers: tuple[dict[bytes, Any], ...] = ()) -> None:
        self.layers = layers   # newest first; not to be modified

    def get(self, key: bytes) -> Any:
        for layer in self.layers:
            value = layer.get(key, _MISSING)
            if value is not _MISSING:
                return value
        return None

    def updated(self, changes: Mapping[bytes, Any]) -> "PersistentMap":
        if not changes:
            return self
        layers = [dict(changes), *self.layers]
        while len(layers) > 1 and 2 * len(layers[0]) >= len(layers[1]):
            merged = {**layers[1], **layers[0]}
            if len(layers) == 2:
                merged = {k: v for k, v in merged.items() if v is not None}
            layers[0:2] = [merged]
        return PersistentMap(tuple(layers))

    def items(self) -> Iterator[tuple[bytes, Any]]:
        """Every live pair in key order (a full pass: for loading and tools, not per block)."""
        merged: dict[bytes, Any] = {}
        for layer in reversed(self.layers):
            merged.update(layer)
        for key in sorted(merged):
            if merged[key] is not None:
                yield key, merged[key]


# ---------------------------------------------------------------------------- state

@dataclass(frozen=True, slots=True)
class State:
    genesis: Genesis
    head_hash: bytes                              # hash of the latest block (genesis hash at 0)
    entries: PersistentMap
    tree: StateTree
    diff: tuple[tuple[bytes, bytes | None], ...]  # encoded changes of the latest block, sorted

    def get(self, key: bytes) -> Any:
        return self.entries.get(key)

    @property
    def root(self) -> bytes:
        return self.tree.root

    @property
    def chain_id(self) -> bytes:
        return self.genesis.chain_id_bytes


class Overlay:
    """The writes of one block (or one record) over a view it never modifies."""

    __slots__ = ("base", "writes", "layers", "genesis", "chain_id")

    def __init__(self, base: "State | Overlay") -> None:
        self.base = base
        self.writes: dict[bytes, Any] = {}
        # What a read looks through, newest first: these writes, then the base's (an outer
        # overlay's writes, down to the state's map layers), so that a miss, the most
        # frequent read of a block, is one loop and not a call per level.
        self.layers: tuple[dict[bytes, Any], ...] = (
            self.writes, *(base.entries.layers if isinstance(base, State) else base.layers))
        self.genesis: Genesis = base.genesis     # constant for the block
        self.chain_id: bytes = base.chain_id

    def get(self, key: bytes) -> Any:
        for layer in self.layers:
            value = layer.get(key, _MISSING)
            if value is not _MISSING:
                return value
        return None

    def put(self, key: bytes, value: object) -> None:
        self.writes[key] = value

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def merge_into_base(self) -> None:
        """Fold a nested overlay into its parent overlay once its record has passed."""
        if not isinstance(self.base, Overlay):
            raise TypeError("only a nested overlay merges into its base")
        self.base.writes.update(self.writes)


View = State | Overlay


def compute_diff(writes: Mapping[bytes, Any]) -> tuple[tuple[bytes, bytes | None], ...]:
    """The writes encoded (None: deleted), sorted by key: what the store writes."""
    return tuple([(key, None if (value := writes[key]) is None else encode_value(key, value))
                  for key in sorted(writes)])


def compute_leaf_changes(diff: Iterable[tuple[bytes, bytes | None]]) -> dict[bytes, bytes | None]:
    """The state tree's new leaf hashes (None: removed) for the encoded changes."""
    return {key: None if data is None else compute_leaf_hash(key, data) for key, data in diff}


def commit_overlay(overlay: Overlay, head_hash: bytes) -> State:
    """The state the overlay's writes lead to; the base state is left as it was. Each
    written value is encoded once: the encoding is both the diff and the leaf's input."""
    base = overlay.base
    if not isinstance(base, State):
        raise TypeError("commit the outermost overlay")
    diff = compute_diff(overlay.writes)
    return State(
        genesis=base.genesis,
        head_hash=head_hash,
        entries=base.entries.updated(overlay.writes),
        tree=update_tree(base.tree, compute_leaf_changes(diff)),
        diff=diff,
    )


def make_state(genesis: Genesis, head_hash: bytes, encoded: Mapping[bytes, bytes]) -> State:
    """A state from stored (key, encoded value) pairs, with its tree built from scratch."""
    values = {key: decode_value(key, encoded[key]) for key in sorted(encoded)}
    leaves = {key: compute_leaf_hash(key, encoded[key]) for key in sorted(encoded)}
    return State(genesis, head_hash, PersistentMap((values,)), update_tree(EMPTY_TREE, leaves), ())


def iter_encoded(state: State) -> Iterator[tuple[bytes, bytes]]:
    for key, value in state.entries.items():
        yield key, encode_value(key, value)


# ---------------------------------------------------------------------------- accessors

def get_chain_info(view: View) -> ChainInfo:
    return view.get(KEY_CHAIN)


def get_height(view: View) -> int:
    return get_chain_info(view).height


def get_validators(view: View) -> tuple[ValidatorInfo, ...]:
    return view.get(KEY_VALIDATORS)


def get_peer(view: View, peer: bytes) -> Peer | None:
    return view.get(get_peer_key(peer))


def get_last_seq(view: View, author: bytes) -> int:
    """0 for an author never seen: the first record carries seq >= 1.

    A registered peer keeps its seq in its Peer entry (its records then touch one key, not
    two); any other author (a publisher) keeps it under seq/<author>."""
    peer = get_peer(view, author)
    if peer is not None:
        return peer.seq
    return view.get(get_seq_key(author)) or 0


def get_collection(view: View, info_hash: bytes) -> Collection | None:
    return view.get(get_collection_key(info_hash))


def get_shard_holders(view: View, info_hash: bytes, shard: int) -> ShardHolders:
    return view.get(get_shard_key(info_hash, shard)) or NO_SHARD_HOLDERS


def get_peer_holdings(view: View, peer: bytes) -> PeerHoldings:
    return view.get(get_holdings_key(peer)) or NO_PEER_HOLDINGS


def get_randomness(view: View, height: int) -> bytes | None:
    """Randomness of block `height`, while it is within the kept history."""
    return view.get(get_randomness_key(height))


def get_holder_peers(view: View, bucket: int) -> tuple[bytes, ...]:
    return (view.get(get_holder_peers_key(bucket)) or NO_PEER_KEYS).peers


def get_challenge_entry(view: View, challenge_id: bytes) -> OpenChallenge | None:
    return view.get(get_challenge_key(challenge_id))


def get_deadline_ids(view: View, height: int) -> tuple[bytes, ...]:
    """Ids issued with deadline `height`; some may be closed already (closing leaves this list alone)."""
    return (view.get(get_deadline_key(height)) or NO_CHALLENGE_IDS).ids


def get_peer_challenge_ids(view: View, peer: bytes) -> tuple[bytes, ...]:
    return (view.get(get_peer_challenges_key(peer)) or NO_CHALLENGE_IDS).ids


def get_pending_claims(view: View, height: int) -> tuple[PendingClaim, ...]:
    return (view.get(get_claims_key(height)) or NO_PENDING_CLAIMS).claims


def get_grace_peers(view: View, height: int) -> tuple[bytes, ...]:
    return (view.get(get_grace_key(height)) or NO_PEER_KEYS).peers


# ---------------------------------------------------------------------------- queries (node, targets, explorer)

def get_challenge_from_entry(challenge_id: bytes, entry: OpenChallenge) -> Challenge:
    return Challenge(challenge_id, entry.peer, entry.collection, entry.shard, entry.leaf,
                     entry.issued_height, entry.deadline_height, entry.attempt)


def get_entry_from_challenge(challenge: Challenge) -> OpenChallenge:
    return OpenChallenge(challenge.peer, challenge.collection, challenge.shard, challenge.leaf,
                         challenge.issued_height, challenge.deadline_height, challenge.attempt)


def get_challenge(view: View, challenge_id: bytes) -> Challenge | None:
    """The open challenge with this id, as chain.proofs.get_proof_verdict takes it."""
    entry = get_challenge_entry(view, challenge_id)
    return None if entry is None else get_challenge_from_entry(challenge_id, entry)


def get_open_challenges_for_peer(view: View, peer: bytes) -> tuple[tuple[bytes, OpenChallenge], ...]:
    """(challenge id, entry) of every open challenge of `peer`, by id."""
    return tuple((cid, get_challenge_entry(view, cid)) for cid in get_peer_challenge_ids(view, peer))


def is_counting_holder(view: View, holder: Holder, height: int) -> bool:
    """A copy counts toward redundancy at `height` if proven within the audit window by an active peer."""
    if holder.verified_height == 0:
        return False
    peer = get_peer(view, holder.peer)
    if peer is None or peer.status != ACTIVE:
        return False
    return height - holder.verified_height <= view.genesis.params.audit_window_blocks


def get_verified_holders(view: View, info_hash: bytes, shard: int, height: int) -> tuple[Holder, ...]:
    """The holders of a shard that count at `height`, in key order."""
    return tuple(h for h in get_shard_holders(view, info_hash, shard).holders if is_counting_holder(view, h, height))


def iter_prefix(state: State, prefix: bytes) -> Iterator[tuple[bytes, Any]]:
    """Every (key, value) under a prefix, in key order: a full pass, for tools and tests."""
    for key, value in state.entries.items():
        if key.startswith(prefix):
            yield key, value
