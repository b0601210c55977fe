"""Measuring bubbles and deciding what was marked.

Measurement (``measure``) samples each bubble straight from the source image
through its local mapping (no page warp): a disc inside the printed outline,
the outline itself, and a ring of paper just outside it. Every sample is turned
into *darkness*: 0 = this sheet's paper at that spot, 1 = this sheet's printed
black (the registration marks), so light, shadows, coloured paper and scanner
gamma are divided out on the sheet itself.

Decision (``decide``) then works per sheet and per group:

* ``score`` of a bubble = mean of (mean darkness of the disc) and (fraction of
  the disc darker than 0.5): a solid fill scores ~0.8-1, a pen tick or cross
  ~0.25-0.45 (few but dark pixels), erasure residue ~0.05-0.15 (many light
  pixels), a blank bubble ~0.
* The blank level and noise of *this* sheet are estimated from all its bubbles
  (most are blank); the mark threshold is ``max(MARK_MIN, blank + 6 noise)``
  so a noisy photo raises it but an all-blank sheet never reads as marked.
* Bubbles within ``GREY`` of the threshold are ``ambiguous``; marks much
  lighter than the sheet's other marks are ``faint``; darker-than-blank
  residue below the threshold is ``erasure``; outlines not where the template
  puts them are ``misaligned``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .align import BubbleFrame, PageFit, _DIRS, sample_offsets
from .layout import PageLayout

#: Lowest score that can count as a mark, whatever the sheet (score units).
MARK_MIN = 0.17
#: Half-width of the grey zone around the threshold: readings there are flagged.
GREY = 0.06
#: A mark whose peak darkness is under this fraction of the sheet's typical
#: mark peak is ``faint``.
FAINT_RELATIVE = 0.55
#: ...or under this absolute peak darkness.
FAINT_ABSOLUTE = 0.3
#: Residue this far above the blank level (and under the threshold) is ``erasure``.
ERASURE_MIN = 0.07
#: An unfilled bubble whose outline shows in fewer than this fraction of
#: directions is not where the template puts it.
RING_MIN = 0.45

# Disc sample points, as fractions of the radius: a square grid cut to a disc
# of 0.72 r (keeps clear of the printed outline even when off by ~0.2 r).
_g = np.linspace(-0.72, 0.72, 11)
_gx, _gy = np.meshgrid(_g, _g)
_inside = _gx ** 2 + _gy ** 2 <= 0.72 ** 2
DISC = np.stack([_gx[_inside], _gy[_inside]], -1)  # (~95, 2)
RING_RADII = np.array([0.8, 0.9, 1.0, 1.1, 1.2])
PAPER_RADII = np.array([1.3, 1.42])


@dataclass
class Measures:
    """Per-bubble measurements, in ``layout.bubbles`` order (all (N,) arrays).

    ``mean``: mean darkness of the disc; ``dark``: fraction of the disc darker
    than 0.5; ``peak``: 90th percentile darkness of the disc (how dark the mark
    itself is); ``score``: the combination decisions use; ``ring``: fraction of
    directions where the printed outline shows (0..1); ``paper``: local paper
    grey level.
    """

    mean: np.ndarray
    dark: np.ndarray
    peak: np.ndarray
    score: np.ndarray
    ring: np.ndarray
    paper: np.ndarray
    ink_ratio: float  # printed black / paper on this sheet (0 black .. 1 no contrast)


def measure(grey: np.ndarray, frame: BubbleFrame, fit: PageFit) -> Measures:
    """Measure every bubble of ``frame`` in the grey image. See ``Measures``."""
    r = frame.r_mm
    n = len(frame.centres)
    pts_disc = DISC * r
    ring_off = (_DIRS[:, None, :] * (RING_RADII * r)[None, :, None]).reshape(-1, 2)
    paper_off = (_DIRS[:, None, :] * (PAPER_RADII * r)[None, :, None]).reshape(-1, 2)
    offs = np.concatenate([pts_disc, ring_off, paper_off])
    vals = sample_offsets(grey, frame.centres, frame.J, offs) if n else np.zeros((0, len(offs)), np.float32)
    nd, nr = len(pts_disc), len(ring_off)
    disc = vals[:, :nd]
    ring = vals[:, nd:nd + nr].reshape(n, len(_DIRS), len(RING_RADII))
    outside = vals[:, nd + nr:]
    # Paper just outside the outline: the bright part of that ring (neighbouring
    # outlines and stray strokes cover only some of it).
    paper = np.percentile(outside, 80, axis=1).astype(np.float32) if n else np.zeros(0, np.float32)
    # Guard against a fill overflowing all around: never below the coarse paper map's
    # reading by more than a fifth.
    coarse = fit.background.at(frame.centres)
    paper = np.maximum(paper, 0.8 * coarse)
    paper = np.maximum(paper, 1.0)
    ink_ratio = float(np.clip(fit.ink / max(fit.paper, 1.0), 0.0, 0.7))
    span = 1.0 - ink_ratio
    d = (1.0 - disc / paper[:, None]) / span
    mean = d.mean(1)
    dark = (d > 0.5).mean(1)
    peak = np.percentile(d, 90, axis=1) if n else np.zeros(0)
    score = np.maximum(mean, 0.5 * (mean + dark))
    rd = (1.0 - ring.min(2) / paper[:, None]) / span  # darkest point across the outline, per direction
    ring_seen = (rd > 0.18).mean(1)
    return Measures(mean, dark, peak, score, ring_seen, paper, ink_ratio)


@dataclass
class SheetLevels:
    """What this sheet's bubbles look like: blank level, noise, mark threshold."""

    blank: float
    noise: float
    threshold: float
    mark_peak: float  # typical peak darkness of the sheet's clear marks (0 if none)
    marks: int


