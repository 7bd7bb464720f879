"""The /p2p peer protocol: every message kind, its canonical encoding and its size limit.

A frame on a link is one `Message`: a codec tagged union encoded as `[tag, [fields...]]`
(chain/codec.py). Kinds that spread by flooding (proposals, votes, records, proofs and
peer announcements) travel inside a `GossipEnvelope(inner, ttl)`; the envelope carries no
message id and no origin on the wire: the id is sha256 of the inner's canonical bytes,
recomputed by every receiver (a sent id could be forged to suppress a real message), and an
unsigned origin would be a claim nobody can check (inner messages carry their authors'
signatures where it matters).

Decoding checks the per-kind byte limit by peeking at the tag *before* parsing, so a
16 MiB frame claiming to be a vote is refused without unpacking it, then parses strictly
(canonical bytes only), then checks each kind's field rules in `__post_init__`, so an
invalid message cannot even be constructed locally. Every failure is a `MessageError`.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, ClassVar

from chain.proofs import ProofStatement
from chain.codec import Hash32, MaxLen, PubKey, Signature, Tagged, decode, encode
from chain.constants import KIND_PROOF, MAX_BLOCK_BYTES, MAX_RECORD_BYTES
from chain.crypto import is_valid_chain_id, sha256
from chain.errors import CodecError
from chain.types import Block, CommittedBlock, SignedProposal, SignedRecord, SignedVote
from storage.proof import MAX_PROOF_BYTES

PROTOCOL_VERSION = 1

# Roles a node announces in HELLO and PEERS.
ROLE_BEACON = 1
ROLE_PEER = 2
ROLE_CLIENT = 3          # explorer/CLI clients: never dialled, never advertised
ROLES = (ROLE_BEACON, ROLE_PEER, ROLE_CLIENT)

# Error codes of ErrorMsg; the sender closes the link after sending one.
ERR_MALFORMED = 1
ERR_WRONG_CHAIN = 2
ERR_VERSION = 3
ERR_RATE_LIMITED = 4
ERR_NOT_FOUND = 5
ERR_PROTOCOL = 6
ERR_SHUTTING_DOWN = 7

# Bounds on counts; byte limits per kind follow below.
MAX_TTL = 16
MAX_PEERS_PER_MSG = 64
MAX_SIDECAR_PROOFS = 256
MAX_GET_BLOCKS = 256             # blocks one GET_BLOCKS may ask for
MAX_ERROR_TEXT = 256
MAX_ADDRESS = 255

Address = Annotated[str, MaxLen(MAX_ADDRESS)]
ProofBytes = Annotated[bytes, MaxLen(MAX_PROOF_BYTES)]


class ProtocolError(Exception):
    """A remote broke the peer protocol; the shell logs it and closes that link."""


class MessageError(ProtocolError):
    """Bytes are not a well-formed, in-limit message of a known kind."""


# ---------------------------------------------------------------------------- validation helpers

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def is_valid_address(text: str) -> bool:
    """True for "host:port" with a DNS name, IPv4 or [IPv6] host and a port in 1..65535."""
    if type(text) is not str or not 0 < len(text) <= MAX_ADDRESS or not text.isascii():
        return False
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        return False
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    labels = host.split(".")
    return len(host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise MessageError(what)


def _check_height(value: int, what: str) -> None:
    _require(0 <= value < (1 << 63), f"{what} out of range: {value}")


# ---------------------------------------------------------------------------- direct messages

@dataclass(frozen=True, slots=True)
class Hello:
    """First frame each side sends after the handshake: who I am and where my chain is."""
    TAG: ClassVar[int] = 1
    version: int
    chain_id: Annotated[str, MaxLen(32)]
    genesis_hash: Hash32
    role: int
    head_height: int
    head_hash: Hash32
    listen_address: Address      # "" when the node accepts no inbound links (clients)

    def __post_init__(self) -> None:
        _require(self.version >= 1, f"bad protocol version {self.version}")
        _require(self.chain_id.isascii() and is_valid_chain_id(self.chain_id.encode("ascii")),
                 f"bad chain id {self.chain_id!r}")
        _require(self.role in ROLES, f"unknown role {self.role}")
        _check_height(self.head_height, "head height")
        _require(self.listen_address == "" or is_valid_address(self.listen_address),
                 f"bad listen address {self.listen_address!r}")


@dataclass(frozen=True, slots=True)
class Status:
    """A new head: sent to neighbours whenever the local head moves."""
    TAG: ClassVar[int] = 2
    head_height: int
    head_hash: Hash32

    def __post_init__(self) -> None:
        _check_height(self.head_height, "head height")


@dataclass(frozen=True, slots=True)
class GetPeers:
    """Ask a neighbour for the addresses it knows (answered with Peers)."""
    TAG: ClassVar[int] = 3


@dataclass(frozen=True, slots=True)
class PeerEntry:
    public_key: PubKey
    address: Address
    role: int

    def __post_init__(self) -> None:
        _require(is_valid_address(self.address), f"bad peer address {self.address!r}")
        _require(self.role in (ROLE_BEACON, ROLE_PEER), f"unadvertisable role {self.role}")


@dataclass(frozen=True, slots=True)
class Peers:
    """Known addresses: a reply to GetPeers, or flooded (one entry, its own) as an announcement."""
    TAG: ClassVar[int] = 4
    entries: Annotated[tuple[PeerEntry, ...], MaxLen(MAX_PEERS_PER_MSG)]


@dataclass(frozen=True, slots=True)
class GetBlocks:
    """Ask for committed blocks start_height .. start_height+count-1 (fewer may come back)."""
    TAG: ClassVar[int] = 6
    start_height: int
    count: int

    def __post_init__(self) -> None:
        _require(1 <= self.start_height < (1 << 63), f"bad start height {self.start_height}")
        _require(1 <= self.count <= MAX_GET_BLOCKS, f"bad block count {self.count}")


@dataclass(frozen=True, slots=True)
class Blocks:
    """Reply to GetBlocks: consecutive blocks from start_height; empty if none are held."""
    TAG: ClassVar[int] = 7
    start_height: int            # echoes the request, so an empty reply still names its range
    blocks: Annotated[tuple[CommittedBlock, ...], MaxLen(MAX_GET_BLOCKS)]

    def __post_init__(self) -> None:
        _require(1 <= self.start_height < (1 << 63), f"bad start height {self.start_height}")


@dataclass(frozen=True, slots=True)
class GetProof:
    """Ask for a storage proof kept in the proof store (by challenge id)."""
    TAG: ClassVar[int] = 8
    challenge_id: Hash32


@dataclass(frozen=True, slots=True)
class ProofMsg:
    """A storage peer's signed answer to a challenge (flooded, and the proposal sidecar)."""
    TAG: ClassVar[int] = 23
    peer: PubKey
    challenge_id: Hash32
    proof: ProofBytes            # storage.proof.Proof wire bytes
    signature: Signature         # the peer's, over signing_payload() with kind "proof"

    SIGN_KIND: ClassVar[bytes] = KIND_PROOF

    def signing_payload(self) -> bytes:
        return encode(ProofStatement(self.peer, self.challenge_id, self.proof))


