"""Data-quality causes of an image (inverted, blank, saturated, off-centre, wrong scale, duplicate bursts), their
bounds fitted on held-out MNIST, and the corruptions that produce them; numpy and scipy only.

A cause names a pipeline fault rather than a new kind of digit, so each is read from a feature that no
handwritten digit moves on its own: the frame's brightness (inverted polarity), the brightest pixel (a blank or
faded scan), the share of ink at full white (saturated, clipped grey levels), the centre of mass (off-centre),
the bounding box (shrunk by a resize). Each bound sits between the reference's most extreme held-out image and
the fault, derived from the reference so every model version carries its own. Duplicate bursts (one image many
times in a window) are a window's property, counted by monitoring from the records' fingerprints.
"""

from __future__ import annotations

import numpy as np

from common.images import IMAGE_SIDE, PIXELS, image_statistics

# In priority order: an image takes the first cause whose bound it crosses (an inverted image is also saturated
# in the frame's eyes, a shifted one may also lose part of its box).
QUALITY_CAUSES = ("inverted", "blank", "saturated", "off_centre", "wrong_scale")
DUPLICATE_CAUSE = "duplicate"
CORRUPTIONS = (*QUALITY_CAUSES, DUPLICATE_CAUSE)
DUPLICATE_MIN_COUNT = 5  # one fingerprint at least this often in a window is a burst
TAIL = 0.0005  # the reference quantile each bound starts from: its most extreme held-out images
FRAME = 2  # pixels of the image's frame read for its background
_INK_ABOVE, _FULL_FROM = 12, 250  # grey levels: ink above 5%, full white from 98%

_centre = (IMAGE_SIDE - 1) / 2
_on_frame = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=bool)
_on_frame[:FRAME, :] = _on_frame[-FRAME:, :] = _on_frame[:, :FRAME] = _on_frame[:, -FRAME:] = True
_on_frame = _on_frame.reshape(PIXELS)


def quality_features(images: np.ndarray, statistics: np.ndarray | None = None) -> np.ndarray:
    """(N, 5) per uint8 (N, 28, 28) image, one column per cause in QUALITY_CAUSES order: the frame's mean
    brightness, the brightest pixel, the share of ink pixels at full white (0..1 each), the centre of mass's
    distance from the image centre and the bounding box's longer side (pixels), these two from the images'
    `image_statistics` (passed in when the caller has them already)."""
    statistics = image_statistics(images) if statistics is None else statistics
    pixels = images.reshape(len(images), PIXELS)
    grey = pixels.astype(np.float32) / 255.0
    frame = grey[:, _on_frame].mean(axis=1)
    peak = grey.max(axis=1)
    ink_pixels = (pixels > _INK_ABOVE).sum(axis=1)
    full_share = (pixels >= _FULL_FROM).sum(axis=1) / np.maximum(ink_pixels, 1)
    offset = np.hypot(statistics[:, 4] - _centre, statistics[:, 5] - _centre)
    box = np.maximum(statistics[:, 6], statistics[:, 7])
    return np.stack([frame, peak, full_share, offset, box], axis=1).astype(np.float64)


def fit_quality_bounds(images: np.ndarray) -> np.ndarray:
    """(5,) bounds from held-out images, one per cause: half-way from the reference's extreme (its TAIL quantile)
    to the fault's end of the scale for the frame (1) and the peak (0); for the full-white share, half-way from its
    99th percentile to 1 (a few handwritten digits are drawn without grey levels, so its extreme is 1 itself);
    3.5 times the extreme centre offset (foreign digits sit up to five pixels off, MNIST under 1.5); 60% of the
    smallest box."""
    features = quality_features(images)
    high = np.quantile(features, 1 - TAIL, axis=0)
    low = np.quantile(features, TAIL, axis=0)
    full_share = np.quantile(features[:, 2], 0.99)
    return np.array([(high[0] + 1) / 2, low[1] / 2, (full_share + 1) / 2, 3.5 * high[3], 0.6 * low[4]])


def quality_causes(images: np.ndarray, bounds: np.ndarray, statistics: np.ndarray | None = None) -> list[str]:
    """Each image's data-quality cause ('' for none), the first in QUALITY_CAUSES order whose bound it crosses."""
    features = quality_features(images, statistics)
    crossed = np.stack(
        [
            features[:, 0] > bounds[0],
            features[:, 1] < bounds[1],
            features[:, 2] > bounds[2],
            features[:, 3] > bounds[3],
            features[:, 4] < bounds[4],
        ],
        axis=1,
    )
    first = crossed.argmax(axis=1)
    return ["" if not crossed[row, first[row]] else QUALITY_CAUSES[first[row]] for row in range(len(images))]


def corrupt(images: np.ndarray, cause: str, rng: np.random.Generator) -> np.ndarray:
    """A copy of uint8 (N, 28, 28) digits with the pipeline fault `cause` applied to each, as production sees it:
    inverted polarity, a faded scan (10% of the ink or less), grey levels clipped to black and white (a threshold
    between 8% and 45%), a shift of 7 to 9 pixels, a resize to 35-50% re-centred, or (duplicate) every image
    replaced by the first."""
    images = np.asarray(images, dtype=np.uint8)
    count = len(images)
    if cause == "inverted":
        return 255 - images
    if cause == "blank":
        return np.rint(images * rng.uniform(0, 0.1, count)[:, None, None]).astype(np.uint8)
    if cause == "saturated":
        return np.where(images > rng.uniform(20, 115, count)[:, None, None], 255, 0).astype(np.uint8)
    if cause == "off_centre":
        from scipy import ndimage  # only the simulator and the scorecard corrupt images: serving never loads it

        angles, radii = rng.uniform(0, 2 * np.pi, count), rng.uniform(7, 9, count)
        return (
            np.stack(
                [
                    _grey(ndimage.shift(image.astype(float), (r * np.sin(a), r * np.cos(a)), order=1, mode="constant"))
                    for image, a, r in zip(images, angles, radii)
                ]
            )
            if count
            else images.copy()
        )
    if cause == "wrong_scale":
        return (
            np.stack([_shrunk(image, factor) for image, factor in zip(images, rng.uniform(0.35, 0.5, count))])
            if count
            else images.copy()
        )
    if cause == DUPLICATE_CAUSE:
        return np.repeat(images[:1], count, axis=0)
    raise ValueError(f"unknown corruption {cause!r}: expected one of {', '.join(CORRUPTIONS)}")


def _grey(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


def _shrunk(image: np.ndarray, factor: float) -> np.ndarray:
    from scipy import ndimage

    small = _grey(ndimage.zoom(image.astype(float), factor, order=1))
    out = np.zeros_like(image)
    side = small.shape[0]
    start = (IMAGE_SIDE - side) // 2
    out[start : start + side, start : start + side] = small
    return out
