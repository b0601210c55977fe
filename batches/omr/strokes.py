"""Pen and pencil strokes through a bubble (a tick, a cross, a scribble), told
apart from an even shade by their dark pixels.

A stroke covers only part of a bubble, so its mean darkness stays low, but
where it runs it is nearly as dark as a fill. Both readers (this project's
templates and OMRChecker's) take a bubble whose inside holds enough such
pixels, over what the blank bubbles printing its value already hold, for a
mark even under the threshold for an even shade, and flag it ``faint``.
"""

from __future__ import annotations

import numpy as np

#: A stroke: at least STROKE_DARK of the inside darker than 0.5 (over the
#: blank level of the bubble's printed value), its darkest pixels reaching
#: STROKE_PEAK, and a mean excess of at least STROKE_MIN (or 3.5 noise widths).
STROKE_MIN = 0.07
STROKE_DARK = 0.08
STROKE_PEAK = 0.45


def strokes(dark: np.ndarray, peak: np.ndarray, excess: np.ndarray, noise: float) -> np.ndarray:
    """(N,) bool: bubbles holding a stroke. ``dark``: share of the inside
    darker than 0.5; ``peak``: 90th percentile darkness of the inside;
    ``excess``: darkness over the blank level; ``noise``: the blanks' spread."""
    return (dark >= STROKE_DARK) & (peak >= STROKE_PEAK) & (excess >= max(STROKE_MIN, 3.5 * noise))
