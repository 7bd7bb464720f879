"""Test helpers: deterministic keys, genesis, records, blocks and commits.

    chain = TestChain(n=4)                  # validators v0..v3, genesis, head state
    peer = make_key("peer-1")
    cb = chain.advance([chain.sign(peer, peer_join(peer, seq=1))])
    chain.state                             # the state after that block
    block = chain.build(records)            # a block not yet applied
    commit = chain.commit(block)            # precommits of a quorum (or of `signers`)
    chain.advance_to(20)                    # empty blocks up to a height
    chain.replay()                          # the state from genesis by process_block alone
    answer_challenge(chain, peer, cid, directory, torrent)   # the ProofResult a validator records

Keys are derived from labels, so two processes (a test and a subprocess it drives) that
use the same labels get the same chain.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chain.codec import encode
from chain.constants import KIND_BLOCK
from chain.crypto import SigningKey, sha256
from chain.genesis import get_genesis_state, get_max_faulty, make_genesis
from chain.proofs import compute_proof_digest, get_proof_verdict, make_proof_answer
from chain.state import State, get_chain_info, get_challenge, get_height
from chain.transition import (
    build_block,
    compute_body_root,
    get_proposer,
    get_quorum,
    get_record_payload,
    process_block,
    sign_record,
    sign_vote,
)
from chain.types import (
    CLAIM,
    PASS,
    PRECOMMIT,
    Block,
    Commit,
    CommitSig,
    CommittedBlock,
    Genesis,
    Holding,
    Params,
    PeerJoin,
    ProofResult,
    Publish,
    SignedRecord,
    ValidatorInfo,
    Vote,
)

GENESIS_TIME_MS = 1_700_000_000_000
CHAIN_ID = "cairn-test"


def make_key(label: str) -> SigningKey:
    return SigningKey(sha256(b"cairn-test-key/" + label.encode()))


@dataclass(frozen=True)
class TestValidator:
    key: SigningKey
    vrf_key: SigningKey
    info: ValidatorInfo


def make_validators(n: int, label: str = "v") -> list[TestValidator]:
    validators = []
    for i in range(n):
        key, vrf_key = make_key(f"{label}{i}"), make_key(f"{label}{i}/vrf")
        info = ValidatorInfo(key.public_key, vrf_key.public_key, f"127.0.0.1:{7000 + i}", f"{label}{i}")
        validators.append(TestValidator(key, vrf_key, info))
    return validators


def default_params(n: int) -> Params:
    """Params() with the challenge randomness mixed over f+1 blocks, as genesis requires."""
    return Params(randomness_mix_blocks=max(Params().randomness_mix_blocks, get_max_faulty(n) + 1))


def make_test_genesis(validators: Sequence[TestValidator], *, chain_id: str = CHAIN_ID, params: Params | None = None,
                      genesis_time_ms: int = GENESIS_TIME_MS, publishers: Sequence[bytes] = ()) -> Genesis:
    params = params if params is not None else default_params(len(validators))
    return make_genesis(chain_id, [v.info for v in validators], params, genesis_time_ms, publishers)


def make_commit(validators: Sequence[TestValidator], chain_id: bytes, height: int, round_: int, block_hash: bytes,
                signers: Sequence[int] | None = None) -> Commit:
    """Precommits by `signers` (indices; default: the first quorum)."""
    if signers is None:
        signers = range(get_quorum(len(validators)))
    sigs = []
    for i in sorted(signers):
        vote = Vote(PRECOMMIT, height, round_, block_hash, validators[i].key.public_key)
        sigs.append(CommitSig(i, sign_vote(validators[i].key, chain_id, vote).signature))
    return Commit(height, round_, block_hash, tuple(sigs))


# ---------------------------------------------------------------------------- records

def peer_join(key: SigningKey, seq: int = 1, *, capacity: int = 10**9, port: int = 6881) -> PeerJoin:
    return PeerJoin(key.public_key, f"127.0.0.1:{port}", f"127.0.0.1:{port + 1000}", capacity, seq)


def holding(key: SigningKey, collection: bytes, shard: int, seq: int, action: int = CLAIM) -> Holding:
    return Holding(key.public_key, collection, shard, action, seq)


def publish(key: SigningKey, torrent: bytes, seq: int = 1, *, name: str = "data", target: int = 3,
            seeders: tuple[str, ...] = ("127.0.0.1:6881",)) -> Publish:
    return Publish(key.public_key, name, torrent, target, seeders, seq)


def proof_result(key: SigningKey, challenge_id: bytes, verdict: int = PASS, digest: bytes = b"\x01" * 32) -> SignedRecord:
    """A ProofResult as a proposer puts it in a block: no author signature."""
    return SignedRecord(ProofResult(key.public_key, challenge_id, verdict, digest), b"")


def make_torrent(directory: Path, files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(torrent bytes, info_hash_v2) of a hybrid torrent over `files` written into `directory`."""
    from storage.collection import create_collection

    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    meta = create_collection(directory, piece_length=16384)
    return meta.torrent, meta.info_hash_v2


