"""Filled-in answer sheets as a scanner or a phone camera would deliver them, with
the ground truth of what was marked.

The printed sheet comes from ``render.render_page_image`` (the raster of the very
PDF that is printed). Marks, erasures, handwriting and stray marks are drawn on it
in page coordinates taken from ``layout.page_layout``; only then is the page put
through the geometry (rotation, scale, perspective, cropping, camera projection,
paper curl) and the photometry (paper tint, light, shadows, blur, noise, JPEG) of
a scanner or a phone. Everything random comes from ``seed``, so a sheet is
reproduced exactly.

Options are numbers or ``(low, high)`` ranges; a range is drawn uniformly per
sheet, so one preset covers a spread of conditions. Units: ``dpi`` dots per inch,
millimetres on the page, pixels of the delivered image for blur, noise and shake,
grey levels (0-255) for noise sigmas, degrees for angles.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random as _pyrandom
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from reportlab.pdfbase.pdfmetrics import stringWidth

from ..layout import MM_PER_INCH, Group, PageLayout, page_layout
from ..render import render_page_image
from ..template import DigitBlock, Template, load_template
from .simfile import encode_oriented, quantise_grey, trailer

Range = float | tuple[float, float]  # a number, or a (low, high) range drawn per sheet

STYLES = ("filled", "pencil", "light", "half", "tick", "cross", "circled", "pen", "scribble", "across")
MIXED_STYLES = ("filled", "pencil", "half", "tick", "cross")
#: What real sheets show (style ``"paper"``): pencil and pen fills, quick
#: scribbles, a stroke running on into the next bubble.
PAPER_STYLES = ("filled", "pencil", "pen", "scribble", "across")
PEN_STYLES = ("filled", "tick", "cross", "circled")  # styles drawn with SimOptions.pen
BACKGROUNDS = ("wood", "dark", "grey", "light", "fabric")

# Reflectance of tinted papers, BGR (1.0 = the white of the printed raster).
PAPERS: dict[str, tuple[float, float, float]] = {
    "white": (1.0, 1.0, 1.0),
    "bright": (1.0, 0.99, 0.97),  # optical brighteners read slightly blue
    "cream": (0.86, 0.95, 0.99),
    "recycled": (0.86, 0.9, 0.92),
    "yellow": (0.62, 0.93, 0.99),
    "pink": (0.9, 0.86, 0.99),
    "blue": (0.99, 0.92, 0.82),
    "green": (0.8, 0.96, 0.84),
}
LIGHT_PAPERS = ("white", "white", "bright", "cream", "recycled")
#: Print colours: the share of black print's density each channel (B, G, R)
#: sees. Forms printed in such "dropout" inks (``Sandeep-1507``'s orange)
#: show their outlines faint in grey and dark in the channel the ink absorbs.
PRINT_INKS: dict[str, tuple[float, float, float] | None] = {
    "black": None,
    "orange": (0.55, 0.25, 0.03),
    "red": (0.6, 0.65, 0.05),
    "green": (0.55, 0.1, 0.6),
    "blue": (0.05, 0.4, 0.7),
}


@dataclass(frozen=True)
class SimOptions:
    """How a sheet is filled in and how it is captured.

    Numeric fields take a number or a ``(low, high)`` range drawn per sheet.

    Filling in:
      ``style``: mark style, one of ``STYLES`` or ``"mixed"`` (random per bubble
      among ``MIXED_STYLES``). ``pen``: ink of filled/tick/cross/circled marks:
      ``"graphite"`` (pencil), ``"black"`` or ``"blue"`` (pen). ``print_ink``:
      what the form is printed in, ``"black"`` or a dropout colour of
      ``PRINT_INKS`` (outlines and letters faint in grey, dark in one channel). ``erasure_rate``:
      fraction of questions where an earlier answer was erased before the real one
      (or none) was marked; ``whiteout_rate``: the same, covered with correction
      fluid instead (the ink is hidden under an opaque white blob that takes the
      printed outline with it, its dried rim shows). ``handwriting``: write the
      student number in its boxes and scribble a name. ``stray_marks``: pencil
      dots and dashes away from the bubbles.

    Mark styles: ``filled`` (firm pencil or the ``pen``), ``pencil`` (lighter,
    off-centre, overshooting), ``light``, ``half``, ``tick``, ``cross``,
    ``circled`` (a ring drawn around the bubble, not filled), ``pen`` (a
    ballpoint fill whatever ``pen`` says: black, or blue with a blue pen),
    ``scribble`` (a quick loose zigzag that leaves paper showing), ``across``
    (a dash through the bubble that runs on into its neighbour); ``mixed`` and
    ``paper`` pick one per bubble among ``MIXED_STYLES`` / ``PAPER_STYLES``.

    Printing: ``bubble_letters`` prints each bubble's option letter or digit
    inside it, this dark (0-1 of black; 0: nothing inside, as this project's
    sheets print them). Many printed sheets do: a blank "B" or "M" bubble is
    then darker than a blank "I".

    Orientation (both modes): ``rotation_deg`` exact counter-clockwise rotation
    (90/180/270 swap or flip the page); ``random_turn`` adds a random quarter
    turn; ``skew_deg`` a further rotation of that magnitude and random sign.

    Scanner (``photo=False``): ``dpi`` of the delivered image; ``scale``
    (printer "fit to page", scanner calibration); ``perspective`` corner jitter
    as a fraction of the page's long side; ``crop_mm`` at most this much cut off
    one or more page edges; ``lid_border_mm`` background visible around the page,
    of grey ``lid_grey``; ``noise`` Gaussian sigma in grey levels;
    ``framed_to_page``: the image is the page's own size, centred on it, as a
    sheet feeder or a scanning app frames it: a skewed page has its corners cut
    and the lid in the triangles it leaves, and shows no edge to find.

    Light and dirt (both modes): ``paper`` name in ``PAPERS``, ``"random"`` (a
    light one), ``"any"`` (tinted ones too) or a BGR tuple; ``colour_cast``
    per-channel gain spread; ``exposure`` in stops; ``contrast`` (1 =
    unchanged); ``gradient`` illumination fall-off across the image (fraction);
    ``shadow`` darkness of a soft shadow (0-1: a band from a page edge on scans,
    a hand's shadow on photos); ``blur`` Gaussian sigma in px; ``speckle`` toner
    specks, ``dust`` dust particles, ``hairs`` hairs/fibres (counts per page);
    ``jpeg_quality`` 1-100, or ``None`` for a lossless image.

    The file (both modes): ``grey_levels`` 0 keeps the colour capture; 2 is a
    scanner's black & white mode (black under ``bitonal_threshold``, a grey
    level, white above); more is a grey palette of that many levels.
    ``exif_orientation`` (1-8) stores the pixels turned and writes the EXIF tag
    that turns them back, as a phone held sideways does (the file is then a
    JPEG, quality 92 unless ``jpeg_quality`` says); ``image`` and the truth's
    geometry stay upright, as a viewer shows the file. ``trailer_bytes``
    appends that many bytes after the JPEG's end marker (a preview image and a
    maker's block).

    Phone (``photo=True``; ``dpi``, ``scale``, ``perspective``, ``crop_mm``, the
    lid and ``noise`` do not apply): ``megapixels`` of the 4:3 image, held the
    page's way; ``tilt_deg`` camera tilt off the page normal (the perspective
    follows from it and a 26 mm-equivalent lens); ``fill`` fraction of the frame
    the page's bounding box spans in its tighter direction; ``curl_mm`` how far
    the paper's edges lift off the desk; ``vignette`` corner darkening
    (fraction); ``shake_px`` motion blur length; ``sensor_noise``
    signal-dependent noise sigma at white, grey levels; ``sharpen`` the phone's
    unsharp mask amount; ``background`` one of ``BACKGROUNDS`` or ``"random"``;
    ``clutter`` objects lying around the page. The phone meters the scene, so
    ``exposure`` is relative to its automatic exposure.
    """

    dpi: float = 300
    style: str = "filled"
    pen: str = "graphite"
    print_ink: str = "black"
    erasure_rate: float = 0.0
    handwriting: bool = True
    stray_marks: Range = 0
    # scanner geometry
    rotation_deg: float = 0.0
    random_turn: bool = False
    skew_deg: Range = 0.0
    scale: Range = 1.0
    perspective: Range = 0.0
    crop_mm: Range = 0.0
    lid_border_mm: Range = 0.0
    lid_grey: Range = 235
    framed_to_page: bool = False
    # light and sensor
    paper: Any = "white"
    colour_cast: Range = 0.0
    exposure: Range = 0.0
    contrast: Range = 1.0
    gradient: Range = 0.0
    shadow: Range = 0.0
    blur: Range = 0.0
    noise: Range = 0.0
    speckle: Range = 0
    dust: Range = 0
    hairs: Range = 0
    jpeg_quality: Any = None
    # phone
    photo: bool = False
    megapixels: Range = 8.0
    tilt_deg: Range = 0.0
    fill: Range = (0.7, 0.85)
    curl_mm: Range = 0.0
    vignette: Range = 0.0
    shake_px: Range = 0.0
    sensor_noise: Range = 0.0
    sharpen: Range = 0.0
    background: str = "random"
    clutter: Range = 0
    # what real paper and files add
    bubble_letters: Range = 0.0
    whiteout_rate: float = 0.0
    grey_levels: int = 0
    bitonal_threshold: Range = 150
    exif_orientation: int = 1
    trailer_bytes: Range = 0

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict (ranges become two-item lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PRESETS: dict[str, SimOptions] = {
    # The printed raster with marks and handwriting, nothing else: the image is the
    # page at exactly the layout's pixels, for tests that measure at layout positions.
    "clean": SimOptions(),
    # A good office scanner: almost straight, crisp, white lid, high JPEG quality.
    "scan_mild": SimOptions(
        dpi=300, style="filled", erasure_rate=0.02, skew_deg=(0.0, 1.5), scale=(0.99, 1.01),
        lid_border_mm=(0.0, 2.0), lid_grey=(225, 245), paper="random", blur=0.6, noise=2.5,
        speckle=40, dust=8, gradient=0.04, colour_cast=0.02, jpeg_quality=90,
    ),
    # A multifunction copier at 200 dpi in pencil: visible skew, shrink-to-fit,
    # a dark border, tinted paper, a shadow along one edge, JPEG 70.
    "scan_moderate": SimOptions(
        dpi=200, style="pencil", erasure_rate=0.05, stray_marks=(1, 4), skew_deg=(1.0, 4.0),
        scale=(0.95, 1.02), perspective=(0.0, 0.003), crop_mm=(0.0, 2.5), lid_border_mm=(2.0, 6.0),
        lid_grey=(25, 70), paper="random", colour_cast=0.04, exposure=(-0.35, 0.25), contrast=(0.85, 1.05),
        gradient=(0.06, 0.14), shadow=(0.1, 0.22), blur=0.9, noise=6.0, speckle=250, dust=40, hairs=1,
        jpeg_quality=70,
    ),
    # A worn-out scanner at 150 dpi fed sheets any way round: strong skew, dark or
    # washed-out, heavy noise and dirt, big shadows, tinted paper, JPEG 30, every
    # mark style, erasures and stray marks.
    "scan_hard": SimOptions(
        dpi=150, style="mixed", erasure_rate=0.1, stray_marks=(4, 9), random_turn=True, skew_deg=(10.0, 15.0),
        scale=(0.92, 1.04), perspective=(0.004, 0.012), crop_mm=(1.0, 4.0), lid_border_mm=(3.0, 10.0),
        lid_grey=(10, 60), paper="any", colour_cast=0.1, exposure=(-1.0, 0.55), contrast=(0.6, 1.0),
        gradient=(0.2, 0.35), shadow=(0.35, 0.55), blur=(1.0, 1.5), noise=(12.0, 16.0), speckle=1200,
        dust=150, hairs=5, jpeg_quality=30,
    ),
    # A phone held fairly square over a sheet on a desk, daylight.
    "photo_mild": SimOptions(
        photo=True, style="pencil", erasure_rate=0.03, megapixels=8.0, skew_deg=(0.0, 6.0), tilt_deg=(3.0, 10.0),
        fill=(0.72, 0.88), curl_mm=(0.0, 3.0), paper="random", colour_cast=0.05, exposure=(-0.3, 0.1),
        gradient=(0.05, 0.12), shadow=(0.08, 0.18), vignette=(0.1, 0.2), blur=0.7, sensor_noise=3.0,
        sharpen=0.4, clutter=(1, 3), jpeg_quality=88,
    ),
    # A quick low-resolution snapshot at an angle, turned any way, in poor indoor
    # light with a hand's shadow, shaken, noisy and compressed.
    "photo_hard": SimOptions(
        photo=True, style="mixed", pen="blue", erasure_rate=0.08, stray_marks=(3, 7), megapixels=(2.0, 4.0),
        random_turn=True, skew_deg=(0.0, 25.0), tilt_deg=(18.0, 28.0), fill=(0.65, 0.85), curl_mm=(4.0, 12.0),
        paper="any", colour_cast=0.14, exposure=(-0.7, 0.3), contrast=(0.7, 0.95), gradient=(0.15, 0.3),
        shadow=(0.35, 0.5), vignette=(0.3, 0.45), blur=(0.8, 1.3), shake_px=(2.0, 5.0), sensor_noise=(9.0, 13.0),
        sharpen=0.8, clutter=(3, 6), jpeg_quality=45,
    ),
    # What real sheets taught. A 200-dpi office scan of a sheet printed with the
    # option letter inside every bubble, filled in by hand as people do: pencil
    # and pen, scribbles, a dash running on into the next bubble, answers
    # erased or covered with correction fluid, a scanner's trailer after the JPEG.
    "scan_letters": SimOptions(
        dpi=200, style="paper", pen="black", erasure_rate=0.03, whiteout_rate=0.03, stray_marks=(0, 2),
        bubble_letters=(0.55, 0.85), skew_deg=(0.0, 2.0), scale=(0.98, 1.01), lid_border_mm=(0.0, 3.0),
        lid_grey=(225, 245), paper="random", blur=0.7, noise=3.0, speckle=60, dust=10, gradient=0.05,
        colour_cast=0.02, jpeg_quality=85, trailer_bytes=(2000, 6000),
    ),
    # A 300-dpi scan in black & white mode (two grey levels, lossless), letters in
    # the bubbles, marks in pen and firm pencil, one answer whited out now and then.
    "scan_bitonal": SimOptions(
        dpi=300, style="paper", pen="black", whiteout_rate=0.03, bubble_letters=(0.6, 0.9), skew_deg=(0.0, 1.5),
        scale=(0.99, 1.01), lid_border_mm=(0.0, 2.0), lid_grey=(235, 250), paper="random", blur=0.5, noise=2.0,
        speckle=30, dust=6, grey_levels=2, bitonal_threshold=(135, 165), jpeg_quality=None,
    ),
    # A 75-dpi colour scan (a web image of a sheet): bubbles a dozen pixels
    # across, letters inside them, pencil and pen.
    "scan_lowres": SimOptions(
        dpi=75, style="paper", pen="black", bubble_letters=(0.5, 0.8), skew_deg=(0.0, 1.5), scale=(0.99, 1.01),
        lid_border_mm=(0.0, 3.0), lid_grey=(225, 245), paper="random", blur=0.4, noise=2.0, gradient=0.04,
        jpeg_quality=80,
    ),
    # A form printed in a light orange ("dropout" ink), scanned in colour at
    # 100 dpi: outlines and letters faint in grey (Sandeep-1507's sheets).
    "scan_dropout": SimOptions(
        dpi=100, style="filled", print_ink="orange", bubble_letters=(0.5, 0.8), skew_deg=(0.0, 1.0),
        scale=(0.99, 1.01), lid_border_mm=(0.0, 2.0), lid_grey=(225, 245), paper="white", blur=0.5, noise=2.0,
        jpeg_quality=85,
    ),
    # A phone held sideways: the file stores the photo turned a quarter and an
    # EXIF tag that turns it back, with the phone's preview and maker data after
    # the JPEG's end marker.
    "photo_exif": SimOptions(
        photo=True, style="pencil", erasure_rate=0.03, megapixels=8.0, skew_deg=(0.0, 6.0), tilt_deg=(3.0, 10.0),
        fill=(0.72, 0.88), curl_mm=(0.0, 3.0), paper="random", colour_cast=0.05, exposure=(-0.3, 0.1),
        gradient=(0.05, 0.12), shadow=(0.08, 0.18), vignette=(0.1, 0.2), blur=0.7, sensor_noise=3.0,
        sharpen=0.4, clutter=(1, 3), jpeg_quality=88, exif_orientation=6, trailer_bytes=(20000, 60000),
    ),
}


@dataclass
class Simulated:
    """One simulated capture.

    ``image``: BGR uint8 as delivered (its size follows the capture, not the
    layout: other dpi, quarter turns swap width and height, photos have
    background around the page). ``truth``: JSON-ready dict with ``template``,
    ``page``, ``answers`` (every field of the page, normalised), ``exam``,
    ``student``, ``preset``, ``options``, ``params`` (values drawn for this sheet),
    ``styles`` (field -> style), ``bubble_styles`` (group -> {value: style}),
    ``erased`` (fields with an erased earlier mark), ``erased_values``,
    ``handwriting`` and ``geometry``: in image pixels (continuous: a pixel centre
    is at i + 0.5), ``page_corners_px`` (TL, TR, BR, BL corners of the paper),
    ``marks_px`` (registration-mark centres), ``qr_corners_px``, ``dpi`` (mean
    image pixels per page inch), ``image_size`` [w, h], and ``page_mm_to_image``,
    the 3x3 homography from page millimetres: exact for scans, the flat-page
    approximation for photos of curled paper (``curl_mm``).
    """

    image: np.ndarray
    truth: dict[str, Any]
    jpeg: bytes | None = field(default=None, repr=False)

    def encode_jpeg(self, quality: int | None = None) -> bytes:
        """JPEG bytes of ``image``. ``quality`` 1-100; ``None`` returns the very
        bytes the capture produced when it was JPEG-compressed, else quality 92."""
        if quality is None and self.jpeg is not None:
            return self.jpeg
        return _jpeg_bytes(self.image, 92 if quality is None else int(quality))

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write the image (format from the suffix: .jpg/.jpeg, .png, .tif...) and
        the truth as ``<path>.truth.json``. Returns both paths."""
        path = Path(path)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            path.write_bytes(self.encode_jpeg())
        else:
            ok, buf = cv2.imencode(path.suffix or ".png", self.image)
            if not ok:
                raise ValueError(f"cannot encode an image as {path.suffix!r}")
            path.write_bytes(buf.tobytes())
        truth_path = Path(str(path) + ".truth.json")
        truth_path.write_text(json.dumps(self.truth, indent=1) + "\n", encoding="utf-8")
        return path, truth_path


