"""The scan simulator: reproducible, truthful about what it drew, and producing
images of the size and kind a scanner or a phone delivers."""

import dataclasses
import json
import random

import cv2
import numpy as np
import pytest

from batches.omr import load_template, page_layout
from batches.omr.synthetic.simulate import PRESETS, STYLES, SimOptions, Simulated, random_answers, simulate_sheet

TEMPLATE = "a4-100q-4"


@pytest.fixture(scope="module")
def template():
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def answers(template):
    return random_answers(template, 1, 7)


@pytest.fixture(scope="module")
def preset_sims(template, answers):
    """One simulation per preset (the slow part, shared by several tests)."""
    return {name: simulate_sheet(template, answers, seed=11, preset=name) for name in PRESETS}


def grey(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


def disc_mean(g: np.ndarray, x: float, y: float, radius: float) -> float:
    """Mean grey of the pixels whose centres lie within ``radius`` of (x, y)."""
    x0, y0 = int(x - radius) - 1, int(y - radius) - 1
    patch = g[y0:y0 + int(2 * radius) + 3, x0:x0 + int(2 * radius) + 3].astype(float)
    yy, xx = np.mgrid[0:patch.shape[0], 0:patch.shape[1]]
    inside = (xx + x0 + 0.5 - x) ** 2 + (yy + y0 + 0.5 - y) ** 2 <= radius ** 2
    return float(patch[inside].mean())


def marked_values(truth: dict, group) -> str:
    value = truth["answers"][group.field]
    if group.kind == "digit":
        return value[group.position:group.position + 1]
    return value


# ---------------------------------------------------------------- reproducibility and truth


def test_same_seed_same_sheet_other_seed_other_sheet(template, answers):
    a = simulate_sheet(template, answers, seed=3, preset="scan_moderate")
    b = simulate_sheet(template, answers, seed=3, preset="scan_moderate")
    c = simulate_sheet(template, answers, seed=4, preset="scan_moderate")
    assert np.array_equal(a.image, b.image)
    assert a.truth == b.truth
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)
    assert a.truth["params"] != c.truth["params"]


def test_truth_records_answers_and_settings(template):
    fields = page_layout(template, 1).fields()
    given = {"q1": "B", "q2": "DB", "q3": "", "q5": "ABCD", "student_number": "0421", "exam_version": "C"}
    sim = simulate_sheet(template, given, seed=1, exam="midterm", student="s-17", style={"q1": "tick"})
    truth = sim.truth
    assert set(truth["answers"]) == set(fields)
    assert truth["answers"]["q1"] == "B"
    assert truth["answers"]["q2"] == "BD"  # printed order
    assert truth["answers"]["q3"] == "" and truth["answers"]["q4"] == ""  # blank and left out
    assert truth["answers"]["q5"] == "ABCD"
    assert truth["answers"]["student_number"] == "0421"
    assert truth["answers"]["exam_version"] == "C"
    assert (truth["template"], truth["page"], truth["exam"], truth["student"]) == (TEMPLATE, 1, "midterm", "s-17")
    assert truth["preset"] == "clean" and truth["options"]["style"] == "filled"
    assert truth["styles"]["q1"] == "tick" and truth["styles"]["q2"] == "filled"
    assert truth["bubble_styles"]["q2"] == {"B": "filled", "D": "filled"}
    assert "q3" not in truth["styles"]
    assert truth["erased"] == []
    assert truth["handwriting"]["student_number"] == "0421"
    json.dumps(truth)  # JSON-ready as it is


def test_bad_answers_are_refused(template):
    with pytest.raises(ValueError, match="q999"):
        simulate_sheet(template, {"q999": "A"})
    with pytest.raises(ValueError, match="q1"):
        simulate_sheet(template, {"q1": "E"})
    with pytest.raises(ValueError, match="student_number"):
        simulate_sheet(template, {"student_number": "12345678901"})
    with pytest.raises(ValueError, match="preset"):
        simulate_sheet(template, {}, preset="nope")
    with pytest.raises(ValueError, match="style"):
        simulate_sheet(template, {}, style="smudge")


def test_every_mixed_style_and_erasure_is_recorded(template, answers):
    opts = dataclasses.replace(PRESETS["clean"], style="mixed", erasure_rate=0.2)
    truth = simulate_sheet(template, answers, seed=5, preset=opts).truth
    used = {s for per in truth["bubble_styles"].values() for s in per.values()}
    assert used <= {"filled", "pencil", "half", "tick", "cross"} and len(used) >= 4
    assert len(truth["erased"]) == 20
    for field in truth["erased"]:
        assert truth["erased_values"][field] not in truth["answers"][field]


