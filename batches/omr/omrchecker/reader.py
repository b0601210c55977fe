"""Reading a sheet laid out by an OMRChecker template.

There is no QR code and no registration mark of this engine's kind. The page
is located by the template's own pre-processors at a modest processing size
(``locate.py``); the page is then cut out at a resolution fitted to the
bubble size, the template's bubbles are placed on the printed bubbles (the
whole grid, then each block by at most half a pitch) and checked there, and
each bubble's darkness is measured (``grid.py``); the decisions come from this
sheet's own levels, with every doubt flagged, by the decision stage this
engine's own templates go through (``batches/omr/decide.py``). When a
placement does not sit on the printed bubbles, the next one is tried (other
page outlines, the whole image) before the sheet is refused.

Answers follow OMRChecker's conventions: each field is its marked values
concatenated in bubble order, or the template's ``emptyValue``; custom labels
concatenate their fields; keys are the template's output columns.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from ..cache import per_object
from ..decide import decide_sheet, neighbour_pairs
from ..imageio import MAX_PIXELS, ImageInfo, to_grey
from ..layout import BubbleGeom, Group, PageLayout, Rect, Square
from ..reading import SheetReading, read_pages
from ..stats import median
from .digit_order import printed_orders
from .grid import (
    Cutout,
    Geometry,
    Placement,
    cut_out,
    fields_beside_marks,
    fields_of_blocks,
    gap_darkness,
    geometry,
    local_scale,
    marks_outside,
    measure,
    measurement_scale,
    page_mm,
    place,
    transform_points,
)
from .importer import OmrCheckerTemplate
from .locate import WHOLE_IMAGE, Candidate, candidates, processing_image
from .register import register_layout
from .steps import StepError, fit_on_grid

#: A placement whose quality (``grid.Placement.quality``: the share of its
#: bubbles on their printed outlines, less the share of blocks off them)
#: reaches this is taken without trying the others.
GOOD_FIT = 0.75
#: Under this share for the best placement, the sheet is refused as misaligned.
FAIL_FIT = 0.55
#: A fit of the whole bubble layout (``register.register_layout``) replaces
#: the best placement only when it fits as found this much better; another
#: fit placed within ``AMBIGUOUS_FIT`` of it that puts a bubble
#: ``RIVAL_APART`` pitches or more elsewhere (a row or a column off) makes it
#: ambiguous: neither is taken. (How many bubbles a fit puts near an outline
#: does not rival a placement: printed question numbers count as outlines
#: there, and a fit placed at 0.04, a pitch or more off, had one more on a
#: turned ``sample6`` photo.)
BETTER_FIT = 0.05
AMBIGUOUS_FIT = 0.15
RIVAL_APART = 0.6
#: A block whose bubbles sit this far (pitches, on average) from the
#: outlines the layout's fit found nearest them is flagged ``misaligned``:
#: a third of the way to the next row or column, where the block's own fit
#: may take the wrong one. (Nearer, its own fit puts it on its outlines: one
#: homography for a whole-image page turned in a wider frame leaves blocks
#: 0.15-0.3 pitch off, read right.)
REGISTERED_OFF = 0.33
#: At most this many placements are tried.
MAX_TRIES = 10
#: Rough placements the bubble grid is fitted from when none fits as found.
GRID_TRIES = 3
#: Blocks off their outlines are searched for further on a placement whose
#: quality as found is no further than this under the best one's yet.
REPLACE_MARGIN = 0.15
#: Placements closer than this (pitches, at every bubble) to one already
#: tried (or the grid already fitted from) are not tried again.
SAME_START = 0.25
#: The whole grid is searched this far (share of the page's larger side)
#: around where a placement puts it.
SEARCH = 0.03
#: The bubbles are cut out of the processing image when it holds them at
#: this many times the measurement scale.
PLAIN_MARGIN = 1.3
#: Share of the template's bubbles that may fall outside the image before the
#: sheet is refused as cut off (any at all is flagged).
CUT_OFF_LIMIT = 0.02
#: Printed black must be at least this much darker than paper (0..1).
MIN_CONTRAST = 0.35
#: A block with fewer bubbles on their printed outlines than this share (and
#: at least two off) is misaligned; so are all when most blocks show outlines
#: one pitch outside them more often than ``BORDER_FLAG``.
BLOCK_OK = 0.8
BORDER_FLAG = 0.95


@dataclass
class OmrCheckerReading(SheetReading):
    """A ``SheetReading`` of an OMRChecker sheet. ``homography`` maps OMRChecker
    page px (``pageDimensions``) to image px; ``alignment`` says how the page was
    found; ``fields`` holds every field before custom labels join them."""

    alignment: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["format"] = "omrchecker"
        out["alignment"] = self.alignment
        out["fields"] = dict(self.fields)
        out["template_notes"] = list(self.notes)
        return out


@per_object
def layout_of(t: OmrCheckerTemplate) -> PageLayout:
    """The template's bubbles as an engine ``PageLayout`` (page px), one group
    per field: what the reading's ``bubbles`` list is named after."""
    groups = []
    for f in t.fields:
        bubbles = tuple(BubbleGeom(f.label, v, cx, cy, min(f.bubble_w, f.bubble_h) / 2)
                        for v, (cx, cy) in zip(f.values, f.centres(), strict=True))
        groups.append(Group(f.label, f.label, "question", 0, bubbles))
    corners = ((0, 0), (t.page_w, 0), (t.page_w, t.page_h), (0, t.page_h))
    return PageLayout(template=t.name, page=1, dpi=25.4, width=round(t.page_w), height=round(t.page_h),
                      marks=tuple(Square(x, y, 0.0) for x, y in corners),
                      key=Rect(0, 0, 0, 0), qr=Rect(0, 0, 0, 0), groups=tuple(groups))


