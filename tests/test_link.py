"""The sans-IO link core: handshake, sealed framing, timers, and every rejection.

Two Link objects are wired by a fake wire that moves frames between them by hand, so
tests can drop, replay, reorder or tamper with any frame and drive the clock.
"""
from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.codec import encode
from chain.crypto import SigningKey
from node.link import (
    FRAME_HELLO, FRAME_SEALED, HEADER_BYTES, KIND_DATA, PROTOCOL_VERSION, Closed, ConnectedToSelf,
    FrameTooLarge, HandshakeDone, HandshakeError, Hello, Link, LinkConfig, LinkError, LinkNotOpen,
    Message, PeerTimeout, ProtocolViolation, ReplayOrReorder, TamperedFrame, UnexpectedKey,
    WrongChain, hkdf_sha256,
)

CHAIN = b"cairn-test"
A_KEY = SigningKey(bytes([1]) * 32)
B_KEY = SigningKey(bytes([2]) * 32)
C_KEY = SigningKey(bytes([3]) * 32)


def make_pair(*, a_key=A_KEY, b_key=B_KEY, a_chain=CHAIN, b_chain=CHAIN, expected=None,
              a_cfg=LinkConfig(), b_cfg=LinkConfig(), now=0):
    a = Link(a_key, a_chain, initiator=True, now_ms=now, role="peer", address="127.0.0.1:7001",
             expected_peer=expected, config=a_cfg, label="A")
    b = Link(b_key, b_chain, initiator=False, now_ms=now, role="beacon", address="127.0.0.1:7002",
             config=b_cfg, label="B")
    return a, b


def deliver(frames, dst, now=0):
    events = []
    for f in frames:
        events += dst.receive(f, now)
    return events


def handshake(a, b, now=0):
    """Exchange hellos then auths; return (events at a, events at b)."""
    ea, eb = [], []
    ha, hb = a.data_to_send(), b.data_to_send()
    eb += deliver(ha, b, now)
    ea += deliver(hb, a, now)
    auth_a, auth_b = a.data_to_send(), b.data_to_send()
    eb += deliver(auth_a, b, now)
    ea += deliver(auth_b, a, now)
    return ea, eb


def open_pair(**kw):
    a, b = make_pair(**kw)
    ea, eb = handshake(a, b)
    assert a.is_open and b.is_open, (ea, eb)
    return a, b


def closed_with(events, error_type):
    assert len(events) == 1 and isinstance(events[0], Closed), events
    assert isinstance(events[0].error, error_type), events[0]
    return events[0]


# ---------------------------------------------------------------- happy path

def test_handshake_then_messages_both_ways():
    a, b = make_pair(expected=B_KEY.public_key)
    ea, eb = handshake(a, b)
    assert ea == [HandshakeDone(B_KEY.public_key, "beacon", "127.0.0.1:7002")]
    assert eb == [HandshakeDone(A_KEY.public_key, "peer", "127.0.0.1:7001")]
    for i in range(5):
        a.send(b"a->b %d" % i)
        b.send(b"b->a %d" % i)
    a.send(b"")
    assert deliver(a.data_to_send(), b) == [Message(b"a->b %d" % i) for i in range(5)] + [Message(b"")]
    assert deliver(b.data_to_send(), a) == [Message(b"b->a %d" % i) for i in range(5)]


def test_directions_use_different_keys():
    a, b = open_pair()
    a.send(b"same")
    b.send(b"same")
    fa, fb = a.data_to_send()[0], b.data_to_send()[0]
    assert fa[:HEADER_BYTES] == fb[:HEADER_BYTES]        # same counter
    assert fa != fb                                        # different key
    # a frame reflected back to its sender does not open
    closed_with(a.receive(fa, 0), TamperedFrame)


