"""Peer protocol messages: round trips of every kind, strict decoding, per-kind size limits."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import node.messages as messages
from chain.codec import encode
from chain.constants import (
    KIND_BLOCK, KIND_PRECOMMIT, KIND_PREVOTE, KIND_PROOF, KIND_PROPOSAL, KIND_RECORD, MAX_RECORD_BYTES,
)
from chain.crypto import SigningKey, is_valid_signature
from chain.types import (
    Block,
    BlockHeader,
    Commit,
    CommitSig,
    CommittedBlock,
    Evidence,
    Holding,
    PeerJoin,
    PeerLeave,
    Proposal,
    ProofResult,
    Publish,
    SignedProposal,
    SignedRecord,
    SignedVote,
    Vote,
)
from node.messages import (
    MAX_FRAME_BYTES,
    MAX_GET_BLOCKS,
    MAX_PEERS_PER_MSG,
    MAX_TTL,
    Blocks,
    ErrorMsg,
    GetBlocks,
    GetPeers,
    GetProof,
    GossipEnvelope,
    Hello,
    MessageError,
    PeerEntry,
    Peers,
    ProofMsg,
    ProofReply,
    ProposalMsg,
    RecordMsg,
    Status,
    VoteMsg,
    decode_message,
    decode_proposal_block,
    encode_message,
    flooded_id,
    frame_kind,
    frame_limit,
    is_valid_address,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

b32 = st.binary(min_size=32, max_size=32)
b64 = st.binary(min_size=64, max_size=64)
height = st.integers(min_value=0, max_value=(1 << 63) - 1)
small = st.integers(min_value=0, max_value=1 << 20)
name = st.text(max_size=12)
address = st.builds(lambda host, port: f"{host}:{port}",
                    st.sampled_from(["127.0.0.1", "node-1.example", "[::1]", "a"]),
                    st.integers(min_value=1, max_value=65535))

votes = st.builds(SignedVote, st.builds(Vote, st.sampled_from([1, 2]), height, small,
                                        st.one_of(st.just(b""), b32), b32), b64)
proposals = st.builds(SignedProposal, st.builds(Proposal, height, small, b32,
                                                st.integers(-1, 100), b32), b64)
record_kinds = st.one_of(
    st.builds(PeerJoin, b32, address, address, small, small),
    st.builds(PeerLeave, b32, small),
    st.builds(Publish, publisher=b32, name=name, torrent=st.binary(max_size=64),
              target=st.integers(1, 16), seeders=st.lists(address, max_size=2).map(tuple), seq=small),
    st.builds(Holding, b32, b32, small, st.sampled_from([1, 2]), small),
    st.builds(ProofResult, b32, b32, st.sampled_from([1, 2, 3]), st.one_of(st.just(b""), b32)),
    st.builds(Evidence, votes, votes),
)
records = st.builds(SignedRecord, record_kinds, st.one_of(st.just(b""), b64))
headers = st.builds(BlockHeader, st.just("cairn-test"), st.integers(1, 1 << 40), small,
                    st.integers(0, 1 << 50), b32, b32, st.binary(min_size=80, max_size=80),
                    b32, b32, b32)
blocks = st.builds(Block, headers, b64, st.lists(records, max_size=2).map(tuple))
commits = st.builds(Commit, height, small, b32,
                    st.lists(st.builds(CommitSig, small, b64), max_size=3).map(tuple))
committed = st.builds(CommittedBlock, blocks, commits)
proof_msgs = st.builds(ProofMsg, b32, b32, st.binary(max_size=200), b64)
peer_entries = st.builds(PeerEntry, b32, address, st.sampled_from([1, 2]))
peers_msgs = st.builds(Peers, st.lists(peer_entries, max_size=4).map(tuple))


@st.composite
def proposal_msgs(draw: st.DrawFn) -> ProposalMsg:
    sidecar = draw(st.lists(proof_msgs, max_size=3, unique_by=lambda p: p.challenge_id))
    return ProposalMsg(draw(proposals), encode(draw(blocks)), tuple(sidecar))


flooded = st.one_of(proposal_msgs(), st.builds(VoteMsg, votes), st.builds(RecordMsg, records),
                    proof_msgs, peers_msgs)


@st.composite
def proof_replies(draw: st.DrawFn) -> ProofReply:
    proof = draw(st.one_of(st.none(), proof_msgs))
    return ProofReply(proof.challenge_id if proof else draw(b32), proof)


all_messages = st.one_of(
    st.builds(Hello, st.integers(1, 5), st.sampled_from(["cairn-test", "main", "x1"]), b32,
              st.sampled_from([1, 2, 3]), height, b32, st.one_of(st.just(""), address)),
    st.builds(Status, height, b32),
    st.just(GetPeers()),
    peers_msgs,
    st.builds(GossipEnvelope, flooded, st.integers(1, MAX_TTL)),
    st.builds(GetBlocks, st.integers(1, 1 << 62), st.integers(1, MAX_GET_BLOCKS)),
    st.builds(Blocks, st.integers(1, 1 << 62), st.lists(committed, max_size=2).map(tuple)),
    st.builds(GetProof, b32),
    proof_replies(),
    st.builds(ErrorMsg, small, st.text(max_size=40)),
)


# ---------------------------------------------------------------------------- round trips

@FUZZ
@given(all_messages)
def test_every_kind_round_trips_canonically(msg: object) -> None:
    data = encode_message(msg)
    assert decode_message(data) == msg
    assert len(data) <= frame_limit(data) <= MAX_FRAME_BYTES
    assert encode_message(decode_message(data)) == data


@FUZZ
@given(all_messages)
def test_frame_kind_is_read_without_parsing(msg: object) -> None:
    data = encode_message(msg)
    assert frame_kind(data) is type(msg)
    assert frame_kind(data[:5]) is type(msg)     # the first bytes are enough


@FUZZ
@given(flooded, st.integers(1, MAX_TTL), st.integers(1, MAX_TTL))
def test_flooded_id_ignores_ttl_and_survives_the_wire(inner: object, ttl_a: int, ttl_b: int) -> None:
    a = decode_message(encode_message(GossipEnvelope(inner, ttl_a)))
    b = decode_message(encode_message(GossipEnvelope(inner, ttl_b)))
    assert flooded_id(a.inner) == flooded_id(b.inner) == flooded_id(inner)


# ---------------------------------------------------------------------------- hostile input

def _decode_or_message_error(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except MessageError:
        return
    # Whatever decodes must be canonical: it re-encodes to the same bytes.
    assert encode_message(msg) == data


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_message_error(data: bytes) -> None:
    _decode_or_message_error(data)


@FUZZ
@given(st.binary(max_size=200).map(lambda tail: b"\x92" + tail))
def test_random_array_frames_raise_only_message_error(data: bytes) -> None:
    _decode_or_message_error(data)


@FUZZ
@given(all_messages, st.data())
def test_mutated_encodings_raise_only_message_error(msg: object, data: st.DataObject) -> None:
    raw = bytearray(encode_message(msg))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[at] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del raw[at:]
    elif kind == "insert":
        raw.insert(at, data.draw(st.integers(0, 255)))
    elif kind == "delete":
        del raw[at]
    else:
        raw[at] = data.draw(st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0xC0, 0xC1, 0xC4, 0xCF, 0xDC, 0xFF]))
    _decode_or_message_error(bytes(raw))


def test_oversized_frame_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    vote_envelope = bytearray(encode_message(GossipEnvelope(VoteMsg(SignedVote(
        Vote(1, 5, 0, b"\x01" * 32, b"\x02" * 32), b"\x03" * 64)), 3)))
    padded = bytes(vote_envelope) + b"\x00" * 300

    def must_not_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed an oversized frame")

    monkeypatch.setattr(messages, "decode", must_not_parse)
    with pytest.raises(MessageError, match="limit"):
        decode_message(padded)
    with pytest.raises(MessageError, match="limit"):
        decode_message(encode_message(Status(1, b"\x00" * 32)) + b"\x00" * 64)


@pytest.mark.parametrize("data", [
    b"", b"\x92", b"\x91\x01", b"\x92\x63\x90", b"\x92\xcc\x80\x90",
    b"\x92\x05\x92\x92\x63", b"\x92\x05\x90",
])
def test_unknown_or_malformed_frames(data: bytes) -> None:
    with pytest.raises(MessageError):
        decode_message(data)


def test_trailing_and_non_canonical_bytes_are_refused() -> None:
    data = encode_message(GetBlocks(7, 3))
    with pytest.raises(MessageError):
        decode_message(data + b"\x00")
    # 3 as a uint8 (0xcc 0x03) instead of a positive fixint.
    non_canonical = data[:-1] + b"\xcc\x03"
    with pytest.raises(MessageError):
        decode_message(non_canonical)


def test_field_rules_hold_on_decode_and_on_construction() -> None:
    good = encode_message(GossipEnvelope(Peers(()), 1))
    assert decode_message(good) == GossipEnvelope(Peers(()), 1)
    for bad_ttl in (0, MAX_TTL + 1):
        with pytest.raises(MessageError, match="ttl"):
            GossipEnvelope(Peers(()), bad_ttl)
        with pytest.raises(MessageError, match="ttl"):
            decode_message(good[:-1] + encode(bad_ttl))
    with pytest.raises(MessageError):
        GetBlocks(1, MAX_GET_BLOCKS + 1)
    with pytest.raises(MessageError):
        GetBlocks(0, 1)
    with pytest.raises(MessageError):
        PeerEntry(b"\x00" * 32, "no-port", 2)
    with pytest.raises(MessageError):
        PeerEntry(b"\x00" * 32, "a:1", 3)        # clients are never advertised
    with pytest.raises(MessageError):
        Hello(1, "Bad/Chain", b"\x00" * 32, 1, 0, b"\x00" * 32, "")
    with pytest.raises(MessageError):
        Hello(1, "main", b"\x00" * 32, 9, 0, b"\x00" * 32, "")
    proof = ProofMsg(b"\x01" * 32, b"\x02" * 32, b"p", b"\x03" * 64)
    with pytest.raises(MessageError):
        ProofReply(b"\x09" * 32, proof)
    with pytest.raises(MessageError, match="duplicate"):
        ProposalMsg(SignedProposal(Proposal(1, 0, b"\x00" * 32, -1, b"\x00" * 32), b"\x00" * 64),
                    b"", (proof, proof))
    too_many = Peers(tuple(PeerEntry(bytes([i]) * 32, f"h{i}:1", 2) for i in range(MAX_PEERS_PER_MSG + 1)))
    with pytest.raises(MessageError):
        encode_message(too_many)


def test_encode_refuses_what_the_peer_would_refuse() -> None:
    big = SignedRecord(Publish(publisher=b"\x00" * 32, name="big", torrent=b"\x00" * MAX_RECORD_BYTES,
                               target=3, seeders=(), seq=0), b"")
    header = BlockHeader("c", 1, 0, 0, b"\x00" * 32, b"\x00" * 32, b"\x00" * 80,
                         b"\x00" * 32, b"\x00" * 32, b"\x00" * 32)
    block = Block(header, b"\x00" * 64, (big,) * 5)            # ~10 MiB, over the Blocks limit
    with pytest.raises(MessageError, match="limit"):
        encode_message(Blocks(1, (CommittedBlock(block, Commit(1, 0, block.hash(), ())),)))


def test_proposal_block_decodes_lazily_and_strictly() -> None:
    header = BlockHeader("c", 3, 0, 0, b"\x00" * 32, b"\x00" * 32, b"\x00" * 80,
                         b"\x00" * 32, b"\x00" * 32, b"\x00" * 32)
    block = Block(header, b"\x00" * 64, ())
    signed = SignedProposal(Proposal(3, 0, block.hash(), -1, b"\x00" * 32), b"\x00" * 64)
    assert decode_proposal_block(ProposalMsg(signed, encode(block), ())) == block
    with pytest.raises(MessageError):
        decode_proposal_block(ProposalMsg(signed, encode(block) + b"\x00", ()))


def test_proof_signature_payload_is_domain_separated() -> None:
    key = SigningKey(b"\x05" * 32)
    unsigned = ProofMsg(key.public_key, b"\x07" * 32, b"proof-bytes", b"\x00" * 64)
    signature = key.sign(b"main", KIND_PROOF, unsigned.signing_payload())
    signed = ProofMsg(key.public_key, b"\x07" * 32, b"proof-bytes", signature)
    payload = signed.signing_payload()
    assert is_valid_signature(key.public_key, signature, b"main", ProofMsg.SIGN_KIND, payload)
    # The same bytes signed as a proof answer are no record, vote or block of any chain,
    assert not any(is_valid_signature(key.public_key, signature, b"main", kind, payload)
                   for kind in (KIND_RECORD, KIND_PREVOTE, KIND_PRECOMMIT, KIND_BLOCK, KIND_PROPOSAL))
    assert not is_valid_signature(key.public_key, signature, b"other", KIND_PROOF, payload)
    # and the payload binds the challenge and the proof bytes.
    for other in (ProofMsg(key.public_key, b"\x08" * 32, b"proof-bytes", signature),
                  ProofMsg(key.public_key, b"\x07" * 32, b"proof-bytez", signature)):
        assert not is_valid_signature(key.public_key, signature, b"main", KIND_PROOF, other.signing_payload())


@pytest.mark.parametrize("text,ok", [
    ("127.0.0.1:7000", True), ("node-1.example.org:1", True), ("[::1]:65535", True),
    ("localhost:0", False), ("host:65536", False), ("host", False), (":80", False),
    ("-bad.host:80", False), ("[zz]:80", False), ("ho st:80", False), ("hé:80", False),
    ("host:+80", False), ("a" * 300 + ":1", False),
])
def test_address_format(text: str, ok: bool) -> None:
    assert is_valid_address(text) is ok
