"""Domain tags, sizes and limits: every constant the chain rules use, in one place."""

# Signature domains: a signature is over b"cairn/" + chain_id + b"/" + kind + b"/" + sha256(payload).
DOMAIN_PREFIX = b"cairn/"
KIND_BLOCK = b"block"            # block header, signed by its proposer
KIND_PROPOSAL = b"proposal"      # consensus proposal (height, round, block hash, valid round)
KIND_PREVOTE = b"prevote"
KIND_PRECOMMIT = b"precommit"
KIND_RECORD = b"record"          # every signed body record (PeerJoin, Publish, Holding...)
KIND_HANDSHAKE = b"handshake"    # /p2p link handshake transcript
KIND_PROOF = b"proof"            # a storage proof answer, signed by the peer

# VRF and randomness domains (hash inputs, not signatures).
DOMAIN_VRF_INPUT = b"cairn/vrf-input"
DOMAIN_RANDOMNESS = b"cairn/randomness"
DOMAIN_GENESIS_RANDOMNESS = b"cairn/genesis-randomness"
DOMAIN_PROPOSER = b"cairn/proposer"
DOMAIN_STATE_LEAF = b"cairn/state-leaf"
DOMAIN_STATE_NODE = b"cairn/state-node"
DOMAIN_BODY_LEAF = b"cairn/body-leaf"
DOMAIN_BODY_NODE = b"cairn/body-node"

# Sizes.
HASH_BYTES = 32
PUBKEY_BYTES = 32
SIGNATURE_BYTES = 64
VRF_PROOF_BYTES = 80
CHAIN_ID_MAX = 32

# Limits that decoding enforces before anything else looks at the bytes.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_RECORD_BYTES = 2 * 1024 * 1024
MAX_BLOCK_BYTES = 8 * 1024 * 1024
MAX_RECORDS_PER_BLOCK = 4096
MAX_ARRAY_LEN = 1 << 20
MAX_STR_BYTES = 4096

# Timestamps are integer milliseconds since the Unix epoch, never floats.
MAX_FUTURE_DRIFT_MS = 5_000

# State root (chain/state_root.py): keys fall into 2**STATE_BUCKET_BITS buckets by the
# prefix of their hash; a tree of fan-out 2**STATE_FANOUT_BITS over the buckets.
DOMAIN_STATE_BUCKET = b"cairn/state-bucket"
STATE_BUCKET_BITS = 12
STATE_FANOUT_BITS = 4

# Randomness of this many latest blocks stays in the state, for challenge derivation.
RANDOMNESS_HISTORY_BLOCKS = 256

# A block's timestamp is at most this far past its parent's: a proposer cannot drag the
# chain's clock into the future, and after an outage the chain catches up in steps.
MAX_TIMESTAMP_STEP_MS = 60_000

# Storage challenges (chain/challenges.py): hash domains of the seed and of each draw.
DOMAIN_CHALLENGE_SEED = b"cairn/challenge-seed"     # mixes the randomness window
DOMAIN_CHALLENGE_ID = b"cairn/challenge-id"
DOMAIN_CHALLENGE_DRAW = b"cairn/challenge-draw"     # a peer's k shards of an epoch
DOMAIN_CHALLENGE_LEAF = b"cairn/challenge-leaf"     # the leaves of a challenged shard
DOMAIN_CHALLENGE_SWEEP = b"cairn/challenge-sweep"   # a shard's fixed slot in the sweep
DOMAIN_CHALLENGE_CLAIM = b"cairn/challenge-claim"   # the leaf of a new claim

# Peers that hold shards are listed in this many buckets, by the first byte of their key
# (state key holder-peers/<u8>), so the epoch step can list them without a state scan.
HOLDER_PEER_BUCKETS = 256

# Time and fixed-point units.
DAY_MS = 86_400_000
PPM = 1_000_000                                     # parts per million: 1.0 in ppm
