"""Proof answers on real collections: honest answers pass, signed lies are INVALID, other
peers' answers are refused outright, late answers MISS, and the digest is stable."""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from chain.challenges import Challenge, HeldShard, PeerShards, compute_challenge_seed, get_epoch_challenges
from chain.codec import decode, encode
from chain.constants import KIND_PROOF
from chain.crypto import SigningKey, sha256
from chain.errors import BadProofSignature, InvalidRecord, UnknownChallenge, WrongCollectionMeta
from chain.proofs import (
    ProofAnswer,
    ProofStatement,
    compute_proof_digest,
    get_proof_verdict,
    make_proof_answer,
)
from chain.types import INVALID, MISS, PASS, Params
from storage.collection import CollectionMeta, Shard, create_collection, leaf_count, shard_leaf_to_file_leaf
from storage.merkle import BLOCK_SIZE
from storage.proof import Proof, build_proof, read_piece

CHAIN = b"cairn-test"
PL = 32 * 1024
Setup = tuple[Path, CollectionMeta, Shard, dict[bytes, Challenge]]
HONEST = SigningKey(bytes([1]) * 32)
CHEATER = SigningKey(bytes([2]) * 32)


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CollectionMeta]:
    root = tmp_path_factory.mktemp("proofs") / "c"
    root.mkdir()
    (root / "big").write_bytes(random.Random(1).randbytes(5 * PL + 5000))    # 3 shards of 2 pieces
    (root / "small").write_bytes(random.Random(2).randbytes(3 * BLOCK_SIZE))
    return root, create_collection(root, piece_length=PL, max_shard_bytes=2 * PL)


def prove(root: Path, meta: CollectionMeta, shard: Shard, leaf: int) -> Proof:
    file_index, file_leaf = shard_leaf_to_file_leaf(meta, shard, leaf)
    piece = file_leaf * BLOCK_SIZE // meta.piece_length
    return build_proof(meta, shard, leaf, read_piece(root / meta.files[file_index].path, piece, meta.piece_length))


def challenges_on(meta: CollectionMeta, shard: Shard) -> dict[bytes, Challenge]:
    """The epoch challenges of the honest peer and the cheater, both holding `shard`."""
    held = (HeldShard(meta.info_hash_v2, shard.index, leaf_count(shard)),)
    holdings = (PeerShards(HONEST.public_key, held), PeerShards(CHEATER.public_key, held))
    seed = compute_challenge_seed((sha256(b"r1"), sha256(b"r2")))
    return {c.peer: c for c in get_epoch_challenges(seed, 100, holdings, Params())}


def sign(key: SigningKey, challenge_id: bytes, proof: bytes) -> ProofAnswer:
    signature = key.sign(CHAIN, KIND_PROOF, encode(ProofStatement(key.public_key, challenge_id, proof)))
    return ProofAnswer(key.public_key, challenge_id, proof, signature)


@pytest.fixture(scope="module")
def setup(collection: tuple[Path, CollectionMeta]) -> Setup:
    root, meta = collection
    shard = meta.shards[1]
    assert leaf_count(shard) == 4
    found = challenges_on(meta, shard)
    assert found[HONEST.public_key].leaf != found[CHEATER.public_key].leaf
    return root, meta, shard, found


def test_an_honest_answer_passes_up_to_its_deadline(setup: Setup) -> None:
    root, meta, shard, found = setup
    for challenge in found.values():
        key = HONEST if challenge.peer == HONEST.public_key else CHEATER
        answer = make_proof_answer(key, CHAIN, challenge, prove(root, meta, shard, challenge.leaf))
        assert get_proof_verdict(CHAIN, challenge, answer, meta, challenge.issued_height) == PASS
        assert get_proof_verdict(CHAIN, challenge, answer, meta, challenge.deadline_height) == PASS


def test_every_shard_and_leaf_of_a_claim_passes(collection: tuple[Path, CollectionMeta]) -> None:
    root, meta = collection
    for shard in meta.shards:
        for leaf in range(leaf_count(shard)):
            challenge = Challenge(sha256(bytes([shard.index, leaf])), HONEST.public_key, meta.info_hash_v2,
                                  shard.index, leaf, 10, 15, 0)
            answer = make_proof_answer(HONEST, CHAIN, challenge, prove(root, meta, shard, leaf))
            assert get_proof_verdict(CHAIN, challenge, answer, meta, 12) == PASS


def test_a_late_answer_is_a_miss(setup: Setup) -> None:
    root, meta, shard, found = setup
    challenge = found[HONEST.public_key]
    answer = make_proof_answer(HONEST, CHAIN, challenge, prove(root, meta, shard, challenge.leaf))
    assert get_proof_verdict(CHAIN, challenge, answer, meta, challenge.deadline_height + 1) == MISS


def test_corrupted_data_is_invalid(setup: Setup) -> None:
    root, meta, shard, found = setup
    challenge = found[HONEST.public_key]
    proof = prove(root, meta, shard, challenge.leaf)
    flipped = bytes([proof.data[0] ^ 1]) + proof.data[1:]
    answer = make_proof_answer(HONEST, CHAIN, challenge, replace(proof, data=flipped))
    assert get_proof_verdict(CHAIN, challenge, answer, meta, challenge.issued_height + 1) == INVALID
    bad_path = replace(proof, path=(b"\x00" * 32,) + proof.path[1:])
    answer = make_proof_answer(HONEST, CHAIN, challenge, bad_path)
    assert get_proof_verdict(CHAIN, challenge, answer, meta, challenge.issued_height + 1) == INVALID


