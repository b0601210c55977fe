"""The blank level of each printed letter, from the sheet's own unmarked bubbles.

Sheets often print the option letter (or digit) inside each bubble: a blank
"B" or "8" holds more ink than a blank "I" or "1", so one blank level for the
whole sheet reads wide letters as light marks. Every bubble is compared instead
with the typical level of the unmarked bubbles printing the same value on this
sheet. Both readers (this project's templates and OMRChecker's) use this rule.
"""

from __future__ import annotations

import numpy as np

#: A value's own level needs at least this many unmarked bubbles printing it...
MIN_BLANKS = 3
#: ...and this share of all the bubbles printing it (when most of a value's
#: bubbles look marked, its blank level is not known: the sheet's is used).
MIN_BLANK_SHARE = 0.3


def blank_levels(values: np.ndarray, keys: np.ndarray, blankish: np.ndarray) -> np.ndarray:
    """(N,) blank level per bubble: the median of ``values`` over the
    ``blankish`` bubbles with the same ``keys`` (the printed value), or over
    all ``blankish`` bubbles where too few print that value."""
    n = len(values)
    values = np.asarray(values)
    glob = float(np.median(values[blankish])) if blankish.any() else 0.0
    if n == 0:
        return np.zeros(0)
    # Every value's median at once: the blankish bubbles sorted by value
    # within their key, the middle one (or two) of each key's run.
    _, inv = np.unique(keys, return_inverse=True)
    inv = inv.ravel()
    nk = int(inv.max()) + 1
    total = np.bincount(inv, minlength=nk)
    inv_b = inv[blankish]
    vals_b = values[blankish]
    count = np.bincount(inv_b, minlength=nk)
    known = count >= np.maximum(MIN_BLANKS, MIN_BLANK_SHARE * total)
    if not known.any():
        return np.full(n, glob)
    ordered = vals_b[np.lexsort((vals_b, inv_b))]
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    upper = ordered[np.minimum(start + count // 2, max(len(ordered) - 1, 0))] if len(ordered) else np.zeros(nk)
    lower = ordered[np.maximum(start + (count - 1) // 2, 0)] if len(ordered) else np.zeros(nk)
    # As ``np.median`` takes it: the middle value, or the mean of the middle two.
    med = np.where(count % 2 == 1, upper, (lower + upper) / 2)
    return np.where(known[inv], med[inv].astype(np.float64), glob)