def answer_challenge(chain: "TestChain", key: SigningKey, challenge_id: bytes, directory: Path, torrent: bytes,
                     *, leaf: int | None = None) -> SignedRecord:
    """What validators record for `key`'s answer to an open challenge, proving `leaf` (default:
    the challenged one) from the files in `directory`: a real proof, verdict and digest."""
    from storage.collection import parse_torrent, shard_leaf_to_file_leaf
    from storage.merkle import BLOCK_SIZE
    from storage.proof import build_proof, read_piece

    challenge = get_challenge(chain.state, challenge_id)
    meta = parse_torrent(torrent, max_shard_bytes=chain.genesis.params.max_shard_bytes)
    shard = meta.shards[challenge.shard]
    leaf = challenge.leaf if leaf is None else leaf
    file_index, file_leaf = shard_leaf_to_file_leaf(meta, shard, leaf)
    piece = read_piece(directory / meta.files[file_index].path, file_leaf * BLOCK_SIZE // meta.piece_length, meta.piece_length)
    answer = make_proof_answer(key, chain.chain_id, challenge, build_proof(meta, shard, leaf, piece))
    verdict = get_proof_verdict(chain.chain_id, challenge, answer, meta, chain.height + 1)
    return SignedRecord(ProofResult(key.public_key, challenge_id, verdict, compute_proof_digest(answer)), b"")


# ---------------------------------------------------------------------------- chain

class TestChain:
    """A chain driven by in-process validators: build, commit and apply blocks."""

    __test__ = False  # not a pytest class

    def __init__(self, n: int = 4, *, params: Params | None = None, chain_id: str = CHAIN_ID,
                 publishers: Sequence[bytes] = (), label: str = "v") -> None:
        self.validators = make_validators(n, label)
        self.genesis = make_test_genesis(self.validators, chain_id=chain_id, params=params, publishers=publishers)
        self.state: State = get_genesis_state(self.genesis)
        self.blocks: list[CommittedBlock] = []

    @property
    def chain_id(self) -> bytes:
        return self.genesis.chain_id_bytes

    @property
    def height(self) -> int:
        return get_height(self.state)

    def proposer(self, round_: int = 0, state: State | None = None) -> TestValidator:
        state = state or self.state
        info = get_proposer(state, get_height(state) + 1, round_)
        return next(v for v in self.validators if v.info == info)

    def next_timestamp(self, state: State | None = None) -> int:
        return get_chain_info(state or self.state).timestamp_ms + self.genesis.params.block_interval_ms

    def sign(self, key: SigningKey, record: object) -> SignedRecord:
        return sign_record(key, self.chain_id, record)

    def build(self, records: Sequence[SignedRecord] = (), *, round_: int = 0, timestamp_ms: int | None = None,
              state: State | None = None) -> Block:
        state = state or self.state
        proposer = self.proposer(round_, state)
        ts = timestamp_ms if timestamp_ms is not None else self.next_timestamp(state)
        return build_block(state, proposer.key, proposer.vrf_key, round_, ts, records)

    def resign(self, block: Block, *, body: Sequence[SignedRecord] | None = None, **header_fields: object) -> Block:
        """`block` with header fields (and body, whose root is then recomputed) replaced,
        signed again by its proposer: for blocks that break exactly one later rule."""
        if body is not None:
            body = tuple(body)
            header_fields.setdefault("body_root", compute_body_root(
                [get_record_payload(r.record) for r in body], [r.signature for r in body]))
        header = dataclasses.replace(block.header, **header_fields)
        signer = next(v.key for v in self.validators if v.key.public_key == header.proposer)
        return Block(header, signer.sign(self.chain_id, KIND_BLOCK, encode(header)), block.body if body is None else body)

    def build_unchecked(self, records: Sequence[SignedRecord], *, round_: int = 0) -> Block:
        """A well-signed block carrying `records` even if they are invalid (build_block
        refuses those): its state root is that of an empty body."""
        return self.resign(self.build((), round_=round_), body=records)

    def commit(self, block: Block, signers: Sequence[int] | None = None, round_: int | None = None) -> Commit:
        round_ = block.header.round if round_ is None else round_
        return make_commit(self.validators, self.chain_id, block.header.height, round_, block.hash(), signers)

    def advance(self, records: Sequence[SignedRecord] = (), *, round_: int = 0) -> CommittedBlock:
        block = self.build(records, round_=round_)
        committed = CommittedBlock(block, self.commit(block))
        self.state = process_block(self.state, block, committed.commit)
        self.blocks.append(committed)
        return committed

    def advance_to(self, height: int) -> None:
        """Empty blocks until the head is at `height`."""
        while self.height < height:
            self.advance()

    def replay(self) -> State:
        """The state after every block so far, applied from genesis by process_block alone."""
        state = get_genesis_state(self.genesis)
        for committed in self.blocks:
            state = process_block(state, committed.block, committed.commit)
        return state