# ---------------------------------------------------------------- sizes and geometry


def test_every_preset_gives_an_image_of_plausible_size(preset_sims, template):
    assert {"clean", "scan_mild", "scan_moderate", "scan_hard", "photo_mild", "photo_hard"} <= set(PRESETS)
    for name, sim in preset_sims.items():
        opts = PRESETS[name]
        img = sim.image
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        h, w = img.shape[:2]
        if opts.photo:
            mp = opts.megapixels if isinstance(opts.megapixels, tuple) else (opts.megapixels, opts.megapixels)
            assert mp[0] * 0.9 <= w * h / 1e6 <= mp[1] * 1.1, name
            assert max(w, h) / min(w, h) == pytest.approx(4 / 3, rel=0.01), name
        else:
            px = opts.dpi / 25.4
            short, long_ = sorted((w, h))
            # Around the page at the scan resolution, give or take scale, skew and border.
            assert 0.85 * template.page_width * px <= short <= 1.35 * template.page_width * px, name
            assert 0.85 * template.page_height * px <= long_ <= 1.35 * template.page_height * px, name
        assert sim.truth["geometry"]["image_size"] == [w, h]
    clean = preset_sims["clean"].image
    layout = page_layout(template, 1, 300)
    assert clean.shape[:2] == (layout.height, layout.width)


def test_photo_megapixels_are_honoured(template, answers):
    for mp in (1.0, 5.0):
        opts = dataclasses.replace(PRESETS["photo_mild"], megapixels=mp, jpeg_quality=None)
        h, w = simulate_sheet(template, answers, seed=2, preset=opts).image.shape[:2]
        assert w * h / 1e6 == pytest.approx(mp, rel=0.1)


def test_quarter_turns_swap_dimensions_exactly(template, answers):
    upright = simulate_sheet(template, answers, seed=6).image
    for angle, k in ((90, 1), (180, 2), (270, 3)):
        opts = dataclasses.replace(PRESETS["clean"], rotation_deg=angle)
        turned = simulate_sheet(template, answers, seed=6, preset=opts)
        assert turned.image.shape[:2] == (upright.shape[:2][::-1] if k % 2 else upright.shape[:2])
        # Counter-clockwise, as numpy's rot90, and without resampling.
        assert np.array_equal(turned.image, np.rot90(upright, k))
        assert turned.truth["params"]["quarter_turns"] == k


def test_a_page_framed_to_its_own_size_is_turned_within_it(template, answers):
    # A sheet feeder or a scanning app frames the page: the image is the
    # page's size however the page lies, its corners cut, no edge around it.
    opts = dataclasses.replace(PRESETS["clean"], framed_to_page=True, skew_deg=3.0, lid_grey=252)
    sim = simulate_sheet(template, answers, seed=6, preset=opts)
    h, w = sim.image.shape[:2]
    px = sim.truth["geometry"]["dpi"] / 25.4
    assert (w, h) == (round(template.page_width * px), round(template.page_height * px))
    H = np.array(sim.truth["geometry"]["page_mm_to_image"])
    pw, ph = template.page_width, template.page_height
    corners = np.array([H @ [x, y, 1.0] for x, y in ((0, 0), (pw, 0), (pw, ph), (0, ph))])
    corners = corners[:, :2] / corners[:, 2:]
    # Turned 3 degrees about the image's centre: every corner falls outside it.
    outside = (corners[:, 0] < 0) | (corners[:, 1] < 0) | (corners[:, 0] > w) | (corners[:, 1] > h)
    assert outside.all()
    assert np.allclose(corners.mean(0), (w / 2, h / 2), atol=1.0)
    upright = dataclasses.replace(opts, skew_deg=0.0)
    assert simulate_sheet(template, answers, seed=6, preset=upright).image.shape[:2] == (h, w)