def test_hkdf_rfc5869_case_1():
    okm = hkdf_sha256(bytes([0x0B]) * 22, bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_deterministic_entropy_gives_identical_frames():
    def link():
        counter = iter(range(10**6))
        return Link(A_KEY, CHAIN, initiator=True, now_ms=0,
                    entropy=lambda n: bytes([next(counter) % 256]) * n)
    assert link().data_to_send() == link().data_to_send()


# ---------------------------------------------------------------- handshake rejections

def test_wrong_chain_closes_both_sides(caplog):
    caplog.set_level(logging.INFO)
    a, b = make_pair(b_chain=b"other-chain")
    ea, eb = handshake(a, b)
    closed_with(ea, WrongChain)
    closed_with(eb, WrongChain)
    assert "WrongChain: peer is on chain b'other-chain'" in caplog.text
    assert a.data_to_send() == [] and b.data_to_send() == []


def test_protocol_version_mismatch(caplog):
    a, b = make_pair()
    hello = Hello(PROTOCOL_VERSION + 1, CHAIN, C_KEY.public_key, bytes(32), bytes(32), "", "")
    closed_with(b.receive(bytes([FRAME_HELLO]) + encode(hello), 0), WrongChain)
    assert "protocol version 2" in caplog.text


def test_unexpected_key_closes_dialer(caplog):
    a, b = make_pair(expected=C_KEY.public_key)
    ea, _ = handshake(a, b)
    closed_with(ea, UnexpectedKey)
    assert "UnexpectedKey" in caplog.text and C_KEY.public_key.hex()[:16] in caplog.text
    assert not a.is_open and a.peer_key is None


def test_connected_to_self(caplog):
    a, b = make_pair(b_key=A_KEY)
    ea, eb = handshake(a, b)
    closed_with(ea, ConnectedToSelf)
    closed_with(eb, ConnectedToSelf)
    assert "connected to self" in caplog.text


class _LyingKey:
    """Presents `real`'s public key in HELLO but signs the transcript some wrong way."""

    def __init__(self, real, how):
        self.real, self.how, self.public_key = real, how, real.public_key

    def sign(self, chain_id, kind, payload):
        if self.how == "wrong-transcript":
            return self.real.sign(chain_id, kind, payload[:-1] + bytes([payload[-1] ^ 1]))
        if self.how == "wrong-chain":
            return self.real.sign(b"other-chain", kind, payload)
        if self.how == "wrong-kind":
            return self.real.sign(chain_id, b"block", payload)
        if self.how == "reflected-side":
            side = b"R" if payload[:1] == b"I" else b"I"
            return self.real.sign(chain_id, kind, side + payload[1:])
        if self.how == "impersonation":
            return C_KEY.sign(chain_id, kind, payload)
        raise AssertionError(self.how)


@pytest.mark.parametrize("how", ["wrong-transcript", "wrong-chain", "wrong-kind", "reflected-side",
                                 "impersonation"])
@pytest.mark.parametrize("liar", ["initiator", "responder"])
def test_bad_transcript_signature(caplog, how, liar):
    if liar == "initiator":
        a, b = make_pair(a_key=_LyingKey(A_KEY, how))
        ea, eb = handshake(a, b)
        victim_events, victim = eb, b
    else:
        a, b = make_pair(b_key=_LyingKey(B_KEY, how))
        ea, eb = handshake(a, b)
        victim_events, victim = ea, a
    closed_with(victim_events, HandshakeError)
    assert not victim.is_open
    assert "transcript signature does not verify" in caplog.text


def test_data_before_auth_is_rejected(caplog):
    a, b = make_pair()
    deliver(a.data_to_send(), b)
    deliver(b.data_to_send(), a)
    a.data_to_send()                      # drop A's AUTH...
    a._send_counter = 0
    a._seal(KIND_DATA, b"sneaky")         # ...and send DATA with counter 0 instead
    closed_with(deliver(a.data_to_send(), b), HandshakeError)
    assert "expected AUTH" in caplog.text


def test_low_order_ephemeral_rejected(caplog):
    _, b = make_pair()
    hello = Hello(PROTOCOL_VERSION, CHAIN, C_KEY.public_key, bytes(32), bytes(32), "", "")
    closed_with(b.receive(bytes([FRAME_HELLO]) + encode(hello), 0), HandshakeError)
    assert "degenerate ephemeral key" in caplog.text


def test_second_hello_rejected(caplog):
    a, b = make_pair()
    hello = a.data_to_send()
    deliver(hello, b)
    closed_with(deliver(hello, b), ProtocolViolation)
    assert "HELLO frame while awaiting auth" in caplog.text


def test_sealed_before_hello_rejected(caplog):
    a, b = open_pair()
    a.send(b"x")
    _, fresh = make_pair()
    closed_with(deliver(a.data_to_send(), fresh), ProtocolViolation)
    assert "sealed frame before HELLO" in caplog.text


# ---------------------------------------------------------------- framing rejections

def test_replayed_frame_closes(caplog):
    a, b = open_pair()
    a.send(b"pay me once")
    frame = a.data_to_send()[0]
    assert b.receive(frame, 0) == [Message(b"pay me once")]
    closed_with(b.receive(frame, 0), ReplayOrReorder)
    assert "frame counter 1, expected 2" in caplog.text
    assert b.receive(frame, 0) == []          # closed for good


def test_reordered_frames_close(caplog):
    a, b = open_pair()
    a.send(b"first")
    a.send(b"second")
    f1, f2 = a.data_to_send()
    closed_with(b.receive(f2, 0), ReplayOrReorder)
    assert b.receive(f1, 0) == []
    assert "ReplayOrReorder" in caplog.text


def test_dropped_then_later_frame_closes():
    a, b = open_pair()
    for m in (b"1", b"2", b"3"):
        a.send(m)
    f1, f2, f3 = a.data_to_send()
    assert b.receive(f1, 0) == [Message(b"1")]
    closed_with(b.receive(f3, 0), ReplayOrReorder)
    assert b.receive(f2, 0) == []


def test_tampered_frame_logged(caplog):
    a, b = open_pair()
    a.send(b"hello world")
    frame = bytearray(a.data_to_send()[0])
    frame[-1] ^= 0x80
    closed_with(b.receive(bytes(frame), 0), TamperedFrame)
    assert "TamperedFrame: frame 1 fails authentication" in caplog.text


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=64), data=st.data())
def test_any_bit_flip_in_a_sealed_frame_closes(payload, data):
    a, b = open_pair()
    a.send(payload)
    frame = a.data_to_send()[0]
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    tampered = bytearray(frame)
    tampered[bit // 8] ^= 1 << (bit % 8)
    events = b.receive(bytes(tampered), 0)
    closed = closed_with(events, LinkError)
    if bit >= HEADER_BYTES * 8:
        assert isinstance(closed.error, TamperedFrame)
    elif bit >= 8:
        assert isinstance(closed.error, ReplayOrReorder)
    assert not b.is_open


@settings(max_examples=150, deadline=None)
@given(which=st.sampled_from(["hello-a", "hello-b", "auth-a", "auth-b"]), data=st.data())
def test_any_bit_flip_in_the_handshake_prevents_it(which, data):
    a, b = make_pair()
    ha, hb = a.data_to_send(), b.data_to_send()

    def flip(frames):
        frame = bytearray(frames[0])
        bit = data.draw(st.integers(0, len(frame) * 8 - 1))
        frame[bit // 8] ^= 1 << (bit % 8)
        return [bytes(frame)]

    events = deliver(flip(ha) if which == "hello-a" else ha, b)
    events += deliver(flip(hb) if which == "hello-b" else hb, a)
    auth_a, auth_b = a.data_to_send(), b.data_to_send()
    if which == "auth-a" and auth_a:
        auth_a = flip(auth_a)
    if which == "auth-b" and auth_b:
        auth_b = flip(auth_b)
    events += deliver(auth_a, b) + deliver(auth_b, a)
    # the side that received the tampered frame never completes; no wrong identity is accepted
    victim = b if which in ("hello-a", "auth-a") else a
    assert not victim.is_open
    assert any(isinstance(e, Closed) for e in events)
    for e in events:
        if isinstance(e, HandshakeDone):
            assert e.peer_key in (A_KEY.public_key, B_KEY.public_key)


def test_oversized_frame_rejected_before_decrypting(caplog):
    small = LinkConfig(max_payload=1024)
    a, b = open_pair(a_cfg=LinkConfig(max_payload=4096), b_cfg=small)
    a.send(b"x" * 1024)
    assert deliver(a.data_to_send(), b) == [Message(b"x" * 1024)]
    a.send(b"x" * 1025)
    closed_with(deliver(a.data_to_send(), b), FrameTooLarge)
    assert f"sealed frame of {small.max_frame + 1} bytes > {small.max_frame}" in caplog.text
    # a huge frame with the right counter is still refused on its length, not its tag
    _, c = open_pair(b_cfg=small)
    big = bytes([FRAME_SEALED]) + (1).to_bytes(8, "big") + bytes(small.max_frame)
    closed_with(c.receive(big, 0), FrameTooLarge)


def test_oversized_send_raises_locally_and_keeps_link():
    a, b = open_pair(a_cfg=LinkConfig(max_payload=100))
    with pytest.raises(FrameTooLarge):
        a.send(bytes(101))
    assert a.is_open
    a.send(bytes(100))
    assert deliver(a.data_to_send(), b) == [Message(bytes(100))]


def test_oversized_hello_rejected(caplog):
    _, b = make_pair()
    closed_with(b.receive(bytes([FRAME_HELLO]) + bytes(5000), 0), FrameTooLarge)
    assert "HELLO of 5001 bytes" in caplog.text


def test_send_before_open_or_after_close_raises():
    a, b = make_pair()
    with pytest.raises(LinkNotOpen):
        a.send(b"too early")
    handshake(a, b)
    assert a.close("done") == [Closed("done")]
    with pytest.raises(LinkNotOpen):
        a.send(b"too late")
    assert a.close("again") == [] and a.next_deadline() is None and a.on_timer(10**9) == []


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_garbage_before_handshake_closes_without_raising(frames):
    _, b = make_pair()
    b.data_to_send()
    events = []
    for f in frames:
        events += b.receive(f, 0)
    assert len(events) == 1 and isinstance(events[0], Closed) and isinstance(events[0].error, LinkError)
    # a well-behaved client still gets through on a fresh link
    open_pair()


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda x: bytes([FRAME_SEALED]) + x),
    st.binary(max_size=200).map(lambda x: bytes([FRAME_SEALED]) + (1).to_bytes(8, "big") + x),
    st.binary(max_size=200).map(lambda x: bytes([FRAME_HELLO]) + x),
), min_size=1, max_size=5))
def test_garbage_after_handshake_closes_without_raising(frames):
    a, b = open_pair()
    events = []
    for f in frames:
        events += b.receive(f, 0)
    assert len(events) == 1 and isinstance(events[0], Closed)
    with pytest.raises(LinkNotOpen):
        b.send(b"x")


