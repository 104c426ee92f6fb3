"""Loaders for the public dataset layouts: MNIST idx gz files and PNG class folders."""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.images import IMAGE_SIDE, NUM_CLASSES

log = logging.getLogger(__name__)

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
HOW_TO_GET = "run `python -m common fetch` (or `make data`) to fill the cache from the public downloads or a mirror"


class DatasetError(RuntimeError):
    """A dataset that is missing, truncated, corrupt or not in its public layout."""


@dataclass(frozen=True)
class Digits:
    """A set of digit images in the image contract, with their true labels and source name."""

    images: np.ndarray  # uint8 (N, 28, 28), white on black
    labels: np.ndarray  # int64 (N,)
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Digits:
        return Digits(self.images[indices], self.labels[indices], self.source)


@dataclass(frozen=True)
class PngLayout:
    """A public PNG layout: one folder per class, named by `folder_pattern`, under `subdir`."""

    source: str
    subdir: str
    folder_pattern: str  # formatted with the class digit


FOREIGN_LAYOUTS = {
    "devanagari": PngLayout("devanagari", "Test", "digit_{}"),
    "japanese": PngLayout("japanese", "", "{:02d}"),
}
SOURCES = ("mnist", *FOREIGN_LAYOUTS)


def load_mnist(folder: str | Path, split: str = "test") -> Digits:
    """Read MNIST's `split` ("train" or "test") from the four standard idx gz files in `folder`."""
    if split not in MNIST_FILES:
        raise DatasetError(f"unknown MNIST split {split!r}: expected 'train' or 'test'")
    images_name, labels_name = MNIST_FILES[split]
    images = _read_idx(Path(folder) / images_name, IDX_IMAGES_MAGIC)
    labels = _read_idx(Path(folder) / labels_name, IDX_LABELS_MAGIC)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DatasetError(f"{Path(folder) / images_name}: images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise DatasetError(
            f"{Path(folder)}: {images_name} holds {len(images)} images but {labels_name} holds {len(labels)} labels"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DatasetError(f"{Path(folder) / labels_name}: label {labels.max()} is not a digit 0-9")
    return Digits(images, labels.astype(np.int64), "mnist")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one gzip-compressed idx file, checking its header against its length."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found; {HOW_TO_GET}")
    try:
        with gzip.open(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path}: not a readable gzip file ({err}); delete it and {HOW_TO_GET}") from None
    dims = magic - 2048  # the idx magic's low byte is the number of dimensions
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated idx header ({len(raw)} bytes); delete it and {HOW_TO_GET}")
    found_magic, *shape = struct.unpack(f">{1 + dims}I", raw[:header])
    if found_magic != magic:
        raise DatasetError(f"{path}: idx magic number {found_magic}, expected {magic}; is this the right file?")
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DatasetError(
            f"{path}: {len(raw)} bytes after decompression, the header promises {expected}; "
            f"the file is truncated or corrupt: delete it and {HOW_TO_GET}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_png_digits(folder: str | Path, layout: PngLayout, limit_per_class: int | None = None) -> Digits:
    """Read a PNG class-folder layout (Devanagari `digit_N/`, Japanese `0N/`) into the image contract."""
    root = Path(folder) / layout.subdir
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found for the {layout.source} digits; {HOW_TO_GET}")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for digit in range(NUM_CLASSES):
        class_dir = root / layout.folder_pattern.format(digit)
        if not class_dir.is_dir():
            raise DatasetError(
                f"{class_dir}: missing class folder; the {layout.source} layout has "
                f"{layout.folder_pattern.format(0)} ... {layout.folder_pattern.format(9)} under {root}"
            )
        files = sorted(class_dir.glob("*.png"))[:limit_per_class]
        if not files:
            raise DatasetError(f"{class_dir}: no PNG files in this class folder")
        images.extend(_read_png(path) for path in files)
        labels.extend([digit] * len(files))
    log.info("loaded %d %s digits from %s", len(labels), layout.source, root)
    return Digits(np.stack(images), np.asarray(labels, dtype=np.int64), layout.source)


def _read_png(path: Path) -> np.ndarray:
    """One PNG as a 28x28 grey uint8 image (larger ones, as Devanagari's 32x32, are resized)."""
    try:
        with Image.open(path) as image:
            grey = image.convert("L")
            if grey.size != (IMAGE_SIDE, IMAGE_SIDE):
                grey = grey.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.LANCZOS)
            return np.asarray(grey, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"{path}: not a readable PNG image ({err})") from None


def load_source(source: str, data_dir: str | Path, limit_per_class: int | None = None) -> Digits:
    """The evaluation digits of a source by name: MNIST test, or a foreign set's folder under data_dir."""
    data_dir = Path(data_dir)
    if source == "mnist":
        return load_mnist(data_dir / "mnist", "test")
    if source not in FOREIGN_LAYOUTS:
        raise DatasetError(f"unknown digit source {source!r}: expected one of {', '.join(SOURCES)}")
    return load_png_digits(data_dir / source, FOREIGN_LAYOUTS[source], limit_per_class)
