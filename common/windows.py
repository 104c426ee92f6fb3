"""Which window a prediction belongs to: the simulated window a client stamped, or a span of wall-clock time.

A record carries a window only when a simulation stamps one (`X-Window`, or `window` in the Azure body); real
clients send none, so their records are bucketed by the server's scoring timestamp into windows of a fixed
length (15 minutes, an hour, a day, a week...) of local time in a timezone. Time windows are numbered from a
Monday midnight of local time, so a day starts at local midnight and a week on Monday, and every number maps
back to its start and end (ISO-8601, with the timezone's offset: a DST day lasts 23 or 25 hours).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

SIMULATED, WALL = "simulated", "wall"
CLOCKS = ("auto", SIMULATED, WALL)
DEFAULT_WINDOW = "1d"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_LATENESS = "5m"
# Monday 1970-01-05 00:00 local time: window 0 of every length starts there
ORIGIN_S = 4 * 86_400
UNITS_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
DURATION = re.compile(r"^\s*(?P<count>\d+)\s*(?P<unit>[smhdw])\s*$")
DURATION_FORMS = "a whole number and a unit: s, m, h, d or w (e.g. 20s, 15m, 1h, 1d, 7d)"


class WindowError(ValueError):
    """A window length, lateness, timezone or clock that cannot be used; the message names the flag and value."""


def parse_duration(text: str, flag: str = "--window", allow_zero: bool = False) -> int:
    """Seconds of a duration written as '15m', '1h', '1d', '7d', '20s' (`flag` names where it came from)."""
    match = DURATION.match(str(text))
    if not match or (int(match["count"]) == 0 and not allow_zero):
        raise WindowError(f"{flag} {text!r}: expected {DURATION_FORMS}{'' if allow_zero else ', more than zero'}")
    return int(match["count"]) * UNITS_S[match["unit"]]


def parse_timezone(name: str, flag: str = "--timezone") -> ZoneInfo:
    """The IANA timezone `name` (UTC, Europe/Paris, America/New_York...)."""
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"{flag} {name!r}: expected an IANA timezone name such as UTC, Europe/Paris or Asia/Tokyo") from None


def format_duration(seconds: int) -> str:
    """The shortest of '20s', '15m', '1h', '1d', '7d' that says `seconds`."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class WindowClock:
    """How a run numbers its windows: the client's stamp (simulated) or `length_s` of local time in `timezone`."""

    kind: str = SIMULATED
    length_s: int = 86_400
    timezone: str = DEFAULT_TIMEZONE

    @classmethod
    def wall(cls, window: str = DEFAULT_WINDOW, timezone: str = DEFAULT_TIMEZONE) -> WindowClock:
        """Windows of wall-clock time from the command line's --window and --timezone."""
        parse_timezone(timezone)
        return cls(WALL, parse_duration(window), timezone)

    @property
    def is_wall(self) -> bool:
        return self.kind == WALL

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        """What a person reads: which clock the run judged by."""
        if not self.is_wall:
            return "simulated windows (the window each request was stamped with)"
        return f"windows of {format_duration(self.length_s)} of wall-clock time ({self.timezone}), by scoring timestamp"

    def windows_of(self, timestamps: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Each ISO-8601 timestamp's window number, and which timestamps could not be read (their window is -1)."""
        moments = parse_moments(timestamps)
        unreadable = moments.isna().to_numpy()
        local = moments.dt.tz_convert(self.zone).dt.tz_localize(None)
        seconds = local.to_numpy(dtype="datetime64[ns]").astype(np.int64) // 1_000_000_000
        windows = np.floor_divide(seconds - ORIGIN_S, self.length_s)
        windows[unreadable] = -1
        return windows.astype(np.int64), unreadable

    def window_of(self, moment: datetime) -> int:
        """The window of one aware datetime."""
        local = moment.astimezone(self.zone).replace(tzinfo=None)
        seconds = int((local - datetime(1970, 1, 1)).total_seconds() // 1)
        return (seconds - ORIGIN_S) // self.length_s

    def start(self, window: int) -> datetime:
        """When a time window starts (aware, in the clock's timezone)."""
        return self._local(ORIGIN_S + int(window) * self.length_s)

    def end(self, window: int) -> datetime:
        """When a time window ends: the next one's start."""
        return self.start(int(window) + 1)

    def _local(self, seconds: int) -> datetime:
        naive = datetime(1970, 1, 1) + timedelta(seconds=seconds)
        # a local time a DST jump skips or repeats: pandas' rules (shift forward; the first of the two)
        stamp = pd.Timestamp(naive).tz_localize(self.timezone, ambiguous=True, nonexistent="shift_forward")
        return stamp.to_pydatetime()

    def bounds(self, window: int) -> tuple[str, str]:
        """A time window's start and end in ISO-8601."""
        return self.start(window).isoformat(), self.end(window).isoformat()

    def name(self, window: int) -> str:
        """How a person reads a window: its ISO-8601 interval, or 'window N' for a simulated one."""
        if not self.is_wall:
            return f"window {int(window)}"
        start, end = self.bounds(window)
        return f"{start}/{end}"

    def bounds_columns(self, windows: pd.Series) -> pd.DataFrame:
        """window_start and window_end (ISO-8601) of each window; empty strings for simulated windows."""
        if not self.is_wall:
            return pd.DataFrame({"window_start": "", "window_end": ""}, index=windows.index)
        named = {int(window): self.bounds(window) for window in set(windows)}
        return pd.DataFrame(
            {
                "window_start": [named[int(window)][0] for window in windows],
                "window_end": [named[int(window)][1] for window in windows],
            },
            index=windows.index,
        )


def parse_moments(texts) -> pd.Series:
    """ISO-8601 timestamps as aware UTC times, NaT where one cannot be read (a timestamp with no offset is UTC), as
    windows_of reads them."""
    return pd.to_datetime(pd.Series(np.asarray(texts, dtype=object)), utc=True, format="ISO8601", errors="coerce")


def utc_text(moment: datetime) -> str:
    """An aware datetime as the prediction record writes timestamps: ISO-8601 UTC with microseconds, so that
    bounds compare with records as text."""
    return moment.astimezone(ZoneInfo("UTC")).isoformat(timespec="microseconds")


SIMULATED_CLOCK = WindowClock()
DAILY_CLOCK = WindowClock(WALL, 86_400, DEFAULT_TIMEZONE)  # the default windows of wall-clock time: UTC days


def choose_clock(requested: str, stamped: int, unstamped: int, wall: WindowClock, where: str) -> WindowClock:
    """The clock a run judges by, given how many records carry a simulated window and how many do not.

    'auto' takes the simulated windows when every record has one and wall-clock time when none has; a mix is
    refused, with the two ways to choose."""
    if requested not in CLOCKS:
        raise WindowError(f"--clock {requested!r}: expected one of {', '.join(CLOCKS)}")
    if requested == WALL:
        return wall
    if requested == SIMULATED:
        if not stamped:
            raise WindowError(
                f"{where}: no record carries a simulated window; judge them by time with --clock wall --window 1h "
                "(or --clock auto)"
            )
        return WindowClock()
    if stamped and unstamped:
        raise WindowError(
            f"{where}: {stamped} records carry a simulated window and {unstamped} do not; choose --clock wall to judge "
            "every record by its scoring time (--window, --timezone), or --clock simulated to judge only the stamped ones"
        )
    return wall if unstamped else WindowClock()


@dataclass(frozen=True)
class LeftOut:
    """Records a run could not place in a window, counted and named so nothing is dropped unsaid."""

    unreadable: int = 0  # timestamps that are not ISO-8601
    unreadable_example: str = ""  # where the first of them is (file, line or part; request id and image index)
    unstamped: int = 0  # records without a simulated window, under --clock simulated
    late: int = 0  # records of windows an earlier run already judged

    def __add__(self, other: LeftOut) -> LeftOut:
        return LeftOut(
            self.unreadable + other.unreadable,
            self.unreadable_example or other.unreadable_example,
            self.unstamped + other.unstamped,
            self.late + other.late,
        )

    def messages(self) -> list[str]:
        """One line per kind of record left out, for the run's log and summary."""
        lines = []
        if self.unreadable:
            lines.append(f"{self.unreadable} records with an unreadable timestamp left out (first: {self.unreadable_example})")
        if self.unstamped:
            lines.append(f"{self.unstamped} records without a simulated window left out (judged by simulated windows)")
        if self.late:
            lines.append(f"{self.late} late records of windows an earlier run already judged, not judged again")
        return lines


def with_windows(frame: pd.DataFrame, clock: WindowClock, where: str) -> tuple[pd.DataFrame, LeftOut]:
    """The records of `frame` that have a window under `clock`, with `window` as int64, and what was left out.

    By wall-clock time every record's window comes from its `timestamp`; a timestamp that cannot be read is
    counted and named (`where`, request id and image index). Simulated: the stamped records only."""
    if not clock.is_wall:
        stamped = frame["window"].notna().to_numpy()
        return frame[stamped].astype({"window": "int64"}), LeftOut(unstamped=int((~stamped).sum()))
    windows, unreadable = clock.windows_of(frame["timestamp"])
    example = ""
    if unreadable.any():
        first = frame[unreadable].iloc[0]
        example = f"{where}: request {first['request_id']} image {first['image_index']}, timestamp {first['timestamp']!r}"
    placed = frame.assign(window=windows)[~unreadable]
    return placed, LeftOut(unreadable=int(unreadable.sum()), unreadable_example=example)


NOTHING_LEFT_OUT = LeftOut()
