"""The aiohttp shell: real servers and websockets on 127.0.0.1, no mocks.

Waits poll a condition against a deadline (`until`, `next_event`), never a fixed sleep.
"""
from __future__ import annotations

import asyncio
import logging
import random
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain.crypto import SigningKey
from node.link import FRAME_SEALED, Link, LinkConfig
from node.transport import (
    DialError, PeerDown, PeerUp, Received, TokenBucket, Transport, TransportConfig, backoff_delay, create_app,
    dial_url,
)

CHAIN = b"cairn-test"
A_KEY = SigningKey(bytes([11]) * 32)
B_KEY = SigningKey(bytes([12]) * 32)
C_KEY = SigningKey(bytes([13]) * 32)
FAST = TransportConfig(backoff_initial_s=0.05, backoff_max_s=0.4, close_timeout_s=1.0)

pytestmark = pytest.mark.timeout(30)


async def until(pred, timeout=5.0, what="condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def next_event(t: Transport, kind, timeout=5.0):
    """The next event of type `kind` (earlier events of other types are dropped)."""
    async with asyncio.timeout(timeout):
        while True:
            ev = await t.events.get()
            if isinstance(ev, kind):
                return ev


@asynccontextmanager
async def serve(transport: Transport, port: int = 0, app: web.Application | None = None):
    app = app or create_app(transport)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def client(transport: Transport):
    await transport.start()
    try:
        yield transport
    finally:
        await transport.close()


def node(key, role="beacon", chain=CHAIN, config=FAST, address=""):
    return Transport(key, chain, role=role, address=address, config=config, rng=random.Random(7))


async def raw_handshake(session, port, key=C_KEY, config=LinkConfig()):
    """Dial with a bare Link (no Transport): the test controls every frame afterwards."""
    ws = await session.ws_connect(f"ws://127.0.0.1:{port}/p2p", max_msg_size=0)
    now = lambda: int(asyncio.get_running_loop().time() * 1000)  # noqa: E731
    link = Link(key, CHAIN, initiator=True, now_ms=now(), role="peer", config=config)
    for f in link.data_to_send():
        await ws.send_bytes(f)
    async with asyncio.timeout(5):
        while not link.is_open:
            msg = await ws.receive()
            assert msg.type is WSMsgType.BINARY, msg
            link.receive(msg.data, now())
            for f in link.data_to_send():
                await ws.send_bytes(f)
    return ws, link


async def closed_by_server(ws, timeout=5.0):
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                return msg


async def check_good_client_works(port, server: Transport):
    b = node(B_KEY, role="peer")
    async with client(b):
        b.dial(f"127.0.0.1:{port}", expected_peer=server.identity.public_key)
        await next_event(b, PeerUp)
        assert b.send(server.identity.public_key, b"still alive")
        ev = await next_event(server, Received)
        assert ev == Received(B_KEY.public_key, b"still alive")


# ---------------------------------------------------------------- happy path

async def test_handshake_and_messages_both_ways(caplog):
    caplog.set_level(logging.INFO)
    a = node(A_KEY, role="beacon", address="127.0.0.1:7777")
    async with serve(a) as port:
        b = node(B_KEY, role="peer", address="127.0.0.1:8888")
        async with client(b):
            b.dial(f"127.0.0.1:{port}", expected_peer=A_KEY.public_key)
            up_b = await next_event(b, PeerUp)
            up_a = await next_event(a, PeerUp)
            assert (up_b.peer.key, up_b.peer.role, up_b.peer.address, up_b.peer.inbound) == \
                (A_KEY.public_key, "beacon", "127.0.0.1:7777", False)
            assert (up_a.peer.key, up_a.peer.role, up_a.peer.address, up_a.peer.inbound) == \
                (B_KEY.public_key, "peer", "127.0.0.1:8888", True)
            assert [p.key for p in a.peers()] == [B_KEY.public_key]
            for i in range(20):
                assert b.send(A_KEY.public_key, b"b->a %d" % i)
                assert a.send(B_KEY.public_key, b"a->b %d" % i)
            got_a = [await next_event(a, Received) for _ in range(20)]
            got_b = [await next_event(b, Received) for _ in range(20)]
            assert [r.payload for r in got_a] == [b"b->a %d" % i for i in range(20)]
            assert [r.payload for r in got_b] == [b"a->b %d" % i for i in range(20)]
            big = random.Random(1).randbytes(3 * 1024 * 1024)
            assert a.broadcast(big) == 1
            assert a.broadcast(b"nobody", exclude=[B_KEY.public_key]) == 0
            assert (await next_event(b, Received)).payload == big
            assert not a.send(C_KEY.public_key, b"unknown peer")
            assert a.disconnect(B_KEY.public_key, "banned by gossip")
            assert not a.disconnect(C_KEY.public_key, "not connected")
        down = await next_event(a, PeerDown)
        assert down.peer_key == B_KEY.public_key
        assert a.peers() == []
    assert "link up: peer" in caplog.text
    assert "closed: banned by gossip" in caplog.text


async def test_routes_share_the_node_app():
    """/p2p sits beside the node's other pages on its one aiohttp server."""
    a = node(A_KEY)
    app = web.Application()

    async def index(request):
        return web.Response(text="explorer")
    app.router.add_get("/", index)
    a.add_routes(app)
    async with serve(a, app=app) as port:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/") as r:
                assert await r.text() == "explorer"
        await check_good_client_works(port, a)


# ---------------------------------------------------------------- handshake rejections

async def test_wrong_chain_is_refused_on_both_sides(caplog):
    a = node(A_KEY)
    async with serve(a) as port:
        b = node(B_KEY, chain=b"other-chain")
        async with client(b):
            b.dial(f"127.0.0.1:{port}")
            await until(lambda: caplog.text.count("WrongChain") >= 2, what="WrongChain on both sides")
            assert a.peers() == [] and b.peers() == []
        await check_good_client_works(port, a)


async def test_unexpected_key_is_refused(caplog):
    a = node(A_KEY)
    async with serve(a) as port:
        b = node(B_KEY)
        async with client(b):
            b.dial(f"127.0.0.1:{port}", expected_peer=C_KEY.public_key)
            await until(lambda: "UnexpectedKey" in caplog.text, what="UnexpectedKey")
            assert b.peers() == []
            # it keeps retrying with backoff, and keeps refusing
            await until(lambda: caplog.text.count("UnexpectedKey") >= 2, what="second refusal")
            assert b.peers() == []


async def test_dialing_itself_stops(caplog):
    caplog.set_level(logging.INFO)
    a = node(A_KEY)
    async with serve(a) as port:
        a.dial(f"127.0.0.1:{port}")
        await until(lambda: "reaches this node itself" in caplog.text, what="self-dial detection")
        assert a.peers() == []


# ---------------------------------------------------------------- bad input on a live socket

async def test_text_frame_closes_the_link(caplog):
    a = node(A_KEY)
    async with serve(a) as port:
        async with aiohttp.ClientSession() as s:
            ws, _ = await raw_handshake(s, port)
            await next_event(a, PeerUp)
            await ws.send_str("hello?")
            await closed_by_server(ws)
        await until(lambda: "text frame on /p2p" in caplog.text, what="log line")
        await next_event(a, PeerDown)
        await check_good_client_works(port, a)


async def test_replayed_and_tampered_frames_close_the_link(caplog):
    a = node(A_KEY)
    async with serve(a) as port:
        async with aiohttp.ClientSession() as s:
            ws, link = await raw_handshake(s, port)
            link.send(b"once")
            frame = link.data_to_send()[0]
            await ws.send_bytes(frame)
            assert (await next_event(a, Received)).payload == b"once"
            await ws.send_bytes(frame)
            await closed_by_server(ws)
            await until(lambda: "ReplayOrReorder" in caplog.text, what="replay log line")

            ws, link = await raw_handshake(s, port)
            link.send(b"flip me")
            frame = bytearray(link.data_to_send()[0])
            frame[12] ^= 0x04
            await ws.send_bytes(bytes(frame))
            await closed_by_server(ws)
            await until(lambda: "TamperedFrame" in caplog.text, what="tamper log line")
        await check_good_client_works(port, a)


async def test_oversized_frame_closes_the_link(caplog):
    cfg = TransportConfig(link=LinkConfig(max_payload=4096), bytes_burst=1 << 20)
    a = node(A_KEY, config=cfg)
    async with serve(a) as port:
        async with aiohttp.ClientSession() as s:
            ws, link = await raw_handshake(s, port, config=LinkConfig(max_payload=1 << 20))
            link.send(bytes(4096))
            await ws.send_bytes(link.data_to_send()[0])
            assert (await next_event(a, Received)).payload == bytes(4096)
            link.send(bytes(4097))                  # one byte over: the link refuses it
            await ws.send_bytes(link.data_to_send()[0])
            await closed_by_server(ws)
            await until(lambda: "FrameTooLarge: sealed frame of 4123 bytes > 4122" in caplog.text,
                        what="link size log line")
            ws, link = await raw_handshake(s, port, config=LinkConfig(max_payload=1 << 20))
            link.send(bytes(100_000))               # far over: aiohttp stops reading it
            await ws.send_bytes(link.data_to_send()[0])
            await closed_by_server(ws)
        await until(lambda: "websocket error" in caplog.text and "exceeds limit" in caplog.text,
                    what="websocket size log line")
        await check_good_client_works(port, a)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda x: bytes([FRAME_SEALED]) + x),
    st.text(max_size=50),
), min_size=1, max_size=4), after_handshake=st.booleans())
def test_garbage_never_crashes_the_server(frames, after_handshake):
    async def scenario():
        a = node(A_KEY)
        async with serve(a) as port:
            async with aiohttp.ClientSession() as s:
                if after_handshake:
                    ws, _ = await raw_handshake(s, port)
                else:
                    ws = await s.ws_connect(f"ws://127.0.0.1:{port}/p2p")
                for f in frames:
                    if ws.closed:
                        break
                    try:
                        await (ws.send_str(f) if isinstance(f, str) else ws.send_bytes(f))
                    except ConnectionError:
                        break
                await closed_by_server(ws)
            await until(lambda: a.peers() == [], what="link gone")
            await check_good_client_works(port, a)
    asyncio.run(scenario())


