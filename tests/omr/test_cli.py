"""The engine's command line, run as a user would: python -m batches.omr ..."""

import json
import subprocess
import sys
from pathlib import Path

import pypdfium2

ROOT = Path(__file__).resolve().parents[2]


def omr(*args, check=True):
    return subprocess.run([sys.executable, "-m", "batches.omr", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, check=check, timeout=120)


def test_templates_lists_builtins_as_json():
    lines = [json.loads(line) for line in omr("templates", "--json").stdout.splitlines()]
    by_name = {t["name"]: t for t in lines}
    assert by_name["a4-200q-5"]["pages"] == 2
    assert by_name["letter-20q-4"]["questions"] == 20


def test_layout_json_gives_every_bubble_in_pixels():
    out = omr("layout", "a4-20q-4", "--dpi", 300, "--json").stdout.splitlines()
    assert len(out) == 1
    page = json.loads(out[0])
    assert (page["width"], page["height"]) == (2480, 3508)
    assert len(page["bubbles"]) == 20 * 4 + 100 + 4
    q1 = [b for b in page["bubbles"] if b["field"] == "q1"]
    assert [b["value"] for b in q1] == ["A", "B", "C", "D"]
    assert all({"x", "y", "r", "group"} <= set(b) for b in q1)
    assert len(page["marks"]) == 4 and set(page["qr"]) == {"x", "y", "w", "h"}


def test_layout_of_two_page_template_prints_a_line_per_page():
    out = omr("layout", "a4-200q-4", "--json").stdout.splitlines()
    assert [json.loads(line)["page"] for line in out] == [1, 2]


def test_render_pdf_and_png(tmp_path):
    pdf = tmp_path / "sheet.pdf"
    omr("render", "letter-200q-5", "--out", pdf, "--exam", "FINAL")
    doc = pypdfium2.PdfDocument(str(pdf))
    assert len(doc) == 2
    assert [round(v, 1) for v in doc[0].get_size()] == [612.0, 792.0]
    png = tmp_path / "sheet.png"
    printed = omr("render", "a4-20q-5", "--png", "--dpi", 100, "--out", png).stdout.split()
    assert printed == [str(png)] and png.stat().st_size > 10_000


def test_unknown_template_is_a_clear_error():
    result = omr("layout", "a4-999q-9", check=False)
    assert result.returncode != 0
    assert "no template 'a4-999q-9'" in result.stderr


def test_simulate_then_read_round_trip(tmp_path):
    answers = {"q1": "A", "q2": "C", "q3": "", "q4": "BD", "student_number": "2024001234", "exam_version": "B"}
    answers_file = tmp_path / "answers.json"
    answers_file.write_text(json.dumps(answers))
    scan = tmp_path / "scan.jpg"
    omr("simulate", "a4-20q-4", "--answers", answers_file, "--out", scan, "--seed", 3, "--student", "S-1")
    truth = json.loads(Path(f"{scan}.truth.json").read_text())
    assert truth["answers"]["q4"] == "BD"

    lines = omr("read", scan, "--json", check=False).stdout.splitlines()
    assert len(lines) == 1
    reading = json.loads(lines[0])
    # No --template: the QR code names it.
    assert reading["template"] == "a4-20q-4"
    assert reading["qr"]["student"] == "S-1"
    for field, value in answers.items():
        assert reading["answers"][field] == value, field
    assert "multiple" in reading["flags"]["q4"]
    assert reading["needs_review"] is True
    assert {"decode", "align", "qr", "bubbles"} <= set(reading["timings_ms"])


def test_read_reports_a_file_that_is_not_an_image(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("these are not pixels")
    result = omr("read", bad, "--template", "a4-20q-4", "--json", check=False)
    reading = json.loads(result.stdout.splitlines()[0])
    assert result.returncode == 2
    assert reading["error"] and "not an image" in reading["error"]
    assert reading["needs_review"] is True


def test_read_without_template_never_opens_a_file_a_qr_code_names(tmp_path):
    import dataclasses

    import cv2

    from batches.omr.render import render_page_image
    from batches.omr.template import BUILTIN_DIR, load_template

    # A valid template file on disk, and a sheet whose QR code names its path
    planted = tmp_path / "planted.json"
    planted.write_text((BUILTIN_DIR / "a4-20q-4.json").read_text().replace('"a4-20q-4"', '"planted"'))
    assert load_template(planted).name == "planted"
    named = dataclasses.replace(load_template("a4-20q-4"), name=str(planted))
    scan = tmp_path / "scan.png"
    cv2.imwrite(str(scan), render_page_image(named, 1, dpi=150))

    # Read without --template: the QR code is read, but its path is not a template
    reading = json.loads(omr("read", scan, "--json", check=False).stdout.splitlines()[0])
    assert reading["qr"]["template"] == str(planted)
    assert reading["template"] != "planted"
    assert "unknown_template" in reading["sheet_flags"] and "not known" in reading["error"]

    # An explicit --template path given by the user still works
    reading = json.loads(omr("read", scan, "--template", planted, "--json", check=False).stdout.splitlines()[0])
    assert reading["template"] == "planted"


def _without_timings(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        reading = json.loads(line)
        reading.pop("timings_ms")
        out.append(reading)
    return out


def test_read_on_several_cores_prints_what_one_process_prints_in_the_same_order(tmp_path):
    # Images read by worker processes at once: the same readings, to the
    # byte (timings aside), in the order given; a file that is not an image
    # and one that does not exist among them are reported as they are in one
    # process, and the images after them are still read.
    sheets = ROOT / "tests/data/real-sheets/omrchecker/community/Sandeep-1507"
    bad = tmp_path / "notes.png"
    bad.write_text("these are not pixels")
    images = [sheets / "omr-1.png", bad, sheets / "omr-2.png", tmp_path / "absent.png", sheets / "omr-3.png"]
    runs = {jobs: omr("read", "--omrchecker-template", sheets / "template.json", "--json", "--jobs", jobs, *images,
                      check=False) for jobs in (1, 3)}
    one, many = runs[1], runs[3]
    assert [Path(r["file"]).name for r in _without_timings(one.stdout)] == [
        "omr-1.png", "notes.png", "omr-2.png", "omr-3.png"]
    assert _without_timings(many.stdout) == _without_timings(one.stdout)
    assert "not an image" in _without_timings(many.stdout)[1]["error"]
    assert many.returncode == one.returncode == 2
    assert many.stderr == one.stderr and f"error: {tmp_path / 'absent.png'}:" in many.stderr


def test_output_cut_short_by_its_reader_ends_quietly():
    # `python -m batches.omr layout ... | head -1`: the reader closes the pipe
    # after one line; the command stops with status 1 and no traceback.
    proc = subprocess.Popen([sys.executable, "-m", "batches.omr", "layout", "a4-200q-4", "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 1 and json.loads(first)["page"] == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
