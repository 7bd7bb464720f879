"""The asyncio/aiohttp shell around node.link: the /p2p websocket, dialing, limits.

One `Transport` per node. It serves `/p2p` on the node's aiohttp app (`add_routes`), or on
a standalone app (`create_app`, for tests), dials configured addresses and keeps them
connected (reconnect with bounded exponential backoff and jitter), enforces per-connection
token-bucket rate limits (messages/s and bytes/s) and a cap on connections, and keeps at
most one link per peer key. Everything it learns goes into one queue, `Transport.events`:
`PeerUp`, `Received`, `PeerDown`, in the order they happened.

Each websocket binary message is one link frame; a text frame, a websocket error, a
flood, or any link error (see node.link) closes that connection with a log line. The
per-connection tasks are a reader (this is where frames are fed to the link), a writer
(frames leave in the order the link sealed them) and a loop timer at the link's
`next_deadline()`.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from chain.crypto import SigningKey
from node.link import Closed, ConnectedToSelf, HandshakeDone, Link, LinkConfig, LinkError, Message

log = logging.getLogger(__name__)

P2P_PATH = "/p2p"
# aiohttp refuses a websocket message whose size is >= max_msg_size. We let frames up to
# one byte over the link's limit through, so the link makes the exact check (and logs it);
# anything larger aiohttp refuses while reading the length, before buffering the payload.
_WS_SLACK = 2
_CLOSE_REASON_BYTES = 120      # a websocket close reason is at most 123 bytes


class DialError(LinkError):
    """A one-shot dial (`Transport.connect`) did not end in an established link."""


@dataclass(frozen=True, slots=True)
class TransportConfig:
    link: LinkConfig = field(default_factory=LinkConfig)
    max_connections: int = 64          # inbound connections are refused (503) at this total
    msgs_per_s: float = 500.0          # per-connection token bucket on received frames
    msg_burst: float = 1000.0
    bytes_per_s: float = 32 * 1024 * 1024
    bytes_burst: float = 48 * 1024 * 1024  # must hold one largest frame
    max_queued_bytes: int = 64 * 1024 * 1024  # outgoing backlog before a peer counts as stuck
    events_queue: int = 4096           # bound of Transport.events (backpressure on readers)
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    close_timeout_s: float = 2.0       # websocket close handshake

    def __post_init__(self) -> None:
        if self.bytes_burst < self.link.max_frame:
            raise ValueError(f"bytes_burst {self.bytes_burst} cannot hold one frame of {self.link.max_frame} bytes")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")


@dataclass(frozen=True, slots=True)
class PeerInfo:
    key: bytes          # the peer's Ed25519 identity key (authenticated)
    role: str           # as the peer declared it in its HELLO
    address: str        # its declared listen address (may be empty)
    inbound: bool       # True if the peer dialed us
    remote: str         # socket address (inbound) or the URL we dialed (outbound)


@dataclass(frozen=True, slots=True)
class PeerUp:
    """A peer's link is established (repeats for a key whose link was replaced)."""
    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class Received:
    peer_key: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class PeerDown:
    """The last link to this peer closed."""
    peer_key: bytes
    reason: str


TransportEvent = PeerUp | Received | PeerDown


