"""The loop's decisions as pure functions: when labeling starts, how many images a window gets labeled, which labels
are in hand, when to retrain, and what opened after a promotion."""

from __future__ import annotations

import pandas as pd

ANSWER_COLUMNS = ["request_id", "image_index", "label", "window", "arrived_window"]


def serving_version(versions: pd.Series) -> str:
    """The version that served most of these records' `versions` (a window split by a switch counts for its main
    version)."""
    return str(versions.mode().iloc[0])


def labeling_since(since: int | None, window: int, alerted: bool) -> int | None:
    """The window labeling started at: the first that raised an alert; once started it goes on."""
    return window if since is None and alerted else since


def labels_in_hand(answered: list[pd.DataFrame], window: int) -> pd.DataFrame:
    """The answers that have come back by the end of `window` (their `arrived_window` at most it)."""
    if not answered:
        return pd.DataFrame(columns=ANSWER_COLUMNS)
    every = pd.concat(answered, ignore_index=True)
    return every[every["arrived_window"] <= window].reset_index(drop=True)


def windows_to_queue(since: int, judged_through: int | None, queued_through: int | None) -> range:
    """The judged windows whose images are not queued yet, from the one labeling started at: none before a window
    is judged, each window once."""
    if judged_through is None:
        return range(0)
    first = since if queued_through is None else max(since, queued_through + 1)
    return range(first, judged_through + 1)


def retrain_due(images_in_hand: int, images_at_last_retrain: int, retrains: int, retrain_after: int, max_retrains: int) -> bool:
    """Whether to retrain now: `retrain_after` more labeled images (with their image kept) than at the last retrain,
    and retrains left."""
    return retrains < max_retrains and images_in_hand - images_at_last_retrain >= retrain_after


def window_label_budget(per_window: int, after_retrains: int, retrains: int, max_retrains: int) -> int:
    """Images to label in a newly queued window: `per_window` while retrains are left; once they are spent the labels
    train nothing more and only keep the label-assisted accuracy estimate close, so at most `after_retrains`."""
    return per_window if retrains < max_retrains else min(per_window, after_retrains)


def incidents_after(incidents: list[dict], window: int | None, windows: int) -> dict:
    """Incidents opened after `window` (the first promotion), per 100 of the windows after it; {} with no promotion."""
    if window is None:
        return {}
    opened = [event["window"] for event in incidents if event["event"] == "opened" and event["window"] > window]
    after = windows - window - 1
    return {
        "windows": after,
        "opened": len(opened),
        "opened_at": opened,
        "per_100_windows": round(100 * len(opened) / after, 2) if after else None,
    }
