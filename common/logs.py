"""How every entry point (the parts' command lines, scripts, benchmarks) sets up logging: one format for all."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s: %(message)s"


def configure_logging(message_only: bool = False) -> None:
    """Log INFO and above to stderr with the time and the logger's name (or the message alone, for plain progress)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s" if message_only else FORMAT, datefmt="%H:%M:%S")
