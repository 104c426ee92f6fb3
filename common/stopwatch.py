"""Seconds per named step of a long operation (a cold start, a monitoring run), for logs and benchmarks."""

from __future__ import annotations

import time


class Stopwatch:
    """Each call records the seconds since the previous call (or the start) under its name, in `stages`."""

    def __init__(self, stages: dict[str, float] | None = None) -> None:
        self.stages = stages if stages is not None else {}
        self.started = self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(self.stages.get(stage, 0.0) + now - self.last, 3)
        self.last = now

    @property
    def total(self) -> float:
        return self.last - self.started

    def describe(self) -> str:
        """What a log line says: `stage 1.23 s, ...`."""
        return ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in self.stages.items())
