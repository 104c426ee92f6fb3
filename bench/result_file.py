"""The one way a benchmark files its result: its figures, when, on what machine, and the command that made them."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from common.machine import describe_machine, shown_path


def reproducing_command(module: str, arguments: Sequence[str], drop: Sequence[str] = ()) -> str:
    """`python -m module ...` as it was run, less the options in `drop` (where scratch files went changes nothing
    measured) and with paths under the working folder made relative, so that it reproduces on another checkout."""
    kept: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument in drop:
            skip = True
        elif not argument.startswith(tuple(f"{option}=" for option in drop)):
            kept.append(shown_path(argument) if os.path.isabs(argument) else argument)
    return shlex.join(["python", "-m", module, *kept])


def write_result(
    path: str | os.PathLike,
    benchmark: str,
    figures: dict,
    module: str,
    packages: tuple[str, ...] | None = None,
    drop: Sequence[str] = (),
) -> dict:
    """Write `figures` to `path` (JSON) with what ran them, the date, the machine and the command line; returns it."""
    result = {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(packages) if packages else describe_machine(),
        **figures,
        "command": reproducing_command(module, sys.argv[1:], drop),
    }
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    return result
