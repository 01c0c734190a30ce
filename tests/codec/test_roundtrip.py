"""Round trips: what a receiver decodes is what the sender meant, within each codec's promised error."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from moeswarm.codec import decode_delta, encode_delta, parse_spec

ALL_CODECS = [
    "fp32",
    "fp32+zstd",
    "fp16",
    "bf16+zstd",
    "int8",
    "int8:7+zstd",
    "topk:0.1",
    "topk:0.01+int8+zstd",
    "topk:0.3+fp16",
    "lowrank:2",
    "lowrank:3+int8:16+zstd",
]

shapes = st.lists(st.integers(0, 24), min_size=0, max_size=3).map(tuple)


@st.composite
def deltas(draw: st.DrawFn) -> dict[str, Tensor]:
    """A few named tensors with magnitudes from 1e-8 (late-training deltas) to 1e3, sometimes all zero."""
    count = draw(st.integers(1, 4))
    out = {}
    for i in range(count):
        shape = draw(shapes)
        seed = draw(st.integers(0, 2**31))
        scale = draw(st.sampled_from([0.0, 1e-8, 1e-4, 1.0, 1e3]))
        out[f"layer.{i}.w"] = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    return out


def numel(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() for t in tensors.values())


@pytest.mark.parametrize("codec", ALL_CODECS)
@settings(max_examples=25, deadline=None)
@given(delta=deltas())
def test_decoded_plus_residual_is_the_input(codec: str, delta: dict[str, Tensor]) -> None:
    blob, residual = encode_delta(delta, codec)
    decoded = decode_delta(blob, elements_max=numel(delta))
    assert list(decoded) == list(delta)
    for name, x in delta.items():
        assert decoded[name].dtype == torch.float32
        assert decoded[name].shape == x.shape
        assert residual[name].shape == x.shape
        bound = 1e-6 * float(x.abs().max()) if x.numel() else 0.0
        assert torch.allclose(decoded[name] + residual[name], x, rtol=0, atol=bound)


@settings(max_examples=40, deadline=None)
@given(delta=deltas())
def test_fp32_is_lossless(delta: dict[str, Tensor]) -> None:
    for codec in ("fp32", "fp32+zstd"):
        decoded = decode_delta(encode_delta(delta, codec)[0], elements_max=numel(delta))
        assert all(torch.equal(decoded[k], delta[k]) for k in delta)


@settings(max_examples=40, deadline=None)
@given(delta=deltas())
def test_half_precision_casts_round_each_element(delta: dict[str, Tensor]) -> None:
    for codec, mantissa_bits in (("fp16", 10), ("bf16", 7)):
        decoded = decode_delta(encode_delta(delta, codec)[0], elements_max=numel(delta))
        for name, x in delta.items():
            tiny = 2.0**-24 if codec == "fp16" else 0.0  # fp16 subnormal spacing
            allowed = x.abs() * 2.0 ** -(mantissa_bits + 1) + tiny
            assert bool(((decoded[name] - x).abs() <= allowed * 1.0001).all())


@settings(max_examples=40, deadline=None)
@given(delta=deltas(), block=st.integers(1, 300))
def test_int8_error_is_at_most_half_a_step_of_its_block(delta: dict[str, Tensor], block: int) -> None:
    """Blocks run over the frame's value stream (all tensors in order), so one may straddle two tensors."""
    decoded = decode_delta(encode_delta(delta, f"int8:{block}")[0], elements_max=numel(delta))
    stream = torch.cat([x.reshape(-1) for x in delta.values()])
    got = torch.cat([decoded[name].reshape(-1) for name in delta])
    for start in range(0, stream.numel(), block):
        chunk = stream[start : start + block]
        step = float(chunk.abs().max()) / 127
        assert float((got[start : start + block] - chunk).abs().max()) <= step / 2 * 1.0001 + 1e-30


@settings(max_examples=40, deadline=None)
@given(delta=deltas(), fraction=st.floats(0.001, 1.0))
def test_topk_keeps_exactly_the_largest_entries(delta: dict[str, Tensor], fraction: float) -> None:
    decoded = decode_delta(encode_delta(delta, f"topk:{fraction!r}")[0], elements_max=numel(delta))
    for name, x in delta.items():
        flat, got = x.reshape(-1), decoded[name].reshape(-1)
        if flat.numel() == 0:
            continue
        kept = got != 0
        assert int(kept.sum()) <= math.ceil(fraction * flat.numel())
        assert torch.equal(got[kept], flat[kept])
        if bool(kept.any()) and not bool(kept.all()):
            assert float(flat[~kept].abs().max()) <= float(flat[kept].abs().min())


