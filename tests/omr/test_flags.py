"""One enumeration of flag names (``batches/omr/flags.py``): every flag the
engine raises is in it, and the docs describe every one."""

import re
from pathlib import Path

import batches.omr
from batches.omr.flags import CROSS_SHEET, NOT_REVIEW, Flag
from batches.omr.reader import SheetReading, in_doubt

ENGINE = Path(batches.omr.__file__).parent
DOCS = Path(__file__).resolve().parents[2] / "docs"

#: How the engine's source spells a flag it raises.
RAISED = [
    r"\.flag\(\"(\w+)\"\)",  # reading.flag("...")
    r"flags\.append\(\"(\w+)\"\)",  # field flags
    r"sheet_flags=\[\"(\w+)\"\]",
    r"AlignError\([^)]*, \"(\w+)\"\)",  # the sheet flag an alignment failure leads to
    r"QrResult\(\"(\w+)\"",  # the QR outcome, a sheet flag unless "ok"
]


def raised_in_engine() -> set[str]:
    names = set()
    for path in ENGINE.rglob("*.py"):
        text = path.read_text()
        for pattern in RAISED:
            names.update(re.findall(pattern, text))
    return names - {"ok"}


def test_every_flag_the_engine_raises_is_in_the_enumeration():
    raised = raised_in_engine()
    assert {"multiple", "blank", "unreadable", "qr_missing", "wrong_template"} <= raised  # the patterns still match
    assert raised - set(Flag) == set()


def test_flags_equal_their_names():
    assert Flag.BLANK == "blank" and "missing_page" in set(Flag)
    assert NOT_REVIEW == {"blank"} and CROSS_SHEET == {"duplicate_page", "missing_page"}
    assert all(flag.label and flag.label[0].isupper() for flag in Flag)


def test_the_docs_describe_every_flag():
    text = " ".join((DOCS / name).read_text() for name in ("reader.md", "omrchecker.md", "server.md"))
    undocumented = [flag.value for flag in Flag if f"`{flag.value}`" not in text]
    assert undocumented == []


def test_needs_review_is_the_one_rule():
    assert not in_doubt(None, [], {"q1": ["blank"], "q2": []})
    assert in_doubt(None, [], {"q1": ["blank", "faint"]})
    assert in_doubt(None, ["qr_missing"], {})
    assert in_doubt("image is empty", [], {})
    reading = SheetReading(flags={"q1": ["blank"]})
    assert not reading.needs_review and not reading.to_dict()["needs_review"]
    reading.flags["q2"] = ["ambiguous"]
    assert reading.needs_review and reading.to_dict()["needs_review"]