@pytest.mark.parametrize("name", ["scan_moderate", "scan_hard", "photo_mild", "photo_hard"])
def test_truth_geometry_finds_the_registration_marks(preset_sims, template, name):
    sim = preset_sims[name]
    geometry = sim.truth["geometry"]
    H = np.array(geometry["page_mm_to_image"])
    g = grey(sim.image)
    h, w = g.shape
    paper = np.percentile(g, 90)
    scale = geometry["dpi"] / 25.4  # image px per page mm, on average
    assert len(geometry["marks_px"]) == 4
    for m, (x, y) in zip(template.marks, geometry["marks_px"], strict=True):
        if not (0 <= x < w and 0 <= y < h):
            continue  # cropped off
        assert disc_mean(g, x, y, max(1.0, m.size * scale * 0.3)) < 0.55 * paper, (name, m)
        if not geometry.get("curl_mm"):
            # Without curl the homography is exact too.
            p = H @ np.array([m.x, m.y, 1.0])
            assert np.hypot(*(p[:2] / p[2] - (x, y))) < 1e-3


# ---------------------------------------------------------------- what is drawn


def test_marked_bubbles_are_darker_than_blank_ones(template):
    layout = page_layout(template, 1, 300)
    answers = random_answers(template, 1, 3, blank_rate=0.0, multiple_rate=0.0)
    # An "across" dash runs on into a blank neighbour: measured on its own below.
    for style in [s for s in STYLES if s != "across"]:
        sim = simulate_sheet(template, answers, seed=8, style=style)
        g = grey(sim.image)
        marked, blank, ring_marked, ring_blank = [], [], [], []
        for group in layout.groups:
            chosen = marked_values(sim.truth, group)
            for b in group.bubbles:
                inner = disc_mean(g, b.x, b.y, 0.6 * b.r)
                (marked if b.value in chosen else blank).append(inner)
                if group.kind == "question" and style == "circled":
                    ring = disc_mean(g, b.x, b.y, 1.5 * b.r) * 2.25 - disc_mean(g, b.x, b.y, 1.15 * b.r) * 1.3225
                    (ring_marked if b.value in chosen else ring_blank).append(ring / (2.25 - 1.3225))
        assert min(blank) > 245, style
        if style == "circled":
            assert min(marked) > 245  # a ring around the bubble leaves it empty
            assert np.mean(ring_marked) < np.mean(ring_blank) - 50
        else:
            # The faintest of each style is still clearly darker than any blank bubble.
            assert max(marked) < min(blank) - 35, style
    filled = simulate_sheet(template, answers, seed=8, style="filled")
    g = grey(filled.image)
    darkest = [disc_mean(g, b.x, b.y, 0.6 * b.r) for grp in layout.groups for b in grp.bubbles
               if b.value in marked_values(filled.truth, grp)]
    assert np.mean(darkest) < 90


def test_erasure_residue_lies_between_paper_and_a_mark(template):
    layout = page_layout(template, 1, 300)
    answers = random_answers(template, 1, 4, blank_rate=0.0, multiple_rate=0.0)
    for style in ("filled", "light"):
        opts = dataclasses.replace(PRESETS["clean"], style=style, erasure_rate=0.5)
        sim = simulate_sheet(template, answers, seed=9, preset=opts)
        g = grey(sim.image)
        erased_values = sim.truth["erased_values"]
        assert len(erased_values) == 50
        residue, marks, blank = [], [], []
        for group in layout.groups:
            if group.kind != "question":
                continue
            for b in group.bubbles:
                inner = disc_mean(g, b.x, b.y, 0.6 * b.r)
                if erased_values.get(group.field) == b.value:
                    residue.append(inner)
                elif b.value in sim.truth["answers"][group.field]:
                    marks.append(inner)
                else:
                    blank.append(inner)
        assert np.mean(residue) < np.mean(blank) - 8, style
        assert np.mean(residue) > np.mean(marks) + (150 if style == "filled" else 25), style
        assert min(residue) < 250 and max(residue) < np.mean(blank), style


def test_handwriting_fills_the_write_in_boxes(template):
    given = {"student_number": "31415926"}
    written = grey(simulate_sheet(template, given, seed=1).image)
    bare = grey(simulate_sheet(template, given, seed=1,
                               preset=dataclasses.replace(PRESETS["clean"], handwriting=False)).image)
    block = template.digit_grids[0]
    px = 300 / 25.4
    r = template.bubble_diameter / 2
    top = block.y - r - 1.2 - max(4.5, min(6.5, block.column_pitch * 1.1))
    for k in range(block.digits):
        x0 = int((block.x + (k - 0.4) * block.column_pitch) * px)
        x1 = int((block.x + (k + 0.4) * block.column_pitch) * px)
        y0, y1 = int((top + 0.8) * px), int((block.y - r - 2.0) * px)
        ink = (bare[y0:y1, x0:x1].astype(int) - written[y0:y1, x0:x1]).clip(0).sum()
        assert (ink > 2000) == (k < 8), k  # written digits only, trailing boxes empty