def prepare(t: OmrCheckerTemplate) -> None:
    """Compute now what reading any sheet with ``t`` derives from the template
    alone (it is kept per template): worker processes forked afterwards share
    it instead of each computing it on its first sheet."""
    geometry(t)
    layout_of(t)


def read_omrchecker_sheet(image: np.ndarray, t: OmrCheckerTemplate, *, source: str = "") -> OmrCheckerReading:
    """Read one decoded image (grey or BGR) of a sheet laid out by ``t``."""
    t_start = time.perf_counter()
    out = OmrCheckerReading(file=source, template=t.name, page=1, notes=list(t.notes))
    grey = to_grey(image)
    h, w = grey.shape
    out.image_size = (w, h)

    def done() -> OmrCheckerReading:
        out.timings_ms["total"] = (time.perf_counter() - t_start) * 1000
        return out

    if min(h, w) < 32:
        out.error = "the image is too small to be a sheet"
        out.flag("unreadable")
        return done()
    geo = geometry(t)
    work, plain, f = processing_image(grey, t)
    if float(work[::4, ::4].std()) < 2.0:
        out.error = "the image is blank"
        out.flag("unreadable")
        return done()
    to_image = np.array([[1 / f, 0, 0.5 / f - 0.5], [0, 1 / f, 0.5 / f - 0.5], [0, 0, 1.0]])
    failures: list[StepError] = []
    best = None  # the placement that reads best (``_rank``)
    best_found = -math.inf  # the best quality of a placement as found
    tries = 0
    most_outside = 0.0  # the largest share of bubbles a placement put outside the image
    tried: list[tuple[float, Candidate, np.ndarray]] = []
    pitch = float(median(geo.block_pitch))
    half_box = float(median(geo.half.min(1)))
    off_template = np.zeros(len(geo.block_pitch), bool)  # blocks flagged as placed off the template

    def placed(H: np.ndarray, replace_above: float) -> tuple[Cutout, Placement]:
        """The grid placed through ``H`` (page px -> image px), its blocks
        searched for further when ``replace_above`` allows (``grid.place``)."""
        nonlocal most_outside
        where = transform_points(H, geo.centres)
        outside = (where[:, 0] < 0) | (where[:, 1] < 0) | (where[:, 0] > w - 1) | (where[:, 1] > h - 1)
        most_outside = max(most_outside, float(outside.mean()))
        scale = measurement_scale(t, H, geo)
        # From the processing image when it holds the bubbles finely enough
        # (much cheaper than from a large photo), else from the image.
        H_plain = np.linalg.inv(to_image) @ H
        if plain is not grey and local_scale(H_plain, t) >= PLAIN_MARGIN * scale:
            cut = cut_out(plain, H_plain, t, scale, geo)
        else:
            cut = cut_out(grey, H, t, scale, geo)
        return cut, place(cut, geo, SEARCH, replace_above)

    def evaluate(cand: Candidate, H: np.ndarray) -> float:
        nonlocal best, best_found
        # Blocks are searched for further only on a placement nearly as good
        # as found as the best yet (the same page bent, not one turned
        # wrong, whose every block is off).
        cut, pl = placed(H, best_found - REPLACE_MARGIN)
        fit = pl.as_found
        best_found = max(best_found, fit)
        tried.append((fit, cand, H))
        rank = _rank(pl)
        if best is None or rank > best[0]:
            best = (rank, cand, H, cut, pl)
        return fit

    for cand in candidates(work, t):
        if isinstance(cand, StepError):
            failures.append(cand)
            continue
        H0 = to_image @ cand.H
        if not np.isfinite(H0).all() or abs(np.linalg.det(H0[:2, :2])) < 1e-9:
            continue
        tries += 1
        # The page may lie any way round in the image: the two namings of its
        # corners that give it the template's proportions, the likelier first.
        for H in _namings(H0, t):
            if any(_same_start(S, H, geo.centres, pitch) for _f, _c, S in tried):
                continue  # placed as an earlier one was: it would be placed the same
            if evaluate(cand, H) >= GOOD_FIT:
                break
        # (Only a placement that fits as found ends the search: one whose
        # blocks had to be moved further reads them flagged.)
        if best_found >= GOOD_FIT or tries >= MAX_TRIES:
            break
    if best is not None and best_found < GOOD_FIT:
        # No page outline or step put the grid within half a pitch of the
        # printed bubbles everywhere (a page merging with a white paper behind
        # it, found a pitch short along a side): the grid is fitted on the
        # printed outlines themselves from the likeliest rough placements.
        starts: list[np.ndarray] = []
        radius = None  # the printed radius, once a fit has found it on this sheet
        for _fit, cand, H in sorted(tried, key=lambda e: -e[0])[:GRID_TRIES]:
            # A rough placement putting every bubble within a quarter pitch of
            # where an earlier start put it would fit the same outlines again
            # (the fit searches 0.45 pitch around each bubble).
            if any(_same_start(S, H, geo.centres, pitch) for S in starts):
                continue
            starts.append(H)
            res = fit_on_grid(grey, H, geo.centres, half_box, pitch, radius)
            if res is None:
                continue
            radius = res[2]
            grid_cand = Candidate(res[0], cand.how + " + bubble grid",
                                  cand.notes + ["placement fitted on the printed bubble outlines"])
            if evaluate(grid_cand, res[0]) >= GOOD_FIT:
                break
    if best is not None and (best[0] < FAIL_FIT or _moved_any(best[4])):
        # The best placement would be refused, or fits only with a block
        # moved further than half a pitch (then every block not squarely on
        # its outlines is flagged): the page is placed a pitch or more off
        # somewhere, as a photo framed otherwise than a whole-image template
        # is. The layout as a whole is fitted on the outlines found around
        # that placement; taken only when one such fit, and no other, puts
        # every block on its outlines where it places them (a layout a row or
        # a column off may sit on printed outlines as well: then neither is
        # taken).
        rank0, cand, H, _cut, pl0 = best
        fits = [_LayoutFit(Hr, off, *placed(Hr, math.inf))
                for Hr, _count, off in register_layout(grey, H, geo.centres, geo.block, half_box, pitch)
                if not any(_same_start(S, Hr, geo.centres, pitch) for _f, _c, S in tried)]
        fit = _unrivalled(fits, pl0, rank0, geo, pitch)
        if fit is not None:
            best = (_rank(fit.pl), Candidate(fit.H, cand.how + " + bubble layout", cand.notes + [
                "placement fitted on the printed bubble layout as a whole"]), fit.H, fit.cut, fit.pl)
            # A block the layout's fit leaves far off its outlines by a
            # steady offset is described otherwise than printed, or the
            # paper is bent there: read where its outlines are, flagged.
            off_template = fit.off > REGISTERED_OFF
            if pl0.as_found >= FAIL_FIT and _most_apart(H, fit.H, geo.centres) >= RIVAL_APART * pitch:
                # The page's own placement would have been read, and the
                # layout's fit puts most bubbles a row or a column from it:
                # one of the two is a pitch off, and nothing here tells which
                # (printed numbers beside a block sit on its grid too).
                # Read with the fit, every field flagged.
                off_template[:] = True
                out.notes.append("the page's placement and the layout's fit are a pitch apart: every field flagged")
    out.timings_ms["align"] = (time.perf_counter() - t_start) * 1000
    if best is None:
        exc = failures[0] if failures else StepError("page not found")
        out.error = exc.reason
        out.flag(exc.flag)
        return done()
    _fit, cand, H, cut, pl = best
    # Refused only when the blocks are not on their outlines even where
    # searched for further (``grid.replace_blocks``).
    fit = pl.quality
    out.alignment = cand.how
    out.notes += cand.notes
    out.homography = H
    out.marks_px = transform_points(H, page_corners(t))
    out.orientation = _orientation(out.marks_px)
    t0 = time.perf_counter()
    centres_img = transform_points(H, cut.to_page(pl.pos))
    outside = (centres_img[:, 0] < 0) | (centres_img[:, 1] < 0) | (centres_img[:, 0] > w - 1) | (centres_img[:, 1] > h - 1)
    if outside.any():
        out.flag("cut_off")
        if outside.mean() > CUT_OFF_LIMIT:
            out.error = f"the sheet is cut off: {int(outside.sum())} of {len(outside)} bubbles lie outside the image"
            return done()
    if fit < FAIL_FIT:
        c = out.marks_px
        margin = 0.01 * max(w, h)
        on_border = int(np.sum((c[:, 0] < margin) | (c[:, 1] < margin) | (c[:, 0] > w - 1 - margin)
                               | (c[:, 1] > h - 1 - margin)))
        # A page taken as the whole image lies along the border by itself,
        # and turned placements of it run off the image: neither says the
        # sheet is cut off.
        whole = cand.how.startswith(WHOLE_IMAGE)
        if not whole and (most_outside > CUT_OFF_LIMIT or on_border >= 2):
            # The page found runs off the image, or along its border: part
            # of the sheet is missing.
            out.error = ("the sheet is cut off: the page found runs off or along the image's border, and no "
                         "placement fits the printed bubbles")
            out.flag("cut_off")
            return done()
        out.error = (f"the bubbles are not where the template puts them ({max(fit, 0.0) * 100:.0f} % of outlines "
                     f"centred; page located by {cand.how})")
        if whole and not t.alignment():
            out.error += (": the template's page is the whole image, and this one is framed or turned "
                          "otherwise; a template that finds the page (CropPage, CropOnMarkers) would place it")
        out.flag("misaligned")
        return done()
    m = measure(cut, geo, pl)
    # The decision stage the engine's own sheets go through.
    lay = layout_of(t)
    pairs = neighbour_pairs(lay)
    groups, marked, levels = decide_sheet(lay, m, geo.value_key, page_mm(geo),
                                          (pairs, gap_darkness(cut, geo, pl, pairs)), grey)
    if 1.0 - m.ink_ratio < MIN_CONTRAST:
        out.flag("low_contrast")
    # Digit grids printed in the other order than the template says (1..9, 0
    # against 0..9), told by the ink of their printed digits: read as
    # printed. Such a block sits a row off the template's grid, which is
    # explained then, not doubt.
    digit_fields = [(int(geo.block[i]), i, f.values) for f, i in zip(t.fields, _first_bubbles(t), strict=True)]
    orders = printed_orders(digit_fields, m.mean, marked)
    relabelled: dict[int, list[int]] = {}
    for k in orders:
        relabelled.setdefault(digit_fields[k][0], []).append(k)
    for b, ks in relabelled.items():
        off_template[b] = False
        out.notes.append(f"{', '.join(t.fields[k].label for k in ks)}: printed {_order_name(orders[ks[0]])}, not "
                         f"{_order_name(t.fields[ks[0]].values)} as the template says; read as printed")
    flags = [[f for f in g.flags if f != "blank"] for g in groups]
    # Marks one pitch outside a block, where the template has no bubble: the
    # block is read a row or a column off (its outlines cannot tell, where
    # the next block's continue its grid), or a printed bubble the template
    # leaves out is filled in.
    beside_marks = fields_beside_marks(geo, marks_outside(cut, geo, pl, m.mean, marked))
    for f in (misaligned_fields(geo, pl) + fields_of_blocks(geo, off_template) + beside_marks
              + doubled_blocks(geo, flags)):
        if "misaligned" not in flags[f]:
            flags[f].append("misaligned")
    confidence = [min(g.confidence, 0.5) if flags[k] else g.confidence for k, g in enumerate(groups)]
    _answers(out, t, marked, flags, confidence, orders)
    out._bubble_data = (_relabelled(lay, orders), np.round(levels.excess, 3), marked, centres_img)
    out.timings_ms["bubbles"] = (time.perf_counter() - t0) * 1000
    return done()