# ---------------------------------------------------------------- timers

def test_slow_handshake_times_out(caplog):
    cfg = LinkConfig(handshake_timeout_ms=500)
    a, b = make_pair(a_cfg=cfg, b_cfg=cfg, now=1000)
    assert b.next_deadline() == 1500
    deliver(a.data_to_send(), b, now=1100)           # hello arrives, AUTH never does
    assert b.on_timer(1499) == []
    closed_with(b.on_timer(1500), PeerTimeout)
    assert "handshake not completed within 500 ms (awaiting auth)" in caplog.text
    assert b.next_deadline() is None


def test_idle_link_pings_and_closes_a_silent_peer(caplog):
    cfg = LinkConfig(ping_interval_ms=1000, idle_timeout_ms=3000)
    a, b = make_pair(a_cfg=cfg, b_cfg=cfg)
    handshake(a, b, now=0)
    assert a.next_deadline() == 1000
    assert a.on_timer(1000) == []
    pings = a.data_to_send()
    assert len(pings) == 1
    assert deliver(pings, b, now=1000) == []         # B answers PONG
    assert deliver(b.data_to_send(), a, now=1001) == []
    assert a.next_deadline() == 2001                 # the PONG reset the silence clock
    # now B goes silent: A pings at 2001 and 3001, and closes at 4001
    for t in (2001, 3001):
        assert a.on_timer(t) == []
        assert len(a.data_to_send()) == 1
    assert a.next_deadline() == 4001
    assert a.on_timer(4000) == []
    closed_with(a.on_timer(4001), PeerTimeout)
    assert "peer silent for 3000 ms" in caplog.text


def test_traffic_keeps_link_alive():
    cfg = LinkConfig(ping_interval_ms=1000, idle_timeout_ms=3000)
    a, b = make_pair(a_cfg=cfg, b_cfg=cfg)
    handshake(a, b)
    now = 0
    for _ in range(100):
        now += 500
        for link in (a, b):
            while (d := link.next_deadline()) is not None and d <= now:
                assert not any(isinstance(e, Closed) for e in link.on_timer(d))
        deliver(a.data_to_send(), b, now)
        deliver(b.data_to_send(), a, now)
    assert a.is_open and b.is_open
