"""python -m common fetch: fill the local dataset cache."""

from __future__ import annotations

import argparse
import sys

from common.datasets import DatasetError
from common.fetch import fetch_all
from common.logs import configure_logging
from common.settings import Settings, load_settings


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    parser = argparse.ArgumentParser(prog="python -m common", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="fill the dataset cache from a mirror or the public downloads")
    fetch.add_argument("--cache", default=str(settings.data_dir), help="cache folder (default: %(default)s)")
    fetch.add_argument(
        "--mirror",
        default=settings.mirror,
        help="a folder or URL in the public layouts, read only (default: %(default)s; none: MNIST from its public downloads)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    args = build_parser(settings).parse_args(argv)
    configure_logging(message_only=True)
    try:
        cache = fetch_all(args.cache, args.mirror)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"datasets ready in {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
