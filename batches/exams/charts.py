"""Charts drawn on the server as SVG, so they print as they show and need no
script: the score histogram. Black outlines, counts written above the bars
and labelled axes keep it readable on a black-and-white printout."""

from __future__ import annotations

import math
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 22, 48


def _number(value: float) -> str:
    return f"{value:g}"


def _ticks(top: int) -> list[int]:
    """Round steps for the count axis, at most about five."""
    if top <= 5:
        return list(range(top + 1))
    step = 10 ** math.floor(math.log10(top / 5))
    for factor in (1, 2, 5, 10):
        if top / (step * factor) <= 5:
            step *= factor
            break
    return list(range(0, top + 1, int(step)))


def histogram_svg(bins: list[dict[str, Any]], *, title: str = "Scores") -> SafeString:
    """The histogram of ``summary()["histogram"]`` (``from``, ``to``,
    ``count``) as an inline SVG. Each bar carries ``data-count``, ``data-from``
    and ``data-to``; its height is proportional to its count."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = max((b["count"] for b in bins), default=0)
    scale_top = max(top, 1)
    n = max(len(bins), 1)
    slot = plot_w / n
    gap = min(2.0, slot * 0.15)
    # One label every few bins so that they never overlap (about 36 px each).
    label_every = max(1, math.ceil(36 / slot))
    one_per_point = all(b["to"] - b["from"] == 1 for b in bins)
    parts = [
        f'<svg class="histogram" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-labelledby="histogram-title" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="histogram-title">{escape(title)}</title>',
    ]
    for tick in _ticks(top):
        y = TOP + plot_h - tick / scale_top * plot_h
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    for i, b in enumerate(bins):
        height = b["count"] / scale_top * plot_h
        x = LEFT + i * slot + gap / 2
        y = TOP + plot_h - height
        label = (_number(b["from"]) if one_per_point
                 else f'{_number(b["from"])}–{_number(b["to"])}')
        parts.append(
            f'<rect class="bar" x="{x:.2f}" y="{y:.2f}" width="{slot - gap:.2f}" height="{height:.2f}" '
            f'data-count="{b["count"]}" data-from="{_number(b["from"])}" data-to="{_number(b["to"])}">'
            f'<title>{escape(label)}: {b["count"]}</title></rect>')
        if b["count"]:
            parts.append(f'<text class="count" x="{x + (slot - gap) / 2:.2f}" y="{y - 4:.2f}" '
                         f'text-anchor="middle">{b["count"]}</text>')
        if i % label_every == 0 or i == n - 1:
            parts.append(f'<text class="tick" x="{LEFT + i * slot + slot / 2:.2f}" y="{TOP + plot_h + 16}" '
                         f'text-anchor="middle">{_number(b["from"])}</text>')
    parts += [
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>',
        f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}"/>',
        f'<text class="label" x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 8}" text-anchor="middle">'
        f'Score{" (the lower end of each bin)" if not one_per_point else ""}</text>',
        f'<text class="label" transform="translate(14 {TOP + plot_h / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">Sheets</text>',
        "</svg>",
    ]
    return mark_safe("".join(parts))  # every text above is a number or escaped