# ---------------------------------------------------------------- output


def test_jpeg_round_trip(template, answers):
    opts = dataclasses.replace(PRESETS["scan_moderate"], jpeg_quality=60)
    sim = simulate_sheet(template, answers, seed=2, preset=opts)
    data = sim.encode_jpeg()
    assert data[:2] == b"\xff\xd8"
    # The image is what the JPEG holds: the compression is part of the capture.
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), sim.image)
    again = cv2.imdecode(np.frombuffer(sim.encode_jpeg(95), np.uint8), cv2.IMREAD_COLOR)
    assert again.shape == sim.image.shape
    assert np.abs(again.astype(int) - sim.image).mean() < 3
    clean = simulate_sheet(template, answers, seed=2)
    assert clean.jpeg is None and clean.encode_jpeg()[:2] == b"\xff\xd8"


def test_save_writes_image_and_truth(tmp_path, template, answers):
    sim = simulate_sheet(template, answers, seed=1, preset="scan_mild")
    img_path, truth_path = sim.save(tmp_path / "sheet.jpg")
    assert truth_path == tmp_path / "sheet.jpg.truth.json"
    assert json.loads(truth_path.read_text()) == sim.truth
    assert img_path.read_bytes() == sim.encode_jpeg()
    png, png_truth = Simulated(sim.image, sim.truth).save(tmp_path / "sheet.png")
    assert np.array_equal(cv2.imread(str(png)), sim.image) and png_truth.exists()


# ---------------------------------------------------------------- random answers


def test_random_answers_cover_every_field_with_valid_values(template):
    layout = page_layout(template, 1)
    by_field = {g.field: g for g in layout.groups}
    answers = random_answers(template, 1, 0)
    assert list(answers) == layout.fields()
    for field, value in answers.items():
        group = by_field[field]
        if group.kind == "digit":
            assert value.isdigit() and 1 <= len(value) <= 10
        elif group.kind == "choice":
            assert value in group.values
        else:
            assert value == "" or ("".join(v for v in group.values if v in value) == value)
    # Any kind of generator, reproducibly; fixed ids when asked.
    assert random_answers(template, 1, random.Random(5)) == random_answers(template, 1, random.Random(5))
    assert random_answers(template, 1, np.random.default_rng(5)) == random_answers(template, 1, 5)
    fixed = random_answers(template, 1, 1, student="12345", exam="D")
    assert fixed["student_number"] == "12345" and fixed["exam_version"] == "D"
    page2 = random_answers("a4-200q-4", 2, 1)
    assert "q101" in page2 and "q1" not in page2


def test_random_answers_respect_the_rates(template):
    rng = np.random.default_rng(1)
    values, lengths = [], []
    for _ in range(30):
        a = random_answers(template, 1, rng, blank_rate=0.2, multiple_rate=0.1)
        values += [v for k, v in a.items() if k.startswith("q")]
        lengths.append(len(a["student_number"]))
    n = len(values)
    assert sum(v == "" for v in values) / n == pytest.approx(0.2, abs=0.04)
    assert sum(len(v) > 1 for v in values) / n == pytest.approx(0.1, abs=0.03)
    assert lengths.count(10) > 15 and min(lengths) < 10  # mostly full, now and then shorter


