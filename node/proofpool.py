"""Beacon-side proof handling: pool the peers' signed answers, put verdicts in blocks,
check a proposal's verdicts against its sidecar before voting.

The split (docs/protocol.md): the state transition applies a ProofResult to the open
challenge it names; whether the verdict is right is checked here, by every validator,
against the signed answer that travels beside the proposal. The committed block keeps
only the compact result; the answers go to the prunable proof store.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

from chain.codec import encode
from chain.errors import ChainError
from chain.proofs import ProofAnswer, compute_proof_digest, get_proof_verdict
from chain.state import State, get_challenge, get_height
from chain.types import INVALID, PASS, Block, ProofResult, SignedRecord
from node.messages import ProofMsg

log = logging.getLogger("cairn.proofs")

MAX_POOLED = 10_000


def to_answer(msg: ProofMsg) -> ProofAnswer:
    return ProofAnswer(msg.peer, msg.challenge_id, msg.proof, msg.signature)


def compute_verdict(node, state: State, msg: ProofMsg, height: int) -> int | None:
    """The verdict `msg` earns at `height`, or None when it proves nothing (unknown or
    closed challenge, bad signature, unknown collection)."""
    challenge = get_challenge(state, msg.challenge_id)
    if challenge is None or challenge.peer != msg.peer:
        return None
    meta = node.collection_meta(challenge.collection)
    if meta is None:
        return None
    try:
        return get_proof_verdict(state.chain_id, challenge, to_answer(msg), meta, height)
    except ChainError as exc:
        log.info("proof answer for %s rejected: %s", msg.challenge_id.hex()[:12], exc)
        return None


class ProofPool:
    def __init__(self) -> None:
        self._answers: OrderedDict[bytes, ProofMsg] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def add(self, msg: ProofMsg) -> bool:
        if msg.challenge_id in self._answers or len(self._answers) >= MAX_POOLED:
            return False
        self._answers[msg.challenge_id] = msg
        return True

    def remove(self, challenge_ids) -> None:
        for cid in challenge_ids:
            self._answers.pop(cid, None)

    def select(self, node, state: State) -> tuple[list[SignedRecord], tuple[ProofMsg, ...]]:
        """ProofResult records for the next block, and the sidecar that justifies them."""
        height = get_height(state) + 1
        records, sidecar, stale = [], [], []
        for cid, msg in self._answers.items():
            verdict = compute_verdict(node, state, msg, height)
            if verdict is None:
                stale.append(cid)
            elif verdict in (PASS, INVALID):
                records.append(SignedRecord(ProofResult(msg.peer, cid, verdict, compute_proof_digest(to_answer(msg))), b""))
                sidecar.append(msg)
        self.remove(stale)
        return records, tuple(sidecar)


def is_valid_sidecar(node, state: State, block: Block, sidecar: tuple[ProofMsg, ...]) -> bool:
    """Every ProofResult in the block is the verdict its sidecar answer earns."""
    by_id = {m.challenge_id: m for m in sidecar}
    height = block.header.height
    for signed in block.body:
        rec = signed.record
        if not isinstance(rec, ProofResult):
            continue
        msg = by_id.get(rec.challenge_id)
        if msg is None or msg.peer != rec.peer:
            log.info("block %d: no sidecar answer for challenge %s", height, rec.challenge_id.hex()[:12])
            return False
        if compute_proof_digest(to_answer(msg)) != rec.proof_digest:
            return False
        if compute_verdict(node, state, msg, height) != rec.verdict:
            log.info("block %d: verdict for %s does not match its proof", height, rec.challenge_id.hex()[:12])
            return False
    return True


def sidecar_proofs(block: Block, sidecar: tuple[ProofMsg, ...]) -> dict[bytes, bytes]:
    """What the proof store keeps for a decided block: the answers its results used."""
    used = {s.record.challenge_id for s in block.body if isinstance(s.record, ProofResult)}
    return {m.challenge_id: encode(to_answer(m)) for m in sidecar if m.challenge_id in used}
