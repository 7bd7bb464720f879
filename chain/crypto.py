"""Ed25519 identities and domain-separated signatures (pynacl / libsodium).

Every signature is over `b"cairn/" + chain_id + b"/" + kind + b"/" + sha256(payload)`,
so a signature made for one chain or one kind of message is never valid for another.
"""
from __future__ import annotations

import hashlib
import re

import nacl.bindings
import nacl.exceptions

from chain.constants import CHAIN_ID_MAX, DOMAIN_PREFIX, PUBKEY_BYTES, SIGNATURE_BYTES
from chain.errors import SignatureError

_CHAIN_ID_RE = re.compile(rb"^[a-z0-9][a-z0-9-]*$")


# H is hashlib's SHA-256: H(x) = new_sha256(x).digest(). It runs about 750 times per block
# of 100 records, so the hashing helpers of the state root and body root call the
# constructor directly rather than through sha256(), one call fewer each.
new_sha256 = hashlib.sha256


def sha256(data: bytes) -> bytes:
    return new_sha256(data).digest()


def is_valid_chain_id(chain_id: bytes) -> bool:
    """Chain ids are short lowercase ascii, so the '/' separators stay unambiguous."""
    return 0 < len(chain_id) <= CHAIN_ID_MAX and _CHAIN_ID_RE.match(chain_id) is not None


def compute_signing_message(chain_id: bytes, kind: bytes, payload: bytes) -> bytes:
    return b"".join((DOMAIN_PREFIX, chain_id, b"/", kind, b"/", new_sha256(payload).digest()))


class SigningKey:
    """An Ed25519 secret key (32-byte seed) with its public key."""

    __slots__ = ("seed", "public_key", "_sk")

    def __init__(self, seed: bytes) -> None:
        if type(seed) is not bytes or len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self.seed = seed
        self.public_key, self._sk = nacl.bindings.crypto_sign_seed_keypair(seed)

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(nacl.bindings.randombytes(32))

    def sign(self, chain_id: bytes, kind: bytes, payload: bytes) -> bytes:
        message = compute_signing_message(chain_id, kind, payload)
        return nacl.bindings.crypto_sign(message, self._sk)[:SIGNATURE_BYTES]

    def __repr__(self) -> str:
        return f"SigningKey(public_key={self.public_key.hex()[:16]}…)"


def verify(public_key: bytes, signature: bytes, chain_id: bytes, kind: bytes, payload: bytes) -> None:
    """Raise SignatureError unless signature is public_key's over (chain_id, kind, payload)."""
    if len(public_key) != PUBKEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise SignatureError("malformed key or signature length")
    if not is_valid_signature(public_key, signature, chain_id, kind, payload):
        raise SignatureError(f"bad {kind.decode()} signature by {public_key.hex()[:16]}")


def is_valid_signature(public_key: bytes, signature: bytes, chain_id: bytes, kind: bytes, payload: bytes) -> bool:
    """Whether signature is public_key's over (chain_id, kind, payload)."""
    return is_valid_signed_message(public_key, signature, compute_signing_message(chain_id, kind, payload))


def is_valid_signed_message(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """is_valid_signature given its compute_signing_message. Every signature of a block
    passes here, so it calls libsodium itself rather than through verify."""
    if len(public_key) != PUBKEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True