def test_options_are_plain_data():
    opts = SimOptions(skew_deg=(1.0, 2.0))
    assert opts.to_dict()["skew_deg"] == [1.0, 2.0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.dpi = 200  # type: ignore[misc]


# ---------------------------------------------------------------- what real paper and files add


NEW_PRESETS = ("scan_letters", "scan_bitonal", "scan_lowres", "photo_exif")


def _small():
    return load_template("a4-20q-5")


def test_new_presets_are_reproducible_to_the_byte():
    t = _small()
    answers = random_answers(t, 1, 2)
    for name in NEW_PRESETS:
        a = simulate_sheet(t, answers, seed=6, preset=name)
        b = simulate_sheet(t, answers, seed=6, preset=name)
        assert np.array_equal(a.image, b.image) and a.encode_jpeg() == b.encode_jpeg() and a.truth == b.truth, name
        c = simulate_sheet(t, answers, seed=7, preset=name)
        assert a.encode_jpeg() != c.encode_jpeg(), name


def test_bitonal_scan_has_two_grey_levels_at_300_dpi():
    t = _small()
    sim = simulate_sheet(t, random_answers(t, 1, 3), seed=4, preset="scan_bitonal")
    img = sim.image
    assert set(np.unique(img).tolist()) == {0, 255}
    assert np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 1], img[:, :, 2])
    assert sim.jpeg is None  # lossless, as black & white scans are saved
    assert sim.truth["params"]["grey_levels"] == 2 and sim.truth["geometry"]["dpi"] == pytest.approx(300, rel=0.02)
    # A palette scan keeps as many levels as it is asked for.
    opts = dataclasses.replace(PRESETS["scan_mild"], grey_levels=8, jpeg_quality=None)
    assert len(np.unique(simulate_sheet(t, {}, seed=4, preset=opts).image)) <= 8


def test_low_resolution_scan_is_75_dpi():
    t = _small()
    sim = simulate_sheet(t, random_answers(t, 1, 3), seed=4, preset="scan_lowres")
    h, w = sim.image.shape[:2]
    px = 75 / 25.4
    assert sim.truth["geometry"]["dpi"] == pytest.approx(75, rel=0.02)
    assert 0.97 * t.page_width * px <= min(w, h) <= 1.1 * t.page_width * px
    assert 0.97 * t.page_height * px <= max(w, h) <= 1.1 * t.page_height * px


def test_sideways_photo_carries_its_exif_orientation_and_decodes_upright():
    import io

    from PIL import Image

    from batches.omr.imageio import _jpeg_image_end, load_images

    t = _small()
    sim = simulate_sheet(t, random_answers(t, 1, 3), seed=4, preset="photo_exif")
    data = sim.encode_jpeg()
    stored = Image.open(io.BytesIO(data))
    assert stored.getexif().get(0x0112) == 6 == sim.truth["params"]["exif_orientation"]
    h, w = sim.image.shape[:2]
    assert stored.size == (h, w)  # the pixels are stored a quarter turn away from upright
    # Decoded as a viewer shows it: exactly the simulated (upright) image, whose
    # truth geometry holds: the registration marks are where it says.
    (page,) = load_images(data)
    assert np.array_equal(page, sim.image)
    g = grey(page)
    for x, y in sim.truth["geometry"]["marks_px"]:
        assert disc_mean(g, x, y, 4) < 0.55 * np.percentile(g, 90)
    # The phone's trailer follows the JPEG's end marker.
    end = _jpeg_image_end(data)
    assert len(data) - end == sim.truth["params"]["trailer_bytes"] >= 20000
    assert data[end:end + 2] == b"\xff\xd8"  # a preview image first


def test_scanner_trailer_after_the_end_marker():
    from batches.omr.imageio import _jpeg_image_end, load_images

    t = _small()
    sim = simulate_sheet(t, random_answers(t, 1, 3), seed=4, preset="scan_letters")
    data = sim.encode_jpeg()
    end = _jpeg_image_end(data)
    assert 2000 <= len(data) - end == sim.truth["params"]["trailer_bytes"] <= 6000
    assert not data.rstrip(b"\x00").endswith(b"\xff\xd9")  # not a file that just ends at its marker
    assert np.array_equal(load_images(data)[0], sim.image)


def test_every_exif_orientation_round_trips():
    from batches.omr.imageio import load_images

    t = _small()
    base = dataclasses.replace(PRESETS["scan_mild"], dpi=100)
    upright = simulate_sheet(t, {}, seed=2, preset=dataclasses.replace(base, exif_orientation=1))
    for orientation in range(2, 9):
        sim = simulate_sheet(t, {}, seed=2, preset=dataclasses.replace(base, exif_orientation=orientation))
        assert sim.image.shape == upright.image.shape, orientation
        assert np.array_equal(load_images(sim.encode_jpeg())[0], sim.image), orientation
        # The same page, up to JPEG blocks falling elsewhere on the turned pixels.
        assert np.abs(sim.image.astype(int) - upright.image).mean() < 3, orientation
    with pytest.raises(ValueError, match="exif_orientation"):
        simulate_sheet(t, {}, preset=dataclasses.replace(base, exif_orientation=9))