def test_topk_on_a_large_tensor_takes_the_sampled_path_and_stays_exact() -> None:
    x = torch.randn(300_000, generator=torch.Generator().manual_seed(3))
    decoded = decode_delta(encode_delta({"w": x}, "topk:0.01")[0], elements_max=x.numel())["w"]
    kept = decoded != 0
    assert int(kept.sum()) == 3000
    assert float(x[~kept].abs().max()) <= float(x[kept].abs().min())


def test_topk_stays_exact_when_the_sample_misjudges_the_threshold() -> None:
    """Large values exactly at the sampled positions make the sample think they are common."""
    x = torch.rand(100_000, generator=torch.Generator().manual_seed(4))
    x[::25] = 10.0
    decoded = decode_delta(encode_delta({"w": x}, "topk:0.1")[0], elements_max=x.numel())["w"]
    kept = decoded != 0
    assert int(kept.sum()) == 10_000
    assert float(x[~kept].abs().max()) <= float(x[kept].abs().min())


def test_lowrank_recovers_a_low_rank_matrix_and_leaves_vectors_dense() -> None:
    gen = torch.Generator().manual_seed(5)
    matrix = torch.randn(64, 3, generator=gen) @ torch.randn(3, 48, generator=gen)
    bias = torch.randn(48, generator=gen)
    blob, _ = encode_delta({"w": matrix, "b": bias}, "lowrank:3")
    decoded = decode_delta(blob, elements_max=64 * 48 + 48)
    assert float((decoded["w"] - matrix).norm() / matrix.norm()) < 1e-4
    assert torch.equal(decoded["b"], bias)
    assert len(blob) < 4 * (64 * 48) / 4


@pytest.mark.parametrize("codec", ["topk:0.05+int8+zstd", "lowrank:2+fp16", "int8:32"])
def test_error_feedback_loses_nothing_over_rounds(codec: str) -> None:
    """Everything decoded plus the last residual is every round's true delta; a steady delta gets through."""
    gen = torch.Generator().manual_seed(11)
    steady = torch.randn(40, 30, generator=gen)
    residual: dict[str, Tensor] | None = None
    sent = torch.zeros(40, 30, dtype=torch.float64)
    received = torch.zeros(40, 30, dtype=torch.float64)
    first_round_error = 0.0
    for round_ in range(40):
        delta = {"w": steady + 0.1 * torch.randn(40, 30, generator=gen)}
        blob, residual = encode_delta(delta, codec, residual)
        decoded = decode_delta(blob, elements_max=1200)["w"].double()
        if round_ == 0:
            first_round_error = float((decoded - delta["w"]).norm() / delta["w"].norm())
        sent += delta["w"].double()
        received += decoded
    assert residual is not None
    assert torch.allclose(received + residual["w"].double(), sent, atol=1e-4)
    assert float((received - sent).norm() / sent.norm()) <= max(first_round_error / 3, 1e-3)


def test_tensors_of_other_dtypes_arrive_as_float32() -> None:
    delta = {"h": torch.randn(10).half(), "b": torch.randn(3, 3).bfloat16()}
    decoded = decode_delta(encode_delta(delta, "fp32")[0], elements_max=19)
    assert decoded["h"].dtype == torch.float32
    assert torch.equal(decoded["h"], delta["h"].float())
    assert torch.equal(decoded["b"], delta["b"].float())


@pytest.mark.parametrize(
    ("delta", "residual", "message"),
    [
        ({"w": torch.tensor([1.0, float("nan")])}, None, "inf or nan"),
        ({"w": torch.tensor([float("inf")])}, None, "inf or nan"),
        ({"w": torch.ones(3)}, {"w": torch.ones(4)}, "shape"),
        ({"": torch.ones(3)}, None, "names"),
        ({"w": torch.ones(3, dtype=torch.int64)}, None, "floating"),
    ],
)
def test_encoding_refuses_what_cannot_be_a_delta(
    delta: dict[str, Tensor], residual: dict[str, Tensor] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_delta(delta, "int8", residual)


def test_spec_object_and_string_give_the_same_frame() -> None:
    delta = {"w": torch.randn(100, generator=torch.Generator().manual_seed(1))}
    assert (
        encode_delta(delta, "topk:0.1+int8+zstd")[0]
        == encode_delta(delta, parse_spec("topk:0.1+int8+zstd"))[0]
    )


def test_compression_ratios_on_a_normal_tensor() -> None:
    """The shapes of the bench's headline figures, at a size a test can afford."""
    x = torch.randn(512, 512, generator=torch.Generator().manual_seed(2))
    raw = 4 * x.numel()
    int8_blob = encode_delta({"w": x}, "int8")[0]
    decoded = decode_delta(int8_blob, elements_max=x.numel())["w"]
    assert raw / len(int8_blob) >= 3.9
    assert float((decoded - x).norm() / x.norm()) <= 0.01
    assert raw / len(encode_delta({"w": x}, "topk:0.01+int8+zstd")[0]) >= 100
