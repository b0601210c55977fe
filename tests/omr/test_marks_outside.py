"""Marks one pitch outside a block (``grid.marks_outside``): a block read a
row or a column off leaves the marks of its first or last line there, where
its outlines cannot tell (printed question numbers beside a block look like
outlines, and the next block's outlines continue its grid). Its fields are
flagged ``misaligned``."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np

from batches.omr.omrchecker import read_omrchecker_image_bytes
from batches.omr.omrchecker.grid import (
    cut_out,
    fields_beside_marks,
    geometry,
    marks_outside,
    measure,
    measurement_scale,
    place,
)
from batches.omr.omrchecker.reader import SEARCH

from .real_sheets import ROOT, long_truth, norm, real_captures, set_id
from .test_omrchecker import page_template
from .test_real_sheets import _template
from .test_register import _marked_sheet

#: Marked like this sheet's marks: the rendered discs are far darker.
MARKED = 0.4


def _read_at(t, image, shift_block=None, by=None):
    """The marks outside the blocks and the fields they flag, for the
    rendered sheet placed where it is printed, or with block ``shift_block``
    moved by ``by`` (page px: one value or one field along)."""
    geo = geometry(t)
    h, w = image.shape
    H = np.diag([w / t.page_w, h / t.page_h, 1.0])  # the whole image is the page
    cut = cut_out(image, H, t, measurement_scale(t, H, geo), geo)
    pl = place(cut, geo, SEARCH)
    if shift_block is not None:
        step = np.asarray(by, np.float64) * cut.scale
        pos, bpos = pl.pos.copy(), pl.bpos.copy()
        pos[geo.block == shift_block] += step
        bpos[geo.border_block == shift_block] += step
        pl = dataclasses.replace(pl, pos=pos, bpos=bpos)
    m = measure(cut, geo, pl)
    outside = marks_outside(cut, geo, pl, m.mean, m.mean > MARKED)
    return outside, fields_beside_marks(geo, outside), geo


def _mcq_sheet():
    t = page_template("none")
    # Every fourth question of the first block answered "A" (q3, q7, ...).
    answers = {f"q{k}": "BCDA"[k % 4] for k in range(1, 21)}
    answers.update({f"q{k}": "ABCDE"[k % 5] for k in range(21, 41)})
    return t, _marked_sheet(t, answers)


def test_no_mark_outside_a_block_placed_where_it_is_printed():
    t, image = _mcq_sheet()
    outside, fields, _geo = _read_at(t, image)
    assert not outside.any()
    assert fields == []


def test_a_block_read_a_value_off_leaves_its_first_values_marks_outside_it():
    t, image = _mcq_sheet()
    geo = geometry(t)
    mcq = int(geo.block[geo.field == [f.label for f in t.fields].index("q1")][0])
    # The block read one value to the right: every "A" mark lies one value
    # before it, where the template has no bubble.
    outside, fields, _ = _read_at(t, image, mcq, (48, 0))
    assert outside.sum() >= 2
    assert set(geo.border_block[outside].tolist()) == {mcq}
    assert fields == sorted(set(geo.field[geo.block == mcq].tolist()))


def test_a_block_read_a_field_off_leaves_its_first_fields_mark_outside_it():
    t, image = _mcq_sheet()
    geo = geometry(t)
    mcq = int(geo.block[geo.field == [f.label for f in t.fields].index("q1")][0])
    # One field down: q1's mark lies on the line before the block's first field.
    outside, fields, _ = _read_at(t, image, mcq, (0, 40))
    assert outside.sum() == 1
    assert fields == sorted(set(geo.field[geo.block == mcq].tolist()))


def test_a_dark_area_outside_a_block_is_no_mark():
    # The table beyond a page's edge, or a printed bar, beside a few rows of
    # a block: as dark as a mark one value before them, and as dark a value
    # further out.
    t, image = _mcq_sheet()
    image = image.copy()
    h, w = image.shape
    sx, sy = w / t.page_w, h / t.page_h
    # Beside q1..q6 (centres from 166, 776; 48 px between values, 40 between fields).
    cv2.rectangle(image, (0, round(740 * sy)), (round(140 * sx), round(980 * sy)), 30, -1)
    outside, fields, _ = _read_at(t, image)
    assert not outside.any()
    assert fields == []


#: ``bench/real_sheet_variants.py``'s ``persp-5-0``: dxuian's sheet with each
#: corner of the frame moved (shares of the width and height), JPEG 54. Its
#: page outline places the grid a value to the right in every block, on the
#: printed outlines there (the question numbers before each row look like
#: one); only the answers of the first value, left outside, show it.
DXUIAN_CORNERS = np.array([[-0.027483, -0.032955], [0.028710, -0.008202], [0.008514, -0.012610], [-0.024724, 0.017761]])


def test_a_photo_read_a_value_off_has_every_wrong_answer_in_a_flagged_field():
    set_path, name = "community/dxuian", "omrcollegesheet.jpg"
    row = dict(next(r for r, p in real_captures(set_path) if p.name == name))
    image = cv2.imread(str(ROOT / set_path / name))
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    M = cv2.getPerspectiveTransform(src, src + (DXUIAN_CORNERS * [w, h]).astype(np.float32))
    warped = cv2.warpPerspective(image, M, (w, h), borderMode=cv2.BORDER_REPLICATE)
    data = cv2.imencode(".jpg", warped, [cv2.IMWRITE_JPEG_QUALITY, 54])[1].tobytes()
    out = read_omrchecker_image_bytes(data, _template(set_path), source=name)[0].to_dict()
    assert out["error"] is None
    empty = json.loads((ROOT / set_path / "template.json").read_text()).get("emptyValue", "")
    alternatives, _ = long_truth()
    key = (set_id(set_path), name)
    wrong = [col for col, expected in row.items() if col != "file"
             and norm(out["answers"][col], empty) != expected.upper()
             and norm(out["answers"][col], empty) not in alternatives.get(key + (col,), set())]
    assert len(wrong) > 20  # read a value off: the case this test is about
    unflagged = [col for col in wrong if "misaligned" not in out["flags"][col]]
    assert unflagged == []


def test_a_bold_word_one_pitch_above_a_block_is_no_mark():
    # A heading printed one pitch above a block (the "we" of a bold "Answer",
    # blurred) is as dark and solid as a mark over one point of the line
    # before the block's first field; it runs on half a pitch either way,
    # where a line of bubbles has paper between them.
    t, image = _mcq_sheet()
    image = image.copy()
    h, w = image.shape
    sx, sy = w / t.page_w, h / t.page_h
    # Over option C (x 166 + 2 * 48) one field above q1 (y 776 - 40).
    x, y = 166 + 2 * 48, 776 - 40
    cv2.rectangle(image, (round((x - 38) * sx), round((y - 14) * sy)), (round((x + 38) * sx), round((y + 14) * sy)),
                  30, -1)
    outside, fields, _ = _read_at(t, image)
    assert not outside.any()
    assert fields == []