def _inner(g, b, frac=0.6):
    return disc_mean(g, b.x, b.y, frac * b.r)


def test_option_letters_are_printed_inside_blank_bubbles():
    t = load_template("a4-100q-5")
    layout = page_layout(t, 1, 300)
    plain = grey(simulate_sheet(t, {}, seed=1).image)
    opts = dataclasses.replace(PRESETS["clean"], bubble_letters=0.8)
    lettered = grey(simulate_sheet(t, {}, seed=1, preset=opts).image)
    questions = [b for g in layout.groups if g.kind == "question" for b in g.bubbles]
    assert min(_inner(plain, b) for b in questions) > 250  # nothing inside this project's bubbles
    darkness = {}
    for b in questions:
        assert _inner(lettered, b) < 235, b  # a letter in every one
        darkness.setdefault(b.value, []).append(255 - _inner(lettered, b))
    # The letter's own shape shows: each letter's bubbles look alike, and wide
    # letters hold more ink than narrow ones.
    for value, d in darkness.items():
        assert np.std(d) < 2, value
    digits = {b.value: 255 - _inner(lettered, b) for g in layout.groups if g.kind == "digit" for b in g.bubbles}
    assert digits["8"] > digits["1"] + 8
    # The outline is printed as before; only the inside changed.
    ring_plain = [disc_mean(plain, b.x, b.y, 1.05 * b.r) for b in questions[:20]]
    ring_lettered = [disc_mean(lettered, b.x, b.y, 1.05 * b.r) for b in questions[:20]]
    assert np.mean(ring_lettered) < np.mean(ring_plain)


def test_pen_scribble_and_across_marks(template):
    layout = page_layout(template, 1, 300)
    answers = random_answers(template, 1, 3, blank_rate=0.0, multiple_rate=0.0)
    groups = [g for g in layout.groups if g.kind == "question"]
    blank_levels = {}
    for style in ("filled", "pen", "scribble", "across"):
        sim = simulate_sheet(template, answers, seed=8, style=style)
        g = grey(sim.image)
        marked = [_inner(g, b) for grp in groups for b in grp.bubbles if b.value in sim.truth["answers"][grp.field]]
        blank_levels[style] = float(np.mean(marked))
        assert set(sim.truth["styles"].values()) == {style}
        if style == "across":
            # The dash covers its bubble's middle and runs into the nearest one.
            ran_on = []
            for grp in groups:
                b = next(b for b in grp.bubbles if b.value == sim.truth["answers"][grp.field])
                o = min((o for o in grp.bubbles if o is not b), key=lambda o: np.hypot(o.x - b.x, o.y - b.y))
                ran_on.append(disc_mean(g, (b.x + o.x) / 2, (b.y + o.y) / 2, 0.25 * b.r))
                far = [o2 for o2 in grp.bubbles if o2 is not b and o2 is not o]
                assert min(_inner(g, o2) for o2 in far) > 240  # the others untouched
            assert np.mean(ran_on) < 150
    assert blank_levels["pen"] < 90 and blank_levels["filled"] < 110
    # A scribble leaves paper showing: lighter than a fill, clearly darker than paper.
    assert blank_levels["filled"] + 20 < blank_levels["scribble"] < 215


def test_paper_style_mixes_what_real_sheets_show(template, answers):
    from batches.omr.synthetic.simulate import PAPER_STYLES

    sim = simulate_sheet(template, answers, seed=5, style="paper")
    used = {s for per in sim.truth["bubble_styles"].values() for s in per.values()}
    assert used == set(PAPER_STYLES)


def test_whiteout_covers_an_earlier_answer(template):
    layout = page_layout(template, 1, 300)
    answers = random_answers(template, 1, 4, blank_rate=0.0, multiple_rate=0.0)
    opts = dataclasses.replace(PRESETS["clean"], pen="black", whiteout_rate=0.3, bubble_letters=0.7)
    sim = simulate_sheet(template, answers, seed=9, preset=opts)
    whited = sim.truth["whited_out"]
    assert len(whited) == 30
    g = grey(sim.image)
    covered, blank = [], []
    for grp in layout.groups:
        if grp.kind != "question":
            continue
        for b in grp.bubbles:
            if whited.get(grp.field) == b.value:
                assert b.value not in sim.truth["answers"][grp.field]
                covered.append((_inner(g, b, 0.9), disc_mean(g, b.x, b.y, 1.0 * b.r)))
            elif b.value not in sim.truth["answers"][grp.field]:
                blank.append((_inner(g, b, 0.9), disc_mean(g, b.x, b.y, 1.0 * b.r)))
    # Under the fluid neither the pen mark nor the printed letter and outline
    # show: lighter than a blank printed bubble, nearly paper.
    assert np.mean([c[0] for c in covered]) > np.mean([b[0] for b in blank]) + 10
    assert np.mean([c[1] for c in covered]) > 225
    # Whited-out and erased answers go to different questions.
    both = dataclasses.replace(opts, erasure_rate=0.3)
    t2 = simulate_sheet(template, answers, seed=9, preset=both).truth
    assert not set(t2["erased"]) & set(t2["whited_out"])