def test_a_proof_of_the_wrong_leaf_or_shard_is_invalid(setup: Setup) -> None:
    root, meta, shard, found = setup
    challenge = found[HONEST.public_key]
    other_leaf = (challenge.leaf + 1) % leaf_count(shard)
    answer = make_proof_answer(HONEST, CHAIN, challenge, prove(root, meta, shard, other_leaf))
    assert get_proof_verdict(CHAIN, challenge, answer, meta, 101) == INVALID
    other_shard = meta.shards[0]
    answer = make_proof_answer(HONEST, CHAIN, challenge, prove(root, meta, other_shard, challenge.leaf))
    assert get_proof_verdict(CHAIN, challenge, answer, meta, 101) == INVALID
    small = next(s for s in meta.shards if meta.files[s.file_index].path == "small")
    answer = make_proof_answer(HONEST, CHAIN, challenge, prove(root, meta, small, 0))
    assert get_proof_verdict(CHAIN, challenge, answer, meta, 101) == INVALID


def test_signed_garbage_is_invalid_even_when_late(setup: Setup) -> None:
    _, meta, _, found = setup
    challenge = found[HONEST.public_key]
    for junk in (b"", b"\x93\x00", b"not a proof at all"):
        answer = sign(HONEST, challenge.challenge_id, junk)
        assert get_proof_verdict(CHAIN, challenge, answer, meta, challenge.deadline_height + 50) == INVALID


def test_another_peers_answer_replayed_is_refused(setup: Setup) -> None:
    root, meta, shard, found = setup
    honest_challenge, cheater_challenge = found[HONEST.public_key], found[CHEATER.public_key]
    honest_answer = make_proof_answer(HONEST, CHAIN, honest_challenge, prove(root, meta, shard, honest_challenge.leaf))
    # Forwarded as is: it answers the honest peer's challenge, not the cheater's.
    with pytest.raises(UnknownChallenge):
        get_proof_verdict(CHAIN, cheater_challenge, honest_answer, meta, 101)
    # Relabelled with the cheater's challenge and key: the honest signature no longer fits.
    relabelled = replace(honest_answer, peer=CHEATER.public_key, challenge_id=cheater_challenge.challenge_id)
    with pytest.raises(BadProofSignature):
        get_proof_verdict(CHAIN, cheater_challenge, relabelled, meta, 101)
    # The honest peer's key on the cheater's challenge id: not the challenged peer.
    with pytest.raises(BadProofSignature):
        get_proof_verdict(CHAIN, cheater_challenge, replace(honest_answer, challenge_id=cheater_challenge.challenge_id), meta, 101)


def test_another_peers_proof_resigned_by_the_cheater_is_invalid(setup: Setup) -> None:
    root, meta, shard, found = setup
    honest_challenge, cheater_challenge = found[HONEST.public_key], found[CHEATER.public_key]
    borrowed = prove(root, meta, shard, honest_challenge.leaf)   # all the cheater could fetch
    answer = make_proof_answer(CHEATER, CHAIN, cheater_challenge, borrowed)
    assert get_proof_verdict(CHAIN, cheater_challenge, answer, meta, 101) == INVALID


def test_bad_signatures_are_refused(setup: Setup) -> None:
    root, meta, shard, found = setup
    challenge = found[HONEST.public_key]
    answer = make_proof_answer(HONEST, CHAIN, challenge, prove(root, meta, shard, challenge.leaf))
    with pytest.raises(BadProofSignature):
        get_proof_verdict(b"another-chain", challenge, answer, meta, 101)
    with pytest.raises(BadProofSignature):
        get_proof_verdict(CHAIN, challenge, replace(answer, signature=bytes(64)), meta, 101)
    tampered = replace(answer, proof=answer.proof[:-1] + bytes([answer.proof[-1] ^ 1]))
    with pytest.raises(BadProofSignature):
        get_proof_verdict(CHAIN, challenge, tampered, meta, 101)
    assert issubclass(BadProofSignature, InvalidRecord) and issubclass(UnknownChallenge, InvalidRecord)


def test_the_wrong_collection_meta_is_a_caller_error(setup: Setup, tmp_path: Path) -> None:
    root, meta, shard, found = setup
    (tmp_path / "x").write_bytes(b"x" * 100)
    other = create_collection(tmp_path, piece_length=PL)
    challenge = found[HONEST.public_key]
    answer = make_proof_answer(HONEST, CHAIN, challenge, prove(root, meta, shard, challenge.leaf))
    with pytest.raises(WrongCollectionMeta):
        get_proof_verdict(CHAIN, challenge, answer, other, 101)
    with pytest.raises(WrongCollectionMeta):
        get_proof_verdict(CHAIN, replace(challenge, shard=99), answer, meta, 101)


def test_the_digest_is_stable_and_binds_the_whole_answer(setup: Setup) -> None:
    root, meta, shard, found = setup
    challenge = found[HONEST.public_key]
    proof = prove(root, meta, shard, challenge.leaf)
    answer = make_proof_answer(HONEST, CHAIN, challenge, proof)
    digest = compute_proof_digest(answer)
    assert len(digest) == 32
    assert digest == compute_proof_digest(make_proof_answer(HONEST, CHAIN, challenge, proof))   # Ed25519 is deterministic
    assert digest == sha256(encode(answer))
    assert decode(encode(answer), ProofAnswer) == answer
    assert compute_proof_digest(decode(encode(answer), ProofAnswer)) == digest
    assert compute_proof_digest(replace(answer, signature=bytes(64))) != digest
    assert compute_proof_digest(make_proof_answer(HONEST, b"another-chain", challenge, proof)) != digest
    assert len(encode(answer)) < 16 * 1024 + 1024   # the sidecar, about one leaf plus its path
