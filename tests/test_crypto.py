"""Domain-separated signatures and key files."""
import os

import pytest

from chain.crypto import SigningKey, compute_signing_message, is_valid_signature, verify
from chain.errors import KeyFileError, SignatureError
from chain.keys import NODE_KEY_FILE, VRF_KEY_FILE, load_keys, new_keys

KEY = SigningKey(bytes(range(32)))
PAYLOAD = b"some payload"


def test_signature_verifies_for_its_chain_kind_and_payload():
    sig = KEY.sign(b"cairn-a", b"prevote", PAYLOAD)
    verify(KEY.public_key, sig, b"cairn-a", b"prevote", PAYLOAD)


@pytest.mark.parametrize(("chain_id", "kind", "payload"), [
    (b"cairn-b", b"prevote", PAYLOAD),          # another chain
    (b"cairn-a", b"precommit", PAYLOAD),        # another message kind
    (b"cairn-a", b"prevote", PAYLOAD + b"!"),   # another payload
])
def test_signature_is_invalid_in_any_other_domain(chain_id, kind, payload):
    sig = KEY.sign(b"cairn-a", b"prevote", PAYLOAD)
    with pytest.raises(SignatureError):
        verify(KEY.public_key, sig, chain_id, kind, payload)


def test_signature_of_another_key_or_a_flipped_bit_is_invalid():
    sig = KEY.sign(b"cairn-a", b"block", PAYLOAD)
    other = SigningKey(bytes(32))
    assert not is_valid_signature(other.public_key, sig, b"cairn-a", b"block", PAYLOAD)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not is_valid_signature(KEY.public_key, flipped, b"cairn-a", b"block", PAYLOAD)
    assert not is_valid_signature(KEY.public_key, sig[:63], b"cairn-a", b"block", PAYLOAD)


def test_signing_message_layout():
    import hashlib
    assert compute_signing_message(b"c", b"k", b"p") == b"cairn/c/k/" + hashlib.sha256(b"p").digest()


def test_new_keys_are_0600_in_a_0700_dir_and_load_back(tmp_path):
    datadir = tmp_path / "node"
    node, vrf = new_keys(datadir, vrf=True)
    assert os.stat(datadir).st_mode & 0o777 == 0o700
    for name in (NODE_KEY_FILE, VRF_KEY_FILE):
        assert os.stat(datadir / name).st_mode & 0o777 == 0o600
    loaded_node, loaded_vrf = load_keys(datadir, vrf=True)
    assert loaded_node.public_key == node.public_key and loaded_vrf.public_key == vrf.public_key
    assert node.public_key != vrf.public_key


def test_keys_new_refuses_to_overwrite(tmp_path):
    datadir = tmp_path / "node"
    node, _ = new_keys(datadir, vrf=False)
    with pytest.raises(KeyFileError):
        new_keys(datadir, vrf=False)
    assert load_keys(datadir, vrf=False)[0].public_key == node.public_key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_key_file_readable_by_others_is_refused(tmp_path, mode):
    datadir = tmp_path / "node"
    new_keys(datadir, vrf=False)
    os.chmod(datadir / NODE_KEY_FILE, mode)
    with pytest.raises(KeyFileError):
        load_keys(datadir, vrf=False)


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o755])
def test_data_dir_open_to_others_is_refused(tmp_path, mode):
    datadir = tmp_path / "node"
    new_keys(datadir, vrf=False)
    os.chmod(datadir, mode)
    with pytest.raises(KeyFileError):
        load_keys(datadir, vrf=False)


def test_malformed_or_missing_key_file_is_refused(tmp_path):
    datadir = tmp_path / "node"
    new_keys(datadir, vrf=False)
    (datadir / NODE_KEY_FILE).write_text("not json\n")
    with pytest.raises(KeyFileError):
        load_keys(datadir, vrf=False)
    with pytest.raises(KeyFileError):
        load_keys(datadir, vrf=True)  # no vrf.key
