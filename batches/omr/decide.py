"""Deciding what was marked: one stage for both kinds of template.

Both readers (this project's templates, ``reader.py``, and OMRChecker's,
``omrchecker/reader.py``) find the page their own way, place and measure the
bubbles (``bubbles.measure``, ``omrchecker/grid.measure``: the same
``Measures``), then call ``decide_sheet`` in the same order: letters printed
in bubbles taken out (``without_letters``), this sheet's levels
(``sheet_levels``), and every group decided and flagged (``decide_groups``).
What one kind of sheet teaches about paper, the other gets.

Per sheet and per group:

* First (``without_letters``) the ink of a letter or digit printed inside the
  bubbles is taken out: each bubble is set against the blank level of the
  bubbles printing the same value (``letter_levels``); about zero on a sheet
  without letters. A value the sheet shows no blank level of (a letter
  printed once, as OMRChecker sheets print an option's name in one bubble)
  is set against the darkest blank letter, not the typical one.
* ``score`` = max(mean darkness of the disc, mean of that and the share of the
  disc darker than 0.5): a solid fill scores ~0.8-1, light shading ~0.2-0.35,
  a tick or cross ~0.15-0.45 (few, dark pixels), erasure residue ~0.05-0.2
  (many light pixels), a blank bubble ~0.
* Each bubble is compared with the *local blank level*: the typical score of
  the unmarked bubbles around it (within ~2 cm), which takes out what the
  paper-level estimate leaves of shadows and blur. The sheet's noise is the
  spread of unmarked bubbles about that level.
* Marked: excess over the local blank level >= ``T_mark`` = max(``MARK_MIN``
  0.12, 6 noise), lowered on a sheet marked lightly throughout to about half
  its marks' typical excess (never under ``MARK_MIN_LIGHT`` 0.07 or 4 noise);
  or, for pen/pencil strokes (a tick, a cross: at least 8 % of the disc
  darker than 0.5, reaching 0.45), an excess >= ``STROKE_MIN`` 0.07 over
  its group's own level (``group_level``: print or a shadow over a whole
  group is not a stroke; ``strokes.py``); or a
  circle drawn around the bubble (dark in ``CIRCLE_MIN`` of its free
  directions, or, in a group with nothing else marked, ``CIRCLE_PARTIAL``
  above its group's: a hand's ring left open). Beside a clear mark in the same group, a
  light even shade just over ``T_mark`` is taken for erasure residue; and
  the weaker of two adjacent marks joined by ink across the paper between
  them (``run_on``: a dash drawn through one bubble into the next) is that
  dash running on, not a second answer. Beside a clear mark, a few dark
  pixels with too little ink for a stroke (the pen's tip set down) are
  neither a second answer nor doubt.
* Flags: ``ambiguous`` (an excess within the grey zone ``T_mark`` +- g, g =
  ``GREY`` 0.05 or 2.5 noise, without stroke evidence; or a dash's run-on
  left out: a light second mark under it looks alike; or a group read blank
  with one bubble standing out of the others, ``standing_out``, and on a
  sheet without any clear mark where several groups hold one, every group
  read blank), ``faint`` (a mark
  under half this sheet's typical mark darkness (where blank bubbles are dark
  in places too, letters printed in them or a two-level scan: under half its
  typical mark excess; there, on a sheet marked lightly throughout, a group
  read blank too; on a black & white scan whose marks kept only specks, a
  group whose unmarked bubble beside a mark holds dark pixels over its
  letter's, and every group where no mark stands clear at all), or read on
  strokes alone under ``T_mark``: a hair or a speck looks like that too),
  ``erasure`` (anything above 3 noise and ``ERASURE_MIN`` 0.05 over the
  rest of its group that is not read as a mark: residue, a smudge, a very
  light mark; for a letter printed once, whose blank level is not known,
  more by ``letter_levels.unknown_margin``; a tint or a band printed under a whole group lifts all its
  bubbles alike, ``group_level`` of its unmarked ones; or a mark of an even shade whose printed
  outline is rubbed fainter than this sheet's marks keep theirs,
  ``rubbed_outline``: an eraser rubs the print too), ``circled``,
  ``misaligned`` (the printed outline is not where the model puts it; on
  OMRChecker sheets, whose measure has no outline per bubble, the placement
  says it per block instead), ``multiple``, ``blank``.

An all-blank sheet reads all blank: thresholds never fall below the fixed
minimums however quiet the sheet is, so noise never becomes a mark, and the
light-sheet rule needs at least 8 bubbles clearly above the noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from .cache import per_object
from .layout import PageLayout
from .letter_levels import blank_levels, lower_quartiles_by, medians_by, unknown_margin
from .stats import median, percentile
from .strokes import STROKE_DARK, STROKE_MIN, strokes

#: Lowest excess darkness (score above the local blank level) that counts as a mark.
MARK_MIN = 0.12
#: ...and on a sheet whose marks are all light, the lowest it may come down to.
MARK_MIN_LIGHT = 0.07
#: Half-width of the grey zone around that threshold: readings there are flagged.
GREY = 0.05
#: A mark whose peak darkness is under this fraction of the sheet's typical
#: mark peak is ``faint``.
FAINT_RELATIVE = 0.5
#: Residue this far above the local blank level (and under the grey zone) is ``erasure``.
ERASURE_MIN = 0.05
#: An unfilled bubble whose outline shows in fewer than this fraction of
#: directions is not where the model puts it.
RING_MIN = 0.45
#: A drawn circle: dark in at least this share of the free directions around.
CIRCLE_MIN = 0.7
#: In a group with nothing else marked, a bubble whose ``circle`` stands this
#: far above its group's (the median) is circled too: a hand's ring is often
#: open or off-centre. (Print beside a grid's edge lifts a whole group's
#: ``circle``: on the real scans an unmarked bubble stands out at most 0.14.)
CIRCLE_PARTIAL = 0.3
#: A bubble with this share of its disc darker than half black or more is
#: filled: never taken for a blank one, whatever the other bubbles are like
#: (a letter printed in a blank bubble darkens a third of it at most, on a
#: dark scan; a firm fill nearly all of it, a light one about half).
SOLID = 0.6
#: Before the letters printed in bubbles are taken out, a bubble this far above
#: the sheet's median is a clear mark (sets how far the unmarked ones reach).
LETTER_CLEAR_MARK = 0.3


@dataclass
class Measures:
    """Per-bubble measurements, in ``layout.bubbles`` order (all (N,) arrays).

    ``mean``: mean darkness of the disc; ``dark``: share of the disc darker
    than 0.5; ``peak``: 90th percentile darkness of the disc (how dark the mark
    itself is); ``score``: the combination decisions use; ``ring``: share of
    directions where the printed outline shows (0..1); ``circle``: share of the
    free directions (not towards a neighbour) dark just outside the outline;
    ``paper``: local paper grey level; ``outline``: how dark the printed
    outline is (median over directions), over the typical outline of this
    sheet's unfilled bubbles (~1; an eraser leaves it fainter);
    ``circle_apart``: ``circle`` counting only directions darker than
    bubbles placed alike show them (print beside a row's end bubble is
    beside every row's); None where the measure has no such bubbles to
    compare with (then ``circle``).
    """

    mean: np.ndarray
    dark: np.ndarray
    peak: np.ndarray
    score: np.ndarray
    ring: np.ndarray
    circle: np.ndarray
    paper: np.ndarray
    ink_ratio: float  # printed black / paper on this sheet (0 black .. 1 no contrast)
    outline: np.ndarray | None = None  # how dark the printed outline is, over the sheet's typical outline
    low: np.ndarray | None = None  # where the score is the mean and this low percentile of the disc (``score_of``)
    circle_apart: np.ndarray | None = None
    #: How much darker than its blank level a blank bubble may be, its
    #: printed letter's own level not being known (``without_letters``).
    letter_margin: np.ndarray | None = None


@per_object
def neighbour_pairs(lay: PageLayout) -> np.ndarray:
    """(P, 2) indices (``layout.bubbles`` order) of each bubble and the next
    one of its group, once per layout."""
    pairs, i = [], 0
    for g in lay.groups:
        pairs += [(i + j, i + j + 1) for j in range(len(g.bubbles) - 1)]
        i += len(g.bubbles)
    return np.array(pairs, np.int64).reshape(-1, 2)


def without_letters(m: Measures, keys: np.ndarray) -> Measures:
    """``m`` with the ink of a letter printed inside the bubbles taken out.

    ``keys``: (N,) the value each bubble prints (bubbles with equal keys print
    the same letter or digit). The blank level of each value comes from this
    sheet's bubbles that are clearly not marked (``letter_levels``): the disc's
    mean darkness is brought to the sheet's blank level, and the share of dark
    pixels a blank bubble of that value already shows is taken off. On a sheet
    without letters both are about zero.
    """
    if len(m.score) == 0:
        return m
    # Clearly not marked: under a share of this sheet's typical clear mark
    # (the letters' spread, ~0.1, stays well under it).
    e0 = m.score - float(median(m.score))
    clear = e0[e0 >= LETTER_CLEAR_MARK]
    cut = float(np.clip(0.33 * median(clear), 0.18, 0.3)) if len(clear) else 0.3
    # (A solid fill is no blank bubble, however many bubbles are filled: on
    # a form of a few yes/no boxes, all of them may be.)
    blankish = (e0 < cut) & (m.dark < SOLID)
    if blankish.sum() < 5:
        return m
    # A value whose blank level this sheet does not show (a letter printed
    # once, or marked in most of its bubbles) may be as dark as the darkest
    # blank letter: it is set against that one, not against the typical one.
    # A value lightly marked in many groups (ticks, half fills of one letter)
    # takes the level of its lighter bubbles, not of its marks.
    mean_blank = blank_levels(m.mean, keys, blankish, unknown_darkest=True, split=True)
    mean = m.mean - (mean_blank - float(median(m.mean[blankish])))
    dark = np.clip(m.dark - blank_levels(m.dark, keys, blankish, unknown_darkest=True, split=True), 0.0, 1.0)
    low = m.low
    if low is not None:
        low = low - (blank_levels(low, keys, blankish, unknown_darkest=True, split=True) - float(median(low[blankish])))
    return replace(m, mean=mean, dark=dark, low=low, score=score_of(mean, dark, low),
                   letter_margin=unknown_margin(m.score, keys, blankish))


def score_of(mean: np.ndarray, dark: np.ndarray, low: np.ndarray | None = None) -> np.ndarray:
    """The score decisions use: max(mean, mean of the mean and the dark
    share), which a tick's few dark pixels raise; or, where the measure gives
    the disc's low percentile (OMRChecker sheets, whose placement may leave
    a neighbour's outline or fill in part of the disc), the mean of the mean
    and that: part of a disc darkened raises the mean, not the low
    percentile; a fill raises both (a tick is then told by its dark pixels,
    ``strokes.py``)."""
    if low is not None:
        return 0.5 * (mean + low)
    return np.maximum(mean, 0.5 * (mean + dark))


@lru_cache(maxsize=64)
def _neighbour_weights(key: bytes, n: int) -> np.ndarray:
    """(N, N) Gaussian weights (sigma 12 mm) between bubbles, none to itself."""
    page = np.frombuffer(key, np.float64).reshape(n, 2).astype(np.float32)
    # dx^2 + dy^2 as two (N, N) planes: the same float32 sums as squaring an
    # (N, N, 2) difference and reducing its last axis, four times faster (a
    # process reading 1,700 bubbles paid ~80 ms for it on its first sheet).
    dx = page[:, 0, None] - page[None, :, 0]
    dy = page[:, 1, None] - page[None, :, 1]
    d2 = dx * dx + dy * dy
    w = np.exp(-d2 / (2 * 12.0 ** 2))
    np.fill_diagonal(w, 0)
    w[w < 1e-3] = 0
    return w


@dataclass
class SheetLevels:
    """What this sheet's bubbles look like.

    ``base``: (N,) local blank level per bubble; ``excess``: score - base;
    ``noise``: spread of unmarked bubbles' excess; ``threshold``: excess that
    counts as a mark; ``mark_peak``: typical peak darkness of this sheet's clear
    marks (0 if none); ``mark_excess``: their typical excess (0 if none);
    ``peak_blind``: the unmarked bubbles' own peak already reaches the faint
    level (letters printed in them, a two-level scan), so the peak cannot tell
    a faint mark and the excess must (without clear marks: the blanks' peak
    reaches half of printed black).
    """

    base: np.ndarray
    excess: np.ndarray
    noise: float
    threshold: float
    mark_peak: float
    marks: int
    mark_excess: float = 0.0
    peak_blind: bool = False
    lift: np.ndarray | None = None  # (N,) how far the bubble's group as a whole lies over the local level


def sheet_levels(m: Measures, page_mm: np.ndarray, lay: PageLayout | None = None) -> SheetLevels:
    """Local blank levels and noise from the sheet's own bubbles; the
    threshold. ``page_mm``: (N, 2) where each bubble is printed, mm;
    ``lay``: its groups, each of whose blank level is at least its lightest
    bubble's (``group_lift``)."""
    s = m.score
    n = len(s)
    if n == 0:
        return SheetLevels(np.zeros(0), np.zeros(0), 0.0, MARK_MIN, 0.0, 0)
    # Unmarked-looking bubbles set the blank level: clearly below the marks.
    # The lower quarter is blank even where most questions take several marks.
    g = float(percentile(s, 25))
    low = (s < g + 0.1) & (m.dark < 0.05)
    if low.sum() < 5:
        # Few bubbles (a form of a few boxes), or most of them marked; never
        # a solid fill: where every bubble is filled, the blank level is the
        # paper's (0).
        low = (s <= percentile(s, 40)) & (m.dark < SOLID)
    w = _neighbour_weights(np.ascontiguousarray(page_mm, np.float64).tobytes(), n)
    # (einsum, not BLAS: a BLAS call this size wakes its worker threads,
    # which cost more than the sum itself on a busy machine.)
    wl = np.einsum("ij,j->i", w, low.astype(np.float32))
    base_local = np.einsum("ij,j->i", w, (s * low).astype(np.float32)) / np.maximum(wl, 1e-6)
    g_low = float(median(s[low])) if low.any() else 0.0
    # Few unmarked neighbours (a corner, a crowded grid): lean on the sheet's median.
    k = np.clip(wl / 3.0, 0.0, 1.0)
    base = k * base_local + (1 - k) * g_low
    ex = s - base
    # A tint, a band or print under a whole group, or outlines a measure
    # took in, lifts every bubble of the group alike: its blank level is at
    # least its lightest bubble's (marks stand out of their group).
    lift = group_lift(ex, lay) if lay is not None else np.zeros(n)
    base = base + lift
    ex = s - base
    e_low = ex[low]
    noise = float(1.4826 * median(np.abs(e_low - median(e_low)))) if len(e_low) else 0.0
    noise = max(noise, 0.004)
    threshold = max(MARK_MIN, 6.0 * noise)
    # A sheet marked lightly throughout (a soft pencil, a light hand) is read
    # against itself: when the bubbles clearly above the noise are mostly
    # light, the threshold comes down to about half their typical excess,
    # never under 4 noise widths.
    above = ex[ex >= max(0.06, 4.0 * noise)]
    if len(above) >= 8:
        typical = float(median(above))
        threshold = min(threshold, max(MARK_MIN_LIGHT, 4.0 * noise, 0.55 * typical))
    clear = ex >= threshold + GREY
    mark_peak = float(median(m.peak[clear])) if clear.sum() >= 3 else 0.0
    mark_excess = float(median(ex[clear])) if clear.sum() >= 3 else 0.0
    # Without clear marks to set it against, the blanks' peak is set against
    # printed black, which a firm mark reaches: a sheet marked so lightly
    # throughout that no mark stands clear is peak-blind all the same when its
    # blank bubbles already hold dark pixels (a two-level scan, where what is
    # left of a light mark is a few black pixels like the letter's).
    blank_peak = float(median(m.peak[low])) if low.any() else 0.0
    peak_blind = blank_peak >= FAINT_RELATIVE * (mark_peak if mark_peak > 0 else 1.0)
    return SheetLevels(base, ex, noise, threshold, mark_peak, int((ex >= threshold).sum()), mark_excess, peak_blind,
                       lift)


def group_lift(ex: np.ndarray, lay: PageLayout) -> np.ndarray:
    """(N,) per bubble, its group's lightest excess where that is over 0
    (the whole group lies over the local blank level), else 0; none for a
    group that takes several answers (every bubble of it may be marked)."""
    sizes = np.array([len(g.bubbles) for g in lay.groups])
    if len(sizes) == 0:
        return np.zeros(len(ex))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    lowest = np.maximum(np.minimum.reduceat(ex, starts), 0.0)
    single = np.array([not g.multiple_allowed for g in lay.groups])
    return np.repeat(np.where(single & (sizes > 1), lowest, 0.0), sizes)


@dataclass
class GroupReading:
    """One group (question, digit column, choice) decided."""

    key: str
    field: str
    kind: str
    position: int
    values: tuple[str, ...]
    marked: tuple[str, ...]
    flags: list[str] = field(default_factory=list)
    confidence: float = 1.0


#: An eraser rubs the printed outline too: a mark of an even shade whose
#: outline is under RUBBED_OUTLINE of the sheet's typical one, on a sheet
#: whose marked bubbles keep theirs (their 5th percentile at KEPT_OUTLINE or
#: more, at least OUTLINE_MARKS of them), may be what is left of an erased
#: answer.
RUBBED_OUTLINE = 0.85
KEPT_OUTLINE = 0.9
OUTLINE_MARKS = 8


def rubbed_outline(m: Measures, mk: np.ndarray, even: np.ndarray) -> np.ndarray:
    """(N,) bool: marks of an even shade whose printed outline is rubbed (see
    ``RUBBED_OUTLINE``); none on a sheet whose marks do not keep their
    outlines clearly (blur, a rough capture)."""
    if m.outline is None or mk.sum() < OUTLINE_MARKS:
        return np.zeros(len(mk), bool)
    if float(percentile(m.outline[mk], 5)) < KEPT_OUTLINE:
        return np.zeros(len(mk), bool)
    return mk & even & (m.outline < RUBBED_OUTLINE)


#: A dash drawn across two bubbles: the paper between them at least this
#: dark, the weaker bubble under this share of the stronger one's excess, and
#: its far side (half a radius past its centre) lighter than this.
RUN_ON_GAP = 0.4
RUN_ON_SHARE = 0.7
RUN_ON_FAR = 0.25


def run_on(mk: np.ndarray, ex: np.ndarray, pairs: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """(N,) bool: marked bubbles that look like the run-on of a stronger mark
    beside them in their group (a dash drawn through one bubble into the
    next), rather than a second answer: the ink runs on across the paper
    between them and stops short of the weaker bubble's far side. Two marks
    of like strength, with paper between them, or filling the weaker bubble
    to its far side (a pencil fill overshooting into the gap), stay two.
    ``gaps``: ``gap_darkness``."""
    out = np.zeros(len(mk), bool)
    a, b = pairs[:, 0], pairs[:, 1]
    joined = mk[a] & mk[b] & (gaps[:, 0] >= RUN_ON_GAP)
    out[a[joined & (ex[a] < RUN_ON_SHARE * ex[b]) & (gaps[:, 2] < RUN_ON_FAR)]] = True
    out[b[joined & (ex[b] < RUN_ON_SHARE * ex[a]) & (gaps[:, 1] < RUN_ON_FAR)]] = True
    return out


def is_two_level(grey: np.ndarray) -> bool:
    """Whether the image is a scanner's black & white mode (two grey levels),
    where a light mark keeps only its darkest specks: in a sparse sample its
    darkest values (1st percentile) are pure black and its paper (median) pure
    white, and few pixels lie in the middle half of the way between them (the
    edges of the print, once a reduced decode or JPEG has averaged them). A
    grey scan or photo keeps its print above black or its paper below white
    (scanner and camera noise, tint), and its shading in between."""
    sample = np.ascontiguousarray(grey[::8, ::8]).ravel()
    if sample.size == 0:
        return False
    cdf = np.cumsum(np.bincount(sample, minlength=256))
    lo = int(np.searchsorted(cdf, 0.01 * sample.size))
    hi = int(np.searchsorted(cdf, 0.5 * sample.size))
    if lo > TWO_LEVEL_BLACK or hi < 255 - TWO_LEVEL_BLACK:
        return False
    a, b = lo + (hi - lo) // 4 + 1, hi - (hi - lo) // 4
    return int(cdf[b - 1] - cdf[a - 1]) <= TWO_LEVEL_MIDDLE * sample.size


#: A two-level image: its black and white within this of 0 and 255...
TWO_LEVEL_BLACK = 8
#: ...and at most this share of its pixels between them.
TWO_LEVEL_MIDDLE = 0.06


def group_level(ex: np.ndarray, starts: np.ndarray, sizes: np.ndarray,
                marked: np.ndarray | None = None) -> np.ndarray:
    """(N,) per bubble, how far its group as a whole lies over the blank
    level (never under 0): the median excess of the group's bubbles (only
    its unmarked ones when ``marked`` is given) where there are at least
    three, else its lowest excess (the median of fewer would be half a mark)."""
    gid = np.repeat(np.arange(len(sizes)), sizes)
    free = np.ones(len(ex), bool) if marked is None else ~marked
    count = np.bincount(gid[free], minlength=len(sizes))
    med = medians_by(ex[free], gid[free], len(sizes))
    level = np.where(count >= 3, med, np.minimum.reduceat(ex, starts))
    return np.repeat(np.maximum(level, 0.0), sizes)


#: A mark whose disc's 30th percentile darkness (over its letter's) stays
#: under this leaves much of its bubble paper: faint, where the measure gives it.
PARTIAL_LOW = 0.15
#: A speck: its share of dark pixels at least this share of its excess.
SPECK_DARK = 0.7
#: In a group read blank, a bubble over this share of the threshold, and as
#: far above the group's next one, is doubt; STANDS_OUT_MIN (or
#: STANDS_OUT_SIGMAS noise widths on a noisier sheet) is enough, and needed.
STANDS_OUT = 0.35
STANDS_OUT_MIN = 0.05
STANDS_OUT_SIGMAS = 6.0
#: A sheet without any clear mark where this many groups hold a bubble
#: standing out: every group read blank on it is doubt.
LIGHT_SHEET_GROUPS = 2


def standing_out(ex: np.ndarray, peak: np.ndarray, starts: np.ndarray, sizes: np.ndarray, by: float,
                 noise: float) -> np.ndarray:
    """(G,) bool: groups whose darkest bubble reaches ``by`` over its blank
    level and ``by`` over the group's next darkest; or, by less (from
    ``INKED_SIGMAS`` noise widths), whose darkest pixels stand ``INKED_PEAK``
    over every other bubble's of the group: ink left in one bubble (what a
    two-level scan keeps of a light mark), not the spread of print."""
    gid = np.repeat(np.arange(len(sizes)), sizes)
    order = np.lexsort((ex, gid))
    ordered = ex[order]
    ends = starts + sizes - 1
    top = ordered[ends]
    second = np.where(sizes > 1, ordered[np.maximum(ends - 1, starts)], -np.inf)
    # The darkest pixels of the others: the group's, with its top bubble left out.
    others = peak.copy()
    others[order[ends]] = -np.inf
    others_peak = np.maximum.reduceat(others, starts)
    inked = (top - second >= INKED_SIGMAS * noise) & (peak[order[ends]] - others_peak >= INKED_PEAK)
    return (sizes > 1) & (((top >= by) & (top - second >= by)) | inked)


#: A bubble standing out of its group by this many noise widths, whose
#: darkest pixels (90th percentile) stand this far over every other's.
INKED_SIGMAS = 4.0
INKED_PEAK = 0.05


def light_marks_may_be_lost(lv: SheetLevels) -> bool:
    """Whether this sheet's marks are light throughout on bubbles that hold
    dark pixels blank (the case where ``is_two_level`` matters to the decision)."""
    return lv.peak_blind and lv.threshold < MARK_MIN


def decide_groups(lay: PageLayout, m: Measures, lv: SheetLevels,
                  gaps: tuple[np.ndarray, np.ndarray] | None = None,
                  two_level: bool = False) -> tuple[list[GroupReading], np.ndarray]:
    """Decide every group of ``lay``; returns the readings and the per-bubble
    marked booleans (``layout.bubbles`` order). ``gaps``: (``neighbour_pairs``,
    their ``gap_darkness``), for a dash drawn across two bubbles; ``two_level``:
    the image is a black & white scan (``is_two_level``), which loses light marks.
    See the module docstring."""
    t = lv.threshold
    g = max(0.03, min(max(GREY, 2.5 * lv.noise), 0.4 * t))
    lo, hi = t - g, t + g
    ex = lv.excess
    if len(ex) == 0:
        return [], np.zeros(0, bool)
    sizes = np.array([len(gr.bubbles) for gr in lay.groups])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # A stroke stands out of its group: print or a shadow over a whole group
    # (a letter's own strokes in a dark scan) lifts its other bubbles too.
    level = group_level(ex, starts, sizes)
    stroke = strokes(m.dark - group_level(m.dark, starts, sizes), m.peak, ex - level, lv.noise)
    # A drawn circle stands out of its group: print around a group's bubbles
    # (a table's frame beside a column) lifts every one of them, and most
    # at a corner bubble. (Over the group's lower quartile: a student may
    # circle several; a group of two has no level to stand out of.)
    gid = np.repeat(np.arange(len(sizes)), sizes)
    circle_level = np.where(sizes >= 3, lower_quartiles_by(m.circle, gid, len(sizes)), 0.0)
    circle_over = m.circle - np.repeat(circle_level, sizes)
    circled = (m.circle >= CIRCLE_MIN) & (ex < lo) & (circle_over >= CIRCLE_PARTIAL)
    mk = (ex >= t) | stroke | circled
    # A hand's ring less closed than that (round two thirds of the free
    # directions), standing out of a group with nothing else marked: a
    # person reads it as the answer, circled.
    alone = ~np.repeat(np.logical_or.reduceat(mk, starts), sizes)
    partial = alone & (ex < lo) & (m.circle - group_level(m.circle, starts, sizes) >= CIRCLE_PARTIAL)
    if m.circle_apart is not None:
        partial &= m.circle_apart - group_level(m.circle_apart, starts, sizes) >= CIRCLE_PARTIAL
    circled |= partial
    mk |= partial
    # Anything clearly above the noise that is not read as a mark is flagged.
    erase_at = max(ERASURE_MIN, 3.0 * lv.noise)
    faint_at = FAINT_RELATIVE * lv.mark_peak
    # Beside a clear mark in the same group, a light even shade just over the
    # threshold is what an eraser leaves, not a second answer (still flagged).
    group_max = np.repeat(np.maximum.reduceat(ex, starts), sizes)
    # So is an even shade (no dark pixels) beside a pen or pencil stroke mark.
    stroke_mark = stroke & (m.dark >= 2 * STROKE_DARK)
    group_stroke = np.repeat(np.logical_or.reduceat(stroke_mark, starts), sizes)
    even = m.dark < 0.05
    # A dash drawn through one bubble into the next reads as the one it
    # crosses; flagged, for a light second mark under the dash looks alike.
    ran_on = run_on(mk, ex, *gaps) if gaps is not None and len(gaps[0]) else np.zeros(len(mk), bool)
    mk &= ~ran_on
    # (A stroke too: what is left of a scribbled-out answer, or a neighbour's
    # fill a placement left in part of the bubble.)
    rubbed = mk & ~circled & (ex < t + 2 * g) & ((ex < 0.35 * group_max) | (~stroke & group_stroke & even))
    mk &= ~rubbed
    # Per-bubble conditions, then one reduction per group for each.
    n_marked = np.add.reduceat(mk.astype(np.int32), starts)
    # Beside a clear mark in its group, a few dark pixels with too little ink
    # for a stroke (the pen's tip set down, a speck: its ink is all in pixels
    # darker than half black, where an eraser's residue is many light ones)
    # are no second answer and no residue of one.
    clear = np.repeat(np.logical_or.reduceat(mk & (ex >= hi), starts), sizes)
    speck = clear & ~mk & (ex < t) & (m.dark > 0) & (m.dark >= SPECK_DARK * ex) & (ex - level < STROKE_MIN)
    grey_zone = ((ex >= lo) & (ex < hi) & ~stroke & ~speck) | ran_on
    ambiguous = np.logical_or.reduceat(grey_zone, starts)
    # A group read blank with one bubble standing out of the others (a tick
    # or a half fill a rough capture blurred, a light mark a two-level scan
    # nearly dropped, a light mark on a letter printed once): in doubt, though
    # under the grey zone; on a sheet without any clear mark where several
    # groups hold one, every group read blank is (the capture may have
    # dropped other light marks whole).
    by = min(max(STANDS_OUT * t, STANDS_OUT_MIN), max(STANDS_OUT_MIN, STANDS_OUT_SIGMAS * lv.noise))
    stands = standing_out(ex, m.peak, starts, sizes, by, lv.noise)
    stands &= n_marked == 0
    ambiguous |= stands
    # A group lifted as a whole as far as the grey zone: all of it marked,
    # or a tint as dark as a light mark; read for what stands out, in doubt.
    if lv.lift is not None:
        ambiguous |= np.logical_or.reduceat(lv.lift >= lo, starts)
    if int(stands.sum()) >= LIGHT_SHEET_GROUPS and not bool((ex >= LETTER_CLEAR_MARK).any()):
        ambiguous |= n_marked == 0
    # A few dark pixels alone (a tick, but also a hair, dust, a stray dot) are
    # read as a mark only with a flag unless the bubble is also dark overall.
    weak = m.peak < faint_at
    if lv.peak_blind:
        # Every bubble holds dark pixels here: a mark is faint by how much
        # darker than its blank level it is, against this sheet's clear marks.
        weak = weak | (ex < FAINT_RELATIVE * lv.mark_excess)
    if m.low is not None:
        # Where the measure gives the disc's lightest part (``score_of``): a
        # mark that leaves much of its bubble paper (a tick, a half fill) is
        # read, but in doubt, whatever the sheet's other marks are like.
        weak = weak | (m.low < PARTIAL_LOW)
    faint = np.logical_or.reduceat((mk & ~circled & weak) | (stroke & (ex < t)), starts)
    if light_marks_may_be_lost(lv):
        # Light marks on a sheet whose blank bubbles hold dark pixels (a
        # two-level scan keeps only a few pixels of a light mark): a group
        # read blank may hold a mark too light to tell from its letter.
        faint |= n_marked == 0
        # A two-level scan loses light marks beside the ones it keeps, where
        # the marks it kept are specks (fewer dark pixels than a pen stroke
        # leaves; ticks and crosses keep theirs): where no mark stands clear
        # at all, none read can be told from what a lost one beside it would
        # leave, so every group is in doubt; and beside a mark, a second
        # light one shows as no more than a few black pixels over what its
        # letter holds (an unmarked bubble above the noise with dark pixels
        # of its own).
        if two_level and (not mk.any() or float(median(m.dark[mk])) < 2 * STROKE_DARK):
            faint |= lv.mark_peak == 0
            faint |= np.logical_or.reduceat(~mk & (ex >= 1.5 * lv.noise) & (m.dark > 0), starts)
    # Residue stands out of its group: a tint, a shadow or a band printed
    # under a whole group lifts all its bubbles alike (its floor: the median
    # of its unmarked bubbles, or its lightest bubble in a group of few). A
    # floor within two noise widths of the blank level is noise, not a lift:
    # taking it off would hide residue as light as an erased scribble.
    lifted = np.maximum(group_level(ex, starts, sizes, marked=mk) - 2.0 * lv.noise, 0.0)
    # (A letter printed once may be darker blank than the level it is set against.)
    if m.letter_margin is not None:
        erase_at = erase_at + m.letter_margin
    residue = ((ex - lifted >= erase_at) & (ex < lo) & ~stroke & ~circled & ~speck)
    residue |= rubbed | rubbed_outline(m, mk, even)
    erasure = np.logical_or.reduceat(residue, starts)
    circ = np.logical_or.reduceat(circled, starts)
    # The outline must show around bubbles that are not filled; where it does
    # not, the page is not where the model puts it at that spot.
    misaligned = np.logical_or.reduceat((m.score < 0.3) & (m.ring < RING_MIN) & ~circled, starts)
    # Confidence: distance of the closest bubble to the decision, in grey-zone widths.
    dist = np.abs(ex - t)
    dist = np.where(stroke | circled, np.maximum(dist, 1.5 * g), dist)
    conf = np.clip(np.minimum.reduceat(dist, starts) / (3 * g), 0.0, 1.0)
    mk_list = mk.tolist()
    starts_l, conf_l, n_marked_l = starts.tolist(), conf.tolist(), n_marked.tolist()
    ambiguous, faint, erasure = ambiguous.tolist(), faint.tolist(), erasure.tolist()
    # Each doubt's flag, in the order flags are listed, and the confidence it leaves at most.
    doubts = (("ambiguous", 0.5, ambiguous), ("faint", 0.7, faint), ("erasure", 0.7, erasure),
              ("circled", 0.7, circ.tolist()), ("misaligned", 0.5, misaligned.tolist()))
    out: list[GroupReading] = []
    for gi, gr in enumerate(lay.groups):
        s0 = starts_l[gi]
        marked = tuple(b.value for j, b in enumerate(gr.bubbles) if mk_list[s0 + j])
        flags: list[str] = []
        c = conf_l[gi]
        if n_marked_l[gi] > 1 and not gr.multiple_allowed:
            flags.append("multiple")
            c = min(c, 0.6)
        if n_marked_l[gi] == 0:
            flags.append("blank")
        for flag, cap, raised in doubts:
            if raised[gi]:
                flags.append(flag)
                c = min(c, cap)
        out.append(GroupReading(gr.key, gr.field, gr.kind, gr.position, gr.values, marked, flags, round(c, 3)))
    return out, mk


def field_values(groups: list[GroupReading]) -> tuple[dict[str, str], dict[str, list[str]], dict[str, float]]:
    """Combine group readings into field values, flags and confidences.

    Question/choice: the marked options in printed order ("B", "BD", "").
    Digit grid: one character per column left to right, leading and trailing
    blank columns dropped; a blank column between digits reads ``?`` and flags
    ``gap`` (so does a leading blank), a column with several marks reads ``?``
    and flags ``multiple``.
    """
    answers: dict[str, str] = {}
    flags: dict[str, list[str]] = {}
    conf: dict[str, float] = {}
    digits: dict[str, list[GroupReading]] = {}
    for g in groups:
        if g.kind == "digit":
            digits.setdefault(g.field, []).append(g)
            continue
        answers[g.field] = "".join(g.marked)
        flags[g.field] = list(g.flags)
        conf[g.field] = g.confidence
    for name, cols in digits.items():
        cols = sorted(cols, key=lambda c: c.position)
        chars = []
        f: list[str] = []
        for c in cols:
            if len(c.marked) == 1:
                chars.append(c.marked[0])
            elif len(c.marked) > 1:
                chars.append("?")
            else:
                chars.append("")
            for fl in c.flags:
                if fl != "blank" and fl not in f:
                    f.append(fl)
        filled = [k for k, ch in enumerate(chars) if ch]
        if not filled:
            value = ""
            f.insert(0, "blank")
        else:
            first, last = filled[0], filled[-1]
            if first > 0:
                f.append("gap")
            inner = chars[first:last + 1]
            if any(ch == "" for ch in inner):
                if "gap" not in f:
                    f.append("gap")
            value = "".join(ch or "?" for ch in inner)
        answers[name] = value
        flags[name] = f
        c_min = min(c.confidence for c in cols)
        conf[name] = round(min(c_min, 0.5) if "gap" in f else c_min, 3)
    return answers, flags, conf


def decide_sheet(lay: PageLayout, m: Measures, keys: np.ndarray, page_mm: np.ndarray,
                 gaps: tuple[np.ndarray, np.ndarray] | None, grey: np.ndarray
                 ) -> tuple[list[GroupReading], np.ndarray, SheetLevels]:
    """The decision stage both readers call on their measures: the groups of
    ``lay`` decided and flagged, the per-bubble marked booleans, and the
    sheet's levels. ``keys``: (N,) the value each bubble prints (equal for
    the same letter or digit); ``page_mm``: (N, 2) where each is printed;
    ``gaps``: (``neighbour_pairs``, their gap darkness), for a dash drawn
    across two bubbles; ``grey``: the image (a black & white scan loses
    light marks: ``is_two_level``)."""
    m = without_letters(m, keys)
    levels = sheet_levels(m, page_mm, lay)
    # Only a sheet of light marks needs to know whether the scan kept them.
    two_level = light_marks_may_be_lost(levels) and is_two_level(grey)
    groups, marked = decide_groups(lay, m, levels, gaps, two_level)
    return groups, marked, levels
