"""Reading one answer sheet image: page location, QR code, bubbles, decisions.

``read_sheet`` takes a decoded image; ``read_image_bytes`` takes an uploaded
file (every page of a multi-page TIFF). Both return ``SheetReading`` objects
whose ``to_dict()`` is the JSON the command line prints per image:

``file``, ``template``, ``page``, ``qr`` (payload dict or null), ``qr_error``,
``answers`` {field: value}, ``confidence`` {field: 0..1}, ``flags`` {field:
[...]} (every field, ``[]`` when none), ``sheet_flags`` [...], ``needs_review``,
``error`` (why nothing could be read, else null), ``orientation`` (clockwise
degrees the page is turned in the image), ``timings_ms``, ``image_size`` [w,
h], ``marks_px`` [[x, y] x4: TL, TR, BR, BL], ``homography`` (3x3, page mm ->
image px), ``bubbles`` [[group, value, score, marked, x, y], ...].

Review policy: a sheet ``needs_review`` whenever any doubt remains: any sheet
flag, an error, or any field flag other than a plain ``blank`` (an unanswered
question is an answer, not a doubt).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import bubbles as bub
from . import decide
from .align import (
    AlignError,
    BubbleFrame,
    MarkGeometry,
    PageFit,
    bubble_centres_mm,
    extra_outlines,
    jacobians,
    layout_mm,
    locate_page,
    page_candidates,
    refine_on_bubbles,
    to_grey,
    verify_frame,
)
from .cache import per_object
from .imageio import MAX_PIXELS
from .layout import PageLayout
from .qr import read_qr, scan_region
from .reading import SheetReading, in_doubt, read_pages  # noqa: F401 (in_doubt: the server takes it from here)
from .template import Template, builtin_names, load_builtin_template, load_template

#: Share of unfilled bubbles whose outline must be found for the page to count
#: as this template at all, and for it to count as well aligned.
RING_FIT_FAIL = 0.6
RING_FIT_OK = 0.92
#: Share of option rows continuing past the template's last bubble that means
#: the sheet is another layout (``align.extra_outlines``).
EXTRA_LIMIT = 0.4
#: A scanned page's x/y scale ratio beyond this is another page size.
ASPECT_LIMIT = 0.03
#: Printed black must be at least this much darker than paper (0..1).
MIN_CONTRAST = 0.35


# ---------------------------------------------------------------- templates


@lru_cache(maxsize=1)
def _builtin_geometries() -> tuple[tuple[MarkGeometry, Template], ...]:
    """One reference template per distinct mark geometry among the built-ins."""
    seen: dict[tuple, tuple[MarkGeometry, Template]] = {}
    for name in builtin_names():
        t = load_template(name)
        g = MarkGeometry.of(t)
        key = (g.centres.round(3).tobytes(), round(g.size, 3), tuple(round(v, 3) for v in g.key))
        seen.setdefault(key, (g, t))
    return tuple(seen.values())


def _qr_box(t: Template) -> tuple[float, float, float, float]:
    return (t.qr.x, t.qr.y, t.qr.w, t.qr.h)


def _same_geometry(a: MarkGeometry, b: MarkGeometry) -> bool:
    return bool(np.allclose(a.centres, b.centres, atol=0.05) and abs(a.size - b.size) < 0.05
                and np.allclose(a.key, b.key, atol=0.05))


# ---------------------------------------------------------------- reading


@dataclass
class _Eval:
    lay: PageLayout
    frame: BubbleFrame
    m: decide.Measures
    ring_fit: float  # share of unfilled bubbles whose outline shows where they are read
    verified: float  # share of bubbles whose outline is best centred where they are read

    @property
    def quality(self) -> float:
        """How well this placement fits the template (``align.verify_frame``)."""
        return self.verified


@per_object
def _printed_keys(lay: PageLayout) -> np.ndarray:
    """(N,) per bubble, an index of the value it prints (the same for the same
    letter or digit), once per layout."""
    printed = np.array([b.value for g in lay.groups for b in g.bubbles])
    return np.unique(printed, return_inverse=True)[1].ravel()


def _evaluate(grey: np.ndarray, fit: PageFit, template: Template, page: int) -> _Eval:
    lay = layout_mm(template, page)
    frame = refine_on_bubbles(grey, fit, lay)
    m = bub.measure(grey, frame, fit)
    unfilled = m.score < 0.3
    ring_fit = float(np.mean(m.ring[unfilled] >= decide.RING_MIN)) if unfilled.any() else 0.0
    return _Eval(lay, frame, m, ring_fit, verify_frame(grey, fit, frame))


def _missing_option(ev: _Eval) -> str | None:
    """An option whose printed outline is missing from nearly every question
    while the others show: the sheet has fewer options than the template."""
    by_option: dict[str, list[bool]] = {}
    unfilled = (ev.m.score < 0.3).tolist()  # a filled bubble hides its outline
    shows = (ev.m.ring >= decide.RING_MIN).tolist()
    i = 0
    for g in ev.lay.groups:
        n = len(g.bubbles)
        if g.kind == "question":
            for j, b in enumerate(g.bubbles):
                if unfilled[i + j]:
                    by_option.setdefault(b.value, []).append(shows[i + j])
        i += n
    rates = {k: float(np.mean(v)) for k, v in by_option.items() if len(v) >= 5}
    if len(rates) < 2:
        return None
    typical = float(np.median(list(rates.values())))
    worst = min(rates, key=rates.get)
    if rates[worst] < 0.3 and typical > 0.8:
        return worst
    return None


def _corner_score(grey: np.ndarray, fit: PageFit, template: Template) -> float:
    """``align.verify_frame`` over the bubbles within 60 mm of a mark, at the
    marks' homography: cheap, and little affected by curl or lens distortion,
    which move the page least near the marks."""
    page = bubble_centres_mm(layout_mm(template, 1))
    marks = fit.geometry.centres
    d = np.sqrt(((page[:, None, :] - marks[None, :, :]) ** 2).sum(-1)).min(1)
    near = page[d < 60]
    if len(near) < 8:
        return 0.0
    frame = BubbleFrame(fit.to_image(near), jacobians(fit.H, near), template.bubble_diameter / 2, fit.H, near)
    return verify_frame(grey, fit, frame, step=1)


def read_sheet(image: np.ndarray, template: Template | None = None, *, source: str = "",
               resolve: Callable[[str], Template] = load_builtin_template, page: int | None = None) -> SheetReading:
    """Read one sheet image.

    ``image``: the decoded page, grey (HxW) or BGR (HxWx3) uint8, any
    resolution (about 100-600 dpi) and any orientation. ``template``: the
    layout to read, or None to take it from the sheet's QR code (resolved with
    ``resolve(name)``; by default built-in names only, since a QR code is
    untrusted and must never open a file path it names). ``source``: the file name reported back. ``page``:
    force the template page (otherwise the QR code's, else found from the
    layout, else 1).

    Returns a ``SheetReading``; never raises for a bad image (the reading
    carries ``error`` and sheet flags instead).
    """
    t_start = time.perf_counter()
    grey = to_grey(image)
    size = (int(grey.shape[1]), int(grey.shape[0]))
    geoms = [(MarkGeometry.of(template), template)] if template is not None else list(_builtin_geometries())
    t0 = time.perf_counter()
    align_ms = 0.0
    try:
        candidates = page_candidates(grey, [g for g, _ in geoms])
        fit = next(candidates)
    except (AlignError, StopIteration) as exc:
        out = SheetReading(file=source, image_size=size, template=template.name if template else None)
        out.error = exc.reason if isinstance(exc, AlignError) else "registration marks not found"
        out.flag(exc.flag if isinstance(exc, AlignError) else "not_a_sheet")
        out.timings_ms["align"] = (time.perf_counter() - t0) * 1000
        out.timings_ms["total"] = (time.perf_counter() - t_start) * 1000
        return out
    align_ms += (time.perf_counter() - t0) * 1000
    best: tuple[float, SheetReading] | None = None
    queue = [fit]
    ranked = False
    for _attempt in range(4):
        if not queue:
            break
        fit = queue.pop(0)
        out = SheetReading(file=source, image_size=size)
        quality = _read_fit(grey, fit, template, geoms, resolve, page, out)
        out.timings_ms["align"] = out.timings_ms.get("align", 0.0) + align_ms
        align_ms = 0.0
        if quality is None or quality >= GOOD_FIT:
            best = (1.0, out)
            break
        if best is None or quality > best[0]:
            best = (quality, out)
        if not ranked:
            # Outlines not where this placement puts them: maybe the wrong four
            # squares were taken for the marks. The other placements are
            # ranked by how well the bubbles near the marks sit (there even a
            # curled page is nearly flat), best first.
            ranked = True
            t0 = time.perf_counter()
            others = []
            try:
                for f in candidates:
                    others.append(f)
            except AlignError:
                pass
            def ref_of(f: PageFit) -> Template:
                return template or next(t for g, t in geoms if g is f.geometry)

            others.sort(key=lambda f: -_corner_score(grey, f, ref_of(f)))
            queue = others
            align_ms = (time.perf_counter() - t0) * 1000
    out = best[1]
    out.timings_ms["total"] = (time.perf_counter() - t_start) * 1000
    return out


#: Share of bubbles whose outline must be best centred where they are read
#: (``align.verify_frame``) for a placement to be taken without trying
#: another one; under FAIL_FIT it is not trusted at all, under SURE_FIT the
#: sheet is flagged ``misaligned``. A right placement scores ~0.97-1.0, a wrong
#: one ~0.2-0.5.
GOOD_FIT = 0.8
SURE_FIT = 0.88
FAIL_FIT = 0.6


def _read_fit(grey: np.ndarray, fit: PageFit, template: Template | None,
              geoms: list[tuple[MarkGeometry, Template]], resolve: Callable[[str], Template],
              page: int | None, out: SheetReading) -> float | None:
    """Everything after the marks, for one placement of the page, into ``out``.

    Returns how well the template's bubble outlines were found (0..1), or None
    when the outcome does not depend on the placement (no template, unknown
    template named by the QR code...).
    """
    timings = out.timings_ms
    ref = template or next(t for g, t in geoms if g is fit.geometry)
    out.orientation = fit.orientation

    # 2. QR code (also settles a 180-degree doubt the key bar left).
    t0 = time.perf_counter()
    qr = read_qr(grey, fit.H, _qr_box(ref), thorough=fit.alternative is None)
    if qr.status != "qr_missing":
        fit.orientation_sure = True  # a code reads only the right way up in its box
    elif fit.alternative is not None:
        qr_alt = read_qr(grey, fit.alternative.H, _qr_box(ref))
        if qr_alt.status != "qr_missing":
            fit, qr = fit.alternative, qr_alt
            fit.orientation_sure = True
            out.orientation = fit.orientation
    if qr.status == "qr_missing" and template is None:
        # Without the code there is no template: look harder. The bubbles all
        # built-in layouts share (student number, version) say where a curled
        # page has moved the code; then it is read module by module; last, the
        # top of the page is scanned in case the layout puts it elsewhere.
        ev0 = _evaluate(grey, fit, ref, 1)
        qr = read_qr(grey, ev0.frame.corrected_h(_qr_box(ref)), _qr_box(ref), modules=True)
        if qr.status == "qr_missing":
            pw, ph = fit.geometry.page
            qr = scan_region(grey, fit.H, (0.0, 0.0, pw, ph * 0.3))
    timings["qr"] = timings.get("qr", 0.0) + (time.perf_counter() - t0) * 1000
    out.qr = qr.payload  # also a qr_invalid code's, its bad value left out
    if qr.status != "ok":
        out.qr_error = qr.message
        out.flag(qr.status)

    # 3. Which template and page.
    t0 = time.perf_counter()

    def finish(quality: float | None) -> float | None:
        timings["bubbles"] = timings.get("bubbles", 0.0) + (time.perf_counter() - t0) * 1000
        return quality

    chosen = template
    if qr.payload is not None and (template is None or qr.payload.template != template.name):
        try:
            named = resolve(qr.payload.template)
        except (FileNotFoundError, ValueError, OSError) as exc:
            named = None
            if template is None:
                out.error = f"the QR code names template {qr.payload.template!r}, which is not known ({exc})"
                out.flag("unknown_template")
                return finish(None)
        if template is not None:
            out.flag("wrong_template")
        if named is not None:
            if template is not None:
                out.qr_error = (f"the sheet's QR code names template {named.name!r}, "
                                f"not {template.name!r}; read with {named.name!r}")
            chosen = named
    if chosen is None:
        out.error = "no template given and the sheet's QR code cannot be read"
        return finish(None)
    out.template = chosen.name
    if not _same_geometry(MarkGeometry.of(chosen), fit.geometry):
        try:
            fit = locate_page(grey, [MarkGeometry.of(chosen)])
            out.orientation = fit.orientation
        except AlignError as exc:
            out.error = f"page does not match template {chosen.name}: {exc.reason}"
            out.flag("wrong_template")
            return finish(None)

    pages = [page] if page else []
    if not pages and out.qr is not None and out.qr.template == chosen.name:
        if 1 <= out.qr.page <= chosen.pages:
            pages = [out.qr.page]
        else:
            out.flag("wrong_template")
            out.error = f"the QR code says page {out.qr.page}, but template {chosen.name} has {chosen.pages}"
            return finish(None)
    if not pages:
        pages = list(range(1, chosen.pages + 1))
    fits = [fit] + ([fit.alternative] if fit.alternative is not None and not fit.orientation_sure else [])
    evals = []
    for f in fits:
        for p in pages:
            evals.append((_evaluate(grey, f, chosen, p), f, p))
    evals.sort(key=lambda e: -e[0].quality)
    ev, fit, pg = evals[0]
    if len(evals) > 1:
        rivals = [e for e in evals[1:] if e[0].quality > ev.quality - 0.04]
        if any(e[1] is not fit for e in rivals):
            out.flag("misaligned")  # cannot tell which way up the page is
        if any(e[1] is fit and e[2] != pg for e in rivals):
            out.flag("page_unknown")
    out.page = pg
    out.orientation = fit.orientation
    out.marks_px = fit.marks_px
    out.homography = ev.frame.H
    if out.qr is None and qr.status == "qr_missing":
        # A curled page moves the QR code too: cut it out again where the
        # bubbles around it say it is, and read it module by module (blur).
        t1 = time.perf_counter()
        qr2 = read_qr(grey, ev.frame.corrected_h(_qr_box(chosen)), _qr_box(chosen),
                      thorough=ev.frame.shift_mm > 0.4, modules=True)
        timings["qr"] = timings.get("qr", 0.0) + (time.perf_counter() - t1) * 1000
        if qr2.status != "qr_missing":
            qr = qr2
            out.sheet_flags = [f for f in out.sheet_flags if f != "qr_missing"]
            out.qr_error = None
            out.qr = qr.payload
            if qr.payload is not None and qr.payload.template != chosen.name:
                out.flag("wrong_template")
            if qr.status != "ok":
                out.qr_error = qr.message
                out.flag(qr.status)

    # 4. Does the page match the template?
    if fit.aspect_error is not None and fit.aspect_error > ASPECT_LIMIT:
        out.error = (f"page does not match template {chosen.name} "
                     f"(its proportions differ by {fit.aspect_error * 100:.0f} %)")
        out.flag("wrong_template")
        return finish(min(ev.quality, FAIL_FIT))  # another placement may still fit
    if ev.ring_fit < RING_FIT_FAIL or ev.verified < FAIL_FIT:
        out.error = (f"page does not match template {chosen.name} (bubbles are not where the template "
                     f"puts them: {ev.verified * 100:.0f} % of outlines centred)")
        out.flag("wrong_template" if out.qr is None or out.qr.template != chosen.name
                 or "wrong_template" in out.sheet_flags else "misaligned")
        return finish(ev.quality)
    if ev.ring_fit < RING_FIT_OK or ev.verified < SURE_FIT:
        out.flag("misaligned")
    lacking = _missing_option(ev)
    if lacking is not None:
        out.error = (f"page does not match template {chosen.name} (no printed bubbles for option "
                     f"{lacking!r}: the sheet has fewer options than the template)")
        out.flag("wrong_template")
        return finish(ev.quality)
    extra = extra_outlines(grey, fit, ev.frame, ev.lay)
    if extra > EXTRA_LIMIT:
        # More options printed than the template has: marks on them would be lost.
        out.error = (f"page does not match template {chosen.name} (the sheet has more options per question "
                     f"than the template: {extra * 100:.0f} % of rows continue)")
        out.flag("wrong_template")
        return finish(ev.quality)
    if 1.0 - ev.m.ink_ratio < MIN_CONTRAST:
        out.flag("low_contrast")

    # 5. Decide (the stage OMRChecker sheets share).
    pairs = decide.neighbour_pairs(ev.lay)
    groups, marked, _levels = decide.decide_sheet(ev.lay, ev.m, _printed_keys(ev.lay), ev.frame.page_mm,
                                                  (pairs, bub.gap_darkness(grey, ev.frame, ev.m, pairs)), grey)
    out.answers, out.flags, out.confidence = decide.field_values(groups)
    # Every field of the template page, in the template's order.
    order = [f for f in chosen.field_names() if f in out.answers]
    out.answers = {f: out.answers[f] for f in order}
    out.flags = {f: out.flags[f] for f in order}
    out.confidence = {f: out.confidence[f] for f in order}
    out._bubble_data = (ev.lay, np.round(ev.m.score, 3), marked, ev.frame.centres)
    return finish(ev.quality)


def read_image_bytes(data: bytes, template: Template | None = None, *, source: str = "",
                     resolve: Callable[[str], Template] = load_builtin_template,
                     max_pixels: int = MAX_PIXELS) -> list[SheetReading]:
    """Read every page of an uploaded image file.

    ``data``: the file's bytes; ``template``/``resolve``: as ``read_sheet``;
    ``source``: the file name reported back; ``max_pixels``: images larger than
    this are refused before decoding. Returns one ``SheetReading`` per
    page; a file that cannot be decoded gives one reading with ``error`` and the
    sheet flag ``unreadable``. Large page-sized JPEG scans are decoded at
    reduced size (see ``imageio.load_grey_for_reading``); coordinates in the
    readings are in the file's own pixels either way (as displayed: a JPEG's EXIF
    orientation is applied).
    """
    def unreadable(error: str) -> SheetReading:
        return SheetReading(file=source, template=template.name if template is not None else None, error=error,
                            sheet_flags=["unreadable"])

    return read_pages(data, lambda image, name: read_sheet(image, template, source=name, resolve=resolve),
                      unreadable, source=source, max_pixels=max_pixels)
