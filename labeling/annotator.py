"""The annotator stand-in of simulations: the ground-truth sidecar answers the queue, some windows later."""

from __future__ import annotations

import pandas as pd

LABEL_DELAY_WINDOWS = 1  # labels of a window's queue come back this many windows later


def simulated_labels(queue: pd.DataFrame, truth: pd.DataFrame, delay_windows: int = LABEL_DELAY_WINDOWS) -> pd.DataFrame:
    """The true label of each queued image (request_id, image_index, label, window, arrived_window).

    `truth` is the simulator's sidecar (request_id, image_index, source, label); a queued image it does not
    know (not sent by this simulation) gets no label, as a person might skip one.
    """
    if delay_windows < 0:
        raise ValueError(f"delay_windows {delay_windows} is negative")
    answered = queue[["request_id", "image_index", "window"]].merge(
        truth[["request_id", "image_index", "label"]], on=["request_id", "image_index"]
    )
    answered["label"] = answered["label"].astype(int)
    answered["window"] = answered["window"].astype(int)
    answered["arrived_window"] = answered["window"] + delay_windows
    return answered[["request_id", "image_index", "label", "window", "arrived_window"]]
