"""The /p2p link: authenticated key exchange and sealed framing (sans-IO).

A link is an ordered sequence of frames; over the websocket each binary message is
exactly one frame. Byte 0 of a frame is its type:

    HELLO  = 0x01 || msgpack [version, chain_id, identity, ephemeral, nonce, role, address]
    SEALED = 0x02 || counter (u64 big-endian) || ChaCha20-Poly1305-IETF ciphertext+tag
             key = the sender's direction key, nonce = 0x00000000 || counter,
             associated data = the 9 header bytes (type and counter)
    sealed plaintext = kind (1 byte) || body:
             0x00 AUTH (64-byte signature), 0x01 DATA (payload), 0x02 PING, 0x03 PONG

HELLO is canonical msgpack (chain/codec.py): version 1; chain id; the sender's Ed25519
identity key (32 B); a fresh X25519 ephemeral public key (32 B); 32 random bytes; its
role (str <= 16 B) and listen address (str <= 256 B, may be empty).

Handshake (one round trip, the same on both sides):
1. On connect, both sides send their HELLO at once. Each checks the peer's: version,
   chain id equal to its own (else WrongChain), identity key not its own and, when the
   dialer names an expected key, equal to it (else UnexpectedKey).
2. th = SHA-256("cairn/link/v1/transcript" || u32be(len hi) || hi || u32be(len hr) || hr),
   hi and hr the initiator's and responder's whole HELLO frames.
   shared = X25519(own ephemeral secret, peer ephemeral public); all-zero is rejected.
   k_i2r || k_r2i = HKDF-SHA256(ikm=shared, salt=th, info="cairn/link/v1/keys/" || chain_id, L=64).
3. Each side sends AUTH as its first sealed frame (counter 0): an Ed25519 signature, in
   the domain b"cairn/" || chain_id || b"/handshake/" || SHA-256(payload), over
   payload = side || th with side = b"I" (initiator) or b"R" (responder), checked with
   the identity key from the peer's HELLO. The link is up once the peer's AUTH verifies.
4. Every later frame is SEALED with the sender's direction key and the next counter.
   The receiver checks the frame length against the limit before decrypting
   (FrameTooLarge), accepts only counter == expected (a replayed, reordered or skipped
   frame is ReplayOrReorder), and a bad tag is TamperedFrame.

Liveness: the handshake must finish within handshake_timeout_ms of the link's creation;
after ping_interval_ms with nothing received a side sends PING (answered by PONG), and
after idle_timeout_ms with nothing received it closes the link (PeerTimeout).
Any error closes the link for good: there is no resynchronisation.

Shape (like h11/h2): `Link.receive(frame, now_ms)` and `Link.on_timer(now_ms)` return
events; every frame to write is queued and drained with `Link.data_to_send()`;
`Link.next_deadline()` says when to call `on_timer` next. The core never does I/O and
never reads the clock.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Callable

import nacl.bindings
import nacl.exceptions

from chain.codec import Len, MaxLen, PubKey, decode, encode
from chain.constants import CHAIN_ID_MAX, KIND_HANDSHAKE, MAX_MESSAGE_BYTES
from chain.crypto import SigningKey, is_valid_chain_id, sha256, verify
from chain.errors import CodecError, SignatureError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
FRAME_HELLO = 0x01
FRAME_SEALED = 0x02
KIND_AUTH = 0x00
KIND_DATA = 0x01
KIND_PING = 0x02
KIND_PONG = 0x03

HEADER_BYTES = 9            # type + u64 counter
TAG_BYTES = 16              # Poly1305
MAX_HELLO_BYTES = 1024
MAX_ROLE_BYTES = 16
MAX_ADDRESS_BYTES = 256
_COUNTER_LIMIT = 1 << 64
_TRANSCRIPT_DOMAIN = b"cairn/link/v1/transcript"
_KEYS_DOMAIN = b"cairn/link/v1/keys/"


# ---------------------------------------------------------------- errors

class LinkError(Exception):
    """Base of every link failure. A remote's fault closes that link, never the node."""


class HandshakeError(LinkError):
    """The handshake is malformed, out of order, or its signature does not verify."""


class WrongChain(HandshakeError):
    """The peer runs another chain (or another protocol version)."""


