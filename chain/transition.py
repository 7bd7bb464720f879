"""The state transition: `process_block(state, block, commit) -> State`.

A block is valid if and only if every process_* step below passes, in this order; each
raises its own InvalidBlock subclass (chain/errors.py). The body's effects are written to
an Overlay and only become a State when everything passed, so an invalid block leaves
the state it was given untouched.

Consensus checks a proposal before voting with `process_proposal` (every rule but the
commit, which does not exist yet); sync and replay use `process_block`.
"""
from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence

from chain import vrf
from chain.codec import encode
from chain.constants import (
    DOMAIN_BODY_LEAF,
    DOMAIN_BODY_NODE,
    DOMAIN_PROPOSER,
    DOMAIN_RANDOMNESS,
    DOMAIN_VRF_INPUT,
    KIND_BLOCK,
    KIND_PRECOMMIT,
    KIND_PREVOTE,
    KIND_RECORD,
    MAX_TIMESTAMP_STEP_MS,
    RANDOMNESS_HISTORY_BLOCKS,
)
from chain.crypto import SigningKey, is_valid_signature, sha256
from chain.errors import (
    BadBodyRoot,
    BadCollection,
    BadCommit,
    BadEvidence,
    BadHeaderSignature,
    BadHolding,
    BadPeerRecord,
    BadProofResult,
    BadRandomness,
    BadRecordSignature,
    BadStateRoot,
    DuplicateCollection,
    InvalidBlock,
    InvalidHeader,
    PeerNotActive,
    PublisherNotAllowed,
    StaleSeq,
    TooManyRecords,
    UnknownPeer,
    UnknownShard,
    WrongProposer,
)
from chain.genesis import is_valid_address
from chain.state import (
    ACTIVE,
    EXCLUDED,
    KEY_CHAIN,
    LEFT,
    SUSPENDED,
    ChainInfo,
    Collection,
    EvidenceEntry,
    Holder,
    Overlay,
    Peer,
    PeerHoldings,
    ShardHolders,
    ShardRef,
    State,
    View,
    commit_overlay,
    get_chain_info,
    get_collection,
    get_collection_key,
    get_evidence_key,
    get_height,
    get_holdings_key,
    get_last_seq,
    get_peer,
    get_peer_holdings,
    get_peer_key,
    get_randomness_key,
    get_seq_key,
    get_shard_holders,
    get_shard_key,
    get_validators,
)
from chain.types import (
    CLAIM,
    DROP,
    INVALID,
    MISS,
    PASS,
    PRECOMMIT,
    PREVOTE,
    Block,
    BlockHeader,
    Commit,
    Evidence,
    Holding,
    PeerJoin,
    PeerLeave,
    ProofResult,
    Publish,
    Record,
    SignedRecord,
    SignedVote,
    ValidatorInfo,
    Vote,
    get_record_author,
)
from storage.collection import parse_torrent
from storage.errors import StorageError

ZERO_HASH = bytes(32)


# ---------------------------------------------------------------------------- helpers

def get_quorum(n: int) -> int:
    """q = floor(2n/3) + 1: any two quorums share an honest validator when f <= (n-1)/3."""
    return 2 * n // 3 + 1


def compute_proposer_index(parent_randomness: bytes, round_: int, n: int) -> int:
    # Rotating from a random base makes each height's rounds a permutation: a round that
    # fails moves on to a different validator, and n rounds visit every validator.
    base = int.from_bytes(sha256(DOMAIN_PROPOSER + parent_randomness), "big") % n
    return (base + round_) % n


def get_proposer(state: State, height: int, round_: int) -> ValidatorInfo:
    """The validator that proposes in (height, round); height must follow the state."""
    if height != get_height(state) + 1:
        raise ValueError(f"proposer of height {height} asked of a state at height {get_height(state)}")
    validators = get_validators(state)
    return validators[compute_proposer_index(get_chain_info(state).randomness, round_, len(validators))]


