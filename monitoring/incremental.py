"""Incremental monitoring of a partitioned dataset: which parts a run reads and which windows it judges.

A run reads only the parts no earlier run consumed. It judges a window once, completely: a window is
closed when a later window has arrived (or when the run is told to close every window), and the window
still open stays for the next run, with the parts that hold it. The watermark records the parts consumed,
the last window judged, and the last windows' rule metrics, so alert streaks and cooldowns carry across runs.
Records that arrive for a window already judged are counted as late and not judged again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from common.prediction_dataset import Part

HISTORY_WINDOWS = 12  # enough for the longest streak plus the cooldown
WATERMARK_FILE = "watermark.json"


@dataclass(frozen=True)
class Watermark:
    consumed: tuple[str, ...] = ()
    judged_through: int | None = None
    history: tuple[dict, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps(
            {"consumed": list(self.consumed), "judged_through": self.judged_through, "history": list(self.history)}, indent=1
        )

    @classmethod
    def from_json(cls, text: str) -> Watermark:
        data = json.loads(text)
        return cls(tuple(data.get("consumed", ())), data.get("judged_through"), tuple(data.get("history", ())))

    def history_frame(self) -> pd.DataFrame | None:
        return pd.DataFrame(list(self.history)) if self.history else None


@dataclass(frozen=True)
class Increment:
    """What one run reads and judges."""

    parts: tuple[Part, ...]  # to read
    after: int | None  # judge windows after this one...
    through: int | None  # ...through this one (None: nothing to judge)
    done: tuple[str, ...]  # parts consumed once this run succeeds

    @property
    def bytes(self) -> int:
        return sum(part.size for part in self.parts)


def plan_increment(
    parts: list[Part], spans: dict[str, tuple[int, int] | None], watermark: Watermark, close_all: bool = False
) -> Increment:
    """The parts to read and the windows to judge, given every part's window span and the last watermark."""
    consumed = set(watermark.consumed)
    new = tuple(part for part in parts if part.path not in consumed)
    highs = [spans[part.path][1] for part in new if spans.get(part.path) is not None]
    if not highs:
        return Increment(new, watermark.judged_through, None, tuple(part.path for part in new))
    latest = max(highs)
    through = latest if close_all else latest - 1
    if watermark.judged_through is not None and through <= watermark.judged_through:
        return Increment(new, watermark.judged_through, None, ())
    done = tuple(part.path for part in new if spans.get(part.path) is None or spans[part.path][1] <= through)
    return Increment(new, watermark.judged_through, through, done)


def advance(watermark: Watermark, increment: Increment, metrics: pd.DataFrame, rule_metrics: list[str]) -> Watermark:
    """The watermark after a run that judged `increment` into `metrics`."""
    columns = [column for column in ("window", "too_small", *rule_metrics) if column in metrics]
    recent = pd.concat([watermark.history_frame(), metrics[columns]]) if watermark.history else metrics[columns]
    recent = recent.sort_values("window").tail(HISTORY_WINDOWS)
    history = tuple(json.loads(recent.to_json(orient="records")))
    through = watermark.judged_through if increment.through is None else increment.through
    return Watermark(tuple(sorted(set(watermark.consumed) | set(increment.done))), through, history)


def in_increment(windows: pd.Series, increment: Increment) -> pd.Series:
    """Which records of `windows` the increment judges."""
    keep = windows.notna() & (windows <= (increment.through if increment.through is not None else -(2**62)))
    if increment.after is not None:
        keep &= windows > increment.after
    return keep