class UnexpectedKey(HandshakeError):
    """The peer's identity key is not the one we dialed for (or is our own)."""


class ConnectedToSelf(UnexpectedKey):
    """The peer presents our own identity key: we dialed ourselves."""


class ProtocolViolation(LinkError):
    """A frame of an unknown type, a malformed body, or one that is not allowed now."""


class ReplayOrReorder(LinkError):
    """A sealed frame's counter is not the next one: replayed, reordered or dropped."""


class TamperedFrame(LinkError):
    """A sealed frame fails authentication."""


class FrameTooLarge(LinkError):
    """A frame (or a payload to send) is over the size limit."""


class PeerTimeout(LinkError):
    """The handshake took too long, or the peer went silent."""


class LinkNotOpen(LinkError):
    """Local misuse: sending on a link that is not (or no longer) established."""


# ---------------------------------------------------------------- events

@dataclass(frozen=True, slots=True)
class HandshakeDone:
    peer_key: bytes
    role: str
    address: str


@dataclass(frozen=True, slots=True)
class Message:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str
    error: LinkError | None = None


Event = HandshakeDone | Message | Closed


# ---------------------------------------------------------------- wire types

@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    chain_id: Annotated[bytes, MaxLen(CHAIN_ID_MAX)]
    identity: PubKey
    ephemeral: Annotated[bytes, Len(32)]
    nonce: Annotated[bytes, Len(32)]
    role: Annotated[str, MaxLen(MAX_ROLE_BYTES)]
    address: Annotated[str, MaxLen(MAX_ADDRESS_BYTES)]


@dataclass(frozen=True, slots=True)
class LinkConfig:
    max_payload: int = MAX_MESSAGE_BYTES       # plaintext bytes of one DATA message
    handshake_timeout_ms: int = 10_000
    ping_interval_ms: int = 15_000
    idle_timeout_ms: int = 45_000

    @property
    def max_frame(self) -> int:
        """Largest wire frame a link accepts: a sealed DATA of max_payload bytes."""
        return HEADER_BYTES + 1 + self.max_payload + TAG_BYTES


class _State(Enum):
    HELLO = "awaiting hello"
    AUTH = "awaiting auth"
    OPEN = "open"
    CLOSED = "closed"


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def transcript_hash(hello_initiator: bytes, hello_responder: bytes) -> bytes:
    return sha256(_TRANSCRIPT_DOMAIN
                  + struct.pack(">I", len(hello_initiator)) + hello_initiator
                  + struct.pack(">I", len(hello_responder)) + hello_responder)


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")


