"""The chain package's error hierarchy. Every rejection names its rule."""


class ChainError(Exception):
    """Base of every error raised by chain/."""


class CodecError(ChainError):
    """Bytes are not the one canonical encoding of a value of the expected type."""


class SignatureError(ChainError):
    """A signature does not verify for the key, chain and message kind."""


class KeyFileError(ChainError):
    """A key file is missing, malformed, or has permissions looser than 0600/0700."""


class GenesisError(ChainError):
    """A genesis file is malformed or inconsistent."""


class InvalidBlock(ChainError):
    """A block breaks a validity rule; the state is left untouched."""


class InvalidRecord(InvalidBlock):
    """A record inside a block breaks its rule."""


class StoreError(ChainError):
    """The block/state store is unreadable or inconsistent."""


# ---------------------------------------------------------------------------- block rules
# One exception per validity rule of chain/transition.py, so callers and tests name it.

class InvalidHeader(InvalidBlock):
    """Chain id, height, parent hash or timestamp does not follow the parent."""


class WrongProposer(InvalidBlock):
    """The header names a validator who is not the proposer of this height and round."""


class BadHeaderSignature(InvalidBlock):
    """The header is not signed by its proposer."""


class BadRandomness(InvalidBlock):
    """The VRF proof does not verify, or the randomness is not derived from its output."""


class BadCommit(InvalidBlock):
    """The commit is not a quorum of valid precommits for this block."""


class BadBodyRoot(InvalidBlock):
    """The header's body root is not the root of the body."""


class BadStateRoot(InvalidBlock):
    """The header's state root is not the root of the state after the block."""


class TooManyRecords(InvalidBlock):
    """The body holds more records than the parameters allow."""


# ---------------------------------------------------------------------------- record rules

class BadRecordSignature(InvalidRecord):
    """A record is not signed by its author, or carries a signature it should not."""


class StaleSeq(InvalidRecord):
    """A record's seq is not above its author's last seq (a replay, or out of order)."""


class UnknownPeer(InvalidRecord):
    """The record names a peer that is not registered."""


class PeerNotActive(InvalidRecord):
    """The peer's status does not allow this record (left, excluded, or suspended)."""


class BadPeerRecord(InvalidRecord):
    """A PeerJoin with an empty address or a negative capacity."""


class PublisherNotAllowed(InvalidRecord):
    """Genesis restricts publishing, and this key is not on its list."""


class BadCollection(InvalidRecord):
    """A Publish whose torrent does not parse, or whose target, name or seeders are invalid."""


class DuplicateCollection(InvalidRecord):
    """A collection with this info hash is already published."""


class UnknownShard(InvalidRecord):
    """A holding names a collection or shard that does not exist."""


class BadHolding(InvalidRecord):
    """A CLAIM of a shard already held, a DROP of one not held, or an unknown action."""


class BadProofResult(InvalidRecord):
    """A ProofResult with an unknown verdict or a digest that does not fit it."""


class MissRecordNotAllowed(BadProofResult):
    """A ProofResult with verdict MISS: misses are derived at the deadline by every node, never recorded."""


class WrongChallengePeer(InvalidRecord):
    """A ProofResult names an open challenge of another peer."""


class ChallengeExpired(InvalidRecord):
    """A ProofResult for a challenge whose deadline has passed."""


class BadEvidence(InvalidRecord):
    """Evidence that is not two conflicting, validly signed votes by one validator, or is already recorded."""


# ---------------------------------------------------------------------------- challenges and proof answers

class ChallengeError(ChainError):
    """Challenge derivation was given inputs outside its rule: an empty randomness window, a
    randomness that is not 32 bytes, a shard without leaves, a holding listed twice."""


class UnknownChallenge(InvalidRecord):
    """A proof answer names no open challenge, or not the one it is checked against."""


class BadProofSignature(BadRecordSignature):
    """A proof answer is not signed by the challenged peer: it proves nothing about that peer."""


class WrongCollectionMeta(ChainError):
    """A proof was checked against the metadata of a collection other than the challenged one."""
