"""The image contract: 28x28 uint8, white digit on black, as MNIST; and the generic statistics of such images."""

from __future__ import annotations

import hashlib

import numpy as np

IMAGE_SIDE = 28
PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
CLASS_NAMES = [str(digit) for digit in range(NUM_CLASSES)]
NUMPY_KINDS = {"U": "strings", "S": "strings", "O": "strings, nulls or mixed values", "b": "booleans", "c": "complex numbers"}


class ImageContractError(ValueError):
    """Input that is not a batch of 28x28 (or 784 flat) grey values in 0..255."""


def to_image_batch(values: object) -> np.ndarray:
    """Validate nested numbers as a batch of images and return uint8 (N, 28, 28).

    Accepts (N, 28, 28), (N, 784), (N, 28, 28, 1), or one image as (28, 28) or (784,).
    Raises ImageContractError naming the problem, never echoing the input.
    """
    rows = _whole_grey_rows(values)
    if rows is not None:
        return rows
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):
        raise ImageContractError("images must be rectangular arrays of numbers (a ragged array was given)") from None
    if array.size and array.dtype.kind not in "iuf":
        raise ImageContractError(f"pixel values must be numbers; got {NUMPY_KINDS.get(array.dtype.kind, array.dtype.name)}")
    if array.size == 0:
        raise ImageContractError("the batch is empty: send at least one image")
    # Whole numbers (what JSON clients send) need no rounding and cannot be NaN: two passes fewer over the batch.
    whole = array.dtype.kind in "iu"
    if not whole:
        array = array.astype(np.float64)
    if array.shape in ((IMAGE_SIDE, IMAGE_SIDE), (PIXELS,)):
        array = array[np.newaxis]
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2 and array.shape[1] == PIXELS:
        array = array.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ImageContractError(f"each image must be 28x28 or 784 flat grey values; got shape {describe_shape(array.shape)}")
    if not whole and not np.isfinite(array).all():
        raise ImageContractError("pixel values must be finite numbers (NaN or infinity found)")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise ImageContractError(f"pixel values must lie in 0..255; found values from {low:g} to {high:g}")
    return array.astype(np.uint8) if whole else np.rint(array).astype(np.uint8)


def _whole_grey_rows(values: object) -> np.ndarray | None:
    """Rows of 784 whole grey levels (what JSON clients send) as uint8 (N, 28, 28) in one pass, else None.

    bytes() takes a list only of ints in 0..255, so it checks what the general path checks at a third of the cost;
    anything else (other layouts, floats, values out of range, a batch of booleans) returns None and takes the
    general path, which names the problem.
    """
    if not (isinstance(values, list) and values and all(type(row) is list and len(row) == PIXELS for row in values)):
        return None
    if type(values[0][0]) is not int:  # np.asarray refuses all-boolean batches; keep that answer
        return None
    try:
        rows = bytearray().join(map(bytes, values))
    except (TypeError, ValueError):
        return None
    return np.frombuffer(rows, dtype=np.uint8).reshape(len(values), IMAGE_SIDE, IMAGE_SIDE)


def describe_shape(shape: tuple[int, ...]) -> str:
    """A shape as people write it: 27x28, 2x28x28x3."""
    return "x".join(str(side) for side in shape) or "scalar"


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) to the models' input: float32 (N, 784) grey levels 0..255."""
    return images.reshape(len(images), PIXELS).astype(np.float32)


def fingerprint(image: np.ndarray) -> str:
    """An image's identity in records: the first 16 hex digits of the SHA-256 of its 784 uint8 pixels."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()[:16]


# Sums of each image's grey levels in one product: the total, each row's and each column's. Whole grey levels in
# float32 sum exactly (at most 784 * 255 < 2**24); 2.4x faster than the float64 formulation for 256 images.
_ONES = np.ones(PIXELS, dtype=np.float32)
_CELLS = np.arange(PIXELS)
_SUMS = np.concatenate(
    [
        _ONES[:, None],
        _CELLS[:, None] // IMAGE_SIDE == np.arange(IMAGE_SIDE),
        _CELLS[:, None] % IMAGE_SIDE == np.arange(IMAGE_SIDE),
    ],
    axis=1,
).astype(np.float32)
# Thresholds on grey levels 0..255: strong ink above half (x > 0.5), faint ink above 5% (x > 0.05).
_STRONG_ABOVE, _FAINT_ABOVE = 127, 12


def image_statistics(images: np.ndarray) -> np.ndarray:
    """(N, 8) generic statistics of uint8 (N, 28, 28) digits: how much ink, how it is drawn, where it sits."""
    pixels = images.reshape(len(images), PIXELS)
    grey = pixels.astype(np.float32)
    sums = (grey @ _SUMS).astype(np.float64) / 255.0
    ink, rows, columns = sums[:, 0], sums[:, 1 : 1 + IMAGE_SIDE], sums[:, 1 + IMAGE_SIDE :]
    strong = pixels > _STRONG_ABOVE
    area = (strong.astype(np.float32) @ _ONES).astype(np.float64)
    strong_ink = (grey * strong @ _ONES).astype(np.float64) / 255.0
    stroke = np.where(area > 0, strong_ink / np.maximum(area, 1), 0.0)
    edges = (((pixels > _FAINT_ABOVE) & ~strong).astype(np.float32) @ _ONES).astype(np.float64)
    positions = np.arange(IMAGE_SIDE)
    safe_ink = np.maximum(ink, 1e-9)
    centre_row, centre_column = (rows @ positions) / safe_ink, (columns @ positions) / safe_ink
    used_rows, used_columns = rows > 0.05, columns > 0.05
    height = IMAGE_SIDE - used_rows.argmax(axis=1) - used_rows[:, ::-1].argmax(axis=1)
    width = IMAGE_SIDE - used_columns.argmax(axis=1) - used_columns[:, ::-1].argmax(axis=1)
    return np.stack([ink, area, stroke, edges, centre_row, centre_column, height, width], axis=1)