def sheet_levels(m: Measures) -> SheetLevels:
    """Blank level and noise from the sheet's own bubbles; the threshold above."""
    s = m.score
    if len(s) == 0:
        return SheetLevels(0.0, 0.0, MARK_MIN, 0.0, 0)
    blank = float(np.median(s))
    low = s[s <= np.percentile(s, 70)]
    noise = float(1.4826 * np.median(np.abs(low - np.median(low)))) if len(low) else 0.0
    noise = max(noise, 0.005)
    threshold = max(MARK_MIN, blank + 6 * noise + 0.05)
    clear = m.peak[s >= threshold + GREY]
    mark_peak = float(np.median(clear)) if len(clear) >= 3 else 0.0
    return SheetLevels(blank, noise, threshold, mark_peak, int((s >= threshold).sum()))


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


def decide_groups(lay: PageLayout, m: Measures, lv: SheetLevels) -> tuple[list[GroupReading], np.ndarray]:
    """Decide every group of ``lay``; returns the readings and the per-bubble
    marked booleans (``layout.bubbles`` order)."""
    t = lv.threshold
    lo, hi = t - GREY, t + GREY
    erase_at = lv.blank + max(ERASURE_MIN, 5 * lv.noise)
    faint_at = max(FAINT_ABSOLUTE, FAINT_RELATIVE * lv.mark_peak)
    sc = m.score
    mk = sc >= t
    if len(sc) == 0:
        return [], mk
    sizes = np.array([len(g.bubbles) for g in lay.groups])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Per-bubble conditions, then one reduction per group for each.
    n_marked = np.add.reduceat(mk.astype(np.int32), starts)
    ambiguous = np.logical_or.reduceat((sc >= lo) & (sc < hi), starts)
    faint = np.logical_or.reduceat(mk & (m.peak < faint_at), starts)
    # Residue: clearly darker than blank, spread out (few dark pixels), not a mark.
    erasure = np.logical_or.reduceat((sc >= erase_at) & (sc < lo) & (m.dark < 0.25), starts)
    # The outline must show around bubbles that are not filled; where it does
    # not, the page is not where the model puts it at that spot.
    misaligned = np.logical_or.reduceat((sc < 0.3) & (m.ring < RING_MIN), starts)
    # Confidence: distance of the closest bubble to the decision, in grey-zone widths.
    conf = np.clip(np.minimum.reduceat(np.abs(sc - t), starts) / (3 * GREY), 0.0, 1.0)
    mk_list = mk.tolist()
    out: list[GroupReading] = []
    for gi, g in enumerate(lay.groups):
        s0 = int(starts[gi])
        marked = tuple(b.value for j, b in enumerate(g.bubbles) if mk_list[s0 + j])
        flags: list[str] = []
        c = float(conf[gi])
        if n_marked[gi] > 1 and not g.multiple_allowed:
            flags.append("multiple")
            c = min(c, 0.6)
        if n_marked[gi] == 0:
            flags.append("blank")
        if ambiguous[gi]:
            flags.append("ambiguous")
            c = min(c, 0.5)
        if faint[gi]:
            flags.append("faint")
            c = min(c, 0.7)
        if erasure[gi]:
            flags.append("erasure")
            c = min(c, 0.7)
        if misaligned[gi]:
            flags.append("misaligned")
            c = min(c, 0.5)
        out.append(GroupReading(g.key, g.field, g.kind, g.position, g.values, marked, flags, round(c, 3)))
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
