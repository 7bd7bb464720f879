"""The validator beacon: Tendermint consensus over the chain, the record pool, the explorer.

Wiring only: chain.consensus decides, chain.transition validates and builds blocks,
node.chainnode moves messages. Persist before you speak: what consensus is about to sign
is written (synchronously) before the signed message leaves, and a decided block is in
the store before its STATUS goes out.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from aiohttp import web

from chain.codec import decode, encode
from chain.consensus import (
    Broadcast, ConsensusConfig, Decide, EvidenceFound, InvalidMessage, Persist, ScheduleTimeout, SignState,
    Tendermint,
)
from chain.constants import MAX_FUTURE_DRIFT_MS, MAX_TIMESTAMP_STEP_MS
from chain.errors import BadRecordSignature, CodecError, InvalidBlock
from chain.proofs import ProofAnswer
from chain.state import Overlay, State, get_chain_info, get_collection, get_height, get_peer, get_validators
from chain.transition import (
    build_block, get_proposer, get_record_payload, process_proposal, process_record, select_records, verify_commit,
)
from chain.types import Block, CommittedBlock, ProofResult, SignedProposal, SignedRecord
from node.chainnode import ChainNode, now_ms, run_node
from node.config import NodeConfig
from node.gossip import Verdict
from node.messages import GossipEnvelope, ProofMsg, ProposalMsg, RecordMsg, VoteMsg
from node.proofpool import ProofPool, compute_verdict, is_valid_sidecar, sidecar_proofs
from node.pool import RecordPool

log = logging.getLogger("cairn.beacon")

LAST_SIGNED_KEY = b"consensus/last_signed"
POOL_MAX_AGE_MS = 10 * 60 * 1000
MAX_VALID_CACHE = 32
RESEND_EVERY_S = 2.0
PRUNE_EVERY_BLOCKS = 100
REPUTATION_POINTS = 500
# Meta: a peer's reputation at each height a block changed it (explorer chart).
REPUTATION_META = b"reputation/"


class BeaconNode(ChainNode):
    role = 1  # ROLE_BEACON

    def __init__(self, datadir: Path, cfg: NodeConfig) -> None:
        super().__init__(datadir, cfg, validator=True)
        validators = tuple(v.public_key for v in get_validators(self.state))
        raw = self.store.get_meta(LAST_SIGNED_KEY)
        last_signed = decode(raw, SignState) if raw else None
        # A beacon whose key is not in the validator set runs as an observer: it follows
        # and serves the chain (explorer, sync) but signs nothing.
        self.is_validator = self.key.public_key in validators
        self.consensus = Tendermint(self.chain_id, validators, self, ConsensusConfig.from_params(self.genesis.params),
                                    key=self.key if self.is_validator else None, last_signed=last_signed)
        self.pool = RecordPool()
        self.proofs = ProofPool()
        self._sidecars: dict[bytes, tuple] = {}       # block hash -> proof answers beside it
        self._valid: dict[bytes, State] = {}          # block hash -> state after it (proposal checks)
        self._timers: list[asyncio.TimerHandle] = []
        self.validator_seen_ms: dict[bytes, int] = {}
        self._last_resend = 0.0

    # ------------------------------------------------------------------ consensus app

    def propose_value(self, height: int, round_: int) -> tuple[bytes, bytes]:
        parent_ts = get_chain_info(self.state).timestamp_ms
        results, sidecar = self.proofs.select(self, self.state)
        limit = self.genesis.params.max_records_per_block
        pooled = self.pool.select(limit)
        records = select_records(self.state, results + pooled)
        if len(records) < limit:
            # every candidate was tried: the ones left out are invalid on this head
            self.pool.remove([r for r in pooled if r not in records])
        timestamp = min(max(now_ms(), parent_ts + 1), parent_ts + MAX_TIMESTAMP_STEP_MS)
        block = build_block(self.state, self.key, self.vrf_key, round_, timestamp, records)
        self._sidecars[block.hash()] = sidecar
        return encode(block), block.hash()

    def is_valid_value(self, height: int, value: bytes, value_hash: bytes) -> bool:
        cached = self._valid.get(value_hash)
        if cached is not None:
            return True
        try:
            block = decode(value, Block)
            if block.hash() != value_hash or block.header.height != height:
                return False
            if block.header.timestamp_ms > now_ms() + MAX_FUTURE_DRIFT_MS:
                log.info("proposal at height %d is too far in the future", height)
                return False
            new_state = process_proposal(self.state, block)
            if not is_valid_sidecar(self, self.state, block, self._sidecars.get(value_hash, ())):
                return False
        except (CodecError, InvalidBlock) as exc:
            log.info("rejecting proposal for height %d: %s", height, exc)
            return False
        if len(self._valid) > MAX_VALID_CACHE:
            self._valid.clear()
        self._valid[value_hash] = new_state
        return True

    def proposer(self, height: int, round_: int) -> bytes:
        return get_proposer(self.state, height, round_).public_key

    # ------------------------------------------------------------------ driving the core

    def run_actions(self, actions) -> None:
        for action in actions:
            if isinstance(action, Persist):
                self.store.put_meta(LAST_SIGNED_KEY, encode(action.record))
            elif isinstance(action, Broadcast):
                self._broadcast_consensus(action)
            elif isinstance(action, ScheduleTimeout):
                self._schedule(action)
            elif isinstance(action, Decide):
                self._on_decide(action)
            elif isinstance(action, EvidenceFound):
                log.warning("evidence of a double vote by %s", action.evidence.vote_a.vote.validator.hex()[:16])
                self.submit_record(SignedRecord(action.evidence, b""))

    def _broadcast_consensus(self, action: Broadcast) -> None:
        if isinstance(action.message, SignedProposal):
            sidecar = self._sidecars.get(action.message.proposal.block_hash, ())
            self.publish(ProposalMsg(action.message, action.value, sidecar))
        else:
            self.publish(VoteMsg(action.message))

    def _schedule(self, action: ScheduleTimeout) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, (action.at_ms - now_ms()) / 1000)
        self._timers = [t for t in self._timers if not t.cancelled()]
        self._timers.append(loop.call_later(delay, self._fire_timeout, action.timeout))

    def _fire_timeout(self, timeout) -> None:
        self.run_actions(self.consensus.on_timeout(timeout, now_ms()))

    def _on_decide(self, action: Decide) -> None:
        block = decode(action.value, Block)
        log.info("decided height %d round %d: %s with %d records", action.height, action.round,
                 action.value_hash.hex()[:16], len(block.body))
        committed = CommittedBlock(block, action.commit)
        if block.header.height != self.height + 1:
            return
        new_state = self._valid.get(action.value_hash)
        if new_state is not None:
            verify_commit(self.state, action.commit, action.value_hash)
        proofs = sidecar_proofs(block, self._sidecars.get(action.value_hash, ()))
        self.apply_committed(committed, new_state)
        if proofs:
            self.store.put_proofs(block.header.height, proofs)
            self.proofs.remove(proofs)

    def on_new_head(self, committed: CommittedBlock) -> None:
        self.consensus.on_applied(committed.block.header.height)
        self._valid.clear()
        self._sidecars.clear()
        self.proofs.remove([s.record.challenge_id for s in committed.block.body if isinstance(s.record, ProofResult)])
        if committed.block.header.height % PRUNE_EVERY_BLOCKS == 0:
            self.store.prune_proofs(committed.block.header.height)
        self.pool.remove(committed.block.body)
        self.pool.expire(now_ms(), POOL_MAX_AGE_MS)
        self._start_next_height()

    def _start_next_height(self) -> None:
        height = self.height + 1
        if self._consensus_running(height):
            return
        parent_ts = get_chain_info(self.state).timestamp_ms
        delay = max(0.0, (parent_ts + self.genesis.params.block_interval_ms - now_ms()) / 1000)
        asyncio.get_running_loop().call_later(delay, self._start_height, height)

    def _consensus_running(self, height: int) -> bool:
        """Consensus already works on `height` (or beyond): starting it again would be wrong."""
        return self.consensus.height > height or (self.consensus.height == height and self.consensus.started)

    def _start_height(self, height: int) -> None:
        if not self.is_validator:
            return
        if height != self.height + 1 or self._consensus_running(height):
            log.debug("not starting height %d (head %d, consensus at %d)", height, self.height, self.consensus.height)
            return
        log.debug("starting consensus for height %d", height)
        self.run_actions(self.consensus.start(height, now_ms()))

    # ------------------------------------------------------------------ gossip

    def validate_gossip(self, inner) -> Verdict:
        if isinstance(inner, RecordMsg):
            return self._check_record(inner.record)
        if isinstance(inner, (ProposalMsg, VoteMsg)):
            signer = inner.proposal.proposal.proposer if isinstance(inner, ProposalMsg) else inner.vote.vote.validator
            return Verdict.ACCEPT if self.consensus.is_validator(signer) else Verdict.REJECT
        return Verdict.ACCEPT

    def on_gossip(self, peer: bytes | None, inner) -> None:
        now = now_ms()
        try:
            if isinstance(inner, ProposalMsg):
                self.validator_seen_ms[inner.proposal.proposal.proposer] = now
                if len(self._sidecars) < MAX_VALID_CACHE:
                    self._sidecars.setdefault(inner.proposal.proposal.block_hash, inner.sidecar)
                self.run_actions(self.consensus.on_proposal(inner.proposal, inner.block, now))
            elif isinstance(inner, VoteMsg):
                self.validator_seen_ms[inner.vote.vote.validator] = now
                self.run_actions(self.consensus.on_vote(inner.vote, now))
            elif isinstance(inner, RecordMsg):
                self.pool.add(inner.record, now)
            elif isinstance(inner, ProofMsg):
                if compute_verdict(self, self.state, inner, self.height + 1) is not None:
                    self.proofs.add(inner)
        except InvalidMessage as exc:
            log.info("dropping consensus message from %s: %s", peer.hex()[:16] if peer else "self", exc)

    def _check_record(self, record: SignedRecord) -> Verdict:
        """Pool and forward only records valid on the current head: a bad signature blames
        the sender; a record merely not valid (yet) is dropped without blame."""
        if isinstance(record.record, ProofResult):
            return Verdict.REJECT       # only proposers write verdicts, from the proof pool
        try:
            process_record(Overlay(self.state), self.height + 1, record, get_record_payload(record.record))
        except BadRecordSignature:
            return Verdict.REJECT
        except InvalidBlock:
            return Verdict.IGNORE
        return Verdict.ACCEPT

    def lookup_proof(self, challenge_id: bytes):
        data = self.store.get_proof(challenge_id)
        if data is None:
            return None
        answer = decode(data, ProofAnswer)
        return ProofMsg(answer.peer, answer.challenge_id, answer.proof, answer.signature)

    def submit_record(self, record: SignedRecord) -> bytes | None:
        """A record from the API: pool it and flood it to the other beacons."""
        record_id = self.pool.add(record, now_ms())
        self.publish(RecordMsg(record))
        return record_id

    def on_tick(self) -> None:
        # Tendermint's liveness assumes every message eventually reaches every correct
        # validator: a validator that was down or partitioned gets our current-height
        # messages again (receivers drop the ones they have by gossip id).
        mono = time.monotonic()
        if mono - self._last_resend >= RESEND_EVERY_S:
            self._last_resend = mono
            self._resend_own()

    def _resend_own(self, peer: bytes | None = None) -> None:
        for b in self.consensus.own_messages():
            inner = ProposalMsg(b.message, b.value, self._sidecars.get(b.message.proposal.block_hash, ())) if isinstance(b.message, SignedProposal) else VoteMsg(b.message)
            env = GossipEnvelope(inner, 1)
            if peer is None:
                self.broadcast_direct(env)
            else:
                self.send(peer, env)

    def _on_peer_up(self, ev) -> None:
        super()._on_peer_up(ev)
        self._resend_own(ev.peer.key)

    # ------------------------------------------------------------------ explorer views

    def assignments_for(self, info_hash: bytes) -> dict[int, tuple[bytes, ...]]:
        coll = get_collection(self.state, info_hash)
        return {s.index: self.tracker.get_assigned(info_hash, s.index) for s in coll.shards} if coll else {}

    def reputation_history(self, peer: bytes) -> list[dict]:
        """The last REPUTATION_POINTS changes of a peer's reputation, oldest first."""
        points = []
        for key, value in self.store.iter_meta(REPUTATION_META + peer, reverse=True):
            points.append({"height": int.from_bytes(key[-8:], "big"),
                           "reputation_ppm": int.from_bytes(value, "big")})
            if len(points) == REPUTATION_POINTS:
                break
        return points[::-1]

    def block_meta(self, new_state: State) -> dict[bytes, bytes]:
        """Each peer whose reputation the block changed: its new value, kept with the
        block so the history survives restarts (and is rebuilt by sync)."""
        meta = {}
        height = get_height(new_state).to_bytes(8, "big")
        for key, _ in new_state.diff:
            if key.startswith(b"peer/"):
                peer_id = key[5:]
                new, old = get_peer(new_state, peer_id), get_peer(self.state, peer_id)
                if new is not None and (old is None or old.reputation_ppm != new.reputation_ppm):
                    meta[REPUTATION_META + peer_id + height] = new.reputation_ppm.to_bytes(4, "big")
        return meta

    # ------------------------------------------------------------------ lifecycle

    def make_app(self) -> web.Application:
        from node.explorer import make_beacon_app
        return make_beacon_app(self)

    def dial_initial(self) -> None:
        for v in get_validators(self.state):
            if v.public_key != self.key.public_key:
                self.transport.dial(v.address, expected_peer=v.public_key)
        super().dial_initial()

    async def on_start(self) -> None:
        self._start_height(self.height + 1)

    async def on_stop(self) -> None:
        for t in self._timers:
            t.cancel()


def run_beacon(datadir: Path, cfg: NodeConfig) -> int:
    return run_node(lambda: BeaconNode(datadir, cfg))
