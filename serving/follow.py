"""Following an alias: a server started on models:/name@alias loads the version the alias moves to, without a restart."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from common.settings import parse_registry_uri
from serving.core import ScoringCore, load_core

log = logging.getLogger(__name__)


@dataclass
class ModelSlot:
    """The core a server scores with now; a batch reads it once, so a switch never splits a batch."""

    core: ScoringCore


class AliasFollower:
    """Checks where `models:/name@alias` points and loads that version (with its reference) when it moved."""

    def __init__(self, source: str, threshold: float, version: str, model_threads: int = 1, runtime: str = "auto") -> None:
        reference = parse_registry_uri(source)
        if reference.alias is None:
            raise ValueError(f"{source}: only a models:/<name>@<alias> URI can be followed")
        self.source, self.name, self.alias, self.threshold, self.version = (
            source,
            reference.name,
            reference.alias,
            threshold,
            version,
        )
        self.model_threads, self.runtime = model_threads, runtime
        self.failure: str | None = None  # why the last check failed; None after a check that worked
        self.failing_since: str | None = None  # when checks started failing (UTC, ISO 8601)

    def failed(self, error: Exception) -> None:
        """Note a check that failed (the registry unreachable, the new version broken): serving goes on, degraded."""
        self.failure = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
        self.failing_since = self.failing_since or datetime.now(UTC).isoformat(timespec="seconds")

    def status(self) -> dict:
        """What /ready reports of the following: ok, or degraded since when and why."""
        if self.failure is None:
            return {"source": self.source, "status": "ok"}
        return {"source": self.source, "status": "degraded", "since": self.failing_since, "error": self.failure}

    def check(self) -> ScoringCore | None:
        """The new core when the alias moved since the last check, else None. Blocking: run it off the event loop."""
        from common.tracking import resolve_registered

        version = resolve_registered(self.source).version
        if version == self.version:
            self.failure = self.failing_since = None
            return None
        log.info("%s moved from version %s to %s: loading it", self.source, self.version, version)
        core = load_core(f"models:/{self.name}/{version}", self.threshold, model_threads=self.model_threads, runtime=self.runtime)
        core.identity = replace(core.identity, alias=parse_registry_uri(self.source).alias, source=self.source)
        self.version = version
        self.failure = self.failing_since = None
        return core