def get_validator_by_key(state: View, public_key: bytes) -> ValidatorInfo | None:
    for validator in get_validators(state):
        if validator.public_key == public_key:
            return validator
    return None


def compute_vrf_input(chain_id: bytes, height: int, parent_randomness: bytes) -> bytes:
    """alpha: nothing the proposer controls (no timestamp, round or payload)."""
    return sha256(DOMAIN_VRF_INPUT + bytes([len(chain_id)]) + chain_id + height.to_bytes(8, "big") + parent_randomness)


def compute_randomness(height: int, beta: bytes) -> bytes:
    return sha256(DOMAIN_RANDOMNESS + height.to_bytes(8, "big") + beta)


def get_record_payload(record: object) -> bytes:
    """What a record's author signs: the tagged encoding of the record."""
    return encode(record, Record)


def compute_body_root(payloads: Sequence[bytes], signatures: Sequence[bytes]) -> bytes:
    """Binary merkle tree over H(DOMAIN_BODY_LEAF || payload || signature), zero-padded to
    a power of two, bound to the record count (so padding cannot pass for records)."""
    level = [sha256(DOMAIN_BODY_LEAF + p + s) for p, s in zip(payloads, signatures)]
    count = len(level)
    width = 1
    while width < count:
        width *= 2
    level += [ZERO_HASH] * (width - count)
    while len(level) > 1:
        level = [sha256(DOMAIN_BODY_NODE + level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return sha256(DOMAIN_BODY_NODE + count.to_bytes(4, "big") + level[0])


VOTE_KINDS = {PREVOTE: KIND_PREVOTE, PRECOMMIT: KIND_PRECOMMIT}


def get_vote_kind(kind: int) -> bytes | None:
    return VOTE_KINDS.get(kind)


def is_valid_vote_signature(chain_id: bytes, signed: SignedVote) -> bool:
    kind = get_vote_kind(signed.vote.kind)
    return kind is not None and is_valid_signature(signed.vote.validator, signed.signature, chain_id, kind, encode(signed.vote))


# ---------------------------------------------------------------------------- header

def process_header(state: State, header: BlockHeader) -> None:
    parent = get_chain_info(state)
    if header.chain_id != state.genesis.chain_id:
        raise InvalidHeader(f"block of chain {header.chain_id!r}, expected {state.genesis.chain_id!r}")
    if header.height != parent.height + 1:
        raise InvalidHeader(f"height {header.height} does not follow {parent.height}")
    if header.parent_hash != state.head_hash:
        raise InvalidHeader(f"parent hash {header.parent_hash.hex()[:16]} is not the head {state.head_hash.hex()[:16]}")
    if header.round < 0:
        raise InvalidHeader("negative round")
    if not parent.timestamp_ms < header.timestamp_ms <= parent.timestamp_ms + MAX_TIMESTAMP_STEP_MS:
        raise InvalidHeader(f"timestamp {header.timestamp_ms} not in ({parent.timestamp_ms}, parent + {MAX_TIMESTAMP_STEP_MS}]")
    if header.timestamp_ms < state.genesis.genesis_time_ms:
        raise InvalidHeader("timestamp before genesis")


def process_proposer(state: State, header: BlockHeader) -> None:
    expected = get_proposer(state, header.height, header.round)
    if header.proposer != expected.public_key:
        raise WrongProposer(f"round {header.round} of height {header.height} belongs to {expected.name}")


def process_header_signature(state: State, block: Block) -> None:
    if not is_valid_signature(block.header.proposer, block.signature, state.chain_id, KIND_BLOCK, encode(block.header)):
        raise BadHeaderSignature(f"header of height {block.header.height} not signed by its proposer")


def process_randomness(state: State, header: BlockHeader) -> None:
    proposer = get_validator_by_key(state, header.proposer)
    if proposer is None:
        raise WrongProposer("proposer is not a validator")
    alpha = compute_vrf_input(state.chain_id, header.height, get_chain_info(state).randomness)
    try:
        beta = vrf.verify(proposer.vrf_public_key, header.vrf_proof, alpha)
    except vrf.VRFError as exc:
        raise BadRandomness(f"VRF proof of height {header.height}: {exc}") from exc
    if header.randomness != compute_randomness(header.height, beta):
        raise BadRandomness(f"randomness of height {header.height} is not derived from the VRF output")


# ---------------------------------------------------------------------------- commit

def verify_commit(state: State, commit: Commit, block_hash: bytes) -> None:
    """Raise BadCommit unless `commit` holds a quorum of valid precommits for `block_hash`
    at the height following `state` (sync checks a block by its commit alone)."""
    validators = get_validators(state)
    height = get_height(state) + 1
    if commit.block_hash != block_hash or commit.height != height:
        raise BadCommit(f"commit is for another block or height ({commit.height})")
    indices = [s.validator_index for s in commit.signatures]
    # Strictly increasing indices: each validator counted once, one encoding per commit.
    if any(not 0 <= i < len(validators) for i in indices) or any(a >= b for a, b in zip(indices, indices[1:])):
        raise BadCommit("commit signer indices must be distinct, sorted and in range")
    if len(indices) < get_quorum(len(validators)):
        raise BadCommit(f"{len(indices)} precommits, quorum is {get_quorum(len(validators))}")
    for sig in commit.signatures:
        validator = validators[sig.validator_index].public_key
        vote = Vote(PRECOMMIT, height, commit.round, block_hash, validator)
        if not is_valid_signature(validator, sig.signature, state.chain_id, KIND_PRECOMMIT, encode(vote)):
            raise BadCommit(f"bad precommit signature from validator {sig.validator_index}")


def process_commit(state: State, block: Block, commit: Commit) -> None:
    verify_commit(state, commit, block.hash())


# ---------------------------------------------------------------------------- body

def process_body_root(state: State, block: Block, payloads: Sequence[bytes]) -> None:
    if len(block.body) > state.genesis.params.max_records_per_block:
        raise TooManyRecords(f"{len(block.body)} records, limit {state.genesis.params.max_records_per_block}")
    if block.header.body_root != compute_body_root(payloads, [r.signature for r in block.body]):
        raise BadBodyRoot(f"body root of height {block.header.height} does not match its records")


def process_record_signature(view: View, signed: SignedRecord, payload: bytes) -> None:
    author = get_record_author(signed.record)
    if author is None:
        if signed.signature:
            raise BadRecordSignature(f"{type(signed.record).__name__} carries no author signature")
    elif not is_valid_signature(author, signed.signature, view.chain_id, KIND_RECORD, payload):
        raise BadRecordSignature(f"{type(signed.record).__name__} not signed by {author.hex()[:16]}")


def process_record_seq(overlay: Overlay, record: object) -> None:
    author = get_record_author(record)
    if author is None:
        return
    last = get_last_seq(overlay, author)
    if record.seq <= last:
        raise StaleSeq(f"seq {record.seq} of {author.hex()[:16]} is not above {last}")
    overlay.put(get_seq_key(author), record.seq)


def process_peer_join(overlay: Overlay, height: int, record: PeerJoin) -> None:
    if not (is_valid_address(record.bt_address) and is_valid_address(record.api_address)) or record.capacity < 0:
        raise BadPeerRecord("PeerJoin needs host:port addresses and a non-negative capacity")
    peer = get_peer(overlay, record.peer)
    if peer is None:
        # The rank key is fixed at first registration, from randomness the peer could not
        # know when it made its key, so nobody can grind a key to capture chosen shards.
        peer = Peer(record.bt_address, record.api_address, record.capacity, ACTIVE, height,
                    overlay.genesis.params.reputation_start_ppm, height, get_chain_info(overlay).randomness)
    elif peer.status == EXCLUDED:
        raise PeerNotActive("an excluded peer cannot join again")
    elif peer.status == LEFT:
        peer = Peer(record.bt_address, record.api_address, record.capacity, ACTIVE, height,
                    peer.reputation_ppm, peer.registered_height, peer.registration_randomness)
    else:
        peer = Peer(record.bt_address, record.api_address, record.capacity, peer.status, peer.status_height,
                    peer.reputation_ppm, peer.registered_height, peer.registration_randomness)
    overlay.put(get_peer_key(record.peer), peer)


def put_or_delete(overlay: Overlay, key: bytes, value: object | None) -> None:
    # Empty containers are deleted rather than stored, so the state has one form per content.
    if value is None:
        overlay.delete(key)
    else:
        overlay.put(key, value)


def remove_holding(overlay: Overlay, peer: bytes, ref: ShardRef) -> None:
    holders = get_shard_holders(overlay, ref.collection, ref.shard).holders
    remaining = tuple(h for h in holders if h.peer != peer)
    put_or_delete(overlay, get_shard_key(ref.collection, ref.shard), ShardHolders(remaining) if remaining else None)
    refs = tuple(r for r in get_peer_holdings(overlay, peer).shards if r != ref)
    put_or_delete(overlay, get_holdings_key(peer), PeerHoldings(refs) if refs else None)


def add_holding(overlay: Overlay, height: int, peer: bytes, ref: ShardRef) -> None:
    holders = list(get_shard_holders(overlay, ref.collection, ref.shard).holders)
    bisect.insort(holders, Holder(peer, height, 0), key=lambda h: h.peer)
    overlay.put(get_shard_key(ref.collection, ref.shard), ShardHolders(tuple(holders)))
    refs = list(get_peer_holdings(overlay, peer).shards)
    bisect.insort(refs, ref, key=lambda r: (r.collection, r.shard))
    overlay.put(get_holdings_key(peer), PeerHoldings(tuple(refs)))


def process_peer_leave(overlay: Overlay, height: int, record: PeerLeave) -> None:
    peer = get_peer(overlay, record.peer)
    if peer is None:
        raise UnknownPeer(f"peer {record.peer.hex()[:16]} is not registered")
    if peer.status not in (ACTIVE, SUSPENDED):
        raise PeerNotActive(f"peer {record.peer.hex()[:16]} has already left or is excluded")
    # A peer that leaves stops counting as a holder at once, so its shards get re-replicated.
    for ref in get_peer_holdings(overlay, record.peer).shards:
        remove_holding(overlay, record.peer, ref)
    overlay.put(get_peer_key(record.peer), Peer(peer.bt_address, peer.api_address, peer.capacity, LEFT, height,
                                               peer.reputation_ppm, peer.registered_height, peer.registration_randomness))


def process_publish(overlay: Overlay, height: int, record: Publish) -> None:
    params = overlay.genesis.params
    publishers = overlay.genesis.publishers
    if publishers and record.publisher not in publishers:
        raise PublisherNotAllowed(f"{record.publisher.hex()[:16]} is not an allowed publisher")
    if not 1 <= record.target <= params.max_target or not record.name:
        raise BadCollection(f"target {record.target} not in 1..{params.max_target}, or empty name")
    if not all(is_valid_address(a) for a in record.seeders):
        raise BadCollection("a seeder address is not host:port")
    try:
        meta = parse_torrent(record.torrent, max_shard_bytes=params.max_shard_bytes)
    except StorageError as exc:
        raise BadCollection(f"torrent of {record.name!r}: {exc}") from exc
    if get_collection(overlay, meta.info_hash_v2) is not None:
        raise DuplicateCollection(f"collection {meta.info_hash_v2.hex()[:16]} is already published")
    overlay.put(get_collection_key(meta.info_hash_v2), Collection(
        record.publisher, record.name, meta.info_hash_v1, sha256(record.torrent), meta.piece_length,
        record.target, height, record.seeders, meta.shards))


def process_holding(overlay: Overlay, height: int, record: Holding) -> None:
    peer = get_peer(overlay, record.peer)
    if peer is None:
        raise UnknownPeer(f"peer {record.peer.hex()[:16]} is not registered")
    collection = get_collection(overlay, record.collection)
    if collection is None or not 0 <= record.shard < len(collection.shards):
        raise UnknownShard(f"no shard {record.shard} in collection {record.collection.hex()[:16]}")
    ref = ShardRef(record.collection, record.shard)
    held = any(h.peer == record.peer for h in get_shard_holders(overlay, record.collection, record.shard).holders)
    if record.action == CLAIM:
        if peer.status != ACTIVE:
            raise PeerNotActive("only an active peer can claim a shard")
        if held:
            raise BadHolding("shard already claimed by this peer")
        add_holding(overlay, height, record.peer, ref)
    elif record.action == DROP:
        if not held:
            raise BadHolding("dropping a shard the peer does not hold")
        remove_holding(overlay, record.peer, ref)
    else:
        raise BadHolding(f"unknown holding action {record.action}")


def process_proof_result(overlay: Overlay, height: int, record: ProofResult) -> None:
    # Structure only: matching results to open challenges lands with chain/challenges.py.
    if record.verdict not in (PASS, MISS, INVALID):
        raise BadProofResult(f"unknown verdict {record.verdict}")
    if len(record.proof_digest) != (0 if record.verdict == MISS else 32):
        raise BadProofResult("a MISS carries no digest; PASS and INVALID carry 32 bytes")
    if get_peer(overlay, record.peer) is None:
        raise UnknownPeer(f"peer {record.peer.hex()[:16]} is not registered")


def process_evidence(overlay: Overlay, height: int, record: Evidence) -> None:
    a, b = record.vote_a.vote, record.vote_b.vote
    if (a.validator, a.height, a.round, a.kind) != (b.validator, b.height, b.round, b.kind):
        raise BadEvidence("the votes are not by one validator at one height, round and kind")
    # Ordered hashes: one encoding per offence, and the two votes differ.
    if not a.block_hash < b.block_hash:
        raise BadEvidence("evidence votes must be for different blocks, in byte order")
    if a.height > height or get_validator_by_key(overlay, a.validator) is None:
        raise BadEvidence("evidence of a future height or of a non-validator")
    if not (is_valid_vote_signature(overlay.chain_id, record.vote_a) and is_valid_vote_signature(overlay.chain_id, record.vote_b)):
        raise BadEvidence("an evidence vote is not validly signed")
    key = get_evidence_key(a.validator, a.height, a.round, a.kind)
    if overlay.get(key) is not None:
        raise BadEvidence("this double vote is already on chain")
    overlay.put(key, EvidenceEntry(height, a.block_hash, b.block_hash))


RECORD_PROCESSORS = {
    PeerJoin: process_peer_join,
    PeerLeave: process_peer_leave,
    Publish: process_publish,
    Holding: process_holding,
    ProofResult: process_proof_result,
    Evidence: process_evidence,
}


def process_record(overlay: Overlay, height: int, signed: SignedRecord, payload: bytes) -> None:
    process_record_signature(overlay, signed, payload)
    process_record_seq(overlay, signed.record)
    RECORD_PROCESSORS[type(signed.record)](overlay, height, signed.record)


def process_records(overlay: Overlay, height: int, body: Sequence[SignedRecord], payloads: Sequence[bytes]) -> None:
    for signed, payload in zip(body, payloads):
        process_record(overlay, height, signed, payload)


def process_chain_head(overlay: Overlay, header: BlockHeader) -> None:
    overlay.put(KEY_CHAIN, ChainInfo(header.height, header.timestamp_ms, header.randomness))
    overlay.put(get_randomness_key(header.height), header.randomness)
    if header.height >= RANDOMNESS_HISTORY_BLOCKS:
        overlay.delete(get_randomness_key(header.height - RANDOMNESS_HISTORY_BLOCKS))


def process_state_root(new_state: State, header: BlockHeader) -> None:
    if new_state.root != header.state_root:
        raise BadStateRoot(f"state root of height {header.height} does not match the state after the block")


def process_body(state: State, block: Block) -> State:
    """Records and chain head onto an overlay; a State only if the state root matches."""
    payloads = [get_record_payload(r.record) for r in block.body]
    process_body_root(state, block, payloads)
    overlay = Overlay(state)
    process_records(overlay, block.header.height, block.body, payloads)
    process_chain_head(overlay, block.header)
    new_state = commit_overlay(overlay, block.hash())
    process_state_root(new_state, block.header)
    return new_state


# ---------------------------------------------------------------------------- blocks

def process_proposal(state: State, block: Block) -> State:
    """Every rule but the commit: what a validator checks before it votes for a block."""
    process_header(state, block.header)
    process_proposer(state, block.header)
    process_header_signature(state, block)
    process_randomness(state, block.header)
    return process_body(state, block)


def process_block(state: State, block: Block, commit: Commit) -> State:
    """The state after a committed block; raises an InvalidBlock subclass and leaves
    `state` untouched if any rule fails."""
    process_header(state, block.header)
    process_proposer(state, block.header)
    process_header_signature(state, block)
    process_randomness(state, block.header)
    process_commit(state, block, commit)
    return process_body(state, block)


# ---------------------------------------------------------------------------- proposer side

def select_records(state: State, candidates: Sequence[SignedRecord]) -> tuple[SignedRecord, ...]:
    """The candidates that are valid in order on top of `state`, up to the block limit;
    the rest are skipped (a mempool holds stale and conflicting records)."""
    height = get_height(state) + 1
    block_overlay = Overlay(state)
    chosen: list[SignedRecord] = []
    for signed in candidates:
        if len(chosen) == state.genesis.params.max_records_per_block:
            break
        record_overlay = Overlay(block_overlay)
        try:
            process_record(record_overlay, height, signed, get_record_payload(signed.record))
        except InvalidBlock:
            continue
        record_overlay.merge_into_base()
        chosen.append(signed)
    return tuple(chosen)


def build_block(state: State, proposer_key: SigningKey, vrf_key: SigningKey, round_: int,
                timestamp_ms: int, records: Sequence[SignedRecord]) -> Block:
    """The block `proposer_key` proposes on top of `state`: VRF proof and randomness, body
    root, and the state root after the records (which must all be valid: see select_records)."""
    height = get_height(state) + 1
    proof = vrf.prove(vrf_key.seed, compute_vrf_input(state.chain_id, height, get_chain_info(state).randomness))
    body = tuple(records)
    payloads = [get_record_payload(r.record) for r in body]
    header = BlockHeader(
        chain_id=state.genesis.chain_id, height=height, round=round_, timestamp_ms=timestamp_ms,
        parent_hash=state.head_hash, proposer=proposer_key.public_key, vrf_proof=proof,
        randomness=compute_randomness(height, vrf.proof_to_hash(proof)), state_root=ZERO_HASH,
        body_root=compute_body_root(payloads, [r.signature for r in body]),
    )
    overlay = Overlay(state)
    process_records(overlay, height, body, payloads)
    process_chain_head(overlay, header)
    header = dataclasses.replace(header, state_root=commit_overlay(overlay, ZERO_HASH).root)
    return Block(header, proposer_key.sign(state.chain_id, KIND_BLOCK, encode(header)), body)


# ---------------------------------------------------------------------------- signing helpers

def sign_record(key: SigningKey, chain_id: bytes, record: object) -> SignedRecord:
    return SignedRecord(record, key.sign(chain_id, KIND_RECORD, get_record_payload(record)))


def sign_vote(key: SigningKey, chain_id: bytes, vote: Vote) -> SignedVote:
    kind = get_vote_kind(vote.kind)
    if kind is None:
        raise ValueError(f"unknown vote kind {vote.kind}")
    return SignedVote(vote, key.sign(chain_id, kind, encode(vote)))
