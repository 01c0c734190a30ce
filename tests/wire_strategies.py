"""Hypothesis strategies for registered wire message types, built from their annotations.

Used by the codec tests of every package: `messages_of(cls)` draws instances that satisfy the field
types and limits (instances rejected by a class's own checks are filtered out).
"""

from __future__ import annotations

import dataclasses
import enum
import types
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from hypothesis import strategies as st

from moeswarm import wire
from moeswarm.wire import Limit

SMALL_LEN = 6


def _limit_of(metadata: Any) -> Limit | None:
    keys = ("min_len", "max_len", "min", "max")
    if not any(k in metadata for k in keys):
        return None
    return Limit(**{k: metadata[k] for k in keys if k in metadata})


def _sizes(limit: Limit | None) -> tuple[int, int]:
    lo = limit.min_len if limit else 0
    hi = limit.max_len if limit and limit.max_len is not None else lo + SMALL_LEN
    return lo, min(hi, lo + SMALL_LEN)


def strategy_for(tp: Any, limit: Limit | None = None) -> st.SearchStrategy[Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extras = get_args(tp)
        limits = [e for e in extras if isinstance(e, Limit)]
        return strategy_for(base, limits[-1] if limits else limit)
    if origin in (Union, types.UnionType):
        inner = next(a for a in get_args(tp) if a is not type(None))
        return st.none() | strategy_for(inner, limit)
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        lo = int(limit.min) if limit and limit.min is not None else -(2**63)
        hi = int(limit.max) if limit and limit.max is not None else 2**63 - 1
        return st.integers(lo, hi)
    if tp is float:
        lo = limit.min if limit and limit.min is not None else None
        hi = limit.max if limit and limit.max is not None else None
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if tp is str:
        lo, hi = _sizes(limit)
        return st.text(min_size=lo, max_size=hi)
    if tp is bytes:
        lo, hi = _sizes(limit)
        return st.binary(min_size=lo, max_size=hi)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            lo, hi = _sizes(limit)
            return st.lists(strategy_for(args[0]), min_size=lo, max_size=hi).map(tuple)
        return st.tuples(*(strategy_for(a) for a in args))
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        lo, hi = _sizes(limit)
        return st.dictionaries(strategy_for(key_tp), strategy_for(val_tp), min_size=lo, max_size=hi)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return messages_of(tp)
    raise TypeError(f"no strategy for {tp!r}")


def _build(cls: type, kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except (ValueError, TypeError):
        return None


def messages_of(cls: type) -> st.SearchStrategy[Any]:
    hints = get_type_hints(cls, include_extras=True)
    fields = {
        f.name: strategy_for(hints[f.name], _limit_of(f.metadata)) for f in dataclasses.fields(cls) if f.init
    }
    return st.deferred(
        lambda: st.fixed_dictionaries(fields).map(lambda kw: _build(cls, kw)).filter(lambda m: m is not None)
    )


def encodable(msg: Any) -> bool:
    try:
        wire.encode(msg)
    except wire.WireError:
        return False
    return True