#: A block found on its outlines only further than half a pitch from where
#: a placement put it counts as this much of a block off its outlines when
#: placements are compared: one that puts it there directly reads it unflagged.
MOVED_COST = 0.5


def _rank(pl: Placement) -> float:
    """How well a placement fits, to compare placements: its quality with
    every block where it was finally found on its outlines, less
    ``MOVED_COST`` of the share of blocks that had to be moved there."""
    moved = float(pl.moved.mean()) if pl.moved is not None and len(pl.moved) else 0.0
    return pl.quality - MOVED_COST * moved


def _moved_any(pl: Placement) -> bool:
    return pl.moved is not None and bool(pl.moved.any())


@dataclass
class _LayoutFit:
    """A fit of the whole bubble layout (``register.register_layout``),
    placed: the homography, each block's offset from its outlines
    (pitches), the cut-out and the placement."""

    H: np.ndarray
    off: np.ndarray
    cut: Cutout
    pl: Placement


def _unrivalled(fits: list[_LayoutFit], replaced: Placement, replaced_rank: float, geo: Geometry,
                pitch: float) -> _LayoutFit | None:
    """The fit of the whole layout to take instead of the placement
    ``replaced`` (ranked ``replaced_rank``), if any: the one placed best,
    when it fits as found at ``GOOD_FIT`` and ``BETTER_FIT`` better than
    ``replaced``, ranks above it, and has no rival: another fit putting a
    bubble ``RIVAL_APART`` pitches or more elsewhere (a row or a column off)
    that is placed within ``AMBIGUOUS_FIT`` of it."""
    if not fits:
        return None
    top = max(fits, key=lambda f: f.pl.as_found)
    if (top.pl.as_found < max(GOOD_FIT, replaced.as_found + BETTER_FIT) or _rank(top.pl) <= replaced_rank):
        return None
    for f in fits:
        if f is not top and _apart(top.H, f.H, geo.centres) >= RIVAL_APART * pitch and (
                f.pl.as_found >= top.pl.as_found - AMBIGUOUS_FIT):
            return None
    return top


