"""Item analysis, score histogram and miskey hints, kept as sums.

Every figure is a function of a few sums over the sheets (how many sheets,
how many right per item, the number of items right ``T`` per sheet and its
square, ``sum(x_i * T)`` per item, how often each answer was chosen, a count
per histogram bin). Adding or removing a sheet adds or subtracts its share of
those sums, so a correction updates the statistics of 10,000 sheets without
going over them again, and gives exactly what a full recount gives (the sums
are integers; only the score mean and spread are float sums).

Definitions (``items.json``), over every sheet scored, dropped questions left
out:

- an item is right on a sheet when it earns the question's full points;
- difficulty: the share of sheets right;
- discrimination: the point-biserial (Pearson) correlation between an item's
  rightness and the number of the *other* items right on the same sheet; None
  where either does not vary;
- options: sheets whose answer is exactly that option, then ``blank`` and
  ``multiple`` (more than one option marked);
- KR-20: ``k/(k-1) * (1 - sum(p*(1-p)) / var(T))`` with ``k`` items, ``p``
  their difficulties and ``var(T)`` the population variance of the number of
  items right; None when there are fewer than 2 items or ``var(T)`` is 0.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .rules import ExamRules
from .scoring import MASKS, POPCOUNT, ScoredSheets, ScoringTables, answer_text, score_sheet

#: Answer categories counted per question: option k (0..7), then blank, multiple.
BLANK = 8
MULTIPLE = 9
CATEGORIES = 10
CATEGORY = np.array(
    [BLANK if m == 0 else MULTIPLE if POPCOUNT[m] > 1 else m.bit_length() - 1 for m in range(MASKS)], dtype=np.int64
)
#: Histograms have one bin per point when scores are whole numbers and the range
#: is at most this wide; otherwise ``HISTOGRAM_BINS`` equal bins.
MAX_POINT_BINS = 60
HISTOGRAM_BINS = 20


def histogram_edges(tables: ScoringTables) -> np.ndarray:
    """Bin edges from the lowest possible score to ``max_score``, fixed by the
    rules so that a sheet's bin never depends on the other sheets: one bin per
    point for whole-number scores over a range of at most 60 points (the last
    bin holds ``max_score`` alone), else about 20 bins of a round width (1, 2,
    2.5 or 5 times a power of ten; the last bin holds its upper edge)."""
    low, high = tables.lowest_score(), tables.rules.max_score
    whole = bool(np.all(np.mod(tables.earned, 1) == 0))
    if whole and high - low <= MAX_POINT_BINS:
        return np.arange(math.floor(low), math.floor(high) + 2, dtype=float)
    raw = max(high - low, 1e-9) / HISTOGRAM_BINS
    power = 10.0 ** math.floor(math.log10(raw))
    width = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw - 1e-12)
    start = math.floor(low / width + 1e-9) * width
    count = max(1, math.ceil((high - start) / width - 1e-9))
    return np.round(start + width * np.arange(count + 1), 9)


def rules_digest(rules: ExamRules) -> str:
    """A fingerprint of the rules, kept with saved statistics."""
    return hashlib.sha256(json.dumps(rules.to_json(), sort_keys=True).encode()).hexdigest()[:16]


def _bins(edges: np.ndarray, scores: np.ndarray) -> np.ndarray:
    # A bin holds [from, to); the last one also holds its upper edge (max_score).
    return np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 2)


@dataclass(eq=False)
class ItemStatistics:
    """The sums the item analysis and the histogram are computed from.

    ``right[v, q]``: sheets of version v right on question q; ``chosen[v, q, c]``:
    sheets of version v whose answer to q falls in category c (option, blank,
    multiple); ``cross[q]``: sum over sheets of rightness(q) x items right;
    ``total``/``total_sq``: sums of the number of items right and its square;
    ``score_sum``/``score_sq``: of the scores; ``histogram``: sheets per bin of
    ``edges``.
    """

    tables: ScoringTables
    sheets: int
    right: np.ndarray
    chosen: np.ndarray
    cross: np.ndarray
    total: int
    total_sq: int
    score_sum: float
    score_sq: float
    edges: np.ndarray
    histogram: np.ndarray

    @classmethod
    def empty(cls, tables: ScoringTables) -> ItemStatistics:
        nv, nq = len(tables.versions), len(tables.questions)
        edges = histogram_edges(tables)
        return cls(
            tables, 0, np.zeros((nv, nq), np.int64), np.zeros((nv, nq, CATEGORIES), np.int64),
            np.zeros(nq, np.int64), 0, 0, 0.0, 0.0, edges, np.zeros(len(edges) - 1, np.int64),
        )

    @classmethod
    def of(cls, tables: ScoringTables, scored: ScoredSheets) -> ItemStatistics:
        """The statistics of these sheets (those not scored are left out)."""
        stats = cls.empty(tables)
        stats.add(scored)
        return stats

    def add(self, scored: ScoredSheets, sign: int = 1) -> None:
        """Count these sheets in (``sign=-1``: take them out again)."""
        keep = scored.scored
        if not keep.any():
            return
        answers, version, right = scored.answers[keep], scored.version[keep], scored.right[keep]
        scores = scored.scores[keep]
        nv, nq = self.right.shape
        x = right & self.tables.counted[None, :]
        items_right = x.sum(axis=1, dtype=np.int64)
        cell = version[:, None] * nq + np.arange(nq)[None, :]
        self.sheets += sign * int(keep.sum())
        self.right += sign * np.bincount(cell[right], minlength=nv * nq).reshape(nv, nq)
        categories = cell * CATEGORIES + CATEGORY[answers]
        self.chosen += sign * np.bincount(categories.ravel(), minlength=nv * nq * CATEGORIES).reshape(self.chosen.shape)
        self.cross += sign * (items_right @ x.astype(np.int64))
        self.total += sign * int(items_right.sum())
        self.total_sq += sign * int((items_right * items_right).sum())
        self.score_sum += sign * float(scores.sum())
        self.score_sq += sign * float((scores * scores).sum())
        self.histogram += sign * np.bincount(_bins(self.edges, scores), minlength=len(self.histogram))

    def remove(self, scored: ScoredSheets) -> None:
        self.add(scored, sign=-1)

    def replace(self, before: ScoredSheets, after: ScoredSheets) -> None:
        """A sheet re-scored (a correction, a new key): its old share out, the new one in."""
        self.remove(before)
        self.add(after)

    # ------------------------------------------------------------ figures

    def items(self) -> dict[str, Any]:
        """The item analysis as ``items.json`` gives it."""
        n = self.sheets
        t = self.tables
        right = self.right.sum(axis=0)
        chosen = self.chosen.sum(axis=0)
        items: dict[str, Any] = {}
        for q, name in enumerate(t.questions):
            if not t.counted[q]:
                continue
            options = {o: int(chosen[q, k]) for k, o in enumerate(t.options(q))}
            options["blank"] = int(chosen[q, BLANK])
            options["multiple"] = int(chosen[q, MULTIPLE])
            items[name] = {
                "difficulty": int(right[q]) / n if n else None,
                "discrimination": self._point_biserial(int(right[q]), int(self.cross[q])),
                "options": options,
            }
        return {"students": n, "kr20": self.kr20(), "items": items}

    def _point_biserial(self, s: int, cross: int) -> float | None:
        # x: the item's rightness (sum s, sum of squares s); r: the other items
        # right, T - x: sum total - s, sum of squares total_sq - 2 cross + s,
        # sum of x*r cross - s. Integers until the square root.
        n = self.sheets
        sum_r = self.total - s
        sum_rr = self.total_sq - 2 * cross + s
        var_x = n * s - s * s
        var_r = n * sum_rr - sum_r * sum_r
        if n == 0 or var_x == 0 or var_r == 0:
            return None
        return (n * (cross - s) - s * sum_r) / math.sqrt(float(var_x) * float(var_r))

    def kr20(self) -> float | None:
        n, k = self.sheets, int(self.tables.counted.sum())
        var_t = n * self.total_sq - self.total * self.total  # n^2 x population variance
        if n == 0 or k < 2 or var_t == 0:
            return None
        s = self.right.sum(axis=0)[self.tables.counted].astype(object)  # exact integers
        pq = int(sum(s * (n - s)))  # n^2 x sum p(1-p)
        return k / (k - 1) * (1 - pq / var_t)

    def summary(self) -> dict[str, Any]:
        """Sheets, mean and population standard deviation of the scores,
        ``max_score`` and the histogram as [{"from", "to", "count"}]."""
        n = self.sheets
        mean = self.score_sum / n if n else None
        sd = math.sqrt(max(self.score_sq / n - mean * mean, 0.0)) if n else None
        bins = [
            {"from": float(self.edges[i]), "to": float(self.edges[i + 1]), "count": int(c)}
            for i, c in enumerate(self.histogram)
        ]
        return {"sheets": n, "mean": mean, "sd": sd, "max_score": self.tables.rules.max_score, "histogram": bins}

    def miskey_hints(self) -> list[dict[str, Any]]:
        """Questions that look miskeyed: negative discrimination, or on some
        version a wrong single answer chosen by more sheets than got it right."""
        t = self.tables
        hints: list[dict[str, Any]] = []
        items = self.items()["items"]
        for q, name in enumerate(t.questions):
            if not t.counted[q]:
                continue
            r = items[name]["discrimination"]
            if r is not None and r < 0:
                hints.append({"question": name, "reason": "negative_discrimination", "discrimination": r})
            for v, version in enumerate(t.versions):
                wrong = [
                    (int(self.chosen[v, q, k]), answer_text(t, q, 1 << k))
                    for k in range(len(t.options(q)))
                    if not t.right[v, q, 1 << k]
                ]
                if not wrong:
                    continue
                count, answer = max(wrong, key=lambda w: w[0])
                if count > self.right[v, q]:
                    hints.append({
                        "question": name, "reason": "distractor_above_key", "version": version,
                        "answer": answer, "chosen": count, "right": int(self.right[v, q]),
                    })
        return hints

    # ------------------------------------------------------------ storage

    def to_dict(self) -> dict[str, Any]:
        """The sums as plain JSON (to keep beside the exam between corrections)."""
        return {
            "rules": rules_digest(self.tables.rules), "sheets": self.sheets, "right": self.right.tolist(), "chosen": self.chosen.tolist(),
            "cross": self.cross.tolist(), "total": self.total, "total_sq": self.total_sq,
            "score_sum": self.score_sum, "score_sq": self.score_sq, "histogram": self.histogram.tolist(),
        }

    @classmethod
    def from_dict(cls, tables: ScoringTables, data: dict[str, Any]) -> ItemStatistics:
        """Sums saved by ``to_dict``, for the same rules: after a change of key or
        rules the sheets must be counted again (``of``); ValueError otherwise."""
        if data.get("rules") != rules_digest(tables.rules):
            raise ValueError("these statistics were counted with other rules: count the sheets again")
        stats = cls.empty(tables)
        for name in ("right", "chosen", "cross", "histogram"):
            value = np.array(data[name], dtype=np.int64)
            if value.shape != getattr(stats, name).shape:
                raise ValueError(f"{name}: saved for other rules (shape {value.shape}, not {getattr(stats, name).shape})")
            setattr(stats, name, value)
        stats.sheets, stats.total, stats.total_sq = int(data["sheets"]), int(data["total"]), int(data["total_sq"])
        stats.score_sum, stats.score_sq = float(data["score_sum"]), float(data["score_sq"])
        return stats


#: One sheet as the server holds it: {field: answer as read}, and the version read.
SheetAnswers = tuple[Mapping[str, str | None], str | None]


def rescore_sheet(
    tables: ScoringTables, stats: ItemStatistics, before: SheetAnswers | None, after: SheetAnswers | None
) -> ScoredSheets | None:
    """A correction: one sheet's answers and version as they were (``before``;
    None for a sheet new to the exam) and as they are now (``after``; None for a
    sheet taken out). Updates ``stats`` in place and returns the sheet scored
    now (a one-row ``ScoredSheets``), or None when it was taken out."""
    if before is not None:
        stats.remove(score_sheet(tables, *before))
    if after is None:
        return None
    scored = score_sheet(tables, *after)
    stats.add(scored)
    return scored
