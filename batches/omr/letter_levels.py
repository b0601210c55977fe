"""The blank level of each printed letter, from the sheet's own unmarked bubbles.

Sheets often print the option letter (or digit) inside each bubble: a blank
"B" or "8" holds more ink than a blank "I" or "1", so one blank level for the
whole sheet reads wide letters as light marks. Every bubble is compared instead
with the typical level of the unmarked bubbles printing the same value on this
sheet. Both readers (this project's templates and OMRChecker's) use this rule.
"""

from __future__ import annotations

import numpy as np

from .stats import median

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
    glob = float(median(values[blankish])) if blankish.any() else 0.0
    base = np.full(n, glob)
    for k in sorted(set(keys.tolist())):  # (np.unique would import numpy.ma: see stats.py)
        same = keys == k
        sel = same & blankish
        if sel.sum() >= max(MIN_BLANKS, MIN_BLANK_SHARE * same.sum()):
            base[same] = float(median(values[sel]))
    return base
