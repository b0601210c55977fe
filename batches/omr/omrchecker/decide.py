"""Which bubbles are marked, from this sheet's own levels, and what is doubtful.

* The printed letter inside a bubble darkens it (a blank "B" is darker than a
  blank "I"): every bubble is compared with the blank level of the bubbles
  printing the same value (same letter, same box size) on this sheet.
* The threshold is the widest gap between the blank and the marked bubbles
  (as OMRChecker looks for its "jump"), never under ``MIN_MARK``; a sheet
  without such a gap has nothing marked (an unfilled sheet reads blank).
* A bubble between the sure blank and the sure marked levels is doubt: its
  field is flagged (``faint`` when read marked, ``ambiguous`` when read
  blank), as are several marks in one field (``multiple``), a circle drawn
  around a bubble instead of filling it (``circled``) and a block whose
  bubbles are not where the template puts them (``misaligned``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import Geometry, Measures, Placement

#: The smallest gap (darkness, 0..1) between blank and marked bubbles that
#: counts as marks being present.
MIN_GAP = 0.12
#: A mark is at least this much darker than the blank level of its letter.
MIN_MARK = 0.18
#: Sure marks reach this share of the sheet's typical mark.
SURE_MARK = 0.5
#: Sure blanks stay under this share of the typical mark (and a few times the noise).
SURE_BLANK = 0.3
NOISE_SIGMAS = 5.0
#: A circle drawn around a bubble shows in at least this share of the free directions.
CIRCLED = 0.7
#: A block with fewer bubbles on their printed outlines than this share, or
#: with outlines one pitch outside more often than ``BORDER_FLAG``, is misaligned.
BLOCK_OK = 0.75
BORDER_FLAG = 0.75


@dataclass
class Decision:
    marked: np.ndarray  # (N,) bool
    excess: np.ndarray  # (N,) darkness over the blank level of the bubble's letter
    field_flags: list[list[str]]  # per field of the template
    confidence: list[float]  # per field
    threshold: float
    typical: float  # typical mark excess (0 when none)


def _largest_gap(v: np.ndarray) -> tuple[float, float]:
    s = np.sort(v)
    if len(s) < 2:
        return float("inf"), 0.0
    d = np.diff(s)
    i = int(np.argmax(d))
    return float((s[i] + s[i + 1]) / 2), float(d[i])


def decide(m: Measures, geo: Geometry, pl: Placement, n_fields: int) -> Decision:
    # The mean and a low percentile of the inside: a letter printed in a blank
    # bubble darkens its mean, not its lightest part; a fill darkens both.
    score = 0.5 * (m.fill + m.low)
    thr0, gap0 = _largest_gap(score)
    blankish = score < thr0 if gap0 >= MIN_GAP else np.ones(len(score), bool)
    glob = float(np.median(score[blankish])) if blankish.any() else 0.0
    base = np.full(len(score), glob)
    for k in np.unique(geo.value_key):
        sel = (geo.value_key == k) & blankish
        if sel.sum() >= 3:
            base[geo.value_key == k] = float(np.median(score[sel]))
    e = score - base
    thr, gap = _largest_gap(e)
    has_marks = gap >= MIN_GAP and thr >= MIN_MARK / 2
    blank_e = e[e < thr] if has_marks else e
    noise = 1.4826 * float(np.median(np.abs(blank_e - np.median(blank_e)))) if len(blank_e) else 0.0
    if has_marks:
        thr = max(thr, MIN_MARK)
        marked = e >= thr
        typical = float(np.median(e[marked])) if marked.any() else 0.0
    else:
        thr, marked, typical = float("inf"), np.zeros(len(e), bool), 0.0
    ref = typical if typical > 0 else 2 * MIN_MARK
    sure_mark = SURE_MARK * ref
    sure_blank = max(SURE_BLANK * ref, NOISE_SIGMAS * noise, MIN_MARK / 2)
    flags: list[list[str]] = [[] for _ in range(n_fields)]
    conf = [1.0] * n_fields
    for i in range(len(e)):
        f = geo.field[i]
        if marked[i] and e[i] < sure_mark:
            _add(flags[f], "faint")
        elif not marked[i] and e[i] > sure_blank:
            _add(flags[f], "ambiguous")
        if not marked[i] and m.circle[i] >= CIRCLED:
            _add(flags[f], "circled")
        # Confidence: how far from the doubtful band, in its widths.
        width = max(sure_mark - sure_blank, 1e-3)
        c = (e[i] - sure_blank) / width if marked[i] else (sure_mark - e[i]) / width
        conf[f] = min(conf[f], float(np.clip(c, 0.0, 1.0)))
    per_field = np.bincount(geo.field, weights=marked.astype(np.float64), minlength=n_fields)
    for f in range(n_fields):
        if per_field[f] > 1:
            _add(flags[f], "multiple")
    bad_blocks = {b for b in range(len(pl.block_ok)) if pl.block_ok[b] < BLOCK_OK or pl.border[b] > BORDER_FLAG}
    for i in range(len(e)):
        if geo.block[i] in bad_blocks:
            _add(flags[geo.field[i]], "misaligned")
    for f in range(n_fields):
        if flags[f]:
            conf[f] = min(conf[f], 0.5)
    return Decision(marked, e, flags, [round(c, 3) for c in conf], thr, typical)


def _add(lst: list[str], flag: str) -> None:
    if flag not in lst:
        lst.append(flag)
