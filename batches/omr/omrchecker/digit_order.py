"""Which way round a grid of digits is printed, from the ink of its digits.

A digit grid is printed 0, 1, ..., 9 from its first bubble on most sheets and
1, ..., 9, 0 on others, and a template can say the one where the paper has
the other (OMRChecker's ``QTYPE_INT`` is 0..9; ``Sandeep-1507``'s booklet
number is printed 1..9, 0). Read as the template says, every digit then
comes out one too low, in a field that looks perfectly filled in.

Where the digits are printed inside the bubbles, the paper says which: a
blank "1" holds the least ink of the ten and a blank "7" the next least, in
any typeface. Printed 0..9, the first bubble ("0") is darker than the second
("1") and the seventh ("6") darker than the eighth ("7"); printed 1..9, 0,
both pairs are the other way round ("1" against "2", "7" against "8"). Each
column gives these two comparisons where neither bubble of a pair is marked
nor next to a mark; a grid is read in the other order only when nearly all
of them point one way and their median is clear of the noise of bubbles
without printed digits (``printed_orders``).
"""

from __future__ import annotations

import numpy as np

from ..stats import median

#: The two printings, by position in the grid.
ZERO_FIRST = tuple("0123456789")
ONE_FIRST = tuple("1234567890")
#: The positions compared: (first, second) and (seventh, eighth) bubble.
PAIRS = ((0, 1), (6, 7))
#: At least this many comparisons (columns x pairs with all four bubbles unmarked)...
MIN_COMPARISONS = 6
#: ...this share of which point the way their median does...
MIN_AGREEMENT = 0.75
#: ...a median of this much darkness at least (printed digits differ by
#: 0.02-0.19 between "1" and "2"; bubbles without digits by under 0.01).
MIN_DIFFERENCE = 0.012


def printed_orders(fields: list[tuple[int, int, tuple[str, ...]]], mean: np.ndarray, marked: np.ndarray
                   ) -> dict[int, tuple[str, ...]]:
    """The digit fields to read in the other order: {field index: its values
    as printed}. ``fields``: per field, (its block, the index of its first
    bubble, its values in bubble order); ``mean``: each bubble's inside
    darkness; ``marked``: each bubble read as marked. Grids are judged block
    by block (a block's digit fields are printed alike)."""
    by_block: dict[int, list[int]] = {}
    for k, (block, _first, values) in enumerate(fields):
        if values in (ZERO_FIRST, ONE_FIRST):
            by_block.setdefault(block, []).append(k)
    out: dict[int, tuple[str, ...]] = {}
    for ks in by_block.values():
        orders = {fields[k][2] for k in ks}
        if len(orders) != 1:
            continue
        said = orders.pop()
        diffs = []
        for k in ks:
            s = fields[k][1]
            for a, b in PAIRS:
                # Neither bubble marked, nor next to a mark in the column (a
                # mark's overflow or a stroke running on from it darkens those).
                if not marked[s + max(a - 1, 0):s + b + 2].any():
                    diffs.append(float(mean[s + a] - mean[s + b]))
        seen = _printed(np.array(diffs))
        if seen is not None and seen != said:
            out.update({k: seen for k in ks})
    return out


def _printed(diffs: np.ndarray) -> tuple[str, ...] | None:
    """The printing the comparisons show, or None when they are too few, too
    small or do not agree. (Positive: the first bubble of each pair is the
    darker, "0" against "1": printed 0..9.) The median and the share of
    signs, not sums: a stray stroke in one bubble outweighs every printed
    digit."""
    if len(diffs) < MIN_COMPARISONS:
        return None
    typical = float(median(diffs))
    if abs(typical) < MIN_DIFFERENCE:
        return None
    if float(np.mean(np.sign(diffs) == np.sign(typical))) < MIN_AGREEMENT:
        return None
    return ZERO_FIRST if typical > 0 else ONE_FIRST