class Link:
    """One end of a /p2p link. Feed it frames and timer ticks; drain data_to_send().

    Both ends queue their HELLO on construction: call data_to_send() right away.
    """

    def __init__(self, identity: SigningKey, chain_id: bytes, *, initiator: bool, now_ms: int,
                 role: str = "", address: str = "", expected_peer: bytes | None = None,
                 config: LinkConfig = LinkConfig(), label: str = "",
                 entropy: Callable[[int], bytes] = nacl.bindings.randombytes) -> None:
        if not is_valid_chain_id(chain_id):
            raise ValueError(f"invalid chain id {chain_id!r}")
        self.identity = identity
        self.chain_id = chain_id
        self.initiator = initiator
        self.expected_peer = expected_peer
        self.config = config
        self.label = label or ("outbound" if initiator else "inbound")
        self._state = _State.HELLO
        self._outbox: list[bytes] = []
        self._eph_secret = entropy(32)
        hello = Hello(PROTOCOL_VERSION, chain_id, identity.public_key,
                      nacl.bindings.crypto_scalarmult_base(self._eph_secret),
                      entropy(32), role, address)
        self._my_hello = bytes([FRAME_HELLO]) + encode(hello)
        self._outbox.append(self._my_hello)
        self._handshake_deadline = now_ms + config.handshake_timeout_ms
        self._last_recv = now_ms
        self._next_ping = now_ms + config.ping_interval_ms
        self._send_key = self._recv_key = b""
        self._send_counter = self._recv_counter = 0
        self._th = b""
        self.peer_key: bytes | None = None
        self.peer_role = ""
        self.peer_address = ""
        self.close_reason: str | None = None
        self.close_error: LinkError | None = None

    # ------------------------------------------------------------ public API

    @property
    def is_open(self) -> bool:
        return self._state is _State.OPEN

    @property
    def is_closed(self) -> bool:
        return self._state is _State.CLOSED

    def data_to_send(self) -> list[bytes]:
        """Frames to write, in order; the queue is emptied."""
        out, self._outbox = self._outbox, []
        return out

    def send(self, payload: bytes) -> None:
        """Queue one sealed DATA frame. Raises LinkNotOpen or FrameTooLarge (link stays up)."""
        if self._state is not _State.OPEN:
            raise LinkNotOpen(f"link {self.label} is {self._state.value}")
        if len(payload) > self.config.max_payload:
            raise FrameTooLarge(f"payload of {len(payload)} bytes > {self.config.max_payload}")
        self._seal(KIND_DATA, payload)

    def receive(self, frame: bytes, now_ms: int) -> list[Event]:
        """Process one frame. Never raises for the remote's faults: returns Closed instead."""
        if self._state is _State.CLOSED:
            return []
        try:
            return self._receive(frame, now_ms)
        except LinkError as exc:
            return [self._fail(exc)]

    def next_deadline(self) -> int | None:
        """When on_timer must next be called (ms, same clock as now_ms), or None."""
        if self._state is _State.CLOSED:
            return None
        if self._state is not _State.OPEN:
            return self._handshake_deadline
        return min(self._next_ping, self._last_recv + self.config.idle_timeout_ms)

    def on_timer(self, now_ms: int) -> list[Event]:
        if self._state is _State.CLOSED:
            return []
        try:
            if self._state is not _State.OPEN:
                if now_ms >= self._handshake_deadline:
                    raise PeerTimeout(f"handshake not completed within {self.config.handshake_timeout_ms} ms"
                                      f" ({self._state.value})")
                return []
            silent = now_ms - self._last_recv
            if silent >= self.config.idle_timeout_ms:
                raise PeerTimeout(f"peer silent for {silent} ms (idle timeout {self.config.idle_timeout_ms} ms)")
            if now_ms >= self._next_ping:
                self._seal(KIND_PING, b"")
                self._next_ping = now_ms + self.config.ping_interval_ms
            return []
        except LinkError as exc:
            return [self._fail(exc)]

    def close(self, reason: str) -> list[Event]:
        """Local close (shutdown, duplicate link, rate limit...). Logged by the caller."""
        if self._state is _State.CLOSED:
            return []
        self._state = _State.CLOSED
        self._outbox.clear()
        self.close_reason = reason
        return [Closed(reason)]

    # ------------------------------------------------------------ internals

    def _fail(self, exc: LinkError) -> Closed:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("link %s closed: %s", self.label, reason)
        self._state = _State.CLOSED
        self._outbox.clear()
        self.close_reason = reason
        self.close_error = exc
        return Closed(reason, exc)

    def _receive(self, frame: bytes, now_ms: int) -> list[Event]:
        if not frame:
            raise ProtocolViolation("empty frame")
        ftype = frame[0]
        if ftype == FRAME_HELLO:
            if self._state is not _State.HELLO:
                raise ProtocolViolation(f"HELLO frame while {self._state.value}")
            self._on_hello(frame)
            return []
        if ftype != FRAME_SEALED:
            raise ProtocolViolation(f"unknown frame type 0x{ftype:02x} while {self._state.value}")
        if self._state is _State.HELLO:
            raise ProtocolViolation("sealed frame before HELLO")
        kind, body = self._open(frame)
        self._last_recv = now_ms
        self._next_ping = now_ms + self.config.ping_interval_ms
        if self._state is _State.AUTH:
            if kind != KIND_AUTH:
                raise HandshakeError(f"expected AUTH as the first sealed frame, got kind {kind}")
            return [self._on_auth(body, now_ms)]
        if kind == KIND_DATA:
            return [Message(body)]
        if kind == KIND_PING and not body:
            self._seal(KIND_PONG, b"")
            return []
        if kind == KIND_PONG and not body:
            return []
        raise ProtocolViolation(f"unexpected sealed kind {kind} with {len(body)} body bytes")

    def _on_hello(self, frame: bytes) -> None:
        if len(frame) > MAX_HELLO_BYTES:
            raise FrameTooLarge(f"HELLO of {len(frame)} bytes > {MAX_HELLO_BYTES}")
        try:
            hello = decode(frame[1:], Hello, max_bytes=MAX_HELLO_BYTES)
        except CodecError as exc:
            raise HandshakeError(f"malformed HELLO: {exc}") from exc
        if hello.version != PROTOCOL_VERSION:
            raise WrongChain(f"peer speaks protocol version {hello.version}, we speak {PROTOCOL_VERSION}")
        if hello.chain_id != self.chain_id:
            raise WrongChain(f"peer is on chain {hello.chain_id!r}, we are on {self.chain_id!r}")
        if hello.identity == self.identity.public_key:
            raise ConnectedToSelf("peer presents our own identity key (connected to self)")
        if self.expected_peer is not None and hello.identity != self.expected_peer:
            raise UnexpectedKey(f"peer key {hello.identity.hex()[:16]}…, expected {self.expected_peer.hex()[:16]}…")
        try:
            shared = nacl.bindings.crypto_scalarmult(self._eph_secret, hello.ephemeral)
        except nacl.exceptions.CryptoError as exc:
            raise HandshakeError("degenerate ephemeral key (low-order point)") from exc
        if shared == bytes(32):
            raise HandshakeError("degenerate ephemeral key (all-zero shared secret)")
        hi, hr = (self._my_hello, frame) if self.initiator else (frame, self._my_hello)
        self._th = transcript_hash(hi, hr)
        keys = hkdf_sha256(shared, self._th, _KEYS_DOMAIN + self.chain_id, 64)
        k_i2r, k_r2i = keys[:32], keys[32:]
        self._send_key, self._recv_key = (k_i2r, k_r2i) if self.initiator else (k_r2i, k_i2r)
        self._eph_secret = b""
        self.peer_key, self.peer_role, self.peer_address = hello.identity, hello.role, hello.address
        self._state = _State.AUTH
        my_side = b"I" if self.initiator else b"R"
        self._seal(KIND_AUTH, self.identity.sign(self.chain_id, KIND_HANDSHAKE, my_side + self._th))

    def _on_auth(self, signature: bytes, now_ms: int) -> HandshakeDone:
        if self.peer_key is None:
            raise HandshakeError("AUTH before the peer's HELLO")
        peer_side = b"R" if self.initiator else b"I"
        try:
            verify(self.peer_key, signature, self.chain_id, KIND_HANDSHAKE, peer_side + self._th)
        except SignatureError as exc:
            raise HandshakeError(f"transcript signature does not verify: {exc}") from exc
        self._state = _State.OPEN
        self._last_recv = now_ms
        self._next_ping = now_ms + self.config.ping_interval_ms
        return HandshakeDone(self.peer_key, self.peer_role, self.peer_address)

    def _seal(self, kind: int, body: bytes) -> None:
        if self._send_counter >= _COUNTER_LIMIT:
            raise LinkError("send counter exhausted")
        header = bytes([FRAME_SEALED]) + self._send_counter.to_bytes(8, "big")
        ct = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            bytes([kind]) + body, header, _nonce(self._send_counter), self._send_key)
        self._send_counter += 1
        self._outbox.append(header + ct)

    def _open(self, frame: bytes) -> tuple[int, bytes]:
        if len(frame) > self.config.max_frame:
            raise FrameTooLarge(f"sealed frame of {len(frame)} bytes > {self.config.max_frame}")
        if len(frame) < HEADER_BYTES + 1 + TAG_BYTES:
            raise ProtocolViolation(f"sealed frame of {len(frame)} bytes is too short")
        counter = int.from_bytes(frame[1:HEADER_BYTES], "big")
        if counter != self._recv_counter:
            raise ReplayOrReorder(f"frame counter {counter}, expected {self._recv_counter}")
        try:
            plain = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                frame[HEADER_BYTES:], frame[:HEADER_BYTES], _nonce(counter), self._recv_key)
        except nacl.exceptions.CryptoError as exc:
            raise TamperedFrame(f"frame {counter} fails authentication") from exc
        self._recv_counter += 1
        return plain[0], plain[1:]
