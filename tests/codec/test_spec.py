"""Codec specs: what a user types on the command line maps to one pipeline, and back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moeswarm.codec import CodecSpec, SpecError, parse_spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("topk:0.01+int8+zstd", CodecSpec(structure="topk", fraction=0.01, values="int8", zstd_level=1)),
        ("topk:1%+int8:128", CodecSpec(structure="topk", fraction=0.01, values="int8", block=128)),
        ("int8", CodecSpec(values="int8")),
        ("fp16", CodecSpec(values="fp16")),
        ("bf16+zstd:9", CodecSpec(values="bf16", zstd_level=9)),
        ("lowrank:4+fp16+zstd", CodecSpec(structure="lowrank", rank=4, values="fp16", zstd_level=1)),
        ("none", CodecSpec()),
        (" TopK:0.5 ", CodecSpec(structure="topk", fraction=0.5)),
    ],
)
def test_parse_known_specs(text: str, expected: CodecSpec) -> None:
    assert parse_spec(text) == expected
    assert CodecSpec.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "int8+topk:0.1",
        "topk:0.1+lowrank:2",
        "zstd+zstd",
        "fp16+int8",
        "gzip",
        "int8:x",
        "fp16:3",
        "topk:0",
        "topk:1.5",
        "lowrank:0",
        "int8:0",
        "zstd:30",
        "topk:nan",
        "x" * 300,
    ],
)
def test_bad_specs_are_refused_with_spec_error(text: str) -> None:
    with pytest.raises(SpecError):
        parse_spec(text)


specs = st.builds(
    CodecSpec,
    structure=st.sampled_from(["dense", "topk", "lowrank"]),
    fraction=st.floats(min_value=1e-6, max_value=1.0, exclude_min=True),
    rank=st.integers(1, 64),
    values=st.sampled_from(["fp32", "fp16", "bf16", "int8"]),
    block=st.integers(1, 4096),
    zstd_level=st.one_of(st.none(), st.integers(1, 22)),
)


@given(specs)
def test_printed_spec_parses_back_to_the_same_pipeline(spec: CodecSpec) -> None:
    again = parse_spec(str(spec))
    assert again.structure == spec.structure
    assert again.values == spec.values
    assert again.zstd_level == spec.zstd_level
    if spec.structure == "topk":
        assert again.fraction == spec.fraction
    if spec.structure == "lowrank":
        assert again.rank == spec.rank
    if spec.values == "int8":
        assert again.block == spec.block
