"""Which bubbles are marked, from this sheet's own levels, and what is doubtful.

* The printed letter inside a bubble darkens it (a blank "B" is darker than a
  blank "I"): every bubble is compared with the blank level of the bubbles
  printing the same value (same letter, same box size) on this sheet.
* The threshold follows this sheet's typical clear mark (a light pencil
  sheet gets a lower one), within fixed bounds and above the blanks' noise;
  a sheet without any clear mark has nothing marked (an unfilled sheet reads
  blank).
* A pen or pencil stroke (a tick, a cross, a half fill: dark pixels over
  what the blank bubbles of the same value hold, ``strokes.py``, the rule the
  built-in templates' reader uses), standing out from the rest of its field,
  is read as a mark under the threshold, flagged ``faint``; not where the value's own blank level is unknown (a
  letter printed once looks alike), nor beside a mark in the same field (a
  dash drawn across two bubbles runs on into the next).
* A bubble between the sure blank and the sure marked levels is doubt: its
  field is flagged (``faint`` when read marked, ``ambiguous`` when read
  blank), as are several marks in one field (``multiple``), a circle drawn
  around a bubble instead of filling it (``circled``, read as a mark) and a block whose
  bubbles are not where the template puts them (``misaligned``; also a block
  with a first or last line off its outlines: placed a row off).
* A field read blank with one bubble standing out of the others (a tick or a
  half fill a rough capture blurred, a light mark a two-level scan nearly
  dropped) is ``ambiguous``; on a sheet without any clear mark where several
  fields hold one, every field read blank is (the capture may have dropped
  other light marks whole).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..letter_levels import blank_levels, level_known, medians_by
from ..stats import median, percentile
from ..strokes import strokes
from .grid import Geometry, Measures, Placement

#: A bubble this much darker than the blank level of its letter is a clear mark.
CLEAR_MARK = 0.3
#: The threshold: this share of the sheet's typical clear mark, within these bounds.
MARK_SHARE = 0.33
MIN_MARK = 0.18
MAX_MARK = 0.3
#: Doubt: a mark under this multiple of the threshold (faint), a blank over
#: this share of it (ambiguous), or within this many noise widths.
SURE_MARK_OVER = 1.4
SURE_BLANK_UNDER = 0.7
NOISE_SIGMAS = 5.0
#: In a field read blank, a bubble over this share of the threshold, and as
#: far above the field's next one, is doubt...
STANDS_OUT = 0.35
#: ...and so is one this far over the field's next one (and over its blank
#: level), or this many noise widths when the blanks are noisier: a tick or a
#: half fill blurred by a rough capture, or a light mark a two-level scan
#: nearly dropped, stays far under the threshold but stands out of its field.
STANDS_OUT_MIN = 0.05
STANDS_OUT_SIGMAS = 6.0
#: A sheet without any clear mark where at least this many fields hold a
#: bubble standing out: its marks are light, and a capture that kept only
#: some of them (a two-level scan) may have lost others: every field read
#: blank on it is doubt.
LIGHT_SHEET_FIELDS = 2
#: A value whose unmarked-looking bubbles' median lies this far over their
#: lower quartile holds two groups (half of its bubbles lightly marked: half
#: fills or ticks of the same letter): its blank level is the lower group's.
SPLIT_LEVEL = 0.06
#: A block whose median bubble is this much darker than the sheet's does not
#: set the blank levels of the letters it prints.
DARK_BLOCK = 0.1
#: A circle drawn around a bubble shows in at least this share of the free directions.
CIRCLED = 0.85
#: A block with fewer bubbles on their printed outlines than this share is
#: misaligned; so are all when most blocks show outlines one pitch outside
#: them more often than ``BORDER_FLAG``.
BLOCK_OK = 0.8
BORDER_FLAG = 0.95


@dataclass
class Decision:
    marked: np.ndarray  # (N,) bool
    excess: np.ndarray  # (N,) darkness over the blank level of the bubble's letter
    field_flags: list[list[str]]  # per field of the template
    confidence: list[float]  # per field
    threshold: float
    typical: float  # typical mark excess (0 when none)


def _threshold(e: np.ndarray, *, noise_guard: bool = True) -> tuple[np.ndarray, float, float, float]:
    """(marked, threshold, typical mark, blank noise) for a sheet's excesses:
    the threshold is a share of this sheet's typical clear mark (a light
    pencil sheet gets a lower one), between ``MIN_MARK`` and ``MAX_MARK``
    and above the blanks' noise. Without any clear mark nothing is marked."""
    # The blanks' spread from the lower half only (marks widen the upper one).
    noise = float(median(e) - percentile(e, 25)) / 0.674
    clear = e[e >= CLEAR_MARK]
    typical = float(median(clear)) if len(clear) else 0.0
    thr = float(np.clip(MARK_SHARE * typical, MIN_MARK, MAX_MARK)) if len(clear) else MAX_MARK
    if noise_guard:
        thr = max(thr, NOISE_SIGMAS * noise)
    return e >= thr, thr, typical, noise


def _lower_where_split(base: np.ndarray, score: np.ndarray, keys: np.ndarray, blankish: np.ndarray) -> np.ndarray:
    """``base`` (the median of each value's unmarked-looking bubbles), or
    their lower quartile where it lies ``SPLIT_LEVEL`` under the median: when
    a letter is the answer of many fields, marked lightly (half fills), those
    marks are not clear and would set that letter's blank level themselves,
    reading every one of them blank. (Blank bubbles printing one letter on
    one sheet differ far less.)"""
    base = base.copy()
    known = level_known(keys, blankish)
    for k in sorted(set(keys[known].tolist())):
        of_k = keys == k
        q = float(percentile(score[of_k & blankish], 25))
        level = float(base[of_k][0])
        if level - q > SPLIT_LEVEL:
            base[of_k] = q
    return base


