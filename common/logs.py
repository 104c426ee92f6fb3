"""How every entry point (the parts' command lines, scripts, benchmarks) sets up logging: one format for all."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s: %(message)s"
# Third-party loggers that speak at INFO about every request they make (the Azure SDK logs each request's headers,
# httpx a line per request): kept at warnings unless a command runs verbose.
CHATTY_LOGGERS = ("azure", "httpx", "httpcore", "urllib3", "py4j")
VERBOSE_HELP = "also log the SDKs' and HTTP clients' lines per request (blob storage, MLflow)"


def configure_logging(message_only: bool = False, verbose: bool = False) -> None:
    """Log INFO and above to stderr with the time and the logger's name (or the message alone, for plain progress);
    third-party request logging only when `verbose`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s" if message_only else FORMAT, datefmt="%H:%M:%S")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
