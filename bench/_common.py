"""Shared set-up for the benchmarks: one core, one thread, simulated sheets."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402

cv2.setNumThreads(1)


def make_sheets(template, count: int, preset: str, seed: int = 1, style: str | None = None):
    """``count`` simulated sheets as (jpeg bytes, truth) pairs."""
    from batches.omr.synthetic import simulate

    out = []
    for i in range(count):
        rng = random.Random(seed * 100_003 + i)
        answers = simulate.random_answers(template, 1, rng)
        sim = simulate.simulate_sheet(template, answers, page=1, seed=seed * 100_003 + i, preset=preset, style=style)
        out.append((sim.encode_jpeg(), sim.truth))
    return out


def median(values):
    values = sorted(values)
    n = len(values)
    if not n:
        return 0.0
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