# ---------------------------------------------------------------- timers

async def test_slow_handshake_is_closed(caplog):
    a = node(A_KEY, config=TransportConfig(link=LinkConfig(handshake_timeout_ms=200)))
    async with serve(a) as port:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"ws://127.0.0.1:{port}/p2p")
            msg = await ws.receive()                 # the server's HELLO; we never answer
            assert msg.type is WSMsgType.BINARY
            await closed_by_server(ws)
        assert "PeerTimeout: handshake not completed within 200 ms" in caplog.text
        await check_good_client_works(port, a)


async def test_silent_peer_is_closed_after_idle_timeout(caplog):
    cfg = TransportConfig(link=LinkConfig(ping_interval_ms=100, idle_timeout_ms=400))
    a = node(A_KEY, config=cfg)
    async with serve(a) as port:
        async with aiohttp.ClientSession() as s:
            ws, _ = await raw_handshake(s, port)     # then never answers a PING
            t0 = asyncio.get_running_loop().time()
            pings = 0
            async with asyncio.timeout(5):
                while True:
                    msg = await ws.receive()
                    if msg.type is not WSMsgType.BINARY:
                        break
                    pings += 1
            elapsed = asyncio.get_running_loop().time() - t0
        assert pings >= 2 and 0.3 <= elapsed < 3, (pings, elapsed)
        assert "PeerTimeout: peer silent for" in caplog.text
        assert (await next_event(a, PeerDown)).peer_key == C_KEY.public_key


