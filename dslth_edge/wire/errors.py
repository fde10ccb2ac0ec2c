"""Frame errors: one :class:`~dslth_edge.errors.FrameError` subclass per failed check.

The decoder promises that malformed input raises one of these and nothing else, so a
node can count and drop a bad frame with a single ``except FrameError``. The subclass
names the check that failed; the message says what was expected and what was found.
"""

from __future__ import annotations

from dslth_edge.errors import FrameError

__all__ = [
    "FrameError",
    "MagicError",
    "VersionError",
    "LengthError",
    "ChecksumError",
    "HmacError",
    "HeaderError",
    "FleetError",
    "FingerprintError",
    "ShapeError",
    "CodecError",
    "UnknownCodecError",
    "MissingBaseError",
    "BaseMismatchError",
    "ChunkError",
]


class MagicError(FrameError):
    """The bytes do not start with the frame (or chunk) magic."""


class VersionError(FrameError):
    """The frame uses a format version this decoder does not speak."""


class LengthError(FrameError):
    """A length is too short, too long, exceeds a bound, or the parts do not add up."""


class ChecksumError(FrameError):
    """The CRC-32C trailer does not match the frame's bytes."""


class HmacError(FrameError):
    """HMAC-SHA256 verification failed, or the frame's authentication mode is not the receiver's."""


class HeaderError(FrameError):
    """A header field is out of range (flags, kind, reserved bytes, rounds, layer table)."""


class FleetError(FrameError):
    """The frame belongs to another fleet (fleet-id hash mismatch)."""


class FingerprintError(FrameError):
    """The sender's fixed weights differ from ours (weights fingerprint mismatch)."""


class ShapeError(FrameError):
    """Layer count, element counts or mask shapes do not match the model's shapes."""


class CodecError(FrameError):
    """A layer payload is malformed for its codec (bad size, bad bits, bomb, trailing data)."""


class UnknownCodecError(CodecError):
    """The layer table names a codec id this decoder does not know."""


class MissingBaseError(FrameError):
    """A delta frame's base round is not in the receiver's store.

    The caller answers by asking ``sender`` for a key frame.
    """

    def __init__(self, message: str, *, sender: int, base_round: int) -> None:
        super().__init__(message)
        self.sender = sender
        self.base_round = base_round


class BaseMismatchError(MissingBaseError):
    """A delta frame's base round is held, but not the masks the delta was computed against
    (the base digest differs): the sender restarted, or the frame is of another run.

    Handled like a missing base: never decoded, the caller asks ``sender`` for a key frame.
    """


class ChunkError(FrameError):
    """A chunk header is malformed or inconsistent with its siblings."""
