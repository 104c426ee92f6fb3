"""Incremental monitoring of a partitioned dataset: which parts a run reads and which windows it judges.

A run reads only the parts no earlier run consumed. It judges a window once, completely: a simulated window is
closed when a later window has arrived, a window of wall-clock time once its end plus the allowed lateness has
passed by the newest record or by the clock (or when the run is told to close every window), and a window
still open stays for the next run, with the parts that hold it. The watermark records the parts consumed,
the last window judged, the clock it judged by, and the last windows' rule metrics, so alert streaks and
cooldowns carry across runs.
Records that arrive for a window already judged are counted as late and not judged again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

import pandas as pd

from common.prediction_dataset import Part, PartSummary
from common.windows import SIMULATED, SIMULATED_CLOCK, WALL, WindowClock, WindowError, choose_clock, format_duration

HISTORY_WINDOWS = 12  # enough for the longest streak plus the cooldown
WATERMARK_FILE = "watermark.json"


@dataclass(frozen=True)
class Watermark:
    consumed: tuple[str, ...] = ()
    judged_through: int | None = None
    history: tuple[dict, ...] = field(default=())
    clock: WindowClock | None = None  # None: no run judged yet
    pending: tuple[str, ...] = ()  # parts read but not consumed: they hold a window still open

    def to_json(self) -> str:
        return json.dumps(
            {
                "consumed": list(self.consumed),
                "judged_through": self.judged_through,
                "clock": asdict(self.clock) if self.clock else None,
                "pending": list(self.pending),
                "history": list(self.history),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Watermark:
        data = json.loads(text)
        clock = WindowClock(**data["clock"]) if data.get("clock") else None
        if clock is None and data.get("judged_through") is not None:
            clock = SIMULATED_CLOCK  # a watermark from before time windows judged simulated ones
        pending = tuple(data.get("pending", ()))
        return cls(tuple(data.get("consumed", ())), data.get("judged_through"), tuple(data.get("history", ())), clock, pending)

    def history_frame(self) -> pd.DataFrame | None:
        return pd.DataFrame(list(self.history)) if self.history else None


@dataclass(frozen=True)
class Increment:
    """What one run reads and judges."""

    parts: tuple[Part, ...]  # to read
    after: int | None  # judge windows after this one...
    through: int | None  # ...through this one (None: nothing to judge)
    done: tuple[str, ...]  # parts consumed once this run succeeds
    clock: WindowClock = SIMULATED_CLOCK  # how the windows are numbered
    reread: tuple[str, ...] = ()  # parts an earlier run read already (they held an open window): not late, not new

    @property
    def bytes(self) -> int:
        return sum(part.size for part in self.parts)


def part_span(summary: PartSummary, clock: WindowClock) -> tuple[int, int] | None:
    """The first and last window a part holds records of, under `clock`."""
    if not clock.is_wall:
        return summary.windows
    if summary.times is None:
        return None
    first, last = (datetime.fromisoformat(text) for text in summary.times)
    return clock.window_of(first), clock.window_of(last)


def run_clock(
    watermark: Watermark,
    summaries: list[PartSummary],
    requested: str,
    window: str | None,
    timezone: str | None,
    where: str,
) -> WindowClock:
    """The clock an incremental run judges by: the watermark's, once a run has judged (a --window or --timezone not
    given is the watermark's); else as `requested` (auto, simulated, wall) by how many records of the new parts
    carry a simulated window. A clock other than the watermark's is refused (windows judged once would be judged
    again), and so are new unstamped records under a watermark of simulated windows (they would never be judged)."""
    stamped = sum(summary.stamped for summary in summaries)
    unstamped = sum(summary.rows - summary.stamped for summary in summaries)
    kept = watermark.clock
    if kept is None:
        return choose_clock(requested, stamped, unstamped, WindowClock.wall(window or "1d", timezone or "UTC"), where)
    if requested == SIMULATED:
        asked = SIMULATED_CLOCK
    elif requested == WALL or (kept.is_wall and (window or timezone)):
        length = window or (format_duration(kept.length_s) if kept.is_wall else "1d")
        asked = WindowClock.wall(length, timezone or (kept.timezone if kept.is_wall else "UTC"))
    else:  # auto: the watermark's clock (over stamped records, --window and --timezone shape no window)
        asked = kept
    if asked != kept:
        raise WindowError(
            f"{where}: earlier runs judged it by {kept.describe()}; pass --full to judge every window again by "
            f"{asked.describe()}, or drop --clock/--window/--timezone"
        )
    if not kept.is_wall and unstamped:
        raise WindowError(
            f"{where}: earlier runs judged it by simulated windows, and {unstamped} new records carry none (real "
            "clients' traffic); judge everything by time with --full --clock wall --window 1d"
        )
    return kept


def plan_increment(
    parts: list[Part],
    spans: dict[str, tuple[int, int] | None],
    watermark: Watermark,
    close_all: bool = False,
    clock: WindowClock = SIMULATED_CLOCK,
    first_open: int | None = None,
) -> Increment:
    """The parts to read and the windows to judge, given every part's window span and the last watermark.

    A simulated window closes when a later one has arrived; a time window before `first_open` (the window of the
    newest record or of the clock, less the lateness) is closed; `close_all` closes every window."""
    consumed = set(watermark.consumed)
    new = tuple(part for part in parts if part.path not in consumed)
    highs = [spans[part.path][1] for part in new if spans.get(part.path) is not None]
    if not highs:
        return Increment(new, watermark.judged_through, None, tuple(part.path for part in new), clock)
    latest = max(highs)
    if close_all:
        through = latest
    elif clock.is_wall and first_open is not None:
        through = first_open - 1
    else:
        through = latest - 1
    after = watermark.judged_through
    # no new record in a window now closed and not yet judged (every one is still open, or late)
    nothing_closed = not any(
        span[0] <= through and (after is None or span[1] > after)
        for span in (spans.get(part.path) for part in new)
        if span is not None
    )
    if nothing_closed or (watermark.judged_through is not None and through <= watermark.judged_through):
        return Increment(new, watermark.judged_through, None, (), clock)
    done = tuple(part.path for part in new if spans.get(part.path) is None or spans[part.path][1] <= through)
    reread = tuple(part.path for part in new if part.path in set(watermark.pending))
    return Increment(new, watermark.judged_through, through, done, clock, reread)


def advance(watermark: Watermark, increment: Increment, metrics: pd.DataFrame, rule_metrics: list[str]) -> Watermark:
    """The watermark after a run that judged `increment` into `metrics`."""
    columns = [column for column in ("window", "too_small", *rule_metrics) if column in metrics]
    recent = pd.concat([watermark.history_frame(), metrics[columns]]) if watermark.history else metrics[columns]
    recent = recent.sort_values("window").tail(HISTORY_WINDOWS)
    history = tuple(json.loads(recent.to_json(orient="records")))
    through = watermark.judged_through if increment.through is None else increment.through
    pending = tuple(part.path for part in increment.parts if part.path not in set(increment.done))
    return Watermark(tuple(sorted(set(watermark.consumed) | set(increment.done))), through, history, increment.clock, pending)


def in_increment(windows: pd.Series, increment: Increment) -> pd.Series:
    """Which records of `windows` the increment judges."""
    keep = windows.notna() & (windows <= (increment.through if increment.through is not None else -(2**62)))
    if increment.after is not None:
        keep &= windows > increment.after
    return keep