# ====================================================================== answers


def random_answers(template: Template | str, page: int = 1, rng: Any = None, *, blank_rate: float = 0.05,
                   multiple_rate: float = 0.03, student: str | None = None,
                   exam: str | None = None) -> dict[str, str]:
    """Plausible answers for every field on ``page`` of ``template``.

    ``rng``: ``None`` (fresh entropy), an int seed, a ``numpy.random.Generator``
    or a ``random.Random``. Each question is left blank with probability
    ``blank_rate``, gets two (sometimes three) options with probability
    ``multiple_rate`` (concatenated in printed order, e.g. ``"BD"``), else one
    option. Digit grids get a full-length number, or now and then a shorter one
    (trailing columns blank); ``student`` fixes their value instead. Choice
    fields (exam version) get one option; ``exam`` fixes it. Returns
    ``{field: value}``.
    """
    t = _template(template)
    r = _rng(rng)
    layout = page_layout(t, page, MM_PER_INCH)
    answers: dict[str, str] = {}
    digit_groups: dict[str, list[Group]] = {}
    for g in layout.groups:
        if g.kind == "question":
            u = r.random()
            opts = g.values
            if u < blank_rate:
                answers[g.field] = ""
            elif u < blank_rate + multiple_rate and len(opts) > 1:
                k = 3 if (len(opts) > 2 and r.random() < 0.2) else 2
                picked = sorted(r.choice(len(opts), size=k, replace=False))
                answers[g.field] = "".join(opts[i] for i in picked)
            else:
                answers[g.field] = opts[int(r.integers(len(opts)))]
        elif g.kind == "digit":
            digit_groups.setdefault(g.field, []).append(g)
        else:
            if exam is not None:
                if exam not in g.values:
                    raise ValueError(f"exam {exam!r} is not one of {g.field}'s options {list(g.values)}")
                answers[g.field] = exam
            else:
                answers[g.field] = g.values[int(r.integers(len(g.values)))]
    for name, groups in digit_groups.items():
        if student is not None:
            _tokens(student, groups[0].values, name)  # validates
            answers[name] = student
            continue
        n = len(groups)
        length = n if (n < 2 or r.random() < 0.85) else int(r.integers(max(1, n - 4), n))
        answers[name] = "".join(groups[k].values[int(r.integers(len(groups[k].values)))] for k in range(length))
    order = layout.fields()
    return {f: answers[f] for f in order}


# ====================================================================== simulate


def simulate_sheet(template: Template | str, answers: dict[str, str], *, page: int = 1, seed: int = 0,
                   preset: str | SimOptions = "clean", exam: str = "", student: str = "",
                   style: str | dict[str, str] | None = None, dpi: float | None = None,
                   printed: Any = None) -> Simulated:
    """Fill in ``page`` of ``template`` with ``answers`` and capture it.

    ``answers``: ``{field: value}`` as in the engine contract (question ``"B"``,
    several marks ``"BD"``, blank ``""``; digit grids the digits left to right;
    choice the option); fields left out are blank, unknown fields or values
    raise ``ValueError``. ``seed``: everything random derives from it.
    ``preset``: a ``PRESETS`` name or a ``SimOptions``. ``exam``/``student``:
    the ids printed in the QR code. ``style``: overrides the options' mark
    style, either one style for every bubble or ``{field: style}`` for the fields
    named (the rest keep the options' style). ``dpi``: overrides the options'
    scan resolution (ignored for photos, whose resolution follows from the
    megapixels and framing). ``printed``: another kind of sheet (an OMRChecker
    layout): a function ``dpi -> (grey page raster, PageLayout at that dpi)``
    that draws it; ``template`` then only gives the page size for the capture.
    Returns a ``Simulated``.
    """
    t = _template(template)
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        opts, preset_name = PRESETS[preset], preset
    else:
        opts, preset_name = preset, "custom"
    if isinstance(style, str):
        opts = dataclasses.replace(opts, style=style)
    if dpi is not None:
        opts = dataclasses.replace(opts, dpi=float(dpi))
    _check_style(opts.style)
    field_styles = dict(style) if isinstance(style, dict) else {}
    for s in field_styles.values():
        _check_style(s)
    _check_file_options(opts)

    seq = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF])
    # A sixth stream for what real paper and files add: the first five, and so
    # every sheet of the older options, stay what they were.
    r_marks, r_hand, r_geom, r_light, r_noise, r_paper = (np.random.default_rng(s) for s in seq.spawn(6))
    params: dict[str, Any] = {}

    # ---- where and at what resolution the page is drawn
    if opts.photo:
        cam = _photo_camera(t, opts, r_geom, params)
        work_dpi = cam["work_dpi"]
    else:
        cam = None
        work_dpi = float(opts.dpi)
    if printed is None:
        layout = page_layout(t, page, work_dpi)
        grey = render_page_image(t, page, work_dpi, exam=exam, student=student)
    else:
        grey, layout = printed(work_dpi)
    selected = _parse_answers(layout, answers)

    ink = _Ink(grey, work_dpi, r_marks, opts.pen)
    letters = _pick(r_paper, opts.bubble_letters)
    if letters > 0 and printed is None:  # a printed layout of another kind draws its own
        _print_letters(ink, layout, letters)
        params["bubble_letters"] = letters
    if opts.print_ink not in PRINT_INKS:
        raise ValueError(f"unknown print_ink {opts.print_ink!r}; choose from {', '.join(PRINT_INKS)}")
    if PRINT_INKS[opts.print_ink] is not None:
        ink.print_layer = ink.page.copy()
        params["print_ink"] = opts.print_ink

    # ---- the student's pencil work
    styles, bubble_styles, erased, whited = _draw_marks(ink, layout, selected, opts, field_styles, r_marks)
    hand: dict[str, Any] = {}
    if opts.handwriting:
        hand = _draw_handwriting(ink, t, page, layout, selected, r_hand)
    strays = _draw_stray_marks(ink, t, page, layout, _pick(r_hand, opts.stray_marks, integer=True), r_hand)

    # ---- capture
    if opts.photo:
        image, geometry = _capture_photo(ink, t, opts, cam, r_geom, r_light, r_noise, params)
    else:
        image, geometry = _capture_scan(ink, t, opts, r_geom, r_light, r_noise, params)
    if opts.grey_levels:
        threshold = _pick(r_paper, opts.bitonal_threshold)
        image = quantise_grey(image, int(opts.grey_levels), threshold)
        params.update(grey_levels=int(opts.grey_levels), bitonal_threshold=threshold)
    jpeg = None
    q = _pick(r_light, opts.jpeg_quality, integer=True) if opts.jpeg_quality is not None else None
    tail = _pick(r_paper, opts.trailer_bytes, integer=True)
    orientation = int(opts.exif_orientation)
    if q is None and (orientation != 1 or tail > 0):
        q = 92  # EXIF tags and trailers are JPEG matters
    if q is not None:
        params["jpeg_quality"] = q
        if orientation != 1:
            jpeg, image = encode_oriented(image, q, orientation)
            params["exif_orientation"] = orientation
        else:
            jpeg = _jpeg_bytes(image, q)
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if tail > 0:
            jpeg += trailer(image, tail, r_paper)
            params["trailer_bytes"] = tail

    truth = {
        "template": t.name,
        "page": page,
        "answers": _normalised(layout, selected),
        "exam": exam,
        "student": student,
        "seed": int(seed),
        "preset": preset_name,
        "options": opts.to_dict(),
        "params": _jsonable(params),
        "styles": styles,
        "bubble_styles": bubble_styles,
        "erased": sorted(erased, key=layout.fields().index),
        "erased_values": erased,
        "whited_out": whited,
        "handwriting": hand,
        "stray_marks": strays,
        "geometry": _jsonable(geometry | {"image_size": [int(image.shape[1]), int(image.shape[0])]}),
    }
    return Simulated(image=image, truth=truth, jpeg=jpeg)


