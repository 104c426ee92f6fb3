"""How training splits its data: MNIST train (the Keras and Spark jobs, the reference) and labeled served digits (retraining)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from common.datasets import Digits
from common.images import IMAGE_SIDE
from common.records import decompress_image

LABELED_STEP_SHARE = 0.1  # labeled images are repeated until they are about this share of an epoch


def split_train_validation(digits: Digits, validation_size: int, seed: int, limit: int | None) -> tuple[Digits, Digits]:
    """Shuffle with `seed`, hold out `validation_size` for validation, keep at most `limit` for training."""
    if validation_size >= len(digits):
        raise ValueError(f"validation_size {validation_size} leaves no training data out of {len(digits)} images")
    order = np.random.default_rng(seed).permutation(len(digits))
    validation, train = order[:validation_size], order[validation_size:]
    return digits.subset(train[:limit]), digits.subset(validation)


@dataclass(frozen=True)
class LabeledImages:
    """Labeled served images with their identities."""

    digits: Digits
    request_ids: np.ndarray
    image_indexes: np.ndarray
    fingerprints: np.ndarray
    windows: np.ndarray


def labeled_images(log_columns: dict[str, np.ndarray], labels: pd.DataFrame) -> tuple[LabeledImages, int]:
    """The labeled records whose image the log kept, and how many labeled records had none (unflagged images)."""
    records = pd.DataFrame(
        {name: log_columns[name] for name in ("request_id", "image_index", "window", "fingerprint", "image")}
    ).astype({"image_index": int})
    joined = labels[["request_id", "image_index", "label"]].merge(records, on=["request_id", "image_index"])
    with_image = joined[joined["image"].notna()]
    images = (
        np.stack([decompress_image(blob) for blob in with_image["image"]])
        if len(with_image)
        else np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    )
    digits = Digits(images, with_image["label"].to_numpy(dtype=np.int64), "labeled")
    found = LabeledImages(
        digits,
        with_image["request_id"].to_numpy(),
        with_image["image_index"].to_numpy(),
        with_image["fingerprint"].to_numpy(),
        with_image["window"].to_numpy(),
    )
    return found, len(labels) - len(with_image)


def replay_mask(request_ids: np.ndarray, image_indexes: np.ndarray, share: float) -> np.ndarray:
    """True for the labeled images held out for replay: a hash of (request id, image index), so the split is stable."""
    buckets = np.array(
        [
            int(hashlib.sha256(f"{rid}:{index}".encode()).hexdigest()[:8], 16) / 16**8
            for rid, index in zip(request_ids, image_indexes)
        ]
    )
    return buckets < share


def repeats_for(labeled: int, train: int, share: float = LABELED_STEP_SHARE) -> int:
    """How many times each labeled image goes into an epoch so that labeled images are about `share` of it."""
    return max(1, round(share * train / ((1 - share) * max(labeled, 1))))