class TokenBucket:
    """Refills `rate` tokens per second up to `burst`; the time is passed in (ms)."""

    __slots__ = ("rate", "burst", "tokens", "stamp_ms")

    def __init__(self, rate: float, burst: float, now_ms: int) -> None:
        self.rate, self.burst, self.tokens, self.stamp_ms = rate, burst, burst, now_ms

    def take(self, amount: float, now_ms: int) -> bool:
        elapsed = max(0, now_ms - self.stamp_ms)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate / 1000)
        self.stamp_ms = now_ms
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with 'equal jitter': uniform in [d/2, d], d = min(max, initial * 2^attempt)."""
    d = min(maximum, initial * (2 ** min(attempt, 32)))
    return d / 2 + rng.random() * d / 2


def dial_url(address: str) -> str:
    """'host:port' -> 'ws://host:port/p2p'; URLs pass through."""
    return address if "://" in address else f"ws://{address}{P2P_PATH}"


class _Conn:
    """One websocket carrying one link, with its writer queue, rate limits and timer."""

    def __init__(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, link: Link,
                 inbound: bool, remote: str, cfg: TransportConfig, now_ms: int) -> None:
        self.ws = ws
        self.link = link
        self.inbound = inbound
        self.remote = remote
        self.outq: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.queued = 0
        self.msg_bucket = TokenBucket(cfg.msgs_per_s, cfg.msg_burst, now_ms)
        self.byte_bucket = TokenBucket(cfg.bytes_per_s, cfg.bytes_burst, now_ms)
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0
        self.info: PeerInfo | None = None
        self.close_task: asyncio.Future[bool] | None = None
        self.up = asyncio.Event()
        self.up_since = 0.0
        self.close_code = WSCloseCode.POLICY_VIOLATION
        self.done = asyncio.Event()


TRANSPORT_KEY: web.AppKey["Transport"] = web.AppKey("cairn_transport", "Transport")


async def p2p_handler(request: web.Request) -> web.StreamResponse:
    """GET /p2p: the websocket endpoint of the peer protocol."""
    return await request.app[TRANSPORT_KEY].accept(request)


class Transport:
    """Authenticated, encrypted links to other nodes over /p2p websockets.

    Use: `t = Transport(key, chain_id, role="beacon", address="127.0.0.1:7000")`,
    `t.add_routes(app)` on the node's aiohttp app (the app's cleanup context starts and
    closes it), `t.dial("host:port", expected_peer=...)`, then consume `t.events`.
    """

    def __init__(self, identity: SigningKey, chain_id: bytes, *, role: str, address: str = "",
                 config: TransportConfig | None = None, rng: random.Random | None = None) -> None:
        self.identity = identity
        self.chain_id = chain_id
        self.role = role
        self.address = address
        self.config = config or TransportConfig()
        self.events: asyncio.Queue[TransportEvent] = asyncio.Queue(self.config.events_queue)
        self._rng = rng or random.Random()
        self._conns: set[_Conn] = set()
        self._pending_inbound = 0
        self._peers: dict[bytes, _Conn] = {}
        self._dial_targets: dict[str, bytes | None] = {}
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._bg: set[asyncio.Future[object]] = set()
        self._runs: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._started = False
        self._closing = False
        self._closing_event = asyncio.Event()

    # ------------------------------------------------------------ lifecycle / aiohttp wiring

    def add_routes(self, app: web.Application) -> None:
        """Serve /p2p on `app`; its startup/cleanup starts and closes this transport."""
        app[TRANSPORT_KEY] = self
        app.router.add_get(P2P_PATH, p2p_handler)
        app.cleanup_ctx.append(self._lifespan)
        app.on_shutdown.append(self._on_shutdown)

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        await self.start()
        yield
        await self.close()

    async def _on_shutdown(self, app: web.Application) -> None:
        # Before aiohttp waits for handlers: our websocket handlers end once links close.
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._session = aiohttp.ClientSession()
        for url in self._dial_targets:
            self._start_dialer(url)

    async def close(self) -> None:
        """Close every link, stop dialing, release the client session. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._closing_event.set()
        for conn in list(self._conns):
            self._kill(conn, "transport closing", warn=False, code=WSCloseCode.GOING_AWAY)
        waiters = [asyncio.ensure_future(c.done.wait()) for c in self._conns]
        tasks: list[asyncio.Future[object]] = [*self._dialers.values(), *self._runs, *waiters]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.close_timeout_s * 2)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
                log.warning("transport close: %d tasks did not stop in time and were cancelled", len(pending))
        if self._bg:
            await asyncio.wait(list(self._bg), timeout=self.config.close_timeout_s)
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------ public API

    def dial(self, address: str, expected_peer: bytes | None = None) -> None:
        """Keep an outbound link to `address` ('host:port' or a ws:// URL), reconnecting
        with backoff. With `expected_peer`, any other key is refused."""
        url = dial_url(address)
        if url in self._dial_targets:
            return
        self._dial_targets[url] = expected_peer
        if self._started and not self._closing:
            self._start_dialer(url)

    async def connect(self, address: str, expected_peer: bytes | None = None) -> PeerInfo:
        """Dial once, without reconnecting (for a peer book that schedules its own dials).

        Returns the peer once the link is up (or the existing link's peer, if we already
        had one to that key); the link then lives until PeerDown. Raises DialError.
        """
        if not self._started or self._closing:
            raise DialError("transport not running")
        if expected_peer is not None and self.is_connected(expected_peer):
            info = self._peers[expected_peer].info
            if info is not None:
                return info
        url = dial_url(address)
        ws = await self._open_ws(url)
        link = self._new_link(initiator=True, expected_peer=expected_peer, label=f"outbound to {url}")
        conn = _Conn(ws, link, False, url, self.config, self._now_ms())
        run = self._spawn_run(conn)
        up = asyncio.ensure_future(conn.up.wait())
        await asyncio.wait([up, run], return_when=asyncio.FIRST_COMPLETED)
        up.cancel()
        if conn.info is not None:
            return conn.info
        existing = self._peers.get(link.peer_key) if link.peer_key is not None else None
        if existing is not None and existing.info is not None:
            return existing.info
        raise DialError(f"no link to {url}: {link.close_reason}") from link.close_error

    def send(self, peer_key: bytes, payload: bytes) -> bool:
        """Queue `payload` to the peer; False if no open link to it. Raises FrameTooLarge."""
        conn = self._peers.get(peer_key)
        if conn is None or not conn.link.is_open:
            return False
        conn.link.send(payload)
        self._pump(conn)
        return True

    def broadcast(self, payload: bytes, exclude: Iterable[bytes] = ()) -> int:
        """Send to every connected peer not in `exclude`; returns how many."""
        skip = set(exclude)
        return sum(self.send(key, payload) for key in list(self._peers) if key not in skip)

    def disconnect(self, peer_key: bytes, reason: str) -> bool:
        """Close the link to a peer (e.g. the gossip layer banned it); logged as a warning."""
        conn = self._peers.get(peer_key)
        if conn is None:
            return False
        self._kill(conn, reason)
        return True

    def peers(self) -> list[PeerInfo]:
        return [c.info for c in self._peers.values() if c.info is not None and c.link.is_open]

    def is_connected(self, peer_key: bytes) -> bool:
        conn = self._peers.get(peer_key)
        return conn is not None and conn.link.is_open

    # ------------------------------------------------------------ inbound

    async def accept(self, request: web.Request) -> web.StreamResponse:
        if self._closing or not self._started:
            raise web.HTTPServiceUnavailable(text="transport not running")
        if len(self._conns) + self._pending_inbound >= self.config.max_connections:
            log.warning("refusing /p2p connection from %s: max connections (%d) reached",
                        request.remote, self.config.max_connections)
            raise web.HTTPServiceUnavailable(text="too many connections")
        self._pending_inbound += 1
        try:
            ws = web.WebSocketResponse(max_msg_size=self.config.link.max_frame + _WS_SLACK, compress=False,
                                       autoping=True, heartbeat=None, timeout=self.config.close_timeout_s)
            await ws.prepare(request)
        finally:
            self._pending_inbound -= 1
        remote = str(request.remote)
        link = self._new_link(initiator=False, expected_peer=None, label=f"inbound from {remote}")
        await self._run(_Conn(ws, link, True, remote, self.config, self._now_ms()))
        return ws

    # ------------------------------------------------------------ outbound

    def _start_dialer(self, url: str) -> None:
        task = asyncio.create_task(self._dial_loop(url, self._dial_targets[url]), name=f"dial {url}")
        task.add_done_callback(_log_task_failure)
        self._dialers[url] = task

    async def _dial_loop(self, url: str, expected: bytes | None) -> None:
        attempt = 0
        known = expected
        cfg = self.config
        while not self._closing:
            holder = self._peers.get(known) if known is not None else None
            if holder is not None:
                # Already linked to this peer (it dialed us): dial again once that link ends.
                await self._wait_or_closing(holder.done.wait())
                continue
            ws: aiohttp.ClientWebSocketResponse | None = None
            try:
                ws = await self._open_ws(url)
            except DialError as exc:
                log.info("%s", exc)
            if ws is not None:
                link = self._new_link(initiator=True, expected_peer=expected, label=f"outbound to {url}")
                conn = _Conn(ws, link, False, url, cfg, self._now_ms())
                await self._run(conn)
                if conn.info is not None:
                    known = conn.info.key
                    # a link that stayed up resets the backoff; one dropped at once does not
                    if asyncio.get_running_loop().time() - conn.up_since >= cfg.backoff_max_s:
                        attempt = 0
                if isinstance(link.close_error, ConnectedToSelf):
                    log.warning("dial %s reaches this node itself; not dialing it again", url)
                    return
            if self._closing:
                return
            delay = backoff_delay(attempt, cfg.backoff_initial_s, cfg.backoff_max_s, self._rng)
            attempt += 1
            log.info("redialing %s in %.2f s", url, delay)
            await self._wait_or_closing(asyncio.sleep(delay))

    async def _open_ws(self, url: str) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.link.handshake_timeout_ms / 1000):
                return await self._session.ws_connect(
                    url, max_msg_size=cfg.link.max_frame + _WS_SLACK, compress=0, autoping=True,
                    heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=cfg.close_timeout_s))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DialError(f"dial {url} failed: {exc or type(exc).__name__}") from exc

    def _spawn_run(self, conn: _Conn) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(conn), name=f"link {conn.link.label}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        task.add_done_callback(_log_task_failure)
        return task

    async def _wait_or_closing(self, aw: object) -> None:
        """Await `aw` (a coroutine) unless the transport starts closing first."""
        task = asyncio.ensure_future(aw)  # type: ignore[arg-type]
        closing = asyncio.ensure_future(self._closing_event.wait())
        await asyncio.wait([task, closing], return_when=asyncio.FIRST_COMPLETED)
        for t in (task, closing):
            if not t.done():
                t.cancel()
        await asyncio.wait([task, closing])

    # ------------------------------------------------------------ one connection

    def _new_link(self, *, initiator: bool, expected_peer: bytes | None, label: str) -> Link:
        return Link(self.identity, self.chain_id, initiator=initiator, now_ms=self._now_ms(),
                    role=self.role, address=self.address, expected_peer=expected_peer,
                    config=self.config.link, label=label)

    @staticmethod
    def _now_ms() -> int:
        return int(asyncio.get_running_loop().time() * 1000)

    async def _run(self, conn: _Conn) -> None:
        """Read frames into the link until it closes; then tear the connection down."""
        self._conns.add(conn)
        writer = asyncio.create_task(self._write_loop(conn), name=f"write {conn.link.label}")
        try:
            self._pump(conn)
            while not conn.link.is_closed:
                msg = await conn.ws.receive()
                if msg.type is WSMsgType.BINARY:
                    now = self._now_ms()
                    if not conn.msg_bucket.take(1, now):
                        self._kill(conn, f"rate limit: over {self.config.msgs_per_s:g} messages/s")
                    elif not conn.byte_bucket.take(len(msg.data), now):
                        self._kill(conn, f"rate limit: over {self.config.bytes_per_s:g} bytes/s")
                    else:
                        events = conn.link.receive(msg.data, now)
                        self._pump(conn)
                        await self._dispatch(conn, events)
                elif msg.type is WSMsgType.TEXT:
                    self._kill(conn, "text frame on /p2p (binary frames only)")
                elif msg.type is WSMsgType.ERROR:
                    self._kill(conn, f"websocket error: {conn.ws.exception()}")
                else:  # CLOSE, CLOSING, CLOSED
                    code = conn.ws.close_code
                    extra = f" ({msg.extra})" if msg.type is WSMsgType.CLOSE and msg.extra else ""
                    self._kill(conn, f"connection closed by the remote, code {code}{extra}", warn=False)
        finally:
            if conn.timer is not None:
                conn.timer.cancel()
            writer.cancel()
            await asyncio.wait([writer])
            if not writer.cancelled() and writer.exception() is not None:
                log.error("writer of link %s failed", conn.link.label, exc_info=writer.exception())
            self._close_ws(conn)
            if conn.close_task is not None:
                await asyncio.wait([conn.close_task])
            self._conns.discard(conn)
            if conn.info is not None and self._peers.get(conn.info.key) is conn:
                del self._peers[conn.info.key]
                log.info("link down: peer %s (%s): %s", conn.info.key.hex()[:16], conn.remote, conn.link.close_reason)
                conn.done.set()
                await self.events.put(PeerDown(conn.info.key, conn.link.close_reason or ""))
            conn.done.set()

    async def _dispatch(self, conn: _Conn, events: list[HandshakeDone | Message | Closed]) -> None:
        for ev in events:
            if isinstance(ev, Message):
                if conn.info is not None and self._peers.get(conn.info.key) is conn:
                    await self.events.put(Received(conn.info.key, ev.payload))
            elif isinstance(ev, HandshakeDone):
                await self._register(conn, ev)
            elif isinstance(ev, Closed):
                self._close_ws(conn)   # the link logged the reason

    async def _register(self, conn: _Conn, ev: HandshakeDone) -> None:
        info = PeerInfo(ev.peer_key, ev.role, ev.address, conn.inbound, conn.remote)
        old = self._peers.get(ev.peer_key)
        if old is not None and old is not conn:
            if not self._keep_new(old, conn):
                self._kill(conn, "duplicate link to this peer; keeping the existing one", warn=False)
                return
            self._kill(old, "replaced by a newer link to the same peer", warn=False)
        conn.info = info
        self._peers[ev.peer_key] = conn
        log.info("link up: peer %s role=%s address=%s (%s %s)", ev.peer_key.hex()[:16], ev.role or "-",
                 ev.address or "-", "inbound from" if conn.inbound else "outbound to", conn.remote)
        conn.up.set()
        conn.up_since = asyncio.get_running_loop().time()
        await self.events.put(PeerUp(info))

    def _keep_new(self, old: _Conn, new: _Conn) -> bool:
        """Both ends pick the same survivor of two links: the one dialed by the smaller key;
        if both were dialed by the same side, the newer one (the older is likely stale)."""
        me = self.identity.public_key
        peer = new.link.peer_key
        assert peer is not None
        dialer_of = lambda c: peer if c.inbound else me  # noqa: E731
        preferred = min(me, peer)
        old_ok, new_ok = dialer_of(old) == preferred, dialer_of(new) == preferred
        return new_ok or not old_ok

    def _pump(self, conn: _Conn) -> None:
        """Move the link's frames to the writer and re-arm its timer."""
        for frame in conn.link.data_to_send():
            conn.outq.put_nowait(frame)
            conn.queued += len(frame)
        if conn.queued > self.config.max_queued_bytes:
            self._kill(conn, f"peer is not reading: {conn.queued} bytes queued")
            return
        self._arm(conn)

    async def _write_loop(self, conn: _Conn) -> None:
        while True:
            frame = await conn.outq.get()
            if frame is None:
                return
            conn.queued -= len(frame)
            try:
                await conn.ws.send_bytes(frame)
            except (ConnectionError, aiohttp.ClientError) as exc:
                self._kill(conn, f"write failed: {exc}", warn=False)
                return

    # ------------------------------------------------------------ timers and closing

    def _arm(self, conn: _Conn) -> None:
        deadline = conn.link.next_deadline()
        if deadline is None:
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
            return
        if conn.timer is not None:
            if conn.timer_at <= deadline:
                return      # the armed timer fires first and re-arms
            conn.timer.cancel()
        loop = asyncio.get_running_loop()
        conn.timer = loop.call_at((deadline + 1) / 1000, self._on_timer, conn)
        conn.timer_at = deadline

    def _on_timer(self, conn: _Conn) -> None:
        conn.timer = None
        deadline = conn.link.next_deadline()
        if deadline is None:
            return
        now = self._now_ms()
        if now >= deadline:
            events = conn.link.on_timer(now)
            if any(isinstance(e, Closed) for e in events):
                self._close_ws(conn)    # the link logged the reason
                return
            self._pump(conn)
        else:
            self._arm(conn)

    def _kill(self, conn: _Conn, reason: str, *, warn: bool = True,
              code: WSCloseCode = WSCloseCode.POLICY_VIOLATION) -> None:
        """Close a connection for a reason the shell found (the link logs its own)."""
        if not conn.link.is_closed:
            conn.link.close(reason)
            log.log(logging.WARNING if warn else logging.INFO, "link %s closed: %s", conn.link.label, reason)
        conn.close_code = code
        self._close_ws(conn)

    def _close_ws(self, conn: _Conn) -> None:
        """Close the websocket from outside its reader; the reader then sees CLOSED and ends."""
        if conn.close_task is not None or conn.ws.closed:
            return
        reason = (conn.link.close_reason or "").encode()[:_CLOSE_REASON_BYTES]
        task = asyncio.ensure_future(conn.ws.close(code=conn.close_code, message=reason))
        conn.close_task = task
        self._bg.add(task)
        task.add_done_callback(self._bg_done)

    def _bg_done(self, task: asyncio.Future[object]) -> None:
        self._bg.discard(task)  # type: ignore[arg-type]
        if not task.cancelled() and task.exception() is not None:
            log.warning("closing a websocket failed: %s", task.exception())


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())


def create_app(transport: Transport) -> web.Application:
    """A standalone aiohttp app serving only /p2p (tests, tools)."""
    app = web.Application()
    transport.add_routes(app)
    return app