@dataclass(frozen=True, slots=True)
class ProofReply:
    """Reply to GetProof: the proof, or None when it is not (or no longer) kept."""
    TAG: ClassVar[int] = 9
    challenge_id: Hash32
    proof: ProofMsg | None

    def __post_init__(self) -> None:
        _require(self.proof is None or self.proof.challenge_id == self.challenge_id,
                 "proof reply for another challenge")


@dataclass(frozen=True, slots=True)
class ErrorMsg:
    """Why the sender is about to close the link; for the receiver's log."""
    TAG: ClassVar[int] = 10
    code: int
    text: Annotated[str, MaxLen(MAX_ERROR_TEXT)]


# ---------------------------------------------------------------------------- flooded messages

@dataclass(frozen=True, slots=True)
class ProposalMsg:
    """A consensus proposal with its block (encoded, decoded only once the signature checks)
    and the storage proofs its ProofResult records rest on (verified before voting).

    Only `proposal` is signed. The block is bound to it through the header hash (a
    receiver checks the bytes: node.beacon.check_proposal_value) and each answer the block
    rests on through the digest its ProofResult names; the sidecar as a whole is bound to
    nothing. A relay may strip it or add junk, so a receiver gathers the named answers from
    every copy and its proof pool, and ignores the rest (docs/protocol.md §8). The
    proposer's sidecar is exactly the named answers in body order."""
    TAG: ClassVar[int] = 20
    proposal: SignedProposal
    block: Annotated[bytes, MaxLen(MAX_BLOCK_BYTES)]
    sidecar: Annotated[tuple[ProofMsg, ...], MaxLen(MAX_SIDECAR_PROOFS)]

    def __post_init__(self) -> None:
        ids = [p.challenge_id for p in self.sidecar]
        _require(len(set(ids)) == len(ids), "duplicate challenge in proof sidecar")