# ====================================================================== helpers


def _template(template: Template | str) -> Template:
    return template if isinstance(template, Template) else load_template(template)


def _rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, _pyrandom.Random):
        return np.random.default_rng(rng.getrandbits(64))
    return np.random.default_rng(rng)


def _check_style(s: str) -> None:
    if s not in STYLES and s not in ("mixed", "paper"):
        raise ValueError(f"unknown mark style {s!r}; choose from {', '.join(STYLES)}, mixed, paper")


def _check_file_options(opts: SimOptions) -> None:
    if int(opts.exif_orientation) not in range(1, 9):
        raise ValueError(f"exif_orientation must be 1-8, not {opts.exif_orientation!r}")
    if int(opts.grey_levels) == 1 or int(opts.grey_levels) < 0 or int(opts.grey_levels) > 256:
        raise ValueError(f"grey_levels must be 0 (colour) or 2-256, not {opts.grey_levels!r}")


def _pick(rng: np.random.Generator, value: Any, integer: bool = False) -> Any:
    """A drawn value: numbers are returned as they are, ``(lo, hi)`` drawn uniformly."""
    if isinstance(value, (tuple, list)):
        lo, hi = float(value[0]), float(value[1])
        v = rng.uniform(lo, hi) if hi > lo else lo
    else:
        v = float(value)
    return int(round(v)) if integer else float(v)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        # Significant digits, not decimals: a homography's perspective terms are ~1e-7.
        return float(f"{float(obj):.10g}")
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, max(1, min(100, quality))])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def _tokens(value: str, labels: tuple[str, ...], name: str) -> list[str]:
    """Split ``value`` into option labels, longest label first (labels may be
    longer than one character)."""
    by_len = sorted(labels, key=len, reverse=True)
    out, i = [], 0
    while i < len(value):
        for lab in by_len:
            if value.startswith(lab, i):
                out.append(lab)
                i += len(lab)
                break
        else:
            raise ValueError(f"{name}: {value!r} is not made of the options {list(labels)}")
    return out


def _parse_answers(layout: PageLayout, answers: dict[str, str]) -> dict[str, set[str]]:
    """Group key -> the set of values marked in it."""
    fields = layout.fields()
    unknown = sorted(set(answers) - set(fields))
    if unknown:
        raise ValueError(f"answers name fields not on page {layout.page} of {layout.template}: {', '.join(unknown)}")
    by_field: dict[str, list[Group]] = {}
    for g in layout.groups:
        by_field.setdefault(g.field, []).append(g)
    selected: dict[str, set[str]] = {g.key: set() for g in layout.groups}
    for name, value in answers.items():
        value = "" if value is None else str(value)
        groups = by_field[name]
        if groups[0].kind == "digit":
            toks = _tokens(value, groups[0].values, name)
            if len(toks) > len(groups):
                raise ValueError(f"{name}: {value!r} has more than {len(groups)} digits")
            for g, tok in zip(groups, toks, strict=False):  # shorter numbers leave columns blank
                selected[g.key] = {tok}
        else:
            toks = _tokens(value, groups[0].values, name)
            if groups[0].kind == "choice" and len(toks) > 1:
                raise ValueError(f"{name}: {value!r} names more than one option")
            selected[groups[0].key] = set(toks)
    return selected


