"""Command-line options declared on config dataclasses (common.cli)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.cli import add_options, option, options_of


@dataclass(frozen=True, kw_only=True)
class Job:
    source: Path = option(help="where the records are")
    epochs: int = option(2, "passes")
    limit: int | None = option(None, "first N only")
    augment: bool = option(True, "random shifts")
    verbose: bool = option(False, "say more")
    clock: str = option("auto", "how windows are numbered", choices=("auto", "wall"))
    seed: int = 0  # not an option


def parser() -> argparse.ArgumentParser:
    command = argparse.ArgumentParser(prog="job", exit_on_error=False)
    add_options(command, Job)
    return command


def test_each_option_field_becomes_its_flag_and_reads_back_into_the_config():
    args = parser().parse_args(["--source", "logs", "--epochs", "5", "--no-augment", "--verbose", "--clock", "wall"])
    job = Job(**options_of(args, Job))
    assert job == Job(source=Path("logs"), epochs=5, limit=None, augment=False, verbose=True, clock="wall", seed=0)
    assert "seed" not in options_of(args, Job)


def test_defaults_come_from_the_fields_and_the_help_says_them():
    job = Job(**options_of(parser().parse_args(["--source", "x"]), Job))
    assert (job.epochs, job.limit, job.augment, job.verbose, job.clock) == (2, None, True, False, "auto")
    text = parser().format_help()
    assert "passes (default: 2)" in text and "first N only" in text and "(default: None)" not in text


def test_a_field_without_a_default_is_required_and_a_choice_is_checked():
    with pytest.raises(SystemExit):
        parser().parse_args([])
    with pytest.raises(argparse.ArgumentError, match="invalid choice: 'never'"):
        parser().parse_args(["--source", "x", "--clock", "never"])


def test_a_switch_without_a_default_a_union_of_two_types_and_an_unknown_default_are_refused():
    @dataclass
    class Switch:
        on: bool = option(help="no default")

    @dataclass
    class Either:
        size: int | str = option(1, "two types")

    with pytest.raises(TypeError, match="on: a switch needs a default"):
        add_options(argparse.ArgumentParser(), Switch)
    with pytest.raises(TypeError, match="size: a flag takes one type"):
        add_options(argparse.ArgumentParser(), Either)
    with pytest.raises(TypeError, match="no option for: nothing"):
        add_options(argparse.ArgumentParser(), Job, {"nothing": 1})