def misaligned_fields(geo: Geometry, pl: Placement) -> list[int]:
    """The fields (indices) of every block the placement did not put on its
    printed outlines: a block with bubbles off them, or an end line off (a
    row or a column off, ``grid.Placement``); every block when most show
    outlines one pitch outside them (printed numbers and letters beside a
    block look alike there, so only most blocks showing them make the whole
    grid a row or column off); and every block moved onto its outlines
    (``grid.replace_blocks``), with the blocks not squarely on them on such a
    sheet."""
    grid_off = len(pl.border) > 0 and float(median(pl.border)) > BORDER_FLAG
    # (One bubble off its outline in a tiny block is not a block off.)
    missed = np.bincount(geo.block, weights=(~pl.ok).astype(np.float64), minlength=len(pl.block_ok))
    bad = ((pl.block_ok < BLOCK_OK) & (missed >= 2)) | pl.end_line_off | grid_off
    if pl.moved is not None and pl.moved.any():
        # Blocks found on their outlines over half a pitch from where the page
        # put them (read there), and on such a sheet those not squarely on
        # their outlines: a block printed otherwise than the template (a row
        # off) is found so too, and one image cannot tell the two apart.
        bad = bad | pl.moved | (pl.unsure if pl.unsure is not None else False)
    return fields_of_blocks(geo, bad)