@dataclass(frozen=True, slots=True)
class VoteMsg:
    TAG: ClassVar[int] = 21
    vote: SignedVote


@dataclass(frozen=True, slots=True)
class RecordMsg:
    """A signed record for the pool (PeerJoin, Publish, Holding...)."""
    TAG: ClassVar[int] = 22
    record: SignedRecord


Flooded = Annotated[ProposalMsg | VoteMsg | RecordMsg | ProofMsg | Peers, Tagged()]
FloodedMsg = ProposalMsg | VoteMsg | RecordMsg | ProofMsg | Peers


@dataclass(frozen=True, slots=True)
class GossipEnvelope:
    """A flooded message and how many more hops it may take (>= 1 on the wire).

    `inner` comes first so its tag sits at a fixed offset for the size-limit peek."""
    TAG: ClassVar[int] = 5
    inner: Flooded
    ttl: int

    def __post_init__(self) -> None:
        _require(1 <= self.ttl <= MAX_TTL, f"ttl {self.ttl} outside 1..{MAX_TTL}")


Message = Annotated[
    Hello | Status | GetPeers | Peers | GossipEnvelope | GetBlocks | Blocks | GetProof
    | ProofReply | ErrorMsg,
    Tagged(),
]
AnyMessage = (Hello | Status | GetPeers | Peers | GossipEnvelope | GetBlocks | Blocks | GetProof
              | ProofReply | ErrorMsg)

# ---------------------------------------------------------------------------- size limits

_SMALL = 256                              # room for headers, ints and fixed-size fields
_PROOF_MSG_BYTES = MAX_PROOF_BYTES + _SMALL
_PEERS_BYTES = 8 + MAX_PEERS_PER_MSG * (MAX_ADDRESS + 48)
MAX_BLOCKS_BYTES = MAX_BLOCK_BYTES + (1 << 20)   # one full block and its commit always fit

# Limits of the kinds that may sit inside a GossipEnvelope, by tag.
FLOODED_LIMITS: dict[int, int] = {
    ProposalMsg.TAG: MAX_BLOCK_BYTES + MAX_SIDECAR_PROOFS * _PROOF_MSG_BYTES + 4096,
    VoteMsg.TAG: _SMALL,
    RecordMsg.TAG: MAX_RECORD_BYTES + 4096,
    ProofMsg.TAG: _PROOF_MSG_BYTES,
    Peers.TAG: _PEERS_BYTES,
}
_ENVELOPE_OVERHEAD = 16

# Limits of every top-level kind but GossipEnvelope (whose limit is its inner's), by tag.
DIRECT_LIMITS: dict[int, int] = {
    Hello.TAG: 512,
    Status.TAG: 64,
    GetPeers.TAG: 8,
    Peers.TAG: _PEERS_BYTES,
    GetBlocks.TAG: 32,
    Blocks.TAG: MAX_BLOCKS_BYTES,
    GetProof.TAG: 48,
    ProofReply.TAG: _PROOF_MSG_BYTES + 48,
    ErrorMsg.TAG: MAX_ERROR_TEXT + 32,
}

