"""Importing OMRChecker templates: every sample template of OMRChecker master
imports, its built-in field types give its values and directions, config.json
and template.json are found in parent folders as OMRChecker finds them, and
anything else is refused with its JSON path."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from batches.omr.omrchecker import OmrCheckerTemplateError, load_omrchecker_template
from batches.omr.omrchecker.importer import FIELD_TYPES, find_in_folders, find_omrchecker_config
from batches.omr.synthetic.simulate import PRESETS

DATA = Path(__file__).resolve().parents[1] / "data"
REAL = DATA / "real-sheets" / "omrchecker"
SAMPLES = DATA / "omrchecker-templates"

#: OMRChecker master's FIELD_TYPES (src/constants/common.py), as it prints them.
OMRCHECKER_FIELD_TYPES = {
    "QTYPE_INT": {"bubbleValues": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"], "direction": "vertical"},
    "QTYPE_INT_FROM_1": {"bubbleValues": ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"], "direction": "vertical"},
    "QTYPE_MCQ4": {"bubbleValues": ["A", "B", "C", "D"], "direction": "horizontal"},
    "QTYPE_MCQ5": {"bubbleValues": ["A", "B", "C", "D", "E"], "direction": "horizontal"},
    "QTYPE_MCQ4_RTL": {"bubbleValues": ["D", "C", "B", "A"], "direction": "horizontal"},
    "QTYPE_MCQ5_RTL": {"bubbleValues": ["E", "D", "C", "B", "A"], "direction": "horizontal"},
}

#: Every template of OMRChecker master's samples/ kept in tests/data, with the
#: number of fields (bubble rows or columns) and output columns it defines.
SAMPLE_TEMPLATES = {
    "real-sheets/omrchecker/sample1/template.json": (35, 21),
    "real-sheets/omrchecker/sample3/colored-thick-sheet/template.json": (100, 100),
    "real-sheets/omrchecker/sample4/template.json": (11, 11),
    "real-sheets/omrchecker/sample6/template.json": (10, 1),
    "real-sheets/omrchecker/sample6/template_fb_align.json": (10, 1),
    "real-sheets/omrchecker/sample6/template_no_fb_align.json": (10, 1),
    "real-sheets/omrchecker/community/UmarFarootAPS/template.json": (204, 201),
    "real-sheets/omrchecker/community/Sandeep-1507/template.json": (207, 201),
    "real-sheets/omrchecker/community/dxuian/template.json": (100, 100),
    "real-sheets/omrchecker/community/EricSoOSU/template.json": (7, 7),
    "omrchecker-templates/sample5/template.json": (37, 23),
    "omrchecker-templates/answer-key/weighted-answers/template.json": (5, 5),
    "omrchecker-templates/community/Antibodyy/template.json": (6, 6),
    "omrchecker-templates/community/Shamanth/template.json": (8, 8),
    "omrchecker-templates/community/ibrahimkilic/template.json": (5, 5),
    "omrchecker-templates/community/UPSC-mock/template.json": (113, 103),
    "omrchecker-templates/community/DomBrzezinski/template.json": (17, 17),
    "omrchecker-templates/community/samuelIkoli/template.json": (60, 60),
    "omrchecker-templates/community/Rugvedrc/template.json": (180, 180),
}


def test_every_sample_template_is_listed():
    on_disk = {str(p.relative_to(DATA)) for root in (REAL, SAMPLES) for p in root.rglob("template*.json")}
    assert on_disk == set(SAMPLE_TEMPLATES)


@pytest.mark.parametrize("relative", sorted(SAMPLE_TEMPLATES))
def test_every_omrchecker_sample_template_imports(relative):
    path = DATA / relative
    # sample5's marker image is not among the files kept; OMRChecker's samples
    # print the same marker, so sample1's stands in for it.
    marker = (REAL / "sample1" / "omr_marker.jpg").read_bytes() if "sample5" in relative else None
    t = load_omrchecker_template(path, marker)
    n_fields, n_columns = SAMPLE_TEMPLATES[relative]
    assert len(t.fields) == n_fields and len(t.output_columns) == n_columns
    assert t.name == path.parent.name
    for f in t.fields:  # every box on the page, as OMRChecker checks
        for x, y in f.boxes:
            assert 0 <= x and x + f.bubble_w <= t.page_w and 0 <= y and y + f.bubble_h <= t.page_h


def test_real_sheets_ground_truth_names_the_template_columns():
    import csv

    for truth in REAL.rglob("ground_truth.csv"):
        template = load_omrchecker_template(truth.parent / "template.json")
        header = next(csv.reader(truth.open()))
        assert header[1:] == template.output_columns or set(header[1:]) == set(template.output_columns), truth


def test_field_types_are_omrcheckers():
    assert FIELD_TYPES == OMRCHECKER_FIELD_TYPES
    blocks = {}
    for i, name in enumerate(FIELD_TYPES):
        blocks[name] = {"fieldType": name, "origin": [20, 20 + 300 * i], "bubblesGap": 30, "labelsGap": 40,
                        "fieldLabels": [f"{chr(97 + i)}1..2"]}
    t = load_omrchecker_template({"pageDimensions": [600, 1900], "bubbleDimensions": [20, 20], "fieldBlocks": blocks,
                                  "preProcessors": []})
    for name, spec in OMRCHECKER_FIELD_TYPES.items():
        first, second = [f for f in t.fields if f.block == name]
        assert list(first.values) == spec["bubbleValues"] and first.direction == spec["direction"]
        y0 = 20 + 300 * list(FIELD_TYPES).index(name)
        # OMRChecker: values step by bubblesGap along the direction, fields by labelsGap across it.
        if spec["direction"] == "horizontal":
            assert first.boxes == tuple((20.0 + 30 * k, float(y0)) for k in range(len(spec["bubbleValues"])))
            assert second.boxes[0] == (20.0, y0 + 40.0)
        else:
            assert first.boxes == tuple((20.0, y0 + 30.0 * k) for k in range(len(spec["bubbleValues"])))
            assert second.boxes[0] == (60.0, float(y0))


def test_right_to_left_sample_puts_d_first():
    t = load_omrchecker_template(REAL / "community" / "EricSoOSU" / "template.json")
    q1 = next(f for f in t.fields if f.label == "q1")
    assert q1.values == ("D", "C", "B", "A") and q1.boxes[0] == (50.0, 50.0) and q1.boxes[3] == (170.0, 50.0)
    q6 = next(f for f in t.fields if f.label == "q6")
    assert q6.values == tuple("GFEDCBA") and q6.direction == "horizontal"


def test_a_blocks_own_values_and_direction_override_its_field_type():
    t = load_omrchecker_template({
        "pageDimensions": [400, 400], "bubbleDimensions": [20, 20], "preProcessors": [],
        "fieldBlocks": {"Yes": {"fieldType": "QTYPE_MCQ4", "bubbleValues": ["Y", "N"], "origin": [10, 10],
                                "bubblesGap": 30, "labelsGap": 30, "fieldLabels": ["a1..2"]},
                        "Down": {"fieldType": "QTYPE_MCQ4", "direction": "vertical", "origin": [200, 10],
                                 "bubblesGap": 30, "labelsGap": 30, "fieldLabels": ["b1"]}}})
    a1 = next(f for f in t.fields if f.label == "a1")
    assert a1.values == ("Y", "N") and a1.direction == "horizontal"
    b1 = next(f for f in t.fields if f.label == "b1")
    assert b1.values == tuple("ABCD") and b1.boxes == ((200.0, 10.0), (200.0, 40.0), (200.0, 70.0), (200.0, 100.0))


def test_keys_omrchecker_ignores_in_a_block_are_accepted_and_named():
    t = load_omrchecker_template(REAL / "community" / "dxuian" / "template.json")
    assert len(t.fields) == 100
    assert any(n.startswith("fieldBlocks.Column1.bubbleCount: ignored") for n in t.notes)
    block = {"fieldType": "QTYPE_MCQ4", "origin": [10, 10], "bubblesGap": 30, "labelsGap": 30,
             "fieldLabels": ["q1"], "comment": "second column"}
    t = load_omrchecker_template({"pageDimensions": [400, 400], "bubbleDimensions": [20, 20], "preProcessors": [],
                                  "fieldBlocks": {"B": block}})
    assert "fieldBlocks.B.comment: ignored (a key OMRChecker's format does not define; OMRChecker ignores it too)" \
        in t.notes


def _errors(template: dict, **kw) -> list[str]:
    with pytest.raises(OmrCheckerTemplateError) as exc:
        load_omrchecker_template(template, **kw)
    return exc.value.errors


def test_what_omrchecker_refuses_is_refused_by_json_path():
    block = {"origin": [10, 10], "bubblesGap": 30, "labelsGap": 30, "fieldLabels": ["q1..3"]}
    base = {"pageDimensions": [400, 400], "bubbleDimensions": [20, 20], "preProcessors": []}
    cases = {
        "fieldBlocks.A: needs fieldType, or bubbleValues and direction (missing: direction)":
            {**base, "fieldBlocks": {"A": {**block, "bubbleValues": ["Y", "N"]}}},
        "fieldBlocks.A: needs fieldType, or bubbleValues and direction (missing: bubbleValues, direction)":
            {**base, "fieldBlocks": {"A": block}},
        "fieldBlocks.A.fieldType: 'QTYPE_MCQ6' is not supported (known: QTYPE_INT, QTYPE_INT_FROM_1, QTYPE_MCQ4, "
        "QTYPE_MCQ5, QTYPE_MCQ4_RTL, QTYPE_MCQ5_RTL)":
            {**base, "fieldBlocks": {"A": {**block, "fieldType": "QTYPE_MCQ6"}}},
        "fieldBlocks.A.origin: must be two non-negative numbers, not [10]":
            {**base, "fieldBlocks": {"A": {**block, "fieldType": "QTYPE_MCQ4", "origin": [10]}}},
        "fieldBlocks.A.fieldLabels: 'q3..1' is not a range like 'q1..10'":
            {**base, "fieldBlocks": {"A": {**block, "fieldType": "QTYPE_MCQ4", "fieldLabels": ["q3..1"]}}},
        "fieldBlocks.A.direction: must be 'horizontal' or 'vertical', not 'diagonal'":
            {**base, "fieldBlocks": {"A": {**block, "bubbleValues": ["Y"], "direction": "diagonal"}}},
        "customLabels.Roll: names fields no block defines: ['r1']":
            {**base, "customLabels": {"Roll": ["r1"]}, "fieldBlocks": {"A": {**block, "fieldType": "QTYPE_MCQ4"}}},
        "templateVersion: not supported (unknown to OMRChecker's template format 1.x)":
            {**base, "templateVersion": 2, "fieldBlocks": {"A": {**block, "fieldType": "QTYPE_MCQ4"}}},
        "preProcessors[0].options.threshold: not supported for CropPage":
            {**base, "preProcessors": [{"name": "CropPage", "options": {"threshold": 3}}],
             "fieldBlocks": {"A": {**block, "fieldType": "QTYPE_MCQ4"}}},
        "preProcessors[0].name: 'AutoRotate' is not supported":
            {**base, "preProcessors": [{"name": "AutoRotate", "options": {}}],
             "fieldBlocks": {"A": {**block, "fieldType": "QTYPE_MCQ4"}}},
        "fieldBlocks.A: overflows the 400 x 400 page":
            {**base, "fieldBlocks": {"A": {**block, "fieldType": "QTYPE_MCQ4", "origin": [350, 10]}}},
    }
    for message, template in cases.items():
        errors = _errors(template)
        assert any(e.startswith(message) for e in errors), (message, errors)


def test_config_json_is_taken_from_the_nearest_folder_above(tmp_path):
    template = json.loads((SAMPLES / "community" / "Shamanth" / "template.json").read_text())
    sheets = tmp_path / "exam" / "room-1"
    sheets.mkdir(parents=True)
    (sheets / "template.json").write_text(json.dumps(template))
    (tmp_path / "exam" / "config.json").write_text(json.dumps({"dimensions": {"processing_width": 900,
                                                                              "processing_height": 1200}}))
    t = load_omrchecker_template(sheets / "template.json")
    assert t.processing == (900, 1200)
    assert any(n.startswith(f"config.json: {Path('..', 'config.json')} taken") for n in t.notes)
    # A config beside the template is nearer and wins.
    (sheets / "config.json").write_text(json.dumps({"dimensions": {"processing_width": 700}}))
    assert load_omrchecker_template(sheets / "template.json").processing == (700, 820)
    (sheets / "config.json").unlink()
    # No higher than the folder OMRChecker is run on.
    assert load_omrchecker_template(sheets / "template.json", root=sheets).processing == (666, 820)
    # A config.json above that is not OMRChecker's (another program's) is passed over.
    (tmp_path / "exam" / "config.json").write_text(json.dumps({"database": "x"}))
    (tmp_path / "config.json").write_text(json.dumps({"dimensions": {"processing_width": 1000}}))
    assert find_omrchecker_config(sheets / "template.json") == tmp_path / "config.json"
    assert load_omrchecker_template(sheets / "template.json").processing == (1000, 820)


def test_real_sample3_takes_its_parents_config():
    path = REAL / "sample3" / "colored-thick-sheet" / "template.json"
    assert find_omrchecker_config(path) == (REAL / "sample3" / "config.json").resolve()
    t = load_omrchecker_template(path)
    assert any("outputs" in n for n in t.notes)


def test_template_json_is_found_in_the_folders_above_an_image(tmp_path):
    from batches.omr.cli import _omrchecker_templates

    shamanth = (SAMPLES / "community" / "Shamanth" / "template.json").read_text()
    antibody = (SAMPLES / "community" / "Antibodyy" / "template.json").read_text()
    (tmp_path / "a" / "scans" / "day2").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "template.json").write_text(shamanth)
    (tmp_path / "b" / "template.json").write_text(antibody)
    image_a = tmp_path / "a" / "scans" / "day2" / "sheet.jpg"
    image_b = tmp_path / "b" / "sheet.png"
    assert find_in_folders(image_a.parent, "template.json") == tmp_path / "a" / "template.json"
    assert find_in_folders(image_a.parent, "template.json", root=tmp_path / "a" / "scans") is None
    pick = _omrchecker_templates(argparse.Namespace(omrchecker_template=str(tmp_path), omrchecker_config=None))
    assert pick(image_a).name == "a" and len(pick(image_a).fields) == 8
    assert pick(image_b).name == "b" and len(pick(image_b).fields) == 6
    assert pick(image_a) is pick(tmp_path / "a" / "other.jpg")  # loaded once
    with pytest.raises(SystemExit, match="no template.json"):
        pick(tmp_path.parent / "elsewhere.jpg")


@pytest.mark.parametrize("relative", sorted(SAMPLE_TEMPLATES))
def test_an_unfilled_sheet_of_every_sample_template_reads_blank(relative):
    """The simulator draws the template's sheet (outlines, a letter in each
    bubble, as OMRChecker's sheets print them), nobody marks it, a good
    scanner captures it: every column reads as its empty value, nothing flagged."""
    from batches.omr.omrchecker import read_omrchecker_image_bytes
    from batches.omr.omrchecker.render import expected_response, simulate_omrchecker_sheet

    path = DATA / relative
    marker = (REAL / "sample1" / "omr_marker.jpg").read_bytes() if "sample5" in relative else None
    t = load_omrchecker_template(path, marker)
    # Nothing on the sheet at all: no erased earlier answers, no stray marks, no
    # toner specks or dust (a speck inside a bubble is a question of its own).
    quiet = dataclasses.replace(PRESETS["scan_mild"], erasure_rate=0.0, stray_marks=0, speckle=0, dust=0)
    sim = simulate_omrchecker_sheet(t, {}, preset=quiet, seed=1)
    (reading,) = read_omrchecker_image_bytes(sim.encode_jpeg(), t, source=relative)
    d = reading.to_dict()
    blank = expected_response(t, {})
    assert d["error"] is None, d["error"]
    # "blank" says what was read, not a doubt.
    doubts = {k: [f for f in v if f != "blank"] for k, v in (d.get("flags") or {}).items()}
    silent = {k: d["answers"].get(k) for k in blank if d["answers"].get(k) != blank[k] and not doubts.get(k)}
    assert not silent, f"read, unflagged, on an unmarked sheet: {silent}"
    assert d["answers"] == blank and not any(doubts.values()) and not d["needs_review"], (
        {k: v for k, v in doubts.items() if v})
