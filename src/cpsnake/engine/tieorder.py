"""The order torch's CPU ``argsort`` gives equal values, reproduced without torch (numba).

Cellpose ranks its 3-D seeds with ``torch.argsort`` of their end-point counts (int32, ascending, not
stable). Where two seeds with the same count reach one bin, the later in that order wins it, so the order of
equal counts is part of cellpose's labels; a stable sort does not give it, and importing torch for it costs
about 0.5 GB of memory. :func:`argsort_like_torch` gives torch's permutation to the index:

- below 32,768 values (ATen's ``GRAIN_SIZE``), torch sorts (value, index) pairs with ``std::sort``
  comparing values only: libstdc++'s introsort (median of three moved to the front, unguarded partition,
  segments of 16 or fewer left to one final insertion sort, heapsort below ``2 * floor(log2 n)`` levels of
  recursion), written out here step for step;
- from 32,768 values on, integer values go to fbgemm's radix sort, which is stable: numpy's stable
  ``argsort`` gives the same permutation.

``tests/engine/test_tieorder.py`` compares both paths with ``torch.argsort`` on arrays full of ties.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["argsort_like_torch"]

_RADIX_FROM = 32768  # ATen GRAIN_SIZE: integer sorts of at least this many values take fbgemm's radix sort
_THRESHOLD = 16  # libstdc++ _S_threshold


def argsort_like_torch(values: np.ndarray) -> np.ndarray:
    """``torch.argsort(torch.from_numpy(values)).numpy()`` on the CPU, without torch.

    Parameters
    ----------
    values : (N,) integer ndarray

    Returns
    -------
    (N,) int64 ndarray: the permutation that sorts ``values`` ascending, equal values in torch's order.
    """
    values = np.asarray(values)
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise ValueError(f"argsort_like_torch: expected a 1-D integer array, found {values.dtype} {values.shape}")
    if values.size >= _RADIX_FROM:
        return np.argsort(values, kind="stable")
    v = values.astype(np.int64)
    idx = np.arange(values.size, dtype=np.int64)
    _introsort(v, idx)
    return idx


@njit(cache=True)
def _swap(v, idx, a, b):
    v[a], v[b] = v[b], v[a]
    idx[a], idx[b] = idx[b], idx[a]


@njit(cache=True)
def _introsort(v, idx):
    """libstdc++ ``std::__sort``: introsort loop, then the final insertion sort. Sorts ``v`` and ``idx`` together."""
    n = v.size
    if n < 2:
        return
    lg = 0  # __lg(n) = floor(log2(n))
    while (n >> (lg + 1)) > 0:
        lg += 1
    depth = 2 * lg
    # the recursion on the right part, as an explicit stack of (first, last, depth)
    stack = np.empty((2 * 64 + 2, 3), np.int64)
    stack[0, 0], stack[0, 1], stack[0, 2] = 0, n, depth
    top = 1
    while top > 0:
        top -= 1
        first, last, d = stack[top, 0], stack[top, 1], stack[top, 2]
        while last - first > _THRESHOLD:
            if d == 0:
                _heapsort(v, idx, first, last)
                break
            d -= 1
            cut = _partition_pivot(v, idx, first, last)
            stack[top, 0], stack[top, 1], stack[top, 2] = cut, last, d  # __introsort_loop(cut, last, d)
            top += 1
            last = cut
            # std::sort recurses into [cut, last) before looping on [first, cut): the two parts are
            # disjoint, so taking [first, cut) first here leaves every element where std::sort puts it
    _final_insertion_sort(v, idx, n)


@njit(cache=True)
def _partition_pivot(v, idx, first, last):
    """``__unguarded_partition_pivot``: median of (first + 1, mid, last - 1) moved to ``first``, then partition."""
    mid = first + (last - first) // 2
    a, b, c = first + 1, mid, last - 1
    if v[a] < v[b]:
        if v[b] < v[c]:
            _swap(v, idx, first, b)
        elif v[a] < v[c]:
            _swap(v, idx, first, c)
        else:
            _swap(v, idx, first, a)
    elif v[a] < v[c]:
        _swap(v, idx, first, a)
    elif v[b] < v[c]:
        _swap(v, idx, first, c)
    else:
        _swap(v, idx, first, b)
    lo, hi = first + 1, last
    pivot = v[first]
    while True:
        while v[lo] < pivot:
            lo += 1
        hi -= 1
        while pivot < v[hi]:
            hi -= 1
        if not lo < hi:
            return lo
        _swap(v, idx, lo, hi)
        lo += 1


@njit(cache=True)
def _final_insertion_sort(v, idx, n):
    """``__final_insertion_sort`` on [0, n): guarded insertion sort of the first 16, unguarded of the rest."""
    end = _THRESHOLD if n > _THRESHOLD else n
    for i in range(1, end):  # __insertion_sort
        if v[i] < v[0]:
            tv, ti = v[i], idx[i]
            for j in range(i, 0, -1):  # move_backward
                v[j], idx[j] = v[j - 1], idx[j - 1]
            v[0], idx[0] = tv, ti
        else:
            _linear_insert(v, idx, i)
    for i in range(end, n):  # __unguarded_insertion_sort
        _linear_insert(v, idx, i)


@njit(cache=True)
def _linear_insert(v, idx, last):
    """``__unguarded_linear_insert``: move ``last`` left past the larger values before it."""
    tv, ti = v[last], idx[last]
    nxt = last - 1
    while tv < v[nxt]:
        v[last], idx[last] = v[nxt], idx[nxt]
        last = nxt
        nxt -= 1
    v[last], idx[last] = tv, ti


@njit(cache=True)
def _heapsort(v, idx, first, last):
    """``__partial_sort(first, last, last)``: ``__make_heap`` then ``__sort_heap`` on [first, last)."""
    n = last - first
    if n >= 2:
        parent = (n - 2) // 2
        while True:
            _adjust_heap(v, idx, first, parent, n, v[first + parent], idx[first + parent])
            if parent == 0:
                break
            parent -= 1
    while n > 1:
        n -= 1
        tv, ti = v[first + n], idx[first + n]  # __pop_heap(first, first + n, first + n)
        v[first + n], idx[first + n] = v[first], idx[first]
        _adjust_heap(v, idx, first, 0, n, tv, ti)


@njit(cache=True)
def _adjust_heap(v, idx, first, hole, n, tv, ti):
    """``__adjust_heap`` then ``__push_heap`` with the value (``tv``, ``ti``) on the heap [first, first + n)."""
    top = hole
    child = hole
    while child < (n - 1) // 2:
        child = 2 * (child + 1)
        if v[first + child] < v[first + child - 1]:
            child -= 1
        v[first + hole], idx[first + hole] = v[first + child], idx[first + child]
        hole = child
    if (n & 1) == 0 and child == (n - 2) // 2:
        child = 2 * (child + 1)
        v[first + hole], idx[first + hole] = v[first + child - 1], idx[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and v[first + parent] < tv:
        v[first + hole], idx[first + hole] = v[first + parent], idx[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    v[first + hole], idx[first + hole] = tv, ti
