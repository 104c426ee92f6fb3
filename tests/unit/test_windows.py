"""Windows of wall-clock time: lengths, timezones, naming, the clock a run chooses, and when a time window closes."""

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from common.prediction_dataset import Part, PartSummary
from common.windows import (
    DAILY_CLOCK,
    SIMULATED_CLOCK,
    WindowClock,
    WindowError,
    choose_clock,
    parse_duration,
    with_windows,
)
from monitoring.incremental import Watermark, advance, part_span, plan_increment, run_clock


@pytest.mark.parametrize(
    ("text", "seconds"), [("20s", 20), ("15m", 900), ("1h", 3600), ("1d", 86400), ("7d", 604800), ("2w", 1209600)]
)
def test_window_lengths_are_read_from_their_short_forms(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1x", "h", "-1h", "0h", "1.5h", ""])
def test_an_unreadable_window_length_names_the_flag_the_value_and_the_accepted_forms(text):
    with pytest.raises(WindowError, match=rf"--window '{text}': expected a whole number and a unit: s, m, h, d or w"):
        parse_duration(text)


def test_zero_lateness_is_allowed_but_not_a_zero_window():
    assert parse_duration("0s", "--lateness", allow_zero=True) == 0
    with pytest.raises(WindowError, match="more than zero"):
        parse_duration("0s")


def test_an_unknown_timezone_names_the_flag_and_the_accepted_form():
    with pytest.raises(WindowError, match=r"--timezone 'Mars/Base': expected an IANA timezone name"):
        WindowClock.wall("1h", "Mars/Base")


def test_records_are_bucketed_by_scoring_time_into_hours_named_by_their_iso_interval():
    clock = WindowClock.wall("1h")
    stamps = ["2026-12-03T09:00:00.000000+00:00", "2026-12-03T09:59:59.999999+00:00", "2026-12-03T10:00:00.000000+00:00"]
    windows, unreadable = clock.windows_of(pd.Series(stamps))
    assert windows[0] == windows[1] == windows[2] - 1 and not unreadable.any()
    assert clock.name(windows[0]) == "2026-12-03T09:00:00+00:00/2026-12-03T10:00:00+00:00"
    assert clock.window_of(datetime(2026, 12, 3, 9, 30, tzinfo=UTC)) == windows[0]


def test_days_follow_local_midnight_and_a_dst_day_lasts_23_hours():
    clock = WindowClock.wall("1d", "Europe/Paris")
    # 22:59 UTC on 28 March is 23:59 in Paris (still the 28th); 23:00 UTC is already the 29th
    windows, _ = clock.windows_of(pd.Series(["2026-03-28T22:59:00.000000+00:00", "2026-03-28T23:00:00.000000+00:00"]))
    assert windows[1] == windows[0] + 1
    start, end = clock.bounds(windows[1])
    assert (start, end) == ("2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00")
    assert datetime.fromisoformat(end) - datetime.fromisoformat(start) == timedelta(hours=23)


def test_weeks_start_on_monday():
    clock = WindowClock.wall("7d")
    start = clock.start(clock.window_of(datetime(2026, 12, 3, 12, tzinfo=UTC)))  # a Thursday
    assert start.isoformat() == "2026-11-30T00:00:00+00:00" and start.weekday() == 0


def test_simulated_windows_keep_their_number_as_their_name():
    assert SIMULATED_CLOCK.name(7) == "window 7" and SIMULATED_CLOCK.bounds_columns(pd.Series([7]))["window_start"][0] == ""


def test_a_record_whose_timestamp_cannot_be_read_is_counted_and_named_and_the_rest_are_kept():
    frame = pd.DataFrame(
        {
            "request_id": ["a", "b", "c"],
            "image_index": [0, 0, 1],
            "window": [None, None, None],
            "timestamp": ["2026-12-03T09:00:00.000000+00:00", "yesterday", "2026-12-03T09:10:00.000000+00:00"],
        }
    )
    placed, left_out = with_windows(frame, WindowClock.wall("1h"), "log.db")
    assert placed["request_id"].tolist() == ["a", "c"] and placed["window"].nunique() == 1
    assert left_out.unreadable == 1 and left_out.unreadable_example == "log.db: request b image 0, timestamp 'yesterday'"
    assert "1 records with an unreadable timestamp left out" in left_out.messages()[0]


def test_auto_takes_simulated_windows_when_all_are_stamped_and_time_when_none_is():
    hourly = WindowClock.wall("1h")
    assert choose_clock("auto", 10, 0, hourly, "log") == SIMULATED_CLOCK
    assert choose_clock("auto", 0, 10, hourly, "log") == hourly
    assert choose_clock("wall", 10, 0, hourly, "log") == hourly


def test_a_mix_of_stamped_and_unstamped_records_is_refused_with_both_ways_to_choose():
    with pytest.raises(
        WindowError, match=r"log: 3 records carry a simulated window and 4 do not; choose --clock wall .* or --clock simulated"
    ):
        choose_clock("auto", 3, 4, DAILY_CLOCK, "log")
    with pytest.raises(WindowError, match="no record carries a simulated window"):
        choose_clock("simulated", 0, 4, DAILY_CLOCK, "log")


def summary(first: str, last: str, rows: int = 10) -> PartSummary:
    return PartSummary(rows, 0, None, (first, last))


def test_a_time_window_is_judged_once_its_end_plus_the_lateness_has_passed():
    clock = WindowClock.wall("1h")
    parts = [Part("p0", 1), Part("p1", 1)]
    summaries = {
        "p0": summary("2026-12-03T09:05:00.000000+00:00", "2026-12-03T09:55:00.000000+00:00"),
        "p1": summary("2026-12-03T10:01:00.000000+00:00", "2026-12-03T10:03:00.000000+00:00"),
    }
    spans = {path: part_span(value, clock) for path, value in summaries.items()}
    nine = clock.window_of(datetime(2026, 12, 3, 9, tzinfo=UTC))
    assert spans == {"p0": (nine, nine), "p1": (nine + 1, nine + 1)}
    # at 10:03 with 5 minutes' lateness, 09:00-10:00 is still open: records may still arrive for it
    open_at_1003 = clock.window_of(datetime(2026, 12, 3, 10, 3, tzinfo=UTC) - timedelta(minutes=5))
    assert plan_increment(parts, spans, Watermark(), clock=clock, first_open=open_at_1003).through is None
    # at 10:06 it is closed; 10:00-11:00 stays open with its part for the next run
    open_at_1006 = clock.window_of(datetime(2026, 12, 3, 10, 6, tzinfo=UTC) - timedelta(minutes=5))
    increment = plan_increment(parts, spans, Watermark(), clock=clock, first_open=open_at_1006)
    assert (increment.after, increment.through, increment.done, increment.clock) == (None, nine, ("p0",), clock)
    mark = advance(Watermark(), increment, pd.DataFrame({"window": [nine], "too_small": [False]}), [])
    assert Watermark.from_json(mark.to_json()) == mark and mark.clock == clock


def test_a_dataset_judged_by_one_clock_refuses_another_unless_judged_again_in_full():
    daily = Watermark(("p0",), 5, (), DAILY_CLOCK)
    new_parts = [summary("2026-12-03T09:00:00.000000+00:00", "2026-12-03T09:00:00.000000+00:00")]
    assert run_clock(daily, new_parts, "auto", None, None, "ds") == DAILY_CLOCK
    with pytest.raises(WindowError, match=r"ds: earlier runs judged it by windows of 1d .* pass --full"):
        run_clock(daily, [], "auto", "1h", None, "ds")
    assert run_clock(Watermark(), [], "wall", "1h", None, "ds") == WindowClock.wall("1h")


def test_new_unstamped_records_under_a_watermark_of_simulated_windows_are_refused_not_ignored():
    simulated = Watermark(("p0",), 5, (), SIMULATED_CLOCK)
    with pytest.raises(WindowError, match=r"ds: earlier runs judged it by simulated windows, and 10 new records carry none"):
        run_clock(simulated, [summary("2026-12-03T09:00:00+00:00", "2026-12-03T09:00:00+00:00")], "auto", None, None, "ds")


def test_auto_over_a_dataset_of_simulated_windows_keeps_them_whatever_window_is_given():
    simulated = Watermark(("p0",), 5, (), SIMULATED_CLOCK)
    assert run_clock(simulated, [], "auto", "1d", None, "ds") == SIMULATED_CLOCK
    with pytest.raises(WindowError, match="earlier runs judged it by simulated windows"):
        run_clock(simulated, [], "wall", "1d", None, "ds")


def test_a_window_or_timezone_not_restated_is_the_watermarks():
    paris = WindowClock.wall("1h", "Europe/Paris")
    mark = Watermark(("p0",), 5, (), paris)
    assert run_clock(mark, [], "auto", "1h", None, "ds") == paris
    assert run_clock(mark, [], "wall", None, "Europe/Paris", "ds") == paris


def test_a_watermark_from_before_time_windows_judged_simulated_ones():
    assert Watermark.from_json('{"consumed": ["p0"], "judged_through": 3, "history": []}').clock == SIMULATED_CLOCK
    assert Watermark.from_json('{"consumed": [], "judged_through": null, "history": []}').clock is None


def test_a_part_read_again_for_its_open_window_counts_no_late_record_and_an_unreadable_extreme_is_passed_over(tmp_path):
    import pyarrow.parquet as pq

    from common.prediction_dataset import filesystem, list_parts, part_summary, records_table
    from monitoring.engine import open_dataset
    from tests.unit.test_prediction_dataset import record

    def stamped(number: int, moment: str):
        return record(number, None)._replace(timestamp=moment)

    rows = [stamped(n, f"2026-11-22T09:5{n}:00.000000+00:00") for n in range(5)]
    rows += [stamped(n, f"2026-11-22T10:0{n - 5}:00.000000+00:00") for n in range(5, 9)] + [stamped(9, "garbage")]
    (tmp_path / "ds").mkdir()
    pq.write_table(records_table([row.row() for row in rows]), tmp_path / "ds" / "part-a-000000000000.parquet")
    fs, root = filesystem(str(tmp_path / "ds"))
    parts = list_parts(fs, root)
    found = part_summary(fs, parts[0])  # 'garbage' sorts last: the extremes come from the readable timestamps
    assert found.times == ("2026-11-22T09:50:00.000000+00:00", "2026-11-22T10:03:00.000000+00:00")
    hourly = WindowClock.wall("1h")
    spans = {parts[0].path: part_span(found, hourly)}
    ten = hourly.window_of(datetime(2026, 11, 22, 10, tzinfo=UTC))
    first = plan_increment(parts, spans, Watermark(), clock=hourly, first_open=ten)
    log = open_dataset(str(tmp_path / "ds"), first, "pandas", tmp_path / "cache")
    assert len(log.frame) == 5 and log.left_out.unreadable == 1 and log.left_out.late == 0
    mark = advance(Watermark(), first, pd.DataFrame({"window": [ten - 1], "too_small": [False]}), [])
    assert mark.pending == (parts[0].path,) and mark.consumed == ()
    second = plan_increment(parts, spans, mark, clock=hourly, first_open=ten + 1)
    assert second.reread == (parts[0].path,) and (second.after, second.through) == (ten - 1, ten)
    log = open_dataset(str(tmp_path / "ds"), second, "pandas", tmp_path / "cache")
    assert len(log.frame) == 4 and log.left_out.late == 0 and log.left_out.unreadable == 0  # counted once, the first time
