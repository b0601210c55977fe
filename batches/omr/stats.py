"""The median and percentiles of an array, exactly as ``np.median`` and
``np.percentile`` give them, without ``numpy.ma``: numpy's median of
floating-point values, and every percentile it interpolates, go through its
masked-array module, whose import costs a process that reads one sheet more
than all the sheet's medians and percentiles. Both partition the values as
numpy does, so even the sign of a zero agrees."""

from __future__ import annotations

import numpy as np


def median(values):
    """``np.median(values)`` (over all elements): the same value and type,
    NaN when any element is NaN."""
    a = np.asarray(values)
    if a.dtype.kind != "f" or a.size == 0:
        return np.median(a)  # whole numbers (no NaN check), or nothing: numpy's own
    k = a.size // 2
    part = np.partition(a, [k, -1] if a.size % 2 else [k - 1, k, -1], axis=None)
    if np.isnan(part[-1]):  # NaNs sort last
        return part[-1]
    # numpy's mean sums from a zero (a lone -0.0 comes out as 0.0).
    zero = part.dtype.type(0)
    return zero + part[k] if a.size % 2 else (zero + part[k - 1] + part[k]) / 2


def percentile(values, q: float, axis: int | None = None):
    """``np.percentile(values, q, axis=axis)`` (linear interpolation, ``q`` a
    plain number in 0..100; over all elements, or along one axis): the same
    values and type."""
    a = np.asarray(values)
    if axis is None:
        a = a.ravel()
    if (a.ndim == 0 or a.size == 0 or a.dtype.kind not in "uif" or type(q) not in (int, float)
            or not 0 <= q <= 100 or type(axis) not in (int, type(None))):
        return np.percentile(values, q, axis=axis)
    along = 0 if axis is None else axis
    n = a.shape[along]
    virtual = (n - 1) * np.true_divide(q, 100, out=...)
    lo = hi = -1  # at the top: the largest value
    if virtual < n - 1:
        lo = int(np.floor(virtual))
        hi = lo + 1
    part = np.partition(a, sorted({0, -1, lo, hi}), axis=along)
    gamma = float(virtual - np.intp(lo))
    # numpy's interpolation, from the nearer end.
    below, above = np.take(part, lo, axis=along), np.take(part, hi, axis=along)
    step = above - below
    out = np.add(below, step * gamma, out=...)
    np.subtract(above, step * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=type(out.dtype))
    if a.dtype.kind == "f":
        last = np.take(part, -1, axis=along)  # NaNs sort last
        if axis is None and np.isnan(last):
            return last
        out[np.isnan(last)] = np.nan
    return out[()]
