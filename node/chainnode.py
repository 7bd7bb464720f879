"""The asyncio shell every node shares: store, transport, gossip, sync, status.

A `ChainNode` follows the chain: it keeps the store and the current state, exchanges
HELLO/STATUS with neighbours, syncs behind-hand blocks with GET_BLOCK (verifying each
commit and replaying it), floods gossip, discovers addresses, and serves the aiohttp app
(/p2p, /api, pages). The beacon adds consensus on top and the storage peer adds
libtorrent; the sans-IO cores (node.gossip, node.sync, node.link, chain.consensus) do the
protocol work, this module only moves bytes and time between them.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

from aiohttp import web

from chain.assignments import ShardPrior, TargetTracker
from chain.codec import decode, encode
from chain.errors import ChainError, InvalidBlock
from chain.genesis import load_genesis
from chain.keys import ensure_private_dir, load_keys
from chain.crypto import sha256
from chain.state import State, get_chain_info, get_collection, get_height
from chain.store import ChainStore
from chain.transition import process_block
from chain.types import CommittedBlock, Publish
from node.config import NodeConfig, parse_address
from node.gossip import Gossip, GossipPeerBanned, PeerBook, Verdict
from node.messages import (
    MAX_FRAME_BYTES, MAX_GET_BLOCKS, PROTOCOL_VERSION, ROLE_BEACON, ROLE_PEER, Blocks, ErrorMsg, GetBlocks,
    GetPeers, GetProof, GossipEnvelope, Hello, Peers, ProofMsg, ProofReply, ProtocolError, Status,
    decode_message, encode_message,
)
from node.sync import BadBlocksReply, Syncer, serve_get_blocks
from node.link import LinkConfig
from node.transport import PeerDown, PeerUp, Received, TokenBucket, Transport, TransportConfig
from storage.collection import parse_torrent
from storage.kv import LevelDBKV

log = logging.getLogger("cairn.node")

TICK_S = 0.25                 # maintenance: sync requests, dialing, status
STATUS_EVERY_S = 5.0
PEERS_EVERY_S = 10.0
TARGETS_META = b"targets/"
# GET_BLOCKS served per neighbour: enough for a fast sync (the bench does ~500 blocks/s),
# bounded so a flood of range requests cannot monopolise a beacon's event loop.
SERVE_BLOCKS_PER_S = 2000
SERVE_BLOCKS_BURST = 4000
# Sync pipeline: ranges of SYNC_BATCH blocks, up to SYNC_PER_PEER_INFLIGHT outstanding per
# neighbour, so the next replies are already here while a batch is replayed (one neighbour
# is enough to keep the replay busy). The reorder window is 2 * batch * max_inflight blocks.
SYNC_BATCH = 64
SYNC_MAX_INFLIGHT = 4
SYNC_PER_PEER_INFLIGHT = 3
ROLE_NAMES = {ROLE_BEACON: "beacon", ROLE_PEER: "peer"}


def now_ms() -> int:
    return int(time.time() * 1000)


class ChainNode:
    role: int = ROLE_PEER

    def __init__(self, datadir: Path, cfg: NodeConfig, *, validator: bool) -> None:
        ensure_private_dir(datadir)
        self.datadir = datadir
        self.cfg = cfg
        self.genesis = load_genesis(datadir / cfg.genesis)
        self.genesis_hash = self.genesis.hash()
        self.chain_id = self.genesis.chain_id_bytes
        self.key, self.vrf_key = load_keys(datadir, vrf=validator)
        self.kv = LevelDBKV(datadir / "db")
        self.store = ChainStore(self.kv, self.genesis)
        self.state: State = self.store.load_state()
        self.tracker = TargetTracker()
        self.tracker.rebuild(self.state, {
            key[len(TARGETS_META):]: decode(value, ShardPrior) for key, value in self.store.iter_meta(TARGETS_META)})
        # Links must carry the largest message any kind may be (a proposal with its proof
        # sidecar, a Blocks reply with one full block): the link's default is smaller.
        self.transport = Transport(self.key, self.chain_id, role=ROLE_NAMES[self.role], address=cfg.listen,
                                   config=TransportConfig(link=LinkConfig(max_payload=MAX_FRAME_BYTES)))
        self.gossip = Gossip(seed=int.from_bytes(self.key.public_key[:4], "big"), validate=self.validate_gossip)
        self.syncer = Syncer(get_height(self.state), batch=SYNC_BATCH, max_inflight=SYNC_MAX_INFLIGHT,
                             per_peer_inflight=SYNC_PER_PEER_INFLIGHT)
        self.peerbook = PeerBook(own_address=cfg.listen, own_key=self.key.public_key, bootstrap=cfg.bootstrap)
        self.hellos: dict[bytes, Hello] = {}
        self.head_event = asyncio.Event()
        self.started_ms = now_ms()
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._last_status = 0.0
        self._last_peers = 0.0
        self._torrents: dict[bytes, bytes] = {}
        self._metas: dict[bytes, object] = {}
        self.explorer = None
        self._serve_budget: dict[bytes, TokenBucket] = {}

    # ------------------------------------------------------------------ hooks for subclasses

    def make_app(self) -> web.Application:
        raise NotImplementedError

    async def on_start(self) -> None:
        """Called once the server listens and the loops run."""

    async def on_stop(self) -> None:
        """Called before the transport closes."""

    def on_new_head(self, committed: CommittedBlock) -> None:
        """A block was applied (by sync or consensus)."""

    def block_meta(self, new_state: State) -> dict[bytes, bytes]:
        """Meta to persist in the same batch as the block that leads to new_state."""
        return {}

    def on_gossip(self, peer: bytes | None, inner) -> None:
        """A flooded message was accepted (peer None: from this node)."""

    def validate_gossip(self, inner) -> Verdict:
        return Verdict.ACCEPT

    def on_tick(self) -> None:
        """Every TICK_S."""

    # ------------------------------------------------------------------ chain

    @property
    def height(self) -> int:
        return get_height(self.state)

    def hello(self) -> Hello:
        info = get_chain_info(self.state)
        return Hello(PROTOCOL_VERSION, self.genesis.chain_id, self.genesis_hash, self.role,
                     info.height, self.state.head_hash, self.cfg.listen)

    def apply_committed(self, committed: CommittedBlock, new_state: State | None = None,
                        extra_meta: dict[bytes, bytes] | None = None, *, durable: bool = True,
                        announce: bool = True) -> None:
        """Verify (unless already done), advance the targets, persist in one batch, then
        tell everyone (announce=False: the caller calls announce_head() once for a run of
        synced blocks instead)."""
        if new_state is None:
            new_state = process_block(self.state, committed.block, committed.commit)
        changed = self.tracker.apply_block(new_state)
        meta = dict(extra_meta or {})
        meta.update(self.block_meta(new_state))
        for prior in self.tracker.get_priors([a.shard_id for a in changed]):
            meta[TARGETS_META + prior.shard_id] = encode(prior)
        # Synced blocks skip the fsync (durable=False): they can be fetched again, and the
        # next durable write (a decided block, a signed vote) makes them durable anyway.
        self.store.append(committed, new_state, meta, durable=durable)
        self.state = new_state
        self.syncer.on_applied(get_height(new_state))
        self.on_new_head(committed)
        if announce:
            self.announce_head()

    def announce_head(self) -> None:
        """Tell neighbours (Status), head waiters and the explorer about the current head."""
        self.broadcast_direct(Status(self.height, self.state.head_hash))
        self.head_event.set()
        self.head_event = asyncio.Event()
        if self.explorer is not None:
            asyncio.get_running_loop().create_task(self.explorer.notify())

    def collection_torrent(self, info_hash: bytes) -> bytes | None:
        """The .torrent of a collection, from the Publish record in the block that registered it."""
        cached = self._torrents.get(info_hash)
        if cached is not None:
            return cached
        coll = get_collection(self.state, info_hash)
        block = self.store.get_block(coll.published_height) if coll is not None else None
        for signed in block.body if block is not None else ():
            rec = signed.record
            if isinstance(rec, Publish) and sha256(rec.torrent) == coll.torrent_digest:
                self._torrents[info_hash] = rec.torrent
                return rec.torrent
        return None

    def collection_meta(self, info_hash: bytes):
        torrent = self.collection_torrent(info_hash)
        if torrent is None:
            return None
        meta = self._metas.get(info_hash)
        if meta is None:
            meta = self._metas[info_hash] = parse_torrent(torrent, max_shard_bytes=self.genesis.params.max_shard_bytes)
        return meta

    def collection_files(self, info_hash: bytes, coll=None) -> list[dict]:
        meta = self.collection_meta(info_hash)
        return [{"path": f.path, "length": f.length} for f in meta.files] if meta else []

    # ------------------------------------------------------------------ sending

    def send(self, peer: bytes, msg) -> None:
        self.transport.send(peer, encode_message(msg))

    def broadcast_direct(self, msg) -> None:
        self.transport.broadcast(encode_message(msg))

    def publish(self, inner) -> None:
        """Flood a message we originate (it is also marked seen here)."""
        for peer, env in self.gossip.publish(inner, now_ms()):
            if self.wants(peer, inner):
                self.send(peer, env)

    def wants(self, peer: bytes, inner) -> bool:
        """Proof answers (16 KiB each) only matter to beacons: storage peers never get
        each other's, which saves bandwidth and hands a lazy peer nothing to replay."""
        if isinstance(inner, ProofMsg):
            hello = self.hellos.get(peer)
            return hello is not None and hello.role == ROLE_BEACON
        return True

    # ------------------------------------------------------------------ receiving

    async def _event_loop(self) -> None:
        while True:
            ev = await self.transport.events.get()
            try:
                if isinstance(ev, Received):
                    if not self.transport.is_connected(ev.peer_key):
                        continue   # queued before its link was closed for misbehaving
                    self._on_received(ev.peer_key, ev.payload)
                elif isinstance(ev, PeerUp):
                    self._on_peer_up(ev)
                elif isinstance(ev, PeerDown):
                    self._on_peer_down(ev)
            except ProtocolError as exc:
                peer = getattr(ev, "peer_key", None)
                log.warning("closing link to %s: %s", peer.hex()[:16] if peer else "?", exc)
                if peer:
                    self.transport.disconnect(peer, str(exc)[:100])

    def _on_peer_up(self, ev: PeerUp) -> None:
        self.gossip.add_neighbour(ev.peer.key)
        self.send(ev.peer.key, self.hello())

    def _on_peer_down(self, ev: PeerDown) -> None:
        self._serve_budget.pop(ev.peer_key, None)
        self.gossip.remove_neighbour(ev.peer_key)
        self.syncer.remove_peer(ev.peer_key)
        hello = self.hellos.pop(ev.peer_key, None)
        if hello and hello.listen_address:
            self.peerbook.on_disconnected(hello.listen_address, now_ms())

    def _on_received(self, peer: bytes, payload: bytes) -> None:
        msg = decode_message(payload)          # MessageError closes the link
        now = now_ms()
        if isinstance(msg, GossipEnvelope):
            try:
                delivery = self.gossip.on_message(peer, msg, now)
            except GossipPeerBanned as exc:
                raise ProtocolError(str(exc)) from exc
            for to, env in delivery.forwards:
                if self.wants(to, env.inner):
                    self.send(to, env)
            if delivery.deliver:
                self.on_gossip(peer, msg.inner)
        elif isinstance(msg, Hello):
            self._on_hello(peer, msg, now)
        elif isinstance(msg, Status):
            self.syncer.on_status(peer, msg.head_height, now)
        elif isinstance(msg, GetBlocks):
            bucket = self._serve_budget.setdefault(peer, TokenBucket(SERVE_BLOCKS_PER_S, SERVE_BLOCKS_BURST, now))
            if bucket.take(min(max(msg.count, 1), MAX_GET_BLOCKS), now):
                self.send(peer, serve_get_blocks(self.store.get_blocks, msg))
            else:
                log.info("peer %s asks for blocks faster than %d/s; request dropped", peer.hex()[:16], SERVE_BLOCKS_PER_S)
        elif isinstance(msg, Blocks):
            self._on_blocks(peer, msg, now)
        elif isinstance(msg, GetPeers):
            self.send(peer, self.peerbook.advertise())
        elif isinstance(msg, Peers):
            self.peerbook.on_peers(peer, msg, now)
        elif isinstance(msg, GetProof):
            self.send(peer, ProofReply(msg.challenge_id, self.lookup_proof(msg.challenge_id)))
        elif isinstance(msg, ErrorMsg):
            log.info("peer %s reports error %d: %s", peer.hex()[:16], msg.code, msg.text)
        else:
            self.on_direct(peer, msg)

    def on_direct(self, peer: bytes, msg) -> None:
        log.debug("ignoring %s from %s", type(msg).__name__, peer.hex()[:16])

    def lookup_proof(self, challenge_id: bytes):
        return None

    def _on_hello(self, peer: bytes, msg: Hello, now: int) -> None:
        if msg.chain_id != self.genesis.chain_id or msg.genesis_hash != self.genesis_hash:
            raise ProtocolError(f"peer is on another chain ({msg.chain_id}, genesis {msg.genesis_hash.hex()[:16]})")
        self.hellos[peer] = msg
        if msg.listen_address:
            self.peerbook.on_connected(msg.listen_address, peer, msg.role, now)
        self.syncer.on_status(peer, msg.head_height, now)

    def _on_blocks(self, peer: bytes, msg: Blocks, now: int) -> None:
        try:
            ready = self.syncer.on_blocks(peer, msg, now)
        except BadBlocksReply as exc:
            raise ProtocolError(str(exc)) from exc
        # While catching up, neighbours, head waiters and the explorer hear of the head once
        # per reply, not once per block: a Status per block would also run into the
        # neighbour's per-link message rate limit and get this link closed mid-sync.
        unannounced = False
        for committed in ready:
            if committed.block.header.height != self.height + 1:
                continue
            syncing = self.syncer.is_syncing
            try:
                self.apply_committed(committed, durable=not syncing, announce=not syncing)
                unannounced = syncing
            except InvalidBlock as exc:
                blamed = self.syncer.on_apply_failed(committed.block.header.height)
                log.warning("synced block %d rejected (%s); blaming %s", committed.block.header.height, exc,
                            blamed.hex()[:16] if blamed else "?")
                if blamed:
                    self.transport.disconnect(blamed, "sent an invalid block")
                break
        if unannounced:
            self.announce_head()
        self._request_blocks(now)

    def _request_blocks(self, now: int) -> None:
        for peer, req in self.syncer.next_requests(now):
            self.send(peer, req)

    # ------------------------------------------------------------------ maintenance

    async def _tick_loop(self) -> None:
        while True:
            now = now_ms()
            self._request_blocks(now)
            mono = time.monotonic()
            if mono - self._last_status > STATUS_EVERY_S:
                self._last_status = mono
                self.broadcast_direct(Status(self.height, self.state.head_hash))
            if mono - self._last_peers > PEERS_EVERY_S:
                self._last_peers = mono
                self.broadcast_direct(GetPeers())
                self._dial_discovered(now)
            self.on_tick()
            await asyncio.sleep(TICK_S)

    def _dial_discovered(self, now: int) -> None:
        connected = {h.listen_address for h in self.hellos.values()}
        for address in self.peerbook.to_dial(now, want=8):
            if address not in connected and address != self.cfg.listen:
                self.transport.dial(address)

    def dial_initial(self) -> None:
        for address in self.cfg.bootstrap:
            if address != self.cfg.listen:
                self.transport.dial(address)

    # ------------------------------------------------------------------ lifecycle

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("node task failed; stopping", exc_info=task.exception())
            self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        app = self.make_app()
        self.transport.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = parse_address(self.cfg.listen)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        log.info("%s %s listening on %s, chain %s at height %d", ROLE_NAMES[self.role],
                 self.key.public_key.hex()[:16], self.cfg.listen, self.genesis.chain_id, self.height)
        try:
            self.dial_initial()
            self._spawn(self._event_loop())
            self._spawn(self._tick_loop())
            await self.on_start()
            await self._stop.wait()
        finally:
            log.info("shutting down")
            await self.on_stop()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await runner.cleanup()
            await self.transport.close()
            self.kv.close()
            log.info("stopped cleanly at height %d", self.height)


def run_node(node_factory) -> int:
    """Run a node until SIGINT/SIGTERM; exit 0 on a clean shutdown."""
    async def main() -> None:
        node = node_factory()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.request_stop)
        await node.run()

    try:
        asyncio.run(main())
    except ChainError as exc:
        log.error("%s", exc)
        return 2
    return 0