# The largest frame any kind may take: what the transport must accept.
MAX_FRAME_BYTES = max(max(DIRECT_LIMITS.values()),
                      max(FLOODED_LIMITS.values()) + _ENVELOPE_OVERHEAD)

_FIXARRAY_2 = 0x92
_FIXINT_MAX = 0x7F


_KINDS: dict[int, type] = {cls.TAG: cls for cls in (
    Hello, Status, GetPeers, Peers, GossipEnvelope, GetBlocks, Blocks, GetProof, ProofReply, ErrorMsg)}
_FLOODED_KINDS: dict[int, type] = {cls.TAG: cls for cls in (ProposalMsg, VoteMsg, RecordMsg, ProofMsg, Peers)}


def _peek_tags(data: bytes) -> tuple[int, int | None]:
    """(tag, inner tag for an envelope) read from a frame's first bytes, unparsed.

    Every tag is a positive fixint, so a canonical frame starts [0x92, tag, ...] and an
    envelope [0x92, 5, 0x92, 0x92, inner_tag, ...]. A frame with another prefix is not
    canonical (or not a message) and is refused here."""
    if type(data) is not bytes or len(data) < 2 or data[0] != _FIXARRAY_2 or data[1] > _FIXINT_MAX:
        raise MessageError("not a message frame")
    tag = data[1]
    if tag not in _KINDS:
        raise MessageError(f"unknown message kind {tag}")
    if tag != GossipEnvelope.TAG:
        return tag, None
    if len(data) < 5 or data[2] != _FIXARRAY_2 or data[3] != _FIXARRAY_2:
        raise MessageError("malformed gossip envelope")
    if data[4] not in _FLOODED_KINDS:
        raise MessageError(f"unknown flooded kind {data[4]}")
    return tag, data[4]


def frame_kind(data: bytes) -> type:
    """The class a frame claims to be (GossipEnvelope for any flooded kind), without
    parsing it: lets the shell drop, say, a Blocks frame nobody asked for undecoded."""
    return _KINDS[_peek_tags(data)[0]]


def frame_limit(data: bytes) -> int:
    """The byte limit of the kind `data` claims to be, read from its first bytes."""
    tag, inner = _peek_tags(data)
    if inner is not None:
        return FLOODED_LIMITS[inner] + _ENVELOPE_OVERHEAD
    return DIRECT_LIMITS[tag]


# ---------------------------------------------------------------------------- encode / decode

def encode_message(msg: AnyMessage) -> bytes:
    """Canonical bytes of a message; refuses one over its kind's limit (the peer would)."""
    try:
        data = encode(msg, Message)
    except CodecError as exc:
        raise MessageError(f"cannot encode {type(msg).__name__}: {exc}") from exc
    limit = frame_limit(data)
    if len(data) > limit:
        raise MessageError(f"{type(msg).__name__} of {len(data)} bytes over its {limit}-byte limit")
    return data


def decode_message(data: bytes) -> AnyMessage:
    """Parse one frame, or raise MessageError (malformed, non-canonical, oversized, unknown)."""
    limit = frame_limit(data)
    if len(data) > limit:
        raise MessageError(f"frame of {len(data)} bytes over its kind's {limit}-byte limit")
    try:
        return decode(data, Message, max_bytes=limit)
    except CodecError as exc:
        raise MessageError(str(exc)) from exc


def flooded_id(inner: FloodedMsg) -> bytes:
    """The gossip message id: sha256 of the inner message's canonical bytes."""
    try:
        return sha256(encode(inner, Flooded))
    except CodecError as exc:
        raise MessageError(f"cannot encode {type(inner).__name__}: {exc}") from exc


def decode_proposal_block(msg: ProposalMsg) -> Block:
    """The proposal's block, decoded strictly (call after the proposal signature checks)."""
    try:
        return decode(msg.block, Block, max_bytes=MAX_BLOCK_BYTES)
    except CodecError as exc:
        raise MessageError(f"proposal block: {exc}") from exc
