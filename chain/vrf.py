"""ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381, suite 0x03): the chain's randomness source.

Each block proposer proves `beta = VRF(vrf_key, alpha)` for an input it does not control;
anyone holding the public key checks the proof and gets the same 64-byte `beta`. The
output is unique per (key, input), so the only freedom a proposer has is to withhold.

Layout of a proof (80 bytes): Gamma (32, a point) || c (16, challenge) || s (32, scalar).

Rules stricter than the RFC, applied identically on every node:
- the public key must be a canonical encoding of a point in the prime-order subgroup
  (the RFC only asks "not of small order"; keys made by `public_key_from_seed` always are);
- Gamma must be a canonical encoding of a point in the prime-order subgroup, not of small
  order (the RFC would accept Gamma plus a torsion point whenever c kills that torsion,
  giving a second proof with the same beta);
- s < L.
Consensus compares `beta`, never proof bytes.

Every group operation and all arithmetic on secret scalars (x, k, s = k + c*x) runs in
libsodium; secret-dependent multiplications (x*B, x*H, k*B, k*H) are constant time there.
Python integers only compare public encodings against P and L.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import NamedTuple

import nacl.exceptions
from nacl.bindings import (
    crypto_core_ed25519_add,
    crypto_core_ed25519_is_valid_point,
    crypto_core_ed25519_scalar_add,
    crypto_core_ed25519_scalar_mul,
    crypto_core_ed25519_scalar_reduce,
    crypto_core_ed25519_sub,
    crypto_scalarmult_ed25519_base_noclamp,
    crypto_scalarmult_ed25519_noclamp,
)

from chain.errors import ChainError


class VRFError(ChainError):
    """A VRF key, input or proof is malformed or does not verify."""


# --- Suite parameters (RFC 9381 section 5.5) ---------------------------------------------

SUITE_STRING = b"\x03"  # ECVRF-EDWARDS25519-SHA512-TAI
ENCODE_TO_CURVE_FRONT = b"\x01"
CHALLENGE_FRONT = b"\x02"
PROOF_TO_HASH_FRONT = b"\x03"
DOMAIN_BACK = b"\x00"

SEED_LEN = 32  # RFC 8032 secret key
POINT_LEN = 32  # ptLen
SCALAR_LEN = 32  # qLen
CHALLENGE_LEN = 16  # cLen
PROOF_LEN = POINT_LEN + CHALLENGE_LEN + SCALAR_LEN  # 80
BETA_LEN = 64  # SHA-512 output
MAX_TAI_COUNTER = 255  # ctr is one octet

# Field prime and group order of edwards25519 (RFC 8032 section 5.1).
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493

IDENTITY = b"\x01" + bytes(31)  # encoding of the neutral point (0, 1)
_Y_MASK = (1 << 255) - 1  # the top bit of an encoding is the sign of x
_ZERO_SCALAR = bytes(SCALAR_LEN)


# --- Encodings -----------------------------------------------------------------------------


def _require_bytes(name: str, value: object, length: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise VRFError(f"{name} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise VRFError(f"{name} must be {length} bytes, got {len(value)}")
    return value


def _y_is_canonical(encoding: bytes) -> bool:
    """RFC 8032 decoding step 1: the y coordinate (low 255 bits) must be below P."""
    return (int.from_bytes(encoding, "little") & _Y_MASK) < P


def is_prime_order_point(encoding: bytes) -> bool:
    """Canonical encoding of a point of order L (not small order, no torsion part).

    libsodium's is_valid_point checks canonicity too; the explicit y < P test keeps the
    consensus rule from resting on that detail of the library.
    """
    return (
        isinstance(encoding, bytes)
        and len(encoding) == POINT_LEN
        and _y_is_canonical(encoding)
        and crypto_core_ed25519_is_valid_point(encoding)
    )


# --- Group operations (libsodium) ----------------------------------------------------------


def _mul(scalar: bytes, point: bytes) -> bytes:
    """scalar * point for a reduced scalar (< L) and a prime-order point or IDENTITY.

    libsodium refuses a zero scalar and an identity result; for a point of order L both
    happen only when scalar == 0, which is the identity by definition. (The zero test is
    not constant time; a secret scalar is zero with probability about 2^-252.)
    """
    if scalar == _ZERO_SCALAR or point == IDENTITY:
        return IDENTITY
    return crypto_scalarmult_ed25519_noclamp(scalar, point)


def _mul_base(scalar: bytes) -> bytes:
    """scalar * B for a reduced scalar (< L)."""
    if scalar == _ZERO_SCALAR:
        return IDENTITY
    return crypto_scalarmult_ed25519_base_noclamp(scalar)


def _times_cofactor(point: bytes) -> bytes:
    """8 * point by three doublings; works on any curve point, torsion or not."""
    for _ in range(3):
        point = crypto_core_ed25519_add(point, point)
    return point


def _candidate_times_cofactor(candidate: bytes) -> bytes | None:
    """8 * string_to_point(candidate), or None when the candidate is INVALID.

    string_to_point is RFC 8032 section 5.1.3 decoding and accepts every curve point,
    including those with a torsion component (which libsodium's is_valid_point refuses).
    libsodium's point addition decodes its inputs that way and fails when y has no x, so
    doubling the candidate is the decoding test; y >= P is refused first because libsodium
    would silently reduce it. The only other encodings RFC 8032 refuses are x = -0 for
    y = 1 and y = -1 (libsodium accepts them), both of small order: 8 times either is the
    identity, which the caller skips just as it skips INVALID, so H is the same either way.
    """
    if not _y_is_canonical(candidate):
        return None
    try:
        doubled = crypto_core_ed25519_add(candidate, candidate)
    except nacl.exceptions.RuntimeError:  # no point on the curve has this y
        return None
    quadrupled = crypto_core_ed25519_add(doubled, doubled)
    return crypto_core_ed25519_add(quadrupled, quadrupled)


def _reduce(scalar: bytes) -> bytes:
    """Any little-endian integer of up to 64 bytes, mod L, in constant time."""
    return crypto_core_ed25519_scalar_reduce(scalar.ljust(64, b"\x00"))


# --- Keys ----------------------------------------------------------------------------------


def secret_scalar(secret_seed: bytes) -> bytes:
    """x: the clamped first half of SHA-512(seed), as for Ed25519 (unreduced, 32 bytes)."""
    _require_bytes("secret seed", secret_seed, SEED_LEN)
    digest = bytearray(hashlib.sha512(secret_seed).digest()[:SCALAR_LEN])
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return bytes(digest)


def public_key_from_seed(secret_seed: bytes) -> bytes:
    """Y = x*B, the same public key Ed25519 derives from this seed."""
    return _mul_base(_reduce(secret_scalar(secret_seed)))


# --- RFC 9381 building blocks --------------------------------------------------------------


class HashToCurve(NamedTuple):
    point: bytes  # H, in the prime-order subgroup
    counter: int  # the ctr value whose candidate was accepted


def hash_to_curve_tai(public_key: bytes, alpha: bytes) -> HashToCurve:
    """ECVRF_encode_to_curve_try_and_increment (section 5.4.1.1), salt = public key."""
    _require_bytes("public key", public_key, POINT_LEN)
    _require_bytes("alpha", alpha)
    prefix = SUITE_STRING + ENCODE_TO_CURVE_FRONT + public_key + alpha
    for ctr in range(MAX_TAI_COUNTER + 1):
        candidate = hashlib.sha512(prefix + bytes([ctr]) + DOMAIN_BACK).digest()[:POINT_LEN]
        point = _candidate_times_cofactor(candidate)
        # INVALID candidates and small-order ones (whose multiple is the identity) are skipped.
        if point is not None and point != IDENTITY:
            return HashToCurve(point, ctr)
    raise VRFError("hash to curve found no point in 256 tries")


def hash_to_curve(public_key: bytes, alpha: bytes) -> bytes:
    """H = ECVRF_encode_to_curve(Y, alpha)."""
    return hash_to_curve_tai(public_key, alpha).point


def nonce(secret_seed: bytes, h_point: bytes) -> bytes:
    """k (reduced, 32 bytes): ECVRF_nonce_generation_RFC8032 (section 5.4.2.2).

    Derived like an Ed25519 nonce from the second half of SHA-512(seed); this is why a
    VRF key must never double as a signing key.
    """
    _require_bytes("secret seed", secret_seed, SEED_LEN)
    _require_bytes("H", h_point, POINT_LEN)
    prefix = hashlib.sha512(secret_seed).digest()[SCALAR_LEN:]
    return _reduce(hashlib.sha512(prefix + h_point).digest())


def challenge(public_key: bytes, h_point: bytes, gamma: bytes, u: bytes, v: bytes) -> bytes:
    """c (16 bytes): ECVRF_challenge_generation (section 5.4.3), public key included."""
    data = SUITE_STRING + CHALLENGE_FRONT + public_key + h_point + gamma + u + v + DOMAIN_BACK
    return hashlib.sha512(data).digest()[:CHALLENGE_LEN]


class DecodedProof(NamedTuple):
    gamma: bytes  # point, prime-order subgroup
    c: bytes  # 16 bytes, little-endian
    s: bytes  # 32 bytes, little-endian, < L


def decode_proof(proof: bytes) -> DecodedProof:
    """ECVRF_decode_proof (section 5.4.4) with this chain's stricter Gamma rule."""
    _require_bytes("proof", proof, PROOF_LEN)
    gamma = proof[:POINT_LEN]
    c = proof[POINT_LEN : POINT_LEN + CHALLENGE_LEN]
    s = proof[POINT_LEN + CHALLENGE_LEN :]
    if not is_prime_order_point(gamma):
        raise VRFError("Gamma is not a canonical point of prime order")
    if int.from_bytes(s, "little") >= L:
        raise VRFError("s is not reduced (s >= L)")
    return DecodedProof(gamma, c, s)


def _beta_from_gamma(gamma: bytes) -> bytes:
    data = SUITE_STRING + PROOF_TO_HASH_FRONT + _times_cofactor(gamma) + DOMAIN_BACK
    return hashlib.sha512(data).digest()


# --- The VRF -------------------------------------------------------------------------------


def prove(secret_seed: bytes, alpha: bytes) -> bytes:
    """ECVRF_prove (section 5.1): the 80-byte proof pi for alpha under this seed."""
    _require_bytes("alpha", alpha)
    x = _reduce(secret_scalar(secret_seed))
    public_key = _mul_base(x)
    h_point = hash_to_curve(public_key, alpha)
    gamma = _mul(x, h_point)
    k = nonce(secret_seed, h_point)
    c = challenge(public_key, h_point, gamma, _mul_base(k), _mul(k, h_point))
    c_times_x = crypto_core_ed25519_scalar_mul(c.ljust(SCALAR_LEN, b"\x00"), x)
    s = crypto_core_ed25519_scalar_add(k, c_times_x)
    return gamma + c + s


def proof_to_hash(proof: bytes) -> bytes:
    """ECVRF_proof_to_hash (section 5.2): beta, after checking the proof decodes.

    This does not verify the proof; use `verify` on anything received from a peer.
    """
    return _beta_from_gamma(decode_proof(proof).gamma)


def verify(public_key: bytes, proof: bytes, alpha: bytes) -> bytes:
    """ECVRF_verify (section 5.3): beta if the proof is valid for (key, alpha), else VRFError."""
    _require_bytes("public key", public_key, POINT_LEN)
    _require_bytes("alpha", alpha)
    if not is_prime_order_point(public_key):
        raise VRFError("public key is not a canonical point of prime order")
    gamma, c, s = decode_proof(proof)
    h_point = hash_to_curve(public_key, alpha)
    c_scalar = c.ljust(SCALAR_LEN, b"\x00")  # c < 2^128 < L: already reduced
    u = crypto_core_ed25519_sub(_mul_base(s), _mul(c_scalar, public_key))
    v = crypto_core_ed25519_sub(_mul(s, h_point), _mul(c_scalar, gamma))
    if not hmac.compare_digest(c, challenge(public_key, h_point, gamma, u, v)):
        raise VRFError("proof does not verify")
    return _beta_from_gamma(gamma)
