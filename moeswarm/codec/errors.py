"""The one error a receiver sees for bytes that are not a valid delta frame."""


class CodecError(ValueError):
    """Undecodable or out-of-bounds delta bytes: the sender's fault, never a reason to crash."""