# ---------------------------------------------------------------- the reader on them


def _read(template, sim):
    from batches.omr.reader import read_image_bytes
    from batches.omr.synthetic import accuracy

    (reading,) = read_image_bytes(sim.encode_jpeg(), template, source="sim.jpg")
    d = reading.to_dict()
    bubbles = len(page_layout(template, 1).bubbles)
    return d, accuracy.score_sheet(d, sim.truth, bubbles, [b.name for b in template.digit_grids])


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_builtin_templates_read_them_right_or_flagged(preset):
    for name, seed in (("a4-100q-5", 31), ("a4-50q-4", 32)):
        t = load_template(name)
        sim = simulate_sheet(t, random_answers(t, 1, random.Random(seed)), seed=seed, preset=preset)
        d, s = _read(t, sim)
        assert s.silent_errors == 0, s.silent
        assert s.right >= 0.6 * s.fields or d["error"], (name, s.right, s.fields)


def test_an_unfilled_sheet_with_letters_in_its_bubbles_reads_blank():
    t = load_template("a4-100q-5")
    opts = dataclasses.replace(PRESETS["scan_letters"], stray_marks=0, erasure_rate=0.0, whiteout_rate=0.0)
    sim = simulate_sheet(t, {}, seed=3, preset=opts)
    d, s = _read(t, sim)
    assert d["error"] is None
    assert s.right == s.fields, s.silent or f"{s.wrong_flagged} wrong, flagged"
    # "blank" only says a field is unanswered (not a doubt): nothing else, no review.
    doubts = {k: v for k, v in d["flags"].items() if set(v) - {"blank"}}
    assert not doubts and not d["needs_review"], (doubts, d["sheet_flags"])


def test_letters_in_bubbles_filled_firmly_read_every_answer():
    t = load_template("a4-100q-5")
    opts = dataclasses.replace(PRESETS["scan_mild"], bubble_letters=(0.55, 0.85))
    for seed in (41, 42):
        sim = simulate_sheet(t, random_answers(t, 1, random.Random(seed)), seed=seed, preset=opts)
        d, s = _read(t, sim)
        assert s.silent_errors == 0, s.silent
        assert s.right == s.fields, f"{s.wrong_flagged} wrong, flagged"


def test_sideways_phone_photo_reads_every_answer():
    t = load_template("a4-100q-5")
    for seed in (51, 52):
        sim = simulate_sheet(t, random_answers(t, 1, random.Random(seed)), seed=seed, preset="photo_exif")
        d, s = _read(t, sim)
        assert d["error"] is None and d["sheet_flags"] == [], (d["error"], d["sheet_flags"])
        assert s.right == s.fields, s.silent or f"{s.wrong_flagged} wrong, flagged"


def test_a_form_printed_in_a_dropout_colour_is_coloured_and_its_marks_are_not(preset_sims):
    # scan_dropout prints the form in orange: its print is dark in blue, light
    # in red; pencil marks are grey in every channel.
    sim = preset_sims["scan_dropout"]
    img = sim.image.astype(np.int16)
    b, r = img[:, :, 0], img[:, :, 2]
    lowest = img.min(2)
    print_px = (lowest < 170) & (r > 200)  # dark in some channel, light in red: the print
    pencil = (img.max(2) < 110)  # dark in every channel: the marks
    assert print_px.sum() > 800 and pencil.sum() > 300
    assert float((r - b)[print_px].mean()) > 60
    assert float(np.abs(r - b)[pencil].mean()) < 25
    with pytest.raises(ValueError, match="print_ink"):
        simulate_sheet(load_template(TEMPLATE), {}, preset=dataclasses.replace(PRESETS["clean"], print_ink="gold"))