async def test_pings_keep_an_idle_link_up():
    cfg = TransportConfig(link=LinkConfig(ping_interval_ms=50, idle_timeout_ms=200))
    a, b = node(A_KEY, config=cfg), node(B_KEY, config=cfg)
    async with serve(a) as port, client(b):
        b.dial(f"127.0.0.1:{port}")
        await next_event(b, PeerUp)
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.8                      # four idle timeouts with no traffic
        await until(lambda: loop.time() > end or not b.peers(), what="idle period")
        assert [p.key for p in b.peers()] == [A_KEY.public_key]
        assert b.send(A_KEY.public_key, b"still here")
        assert (await next_event(a, Received)).payload == b"still here"


# ---------------------------------------------------------------- limits

async def test_flooding_peer_is_disconnected(caplog):
    a = node(A_KEY, config=TransportConfig(msgs_per_s=50, msg_burst=20))
    async with serve(a) as port:
        b = node(B_KEY)
        async with client(b):
            b.dial(f"127.0.0.1:{port}")
            await next_event(b, PeerUp)
            for i in range(500):
                if not b.send(A_KEY.public_key, b"flood %d" % i):
                    break
            await until(lambda: "rate limit: over 50 messages/s" in caplog.text, what="rate-limit log")
            assert (await next_event(b, PeerDown)).peer_key == A_KEY.public_key
            received = 0
            while not a.events.empty():
                received += isinstance(a.events.get_nowait(), Received)
            assert received <= 21


async def test_byte_rate_limit(caplog):
    cfg = TransportConfig(link=LinkConfig(max_payload=64 * 1024), bytes_per_s=100_000, bytes_burst=200_000)
    a = node(A_KEY, config=cfg)
    async with serve(a) as port:
        b = node(B_KEY)
        async with client(b):
            b.dial(f"127.0.0.1:{port}")
            await next_event(b, PeerUp)
            for _ in range(10):
                b.send(A_KEY.public_key, bytes(60_000))
            await until(lambda: "rate limit: over 100000 bytes/s" in caplog.text, what="rate-limit log")
            await next_event(b, PeerDown)


