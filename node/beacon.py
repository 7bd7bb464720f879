"""The validator beacon: Tendermint consensus over the chain, the record pool, the explorer.

Wiring only: chain.consensus decides, chain.transition validates and builds blocks,
node.chainnode moves messages. Persist before you speak: what consensus is about to sign
is written (synchronously) before the signed message leaves, and a decided block is in
the store before its STATUS goes out.

Proposals reach consensus only whole (docs/protocol.md §8, node/proofpool.py). Consensus
keeps the first copy of a signed proposal and drops later ones as duplicates, and judges
a value once per height, but a ProposalMsg is more than what the proposer signed: the
block bytes are bound to the signature only through the header hash, and the proof sidecar
is not bound at all. So before a copy goes any further (validate_gossip, which also decides
whether it is forwarded) the beacon checks that its block bytes are the ones signed for
(header hash, header signature, body root) and refuses any other bytes; it then gathers
the answers the block's ProofResults name from this copy, every other copy, its proof
pool and later ProofMsgs, and hands the proposal to consensus only once all are there. A
copy that adds nothing (no new proposal, no missing answer) is neither delivered nor
forwarded; a node that completes a proposal floods its canonical copy (the proposer's
own) unless it has seen it, so its neighbours never depend on partial copies. A relay
can therefore delay a proposal at most until a complete copy or the answers arrive,
never make this validator judge it on a stripped or altered copy.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from aiohttp import web

from chain.codec import decode, encode
from chain.consensus import (
    MAX_PROPOSALS_PER_ROUND, Broadcast, ConsensusConfig, Decide, EvidenceFound, InvalidMessage, Persist,
    ScheduleTimeout, SignState, Tendermint,
)
from chain.constants import KIND_BLOCK, KIND_PROPOSAL, MAX_BLOCK_BYTES, MAX_FUTURE_DRIFT_MS, MAX_TIMESTAMP_STEP_MS
from chain.crypto import is_valid_signature
from chain.errors import BadRecordSignature, CodecError, InvalidBlock
from chain.proofs import ProofAnswer
from chain.state import Overlay, State, get_chain_info, get_collection, get_height, get_peer, get_validators
from chain.transition import (
    build_block, compute_body_root, get_proposer, get_record_payload, process_proposal, process_record,
    select_records, verify_commit,
)
from chain.types import NIL, Block, CommittedBlock, Proposal, ProofResult, SignedProposal, SignedRecord
from node.chainnode import ChainNode, now_ms, run_node
from node.config import NodeConfig
from node.gossip import Verdict
from node.messages import GossipEnvelope, MessageError, ProofMsg, ProposalMsg, RecordMsg, VoteMsg, flooded_id
from node.proofpool import (
    INCOMPLETE, MAX_TRACKED_BLOCKS, VALID, ProofPool, ProposalSidecars, check_sidecar, compute_verdict, sidecar_proofs,
)
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


def check_proposal_value(chain_id: bytes, signed: SignedProposal, value: bytes, is_validator) -> Block | None:
    """The block in a proposal copy, if `value` is the block the proposer signed for: it
    decodes (canonically), its header hashes to the proposal's block hash at the
    proposal's height and is signed by a validator (the header's proposer: a re-proposal
    carries an earlier round's block), and its body matches the header's body root. Then
    `value` is the only such byte string, so consensus may keep it for good; None for any
    other bytes (a relay's alteration, or a faulty proposer's)."""
    p = signed.proposal
    try:
        block = decode(value, Block, max_bytes=MAX_BLOCK_BYTES)
    except CodecError:
        return None
    header = block.header
    if block.hash() != p.block_hash or header.height != p.height or not is_validator(header.proposer):
        return None
    if not is_valid_signature(header.proposer, block.signature, chain_id, KIND_BLOCK, encode(header)):
        return None
    body_root = compute_body_root([get_record_payload(r.record) for r in block.body], [r.signature for r in block.body])
    return block if header.body_root == body_root else None


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
        # Per proposed block: its checked bytes, the answers its ProofResults name (gathered
        # from every source) and its proposals held back until those are all here. As many
        # blocks as consensus itself may keep for two heights (MAX_PROPOSALS_PER_ROUND per
        # round and proposer in its round window), and at least MAX_TRACKED_BLOCKS.
        self.sidecars = ProposalSidecars(max(MAX_TRACKED_BLOCKS, 2 * MAX_PROPOSALS_PER_ROUND * len(validators)
                                             * (self.consensus.config.max_rounds_ahead + 1)))
        # (height, round, proposer) -> the block hashes tracked for it (at most
        # MAX_PROPOSALS_PER_ROUND, as consensus keeps: an equivocator gets no more room).
        self._slots: dict[tuple[int, int, bytes], set[bytes]] = {}
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
        value = encode(block)
        # Our own block is complete from the start: the answers its results were made from.
        self.sidecars.track(block, value, pinned=self._pinned())
        for msg in sidecar:
            self.sidecars.offer(msg)
        return value, block.hash()

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
            # Consensus only gets proposals whose answers are all here (on_gossip), so
            # INCOMPLETE means they were forgotten since (evicted): refused, as before.
            check = check_sidecar(self, self.state, block, self.sidecars.sidecar(value_hash))
            if check is not VALID:
                if check is INCOMPLETE:
                    log.warning("proposal for height %d: proof answers no longer at hand", height)
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
            # The canonical sidecar: the named answers in body order, nothing else.
            block_hash = action.message.proposal.block_hash
            self.sidecars.note_released(block_hash, action.message)
            self.publish(ProposalMsg(action.message, action.value, self.sidecars.sidecar(block_hash)))
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
        self.apply_committed(committed, new_state)

    def on_new_head(self, committed: CommittedBlock) -> None:
        height = committed.block.header.height
        self.consensus.on_applied(height)
        self._valid.clear()
        # Keep the answers the block names (decided here or synced), for GET_PROOF; then
        # forget what was gathered for this height. The next height's stays.
        proofs = sidecar_proofs(committed.block, self.sidecars.sidecar(committed.block.hash()))
        if proofs:
            self.store.put_proofs(height, proofs)
        self.sidecars.prune(height)
        self._slots = {k: v for k, v in self._slots.items() if k[0] > height}
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
        now = now_ms()
        self.run_actions(self.consensus.start(height, now))
        # Complete proposals released while consensus was elsewhere (behind after a sync)
        # were dropped by it; those it buffered it now drops as duplicates.
        self._to_consensus(self.sidecars.ready_for(height), now)

    # ------------------------------------------------------------------ gossip

    def validate_gossip(self, inner) -> Verdict:
        if isinstance(inner, RecordMsg):
            return self._check_record(inner.record)
        if isinstance(inner, ProposalMsg):
            return self._admit_proposal(inner)
        if isinstance(inner, VoteMsg):
            return Verdict.ACCEPT if self.consensus.is_validator(inner.vote.vote.validator) else Verdict.REJECT
        return Verdict.ACCEPT

    def on_gossip(self, peer: bytes | None, inner) -> None:
        now = now_ms()
        try:
            if isinstance(inner, ProposalMsg):
                p = inner.proposal.proposal
                self.validator_seen_ms[p.proposer] = now
                if self._gathers(p):
                    self._release_ready(now)          # taken in by validate_gossip
                else:
                    # Beyond the heights and rounds consensus keeps: it only notes the round
                    # (or ignores it), so the copy's contents do not matter.
                    self.run_actions(self.consensus.on_proposal(inner.proposal, inner.block, now))
            elif isinstance(inner, VoteMsg):
                self.validator_seen_ms[inner.vote.vote.validator] = now
                self.run_actions(self.consensus.on_vote(inner.vote, now))
            elif isinstance(inner, RecordMsg):
                self.pool.add(inner.record, now)
            elif isinstance(inner, ProofMsg):
                # A proposal may name it though it earns no verdict here yet (a next-height
                # block answering a challenge of the block before): offered by digest first.
                if self.sidecars.offer(inner):
                    self._release_ready(now)
                if compute_verdict(self, self.state, inner, self.height + 1) is not None:
                    self.proofs.add(inner)
        except InvalidMessage as exc:
            log.info("dropping consensus message from %s: %s", peer.hex()[:16] if peer else "self", exc)

    # ------------------------------------------------------------------ proposals and their answers

    def _gathers(self, p: Proposal) -> bool:
        """Whether a proposal is one consensus would keep (the next two heights, inside its
        round window): those reach it only whole, through self.sidecars. The window is
        consensus's own (Tendermint.on_proposal), so no copy it keeps bypasses the check."""
        if not self.height + 1 <= p.height <= self.height + 2:
            return False
        c = self.consensus
        base = c.round if (p.height == c.height and c.started) else 0
        return p.round <= base + c.config.max_rounds_ahead

    def _pinned(self) -> set[bytes]:
        """Blocks never evicted for another: the locked and valid values, and the current
        round's proposal."""
        c = self.consensus
        pins = {c.locked_hash, c.valid_hash} - {NIL}
        for (h, r, _), hashes in self._slots.items():
            if h == self.height + 1 and r == c.round:
                pins |= hashes
        return pins

    def _admit_proposal(self, msg: ProposalMsg) -> Verdict:
        """Gossip verdict on a proposal copy; a copy worth delivering is taken in here.

        REJECT (the sender is to blame: an honest relay checks the same before forwarding):
        not a validator's, malformed rounds, a bad proposal signature, or block bytes other
        than the ones signed for. IGNORE: decided, not the round's proposer, no room, or a
        copy of a known proposal that brings no missing answer. ACCEPT: a new proposal, or
        new answers for one (or one consensus keeps no copy of: see _gathers)."""
        signed, p = msg.proposal, msg.proposal.proposal
        if not self.consensus.is_validator(p.proposer):
            return Verdict.REJECT
        if p.height <= self.height:
            return Verdict.IGNORE
        if p.round < 0 or not -1 <= p.valid_round < p.round:
            return Verdict.REJECT
        if p.height == self.height + 1 and get_proposer(self.state, p.height, p.round).public_key != p.proposer:
            return Verdict.IGNORE        # consensus ignores it too; a relay may have had no way to know
        if not self._gathers(p):
            return Verdict.ACCEPT
        entry = self.sidecars.get(p.block_hash)
        if entry is not None and entry.value != msg.block:
            # The block's right bytes are known: these are a forgery, or (if they check)
            # a second header signature by the proposer itself, of no use.
            valid = check_proposal_value(self.chain_id, signed, msg.block, self.consensus.is_validator)
            return Verdict.IGNORE if valid is not None else Verdict.REJECT
        known = entry is not None and entry.knows(signed)
        if not known and not is_valid_signature(p.proposer, signed.signature, self.chain_id, KIND_PROPOSAL, encode(p)):
            return Verdict.REJECT
        created = False
        if entry is None:
            slot = self._slots.setdefault((p.height, p.round, p.proposer), set())
            if len(slot) >= MAX_PROPOSALS_PER_ROUND:
                return Verdict.IGNORE
            block = check_proposal_value(self.chain_id, signed, msg.block, self.consensus.is_validator)
            if block is None:
                log.info("proposal for height %d round %d: block bytes are not the ones signed for",
                         p.height, p.round)
                return Verdict.REJECT
            slot.add(p.block_hash)
            self.sidecars.track(block, msg.block, pinned=self._pinned())
            for challenge_id, _ in self.sidecars.needed_challenges(block):
                pooled = self.proofs.get(challenge_id)
                if pooled is not None:
                    self.sidecars.offer(pooled)
            created = True
        added = [m for m in msg.sidecar if self.sidecars.offer(m)]
        held = not known and self.sidecars.hold(p.block_hash, signed)
        if held:
            self._slots.setdefault((p.height, p.round, p.proposer), set()).add(p.block_hash)
        if created or held or added:
            return Verdict.ACCEPT
        return Verdict.IGNORE

    def _release_ready(self, now: int) -> None:
        """Hand every proposal whose answers are now all here to consensus, after making
        sure its canonical copy (the named answers in body order: what the proposer sends)
        floods. A relay whose copy this node completed from its pool, or from several
        partial copies, would otherwise leave the neighbours only partial copies: they
        bring this node nothing new, so it does not forward them."""
        ready = self.sidecars.take_ready()
        for signed, value in ready:
            try:
                canonical = ProposalMsg(signed, value, self.sidecars.sidecar(signed.proposal.block_hash))
                if flooded_id(canonical) not in self.gossip.seen:
                    self.publish(canonical)
            except MessageError as exc:      # not for a block that can be valid (tracked blocks are checked)
                log.info("not relaying the proposal for height %d: %s", signed.proposal.height, exc)
        self._to_consensus(ready, now)

    def _to_consensus(self, ready, now: int) -> None:
        for signed, value in ready:
            try:
                self.run_actions(self.consensus.on_proposal(signed, value, now))
            except InvalidMessage as exc:
                log.info("consensus refused a proposal for height %d: %s", signed.proposal.height, exc)

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
            inner = ProposalMsg(b.message, b.value, self.sidecars.sidecar(b.message.proposal.block_hash)) if isinstance(b.message, SignedProposal) else VoteMsg(b.message)
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
