"""python -m labeling queue|serve|annotate: export the images worth a label from a prediction log; serve the page on
which a person labels them; answer a queue from a simulation's ground truth (the annotator stand-in)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from common.access import API_KEY_ENV
from common.labels import LabelFileError, write_labels
from common.logs import configure_logging
from common.prediction_dataset import DatasetError, read_records
from common.records import decompress_image, read_ground_truth
from common.settings import Settings, load_settings
from common.windows import (
    CLOCKS,
    DAILY_CLOCK,
    DEFAULT_TIMEZONE,
    DEFAULT_WINDOW,
    DURATION_FORMS,
    WindowClock,
    WindowError,
    choose_clock,
    with_windows,
)
from labeling.annotator import LABEL_DELAY_WINDOWS, simulated_labels
from labeling.queue import ALLOCATIONS, QUEUE_COLUMNS, select_for_labeling

log = logging.getLogger(__name__)


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    parser = argparse.ArgumentParser(prog="python -m labeling", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    queue = commands.add_parser("queue", help="pick the images worth a label, per window, under a budget; write them as CSV")
    queue.add_argument(
        "--prediction-log",
        default=str(settings.state_dir / "predictions.db"),
        help="where the records are: the SQLite prediction log, a Parquet export, or a prediction dataset (a folder, "
        "az://container/prefix, Azure ML's collector folder) (default: %(default)s)",
    )
    queue.add_argument("--per-window", type=int, default=10, help="labels to spend per window (default: %(default)s)")
    queue.add_argument(
        "--random-share",
        type=float,
        default=0.3,
        help="share of the budget drawn from unflagged images, for an unbiased estimate (default: %(default)s)",
    )
    queue.add_argument("--from-window", type=int, default=None, help="only simulated windows from this one on")
    queue.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default="fixed",
        help="how a window's budget is split across strata: fixed (--random-share unflagged, the rest flagged), spread "
        "(as fixed, the flagged share spread evenly over the predicted classes) or neyman (in proportion to each "
        "stratum's size times its spread) (default: %(default)s)",
    )
    queue.add_argument(
        "--cluster",
        metavar="MEMBERS.csv:WINDOW:CLUSTER",
        help="only the images of one cluster of what drifted: a monitoring run's cluster_members.csv, the window and "
        "the cluster number (as clusters.csv names them)",
    )
    queue.add_argument(
        "--clock",
        choices=CLOCKS,
        default="auto",
        help="windows as the monitor numbers them: the simulated window each request was stamped with, or wall-clock "
        "time by scoring timestamp (auto: simulated when every record is stamped, wall when none is) (default: %(default)s)",
    )
    queue.add_argument(
        "--window", default=DEFAULT_WINDOW, help=f"length of a time window: {DURATION_FORMS} (default: %(default)s)"
    )
    queue.add_argument("--timezone", default=DEFAULT_TIMEZONE, help="IANA timezone of the time windows (default: %(default)s)")
    queue.add_argument(
        "--since", help="with time windows: only windows that start at or after this ISO-8601 time (e.g. 2026-12-01T00:00+01:00)"
    )
    queue.add_argument(
        "--judged",
        type=Path,
        metavar="MONITORING_RUN",
        help="only the windows a monitoring run judged: its output folder (window_metrics.csv); none when it judged "
        "none (a scheduled pipeline queues each day's windows once)",
    )
    queue.add_argument("--seed", type=int, default=0, help="seed of the draw (default: %(default)s)")
    queue.add_argument("--out", type=Path, required=True, help="the queue as CSV (request_id, image_index, window, stratum, ...)")
    queue.add_argument(
        "--images-dir",
        type=Path,
        help="also write each queued image the log kept (flagged ones) as <request_id>-<image_index>.png here",
    )
    serve = commands.add_parser(
        "serve", help="serve the labeling page: a person labels a queue's images by keyboard into a label file"
    )
    serve.add_argument("--queue", type=Path, required=True, help="a queue written by `queue`")
    serve.add_argument(
        "--prediction-log",
        default=str(settings.state_dir / "predictions.db"),
        help="where the queue was drawn from (a log, an export or a dataset, as for `queue`); it holds the flagged "
        "images (default: %(default)s)",
    )
    serve.add_argument("--labels", type=Path, required=True, help="the label file to write, .jsonl or .csv (kept if it exists)")
    serve.add_argument("--clusters", type=Path, help="a monitoring run's cluster_members.csv, to show each image's cluster")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8200, help="port to listen on (default: %(default)s)")
    serve.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
        help="environment variable holding the API key the page asks for (required; default: %(default)s)",
    )
    annotate = commands.add_parser(
        "annotate", help="answer a queue from a simulation's ground_truth.db, some windows later (the annotator stand-in)"
    )
    annotate.add_argument("--queue", type=Path, required=True, help="a queue written by `queue`")
    annotate.add_argument("--truth", type=Path, required=True, help="the simulation's ground_truth.db")
    annotate.add_argument(
        "--delay-windows", type=int, default=LABEL_DELAY_WINDOWS, help="windows before labels come back (default: %(default)s)"
    )
    annotate.add_argument("--out", type=Path, required=True, help="the labels, .csv or .jsonl")
    return parser


def export_queue(
    log_path: str,
    per_window: int,
    random_share: float,
    from_window: int | None,
    seed: int,
    out: Path,
    images_dir: Path | None,
    clock: str = "auto",
    wall: WindowClock = DAILY_CLOCK,
    since: datetime | None = None,
    allocation: str = "fixed",
    cluster: pd.DataFrame | None = None,
    windows: set[int] | None = None,
) -> pd.DataFrame:
    """The queue of a prediction log as CSV (and the kept images as PNG files), a budget per window as the monitor
    numbers them (`clock`: auto, simulated or wall; `wall`: the time windows); a time window's queue rows carry its
    start and end. `cluster` (request_id, image_index): only those records; `windows`: only those windows."""
    if windows is not None and not windows:  # nothing judged (the collector may not even have written yet)
        queue = pd.DataFrame(columns=list(QUEUE_COLUMNS))
        out.parent.mkdir(parents=True, exist_ok=True)
        queue.to_csv(out, index=False)
        return queue
    records = read_records(log_path)
    chosen = choose_clock(clock, int(records["window"].notna().sum()), int(records["window"].isna().sum()), wall, log_path)
    records, left_out = with_windows(records, chosen, log_path)
    for line in left_out.messages():
        log.warning("%s: %s", log_path, line)
    records = records.astype({"image_index": int})
    if from_window is not None and chosen.is_wall:
        raise WindowError("--from-window counts simulated windows; with windows of time use --since")
    if since is not None and not chosen.is_wall:
        raise WindowError("--since takes windows of time; with simulated windows use --from-window")
    if from_window is not None:
        records = records[records["window"] >= from_window]
    if since is not None:
        first = chosen.window_of(since)
        first += chosen.start(first) < since  # the window that starts at or after `since`
        records = records[records["window"] >= first]
    if cluster is not None:
        records = records.merge(cluster[["request_id", "image_index"]], on=["request_id", "image_index"])
    if windows is not None:
        records = records[records["window"].isin(windows)]
    queue = select_for_labeling(records, per_window, random_share, seed, allocation=allocation)
    if chosen.is_wall:
        bounds = chosen.bounds_columns(queue["window"])
        queue = queue.assign(window_start=bounds["window_start"], window_end=bounds["window_end"])
    out.parent.mkdir(parents=True, exist_ok=True)
    queue.to_csv(out, index=False)
    if images_dir is not None:
        from PIL import Image

        images_dir.mkdir(parents=True, exist_ok=True)
        kept = queue.merge(records[["request_id", "image_index", "image"]], on=["request_id", "image_index"])
        for row in kept[kept["image"].notna()].itertuples():
            Image.fromarray(decompress_image(row.image)).save(images_dir / f"{row.request_id}-{row.image_index}.png")
    return queue


def _since(text: str | None) -> datetime | None:
    """--since as an aware datetime (UTC when it names no offset)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise WindowError(f"--since {text!r}: expected an ISO-8601 time such as 2026-12-01T00:00+01:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def judged_windows(folder: Path | None) -> set[int] | None:
    """The windows a monitoring run judged (its window_metrics.csv); empty when it judged none, which writes none."""
    if folder is None:
        return None
    if not folder.is_dir():
        raise WindowError(f"--judged {folder}: no monitoring run's output folder here")
    metrics = folder / "window_metrics.csv"
    if not metrics.is_file():
        log.info("%s has no window_metrics.csv: the monitoring run judged no window, so none is queued", folder)
        return set()
    return set(pd.read_csv(metrics, usecols=["window"])["window"].astype(int))


def _cluster(spec: str | None) -> pd.DataFrame | None:
    """--cluster MEMBERS.csv:WINDOW:CLUSTER as the (request_id, image_index) of that cluster's records."""
    if spec is None:
        return None
    path, window_text, number_text = spec.rsplit(":", 2) if spec.count(":") >= 2 else (spec, "", "")
    try:
        window, number = int(window_text), int(number_text)
    except ValueError:
        raise WindowError(f"--cluster {spec!r}: expected MEMBERS.csv:WINDOW:CLUSTER with two whole numbers") from None
    if not Path(path).is_file():
        raise WindowError(f"--cluster {spec!r}: {path} is not a file (a monitoring run writes cluster_members.csv)")
    members = pd.read_csv(path)
    chosen = members[(members["window"] == window) & (members["cluster"] == number)]
    if chosen.empty:
        raise WindowError(f"--cluster {spec!r}: {path} holds no cluster {number} in window {window}")
    return chosen


def serve_page(queue_path: Path, log_path: str, labels: Path, clusters: Path | None, host: str, port: int, api_key: str) -> None:
    """Serve the labeling page over a queue until interrupted."""
    import uvicorn

    from labeling.page import create_app, queued_images
    from labeling.store import LabelStore

    queue = pd.read_csv(queue_path, dtype={"request_id": str})
    columns = ["request_id", "image_index", "predicted", "confidence", "foreign_score", "image"]
    records = read_records(log_path, columns).astype({"request_id": str, "image_index": int})
    members = pd.read_csv(clusters, dtype={"request_id": str}) if clusters is not None else None
    images, pixels, left_out = queued_images(queue, records, members)
    if left_out:
        log.warning(
            "%s: %d queued images have no image in %s (the log keeps flagged images only)", queue_path, left_out, log_path
        )
    store = LabelStore(labels)
    log.info(
        "labeling page: http://%s:%d/ (%d images, %d answered; labels to %s)",
        host,
        port,
        len(images),
        len(store.answers()),
        labels,
    )
    uvicorn.run(create_app(images, pixels, store, api_key), host=host, port=port, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    args = build_parser(settings).parse_args(argv)
    configure_logging()
    if args.command == "serve":
        api_key = os.environ.get(args.api_key_env, "")
        problems = [
            *([f"{args.api_key_env} is empty: the page needs an API key, as the scoring server does"] if not api_key else []),
            *([f"{args.queue}: no queue here (write one with `python -m labeling queue`)"] if not args.queue.is_file() else []),
            *([f"{args.clusters}: no cluster_members.csv here"] if args.clusters and not args.clusters.is_file() else []),
        ]
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            return 2
        try:
            serve_page(args.queue, args.prediction_log, args.labels, args.clusters, args.host, args.port, api_key)
        except (LabelFileError, DatasetError, KeyError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "queue":
        try:
            wall = WindowClock.wall(args.window, args.timezone)
            since = _since(args.since)
            queue = export_queue(
                args.prediction_log,
                args.per_window,
                args.random_share,
                args.from_window,
                args.seed,
                args.out,
                args.images_dir,
                args.clock,
                wall,
                since,
                args.allocation,
                _cluster(args.cluster),
                judged_windows(args.judged),
            )
        except (WindowError, DatasetError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"queued {len(queue)} images of {queue['window'].nunique()} windows: {args.out}")
        return 0
    try:
        truth = read_ground_truth(args.truth)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    queue = pd.read_csv(args.queue, dtype={"request_id": str})
    labels = simulated_labels(queue, truth, args.delay_windows)
    write_labels(labels, args.out)
    print(f"labeled {len(labels)} of {len(queue)} queued images: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
