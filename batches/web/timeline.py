"""What the batch pages show about a batch's progress, built from its events.

The progress partial renders the whole state at one event (stage, bar, counts,
the stages done so far with their durations), not a delta. So a page that
connects, reconnects or misses a wake-up needs only the latest state, and the
page stream never has to replay the log one partial at a time.

Plain data in, plain data out: the same code serves the first page render
(sync) and the page stream (async), and templates never touch the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ..models import STAGE_ORDER, TERMINAL_STAGES, Batch, ProgressEvent, Stage

#: Stages listed on the page, in order. ``queued`` is waiting, not work.
SHOWN_STAGES = [s for s in STAGE_ORDER if s not in (Stage.QUEUED, Stage.COMPLETED)]


@dataclass
class StageStep:
    """One line of the stage list: a stage and how far the batch got with it."""

    stage: str
    label: str
    state: str  # "done", "current", "failed" or "pending"
    seconds: float | None = None  # time spent in the stage (so far, when current)


@dataclass
class ProgressState:
    """Everything the progress partial shows, as of one event."""

    batch_id: str
    stage: str
    stage_label: str
    message: str
    overall_percentage: float
    sheets_total: int
    sheets_processed: int
    sheets_failed: int
    sheets_needs_review: int
    #: Whole seconds while it runs (as the events carry them); a finished
    #: batch's run to a fraction of a second (a small batch takes under one).
    elapsed_seconds: int | float
    event_id: int | None
    error: str = ""
    steps: list[StageStep] = field(default_factory=list)

    @property
    def is_finished(self) -> bool:
        return self.stage in TERMINAL_STAGES

    @property
    def is_completed(self) -> bool:
        return self.stage == Stage.COMPLETED

    @property
    def is_failed(self) -> bool:
        return self.stage == Stage.FAILED

    @property
    def percent_text(self) -> str:
        """The bar's label: whole percent, except that 99.6 is not "100 %"."""
        value = self.overall_percentage
        if value >= 100 or self.is_completed:
            return "100"
        return str(min(99, int(value)))


def stage_label(stage: str) -> str:
    """The stage's name for people ("Processing sheets")."""
    try:
        return Stage(stage).label
    except ValueError:
        return stage.replace("_", " ").capitalize()


def stage_steps(events: Iterable[ProgressEvent], current: str, now: datetime | None = None) -> list[StageStep]:
    """The stage list for a batch whose events are ``events`` (in id order)
    and whose current stage is ``current``.

    A stage's duration runs from its first event to the first event of the
    stage after it; the current stage runs until ``now`` (or its last event).
    """
    first: dict[str, datetime] = {}
    order: list[str] = []
    last_seen: datetime | None = None
    for event in events:
        if event.stage not in first:
            first[event.stage] = event.timestamp
            order.append(event.stage)
        last_seen = event.timestamp
    ends: dict[str, datetime] = {}
    for this, nxt in zip(order, order[1:], strict=False):
        ends[this] = first[nxt]

    failed = current == Stage.FAILED
    # On failure, the stage that was running when it failed is the last real one seen.
    failed_at = next((s for s in reversed(order) if s not in TERMINAL_STAGES), None) if failed else None
    try:
        current_index = STAGE_ORDER.index(current)
    except ValueError:
        current_index = None

    steps = []
    for stage in SHOWN_STAGES:
        seconds = None
        if stage in first:
            end = ends.get(stage) or (now if stage == current else None) or last_seen
            seconds = max(0.0, (end - first[stage]).total_seconds()) if end else None
        if failed:
            state = "failed" if stage == failed_at else ("done" if stage in ends else "pending")
        elif current == Stage.COMPLETED:
            state = "done"
        elif stage == current:
            state = "current"
        elif stage in ends or (current_index is not None and STAGE_ORDER.index(stage) < current_index):
            state = "done"
        else:
            state = "pending"
        steps.append(StageStep(stage, stage_label(stage), state, seconds))
    return steps


def progress_state(batch: Batch, events: list[ProgressEvent], now: datetime | None = None) -> ProgressState:
    """The state to show for ``batch`` given all its ``events`` so far (id order).

    Counts and percentages come from the latest event, which is what the stream
    sends; before the first event, from the batch row.
    """
    latest = events[-1] if events else None
    if latest is not None:
        stage = latest.stage
        state = ProgressState(
            batch_id=str(batch.pk), stage=stage, stage_label=stage_label(stage), message=latest.message,
            overall_percentage=latest.overall_percentage, sheets_total=latest.sheets_total,
            sheets_processed=latest.sheets_processed, sheets_failed=latest.sheets_failed,
            sheets_needs_review=latest.sheets_needs_review, elapsed_seconds=latest.elapsed_seconds,
            event_id=latest.id,
        )
    else:
        stage = batch.stage
        state = ProgressState(
            batch_id=str(batch.pk), stage=stage, stage_label=stage_label(stage),
            message="Waiting for a worker to start" if stage == Stage.QUEUED else "",
            overall_percentage=batch.overall_percentage, sheets_total=batch.sheets_total,
            sheets_processed=batch.sheets_processed, sheets_failed=batch.sheets_failed,
            sheets_needs_review=batch.sheets_needs_review, elapsed_seconds=batch.elapsed_seconds(now),
            event_id=None,
        )
    if stage == Stage.FAILED:
        state.error = batch.error or state.message
    if stage == Stage.COMPLETED:
        # Corrections made after the run change the review count; the row is current.
        state.sheets_needs_review = batch.sheets_needs_review
    if state.is_finished and (run := batch.run_seconds()) is not None:
        state.elapsed_seconds = run
    state.steps = stage_steps(events, stage, now=None if state.is_finished else now)
    return state


def format_duration(seconds: float | None) -> str:
    """``0.4 s``, ``12 s``, ``3 min 05 s``, ``1 h 02 min``. Whole seconds (an
    ``int``, as the events' ``elapsed_seconds``) show no tenth they do not have."""
    if seconds is None:
        return ""
    if seconds < 10 and not isinstance(seconds, int):
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
