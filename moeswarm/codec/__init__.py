"""Expert-delta compression: float32 tensors -> one self-describing frame -> float32 tensors.

Use ``encode_delta(tensors, "topk:0.01+int8+zstd", residual)`` on the sender (keep the returned residual
and pass it next round: error feedback) and ``decode_delta(blob, elements_max=N)`` on the receiver, which
raises only ``CodecError`` for bad bytes.
"""

from moeswarm.codec.errors import CodecError
from moeswarm.codec.frame import decode_delta, encode_delta
from moeswarm.codec.spec import CodecSpec, SpecError, parse_spec

__all__ = ["CodecError", "CodecSpec", "SpecError", "decode_delta", "encode_delta", "parse_spec"]
