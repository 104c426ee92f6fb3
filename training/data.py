"""How training splits its data: MNIST train (the Keras and Spark jobs, the reference), labeled served digits
(retraining), and the incident traffic a retrained version's reference takes in."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from common.datasets import Digits
from common.images import IMAGE_SIDE
from common.records import FOREIGN_FLAG, LEARNED_FLAG, decompress_image
from common.reference import FOREIGN_FALSE_ALARM_RATE

LABELED_STEP_SHARE = 0.1  # labeled images are repeated until they are about this share of an epoch
MIN_INCIDENT_SHARE = 0.05  # foreign share of the labeled traffic under which it is no incident to reference
MIN_INCIDENT_IMAGES = 100  # foreign images kept in the log needed to reference them
RECENT_RECORDS = 1000  # the newest records of the labeled traffic that say what share it came in at


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


def augmented_copies(
    images: np.ndarray, copies: int, seed: int, shift: float = 2.0, degrees: float = 12.0, scale: float = 0.1
) -> np.ndarray:
    """`copies` of each image in a row, the first as it is and the others turned (up to `degrees`), scaled (by up to
    `scale`) and moved (up to `shift` pixels) at random: a handful of labeled digits teaches more than their exact
    repeats, which a network learns by heart."""
    rng = np.random.default_rng(seed)
    centre = (np.array(images.shape[1:]) - 1) / 2
    out = np.repeat(images, copies, axis=0)
    for index in range(len(out)):
        if index % copies == 0:
            continue
        angle = np.deg2rad(rng.uniform(-degrees, degrees))
        factor = rng.uniform(1 - scale, 1 + scale)
        # affine_transform maps each output pixel back to the input: the inverse rotation and scale about the centre
        matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / factor
        offset = centre - matrix @ (centre + rng.uniform(-shift, shift, 2))
        moved = ndimage.affine_transform(images[index // copies].astype(np.float32), matrix, offset, order=1)
        out[index] = np.clip(np.rint(moved), 0, 255).astype(np.uint8)
    return out


def repeats_for(labeled: int, train: int, share: float = LABELED_STEP_SHARE) -> int:
    """How many times each labeled image goes into an epoch so that labeled images are about `share` of it."""
    return max(1, round(share * train / ((1 - share) * max(labeled, 1))))


@dataclass(frozen=True)
class IncidentTraffic:
    """The foreign-flagged images of the traffic the labels came from, and the share of that traffic they were."""

    images: np.ndarray  # (n, 28, 28) uint8, distinct, none trained on
    fingerprints: np.ndarray
    share: float  # estimated foreign share of its newest records
    first_timestamp: str
    last_timestamp: str
    records: int  # records of the span


def incident_traffic(
    log_columns: dict[str, np.ndarray], labels: pd.DataFrame, trained_fingerprints: set[str]
) -> IncidentTraffic | None:
    """The traffic between the first and the last labeled record: its images unlike held-out MNIST (flagged
    `foreign`, or `learned` by a version whose reference took in earlier incident traffic) that were not trained
    on, and their share of its newest RECENT_RECORDS (less the foreign flag's false-alarm rate). None when that
    share or those images are too few to count as an incident's traffic."""
    records = pd.DataFrame(
        {name: log_columns[name] for name in ("request_id", "image_index", "timestamp", "flags", "fingerprint", "image")}
    ).astype({"image_index": int})
    labeled = records.merge(labels[["request_id", "image_index"]], on=["request_id", "image_index"])
    if labeled.empty:
        return None
    first, last = labeled["timestamp"].min(), labeled["timestamp"].max()
    span = records[records["timestamp"].between(first, last)].sort_values("timestamp", kind="stable")
    unlike_mnist = span["flags"].str.split(",").map(lambda flags: FOREIGN_FLAG in flags or LEARNED_FLAG in flags)
    unlike_mnist = unlike_mnist.to_numpy(dtype=bool)
    recent = unlike_mnist[-RECENT_RECORDS:]
    share = float(max(0.0, (recent.mean() - FOREIGN_FALSE_ALARM_RATE) / (1 - FOREIGN_FALSE_ALARM_RATE))) if len(recent) else 0.0
    kept = span[unlike_mnist & span["image"].notna().to_numpy() & ~span["fingerprint"].isin(trained_fingerprints).to_numpy()]
    kept = kept.drop_duplicates("fingerprint")
    if share < MIN_INCIDENT_SHARE or len(kept) < MIN_INCIDENT_IMAGES:
        return None
    images = np.stack([decompress_image(blob) for blob in kept["image"]])
    return IncidentTraffic(images, kept["fingerprint"].to_numpy(), min(share, 0.95), str(first), str(last), len(span))
