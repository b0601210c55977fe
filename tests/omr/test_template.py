"""The template format: built-ins load, validation names the field at fault."""

import copy
import json

import pytest

from batches.omr.layout import page_layout
from batches.omr.template import (
    BUILTIN_DIR,
    TemplateError,
    builtin_names,
    load_template,
    make_builtin,
    template_from_dict,
    template_to_dict,
)

EXPECTED_BUILTINS = {
    f"{paper}-{q}q-{o}" for paper in ("a4", "letter") for q in (20, 50, 100, 200) for o in (4, 5)
}


def test_every_required_builtin_ships():
    assert EXPECTED_BUILTINS <= set(builtin_names())


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_builtin_has_questions_student_number_and_exam_version(name):
    t = load_template(name)
    questions = int(name.split("-")[1][:-1])
    options = int(name.split("-")[2])
    assert t.question_count == questions
    assert all(len(b.options) == options for b in t.questions)
    for page in range(1, t.pages + 1):
        layout = page_layout(t, page, 300)
        fields = layout.fields()
        assert "student_number" in fields and "exam_version" in fields
        digit_groups = [g for g in layout.groups if g.field == "student_number"]
        assert len(digit_groups) == 10 and all(g.values == tuple("0123456789") for g in digit_groups)


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_builtin_bubbles_do_not_overlap_and_stay_inside_the_marks(name):
    t = load_template(name)
    for page in range(1, t.pages + 1):
        layout = page_layout(t, page, 100)
        bubbles = layout.bubbles
        xs = [m.x for m in layout.marks]
        ys = [m.y for m in layout.marks]
        for b in bubbles:
            assert min(xs) < b.x < max(xs) and min(ys) < b.y < max(ys)
        # nearest-neighbour distance must exceed a diameter: bubbles never touch
        pts = sorted((b.x, b.y, b.r) for b in bubbles)
        for i, (x, y, r) in enumerate(pts):
            for x2, y2, _ in pts[i + 1 : i + 12]:
                assert (x - x2) ** 2 + (y - y2) ** 2 > (2 * r) ** 2


def test_builtin_files_are_what_the_generator_makes():
    # The JSON files are data; they must not drift from make_builtin.
    for path in BUILTIN_DIR.glob("*.json"):
        data = json.loads(path.read_text())
        paper = "A4" if data["name"].startswith("a4") else "LETTER"
        q, o = data["name"].split("-")[1:]
        assert data == make_builtin(paper, int(q[:-1]), int(o))


def test_round_trip_through_dict():
    t = load_template("a4-100q-5")
    again = template_from_dict(template_to_dict(t))
    assert again == t


def test_load_from_path_and_dict(tmp_path):
    data = make_builtin("A4", 20, 4)
    data["name"] = "my-quiz"
    path = tmp_path / "quiz.json"
    path.write_text(json.dumps(data))
    assert load_template(path).name == "my-quiz"
    assert load_template(data).name == "my-quiz"


def test_unknown_name_lists_builtins():
    with pytest.raises(FileNotFoundError, match="a4-100q-5"):
        load_template("no-such-template")


def _errors(mutate):
    data = copy.deepcopy(make_builtin("A4", 20, 4))
    mutate(data)
    with pytest.raises(TemplateError) as info:
        template_from_dict(data)
    return info.value.errors


def test_errors_name_the_field():
    assert _errors(lambda d: d.update(format="other/2")) == ["format: must be 'omr-template/1', not 'other/2'"]
    errs = _errors(lambda d: d["blocks"][6].update(options=["A"]))
    assert any(e.startswith("blocks[6].options: must have 2 to 8 entries") for e in errs)
    errs = _errors(lambda d: d["blocks"][6].update(options=list("ABCDEFGHI")))
    assert any(e.startswith("blocks[6].options: must have 2 to 8 entries, not 9") for e in errs)
    errs = _errors(lambda d: d["marks"].pop())
    assert "marks: must list exactly 4 corner marks, not 3" in errs
    errs = _errors(lambda d: d["blocks"][6].update(x_mm="left"))
    assert "blocks[6].x_mm: must be a number, not 'left'" in errs
    errs = _errors(lambda d: d["blocks"][6].pop("count"))
    assert "blocks[6].count: is required" in errs
    errs = _errors(lambda d: d["blocks"][6].update(x_mm=400.0))
    assert any(e.startswith("blocks[6]: (400, ") and "outside" in e for e in errs)
    errs = _errors(lambda d: d["blocks"][0].update(type="barcode"))
    assert "blocks[0].type: must be one of questions, digits, choice, text; not 'barcode'" in errs
    errs = _errors(lambda d: d["page"].update(size="A5"))
    assert any(e.startswith("page.size: must be one of") for e in errs)


def test_duplicate_fields_on_a_page_are_refused():
    def dup(d):
        d["blocks"].append(copy.deepcopy(d["blocks"][6]) | {"y_mm": 250.0})

    errs = _errors(dup)
    assert any("field 'q1' is already defined by blocks[6]" in e for e in errs)


def test_option_labels_are_configurable():
    data = make_builtin("A4", 20, 4)
    data["blocks"][6]["options"] = ["Yes", "No"]
    t = template_from_dict(data)
    assert page_layout(t).groups[-1].values == ("Yes", "No")


def test_layout_scales_with_dpi():
    t = load_template("a4-50q-5")
    a, b = page_layout(t, 1, 150), page_layout(t, 1, 300)
    assert (a.width, a.height) == (1240, 1754)
    assert b.bubbles[7].x == pytest.approx(2 * a.bubbles[7].x)
    assert b.marks[0].size == pytest.approx(7.0 / 25.4 * 300)
    with pytest.raises(ValueError, match="has 1 page"):
        page_layout(t, 2)