#: A block with this share of its fields (four at least) read with several
#: marks is placed a value off (on the printed question numbers beside it,
#: which read as a mark in many fields, beside each real one), not filled
#: in twice throughout.
DOUBLED_SHARE = 0.4


def doubled_blocks(geo: Geometry, flags: list[list[str]]) -> list[int]:
    """The fields (indices) of every block where ``DOUBLED_SHARE`` of the
    fields or more carry ``multiple``: a block placed a value off onto
    print beside it (question numbers, a frame) reads that print as a mark
    in many fields; in the others, a real mark a value off, unflagged."""
    block_of = np.zeros(len(flags), np.int64)
    block_of[geo.field] = geo.block
    nb = len(geo.block_pitch)
    fields = np.bincount(block_of, minlength=nb)
    doubled = np.bincount(block_of, weights=["multiple" in f for f in flags], minlength=nb)
    return fields_of_blocks(geo, (fields >= 4) & (doubled >= DOUBLED_SHARE * fields))


def page_corners(t: OmrCheckerTemplate) -> np.ndarray:
    """The page's corners in page px: TL, TR, BR, BL."""
    return np.array([[0, 0], [t.page_w, 0], [t.page_w, t.page_h], [0, t.page_h]], np.float64)


def _same_start(H0: np.ndarray, H: np.ndarray, centres: np.ndarray, pitch: float) -> bool:
    """Whether ``H`` puts every bubble within ``SAME_START`` pitches of where
    ``H0`` puts it (page px -> image px both): a search from either finds the
    same outlines."""
    return bool(np.abs(_displaced(H0, H, centres)).max() < SAME_START * pitch)


