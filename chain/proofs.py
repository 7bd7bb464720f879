"""Proof answers: a peer's signed reply to a challenge, and the verdict it earns.

An answer carries the encoded storage proof (storage/proof.py: one 16 KiB leaf and its
sibling path) and the peer's signature, kind KIND_PROOF, over the encoded
ProofStatement (peer, challenge id, proof). The answer travels as a sidecar of the
proposal; the block keeps only ProofResult(peer, challenge id, verdict,
`compute_proof_digest(answer)`), and the proof store serves the answer by that digest,
so anyone can re-check a verdict, an INVALID one above all.

`get_proof_verdict`, in order:
  1. Rejected, no verdict (UnknownChallenge, BadProofSignature): the answer names another
     challenge, or is not signed by the challenged peer. Such an answer proves nothing
     about that peer: it may be someone else's proof replayed.
  2. INVALID: correctly signed by the challenged peer, but the proof is not leaf
     `challenge.leaf` of shard `challenge.shard` (wrong leaf, wrong shard, wrong data,
     malformed bytes). The signature makes it evidence of lying, late or not. An honest
     peer never signs one: build_proof refuses local data that does not match the
     torrent, so a peer with a corrupt copy stays silent (a MISS) and re-fetches.
  3. MISS: a valid proof recorded after the deadline.
  4. PASS: a valid proof recorded at or before `challenge.deadline_height`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from chain.challenges import Challenge, is_past_deadline
from chain.codec import Hash32, MaxLen, PubKey, Signature, encode
from chain.constants import KIND_PROOF
from chain.crypto import SigningKey, is_valid_signature, sha256
from chain.errors import BadProofSignature, UnknownChallenge, WrongCollectionMeta
from chain.types import INVALID, MISS, PASS
from storage.collection import CollectionMeta
from storage.errors import ProofError
from storage.proof import MAX_PROOF_BYTES, Proof, verify_shard_proof

ProofBytes = Annotated[bytes, MaxLen(MAX_PROOF_BYTES)]


@dataclass(frozen=True, slots=True)
class ProofStatement:
    """What the peer signs: "`proof` is my answer to challenge `challenge_id`"."""
    peer: PubKey
    challenge_id: Hash32
    proof: ProofBytes          # an encoded storage.proof.Proof


@dataclass(frozen=True, slots=True)
class ProofAnswer:
    peer: PubKey
    challenge_id: Hash32
    proof: ProofBytes
    signature: Signature       # the peer's, kind KIND_PROOF, over encode(ProofStatement)


def get_proof_statement(answer: ProofAnswer) -> ProofStatement:
    return ProofStatement(answer.peer, answer.challenge_id, answer.proof)


def make_proof_answer(key: SigningKey, chain_id: bytes, challenge: Challenge, proof: Proof) -> ProofAnswer:
    """Sign `proof` as `key`'s answer to `challenge`."""
    statement = ProofStatement(key.public_key, challenge.challenge_id, proof.encode())
    signature = key.sign(chain_id, KIND_PROOF, encode(statement))
    return ProofAnswer(statement.peer, statement.challenge_id, statement.proof, signature)


def compute_proof_digest(answer: ProofAnswer) -> bytes:
    """What ProofResult.proof_digest holds: sha256 of the whole encoded answer, signature included."""
    return sha256(encode(answer))


def check_answer_binds_peer(chain_id: bytes, challenge: Challenge, answer: ProofAnswer) -> None:
    """Raise unless the answer is the challenged peer's, signed, for this very challenge."""
    if answer.challenge_id != challenge.challenge_id:
        raise UnknownChallenge(f"answer is for challenge {answer.challenge_id.hex()[:16]}, not {challenge.challenge_id.hex()[:16]}")
    if answer.peer != challenge.peer:
        raise BadProofSignature(f"answer by {answer.peer.hex()[:16]} to a challenge of {challenge.peer.hex()[:16]}")
    if not is_valid_signature(answer.peer, answer.signature, chain_id, KIND_PROOF, encode(get_proof_statement(answer))):
        raise BadProofSignature(f"answer to {challenge.challenge_id.hex()[:16]} is not signed by its peer")


def is_valid_answer_proof(challenge: Challenge, answer: ProofAnswer, meta: CollectionMeta) -> bool:
    """Whether the answer's proof is exactly leaf `challenge.leaf` of shard `challenge.shard`."""
    if meta.info_hash_v2 != challenge.collection or not 0 <= challenge.shard < len(meta.shards):
        raise WrongCollectionMeta(f"challenge names shard {challenge.shard} of {challenge.collection.hex()[:16]}")
    try:
        verify_shard_proof(meta, meta.shards[challenge.shard], challenge.leaf, Proof.decode(answer.proof))
    except ProofError:
        return False
    return True


def get_proof_verdict(chain_id: bytes, challenge: Challenge, answer: ProofAnswer, meta: CollectionMeta, height: int) -> int:
    """PASS, MISS or INVALID for an answer recorded at `height`; raises if it proves nothing."""
    check_answer_binds_peer(chain_id, challenge, answer)
    if not is_valid_answer_proof(challenge, answer, meta):
        return INVALID
    return MISS if is_past_deadline(challenge, height) else PASS