async def test_max_connections(caplog):
    a = node(A_KEY, config=TransportConfig(max_connections=1))
    async with serve(a) as port:
        b, c = node(B_KEY), node(C_KEY)
        async with client(b), client(c):
            b.dial(f"127.0.0.1:{port}")
            await next_event(a, PeerUp)
            c.dial(f"127.0.0.1:{port}")
            await until(lambda: "max connections (1) reached" in caplog.text, what="refusal log")
            assert [p.key for p in a.peers()] == [B_KEY.public_key]
            assert b.send(A_KEY.public_key, b"ok")
            assert (await next_event(a, Received)).payload == b"ok"


def test_token_bucket_and_backoff():
    bucket = TokenBucket(rate=10, burst=5, now_ms=0)
    assert all(bucket.take(1, 0) for _ in range(5)) and not bucket.take(1, 0)
    assert not bucket.take(1, 50) and bucket.take(1, 100)
    assert not bucket.take(6, 10_000)                    # never above the burst
    rng = random.Random(3)
    delays = [backoff_delay(i, 0.5, 30.0, rng) for i in range(40)]
    assert all(0.25 <= d <= 30.0 for d in delays)
    assert 0.25 <= delays[0] <= 0.5 and 1.0 <= delays[2] <= 2.0 and delays[-1] >= 15.0
    assert dial_url("10.0.0.1:7000") == "ws://10.0.0.1:7000/p2p"
    assert dial_url("ws://h:1/p2p") == "ws://h:1/p2p"
    with pytest.raises(ValueError):
        TransportConfig(link=LinkConfig(max_payload=1 << 20), bytes_burst=1000)


# ---------------------------------------------------------------- reconnects and duplicates

async def test_reconnects_with_backoff_after_the_remote_restarts(caplog):
    caplog.set_level(logging.INFO)
    b = node(B_KEY)
    async with client(b):
        async with serve(node(A_KEY)) as port:
            b.dial(f"127.0.0.1:{port}", expected_peer=A_KEY.public_key)
            await next_event(b, PeerUp)
        assert (await next_event(b, PeerDown)).peer_key == A_KEY.public_key
        await until(lambda: caplog.text.count(f"dial ws://127.0.0.1:{port}/p2p failed") >= 2,
                    what="failed redials while the remote is down")
        assert "redialing" in caplog.text
        a2 = node(A_KEY)
        async with serve(a2, port=port):
            up = await next_event(b, PeerUp)
            assert up.peer.key == A_KEY.public_key
            assert b.send(A_KEY.public_key, b"welcome back")
            assert (await next_event(a2, Received)).payload == b"welcome back"


async def test_simultaneous_dials_settle_on_one_link():
    a, b = node(A_KEY), node(B_KEY)
    async with serve(a) as port_a, serve(b) as port_b:
        a.dial(f"127.0.0.1:{port_b}")
        b.dial(f"127.0.0.1:{port_a}")
        await until(lambda: a.is_connected(B_KEY.public_key) and b.is_connected(A_KEY.public_key),
                    what="a link")
        # whichever survived, both ends agree and messages flow both ways
        for _ in range(3):
            assert len(a.peers()) == 1 and len(b.peers()) == 1
            assert a.send(B_KEY.public_key, b"x") and b.send(A_KEY.public_key, b"y")
            assert (await next_event(b, Received)).payload == b"x"
            assert (await next_event(a, Received)).payload == b"y"
        assert a.peers()[0].inbound != b.peers()[0].inbound


async def test_one_shot_connect(caplog):
    a = node(A_KEY, role="beacon", address="127.0.0.1:7777")
    async with serve(a) as port:
        b = node(B_KEY)
        async with client(b):
            info = await b.connect(f"127.0.0.1:{port}", expected_peer=A_KEY.public_key)
            assert (info.key, info.role, info.address, info.inbound) == \
                (A_KEY.public_key, "beacon", "127.0.0.1:7777", False)
            assert (await b.connect(f"127.0.0.1:{port}")).key == A_KEY.public_key   # already linked
            assert b.send(A_KEY.public_key, b"hi")
            assert (await next_event(a, Received)).payload == b"hi"
            c = node(C_KEY)
            async with client(c):
                with pytest.raises(DialError, match="UnexpectedKey") as exc_info:
                    await c.connect(f"127.0.0.1:{port}", expected_peer=B_KEY.public_key)
                assert exc_info.value.__cause__ is not None
    b = node(B_KEY)
    async with client(b):
        with pytest.raises(DialError, match=f"dial ws://127.0.0.1:{port}/p2p failed"):
            await b.connect(f"127.0.0.1:{port}")