def _most_apart(H0: np.ndarray, H: np.ndarray, centres: np.ndarray) -> float:
    """How far apart (page px) two placements put most bubbles (the median)."""
    return float(median(np.hypot(*_displaced(H0, H, centres).T)))


def _apart(H0: np.ndarray, H: np.ndarray, centres: np.ndarray) -> float:
    """How far apart (page px) two placements put the bubbles furthest apart."""
    return float(np.hypot(*_displaced(H0, H, centres).T).max())


def _displaced(H0: np.ndarray, H: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, 2) page px: where ``H`` puts each bubble, seen through ``H0``,
    less where ``H0`` puts it (both page px -> image px)."""
    return transform_points(np.linalg.inv(H0), transform_points(H, centres)) - centres


def _turn(t: OmrCheckerTemplate, roll: int) -> np.ndarray:
    """Page px -> page px, the corners renamed by ``roll`` quarter turns."""
    c = page_corners(t).astype(np.float32)
    return cv2.getPerspectiveTransform(c, np.roll(c, roll, 0)).astype(np.float64)


def _namings(H: np.ndarray, t: OmrCheckerTemplate) -> list[np.ndarray]:
    """``H`` (page px -> image px) with its corners named as they are, and
    turned a half: or, when the page's sides in the image have the other
    proportion than the template's, turned a quarter either way. A square
    page tries all four."""
    c = transform_points(H, page_corners(t))
    w = (np.linalg.norm(c[1] - c[0]) + np.linalg.norm(c[2] - c[3])) / 2
    h = (np.linalg.norm(c[3] - c[0]) + np.linalg.norm(c[2] - c[1])) / 2
    same = math.log(max(w, 1e-6) / max(h, 1e-6)) * math.log(t.page_w / t.page_h)
    if abs(math.log(t.page_w / t.page_h)) < 0.05:
        rolls = (0, 2, 1, 3)
    elif same > 0:
        rolls = (0, 2)
    else:
        rolls = (1, 3)
    return [H @ _turn(t, r) if r else H for r in rolls]


def _orientation(corners: np.ndarray) -> int:
    v = corners[1] - corners[0]
    return int(round((math.degrees(math.atan2(v[1], v[0])) % 360) / 90.0)) % 4 * 90


def _first_bubbles(t: OmrCheckerTemplate) -> list[int]:
    """The index of each field's first bubble (bubbles are stored field after field)."""
    return np.cumsum([0] + [len(f.values) for f in t.fields[:-1]]).tolist() if t.fields else []


