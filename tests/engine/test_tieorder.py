"""torch's CPU argsort order of equal values, reproduced without torch (:mod:`cpsnake.engine.tieorder`)."""

from __future__ import annotations

import numpy as np
import pytest

from cpsnake.engine import tieorder

torch = pytest.importorskip("torch")


def _torch(v: np.ndarray) -> np.ndarray:
    return torch.argsort(torch.from_numpy(v)).numpy()


@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 17, 33, 100, 1000, 4097, 20000, 32767, 32768, 50000])
def test_equal_counts_in_torchs_order(n):
    """Random int32 arrays full of ties (2 to 1,000 distinct values), both paths (introsort below 32,768,
    stable radix from there on): the permutation is torch's to the index.

    Catches: a stable sort below 32,768 (ties differ), a different pivot or insertion threshold, the radix
    switch at the wrong size.
    """
    rng = np.random.default_rng(n)
    for k in (2, 5, 1000):
        v = rng.integers(11, 11 + k, n).astype(np.int32)
        assert np.array_equal(tieorder.argsort_like_torch(v), _torch(v))


def test_presorted_and_patterned_inputs():
    for n in (500, 5000, 30000):
        for v in (
            np.arange(n),
            np.arange(n)[::-1],
            np.r_[np.arange(n // 2), np.arange(n // 2)[::-1]],
            np.tile([1, 2], n // 2),
            np.zeros(n),
        ):
            v = np.ascontiguousarray(v, dtype=np.int32)
            assert np.array_equal(tieorder.argsort_like_torch(v), _torch(v))


def _killer(n: int) -> np.ndarray:
    """An input that drives our introsort into its heapsort fallback: McIlroy's "killer adversary" (values
    are decided only when compared, always against the pivot candidate), run on the pure-Python form of
    the same code; returns the values it settled and asserts that heapsort ran."""
    val = np.full(n, n, np.int64)  # n = "gas", larger than every settled value
    state = {"solid": 0, "cand": -1, "heap": 0}

    class Item:
        __slots__ = ("i",)

        def __init__(self, i):
            self.i = i

        def __lt__(self, other):
            x, y = self.i, other.i
            if val[x] == n and val[y] == n:
                z = x if x == state["cand"] else y
                val[z] = state["solid"]
                state["solid"] += 1
            if val[x] == n:
                state["cand"] = x
            elif val[y] == n:
                state["cand"] = y
            return val[x] < val[y]

    names = ["_swap", "_partition_pivot", "_final_insertion_sort", "_linear_insert", "_heapsort", "_adjust_heap"]
    jitted = {k: getattr(tieorder, k) for k in names}
    heap = jitted["_heapsort"].py_func

    def counting_heapsort(*a):
        state["heap"] += 1
        return heap(*a)

    try:
        for k in names:
            setattr(tieorder, k, jitted[k].py_func)
        tieorder._heapsort = counting_heapsort
        v = np.empty(n, dtype=object)
        v[:] = [Item(i) for i in range(n)]
        tieorder._introsort.py_func(v, np.arange(n, dtype=np.int64))
    finally:
        for k in names:
            setattr(tieorder, k, jitted[k])
    assert state["heap"] > 0
    return val


def test_heapsort_fallback_in_torchs_order():
    """An adversarial input that exhausts introsort's depth limit (its segments end in heapsort), with its
    values folded to few distinct ones so that ties meet inside the heap: still torch's permutation.

    Catches: a wrong heap sift (child choice, odd/even tail) or depth limit.
    """
    v = _killer(3000)
    assert np.array_equal(tieorder.argsort_like_torch(v.astype(np.int32)), _torch(v.astype(np.int32)))
    folded = (v // 7).astype(np.int32)
    assert np.array_equal(tieorder.argsort_like_torch(folded), _torch(folded))


def test_refuses_what_it_does_not_reproduce():
    with pytest.raises(ValueError, match="1-D integer"):
        tieorder.argsort_like_torch(np.zeros(3, np.float32))