def decide(m: Measures, geo: Geometry, pl: Placement, n_fields: int) -> Decision:
    # The mean and a low percentile of the inside: a letter printed in a blank
    # bubble darkens its mean, not its lightest part; a fill darkens both.
    score = 0.5 * (m.fill + m.low)
    # First the blank level of each printed letter, from the bubbles that are
    # clearly not marked; then the threshold from this sheet's typical mark.
    # (Before the letters are accounted for, their spread is not noise.)
    first = _threshold(score - float(median(score)), noise_guard=False)[0]
    blankish = ~first
    # A block whose typical bubble is far darker than the sheet's (out of
    # focus: its printed outlines spread into the bubbles) says nothing of
    # what a blank letter holds elsewhere on the sheet.
    n_blocks = len(geo.block_pitch)
    block_level = medians_by(score, geo.block, n_blocks) - float(median(score))
    blankish = blankish & (block_level[geo.block] <= DARK_BLOCK)
    base = _lower_where_split(blank_levels(score, geo.value_key, blankish), score, geo.value_key, blankish)
    e = score - base
    marked, thr, typical, noise = _threshold(e)
    sure_mark = SURE_MARK_OVER * thr
    sure_blank = max(SURE_BLANK_UNDER * thr, NOISE_SIGMAS * noise)
    flags: list[list[str]] = [[] for _ in range(n_fields)]
    # A circle drawn round a bubble instead of filling it is read as a mark
    # (as the engine reads its own sheets), and flagged.
    circled = ~marked & (m.circle >= CIRCLED)
    # A pen or pencil stroke (a tick, a cross, a half fill) leaves the mean
    # low but holds dark pixels: over what the blank bubbles printing the
    # same value hold, and standing out from the other bubbles of its field
    # (a shadow or print over a whole field is not a stroke), it is a mark,
    # flagged. Where that value's blank level is not known (a letter printed
    # once), a letter's strokes look alike; beside a mark in its field, it is
    # that mark's stroke running on (a dash drawn across two bubbles), not a
    # second answer.
    unmarked = blankish & ~marked
    dark = m.dark_share - _lower_where_split(blank_levels(m.dark_share, geo.value_key, unmarked), m.dark_share,
                                             geo.value_key, unmarked)
    dark_in_field = dark - medians_by(dark, geo.field, n_fields)[geo.field]
    e_in_field = e - medians_by(e, geo.field, n_fields)[geo.field]
    has_mark = np.bincount(geo.field, weights=(marked | circled).astype(np.float64), minlength=n_fields) > 0
    stroke = (~marked & ~circled & ~has_mark[geo.field] & level_known(geo.value_key, unmarked)
              & strokes(np.minimum(dark, dark_in_field), m.peak, np.minimum(e, e_in_field), noise))
    faint = (marked & (e < sure_mark)) | stroke
    ambiguous = ~marked & ~circled & ~stroke & (e > sure_blank)
    marked = marked | circled | stroke
    for name, which in (("faint", faint), ("ambiguous", ambiguous), ("circled", circled)):
        for f in sorted(set(geo.field[which].tolist())):
            _add(flags[f], name)
    # Confidence: how far from the doubtful band, in its widths (the field's
    # least sure bubble).
    width = max(sure_mark - sure_blank, 1e-3)
    c = np.clip(np.where(marked, e - sure_blank, sure_mark - e) / width, 0.0, 1.0)
    conf_a = np.ones(n_fields)
    np.minimum.at(conf_a, geo.field, c)
    conf = conf_a.tolist()
    per_field = np.bincount(geo.field, weights=marked.astype(np.float64), minlength=n_fields)
    # A field read blank with one bubble standing out from the others (a
    # partial fill, a small scribble): doubt, though under the blanks' limit.
    stands_out = min(STANDS_OUT * thr, max(STANDS_OUT_MIN, STANDS_OUT_SIGMAS * noise))
    blank_fields = np.flatnonzero(per_field == 0)
    standing = 0
    for f in blank_fields:
        ef = np.sort(e[geo.field == f])
        if len(ef) > 1 and ef[-1] >= stands_out and ef[-1] - ef[-2] >= stands_out:
            _add(flags[f], "ambiguous")
            standing += 1
    if typical == 0 and standing >= LIGHT_SHEET_FIELDS:
        for f in blank_fields:
            _add(flags[f], "ambiguous")
    for f in range(n_fields):
        if per_field[f] > 1:
            _add(flags[f], "multiple")
    # Outlines one pitch outside blocks: printed numbers and letters beside a
    # block look alike there, so only most blocks showing them (the whole
    # grid a row or column off) make the sheet's blocks misaligned.
    grid_off = len(pl.border) > 0 and float(median(pl.border)) > BORDER_FLAG
    # (One bubble off its outline in a tiny block is not a block off.)
    missed = np.bincount(geo.block, weights=(~pl.ok).astype(np.float64), minlength=len(pl.block_ok))
    bad_blocks = {b for b in range(len(pl.block_ok)) if (pl.block_ok[b] < BLOCK_OK and missed[b] >= 2) or grid_off}
    # A block with an end line off its outlines (``grid.Placement``): a row or a column off.
    bad_blocks |= set(np.flatnonzero(pl.end_line_off).tolist())
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
