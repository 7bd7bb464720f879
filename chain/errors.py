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