def _order_name(values: tuple[str, ...]) -> str:
    return "0..9" if values[0] == "0" else "1..9, 0"


def _relabelled(lay: PageLayout, orders: dict[int, tuple[str, ...]]) -> PageLayout:
    """``lay`` with the fields of ``orders`` (field index -> values as printed) relabelled."""
    if not orders:
        return lay
    groups = list(lay.groups)
    for k, values in orders.items():
        g = groups[k]
        groups[k] = replace(g, bubbles=tuple(replace(b, value=v) for b, v in zip(g.bubbles, values, strict=True)))
    return replace(lay, groups=tuple(groups))


def _answers(out: OmrCheckerReading, t: OmrCheckerTemplate, marked_bubbles: np.ndarray,
             field_flags: list[list[str]], confidence: list[float],
             printed: dict[int, tuple[str, ...]] | None = None) -> None:
    """OMRChecker's response: fields, then custom labels and output columns.
    ``printed``: {field index: its values as printed} where they differ from
    the template's."""
    marked: dict[str, list[str]] = {f.label: [] for f in t.fields}
    i = 0
    for k, f in enumerate(t.fields):
        for v in (printed or {}).get(k, f.values):
            if marked_bubbles[i]:
                marked[f.label].append(v)
            i += 1
    flags = {f.label: field_flags[k] for k, f in enumerate(t.fields)}
    conf = {f.label: confidence[k] for k, f in enumerate(t.fields)}
    resp = {f.label: "".join(marked[f.label]) if marked[f.label] else f.empty_value for f in t.fields}
    out.fields = resp
    for col in t.output_columns:
        parts = t.custom_labels.get(col, [col])
        out.answers[col] = "".join(resp[p] for p in parts)
        col_flags: list[str] = []
        blank = [not marked[p] for p in parts]
        for p in parts:
            for fl in flags[p]:
                if fl not in col_flags:
                    col_flags.append(fl)
        # A custom label joins any fields (a roll number and a check letter):
        # one left blank among filled ones is what the sheet says, not doubt.
        if all(blank):
            col_flags.insert(0, "blank")
        out.flags[col] = col_flags
        out.confidence[col] = min(conf[p] for p in parts)


def read_omrchecker_image_bytes(data: bytes, template: OmrCheckerTemplate, *, source: str = "",
                                max_pixels: int = MAX_PIXELS) -> list[OmrCheckerReading]:
    """Read every page of an image file with an OMRChecker template: one
    ``OmrCheckerReading`` per page; a file that cannot be decoded gives one with
    ``error`` and the sheet flag ``unreadable``. Coordinates are in the file's
    pixels. ``max_pixels``: images larger than this are refused before decoding."""
    def unreadable(error: str) -> OmrCheckerReading:
        return OmrCheckerReading(file=source, template=template.name, error=error, sheet_flags=["unreadable"])

    return read_pages(data, lambda image, name: read_omrchecker_sheet(image, template, source=name), unreadable,
                      source=source, max_pixels=max_pixels, reduction=_reduction)


#: A JPEG is decoded shrunk (by libjpeg, 1/2 or 1/4) while its long side
#: keeps at least this many px: a phone photo's page then still holds its
#: bubbles at well over the measurement scale.
DECODE_LONG = 1300


def _reduction(info: ImageInfo) -> int:
    if info.format != "JPEG" or info.pages != 1:
        return 1
    long_side = max(info.width, info.height)
    return next((f for f in (4, 2) if long_side / f >= DECODE_LONG), 1)
