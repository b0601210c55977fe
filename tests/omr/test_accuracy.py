"""The accuracy suite: a grid of capture conditions x mark styles over simulated
sheets. Clean and mildly degraded sheets must read every answer right; on the
hard end no answer may be wrong without a flag. The flag rate of every cell is
printed at the end of the module (visible in CI's output)."""

from __future__ import annotations

import random

import pytest

from batches.omr import load_template, page_layout
from batches.omr.reader import read_image_bytes
from batches.omr.synthetic import accuracy, simulate

TEMPLATE = load_template("a4-100q-5")
BUBBLES = len(page_layout(TEMPLATE, 1).bubbles)
DIGITS = [b.name for b in TEMPLATE.digit_grids]
STYLES = ["filled", "pencil", "light", "half", "tick", "cross", "mixed"]
EASY = ["clean", "scan_mild"]
HARD = ["scan_moderate", "scan_hard", "photo_mild", "photo_hard"]
SCORES: dict[tuple[str, str], accuracy.Score] = {}


def read_cell(preset: str, style: str, sheets: int = 1) -> accuracy.Score:
    total = accuracy.Score()
    for i in range(sheets):
        seed = 1000 + 97 * PRESET_SEEDS[preset] + 13 * STYLES.index(style) + i
        answers = simulate.random_answers(TEMPLATE, 1, random.Random(seed))
        sim = simulate.simulate_sheet(TEMPLATE, answers, page=1, seed=seed, preset=preset, style=style)
        (reading,) = read_image_bytes(sim.encode_jpeg(), TEMPLATE, source=f"{preset}-{style}-{seed}.jpg")
        total.add(accuracy.score_sheet(reading.to_dict(), sim.truth, BUBBLES, DIGITS))
    SCORES[(preset, style)] = total
    return total


PRESET_SEEDS = {name: i for i, name in enumerate(EASY + HARD)}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("preset", EASY)
def test_clean_and_mild_sheets_read_every_answer_right(preset, style):
    score = read_cell(preset, style)
    assert score.failed_sheets == 0
    assert score.right == score.fields, score.silent or f"{score.wrong_flagged} wrong answers (flagged)"


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("preset", HARD)
def test_hard_sheets_have_no_silent_errors(preset, style):
    score = read_cell(preset, style)
    assert score.silent_errors == 0, score.silent


def test_print_flag_rates(capsys):
    # Runs after the grid (pytest keeps file order); prints what the grid measured.
    assert len(SCORES) == len(STYLES) * (len(EASY) + len(HARD)), "run the whole module to see the table"
    with capsys.disabled():
        print(f"\n{'preset':14} {'style':8} {'fields':>6} {'accuracy':>9} {'silent':>6} {'flagged':>8} {'needless':>8}")
        for (preset, style), s in SCORES.items():
            print(f"{preset:14} {style:8} {s.fields:6} {s.accuracy:9.2%} {s.silent_errors:6} "
                  f"{s.flag_rate:8.1%} {s.needless_rate:8.1%}")
    assert sum(s.silent_errors for s in SCORES.values()) == 0
