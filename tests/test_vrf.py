"""ECVRF-EDWARDS25519-SHA512-TAI: RFC 9381 vectors, a pure-Python reference, strict rejects."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import (
    crypto_core_ed25519_add,
    crypto_scalarmult_ed25519_base_noclamp,
    crypto_scalarmult_ed25519_noclamp,
)

from chain import constants, vrf
from chain.errors import ChainError
from chain.vrf import L, P, VRFError

# --- Locating the RFC 9381 vectors ------------------------------------------------------------
# The repository carries its own copy; the shared copy (../shared/vectors beside the repo, or
# $CAIRN_VECTORS_DIR) is what it was copied from, and the two must agree when both exist.

VECTOR_FILE = "rfc9381_ecvrf_edwards25519.json"
REPO_ROOT = Path(__file__).resolve().parents[1]
IN_REPO_VECTORS = REPO_ROOT / "vectors" / VECTOR_FILE
SHARED_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / VECTOR_FILE
ENV_VECTORS_DIR = "CAIRN_VECTORS_DIR"


def _external_vector_files() -> list[Path]:
    paths = []
    if os.environ.get(ENV_VECTORS_DIR):
        paths.append(Path(os.environ[ENV_VECTORS_DIR]) / VECTOR_FILE)
    paths.append(SHARED_VECTORS)
    return paths


@pytest.fixture(scope="session")
def vectors() -> dict:
    for path in [IN_REPO_VECTORS, *_external_vector_files()]:
        if path.is_file():
            return json.loads(path.read_text())
    looked = ", ".join(str(p) for p in [IN_REPO_VECTORS, *_external_vector_files()])
    pytest.fail(f"RFC 9381 test vectors {VECTOR_FILE} not found; looked in: {looked}")


@pytest.fixture(scope="session")
def tai(vectors) -> dict[int, dict]:
    return {v["example"]: v for v in vectors["tai"]}


def test_vector_copies_agree():
    assert IN_REPO_VECTORS.is_file(), f"in-repo vector copy missing: {IN_REPO_VECTORS}"
    ours = json.loads(IN_REPO_VECTORS.read_text())
    if os.environ.get(ENV_VECTORS_DIR):
        env_copy = Path(os.environ[ENV_VECTORS_DIR]) / VECTOR_FILE
        assert env_copy.is_file(), f"${ENV_VECTORS_DIR} is set but {env_copy} does not exist"
    for path in _external_vector_files():
        if path.is_file():
            assert json.loads(path.read_text()) == ours, f"{path} differs from {IN_REPO_VECTORS}"
    assert sorted(v["example"] for v in ours["tai"]) == [16, 17, 18]


def test_sizes_match_chain_constants():
    assert vrf.PROOF_LEN == constants.VRF_PROOF_BYTES == 80
    assert vrf.POINT_LEN == constants.PUBKEY_BYTES
    assert issubclass(VRFError, ChainError)


# --- Independent pure-Python reference (RFC 8032 arithmetic, RFC 9381 steps) ------------------
# Slow and not constant time: only for cross-checking chain.vrf on public test inputs.

_D = (-121665 * pow(121666, P - 2, P)) % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)
_REF_IDENTITY = (0, 1, 1, 0)


def _ref_add(p1, p2):  # RFC 8032 section 5.1.4, extended coordinates
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * 2 * _D * t2 % P
    d = z1 * 2 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _ref_mul(n: int, point):
    acc = _REF_IDENTITY
    while n:
        if n & 1:
            acc = _ref_add(acc, point)
        point = _ref_add(point, point)
        n >>= 1
    return acc


def _ref_encode(point) -> bytes:
    x, y, z, _ = point
    zinv = pow(z, P - 2, P)
    x, y = x * zinv % P, y * zinv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _ref_decode(s: bytes):
    """RFC 8032 section 5.1.3: None when s is not a canonical encoding of a curve point."""
    y = int.from_bytes(s, "little") & ((1 << 255) - 1)
    sign = s[31] >> 7
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * _SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


_REF_B = _ref_decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def _ref_hash_to_curve(pk: bytes, alpha: bytes) -> tuple[bytes, int]:
    for ctr in range(256):
        h = hashlib.sha512(b"\x03\x01" + pk + alpha + bytes([ctr]) + b"\x00").digest()
        point = _ref_decode(h[:32])
        if point is not None:
            point = _ref_mul(8, point)
            if _ref_encode(point) != _ref_encode(_REF_IDENTITY):
                return _ref_encode(point), ctr
    raise AssertionError("unreachable")


def _ref_prove(seed: bytes, alpha: bytes) -> bytes:
    digest = hashlib.sha512(seed).digest()
    x = int.from_bytes(digest[:32], "little")
    x = (x & ~7 & ((1 << 254) - 1)) | (1 << 254)
    pk = _ref_encode(_ref_mul(x, _REF_B))
    h_string, _ = _ref_hash_to_curve(pk, alpha)
    h = _ref_decode(h_string)
    gamma = _ref_encode(_ref_mul(x, h))
    k = int.from_bytes(hashlib.sha512(digest[32:] + h_string).digest(), "little") % L
    u, v = _ref_encode(_ref_mul(k, _REF_B)), _ref_encode(_ref_mul(k, h))
    c_string = hashlib.sha512(b"\x03\x02" + pk + h_string + gamma + u + v + b"\x00").digest()[:16]
    s = (k + int.from_bytes(c_string, "little") * x) % L
    return gamma + c_string + s.to_bytes(32, "little")


def _ref_proof_to_hash(proof: bytes) -> bytes:
    gamma8 = _ref_encode(_ref_mul(8, _ref_decode(proof[:32])))
    return hashlib.sha512(b"\x03\x03" + gamma8 + b"\x00").digest()


def _order(encoding: bytes) -> int:
    point = _ref_decode(encoding)
    for n in (1, 2, 4, 8):
        if _ref_encode(_ref_mul(n, point)) == vrf.IDENTITY:
            return n
    return 0  # not of small order


# The eight points of order dividing 8, canonically encoded (libsodium's small-order list).
SMALL_ORDER_POINTS = [
    bytes.fromhex(h)
    for h in [
        "0100000000000000000000000000000000000000000000000000000000000000",  # identity
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # (0, -1)
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    ]
]
ORDER_2_POINT = SMALL_ORDER_POINTS[1]
ORDER_8_POINT = SMALL_ORDER_POINTS[4]

# Encodings whose y field is >= P but whose y mod P is on the curve: libsodium decodes them.
NON_CANONICAL_ON_CURVE = [
    ((y + P) | (sign << 255)).to_bytes(32, "little")
    for y in range(2**255 - P)
    for sign in (0, 1)
    if _ref_decode((y | (sign << 255)).to_bytes(32, "little")) is not None
]


def test_reference_tables_are_what_they_claim():
    assert sorted(_order(p) for p in SMALL_ORDER_POINTS) == [1, 2, 4, 4, 8, 8, 8, 8]
    assert len(set(SMALL_ORDER_POINTS)) == 8
    base = bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666")
    one = b"\x01" + bytes(31)
    assert _ref_encode(_REF_B) == base == crypto_scalarmult_ed25519_base_noclamp(one)
    assert len(NON_CANONICAL_ON_CURVE) >= 2
    for enc in NON_CANONICAL_ON_CURVE:  # libsodium would silently reduce y and accept these
        crypto_core_ed25519_add(enc, enc)


# --- RFC 9381 Appendix B.3 vectors ------------------------------------------------------------

EXAMPLES = [16, 17, 18]


def _unhex(vector: dict, key: str) -> bytes:
    return bytes.fromhex(vector[key])


@pytest.mark.parametrize("example", EXAMPLES)
def test_rfc_vector(tai, example):
    v = tai[example]
    sk, pk, alpha = _unhex(v, "sk"), _unhex(v, "pk"), _unhex(v, "alpha")
    assert vrf.public_key_from_seed(sk) == pk
    if "x" in v:
        assert vrf.secret_scalar(sk) == _unhex(v, "x")
    assert vrf.hash_to_curve_tai(pk, alpha) == (_unhex(v, "H"), v["ctr"])
    assert vrf.hash_to_curve(pk, alpha) == _unhex(v, "H")
    proof = vrf.prove(sk, alpha)
    assert proof == _unhex(v, "pi")
    assert vrf.verify(pk, proof, alpha) == _unhex(v, "beta")
    assert vrf.proof_to_hash(proof) == _unhex(v, "beta")
    assert len(vrf.verify(pk, proof, alpha)) == vrf.BETA_LEN


@pytest.mark.parametrize("example", EXAMPLES)
def test_rfc_vector_intermediates(tai, example):
    v = tai[example]
    sk, pk, alpha = _unhex(v, "sk"), _unhex(v, "pk"), _unhex(v, "alpha")
    h = _unhex(v, "H")
    k = vrf.nonce(sk, h)
    u = crypto_scalarmult_ed25519_base_noclamp(k)
    w = crypto_scalarmult_ed25519_noclamp(k, h)
    if "U" in v:
        assert u == _unhex(v, "U")
        assert w == _unhex(v, "V")
    gamma, c, s = vrf.decode_proof(_unhex(v, "pi"))
    assert gamma + c + s == _unhex(v, "pi")
    assert vrf.challenge(pk, h, gamma, u, w) == c
    # The verifier's reconstruction s*B - c*Y and s*H - c*Gamma lands on the same U and V.
    s_int, minus_c = int.from_bytes(s, "little"), L - int.from_bytes(c, "little")
    y_point, h_point, gamma_point = _ref_decode(pk), _ref_decode(h), _ref_decode(gamma)
    assert _ref_encode(_ref_add(_ref_mul(s_int, _REF_B), _ref_mul(minus_c, y_point))) == u
    assert _ref_encode(_ref_add(_ref_mul(s_int, h_point), _ref_mul(minus_c, gamma_point))) == w


@pytest.mark.parametrize("example", EXAMPLES)
def test_reference_agrees_on_vectors(tai, example):
    v = tai[example]
    sk, alpha = _unhex(v, "sk"), _unhex(v, "alpha")
    assert _ref_prove(sk, alpha) == _unhex(v, "pi")
    assert _ref_proof_to_hash(_unhex(v, "pi")) == _unhex(v, "beta")


# --- Round trips and agreement with the reference on random inputs ---------------------------

seeds = st.binary(min_size=32, max_size=32)
alphas = st.binary(max_size=200)


@settings(max_examples=100, deadline=None)
@given(seed=seeds, alpha=alphas)
def test_prove_verify_round_trip(seed, alpha):
    pk = vrf.public_key_from_seed(seed)
    proof = vrf.prove(seed, alpha)
    assert len(proof) == vrf.PROOF_LEN
    beta = vrf.verify(pk, proof, alpha)
    assert beta == vrf.proof_to_hash(proof)
    with pytest.raises(VRFError):
        vrf.verify(pk, proof, alpha + b"\x00")


@settings(max_examples=50, deadline=None)
@given(seed=seeds, alpha=alphas)
def test_prove_is_deterministic(seed, alpha):
    assert vrf.prove(seed, alpha) == vrf.prove(seed, alpha)


@settings(max_examples=15, deadline=None)
@given(seed=seeds, alpha=alphas)
def test_matches_reference_implementation(seed, alpha):
    proof = vrf.prove(seed, alpha)
    assert proof == _ref_prove(seed, alpha)
    assert vrf.proof_to_hash(proof) == _ref_proof_to_hash(proof)


@settings(max_examples=200, deadline=None)
@given(candidate=st.binary(min_size=32, max_size=32))
def test_candidate_decoding_matches_rfc8032(candidate):
    point = _ref_decode(candidate)
    expected = None if point is None else _ref_encode(_ref_mul(8, point))
    assert vrf._candidate_times_cofactor(candidate) == expected


def test_candidate_decoding_edge_encodings():
    for enc in NON_CANONICAL_ON_CURVE:
        assert vrf._candidate_times_cofactor(enc) is None
    for enc in SMALL_ORDER_POINTS:
        assert vrf._candidate_times_cofactor(enc) == vrf.IDENTITY
    # -0 encodings RFC 8032 refuses; libsodium accepts them, but 8P is the identity, so the
    # try-and-increment loop skips them exactly as it skips an INVALID candidate.
    for enc in [bytes([1]) + bytes(30) + b"\x80", b"\xec" + b"\xff" * 31]:
        assert _ref_decode(enc) is None
        assert vrf._candidate_times_cofactor(enc) in (None, vrf.IDENTITY)


# --- Rejects ----------------------------------------------------------------------------------


def _vector(tai, example=16) -> tuple[bytes, bytes, bytes]:
    v = tai[example]
    return _unhex(v, "pk"), _unhex(v, "pi"), _unhex(v, "alpha")


def test_rejects_wrong_alpha(tai):
    pk, proof, alpha = _vector(tai, 17)
    for other in [b"", alpha + b"\x00", b"\x73", alpha * 2]:
        with pytest.raises(VRFError):
            vrf.verify(pk, proof, other)


def test_rejects_wrong_public_key(tai):
    for example in EXAMPLES:
        _, proof, alpha = _vector(tai, example)
        for other in EXAMPLES:
            if other != example:
                with pytest.raises(VRFError):
                    vrf.verify(_unhex(tai[other], "pk"), proof, alpha)


@pytest.mark.parametrize("example", EXAMPLES)
def test_rejects_every_single_bit_flip(tai, example):
    pk, proof, alpha = _vector(tai, example)
    for bit in range(8 * vrf.PROOF_LEN):
        flipped = bytearray(proof)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(VRFError):
            vrf.verify(pk, bytes(flipped), alpha)


def test_rejects_unreduced_s(tai):
    for example in EXAMPLES:
        pk, proof, alpha = _vector(tai, example)
        gamma_c, s = proof[:48], int.from_bytes(proof[48:], "little")
        for bad_s in [s + L, L, 2**256 - 1]:  # s + L < 2^254: always fits in 32 bytes
            bad = gamma_c + bad_s.to_bytes(32, "little")
            with pytest.raises(VRFError, match="s >= L"):
                vrf.verify(pk, bad, alpha)
            with pytest.raises(VRFError):
                vrf.proof_to_hash(bad)


@pytest.mark.parametrize("bad_gammas", [NON_CANONICAL_ON_CURVE, SMALL_ORDER_POINTS],
                         ids=["non-canonical", "small-order"])
def test_rejects_bad_gamma(tai, bad_gammas):
    pk, proof, alpha = _vector(tai)
    for gamma in bad_gammas:
        bad = gamma + proof[32:]
        with pytest.raises(VRFError, match="Gamma"):
            vrf.verify(pk, bad, alpha)
        with pytest.raises(VRFError, match="Gamma"):
            vrf.proof_to_hash(bad)


def test_rejects_gamma_with_torsion_even_when_rfc_math_would_pass(tai):
    """Gamma + T2 with an even c leaves U and V, hence c, unchanged, and 8*Gamma too: the RFC
    as written would accept this second proof. The prime-order rule refuses it."""
    seed = _unhex(tai[16], "sk")
    pk = vrf.public_key_from_seed(seed)
    alpha = next(a for a in (bytes([i]) for i in range(256)) if vrf.prove(seed, a)[32] % 2 == 0)
    proof = vrf.prove(seed, alpha)
    twisted = crypto_core_ed25519_add(proof[:32], ORDER_2_POINT)
    assert twisted != proof[:32]
    # Same U and V under the reference arithmetic, and the same beta: a real malleability.
    c = int.from_bytes(proof[32:48], "little")
    gamma, gamma_t = _ref_decode(proof[:32]), _ref_decode(twisted)
    assert _ref_encode(_ref_mul(c, gamma)) == _ref_encode(_ref_mul(c, gamma_t))
    assert _ref_proof_to_hash(twisted + proof[32:]) == vrf.verify(pk, proof, alpha)
    with pytest.raises(VRFError, match="Gamma"):
        vrf.verify(pk, twisted + proof[32:], alpha)


def test_rejects_invalid_public_keys(tai):
    pk, proof, alpha = _vector(tai)
    not_on_curve = next(
        enc for enc in (y.to_bytes(32, "little") for y in range(2, 100)) if _ref_decode(enc) is None
    )
    bad_keys = [
        *SMALL_ORDER_POINTS,
        *NON_CANONICAL_ON_CURVE,
        not_on_curve,
        crypto_core_ed25519_add(pk, ORDER_8_POINT),  # on the curve, with a torsion part
        (int.from_bytes(pk, "little") ^ (1 << 255)).to_bytes(32, "little"),  # -Y: valid, wrong
    ]
    for bad in bad_keys:
        with pytest.raises(VRFError):
            vrf.verify(bad, proof, alpha)
    for bad in bad_keys[:-1]:
        with pytest.raises(VRFError, match="public key"):
            vrf.verify(bad, proof, alpha)


def test_rejects_malformed_inputs(tai):
    pk, proof, alpha = _vector(tai)
    for bad_len in [b"", proof[:79], proof + b"\x00", proof * 2]:
        with pytest.raises(VRFError, match="80 bytes"):
            vrf.verify(pk, bad_len, alpha)
        with pytest.raises(VRFError):
            vrf.proof_to_hash(bad_len)
    with pytest.raises(VRFError):
        vrf.verify(pk[:31], proof, alpha)
    with pytest.raises(VRFError):
        vrf.verify(pk, proof.hex(), alpha)  # type: ignore[arg-type]
    with pytest.raises(VRFError):
        vrf.verify(pk, proof, "alpha")  # type: ignore[arg-type]
    with pytest.raises(VRFError):
        vrf.prove(bytes(31), alpha)
    with pytest.raises(VRFError):
        vrf.prove(bytearray(32), alpha)  # type: ignore[arg-type]


def test_zero_scalars_are_rejected_as_vrf_errors(tai):
    """s = 0 or c = 0 makes libsodium refuse the multiplication; that must surface as an
    ordinary failed verification, never as a library error."""
    pk, proof, alpha = _vector(tai)
    gamma, c, s = proof[:32], proof[32:48], proof[48:]
    for bad in [gamma + c + bytes(32), gamma + bytes(16) + s, gamma + bytes(48)]:
        with pytest.raises(VRFError, match="does not verify"):
            vrf.verify(pk, bad, alpha)


def test_hash_to_curve_skips_identity_and_gives_up_after_256_tries(tai, monkeypatch):
    """Both branches are unreachable with real hashes, so the candidate decoder is stubbed."""
    pk, alpha = _unhex(tai[16], "pk"), _unhex(tai[16], "alpha")
    real = vrf._candidate_times_cofactor
    calls = []

    def identity_first(candidate: bytes) -> bytes | None:
        calls.append(candidate)
        return vrf.IDENTITY if len(calls) == 1 else real(candidate)

    monkeypatch.setattr(vrf, "_candidate_times_cofactor", identity_first)
    point, ctr = vrf.hash_to_curve_tai(pk, alpha)
    assert ctr >= 1 and point != vrf.IDENTITY and point != _unhex(tai[16], "H")
    assert (point, ctr) == next(
        (real(c), i) for i, c in enumerate(calls) if i >= 1 and real(c) is not None
    )

    monkeypatch.setattr(vrf, "_candidate_times_cofactor", lambda candidate: None)
    with pytest.raises(VRFError, match="256 tries"):
        vrf.hash_to_curve_tai(pk, alpha)
    with pytest.raises(VRFError, match="256 tries"):
        vrf.prove(_unhex(tai[16], "sk"), alpha)
