"""Wire and state types of the chain: frozen slotted dataclasses with canonical encodings.

Field order is the encoding order (chain/codec.py); changing it changes every hash.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from chain.codec import Hash32, Len, MaxLen, PubKey, Signature, Tagged, encode
from chain.constants import MAX_RECORD_BYTES, MAX_RECORDS_PER_BLOCK
from chain.crypto import sha256

VrfProof = Annotated[bytes, Len(80)]
OptSignature = Annotated[bytes, MaxLen(64)]      # empty for records that carry no author signature
Address = Annotated[str, MaxLen(255)]            # "host:port"
Name = Annotated[str, MaxLen(255)]
TorrentBytes = Annotated[bytes, MaxLen(MAX_RECORD_BYTES)]

NIL = b""  # a vote for no block


# ---------------------------------------------------------------------------- genesis

@dataclass(frozen=True, slots=True)
class ValidatorInfo:
    public_key: PubKey
    vrf_public_key: PubKey
    address: Address           # host:port of its aiohttp server (/p2p, /api)
    name: Name


@dataclass(frozen=True, slots=True)
class Params:
    block_interval_ms: int = 1000
    timeout_propose_ms: int = 1500
    timeout_prevote_ms: int = 500
    timeout_precommit_ms: int = 500
    timeout_delta_ms: int = 500          # added per round to each timeout
    epoch_blocks: int = 10               # challenges are drawn once per epoch
    challenges_per_epoch: int = 2        # k leaves per active peer per epoch
    proof_deadline_blocks: int = 5       # answer within this many blocks of the challenge
    proof_retries: int = 2               # missed deadlines retried on the same leaf
    randomness_mix_blocks: int = 2       # challenge seed mixes this many finalized blocks (>= f+1)
    reputation_alpha_ppm: int = 950_000  # decay weight of the old score (parts per million)
    reputation_start_ppm: int = 1_000_000
    suspend_below_ppm: int = 600_000
    grace_period_blocks: int = 30        # suspended this long -> excluded, copies re-created
    audit_window_blocks: int = 1000      # a copy counts only if proven within this window
    default_target: int = 3
    max_target: int = 16
    max_shard_bytes: int = 64 * 1024 * 1024
    proof_retention_blocks: int = 10_000
    max_records_per_block: int = MAX_RECORDS_PER_BLOCK


@dataclass(frozen=True, slots=True)
class Genesis:
    chain_id: Name
    genesis_time_ms: int
    validators: tuple[ValidatorInfo, ...]
    params: Params
    publishers: tuple[PubKey, ...] = ()    # empty: anyone may publish

    @property
    def chain_id_bytes(self) -> bytes:
        return self.chain_id.encode("ascii")

    def hash(self) -> bytes:
        return sha256(encode(self))


# ---------------------------------------------------------------------------- consensus messages

PREVOTE = 1
PRECOMMIT = 2


@dataclass(frozen=True, slots=True)
class Vote:
    kind: int                  # PREVOTE or PRECOMMIT
    height: int
    round: int
    block_hash: Annotated[bytes, MaxLen(32)]   # NIL (b"") for a nil vote
    validator: PubKey


@dataclass(frozen=True, slots=True)
class SignedVote:
    vote: Vote
    signature: Signature


@dataclass(frozen=True, slots=True)
class Proposal:
    height: int
    round: int
    block_hash: Hash32
    valid_round: int           # -1 when the proposer had no valid value
    proposer: PubKey


@dataclass(frozen=True, slots=True)
class SignedProposal:
    proposal: Proposal
    signature: Signature


@dataclass(frozen=True, slots=True)
class CommitSig:
    validator_index: int
    signature: Signature


@dataclass(frozen=True, slots=True)
class Commit:
    """The q precommit signatures of one round that made a block final."""
    height: int
    round: int
    block_hash: Hash32
    signatures: tuple[CommitSig, ...]


# ---------------------------------------------------------------------------- records

@dataclass(frozen=True, slots=True)
class PeerJoin:
    TAG: ClassVar[int] = 1
    peer: PubKey
    bt_address: Address        # host:port of its BitTorrent listener
    api_address: Address       # host:port of its aiohttp server
    capacity: int              # bytes it offers
    seq: int


@dataclass(frozen=True, slots=True)
class PeerLeave:
    TAG: ClassVar[int] = 2
    peer: PubKey
    seq: int


@dataclass(frozen=True, slots=True)
class Publish:
    TAG: ClassVar[int] = 3
    publisher: PubKey
    name: Name
    torrent: TorrentBytes      # the full hybrid .torrent (info dict and piece layers)
    target: int
    seeders: Annotated[tuple[Address, ...], MaxLen(8)]   # BitTorrent host:port serving the data at first
    seq: int


CLAIM = 1
DROP = 2


@dataclass(frozen=True, slots=True)
class Holding:
    TAG: ClassVar[int] = 4
    peer: PubKey
    collection: Hash32         # info_hash_v2 of the collection
    shard: int
    action: int                # CLAIM or DROP
    seq: int


PASS = 1
MISS = 2
INVALID = 3


@dataclass(frozen=True, slots=True)
class ProofResult:
    """A validator-checked verdict; the ~16 KiB proof itself is a sidecar, not on chain."""
    TAG: ClassVar[int] = 5
    peer: PubKey
    challenge_id: Hash32
    verdict: int               # PASS, MISS or INVALID
    proof_digest: Annotated[bytes, MaxLen(32)]   # sha256 of the proof answered with; empty on MISS


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two conflicting signed votes by one validator at one height and round."""
    TAG: ClassVar[int] = 6
    vote_a: SignedVote
    vote_b: SignedVote


Record = Annotated[PeerJoin | PeerLeave | Publish | Holding | ProofResult | Evidence, Tagged()]
SIGNED_RECORD_KINDS = (PeerJoin, PeerLeave, Publish, Holding)


def get_record_author(record: object) -> bytes | None:
    """The key that must sign a record, or None for records checked by other means."""
    if isinstance(record, (PeerJoin, PeerLeave, Holding)):
        return record.peer
    if isinstance(record, Publish):
        return record.publisher
    return None


@dataclass(frozen=True, slots=True)
class SignedRecord:
    record: Record
    signature: OptSignature


# ---------------------------------------------------------------------------- blocks

@dataclass(frozen=True, slots=True)
class BlockHeader:
    chain_id: Name
    height: int
    round: int
    timestamp_ms: int
    parent_hash: Hash32
    proposer: PubKey
    vrf_proof: VrfProof
    randomness: Hash32
    state_root: Hash32
    body_root: Hash32


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    signature: Signature       # the proposer's, over the header
    body: Annotated[tuple[SignedRecord, ...], MaxLen(MAX_RECORDS_PER_BLOCK)]

    def hash(self) -> bytes:
        return compute_header_hash(self.header)


def compute_header_hash(header: BlockHeader) -> bytes:
    return sha256(encode(header))


@dataclass(frozen=True, slots=True)
class CommittedBlock:
    """What sync moves and the store keeps: a block with the commit that made it final."""
    block: Block
    commit: Commit
