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
#: A value's blank bubbles whose median lies this far over their lower
#: quartile hold light marks too: its level is the lower quartile.
SPLIT_LEVEL = 0.06
#: A value without a level of its own (a letter printed once) is set against
#: the darkest known value's; it may be darker still, by about this share of
#: the spread between the lightest and the darkest known values' levels
#: (OMRChecker's sample6, check letters printed once beside a roll number's
#: digits: blank ones score up to 0.2-0.5 of that spread over the darkest
#: digit, on the scans and on copies of them). ``unknown_margin``.
UNKNOWN_SPREAD = 0.5


def _per_value(keys: np.ndarray, blankish: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value index per bubble, blankish bubbles per value, whether each
    value's own level is known)."""
    # The index of each bubble's value among the sorted values (what
    # np.unique's inverse gives; np.unique would import numpy.ma, see stats.py).
    distinct = np.array(sorted(set(np.asarray(keys).ravel().tolist())))
    inv = np.searchsorted(distinct, np.asarray(keys).ravel())
    nk = int(inv.max()) + 1
    total = np.bincount(inv, minlength=nk)
    count = np.bincount(inv[blankish], minlength=nk)
    return inv, count, count >= np.maximum(MIN_BLANKS, MIN_BLANK_SHARE * total)


def level_known(keys: np.ndarray, blankish: np.ndarray) -> np.ndarray:
    """(N,) bool: the bubble's printed value has a blank level of its own
    (``blank_levels`` takes the sheet's for the others), so what a blank
    bubble of that value holds is known."""
    if len(keys) == 0:
        return np.zeros(0, bool)
    inv, _, known = _per_value(keys, blankish)
    return known[inv]


def unknown_margin(values: np.ndarray, keys: np.ndarray, blankish: np.ndarray) -> np.ndarray:
    """(N,) how much darker than the level it is set against
    (``blank_levels`` with ``unknown_darkest``) a blank bubble of a value
    without a level of its own may be: ``UNKNOWN_SPREAD`` of the known
    values' spread; 0 for a bubble of a known value, and where fewer than
    two values are known (nothing shows how letters differ)."""
    out = np.zeros(len(values))
    if len(values) == 0:
        return out
    inv, count, known = _per_value(keys, blankish)
    if int(known.sum()) < 2 or known.all():
        return out
    levels = medians_by(np.asarray(values)[blankish], inv[blankish], len(count))[known]
    out[~known[inv]] = UNKNOWN_SPREAD * float(levels.max() - levels.min())
    return out


def medians_by(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups,) the median of ``values`` in each group (``groups``: (N,)
    indices 0..n_groups-1), as ``np.median`` takes it; 0 for an empty group."""
    values = np.asarray(values)
    count = np.bincount(groups, minlength=n_groups)
    if len(values) == 0:
        return np.zeros(n_groups)
    # Sorted by value within each group: the middle one (or two) of each run.
    ordered = values[np.lexsort((values, groups))]
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    last = len(ordered) - 1
    upper = ordered[np.clip(start + count // 2, 0, last)]
    lower = ordered[np.clip(start + (count - 1) // 2, 0, last)]
    med = np.where(count % 2 == 1, upper, (lower + upper) / 2)
    return np.where(count > 0, med, 0).astype(np.float64)


def lower_quartiles_by(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups,) the 25th percentile of ``values`` in each group (linear
    interpolation, as ``np.percentile`` takes it); 0 for an empty group."""
    values = np.asarray(values, np.float64)
    count = np.bincount(groups, minlength=n_groups)
    if len(values) == 0:
        return np.zeros(n_groups)
    ordered = values[np.lexsort((values, groups))]
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    at = 0.25 * np.maximum(count - 1, 0)
    lo = np.floor(at).astype(np.int64)
    last = len(ordered) - 1
    below = ordered[np.clip(start + lo, 0, last)]
    above = ordered[np.clip(start + np.minimum(lo + 1, np.maximum(count - 1, 0)), 0, last)]
    return np.where(count > 0, below + (at - lo) * (above - below), 0.0)


def blank_levels(values: np.ndarray, keys: np.ndarray, blankish: np.ndarray, *,
                 unknown_darkest: bool = False, split: bool = False) -> np.ndarray:
    """(N,) blank level per bubble: the median of ``values`` over the
    ``blankish`` bubbles with the same ``keys`` (the printed value), or over
    all ``blankish`` bubbles where too few print that value; with
    ``unknown_darkest``, there the darkest known value's level instead (a
    letter printed once may be as dark as the darkest blank letter); with
    ``split``, a value's lower quartile where its bubbles hold two groups
    (``SPLIT_LEVEL``)."""
    n = len(values)
    values = np.asarray(values)
    glob = float(median(values[blankish])) if blankish.any() else 0.0
    if n == 0:
        return np.zeros(0)
    inv, count, known = _per_value(keys, blankish)
    if not known.any():
        return np.full(n, glob)
    med = medians_by(values[blankish], inv[blankish], len(count))
    # A value whose unmarked-looking bubbles' median lies SPLIT_LEVEL over
    # their lower quartile holds two groups: it is the answer of many groups,
    # marked lightly (half fills, ticks), and those marks would set its blank
    # level themselves and read blank. Its level is the lower group's.
    # (Blank bubbles printing one value on one sheet differ far less.)
    if split:
        q = lower_quartiles_by(values[blankish], inv[blankish], len(count))
        med = np.where(known & (med - q > SPLIT_LEVEL), q, med)
    if unknown_darkest:
        glob = max(glob, float(med[known].max()))
    return np.where(known[inv], med[inv], glob)
