"""The state transition: `process_block(state, block, commit) -> State`.

A block is valid if and only if every process_* step below passes, in this order; each
raises its own InvalidBlock subclass (chain/errors.py). The body's effects are written to
an Overlay and only become a State when everything passed, so an invalid block leaves
the state it was given untouched.

Consensus checks a proposal before voting with `process_proposal` (every rule but the
commit, which does not exist yet); sync and replay use `process_block`.

After the records, the storage-proof rules run on every block (`process_block_effects`),
so every node derives the same challenges, verdicts and statuses from blocks alone:
claims of the previous block are challenged, epoch challenges are drawn at an epoch
boundary, unanswered challenges due at this height are retried or become a MISS, and
peers whose grace period ran out are excluded. Each costs what changed, except the epoch
draw, which is proportional to the holdings and runs once every epoch_blocks.
"""
from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence

from chain import vrf
from chain.challenges import (
    Challenge,
    HeldShard,
    PeerShards,
    compute_challenge_seed,
    get_claim_challenge,
    get_epoch_challenges,
    get_retry_challenge,
    get_seed_heights,
    has_retries_left,
    is_epoch_boundary,
    is_past_deadline,
)
from chain.codec import encode, get_encoder
from chain.constants import (
    DOMAIN_BODY_LEAF,
    DOMAIN_BODY_NODE,
    DOMAIN_PROPOSER,
    DOMAIN_RANDOMNESS,
    DOMAIN_VRF_INPUT,
    KIND_BLOCK,
    KIND_PRECOMMIT,
    KIND_PREVOTE,
    HOLDER_PEER_BUCKETS,
    KIND_RECORD,
    MAX_TIMESTAMP_STEP_MS,
    RANDOMNESS_HISTORY_BLOCKS,
)
from chain.crypto import SigningKey, compute_signing_message, is_valid_signature, is_valid_signed_message, new_sha256, sha256
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
    ChallengeError,
    ChallengeExpired,
    DuplicateCollection,
    InvalidBlock,
    InvalidHeader,
    MissRecordNotAllowed,
    PeerNotActive,
    PublisherNotAllowed,
    StaleSeq,
    TooManyRecords,
    UnknownChallenge,
    UnknownPeer,
    UnknownShard,
    WrongChallengePeer,
    WrongProposer,
)
from chain.genesis import is_valid_address
from chain.reputation import Standing, get_peer_status_after_verdict, get_standing_at_height, is_final_status
from chain.state import (
    ACTIVE,
    EXCLUDED,
    KEY_CHAIN,
    LEFT,
    SUSPENDED,
    ChainInfo,
    ChallengeIds,
    Collection,
    EvidenceEntry,
    Holder,
    OpenChallenge,
    Overlay,
    PendingClaim,
    PendingClaims,
    Peer,
    PeerHoldings,
    PeerKeys,
    ShardHolders,
    ShardRef,
    State,
    View,
    commit_overlay,
    get_chain_info,
    get_challenge,
    get_challenge_entry,
    get_challenge_from_entry,
    get_challenge_key,
    get_claims_key,
    get_collection,
    get_collection_key,
    get_deadline_ids,
    get_deadline_key,
    get_entry_from_challenge,
    get_evidence_key,
    get_grace_key,
    get_grace_peers,
    get_height,
    get_holder_bucket,
    get_holder_peers,
    get_holder_peers_key,
    get_holdings_key,
    get_last_seq,
    get_open_challenges_for_peer,
    get_peer,
    get_peer_challenge_ids,
    get_peer_challenges_key,
    get_peer_holdings,
    get_peer_key,
    get_pending_claims,
    get_randomness,
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
from storage.collection import leaf_count, parse_torrent
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


encode_record = get_encoder(Record)  # encode(·, Record), compiled once: every record pays for it


def get_record_payload(record: object) -> bytes:
    """What a record's author signs: the tagged encoding of the record."""
    return encode_record(record)


def compute_body_padding_hashes(heights: int) -> tuple[bytes, ...]:
    """The hash of a body subtree of padding alone, at each height: a zero leaf, then its parents."""
    hashes = [ZERO_HASH]
    for _ in range(heights):
        hashes.append(sha256(DOMAIN_BODY_NODE + hashes[-1] + hashes[-1]))
    return tuple(hashes)


BODY_PADDING_HASHES = compute_body_padding_hashes(64)


def compute_body_root(payloads: Sequence[bytes], signatures: Sequence[bytes]) -> bytes:
    """Binary merkle tree over H(DOMAIN_BODY_LEAF || payload || signature), zero-padded to
    a power of two, bound to the record count (so padding cannot pass for records).

    A subtree of padding alone has a fixed hash (BODY_PADDING_HASHES), so only the nodes
    over at least one record are hashed: a level of odd length takes the padding hash of
    its height as the last node's partner, which is what the zero leaves would give."""
    level = [new_sha256(DOMAIN_BODY_LEAF + p + s).digest() for p, s in zip(payloads, signatures)]
    count = len(level)
    if not level:
        level = [ZERO_HASH]
    height = 0
    while len(level) > 1:
        if len(level) % 2:
            level.append(BODY_PADDING_HASHES[height])
        pairs = iter(level)
        level = [new_sha256(DOMAIN_BODY_NODE + left + right).digest() for left, right in zip(pairs, pairs)]
        height += 1
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


# ---------------------------------------------------------------------------- state helpers shared by several rules

def put_or_delete(overlay: Overlay, key: bytes, value: object | None) -> None:
    # Empty containers are deleted rather than stored, so the state has one form per content.
    if value is None:
        if overlay.get(key) is not None:
            overlay.delete(key)
    else:
        overlay.put(key, value)


def insert_sorted(items: tuple, item: object, key: Callable = lambda x: x) -> tuple:
    """`items` (sorted by `key`, distinct) with `item` in its place; unchanged if already there."""
    i = bisect.bisect_left(items, key(item), key=key)
    return items if i < len(items) and items[i] == item else items[:i] + (item,) + items[i:]


def remove_sorted(items: tuple, item: object, key: Callable = lambda x: x) -> tuple:
    """`items` (sorted by `key`, distinct) without `item`."""
    i = bisect.bisect_left(items, key(item), key=key)
    return items[:i] + items[i + 1:] if i < len(items) and items[i] == item else items


def get_ref_order(ref: ShardRef) -> tuple[bytes, int]:
    return ref.collection, ref.shard


def put_peer_keys(overlay: Overlay, key: bytes, peers: tuple[bytes, ...]) -> None:
    put_or_delete(overlay, key, PeerKeys(peers) if peers else None)


def put_challenge_ids(overlay: Overlay, key: bytes, ids: tuple[bytes, ...]) -> None:
    put_or_delete(overlay, key, ChallengeIds(ids) if ids else None)


def put_pending_claims(overlay: Overlay, height: int, claims: tuple[PendingClaim, ...]) -> None:
    put_or_delete(overlay, get_claims_key(height), PendingClaims(claims) if claims else None)


def get_pending_claim_order(claim: PendingClaim) -> tuple[bytes, bytes, int]:
    return claim.peer, claim.collection, claim.shard


def get_holder(view: View, peer: bytes, ref: ShardRef) -> Holder | None:
    for holder in get_shard_holders(view, ref.collection, ref.shard).holders:
        if holder.peer == peer:
            return holder
    return None


# ---------------------------------------------------------------------------- challenges (helpers of several rules)

def get_challenge_seed(view: View, height: int) -> bytes:
    """The seed of challenges issued at `height`: the randomness of the blocks before it,
    all final (a block is final when decided), never this block's own."""
    heights = get_seed_heights(height, view.genesis.params.randomness_mix_blocks)
    window = tuple(get_randomness(view, h) for h in heights)
    if any(r is None for r in window):
        raise ChallengeError(f"randomness_mix_blocks reaches past the {RANDOMNESS_HISTORY_BLOCKS} blocks kept")
    return compute_challenge_seed(window)


def issue_challenges(overlay: Overlay, challenges: Sequence[Challenge]) -> None:
    """Open `challenges`, listing each under its peer and under its deadline."""
    by_peer: dict[bytes, list[bytes]] = {}
    by_deadline: dict[int, list[bytes]] = {}
    for challenge in challenges:
        overlay.put(get_challenge_key(challenge.challenge_id), get_entry_from_challenge(challenge))
        by_peer.setdefault(challenge.peer, []).append(challenge.challenge_id)
        by_deadline.setdefault(challenge.deadline_height, []).append(challenge.challenge_id)
    # One write per peer and per deadline: a whole epoch of challenges is one list each.
    for peer in sorted(by_peer):
        ids = get_peer_challenge_ids(overlay, peer)
        put_challenge_ids(overlay, get_peer_challenges_key(peer), tuple(sorted(ids + tuple(by_peer[peer]))))
    for deadline in sorted(by_deadline):
        ids = get_deadline_ids(overlay, deadline)
        put_challenge_ids(overlay, get_deadline_key(deadline), tuple(sorted(ids + tuple(by_deadline[deadline]))))


def close_challenge(overlay: Overlay, challenge_id: bytes, entry: OpenChallenge) -> None:
    # The deadline list keeps the id: rewriting a list that may hold a whole epoch's
    # challenges for every answer would cost more than skipping closed ids at expiry.
    overlay.delete(get_challenge_key(challenge_id))
    ids = remove_sorted(get_peer_challenge_ids(overlay, entry.peer), challenge_id)
    put_challenge_ids(overlay, get_peer_challenges_key(entry.peer), ids)


def get_open_challenges_on(view: View, peer: bytes, ref: ShardRef) -> tuple[tuple[bytes, OpenChallenge], ...]:
    return tuple((cid, entry) for cid, entry in get_open_challenges_for_peer(view, peer)
                 if (entry.collection, entry.shard) == (ref.collection, ref.shard))


def has_open_challenge(view: View, challenge: Challenge) -> bool:
    return bool(get_open_challenges_on(view, challenge.peer, ShardRef(challenge.collection, challenge.shard)))


# ---------------------------------------------------------------------------- holdings (helpers of several rules)

def add_holding(overlay: Overlay, height: int, peer: bytes, ref: ShardRef) -> None:
    """A new claim: a holder not yet verified, and a pending claim challenged next block."""
    holders = list(get_shard_holders(overlay, ref.collection, ref.shard).holders)
    bisect.insort(holders, Holder(peer, height, 0), key=lambda h: h.peer)
    overlay.put(get_shard_key(ref.collection, ref.shard), ShardHolders(tuple(holders)))
    refs = get_peer_holdings(overlay, peer).shards
    if not refs:
        bucket = get_holder_bucket(peer)
        put_peer_keys(overlay, get_holder_peers_key(bucket), insert_sorted(get_holder_peers(overlay, bucket), peer))
    overlay.put(get_holdings_key(peer), PeerHoldings(insert_sorted(refs, ref, get_ref_order)))
    claim = PendingClaim(peer, ref.collection, ref.shard)
    put_pending_claims(overlay, height, insert_sorted(get_pending_claims(overlay, height), claim, get_pending_claim_order))


def remove_pending_claim(overlay: Overlay, holder: Holder, ref: ShardRef) -> None:
    # Only a claim not yet challenged is still listed (the list goes once its block + 1 is done).
    claim = PendingClaim(holder.peer, ref.collection, ref.shard)
    claims = get_pending_claims(overlay, holder.claimed_height)
    if claim in claims:
        put_pending_claims(overlay, holder.claimed_height, remove_sorted(claims, claim, get_pending_claim_order))


def remove_holding(overlay: Overlay, peer: bytes, ref: ShardRef) -> None:
    """The peer no longer holds the shard: its holder entry, pending claim and open challenges on it go."""
    holder = get_holder(overlay, peer, ref)
    holders = get_shard_holders(overlay, ref.collection, ref.shard).holders
    remaining = tuple(h for h in holders if h.peer != peer)
    put_or_delete(overlay, get_shard_key(ref.collection, ref.shard), ShardHolders(remaining) if remaining else None)
    refs = remove_sorted(get_peer_holdings(overlay, peer).shards, ref, get_ref_order)
    put_or_delete(overlay, get_holdings_key(peer), PeerHoldings(refs) if refs else None)
    if not refs:
        bucket = get_holder_bucket(peer)
        put_peer_keys(overlay, get_holder_peers_key(bucket), remove_sorted(get_holder_peers(overlay, bucket), peer))
    if holder.verified_height == 0:
        remove_pending_claim(overlay, holder, ref)
    for cid, entry in get_open_challenges_on(overlay, peer, ref):
        close_challenge(overlay, cid, entry)


def remove_all_holdings(overlay: Overlay, peer: bytes) -> None:
    for ref in get_peer_holdings(overlay, peer).shards:
        remove_holding(overlay, peer, ref)


def mark_verified(overlay: Overlay, height: int, peer: bytes, ref: ShardRef) -> None:
    holders = tuple(dataclasses.replace(h, verified_height=height) if h.peer == peer else h
                    for h in get_shard_holders(overlay, ref.collection, ref.shard).holders)
    overlay.put(get_shard_key(ref.collection, ref.shard), ShardHolders(holders))


# ---------------------------------------------------------------------------- standing (helpers of several rules)

def get_standing(peer: Peer) -> Standing:
    return Standing(peer.status, peer.status_height, peer.reputation_ppm)


def put_standing(overlay: Overlay, peer_key: bytes, peer: Peer, standing: Standing) -> None:
    """Write a peer's new standing and what entering it implies."""
    if standing.status == SUSPENDED and peer.status != SUSPENDED:
        # Listed under the height its grace runs out, so exclusion needs no scan of peers.
        grace_end = standing.status_height + overlay.genesis.params.grace_period_blocks
        put_peer_keys(overlay, get_grace_key(grace_end), insert_sorted(get_grace_peers(overlay, grace_end), peer_key))
    if standing.status == EXCLUDED and peer.status != EXCLUDED:
        # An excluded peer's copies stop counting at once: they leave the shard holders
        # (so targets re-create them) and their challenges close with them.
        remove_all_holdings(overlay, peer_key)
    overlay.put(get_peer_key(peer_key), dataclasses.replace(
        peer, status=standing.status, status_height=standing.status_height, reputation_ppm=standing.reputation_ppm))


def get_counted_verdict(peer: Peer, verdict: int) -> Peer:
    """The peer with one more verdict in its proof counters (shown by the explorer)."""
    if verdict == PASS:
        return dataclasses.replace(peer, proofs_passed=peer.proofs_passed + 1)
    if verdict == MISS:
        return dataclasses.replace(peer, proofs_missed=peer.proofs_missed + 1)
    return dataclasses.replace(peer, proofs_failed=peer.proofs_failed + 1)


def apply_verdict(overlay: Overlay, height: int, peer_key: bytes, verdict: int) -> Standing:
    """A final verdict on one of the peer's holdings: counters, reputation and status."""
    peer = get_counted_verdict(get_peer(overlay, peer_key), verdict)
    effect = get_peer_status_after_verdict(get_standing(peer), verdict, height, overlay.genesis.params)
    put_standing(overlay, peer_key, peer, effect.standing)
    return effect.standing


# ---------------------------------------------------------------------------- records

def compute_record_signing_message(chain_id: bytes, signed: SignedRecord, payload: bytes) -> bytes | None:
    """What an authored record's signature is over (its payload, kind `record`); None for a
    record without an author."""
    if get_record_author(signed.record) is None:
        return None
    return compute_signing_message(chain_id, KIND_RECORD, payload)


def is_valid_record_signature(signed: SignedRecord, message: bytes | None) -> bool:
    """The author's signature over `message` (compute_record_signing_message), or, for a
    record without an author, no signature at all. It reads no state."""
    author = get_record_author(signed.record)
    if author is None:
        return not signed.signature
    return is_valid_signed_message(author, signed.signature, message)


def process_record_signature(view: View, signed: SignedRecord, payload: bytes) -> None:
    if not is_valid_record_signature(signed, compute_record_signing_message(view.chain_id, signed, payload)):
        author = get_record_author(signed.record)
        if author is None:
            raise BadRecordSignature(f"{type(signed.record).__name__} carries no author signature")
        raise BadRecordSignature(f"{type(signed.record).__name__} not signed by {author.hex()[:16]}")


def check_seq(record: object, last: int) -> None:
    if record.seq <= last:
        raise StaleSeq(f"seq {record.seq} of {get_record_author(record).hex()[:16]} is not above {last}")


def process_record_seq(overlay: Overlay, record: object) -> None:
    """Check the author's seq and record it where get_last_seq reads it.

    A PeerJoin is left to process_peer_join, which reads the same entries anyway, checks
    its seq before anything else, and writes it into the Peer it creates or updates: the
    peer key is read once and written once, and no seq key is made for a peer."""
    if isinstance(record, PeerJoin):
        return
    author = get_record_author(record)
    if author is None:
        return
    peer = get_peer(overlay, author)
    if peer is not None:
        check_seq(record, peer.seq)
        overlay.put(get_peer_key(author), dataclasses.replace(peer, seq=record.seq))
    else:
        check_seq(record, get_last_seq(overlay, author))
        overlay.put(get_seq_key(author), record.seq)


def process_peer_join(overlay: Overlay, height: int, record: PeerJoin) -> None:
    peer = get_peer(overlay, record.peer)
    # The seq rule first (process_record_seq leaves PeerJoin to here): a registered peer's
    # last seq is in its Peer, an unregistered author's under its seq key (get_last_seq).
    seq_key = get_seq_key(record.peer)
    unregistered_seq = overlay.get(seq_key) if peer is None else None
    check_seq(record, peer.seq if peer is not None else unregistered_seq or 0)
    if not (is_valid_address(record.bt_address) and is_valid_address(record.api_address)) or record.capacity < 0:
        raise BadPeerRecord("PeerJoin needs host:port addresses and a non-negative capacity")
    if peer is None:
        # The rank key is fixed at first registration, from randomness the peer could not
        # know when it made its key, so nobody can grind a key to capture chosen shards.
        peer = Peer(record.bt_address, record.api_address, record.capacity, ACTIVE, height,
                    overlay.genesis.params.reputation_start_ppm, height, get_chain_info(overlay).randomness,
                    seq=record.seq)
        # From now on the seq lives in the Peer: an earlier seq key (the author published
        # before joining) would be dead weight in the state, so it goes.
        if unregistered_seq is not None:
            overlay.delete(seq_key)
    elif peer.status == EXCLUDED:
        raise PeerNotActive("an excluded peer cannot join again")
    elif peer.status == LEFT:
        peer = dataclasses.replace(peer, bt_address=record.bt_address, api_address=record.api_address,
                                   capacity=record.capacity, status=ACTIVE, status_height=height, seq=record.seq)
    else:
        peer = dataclasses.replace(peer, bt_address=record.bt_address, api_address=record.api_address,
                                   capacity=record.capacity, seq=record.seq)
    overlay.put(get_peer_key(record.peer), peer)


def process_peer_leave(overlay: Overlay, height: int, record: PeerLeave) -> None:
    peer = get_peer(overlay, record.peer)
    if peer is None:
        raise UnknownPeer(f"peer {record.peer.hex()[:16]} is not registered")
    if peer.status not in (ACTIVE, SUSPENDED):
        raise PeerNotActive(f"peer {record.peer.hex()[:16]} has already left or is excluded")
    # A peer that leaves stops counting as a holder at once, so its shards get re-replicated;
    # its open challenges close with its holdings (leaving is not a miss).
    remove_all_holdings(overlay, record.peer)
    overlay.put(get_peer_key(record.peer), dataclasses.replace(peer, status=LEFT, status_height=height))


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
    held = get_holder(overlay, record.peer, ref) is not None
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


def process_proof_result_shape(record: ProofResult) -> None:
    if record.verdict == MISS:
        # A miss is the absence of an answer: every node derives it at the deadline, so no
        # proposer can invent one against a peer that did answer.
        raise MissRecordNotAllowed("MISS is derived at the deadline, never recorded")
    if record.verdict not in (PASS, INVALID):
        raise BadProofResult(f"unknown verdict {record.verdict}")
    if len(record.proof_digest) != 32:
        raise BadProofResult("PASS and INVALID carry the 32-byte digest of the answer")


def get_answered_challenge(view: View, height: int, record: ProofResult) -> OpenChallenge:
    """The open challenge a result answers: open, the result's peer's, and still in time."""
    entry = get_challenge_entry(view, record.challenge_id)
    if entry is None:
        raise UnknownChallenge(f"no open challenge {record.challenge_id.hex()[:16]} (never issued, answered, dropped or expired)")
    if entry.peer != record.peer:
        raise WrongChallengePeer(f"challenge {record.challenge_id.hex()[:16]} is not {record.peer.hex()[:16]}'s")
    if is_past_deadline(get_challenge_from_entry(record.challenge_id, entry), height):
        raise ChallengeExpired(f"challenge {record.challenge_id.hex()[:16]} was due at height {entry.deadline_height}")
    return entry


def process_proof_result(overlay: Overlay, height: int, record: ProofResult) -> None:
    """A validator-checked verdict (the proof itself was verified against the proposal's
    sidecar before anyone voted): PASS verifies the holding, INVALID excludes the peer."""
    process_proof_result_shape(record)
    entry = get_answered_challenge(overlay, height, record)
    ref = ShardRef(entry.collection, entry.shard)
    close_challenge(overlay, record.challenge_id, entry)
    if record.verdict == INVALID:
        # A signed wrong proof is evidence of lying: the holding goes whatever else happens.
        remove_holding(overlay, record.peer, ref)
    standing = apply_verdict(overlay, height, record.peer, record.verdict)
    if record.verdict == PASS and not is_final_status(standing.status):
        # A claim becomes verified; a re-proof refreshes it (the audit window counts from here).
        mark_verified(overlay, height, record.peer, ref)


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
    process_record_rules(overlay, height, signed.record)


def process_record_rules(overlay: Overlay, height: int, record: object) -> None:
    """Every rule of a record but its signature: the seq, then its kind's rule."""
    process_record_seq(overlay, record)
    RECORD_PROCESSORS[type(record)](overlay, height, record)


def get_first_bad_signature(view: View, body: Sequence[SignedRecord], payloads: Sequence[bytes]) -> int:
    """The index of the first record whose signature fails, or len(body). The signing
    messages are all computed first, then checked in one run (see process_records)."""
    messages = [compute_record_signing_message(view.chain_id, signed, payload) for signed, payload in zip(body, payloads)]
    for i, (signed, message) in enumerate(zip(body, messages)):
        if not is_valid_record_signature(signed, message):
            return i
    return len(body)


def process_records(overlay: Overlay, height: int, body: Sequence[SignedRecord], payloads: Sequence[bytes]) -> None:
    """process_record on each record in order, with the same first failure, but the
    signatures checked first in one run: a signature depends on its record alone, and
    run back to back the checks are faster (the crypto's tables stay in the CPU caches)
    than interleaved with the state work. A bad signature is raised at its record, after
    the records before it (whose own failures come first)."""
    first_bad = get_first_bad_signature(overlay, body, payloads)
    for signed in body[:first_bad]:
        process_record_rules(overlay, height, signed.record)
    if first_bad < len(body):
        process_record_signature(overlay, body[first_bad], payloads[first_bad])


# ---------------------------------------------------------------------------- challenges, verdicts, standing

def get_claim_challenge_of(view: View, seed: bytes, height: int, claim: PendingClaim) -> Challenge:
    shard = get_collection(view, claim.collection).shards[claim.shard]
    return get_claim_challenge(seed, height, claim.peer, claim.collection, claim.shard, leaf_count(shard),
                               view.genesis.params.proof_deadline_blocks)


def process_claim_challenges(overlay: Overlay, height: int) -> None:
    """Claims of the previous block are challenged now, from a seed whose window ends at
    the claim's block: the claimant could not know its leaf when it signed the claim."""
    claims = get_pending_claims(overlay, height - 1)
    if not claims:
        return
    seed = get_challenge_seed(overlay, height)
    issue_challenges(overlay, tuple(get_claim_challenge_of(overlay, seed, height, c) for c in claims))
    put_pending_claims(overlay, height - 1, ())


def get_held_shard(view: View, ref: ShardRef) -> HeldShard:
    return HeldShard(ref.collection, ref.shard, leaf_count(get_collection(view, ref.collection).shards[ref.shard]))


def get_challengeable_holdings(view: View, height: int) -> tuple[PeerShards, ...]:
    """Holdings of ACTIVE and SUSPENDED peers (a suspended peer comes back only by
    answering), in key order; a claim of this very block waits for its own claim challenge."""
    claimed_now = {(c.peer, c.collection, c.shard) for c in get_pending_claims(view, height)}
    holdings = []
    for bucket in range(HOLDER_PEER_BUCKETS):
        for peer_key in get_holder_peers(view, bucket):
            if get_peer(view, peer_key).status not in (ACTIVE, SUSPENDED):
                continue
            shards = tuple(get_held_shard(view, ref) for ref in get_peer_holdings(view, peer_key).shards
                           if (peer_key, ref.collection, ref.shard) not in claimed_now)
            if shards:
                holdings.append(PeerShards(peer_key, shards))
    return tuple(holdings)


def process_epoch_challenges(overlay: Overlay, height: int) -> None:
    """At an epoch boundary, draw the epoch's challenges over every challengeable holding;
    a holding that still has an open challenge (a claim's, or a retry) is not asked twice."""
    params = overlay.genesis.params
    if not is_epoch_boundary(height, params.epoch_blocks):
        return
    holdings = get_challengeable_holdings(overlay, height)
    if not holdings:
        return
    challenges = get_epoch_challenges(get_challenge_seed(overlay, height), height, holdings, params)
    issue_challenges(overlay, tuple(c for c in challenges if not has_open_challenge(overlay, c)))


def process_expired_challenge(overlay: Overlay, height: int, challenge: Challenge) -> Challenge | None:
    """Close a challenge unanswered at its deadline; its retry on the same leaf, or None
    once the retries are used up and the MISS verdict has been applied."""
    params = overlay.genesis.params
    close_challenge(overlay, challenge.challenge_id, get_entry_from_challenge(challenge))
    if has_retries_left(challenge, params.proof_retries):
        return get_retry_challenge(challenge, height, params.proof_deadline_blocks)
    apply_verdict(overlay, height, challenge.peer, MISS)
    return None


def process_expired_challenges(overlay: Overlay, height: int) -> None:
    """Challenges due at this height that no record of this block (or before) answered."""
    retries = []
    for cid in get_deadline_ids(overlay, height):
        challenge = get_challenge(overlay, cid)
        if challenge is None:
            continue  # answered, or closed with its holding
        retry = process_expired_challenge(overlay, height, challenge)
        if retry is not None:
            retries.append(retry)
    # A MISS later in this loop may have excluded a peer and dropped its holdings: only
    # holdings that still exist are asked again.
    issue_challenges(overlay, tuple(r for r in retries
                                    if get_holder(overlay, r.peer, ShardRef(r.collection, r.shard)) is not None))
    put_challenge_ids(overlay, get_deadline_key(height), ())


def process_peer_standing(overlay: Overlay, height: int) -> None:
    """Peers whose grace period ends here and who are still suspended are excluded."""
    params = overlay.genesis.params
    for peer_key in get_grace_peers(overlay, height):
        peer = get_peer(overlay, peer_key)
        # A peer that answered back to active, left, or was suspended again later is not due.
        standing = get_standing_at_height(get_standing(peer), height, params)
        if standing != get_standing(peer):
            put_standing(overlay, peer_key, peer, standing)
    put_peer_keys(overlay, get_grace_key(height), ())


# ---------------------------------------------------------------------------- the body as a whole

def process_chain_head(overlay: Overlay, header: BlockHeader) -> None:
    overlay.put(KEY_CHAIN, ChainInfo(header.height, header.timestamp_ms, header.randomness))
    overlay.put(get_randomness_key(header.height), header.randomness)
    if header.height >= RANDOMNESS_HISTORY_BLOCKS:
        overlay.delete(get_randomness_key(header.height - RANDOMNESS_HISTORY_BLOCKS))


def process_block_effects(overlay: Overlay, header: BlockHeader, body: Sequence[SignedRecord],
                          payloads: Sequence[bytes]) -> None:
    """Everything a block changes, in this order (build_block and process_body share it):
    the records; then the challenge rules, which see the records' effects: claims of the
    previous block are challenged, at an epoch boundary the epoch is drawn (skipping
    holdings already challenged), challenges due now and unanswered are retried or missed,
    peers whose grace ran out are excluded; last the chain head and randomness history."""
    process_records(overlay, header.height, body, payloads)
    process_claim_challenges(overlay, header.height)
    process_epoch_challenges(overlay, header.height)
    process_expired_challenges(overlay, header.height)
    process_peer_standing(overlay, header.height)
    process_chain_head(overlay, header)


def process_state_root(new_state: State, header: BlockHeader) -> None:
    if new_state.root != header.state_root:
        raise BadStateRoot(f"state root of height {header.height} does not match the state after the block")


def process_body(state: State, block: Block) -> State:
    """Records and chain head onto an overlay; a State only if the state root matches."""
    payloads = [get_record_payload(r.record) for r in block.body]
    process_body_root(state, block, payloads)
    overlay = Overlay(state)
    process_block_effects(overlay, block.header, block.body, payloads)
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
    process_block_effects(overlay, header, body, payloads)
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
