"""Hostile clients against a live beacon's /p2p (4 real `cairn beacon run` processes).

(a) raw websocket clients that never complete the handshake: garbage, text frames,
    oversized frames, hypothesis-generated junk: each is disconnected;
(b) clients that complete the real handshake (node.link.Link, fresh key, right chain id)
    and then send malformed or hostile message payloads: mutated node.messages encodings,
    random msgpack, wrong kinds, a wrong chain in HELLO, unsolicited and bogus Blocks
    replies, GetBlocks for absurd ranges, junk gossip. Each is disconnected or ignored.

Whether a payload was ignored is observed, not waited for: after the junk the client sends
a probe GetBlocks for a height nobody has; the link is FIFO, so a reply to the probe means
the beacon processed (and survived) everything before it. Throughout, the beacon keeps
producing blocks, keeps serving /api/status, and logs no traceback.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from contextlib import asynccontextmanager

import aiohttp
import msgpack
import pytest
from aiohttp import WSMsgType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain.codec import encode
from chain.crypto import SigningKey
from chain.transition import sign_record, sign_vote
from chain.types import PRECOMMIT, PREVOTE, Holding, PeerJoin, Proposal, SignedProposal, SignedVote, Vote
from node.link import FRAME_HELLO, FRAME_SEALED, Link, LinkConfig
from node.messages import (
    Blocks, ErrorMsg, GetBlocks, GetPeers, GetProof, GossipEnvelope, Hello, MessageError, PeerEntry, Peers,
    ProofMsg, ProposalMsg, ProofReply, RecordMsg, Status, VoteMsg, decode_message, encode_message,
)
from tests.chainutil import TestChain
from tools.testnet import Network, hash_disagreements, head_height, http_json, wait_for, wait_height

pytestmark = pytest.mark.slow

CHAIN_ID = "cairn-local"
PROBE_BASE = 1 << 40          # probe heights: far above any real head, so the reply is empty
_probe_ids = itertools.count(1)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    net = Network(tmp_path_factory.mktemp("fuzz"), chain_id=CHAIN_ID)
    net.create(4)
    try:
        net.start_all()
        wait_height(net.beacons, 2, timeout=60)
        yield net
    finally:
        net.stop_all()
        for node in net.all_nodes():
            node.kill()


@pytest.fixture
def target(net):
    """beacon0, checked to be alive and producing after each test."""
    b0 = net.beacons[0]
    start = head_height(b0)
    yield b0
    assert b0.running(), f"beacon0 died:\n{b0.log_tail()}"
    wait_height(net.beacons, start + 2, timeout=30)
    common, bad = hash_disagreements(net.beacons)
    assert not bad and common >= start + 2
    for node in net.beacons:
        text = node.log_path.read_text(errors="replace")
        assert "Traceback" not in text and "task failed" not in text, f"{node.name} logged a crash:\n{node.log_tail()}"


def genesis_hash(net: Network) -> bytes:
    from chain.genesis import load_genesis
    return load_genesis(net.genesis_path).hash()


def _now() -> int:
    return int(asyncio.get_running_loop().time() * 1000)


# ---------------------------------------------------------------------------- client side

async def closed_by_server(ws, timeout: float = 10.0) -> bool:
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                return True


class Peer:
    """A handshaken client link to the beacon: send payloads, read decoded messages."""

    def __init__(self, ws, link: Link) -> None:
        self.ws, self.link = ws, link
        self.inbox: list[object] = []

    async def send(self, payload: bytes) -> None:
        self.link.send(payload)
        await self._flush()

    async def _flush(self) -> None:
        for frame in self.link.data_to_send():
            await self.ws.send_bytes(frame)

    async def recv(self, timeout: float):
        """The next message from the beacon, or None once the link is closed."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type is not WSMsgType.BINARY:
                    return None
                for ev in self.link.receive(msg.data, _now()):
                    if hasattr(ev, "payload"):
                        return decode_message(ev.payload)
                await self._flush()
                if self.link.is_closed:
                    return None

    async def wait_for(self, pred, timeout: float = 10.0):
        """The first message matching pred, or None if the beacon closes the link first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching message from the beacon")
            msg = await self.recv(left)
            if msg is None:
                return None
            self.inbox.append(msg)
            if pred(msg):
                return msg

    async def outcome(self, timeout: float = 10.0) -> str:
        """'closed' if the beacon dropped us, 'ignored' if it answered a probe sent after
        everything so far (so it processed that and carried on)."""
        if self.ws.closed or self.link.is_closed:
            return "closed"
        start = PROBE_BASE + next(_probe_ids)
        try:
            await self.send(encode_message(GetBlocks(start, 1)))
        except (ConnectionError, aiohttp.ClientError):
            return "closed"
        reply = await self.wait_for(lambda m: isinstance(m, Blocks) and m.start_height == start, timeout)
        if reply is None:
            return "closed"
        assert reply.blocks == ()
        return "ignored"


@asynccontextmanager
async def handshaken(node, key: SigningKey | None = None, chain_id: str = CHAIN_ID):
    key = key or SigningKey.generate()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"ws://{node.address}/p2p", max_msg_size=0)
        link = Link(key, chain_id.encode(), initiator=True, now_ms=_now(), role="peer",
                    config=LinkConfig(max_payload=16 << 20))
        peer = Peer(ws, link)
        await peer._flush()
        async with asyncio.timeout(10):
            while not link.is_open:
                msg = await ws.receive()
                assert msg.type is WSMsgType.BINARY, msg
                link.receive(msg.data, _now())
                await peer._flush()
        try:
            yield peer
        finally:
            await ws.close()


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------- (a) no handshake

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=600).map(lambda x: bytes([FRAME_HELLO]) + x),
    st.binary(max_size=600).map(lambda x: bytes([FRAME_SEALED]) + x),
    st.text(max_size=80),
), min_size=1, max_size=4))
def test_raw_junk_is_disconnected(target, frames):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"ws://{target.address}/p2p")
            for f in frames:
                if ws.closed:
                    break
                try:
                    await (ws.send_str(f) if isinstance(f, str) else ws.send_bytes(f))
                except ConnectionError:
                    break
            assert await closed_by_server(ws)
    run(scenario())
    assert target.running()


def test_raw_text_and_oversized_frames_are_disconnected(target):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"ws://{target.address}/p2p")
            await ws.send_str("hello?")
            assert await closed_by_server(ws)
            # Far over the link's frame limit (MAX_FRAME_BYTES, ~13 MiB): refused while
            # aiohttp reads the length.
            ws = await s.ws_connect(f"ws://{target.address}/p2p")
            try:
                await ws.send_bytes(bytes([FRAME_SEALED]) + bytes(16 << 20))
            except ConnectionError:
                pass            # closed on us while we were still writing it
            assert await closed_by_server(ws)
            # Big, under the frame limit, but sealed before any HELLO.
            ws = await s.ws_connect(f"ws://{target.address}/p2p")
            try:
                await ws.send_bytes(bytes([FRAME_SEALED]) + bytes(9 << 20))
            except ConnectionError:
                pass
            assert await closed_by_server(ws)
            # A HELLO-typed frame just over the HELLO limit.
            ws = await s.ws_connect(f"ws://{target.address}/p2p")
            await ws.send_bytes(bytes([FRAME_HELLO]) + bytes(2048))
            assert await closed_by_server(ws)
            # A real HELLO for another chain.
            ws = await s.ws_connect(f"ws://{target.address}/p2p")
            link = Link(SigningKey.generate(), b"other-chain", initiator=True, now_ms=_now())
            for f in link.data_to_send():
                await ws.send_bytes(f)
            assert await closed_by_server(ws)
    run(scenario())
    assert http_json(target.api + "/api/status")["chain_id"] == CHAIN_ID


# ---------------------------------------------------------------------------- (b) after the handshake

def _valid_messages(gh: bytes) -> list[bytes]:
    """Canonical encodings of every message kind, as mutation seeds."""
    k = SigningKey.generate()
    vote = sign_vote(k, CHAIN_ID.encode(), Vote(PREVOTE, 5, 0, bytes(32), k.public_key))
    prop = SignedProposal(Proposal(5, 0, bytes(32), -1, k.public_key), bytes(64))
    rec = sign_record(k, CHAIN_ID.encode(), PeerJoin(k.public_key, "127.0.0.1:1", "127.0.0.1:2", 10, 1))
    proof = ProofMsg(k.public_key, bytes(32), b"\x92\x00\x90" + bytes(24), bytes(64))
    garbage = ProofMsg(k.public_key, b"\x01" * 32, b"junk", b"\x02" * 64)
    msgs = [
        Hello(1, CHAIN_ID, gh, 2, 0, bytes(32), "127.0.0.1:9"),
        Status(3, bytes(32)),
        GetPeers(),
        Peers((PeerEntry(k.public_key, "127.0.0.1:9", 2),)),
        GetBlocks(1, 2),
        Blocks(PROBE_BASE, ()),
        GetProof(bytes(32)),
        ProofReply(bytes(32), None),
        ErrorMsg(1, "x"),
        GossipEnvelope(VoteMsg(vote), 3),
        GossipEnvelope(ProposalMsg(prop, b"\x90", ()), 3),
        GossipEnvelope(ProposalMsg(prop, b"\x90", (proof, garbage)), 3),
        GossipEnvelope(RecordMsg(rec), 3),
        GossipEnvelope(proof, 3),
        ProofReply(bytes(32), proof),
    ]
    return [encode_message(m) for m in msgs]


_VALID = _valid_messages(bytes(32))   # genesis hash filled per net below where it matters


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for op, pos, val in ops:
        if not out:
            out.append(val)
            continue
        pos %= len(out)
        if op == 0:
            out[pos] = val                      # overwrite
        elif op == 1:
            out[pos] ^= 1 << (val % 8)         # bit flip
        elif op == 2:
            del out[pos:]                       # truncate
        elif op == 3:
            out.insert(pos, val)                # insert
        else:
            out += bytes([val]) * (pos % 64)    # append
    return bytes(out)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1), st.binary(max_size=40),
                     st.text(max_size=20), st.floats(allow_nan=False))
_msgpack_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=20)

payloads = st.one_of(
    st.binary(max_size=400),
    st.tuples(st.sampled_from(_VALID),
              st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255)),
                       min_size=1, max_size=4)).map(lambda t: _mutate(*t)),
    st.tuples(st.integers(0, 40), _msgpack_values).map(
        lambda t: msgpack.packb([t[0], t[1]], use_bin_type=True)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(junk=st.lists(payloads, min_size=1, max_size=3))
def test_fuzzed_payloads_are_dropped_or_ignored(target, junk):
    async def scenario():
        async with handshaken(target) as peer:
            for payload in junk:
                if peer.link.is_closed:
                    break
                try:
                    await peer.send(payload)
                except (ConnectionError, aiohttp.ClientError):
                    break
            result = await peer.outcome()
            # Undecodable bytes must cost the sender its link.
            undecodable = []
            for payload in junk:
                try:
                    decode_message(payload)
                except MessageError:
                    undecodable.append(payload)
            if undecodable:
                assert result == "closed", f"beacon kept a link that sent {undecodable[0][:40].hex()}"
    run(scenario())
    assert target.running()


def test_wrong_kinds_are_dropped_or_ignored(net, target):
    gh = genesis_hash(net)
    k = SigningKey.generate()

    async def one(*payloads) -> str:
        async with handshaken(target) as peer:
            for p in payloads:
                await peer.send(p)
            return await peer.outcome()

    async def scenario():
        # HELLO for another chain, or the right chain id with another genesis: dropped.
        assert await one(encode_message(Hello(1, "other-chain", gh, 2, 0, bytes(32), ""))) == "closed"
        assert await one(encode_message(Hello(1, CHAIN_ID, bytes(32), 2, 0, bytes(32), ""))) == "closed"
        # A correct HELLO is fine; so are things nobody asked for that carry no blame.
        assert await one(encode_message(Hello(1, CHAIN_ID, gh, 2, 0, bytes(32), ""))) == "ignored"
        assert await one(encode_message(ProofReply(bytes(32), None)), encode_message(ErrorMsg(6, "boo")),
                         encode_message(GetProof(bytes(32))), encode_message(GetPeers())) == "ignored"
        # A Blocks reply nobody asked for: dropped.
        assert await one(encode_message(Blocks(7, ()))) == "closed"
        # Hand-made encodings the codec must refuse: GetBlocks with count 0 or a negative
        # start, Status with a short hash, a trailing byte: dropped.
        for raw in ([6, [1, 0]], [6, [-1, 5]], [2, [5, b"\x00" * 31]]):
            assert await one(msgpack.packb(raw, use_bin_type=True)) == "closed", raw
        assert await one(encode_message(Status(1, bytes(32))) + b"\x00") == "closed"

    run(scenario())


def test_get_blocks_absurd_ranges(net, target):
    async def scenario():
        async with handshaken(target) as peer:
            head = head_height(target)
            for start in (head + 1, 1 << 40, (1 << 63) - 1):
                await peer.send(encode_message(GetBlocks(start, 256)))
                reply = await peer.wait_for(lambda m: isinstance(m, Blocks) and m.start_height == start)
                assert reply is not None and reply.blocks == ()
            # The largest honest request is served, consecutive, with the API's hashes.
            await peer.send(encode_message(GetBlocks(1, 256)))
            reply = await peer.wait_for(lambda m: isinstance(m, Blocks) and m.start_height == 1)
            assert reply is not None and len(reply.blocks) >= head
            for i, cb in enumerate(reply.blocks[:5]):
                assert cb.block.header.height == i + 1
                assert http_json(f"{target.api}/api/blocks/{i + 1}")["hash"] == cb.block.hash().hex()
            assert await peer.outcome() == "ignored"
    run(scenario())


def test_junk_gossip_is_dropped_or_ignored(net, target):
    """Votes and proposals from non-validators or with bad signatures, signed junk records:
    none may stall consensus; a neighbour that keeps sending invalid gossip is dropped."""
    vkey = SigningKey.generate()
    validator0 = http_json(f"{target.api}/api/status")["node_id"]

    async def scenario():
        # Votes by a key that is no validator: rejected; enough of them get us banned.
        async with handshaken(target) as peer:
            head = head_height(target)
            for i in range(60):
                v = sign_vote(vkey, CHAIN_ID.encode(), Vote(PRECOMMIT, head + 1, i, bytes(32), vkey.public_key))
                try:
                    await peer.send(encode_message(GossipEnvelope(VoteMsg(v), 4)))
                except (ConnectionError, aiohttp.ClientError):
                    break
            assert await peer.outcome() == "closed"
        # A validator's key on votes and a proposal with bad signatures / a junk block, the
        # proposal also with a sidecar of junk answers; junk answers flooded on their own.
        async with handshaken(target) as peer:
            head = head_height(target)
            vk = bytes.fromhex(validator0)
            bad_vote = SignedVote(Vote(PREVOTE, head + 1, 0, bytes(32), vk), bytes(64))
            bad_prop = SignedProposal(Proposal(head + 1, 0, bytes(32), -1, vk), bytes(64))
            junk = tuple(ProofMsg(vkey.public_key, bytes([i]) * 32, bytes([i]) * 1000, bytes(64)) for i in range(3))
            for msg in (VoteMsg(bad_vote), ProposalMsg(bad_prop, b"junk", ()), ProposalMsg(bad_prop, b"junk", junk),
                        junk[0], ProofMsg(vk, bytes(32), b"\x00", bytes(64))):
                await peer.send(encode_message(GossipEnvelope(msg, 2)))
            assert await peer.outcome() in ("closed", "ignored")
        # Signed records that can never be valid (a Holding of a collection that does not
        # exist, a PeerJoin with absurd values, a bad signature): flooded into the pools.
        async with handshaken(target) as peer:
            rk = SigningKey.generate()
            recs = [
                sign_record(rk, CHAIN_ID.encode(), Holding(rk.public_key, bytes(32), 0, 1, 1)),
                sign_record(rk, CHAIN_ID.encode(), PeerJoin(rk.public_key, "x:1", "y:2", 0, 0)),
                sign_record(rk, CHAIN_ID.encode(), PeerJoin(rk.public_key, "127.0.0.1:1", "127.0.0.1:2", 1 << 62, 1 << 62)),
            ]
            recs.append(type(recs[0])(recs[0].record, bytes(64)))
            for r in recs:
                await peer.send(encode_message(GossipEnvelope(RecordMsg(r), 4)))
            assert await peer.outcome() in ("closed", "ignored")
    run(scenario())


@pytest.fixture(scope="module")
def fake_chain():
    """A chain with the same id but other validators: well-formed blocks no commit check passes."""
    chain = TestChain(4, chain_id=CHAIN_ID, label="impostor")
    return chain


def test_bogus_blocks_replies_are_dropped(net, target, fake_chain):
    """Claim a head far ahead; when the beacon asks us for blocks (GET_BLOCK), answer with
    lies: blocks of another validator set, blocks at the wrong heights, the wrong range."""
    gh = genesis_hash(net)

    async def lure(peer: Peer) -> GetBlocks:
        head = head_height(target)
        await peer.send(encode_message(Hello(1, CHAIN_ID, gh, 1, head + 200, bytes(32), "")))
        req = await peer.wait_for(lambda m: isinstance(m, GetBlocks), timeout=15)
        assert req is not None, "beacon dropped a peer that only claimed a higher head"
        return req

    def fake_blocks(start: int, count: int):
        while fake_chain.height < start + count:
            fake_chain.advance()
        return tuple(fake_chain.blocks[start - 1:start - 1 + count])

    async def scenario():
        # Blocks of an impostor chain at exactly the heights asked for: they pass the
        # structural checks, fail commit verification, and cost us the link.
        async with handshaken(target) as peer:
            req = await lure(peer)
            await peer.send(encode_message(Blocks(req.start_height, fake_blocks(req.start_height, min(req.count, 8)))))
            assert await peer.outcome() == "closed"
        # Blocks shifted by one height: a broken reply.
        async with handshaken(target) as peer:
            req = await lure(peer)
            await peer.send(encode_message(Blocks(req.start_height, fake_blocks(req.start_height + 1, 2))))
            assert await peer.outcome() == "closed"
        # A reply for a range nobody asked for: unsolicited.
        async with handshaken(target) as peer:
            req = await lure(peer)
            await peer.send(encode_message(Blocks(req.start_height + 1, ())))
            assert await peer.outcome() == "closed"
        # An honest "I do not have it after all" (empty reply to the right range) is fine.
        async with handshaken(target) as peer:
            req = await lure(peer)
            await peer.send(encode_message(Blocks(req.start_height, ())))
            assert await peer.outcome() == "ignored"
    run(scenario())
    wait_for(lambda: not http_json(target.api + "/api/status")["syncing"], 30, what="beacon0 to stop syncing")