def _normalised(layout: PageLayout, selected: dict[str, set[str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for g in layout.groups:
        marked = "".join(v for v in g.values if v in selected[g.key])
        if g.kind == "digit":
            out[g.field] = out.get(g.field, "") + (marked or " ")
        else:
            out[g.field] = marked
    # Digit grids: trailing blank columns are dropped, as the reader reports them.
    return {k: (v.rstrip(" ") if k in {g.field for g in layout.groups if g.kind == "digit"} else v)
            for k, v in out.items()}


# ====================================================================== ink


def _line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A normalised line kernel (motion blur, pencil streaks)."""
    n = max(3, int(math.ceil(length)) | 1)
    k = np.zeros((n, n), np.float32)
    c = (n - 1) / 2
    a = math.radians(angle_deg)
    dx, dy = math.cos(a) * length / 2, -math.sin(a) * length / 2
    cv2.line(k, (int(round((c - dx) * 16)), int(round((c - dy) * 16))),
             (int(round((c + dx) * 16)), int(round((c + dy) * 16))), 1.0, 1, cv2.LINE_AA, 4)
    s = k.sum()
    if s <= 0:
        k[int(c), int(c)] = 1.0
        s = 1.0
    return k / s


class _Ink:
    """The page being filled in: reflectance (1 white, 0 black) at ``dpi``, plus a
    separate pen layer when the pen is coloured, so the capture can tint it."""

    def __init__(self, grey: np.ndarray, dpi: float, rng: np.random.Generator, pen: str):
        if pen not in ("graphite", "black", "blue"):
            raise ValueError(f"unknown pen {pen!r}; choose graphite, black or blue")
        self.page = grey.astype(np.float32) * (1.0 / 255.0)
        self.dpi = dpi
        self.px_mm = dpi / MM_PER_INCH
        self.rng = rng
        self.pen = pen
        self.pen_layer: np.ndarray | None = np.ones_like(self.page) if pen == "blue" else None
        # The printed form alone (reflectance), kept when it is printed in a colour.
        self.print_layer: np.ndarray | None = None
        # One student, one pencil: sheet-wide habits around which marks vary.
        self.pressure = rng.uniform(0.9, 1.08)
        self.stroke_mm = rng.uniform(0.45, 0.7)
        self.fill_angle = rng.normal(35.0, 20.0)
        self.care = rng.uniform(0.85, 1.0)

    @property
    def h(self) -> int:
        return self.page.shape[0]

    @property
    def w(self) -> int:
        return self.page.shape[1]

    def coverage(self, strokes: list[np.ndarray], thickness_px: float, pad: float = 0.0,
                 box: tuple[float, float, float, float] | None = None):
        """Anti-aliased coverage (0-1) of polylines of width ``thickness_px`` in a
        patch; returns ``(cov, x0, y0)`` or ``None`` when off the page."""
        pts = np.concatenate(strokes) if box is None else np.array([[box[0], box[1]], [box[2], box[3]]])
        m = thickness_px + 2 + pad
        x0 = max(0, int(math.floor(pts[:, 0].min() - m)))
        y0 = max(0, int(math.floor(pts[:, 1].min() - m)))
        x1 = min(self.w, int(math.ceil(pts[:, 0].max() + m)))
        y1 = min(self.h, int(math.ceil(pts[:, 1].max() + m)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        # Thin strokes at low resolution are drawn at twice the size so their
        # width is not rounded to a whole pixel.
        ss = 2 if thickness_px < 5 else 1
        patch = np.zeros(((y1 - y0) * ss, (x1 - x0) * ss), np.uint8)
        t = max(1, int(round(thickness_px * ss)))
        for s in strokes:
            # Continuous page coordinates (pixel centres at i + 0.5) to patch indices.
            p = np.round(((s - (x0, y0)) * ss - 0.5) * 16).astype(np.int32)
            cv2.polylines(patch, [p.reshape(-1, 1, 2)], False, 255, t, cv2.LINE_AA, 4)
        cov = patch.astype(np.float32) * (1.0 / 255.0)
        if ss > 1:
            cov = cv2.resize(cov, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        return cov, x0, y0

    def texture(self, shape: tuple[int, int], amount: float, angle_deg: float) -> np.ndarray:
        """Graphite texture: paper tooth (fine grain) plus streaks along the stroke."""
        if amount <= 0:
            return np.ones(shape, np.float32)
        n1 = self.rng.standard_normal(shape, dtype=np.float32)
        n2 = self.rng.standard_normal(shape, dtype=np.float32)
        grain = cv2.GaussianBlur(n1, (0, 0), max(0.5, 0.6 * self.dpi / 300))
        streak = cv2.filter2D(n2, -1, _line_kernel(max(3.0, 1.6 * self.px_mm), angle_deg))
        grain *= 1.0 / (grain.std() + 1e-6)
        streak *= 1.0 / (streak.std() + 1e-6)
        return np.clip(1.0 + amount * (0.7 * grain + 0.6 * streak), 0.15, 1.6).astype(np.float32)

    def deposit(self, cov: np.ndarray, x0: int, y0: int, density: float, tex: float = 0.2,
                angle: float = 0.0, pen: bool = False) -> None:
        """Darken the page under ``cov``: reflectance *= 1 - density * coverage * texture."""
        h, w = cov.shape
        d = cov * np.float32(density)
        if tex > 0:
            d *= self.texture((h, w), tex, angle)
        np.clip(d, 0.0, 0.97, out=d)
        if pen and self.pen_layer is not None:
            self.pen_layer[y0:y0 + h, x0:x0 + w] *= 1.0 - d
        else:
            self.page[y0:y0 + h, x0:x0 + w] *= 1.0 - d

    def lighten(self, amount: np.ndarray, x0: int, y0: int) -> None:
        """Rub away print: reflectance moves towards white by ``amount`` (0-1)."""
        h, w = amount.shape
        sl = self.page[y0:y0 + h, x0:x0 + w]
        sl += (1.0 - sl) * amount


def _catmull(points: np.ndarray, samples: int = 8) -> np.ndarray:
    """A smooth curve through ``points`` (Catmull-Rom)."""
    p = np.asarray(points, np.float64)
    if len(p) < 3:
        return p
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0, 1, samples, endpoint=False)[:, None]
    out = []
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    out.append(p[-1:])
    return np.vstack(out)


def _rot(a_deg: float) -> np.ndarray:
    a = math.radians(a_deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


# ---------------------------------------------------------------- bubble marks


def _nearest_pitch(layout: PageLayout) -> dict[tuple[float, float], float]:
    """Distance (px) from each bubble centre to its nearest neighbour's, which
    caps how large a ring drawn around it may be."""
    xy = np.array([(b.x, b.y) for b in layout.bubbles])
    out: dict[tuple[float, float], float] = {}
    for i, (x, y) in enumerate(xy):
        d = np.hypot(xy[:, 0] - x, xy[:, 1] - y)
        d[i] = np.inf
        out[(float(x), float(y))] = float(d.min()) if len(d) > 1 else 1e9
    return out


def _draw_marks(ink: _Ink, layout: PageLayout, selected: dict[str, set[str]], opts: SimOptions,
                field_styles: dict[str, str], rng: np.random.Generator):
    styles: dict[str, str] = {}
    bubble_styles: dict[str, dict[str, str]] = {}
    erased: dict[str, str] = {}
    pitch = _nearest_pitch(layout)
    questions = [g for g in layout.groups if g.kind == "question"]
    n_erase = int(round(opts.erasure_rate * len(questions)))
    erase_keys = set()
    if n_erase:
        idx = rng.choice(len(questions), size=min(n_erase, len(questions)), replace=False)
        erase_keys = {questions[int(i)].key for i in idx}
    whited: dict[str, str] = {}
    whiteout_keys = set()
    others = [g for g in questions if g.key not in erase_keys]
    n_white = min(int(round(opts.whiteout_rate * len(questions))), len(others))
    if n_white:
        idx = rng.choice(len(others), size=n_white, replace=False)
        whiteout_keys = {others[int(i)].key for i in idx}
    for g in layout.groups:
        base = field_styles.get(g.field, opts.style)
        if g.key in erase_keys:
            free = [b for b in g.bubbles if b.value not in selected[g.key]]
            if free:
                b = free[int(rng.integers(len(free)))]
                _erasure(ink, b.x, b.y, b.r, rng)
                erased[g.field] = b.value
        if g.key in whiteout_keys:
            free = [b for b in g.bubbles if b.value not in selected[g.key]]
            if free:
                b = free[int(rng.integers(len(free)))]
                _whiteout(ink, b.x, b.y, b.r, pitch.get((float(b.x), float(b.y)), 4 * b.r), rng)
                whited[g.field] = b.value
        used: dict[str, str] = {}
        for b in g.bubbles:
            if b.value not in selected[g.key]:
                continue
            if base == "mixed":
                s = MIXED_STYLES[int(rng.integers(len(MIXED_STYLES)))]
            elif base == "paper":
                s = PAPER_STYLES[int(rng.integers(len(PAPER_STYLES)))]
            else:
                s = base
            toward = None
            if s == "across":
                # The dash runs on into the nearest other bubble of the field.
                near = [o for o in g.bubbles if o is not b]
                if near:
                    o = min(near, key=lambda o: math.hypot(o.x - b.x, o.y - b.y))
                    toward = (o.x, o.y)
                else:
                    s = "filled"
            _mark(ink, s, b.x, b.y, b.r, pitch.get((float(b.x), float(b.y)), 4 * b.r), rng, toward)
            used[b.value] = s
        if used:
            bubble_styles[g.key] = used
            names = sorted(set(used.values()), key=STYLES.index)
            prev = styles.get(g.field)
            merged = sorted(set(names) | set(prev.split(",") if prev else []), key=STYLES.index)
            styles[g.field] = ",".join(merged)
    return styles, bubble_styles, erased, whited


def _fill_path(rng: np.random.Generator, cx: float, cy: float, ru: float, rv: float, angle: float,
               pitch: float, overshoot: float, overshoot_p: float) -> np.ndarray:
    """Back-and-forth strokes covering an ellipse (semi-axes ``ru`` along the
    strokes, ``rv`` across), as a hand fills a circle."""
    pts = []
    v = -rv + pitch * rng.uniform(0.2, 0.6)
    forward = True
    while v < rv - pitch * 0.25:
        half = ru * math.sqrt(max(0.0, 1.0 - (v / rv) ** 2))
        half = max(half, pitch * 0.4)
        a = -half * rng.uniform(0.85, 1.08)
        b = half * rng.uniform(0.85, 1.08)
        if rng.random() < overshoot_p:
            if rng.random() < 0.5:
                a -= overshoot * rng.uniform(0.4, 1.0)
            else:
                b += overshoot * rng.uniform(0.4, 1.0)
        if forward:
            pts += [(a, v), (b, v + pitch * rng.uniform(-0.15, 0.25))]
        else:
            pts += [(b, v), (a, v + pitch * rng.uniform(-0.15, 0.25))]
        forward = not forward
        v += pitch * rng.uniform(0.8, 1.15)
    p = np.array(pts) @ _rot(angle).T
    return p + (cx, cy)


def _mark(ink: _Ink, style: str, cx: float, cy: float, r: float, nearest: float,
          rng: np.random.Generator, toward: tuple[float, float] | None = None) -> None:
    """Draw one mark of ``style`` on the bubble centred at ``(cx, cy)``, radius ``r`` px.
    ``toward``: the centre of the bubble an ``across`` dash runs on into."""
    if style == "scribble":
        _scribble_mark(ink, cx, cy, r, rng)
        return
    if style == "across":
        _across_mark(ink, cx, cy, r, toward, rng)
        return
    pen = (ink.pen != "graphite" and style in PEN_STYLES) or style == "pen"
    if style == "pen":  # a ballpoint fill on a pencil sheet: black ink
        style = "filled"
    if pen:
        thick = ink.px_mm * rng.uniform(0.35, 0.5)
        dens, tex = rng.uniform(0.86, 0.93), 0.05
    else:
        thick = ink.px_mm * ink.stroke_mm * rng.uniform(0.9, 1.1)
        dens, tex = 0.0, 0.2
    angle = ink.fill_angle + rng.normal(0, 12)
    if style in ("filled", "pencil", "light", "half"):
        if style == "filled":
            d = rng.uniform(0.74, 0.88) if not pen else dens
            ext, off, passes, tex, over_p = rng.uniform(0.92, 1.05), 0.08, 2, max(tex, 0.1) if not pen else tex, 0.15
        elif style == "pencil":
            d = rng.uniform(0.45, 0.68)
            ext, off, passes, tex, over_p = rng.uniform(0.76, 1.02) * ink.care / 0.92, 0.16, int(rng.integers(1, 3)), 0.25, 0.35
        elif style == "light":
            d = rng.uniform(0.2, 0.32)
            ext, off, passes, tex, over_p = rng.uniform(0.82, 1.0), 0.12, 2, 0.3, 0.1
        else:  # half
            d = rng.uniform(0.55, 0.85)
            ext, off, passes, tex, over_p = rng.uniform(0.95, 1.05), 0.06, 2, 0.18, 0.1
        d *= ink.pressure
        ext = min(ext, 1.08)
        dx, dy = rng.normal(0, off * r / 1.6, 2).clip(-off * r, off * r)
        ru = r * ext * rng.uniform(0.95, 1.05)
        rv = r * ext * rng.uniform(0.95, 1.05)
        strokes = [_fill_path(rng, cx + dx, cy + dy, ru, rv, angle, thick * rng.uniform(0.65, 0.9),
                              0.45 * r, over_p)]
        for _ in range(passes - 1):
            strokes.append(_fill_path(rng, cx + dx, cy + dy, ru * 0.95, rv * 0.95, angle + rng.uniform(50, 110),
                                      thick * rng.uniform(0.8, 1.2), 0.3 * r, over_p * 0.5))
        covs = [ink.coverage([s], thick, box=(cx - 1.7 * r, cy - 1.7 * r, cx + 1.7 * r, cy + 1.7 * r))
                for s in strokes]
        if covs[0] is None:
            return
        _, x0, y0 = covs[0]
        # Passes add up like layers of graphite: 1 - (1-a)(1-b).
        cov = covs[0][0]
        for c in covs[1:]:
            cov = 1.0 - (1.0 - cov) * (1.0 - 0.85 * c[0])
        if style == "half":
            yy, xx = np.mgrid[0:cov.shape[0], 0:cov.shape[1]].astype(np.float32)
            a = rng.uniform(0, 2 * math.pi)
            nx, ny = math.cos(a), math.sin(a)
            dist = (xx + 0.5 + x0 - cx) * nx + (yy + 0.5 + y0 - cy) * ny - rng.uniform(-0.1, 0.1) * r
            cov = cov * np.clip(dist / max(1.0, thick * 0.4) + 0.5, 0, 1)
        ink.deposit(cov, x0, y0, d, tex, angle, pen)
        return
    if not pen:
        dens = rng.uniform(0.6, 0.82) * ink.pressure
        thick *= 0.8
    s = r * rng.uniform(0.85, 1.25)
    rot = _rot(rng.normal(0, 10))
    if style == "tick":
        ctrl = np.array([(-0.6, -0.05), (-0.3, 0.22), (-0.1, 0.5), (0.3, -0.1), (0.75, -0.75)])
        ctrl += rng.normal(0, 0.06, ctrl.shape)
        strokes = [_catmull(ctrl @ rot.T * s + (cx, cy), 6)]
    elif style == "cross":
        strokes = []
        for a, b in (((-0.65, -0.65), (0.65, 0.65)), ((0.65, -0.65), (-0.65, 0.65))):
            a_, b_ = np.array(a) * rng.uniform(0.85, 1.2), np.array(b) * rng.uniform(0.85, 1.2)
            mid = (a_ + b_) / 2 + rng.normal(0, 0.06, 2)
            strokes.append(_catmull(np.array([a_, mid, b_]) @ rot.T * s + (cx, cy), 6))
    else:  # circled: a freehand ring around the bubble, not filled
        ring = min(r * rng.uniform(1.22, 1.42), max(1.12 * r, nearest - 1.02 * r))
        start = rng.uniform(0, 2 * math.pi)
        turn = rng.uniform(1.04, 1.18) * 2 * math.pi
        t = np.linspace(start, start + turn, 40)
        wob = 1 + 0.05 * np.sin(t * rng.uniform(1.5, 3.0) + rng.uniform(0, 6)) + np.linspace(0, rng.uniform(-0.08, 0.08), 40)
        ex = rng.uniform(0.92, 1.08)
        strokes = [np.stack([cx + ring * ex * wob * np.cos(t), cy + ring / ex * wob * np.sin(t)], 1)]
        thick = ink.px_mm * rng.uniform(0.3, 0.45)
    res = ink.coverage(strokes, thick)
    if res is not None:
        ink.deposit(res[0], res[1], res[2], dens, 0.05 if pen else 0.22, angle, pen)


def _erasure(ink: _Ink, cx: float, cy: float, r: float, rng: np.random.Generator) -> None:
    """An answer marked, then rubbed out: the eraser lifts most graphite, smears
    the rest around, and takes some of the printed outline with it."""
    thick = ink.px_mm * ink.stroke_mm
    path = _fill_path(rng, cx, cy, r * rng.uniform(0.85, 1.0), r * rng.uniform(0.85, 1.0),
                      ink.fill_angle + rng.normal(0, 10), thick * 0.8, 0.3 * r, 0.2)
    res = ink.coverage([path], thick, box=(cx - 1.9 * r, cy - 1.9 * r, cx + 1.9 * r, cy + 1.9 * r))
    if res is None:
        return
    cov, x0, y0 = res
    rub = ink.fill_angle + 90 + rng.normal(0, 25)  # erasers go back and forth across the fill
    # The eraser's path: an elongated patch along the rubbing direction.
    area = cv2.filter2D(cov, -1, _line_kernel(1.3 * r, rub))
    area = np.clip(cv2.GaussianBlur(area, (0, 0), 0.15 * r) * 2.2, 0, 1)
    # Rubbing leaves uneven patches: here the strokes survive as ghosts, there a smudge.
    blotch = cv2.GaussianBlur(rng.standard_normal(cov.shape, dtype=np.float32), (0, 0), 0.2 * r)
    blotch = blotch / (blotch.std() + 1e-6)
    left = np.clip(0.35 + 0.35 * blotch, 0.0, 1.0)
    smear = cv2.GaussianBlur(cv2.filter2D(cov, -1, _line_kernel(0.8 * r, rub)), (0, 0), 0.1 * r)
    residue = (0.55 * cov + 0.45 * smear) * left
    # The printed outline loses toner where the eraser passed.
    worn = np.clip(0.55 + 0.3 * cv2.GaussianBlur(rng.standard_normal(cov.shape, dtype=np.float32), (0, 0),
                                                  0.12 * r) / 0.35, 0, 1)
    ink.lighten(area * worn * rng.uniform(0.35, 0.7), x0, y0)
    ink.deposit(residue, x0, y0, rng.uniform(0.14, 0.28), 0.35, rub)


def _stroke_ink(ink: _Ink, rng: np.random.Generator) -> tuple[float, float, float, bool]:
    """Width (px), density, texture and pen-ness of a stroke in the sheet's ink:
    a ballpoint when the sheet's pen is one, else firm pencil."""
    if ink.pen != "graphite":
        return ink.px_mm * rng.uniform(0.35, 0.5), rng.uniform(0.86, 0.93), 0.05, True
    return ink.px_mm * ink.stroke_mm * rng.uniform(0.9, 1.1), rng.uniform(0.6, 0.8) * ink.pressure, 0.22, False


def _scribble_mark(ink: _Ink, cx: float, cy: float, r: float, rng: np.random.Generator) -> None:
    """A quick loose zigzag over the bubble: strokes far apart, overshooting, paper
    showing between them, as someone in a hurry marks an answer."""
    thick, dens, tex, pen = _stroke_ink(ink, rng)
    angle = ink.fill_angle + rng.normal(0, 30)
    ext = rng.uniform(0.8, 1.1)
    strokes = [_fill_path(rng, cx + rng.normal(0, 0.08 * r), cy + rng.normal(0, 0.08 * r), r * ext, r * ext, angle,
                          thick * rng.uniform(1.8, 2.8), 0.5 * r, 0.5)]
    if rng.random() < 0.6:  # a second, shorter pass across the first
        strokes.append(_fill_path(rng, cx, cy, r * ext * 0.8, r * ext * 0.8, angle + rng.uniform(60, 120),
                                  thick * rng.uniform(2.2, 3.2), 0.3 * r, 0.3))
    res = ink.coverage(strokes, thick, box=(cx - 1.7 * r, cy - 1.7 * r, cx + 1.7 * r, cy + 1.7 * r))
    if res is not None:
        ink.deposit(res[0], res[1], res[2], dens, tex, angle, pen)


def _across_mark(ink: _Ink, cx: float, cy: float, r: float, toward: tuple[float, float] | None,
                 rng: np.random.Generator) -> None:
    """A bold dash through the bubble that runs on into its neighbour at
    ``toward``, stopping somewhere before the neighbour's centre."""
    thick, dens, tex, pen = _stroke_ink(ink, rng)
    tx, ty = toward if toward is not None else (cx + 2.5 * r, cy)
    d = math.hypot(tx - cx, ty - cy) or 1.0
    ux, uy = (tx - cx) / d, (ty - cy) / d
    start = (cx - ux * r * rng.uniform(0.85, 1.05), cy - uy * r * rng.uniform(0.85, 1.05))
    reach = rng.uniform(0.1, 0.6) * r  # short of the neighbour's centre
    end = (tx - ux * reach, ty - uy * reach)
    width = r * rng.uniform(0.9, 1.2)
    # Drawn as a few overlapping strokes, as a bold dash is, with a slight slope.
    strokes = []
    for k in np.linspace(-0.5, 0.5, max(2, int(width / max(thick, 1.0)) + 1)):
        off = k * (width - thick)
        wob = rng.normal(0, 0.04 * r, 2)
        strokes.append(np.array([(start[0] - uy * off + wob[0], start[1] + ux * off + wob[1]),
                                 (end[0] - uy * off + wob[1], end[1] + ux * off + wob[0])]))
    res = ink.coverage(strokes, thick * 1.3)
    if res is not None:
        ink.deposit(np.clip(res[0], 0, 1), res[1], res[2], dens, tex, math.degrees(math.atan2(-uy, ux)), pen)


def _whiteout(ink: _Ink, cx: float, cy: float, r: float, nearest: float, rng: np.random.Generator) -> None:
    """An answer marked, then covered with correction fluid: an opaque white blob
    over the mark and the printed outline, a faint ghost of the ink where the
    coat is thin, and the dried rim of the blob."""
    _mark(ink, "pen" if ink.pen != "graphite" else "filled", cx, cy, r, nearest, rng)
    radius = min(r * rng.uniform(1.15, 1.45), max(1.1 * r, nearest - 1.15 * r))
    m = int(math.ceil(radius * 1.3)) + 2
    x0, y0 = max(0, int(cx) - m), max(0, int(cy) - m)
    x1, y1 = min(ink.w, int(cx) + m + 1), min(ink.h, int(cy) + m + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    theta = np.arctan2(dy, dx)
    ratio = rng.uniform(0.85, 1.15)
    edge = radius * (1 + 0.07 * np.sin(3 * theta + rng.uniform(0, 6)) + 0.04 * np.sin(5 * theta + rng.uniform(0, 6)))
    dist = np.hypot(dx * ratio, dy / ratio)
    soft = max(0.6, 0.05 * radius)
    inside = np.clip((edge - dist) / soft + 0.5, 0, 1).astype(np.float32)
    coat = inside * np.float32(rng.uniform(0.9, 0.99))  # how opaque the coat is
    white = np.float32(rng.uniform(0.94, 0.99))  # correction fluid is a little less white than paper
    sl = ink.page[y0:y1, x0:x1]
    sl *= 1.0 - coat
    sl += white * coat
    if ink.pen_layer is not None:
        pl = ink.pen_layer[y0:y1, x0:x1]
        pl += (1.0 - pl) * coat
    rim = np.exp(-(((dist - edge) / max(0.8, 0.06 * radius)) ** 2)).astype(np.float32)
    ink.deposit(rim, x0, y0, rng.uniform(0.12, 0.25), 0.0)


def _print_letters(ink: _Ink, layout: PageLayout, darkness: float) -> None:
    """Print each bubble's value (a letter or digit) inside it, as many sheets
    are printed: upright, centred, about half the bubble high, in the outline's
    ink at ``darkness``. Wide letters (M, W) hold more ink than narrow ones (I)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    ss = 4  # drawn at four times the size, then averaged down: anti-aliased at any dpi
    cache: dict[tuple[str, int], np.ndarray] = {}
    for b in layout.bubbles:
        text = b.value
        if not text or len(text) > 2:
            continue
        key = (text, int(round(b.r * 8)))
        cov = cache.get(key)
        if cov is None:
            (tw, th), _ = cv2.getTextSize(text, font, 1.0, 1)
            cap = 0.95 * b.r * ss  # cap height, like the printed letters of real sheets
            scale = min(cap / th, 1.25 * b.r * ss / tw)
            weight = max(1, int(round(0.16 * b.r * ss)))
            (tw, th), base = cv2.getTextSize(text, font, scale, weight)
            size = int(math.ceil(2 * b.r)) + 2
            canvas = np.zeros((size * ss, size * ss), np.uint8)
            org = (int(round(size * ss / 2 - tw / 2)), int(round(size * ss / 2 + th / 2)))
            cv2.putText(canvas, text, org, font, scale, 255, weight, cv2.LINE_AA)
            cov = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
            cache[key] = cov
        size = cov.shape[0]
        x0 = int(round(b.x - size / 2))
        y0 = int(round(b.y - size / 2))
        if x0 < 0 or y0 < 0 or x0 + size > ink.w or y0 + size > ink.h:
            continue
        ink.deposit(cov, x0, y0, darkness, 0.0)


# ---------------------------------------------------------------- handwriting

# Digits as strokes in a unit box (x right, y down): ("c", points) smooth curve,
# ("s", points) straight segments with sharp corners.
_DIGITS: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {
    "0": [("c", [(0.55, 0.0), (0.15, 0.18), (0.05, 0.55), (0.2, 0.9), (0.55, 1.0), (0.88, 0.8), (0.95, 0.4),
                 (0.78, 0.08), (0.5, 0.02)])],
    "1": [("s", [(0.22, 0.22), (0.58, 0.0), (0.56, 1.0)])],
    "2": [("c", [(0.1, 0.25), (0.35, 0.02), (0.72, 0.03), (0.88, 0.25), (0.75, 0.5), (0.4, 0.76), (0.08, 1.0)]),
          ("s", [(0.08, 1.0), (0.95, 0.97)])],
    "3": [("c", [(0.12, 0.12), (0.45, 0.0), (0.82, 0.12), (0.8, 0.36), (0.42, 0.48), (0.85, 0.62), (0.9, 0.85),
                 (0.5, 1.0), (0.08, 0.88)])],
    "4": [("s", [(0.62, 0.0), (0.05, 0.68), (0.95, 0.68)]), ("s", [(0.7, 0.3), (0.68, 1.0)])],
    "5": [("s", [(0.88, 0.0), (0.22, 0.02), (0.15, 0.45)]),
          ("c", [(0.15, 0.45), (0.5, 0.34), (0.86, 0.52), (0.86, 0.82), (0.5, 1.0), (0.1, 0.9)])],
    "6": [("c", [(0.8, 0.04), (0.45, 0.06), (0.15, 0.45), (0.12, 0.8), (0.45, 1.0), (0.82, 0.84), (0.8, 0.56),
                 (0.45, 0.47), (0.14, 0.66)])],
    "7": [("s", [(0.06, 0.03), (0.94, 0.0), (0.36, 1.0)])],
    "8": [("c", [(0.5, 0.47), (0.16, 0.28), (0.22, 0.04), (0.52, 0.0), (0.8, 0.08), (0.8, 0.3), (0.5, 0.47),
                 (0.14, 0.7), (0.2, 0.95), (0.52, 1.0), (0.84, 0.9), (0.86, 0.68), (0.5, 0.47)])],
    "9": [("c", [(0.86, 0.3), (0.55, 0.48), (0.18, 0.38), (0.2, 0.08), (0.52, 0.0), (0.84, 0.12), (0.86, 0.32)]),
          ("s", [(0.86, 0.3), (0.8, 1.0)])],
}


def _glyph(ch: str, rng: np.random.Generator, x: float, y: float, w: float, h: float, slant: float) -> list[np.ndarray]:
    """Strokes of one hand-written character in the box ``(x, y, w, h)`` px."""
    spec = _DIGITS.get(ch)
    if spec is None:  # a letter in a letter grid: an unreadable squiggle of the right size
        spec = [("c", [(0.1, 0.9), (0.3, 0.1), (0.55, 0.9), (0.8, 0.1), (0.9, 0.5)])]
    strokes = []
    wob = rng.normal(0, 0.035, 2)
    for kind, pts in spec:
        p = np.array(pts) + wob + rng.normal(0, 0.04, (len(pts), 2))
        if kind == "c":
            p = _catmull(p, 6)
        else:
            # Straight strokes still wander a little: densify and jitter.
            p = np.vstack([np.linspace(p[i], p[i + 1], 5, endpoint=False) for i in range(len(p) - 1)] + [p[-1:]])
            p += rng.normal(0, 0.008, p.shape)
        px = x + (p[:, 0] + slant * (1 - p[:, 1])) * w
        py = y + p[:, 1] * h
        strokes.append(np.stack([px, py], 1))
    return strokes


def _write_in_boxes(block: DigitBlock, r_mm: float) -> tuple[float, float, float]:
    """Left edge, top and height (mm) of a digit grid's write-in boxes, as the
    printed sheet draws them above the grid's top row."""
    box_h = max(4.5, min(6.5, block.column_pitch * 1.1))
    top = block.y - r_mm - 1.2 - box_h
    return block.x - block.column_pitch / 2, top, box_h


# Joined-up letters as paths in x-height units (x right, y up from the baseline
# is negative), each starting and ending on the baseline so they chain into a word.
_CURSIVE: dict[str, list[tuple[float, float]]] = {
    "e": [(0, 0), (0.45, -0.45), (0.55, -0.85), (0.3, -0.95), (0.15, -0.55), (0.35, -0.05), (0.75, -0.15)],
    "l": [(0, 0), (0.4, -1.2), (0.55, -2.1), (0.35, -2.3), (0.2, -1.7), (0.25, -0.4), (0.4, 0), (0.7, -0.15)],
    "n": [(0, 0), (0.12, -0.9), (0.12, 0), (0.28, -0.8), (0.55, -0.95), (0.65, -0.5), (0.65, 0), (0.85, -0.15)],
    "o": [(0, 0), (0.15, -0.7), (0.4, -0.95), (0.15, -0.6), (0.3, -0.02), (0.6, -0.4), (0.45, -0.95),
          (0.8, -0.85)],
    "a": [(0, 0), (0.6, -0.85), (0.2, -0.9), (0.05, -0.4), (0.3, -0.02), (0.6, -0.5), (0.62, -0.95), (0.6, -0.1),
          (0.85, -0.12)],
    "i": [(0, 0), (0.25, -0.9), (0.28, -0.05), (0.5, -0.15)],
    "u": [(0, 0), (0.1, -0.9), (0.12, -0.15), (0.35, -0.02), (0.55, -0.9), (0.55, -0.05), (0.78, -0.15)],
    "r": [(0, 0), (0.2, -0.9), (0.38, -0.75), (0.6, -0.9), (0.55, -0.05), (0.75, -0.12)],
    "t": [(0, 0), (0.3, -1.7), (0.3, -0.1), (0.55, -0.05), (0.7, -0.2)],
    "g": [(0, 0), (0.6, -0.85), (0.2, -0.9), (0.05, -0.4), (0.3, -0.05), (0.6, -0.5), (0.62, -0.95), (0.6, 0.8),
          (0.3, 1.1), (0.15, 0.7), (0.8, -0.05)],
    "s": [(0, 0), (0.35, -0.95), (0.5, -0.35), (0.3, -0.02), (0.1, -0.15), (0.6, -0.1)],
}
_CAPITALS = [
    [(0, 0), (0.15, -0.2), (0.6, -2.3), (0.75, -2.2), (0.7, -0.1), (0.75, -1.1), (0.2, -1.0), (1.0, -0.1)],
    [(0.2, -2.1), (0.35, -2.3), (0.3, -0.1), (0.2, -2.2), (1.0, -1.8), (0.4, -1.1), (1.05, -0.5), (0.3, 0),
     (1.2, -0.1)],
    [(0, -1.7), (0.6, -2.3), (0.35, -1.2), (0.1, -0.1), (0.9, 0), (1.1, -0.15)],
    [(0.1, -2.2), (0.2, 0), (0.35, -2.3), (0.8, -0.7), (1.0, -2.3), (1.0, -0.05), (1.2, -0.15)],
]
_COMMON = "eeennaaiioorrllttusg"


def _scribble(rng: np.random.Generator, x: float, baseline: float, xh: float, letters: int,
              slant: float) -> tuple[list[np.ndarray], float]:
    """A hand-written word: a capital and ``letters`` joined lower-case letters of
    x-height ``xh`` px, slanted by ``slant``. Returns the strokes and the x where
    the word ends."""
    pts: list[tuple[float, float]] = []
    dots: list[np.ndarray] = []
    cx = 0.0
    for i in range(letters + 1):
        if i == 0:
            shape = _CAPITALS[int(rng.integers(len(_CAPITALS)))]
        else:
            ch = _COMMON[int(rng.integers(len(_COMMON)))]
            shape = _CURSIVE[ch]
            if ch in "it":
                stem = shape[2] if ch == "i" else shape[1]
                if ch == "i":
                    dots.append(np.array([(cx + stem[0] + 0.05, -1.45), (cx + stem[0] + 0.1, -1.4)]))
                else:
                    dots.append(np.array([(cx + stem[0] - 0.3, -1.05), (cx + stem[0] + 0.35, -1.1)]))
        width = max(p[0] for p in shape)
        w_scale = rng.uniform(0.85, 1.2)
        for j, (px_, py_) in enumerate(shape):
            if pts and j == 0:
                continue  # letters join: the previous one ended where this one starts
            pts.append((cx + px_ * w_scale, py_ * rng.uniform(0.9, 1.1)))
        cx += width * w_scale
    path = np.array(pts) + rng.normal(0, 0.045, (len(pts), 2))
    path = _catmull(path, 6)
    strokes = [path] + dots

    def place(p: np.ndarray) -> np.ndarray:
        # Italic slant: higher points lean right.
        return np.stack([x + (p[:, 0] - slant * p[:, 1]) * xh, baseline + p[:, 1] * xh], 1)

    return [place(p) for p in strokes], x + cx * xh


def _draw_handwriting(ink: _Ink, t: Template, page: int, layout: PageLayout, selected: dict[str, set[str]],
                      rng: np.random.Generator) -> dict[str, Any]:
    """The student number written in its boxes and a name scribbled on the line."""
    out: dict[str, Any] = {}
    px = ink.px_mm
    r_mm = t.bubble_diameter / 2
    dens = rng.uniform(0.55, 0.85)
    thick = px * rng.uniform(0.35, 0.5)
    slant = rng.uniform(-0.05, 0.25)
    pen = ink.pen != "graphite"
    for block in t.digit_grids:
        if block.page != page or not block.write_in_boxes:
            continue
        left, top, box_h = _write_in_boxes(block, r_mm)
        chars = []
        for k in range(block.digits):
            vals = selected.get(f"{block.name}[{k}]") or set()
            ch = next(iter(vals)) if len(vals) == 1 else ""
            chars.append(ch)
            if not ch:
                continue
            gh = box_h * rng.uniform(0.55, 0.75) * px
            gw = gh * rng.uniform(0.5, 0.65)
            gx = (left + (k + 0.5) * block.column_pitch) * px - gw / 2 + rng.normal(0, 0.25) * px
            gy = (top + box_h / 2) * px - gh / 2 + rng.normal(0, 0.3) * px
            strokes = _glyph(ch, rng, gx, gy, gw, gh, slant)
            res = ink.coverage(strokes, thick)
            if res is not None:
                ink.deposit(res[0], res[1], res[2], dens * rng.uniform(0.9, 1.1), 0.05 if pen else 0.2, 60, pen)
        out[block.name] = "".join(chars).rstrip()
    for tb in t.texts:
        if tb.page != page or "Name:" not in tb.text or "_" not in tb.text:
            continue
        prefix = tb.text[:tb.text.index("_")]
        run = len(tb.text[len(prefix):]) - len(tb.text[len(prefix):].lstrip("_"))
        x0 = tb.x + stringWidth(prefix, "Helvetica-Bold" if tb.bold else "Helvetica", tb.size) * MM_PER_INCH / 72
        length = stringWidth("_" * run, "Helvetica", tb.size) * MM_PER_INCH / 72
        xh = rng.uniform(1.8, 2.6) * px
        baseline = (tb.y - rng.uniform(0.4, 0.9)) * px
        x = (x0 + rng.uniform(1.0, 4.0)) * px
        stop = (x0 + length) * px
        words = 0
        while words < 2:
            strokes, end = _scribble(rng, x, baseline + rng.normal(0, 0.1 * xh), xh,
                                     int(rng.integers(3, 8)), slant)
            if end > stop and words:
                break
            res = ink.coverage(strokes, thick * 0.85)
            if res is not None:
                ink.deposit(res[0], res[1], res[2], dens, 0.05 if pen else 0.2, 30, pen)
            x = end + xh * rng.uniform(1.0, 1.8)
            words += 1
        out["name"] = words > 0
    return out


def _keep_outs_mm(t: Template) -> list[tuple[float, float, float, float]]:
    m = 3.0
    boxes = [(k.x - k.size / 2 - m, k.y - k.size / 2 - m, k.x + k.size / 2 + m, k.y + k.size / 2 + m)
             for k in t.marks]
    if t.key.w:
        boxes.append((t.key.x - m, t.key.y - m, t.key.x + t.key.w + m, t.key.y + t.key.h + m))
    if t.qr.w:
        boxes.append((t.qr.x - m, t.qr.y - m, t.qr.x + t.qr.w + m, t.qr.y + t.qr.h + m))
    return boxes


def _draw_stray_marks(ink: _Ink, t: Template, page: int, layout: PageLayout, count: int,
                      rng: np.random.Generator) -> int:
    """Pencil dots, dashes and doodles where a student leaves them, never touching
    a bubble, a registration mark or the QR code."""
    if count <= 0:
        return 0
    px = ink.px_mm
    centres = np.array([(b.x, b.y) for b in layout.bubbles]) / px
    r_mm = t.bubble_diameter / 2
    keep = _keep_outs_mm(t)
    drawn = 0
    for _ in range(count * 30):
        if drawn >= count:
            break
        x, y = rng.uniform(10, t.page_width - 10), rng.uniform(10, t.page_height - 10)
        kind = rng.random()
        if kind < 0.35:
            pts = np.array([(x, y), (x + 0.2, y + 0.1)])
            width = rng.uniform(0.5, 1.0)
        elif kind < 0.8:
            ln = rng.uniform(2.0, 6.0)
            a = rng.uniform(0, math.pi)
            pts = np.array([(x, y), (x + ln * math.cos(a), y + ln * math.sin(a))])
            width = rng.uniform(0.3, 0.55)
        else:
            pts = _catmull(np.array([(x, y)]) + rng.normal(0, 1.5, (5, 2)), 5)
            width = rng.uniform(0.3, 0.5)
        probe = np.vstack([pts, (pts[0] + pts[-1]) / 2])
        if len(centres) and np.min(np.hypot(*(probe[:, None, :] - centres[None]).transpose(2, 0, 1))) < r_mm + 1.5:
            continue
        if any(bx0 <= p[0] <= bx1 and by0 <= p[1] <= by1 for p in probe for bx0, by0, bx1, by1 in keep):
            continue
        res = ink.coverage([pts * px], width * px)
        if res is not None:
            ink.deposit(res[0], res[1], res[2], rng.uniform(0.3, 0.7), 0.25, rng.uniform(0, 180))
            drawn += 1
    return drawn


# ====================================================================== capture
#
# The capture works on one float32 plane per colour channel (0-255) and uses
# OpenCV operations throughout: a 12-megapixel photo is 36 million samples, and
# numpy broadcasting or its Gaussian generator would dominate the run time.


def _paper_tint(opts: SimOptions, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    p = opts.paper
    if isinstance(p, str):
        if p == "random":
            p = LIGHT_PAPERS[int(rng.integers(len(LIGHT_PAPERS)))]
        elif p == "any":
            names = list(PAPERS)
            p = names[int(rng.integers(len(names)))]
        if p not in PAPERS:
            raise ValueError(f"unknown paper {p!r}; choose from {', '.join(PAPERS)}, random, any")
        return p, np.array(PAPERS[p], np.float32)
    return "custom", np.array(p, np.float32)


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise (about ``cells`` bumps across x and y), roughly unit std."""
    g = rng.standard_normal((cells[1] + 2, cells[0] + 2)).astype(np.float32)
    return cv2.resize(g, size, interpolation=cv2.INTER_CUBIC)


def _cv_seed(rng: np.random.Generator) -> None:
    # OpenCV's generator is per thread; seeding it from the sheet's stream right
    # before use keeps results reproducible.
    cv2.setRNGSeed(int(rng.integers(1, 2**31 - 1)))


def _gauss(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    out = np.empty(shape, np.float32)
    _cv_seed(rng)
    cv2.randn(out, 0.0, 1.0)
    return out


def _light_field(rng: np.random.Generator, w: int, h: int, gradient: float, shadow: float,
                 quad: np.ndarray, photo: bool) -> tuple[np.ndarray, np.ndarray]:
    """Illumination (multiplier, 1 = full light) at low resolution ``w`` x ``h``,
    and the shadow's own map (for its colour). ``quad``: page corners at that scale."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    ramp = (xx / w - 0.5) * math.cos(a) + (yy / h - 0.5) * math.sin(a)
    ramp = (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
    light = 1.0 - gradient * (0.75 * ramp + 0.25 * (0.5 + 0.25 * _smooth_noise(rng, (w, h), (3, 4))))
    shade = np.zeros((h, w), np.float32)
    if shadow > 0:
        if photo:
            # A hand or the phone between the lamp and the page: a big soft blob
            # coming in from one side and crossing part of the page.
            cxq, cyq = quad.mean(0)
            side = rng.uniform(0, 2 * math.pi)
            span = float(np.ptp(quad[:, 0]) + np.ptp(quad[:, 1])) / 2
            d = span * rng.uniform(0.45, 0.7)
            ex, ey = cxq + math.cos(side) * d, cyq + math.sin(side) * d
            axes = (int(span * rng.uniform(0.4, 0.6)), int(span * rng.uniform(0.22, 0.35)))
            cv2.ellipse(shade, (int(ex), int(ey)), axes, math.degrees(side) + 90 + rng.normal(0, 20), 0, 360, 1.0, -1)
            blur = span * rng.uniform(0.05, 0.1)
        else:
            # A page not pressed flat (a fold, the lid not closed): a dark band
            # fading in from one page edge.
            k = int(rng.integers(4))
            edge = [quad[0], quad[1], quad[2], quad[3], quad[0]]
            p0, p1 = edge[k], edge[k + 1]
            inward = quad.mean(0) - (p0 + p1) / 2
            depth = rng.uniform(0.1, 0.22)
            poly = np.array([p0 - inward * 0.2, p1 - inward * 0.2, p1 + inward * depth * 2, p0 + inward * depth * 2])
            cv2.fillConvexPoly(shade, poly.astype(np.int32), 1.0)
            blur = float(np.hypot(*inward)) * depth * 0.6
        shade = cv2.GaussianBlur(shade, (0, 0), max(1.0, blur))
        shade *= np.float32(shadow / max(1e-6, float(shade.max())))
        light *= 1.0 - shade
    return light.astype(np.float32), shade


def _tone(rng: np.random.Generator, opts: SimOptions, params: dict, warm: bool) -> tuple[np.ndarray, float]:
    """Per-channel gains (colour cast and exposure) and contrast for the image."""
    ev = _pick(rng, opts.exposure)
    contrast = _pick(rng, opts.contrast)
    cast = _pick(rng, opts.colour_cast)
    gains = 1.0 + rng.uniform(-cast, cast, 3)
    if warm and cast > 0:
        # Indoor light is warm: less blue, more red, more often than not.
        gains += np.array([-cast, 0.0, cast * 0.5]) * rng.uniform(0, 1)
    gains = gains / gains.max() * (2.0 ** ev)
    params.update(exposure_ev=ev, contrast=contrast, channel_gains=gains.tolist())
    return gains, contrast


def _dirt(img: np.ndarray, rng: np.random.Generator, opts: SimOptions, dpi: float, params: dict,
          quad: np.ndarray, scale: float) -> None:
    """Toner specks on the page, dust and hairs on the glass, drawn on the final
    8-bit image (OpenCV anti-aliases only 8-bit drawing). ``scale`` dims them
    with the exposure so a dark scan does not get bright dust."""
    h, w = img.shape[:2]
    s = dpi / 300.0
    n_speck = _pick(rng, opts.speckle, integer=True)
    n_dust = _pick(rng, opts.dust, integer=True)
    n_hair = _pick(rng, opts.hairs, integer=True)
    params.update(speckle=n_speck, dust=n_dust, hairs=n_hair)
    x0, y0 = np.clip(quad.min(0), 0, None)
    x1, y1 = np.minimum(quad.max(0), (w, h))

    def grey(lo: float, hi: float) -> tuple[float, float, float]:
        g = float(rng.uniform(lo, hi)) * scale
        return (g, g, g)

    for _ in range(n_speck):
        c = (int(rng.uniform(x0, x1) * 16), int(rng.uniform(y0, y1) * 16))
        cv2.circle(img, c, int(max(0.5, rng.exponential(0.7) * s) * 16), grey(20, 140), -1, cv2.LINE_AA, 4)
    for _ in range(n_dust):
        c = (int(rng.uniform(0, w) * 16), int(rng.uniform(0, h) * 16))
        rad = max(0.6, rng.exponential(1.4) * s)
        axes = (int(rad * 16), int(rad * rng.uniform(0.5, 1.0) * 16))
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, grey(30, 170), -1, cv2.LINE_AA, 4)
    for _ in range(n_hair):
        length = rng.uniform(4, 18) * dpi / MM_PER_INCH
        start = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        ang = rng.uniform(0, 2 * math.pi)
        tt = np.linspace(0, 1, 24)
        a = ang + rng.normal(0, 0.8) * tt + 0.3 * np.sin(tt * rng.uniform(3, 9))
        pts = start + np.cumsum(np.stack([np.cos(a), np.sin(a)], 1) * (length / len(tt)), 0)
        cv2.polylines(img, [np.round(pts * 16).astype(np.int32).reshape(-1, 1, 2)], False, grey(20, 90),
                      max(1, int(round(rng.uniform(0.6, 1.4) * s))), cv2.LINE_AA, 4)


def _to_uint8(plane: np.ndarray) -> np.ndarray:
    cv2.threshold(plane, 0.0, 0.0, cv2.THRESH_TOZERO, dst=plane)  # convertScaleAbs would mirror negatives
    return cv2.convertScaleAbs(plane)


def _to_index(H: np.ndarray) -> np.ndarray:
    """A homography between continuous coordinates (pixel centres at i + 0.5) as
    one between pixel indices, the convention OpenCV warps use."""
    a = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    b = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    return b @ H @ a


# Blue ballpoint ink: how strongly each channel (B, G, R) sees the pen's density.
_BLUE_INK = (0.3, 0.95, 1.25)


def _page_channel(page: np.ndarray, pen: np.ndarray | None, c: int, prn: np.ndarray | None = None,
                 absorb: tuple[float, float, float] | None = None) -> np.ndarray:
    """Channel ``c`` of the page: a blue pen's strokes (``pen``) tinted, and a
    form printed in a colour (``prn``, the print alone, absorbing ``absorb``
    of each channel) seen in that colour instead of black."""
    if pen is not None:
        page = cv2.multiply(page, cv2.pow(cv2.max(pen, 1e-3), _BLUE_INK[c]))
    if prn is not None and absorb is not None:
        # page = print x marks: divide the black print out, put the coloured one in.
        seen = np.float32(1.0) - (np.float32(1.0) - prn) * np.float32(absorb[c])
        page = page * (seen / np.maximum(prn, np.float32(0.02)))
    return page


def _capture_scan(ink: _Ink, t: Template, opts: SimOptions, rg: np.random.Generator, rl: np.random.Generator,
                  rn: np.random.Generator, params: dict) -> tuple[np.ndarray, dict]:
    ph, pw = ink.page.shape
    dpi = ink.dpi
    px = dpi / MM_PER_INCH
    turn = int(rg.integers(4)) * 90 if opts.random_turn else 0
    skew = _pick(rg, opts.skew_deg) * (1 if rg.random() < 0.5 else -1)
    angle = float(opts.rotation_deg) + turn + skew
    scale = _pick(rg, opts.scale)
    persp = _pick(rg, opts.perspective)
    corners = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float64)
    # Counter-clockwise on screen (y down): (x, y) -> (x cos + y sin, -x sin + y cos).
    a = math.radians(angle)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    q = (corners - (pw / 2, ph / 2)) @ rot.T * scale
    if persp > 0:
        q += rg.uniform(-1, 1, (4, 2)) * persp * scale * max(pw, ph)
    q = np.where(np.abs(q - np.round(q)) < 1e-9, np.round(q), q)  # keep quarter turns exact
    lo, hi = q.min(0), q.max(0)
    margins = np.array([_pick(rg, opts.lid_border_mm) * rg.uniform(0.3, 1.0) for _ in range(4)]) * px
    crop_max = _pick(rg, opts.crop_mm)
    crops = np.zeros(4)
    if crop_max > 0:
        sides = rg.random(4) < 0.4
        if not sides.any():
            sides[int(rg.integers(4))] = True
        crops = np.where(sides, rg.uniform(0.4, 1.0, 4) * crop_max * px, 0.0)
    ext = np.where(crops > 0, -crops, margins)  # left, top, right, bottom
    if opts.framed_to_page:
        # The page's own size (upright or on its side), centred on the page.
        upright = abs(math.cos(a)) >= abs(math.sin(a))
        out_w = max(16, int(round((pw if upright else ph) * scale)))
        out_h = max(16, int(round((ph if upright else pw) * scale)))
        q += (out_w / 2, out_h / 2)
    else:
        q -= lo - ext[:2]
        out_w = max(16, int(round(hi[0] - lo[0] + ext[0] + ext[2])))
        out_h = max(16, int(round(hi[1] - lo[1] + ext[1] + ext[3])))
    H = cv2.getPerspectiveTransform(corners.astype(np.float32), q.astype(np.float32)).astype(np.float64)
    identity = np.allclose(H, np.eye(3), atol=1e-9) and (out_w, out_h) == (pw, ph)
    page_in, pen_in, prn_in = ink.page, ink.pen_layer, ink.print_layer
    mask = back = None
    lid = _pick(rl, opts.lid_grey)
    if identity:
        page, pen, prn = page_in, pen_in, prn_in
    else:
        Hi = _to_index(H)
        size = (out_w, out_h)
        page = cv2.warpPerspective(page_in, Hi, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                   borderValue=1.0)
        pen, prn = (None if layer is None else cv2.warpPerspective(
            layer, Hi, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=1.0)
            for layer in (pen_in, prn_in))
        m8 = np.zeros((out_h, out_w), np.uint8)
        cv2.fillConvexPoly(m8, np.round((q - 0.5) * 16).astype(np.int32), 255, cv2.LINE_AA, 4)
        if m8.min() < 255:
            mask = m8.astype(np.float32) * np.float32(1 / 255)
            page = cv2.multiply(page, mask)
            back = cv2.subtract(1.0, mask) * np.float32(lid)
            if lid > 120:
                # A light lid shows the paper's edge as a thin grey shadow line.
                edge = cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.4 * px))
                back = cv2.multiply(back, cv2.subtract(1.0, edge * np.float32(0.3)))
    paper_name, tint = _paper_tint(opts, rl)
    gradient = _pick(rl, opts.gradient)
    shadow = _pick(rl, opts.shadow)
    if gradient > 0 or shadow > 0:
        lw, lh = max(8, out_w // 16), max(8, out_h // 16)
        light, _ = _light_field(rl, lw, lh, gradient, shadow, q / 16, photo=False)
        light = cv2.resize(light, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        page = cv2.multiply(page, light)
        if back is not None:
            back = cv2.multiply(back, light)
    gains, contrast = _tone(rl, opts, params, warm=False)
    blur = _pick(rl, opts.blur)
    sigma = _pick(rl, opts.noise)
    lum = _gauss((out_h, out_w), rn) * np.float32(sigma) if sigma > 0 else None
    planes = []
    for c in range(3):
        g = float(gains[c]) * contrast
        offset = 128.0 * (1.0 - contrast)
        src = _page_channel(page, pen, c, prn, PRINT_INKS[opts.print_ink])
        if back is not None:
            ch = cv2.addWeighted(src, 255.0 * float(tint[c]) * g, back, g, offset)
        else:
            ch = cv2.addWeighted(src, 255.0 * float(tint[c]) * g, src, 0.0, offset)
        if blur > 0:
            ch = cv2.GaussianBlur(ch, (0, 0), blur)
        if lum is not None:
            ch = cv2.add(ch, lum)
            # A little colour noise, blotchy like a scanner's.
            cn = _gauss((max(2, out_h // 2), max(2, out_w // 2)), rn) * np.float32(sigma * 0.35)
            ch = cv2.add(ch, cv2.resize(cn, (out_w, out_h), interpolation=cv2.INTER_LINEAR))
        planes.append(_to_uint8(ch))
    img = cv2.merge(planes)
    _dirt(img, rn, opts, dpi, params, q, min(1.0, float(gains.mean())))
    params.update(mode="scan", dpi=dpi, rotation_deg=angle, quarter_turns=int(round(angle / 90)) % 4,
                  skew_deg=angle - 90 * round(angle / 90), scale=scale, perspective=persp, crop_px=crops.tolist(),
                  paper=paper_name, lid_grey=lid, gradient=gradient, shadow=shadow, blur=blur, noise=sigma)
    Hmm = H @ np.diag([px, px, 1.0])

    def through(points_mm: list[tuple[float, float]]) -> list[list[float]]:
        p = np.c_[np.array(points_mm, float).reshape(-1, 2), np.ones(len(points_mm))] @ Hmm.T
        return (p[:, :2] / p[:, 2:]).tolist()

    geometry = {"page_corners_px": q.tolist(), "marks_px": through([(m.x, m.y) for m in t.marks]),
                "qr_corners_px": through([(t.qr.x, t.qr.y), (t.qr.x + t.qr.w, t.qr.y),
                                          (t.qr.x + t.qr.w, t.qr.y + t.qr.h), (t.qr.x, t.qr.y + t.qr.h)]),
                "page_mm_to_image": Hmm.tolist(), "dpi": dpi * scale}
    return img, geometry


# ---------------------------------------------------------------- phone


def _rodrigues(axis: np.ndarray, angle: float) -> np.ndarray:
    r, _ = cv2.Rodrigues((axis / np.linalg.norm(axis) * angle).reshape(3, 1))
    return r


def _photo_camera(t: Template, opts: SimOptions, rng: np.random.Generator, params: dict) -> dict:
    """Where the page lands in the photo: a pinhole camera over a tilted, curled page."""
    mp = _pick(rng, opts.megapixels)
    long_side = math.sqrt(mp * 1e6 * 4 / 3)
    # Phones are mostly held the page's way up; sometimes sideways, and a
    # sideways photo arrives with the page turned a quarter.
    turn = (90 if rng.random() < 0.5 else -90) if rng.random() < 0.2 else 0
    if opts.random_turn:
        turn += int(rng.integers(4)) * 90
    roll = float(opts.rotation_deg) + turn + _pick(rng, opts.skew_deg) * (1 if rng.random() < 0.5 else -1)
    # The photographer frames the page: the picture's long side follows the page's.
    page_long_x = (t.page_width >= t.page_height) == (abs(math.cos(math.radians(roll))) >= 0.7071)
    W, H = int(round(long_side)), int(round(long_side * 3 / 4))
    if not page_long_x:
        W, H = H, W
    tilt = math.radians(_pick(rng, opts.tilt_deg))
    tilt_dir = rng.uniform(0, 2 * math.pi)
    f = max(W, H) / (2 * math.tan(math.radians(68) / 2))  # a 26 mm-equivalent phone lens
    curl = _pick(rng, opts.curl_mm)
    fill = _pick(rng, opts.fill)
    a = math.radians(-roll)  # counter-clockwise on screen, as for scans
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    Rt = _rodrigues(np.array([math.cos(tilt_dir), math.sin(tilt_dir), 0.0]), tilt) if tilt > 0 else np.eye(3)
    R = Rt @ Rz
    pw, ph = t.page_width, t.page_height
    ax = int(rng.integers(2))  # the paper bends along one axis, like a sheet that was rolled
    c2 = rng.uniform(-0.3, 0.3)

    def lift(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u = (2 * x / pw - 1) if ax == 0 else (2 * y / ph - 1)
        v = (2 * y / ph - 1) if ax == 0 else (2 * x / pw - 1)
        return curl * (u ** 2 * (1 + c2 * v))

    state = {"Z": 1.0, "shift": np.zeros(2)}

    def project(x: np.ndarray, y: np.ndarray, with_lift: bool = True) -> np.ndarray:
        """Page mm -> image pixels (continuous coordinates)."""
        z = -lift(x, y) if (with_lift and curl > 0) else np.zeros_like(x)
        P = np.stack([x - pw / 2, y - ph / 2, z], -1) @ R.T
        P[..., 2] += state["Z"]
        return f * P[..., :2] / P[..., 2:3] + (W / 2, H / 2) + state["shift"]

    cx_ = np.array([0, pw, pw, 0], float)
    cy_ = np.array([0, 0, ph, ph], float)
    state["Z"] = f * max(pw, ph) / (fill * min(W, H))
    for _ in range(5):
        q = project(cx_, cy_, False)
        span = q.max(0) - q.min(0)
        state["Z"] *= max(span[0] / (fill * W), span[1] / (fill * H))
    q = project(cx_, cy_, False)
    lo, hi = q.min(0), q.max(0)
    room = np.array([W, H]) - (hi - lo)
    # Off-centre framing, but the whole page stays in the picture.
    target = np.array([rng.uniform(0.2, 0.8) * max(room[0], 0), rng.uniform(0.2, 0.8) * max(room[1], 0)])
    state["shift"] = target - lo
    q = project(cx_, cy_, False)
    # The page must be sampled at least as finely as the photo sees its nearest part.
    edges = np.hypot(*(np.roll(q, -1, 0) - q).T) / np.array([pw, ph, pw, ph])
    need = float(edges.max()) * MM_PER_INCH * 1.15
    work = next((d for d in (100, 150, 200, 250, 300) if d >= need), 300)
    eff = math.sqrt(abs(cv2.contourArea(q.astype(np.float32))) / (pw * ph)) * MM_PER_INCH
    params.update(mode="photo", megapixels=W * H / 1e6, rotation_deg=roll, quarter_turns=int(round(roll / 90)) % 4,
                  tilt_deg=math.degrees(tilt), tilt_direction_deg=math.degrees(tilt_dir), curl_mm=curl, fill=fill,
                  focal_px=f, work_dpi=work, effective_dpi=eff)
    return {"W": W, "H": H, "project": project, "corners": q, "work_dpi": float(work), "eff_dpi": eff,
            "curl": curl}


def _desk(rng: np.random.Generator, kind: str, w: int, h: int) -> np.ndarray:
    """A desk surface at low resolution, BGR uint8."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    big = max(w, h)
    if kind == "wood":
        base = np.array([rng.uniform(40, 90), rng.uniform(80, 130), rng.uniform(120, 185)], np.float32)
        a = rng.uniform(-0.2, 0.2) + (math.pi / 2 if rng.random() < 0.5 else 0)
        u = xx * math.cos(a) + yy * math.sin(a)  # along the grain
        v = -xx * math.sin(a) + yy * math.cos(a)  # across it
        period = rng.uniform(0.01, 0.02) * big
        # Growth rings: stripes along the grain that drift slowly sideways.
        drift = cv2.resize(rng.standard_normal((2, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        ring = np.sin((v + drift * period * 1.5 + 0.4 * period * np.sin(u / big * rng.uniform(3, 8))) / period
                      * 2 * math.pi)
        fibre = cv2.filter2D(rng.standard_normal((h, w)).astype(np.float32), -1,
                             _line_kernel(0.05 * big, -math.degrees(a)))
        fibre /= fibre.std() + 1e-6
        shade = 1.0 + 0.07 * ring + 0.06 * fibre + 0.06 * _smooth_noise(rng, (w, h), (2, 3))
        # Planks: a dark seam every so often, along the grain.
        plank = rng.uniform(0.15, 0.3) * big
        seam = np.abs(((v + rng.uniform(0, plank)) % plank) - plank / 2) > plank / 2 - 1.0
        shade = np.where(seam, shade * 0.6, shade)
    elif kind == "fabric":
        base = rng.uniform(40, 200, 3).astype(np.float32)
        p = rng.uniform(1.5, 3.0)
        weave = np.sin(xx / p * math.pi) * np.sin(yy / p * math.pi)
        shade = 1.0 + 0.08 * weave + 0.06 * _smooth_noise(rng, (w, h), (4, 5)) \
            + 0.05 * rng.standard_normal((h, w)).astype(np.float32)
    else:
        level = {"dark": rng.uniform(25, 70), "grey": rng.uniform(90, 150), "light": rng.uniform(175, 215)}[kind]
        base = (level * (1 + rng.uniform(-0.08, 0.08, 3))).astype(np.float32)
        speck = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.8)
        shade = 1.0 + 0.04 * speck + 0.05 * _smooth_noise(rng, (w, h), (3, 4))
    return np.clip(shade[:, :, None] * base[None, None, :], 0, 255).astype(np.uint8)


def _clutter(img: np.ndarray, rng: np.random.Generator, n: int, scale: float) -> list[str]:
    """Things lying on the desk (pens, another sheet, a phone, sticky notes, a
    coin), drawn on the 8-bit desk; the page is laid over them afterwards.
    ``scale`` is pixels per mm here."""
    h, w = img.shape[:2]
    kinds = []

    def poly(pts: np.ndarray, colour) -> None:
        cv2.fillConvexPoly(img, np.round(pts * 16).astype(np.int32), colour, cv2.LINE_AA, 4)

    for _ in range(n):
        k = str(rng.choice(["pen", "pen", "sheet", "phone", "note", "coin"]))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        ang = rng.uniform(0, 180)
        if k == "pen":
            length, width = rng.uniform(120, 150) * scale, rng.uniform(7, 10) * scale
            col = [float(c) for c in rng.choice([[160, 60, 20], [30, 30, 30], [40, 40, 170], [200, 200, 200],
                                                  [40, 150, 220]])]
            body = cv2.boxPoints(((cx, cy), (length, width), ang))
            poly(body, col)
            # A lighter stripe where the barrel catches the light.
            stripe = cv2.boxPoints(((cx, cy), (length * 0.9, width * 0.2), ang))
            poly(stripe, [min(255.0, c * 1.4 + 40) for c in col])
            d = np.array([math.cos(math.radians(ang)), math.sin(math.radians(ang))])
            tip0 = np.array([cx, cy]) + d * length / 2
            poly(np.array([tip0 + np.array([-d[1], d[0]]) * width / 2, tip0 - np.array([-d[1], d[0]]) * width / 2,
                           tip0 + d * width * 1.6]), [120.0, 120.0, 125.0])
        elif k == "sheet":
            rect = cv2.boxPoints(((cx, cy), (210 * scale, 297 * scale), ang))
            g = rng.uniform(200, 240)
            poly(rect, (g * 0.97, g, g))
            # A few lines of someone else's printing on it.
            for j in range(int(rng.integers(4, 12))):
                a0 = rect[0] + (rect[1] - rect[0]) * 0.1 + (rect[3] - rect[0]) * (0.1 + 0.06 * j)
                a1 = a0 + (rect[1] - rect[0]) * rng.uniform(0.3, 0.8)
                cv2.line(img, tuple(np.round(a0 * 16).astype(int)), tuple(np.round(a1 * 16).astype(int)),
                         (g * 0.75,) * 3, 1, cv2.LINE_AA, 4)  # thin print, seen from afar
        elif k == "phone":
            poly(cv2.boxPoints(((cx, cy), (75 * scale, 150 * scale), ang)), (25, 22, 20))
            poly(cv2.boxPoints(((cx, cy), (68 * scale, 140 * scale), ang)), (48, 42, 40))
        elif k == "note":
            col = [float(c) for c in rng.choice([[90, 235, 250], [180, 140, 250], [150, 240, 160]])]
            poly(cv2.boxPoints(((cx, cy), (76 * scale, 76 * scale), ang)), col)
        else:
            g = rng.uniform(90, 170)
            cv2.circle(img, (int(cx * 16), int(cy * 16)), int(12 * scale * 16), (g * 0.7, g * 0.85, g), -1,
                       cv2.LINE_AA, 4)
        kinds.append(k)
    return kinds


def _capture_photo(ink: _Ink, t: Template, opts: SimOptions, cam: dict, rg: np.random.Generator,
                   rl: np.random.Generator, rn: np.random.Generator, params: dict) -> tuple[np.ndarray, dict]:
    W, H = cam["W"], cam["H"]
    project = cam["project"]
    corners = cam["corners"]
    px = ink.px_mm
    ph_px, pw_px = ink.page.shape
    # Inverse map (image pixel -> page) on a coarse grid: the planar homography,
    # then fixed-point steps for the paper's curl; smooth, so it is interpolated
    # up to full resolution.
    step = 8
    gw, gh = -(-W // step), -(-H // step)
    gx, gy = np.meshgrid((np.arange(gw) + 0.5) * step, (np.arange(gh) + 0.5) * step)
    page_mm = np.array([[0, 0], [t.page_width, 0], [t.page_width, t.page_height], [0, t.page_height]], np.float32)
    Hm = cv2.getPerspectiveTransform(page_mm, corners.astype(np.float32)).astype(np.float64)
    Hinv = np.linalg.inv(Hm)

    def unproject(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = Hinv[2, 0] * u + Hinv[2, 1] * v + Hinv[2, 2]
        return (Hinv[0, 0] * u + Hinv[0, 1] * v + Hinv[0, 2]) / d, (Hinv[1, 0] * u + Hinv[1, 1] * v + Hinv[1, 2]) / d

    x0, y0 = unproject(gx, gy)
    x, y = x0, y0
    if cam["curl"] > 0:
        for _ in range(4):
            uv = project(x, y)
            ex, ey = unproject(uv[..., 0], uv[..., 1])
            x, y = x + (x0 - ex), y + (y0 - ey)
    full = (gw * step, gh * step)
    mx = cv2.resize((x * px - 0.5).astype(np.float32), full, interpolation=cv2.INTER_LINEAR)[:H, :W]
    my = cv2.resize((y * px - 0.5).astype(np.float32), full, interpolation=cv2.INTER_LINEAR)[:H, :W]
    # With a black border the interpolated page comes out already multiplied by
    # its coverage (premultiplied alpha); the coverage itself is the remap of an
    # all-white page.
    page = cv2.remap(ink.page, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    pen, prn = (None if layer is None else cv2.remap(layer, mx, my, cv2.INTER_LINEAR,
                                                     borderMode=cv2.BORDER_CONSTANT, borderValue=1.0)
                for layer in (ink.pen_layer, ink.print_layer))
    cover = cv2.remap(np.full((ph_px, pw_px), 255, np.uint8), mx, my, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    del mx, my
    mask = cover.astype(np.float32) * np.float32(1 / 255)
    inv = cv2.subtract(1.0, mask)
    paper_name, tint = _paper_tint(opts, rl)

    # Desk, clutter and the page's own soft shadow, at a quarter of the resolution.
    bw, bh = max(32, W // 4), max(32, H // 4)
    kind = opts.background if opts.background != "random" else BACKGROUNDS[int(rl.integers(len(BACKGROUNDS)))]
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background {kind!r}; choose from {', '.join(BACKGROUNDS)}, random")
    desk8 = _desk(rl, kind, bw, bh)
    mm_px = cam["eff_dpi"] / MM_PER_INCH / 4
    items = _clutter(desk8, rl, _pick(rl, opts.clutter, integer=True), mm_px)
    desk = desk8.astype(np.float32)
    small = np.zeros((bh, bw), np.float32)
    cv2.fillConvexPoly(small, np.round(corners / 4).astype(np.int32), 1.0)
    off = rl.normal(0, 1.5, 2) * mm_px
    drop = cv2.warpAffine(small, np.float32([[1, 0, off[0]], [0, 1, off[1]]]), (bw, bh))
    drop = cv2.GaussianBlur(drop, (0, 0), max(1.0, 2.5 * mm_px))
    desk *= (1.0 - 0.35 * drop)[:, :, None]

    # Light: gradient, a soft shadow (a little blue: lit by the sky or a screen
    # rather than the lamp) and the lens' vignetting.
    gradient = _pick(rl, opts.gradient)
    shadow = _pick(rl, opts.shadow)
    vign = _pick(rl, opts.vignette)
    lw, lh = max(8, W // 16), max(8, H // 16)
    light, shade = _light_field(rl, lw, lh, gradient, shadow, corners / 16, photo=True)
    yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
    rr = ((xx + 0.5) / lw - 0.5) ** 2 * (W / max(W, H)) ** 2 + ((yy + 0.5) / lh - 0.5) ** 2 * (H / max(W, H)) ** 2
    light *= 1.0 - vign * np.clip(rr / 0.5, 0, 1) ** 1.2 * 1.6
    lights = [light * (1 + 0.25 * shade), light, light * (1 - 0.1 * shade)]

    # Auto-exposure: the phone meters the whole scene, so a dark desk brightens
    # the page (often blowing out its white) and a light one darkens it.
    p_small = cv2.resize(page, (lw, lh), interpolation=cv2.INTER_AREA)
    m_small = cv2.resize(mask, (lw, lh), interpolation=cv2.INTER_AREA)
    d_small = cv2.resize(desk, (lw, lh), interpolation=cv2.INTER_AREA)
    scene = np.mean([(p_small * 255 * tint[c] + d_small[:, :, c] * (1 - m_small)) * lights[c] for c in range(3)])
    meter = float(np.clip(rl.uniform(110, 135) / max(scene, 1.0), 0.75, 1.5))
    gains, contrast = _tone(rl, opts, params, warm=True)
    gains = gains * meter
    blur = _pick(rl, opts.blur)
    shake = _pick(rl, opts.shake_px)
    shake_k = _line_kernel(shake, rl.uniform(0, 180)) if shake >= 1.0 else None
    sigma = _pick(rl, opts.sensor_noise)
    sharp = _pick(rl, opts.sharpen)
    planes: list[np.ndarray | None] = [None, None, None]
    noise: np.ndarray | None = None
    # Green first: it carries most of the luminance, which sets the shot noise
    # shared by all three channels.
    for c in (1, 0, 2):
        g = float(gains[c]) * contrast
        lit = cv2.resize(lights[c], (W, H), interpolation=cv2.INTER_LINEAR)
        front = cv2.multiply(_page_channel(page, pen, c, prn, PRINT_INKS[opts.print_ink]), lit,
                             scale=255.0 * float(tint[c]) * g)
        small_bg = cv2.multiply(desk[:, :, c], cv2.resize(lights[c], (bw, bh), interpolation=cv2.INTER_LINEAR),
                                scale=g)
        back = cv2.multiply(cv2.resize(small_bg, (W, H), interpolation=cv2.INTER_LINEAR), inv)
        ch = cv2.addWeighted(front, 1.0, back, 1.0, 128.0 * (1.0 - contrast))
        del front, back, lit
        if blur > 0:
            ch = cv2.GaussianBlur(ch, (0, 0), blur)
        if shake_k is not None:
            ch = cv2.filter2D(ch, -1, shake_k)
        if sigma > 0:
            if noise is None:
                # Shot noise grows with the signal, read noise does not: sigma
                # at white is ``sensor_noise``, about a third of it in the blacks.
                level = cv2.sqrt(cv2.max(cv2.addWeighted(ch, 0.9 / 255, ch, 0.0, 0.1), 0.01))
                noise = cv2.multiply(_gauss((H, W), rn), level, scale=sigma)
                del level
            ch = cv2.add(ch, noise)
            # Colour noise, blotchy after the phone's denoising.
            cn = _gauss((max(2, H // 3), max(2, W // 3)), rn) * np.float32(sigma * 0.5)
            ch = cv2.add(ch, cv2.resize(cn, (W, H), interpolation=cv2.INTER_LINEAR))
        if sharp > 0:
            ch = cv2.addWeighted(ch, 1 + sharp, cv2.GaussianBlur(ch, (0, 0), 1.6), -sharp, 0.0)
        planes[c] = _to_uint8(ch)
        del ch
    img = cv2.merge(planes)
    if any(_pick(rl, v) > 0 for v in (opts.speckle, opts.dust, opts.hairs)):
        _dirt(img, rn, opts, cam["eff_dpi"], params, corners, min(1.0, float(gains.mean())))
    params.update(paper=paper_name, background=kind, clutter=items, gradient=gradient, shadow=shadow,
                  vignette=vign, blur=blur, shake_px=shake, sensor_noise=sigma, sharpen=sharp, meter_gain=meter)
    # Exact positions through the curled page; the homography is its flat-page approximation.
    mark_mm = np.array([(m.x, m.y) for m in t.marks], float).reshape(-1, 2)
    qr_mm = np.array([(t.qr.x, t.qr.y), (t.qr.x + t.qr.w, t.qr.y), (t.qr.x + t.qr.w, t.qr.y + t.qr.h),
                      (t.qr.x, t.qr.y + t.qr.h)], float)
    geometry = {"page_corners_px": project(page_mm[:, 0].astype(float), page_mm[:, 1].astype(float)).tolist(),
                "marks_px": project(mark_mm[:, 0], mark_mm[:, 1]).tolist(),
                "qr_corners_px": project(qr_mm[:, 0], qr_mm[:, 1]).tolist(),
                "page_mm_to_image": Hm.tolist(), "dpi": cam["eff_dpi"], "curl_mm": cam["curl"]}
    return img, geometry
