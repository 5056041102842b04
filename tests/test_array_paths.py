"""The array forms of hot loops agree with independent answers on random inputs: numpy itself
for ``analyzers.arrays``, a plain stack walk for the op nesting, a unit-by-unit count for the
overlap of two interval unions."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stallscope.analyzers import arrays  # noqa: E402
from stallscope.analyzers.builtin._common import overlap_ns  # noqa: E402
from stallscope.analyzers.views.common import _parents  # noqa: E402

ints = st.lists(st.integers(-(2**40), 2**40), max_size=60)
small_ints = st.lists(st.integers(-5, 5), max_size=60)
floats = st.lists(st.floats(allow_nan=True, allow_infinity=False, width=64), max_size=60)


def _same(a: object, b: object) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)  # NaNs in the same places count as equal


@given(st.one_of(ints, small_ints, floats))
def test_unique_is_numpys(values: list[float]) -> None:
    _same(arrays.unique(np.asarray(values)), np.unique(np.asarray(values)))


@given(st.one_of(ints, small_ints), st.one_of(ints, small_ints))
def test_union1d_is_numpys(a: list[int], b: list[int]) -> None:
    x, y = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    _same(arrays.union1d(x, y), np.union1d(x, y))


@given(st.one_of(ints, small_ints), st.one_of(ints, small_ints))
def test_isin_is_numpys(a: list[int], b: list[int]) -> None:
    x, y = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    _same(arrays.isin(x, y), np.isin(x, y))


@given(
    st.lists(st.integers(-128, 127), max_size=60),
    st.lists(st.integers(-300, 300) | st.integers(-(2**40), 2**40), max_size=20),
    st.sampled_from([np.int8, np.int32, np.int64]),
)
def test_isin_of_a_few_values_is_numpys(a: list[int], b: list[int], dtype: type) -> None:
    """Kinds (int8) and name ids (int32) against a few test values, some outside the dtype."""
    x, y = np.asarray(a, dtype=dtype), np.asarray(b, dtype=np.int64)
    _same(arrays.isin(x, y), np.isin(x, y))


@given(st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=1, max_size=60))
def test_median_is_numpys(values: list[float]) -> None:
    got, want = arrays.median(np.asarray(values)), np.median(np.asarray(values))
    assert type(got) is type(want) and got == want


@given(
    st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=1, max_size=60),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),
)
def test_quantile_is_numpys(values: list[float], qs: list[float]) -> None:
    a = np.asarray(values)
    _same(arrays.quantile(a, qs), np.quantile(a, qs))
    got, want = arrays.quantile(a, qs[0]), np.quantile(a, qs[0])
    assert type(got) is type(want) and got == want


def _walk(start: list[int], end: list[int]) -> list[int]:
    """The innermost enclosing earlier row of each row: a row is pushed after popping the rows
    that end at or before its start."""
    parent, stack = [], []
    for i, s in enumerate(start):
        while stack and end[stack[-1]] <= s:
            stack.pop()
        parent.append(stack[-1] if stack else -1)
        stack.append(i)
    return parent


@st.composite
def _ops(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """One thread's ops in start order, longer first at equal starts (the table's order): mostly
    properly nested, sometimes one that outlives its parent (the walk's own path)."""
    n = draw(st.integers(1, 200))
    start = sorted(draw(st.lists(st.integers(0, 400), min_size=n, max_size=n)))
    dur = draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    if draw(st.booleans()):  # clip each op into the one that encloses it: a proper nesting
        end: list[int] = []
        for i, s in enumerate(start):
            p = _walk(start[: i + 1], end + [s + dur[i]])[i]
            end.append(min(s + dur[i], end[p]) if p >= 0 else s + dur[i])
    else:
        end = [s + d for s, d in zip(start, dur, strict=True)]
    rows = sorted(range(n), key=lambda i: (start[i], -end[i]))
    return [start[i] for i in rows], [end[i] for i in rows]


@settings(max_examples=300)
@given(st.lists(_ops(), min_size=1, max_size=3))
def test_parents_are_the_stack_walks(threads: list[tuple[list[int], list[int]]]) -> None:
    start = np.asarray([s for t in threads for s in t[0]], dtype=np.int64)
    end = np.asarray([e for t in threads for e in t[1]], dtype=np.int64)
    first = np.zeros(start.size, dtype=bool)
    want, at = [], 0
    for s, e in threads:
        first[at] = True
        want += [p + at if p >= 0 else -1 for p in _walk(s, e)]
        at += len(s)
    got = _parents(start, end, np.arange(start.size), first)
    assert got.tolist() == want


intervals = st.lists(st.tuples(st.integers(0, 80), st.integers(0, 20)), max_size=25)


@given(intervals, intervals)
def test_overlap_counts_every_shared_unit(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    def covered(iv: list[tuple[int, int]]) -> set[int]:
        return {u for s, d in iv for u in range(s, s + d)}

    def cols(iv: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        s = np.asarray([x for x, _ in iv], dtype=np.int64)
        return s, s + np.asarray([d for _, d in iv], dtype=np.int64)

    assert overlap_ns(*cols(a), *cols(b)) == len(covered(a) & covered(b))
