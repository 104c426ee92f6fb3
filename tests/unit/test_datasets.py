"""Dataset loaders on small files the tests write, and every corrupt case."""

import gzip

import numpy as np
import pytest
from PIL import Image

from common.datasets import FOREIGN_LAYOUTS, DatasetError, load_mnist, load_png_digits, load_source
from tests.helpers import write_idx, write_mnist, write_png_classes


def test_mnist_loader_reads_idx_files(tmp_path):
    images, labels = write_mnist(tmp_path, count=12)
    digits = load_mnist(tmp_path, "test")
    assert digits.images.shape == (12, 28, 28) and digits.images.dtype == np.uint8
    assert (digits.images == images).all() and (digits.labels == labels).all()
    assert digits.source == "mnist"


def test_missing_mnist_file_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.gz: file not found; run `python -m common fetch`"):
        load_mnist(tmp_path, "test")


def test_truncated_mnist_file_is_named(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.gz: \d+ bytes after decompression.*truncated"):
        load_mnist(tmp_path, "test")


def test_cut_gzip_stream_is_named(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz: not a readable gzip file"):
        load_mnist(tmp_path, "test")


def test_corrupt_non_gzip_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.gz: not a readable gzip file"):
        load_mnist(tmp_path, "test")


def test_swapped_files_are_caught_by_the_magic_number(tmp_path):
    write_mnist(tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    image_bytes = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(image_bytes)
    with pytest.raises(DatasetError, match=r"idx magic number 2049, expected 2051"):
        load_mnist(tmp_path, "test")


def test_images_and_labels_of_different_lengths_are_refused(tmp_path):
    write_mnist(tmp_path, count=10)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9, dtype=np.uint8))
    with pytest.raises(DatasetError, match="holds 10 images but t10k-labels-idx1-ubyte.gz holds 9 labels"):
        load_mnist(tmp_path, "test")


def test_devanagari_32px_images_are_resized_to_28(tmp_path):
    write_png_classes(tmp_path / "Test", "digit_{}", side=32, per_class=3)
    digits = load_png_digits(tmp_path, FOREIGN_LAYOUTS["devanagari"])
    assert digits.images.shape == (30, 28, 28) and digits.images.dtype == np.uint8
    assert list(np.bincount(digits.labels)) == [3] * 10
    assert digits.source == "devanagari"


def test_japanese_layout_reads_zero_padded_folders(tmp_path):
    write_png_classes(tmp_path, "{:02d}", side=28, per_class=2)
    digits = load_png_digits(tmp_path, FOREIGN_LAYOUTS["japanese"], limit_per_class=1)
    assert digits.images.shape == (10, 28, 28)
    assert list(digits.labels) == list(range(10))


def test_rgb_png_becomes_grey(tmp_path):
    write_png_classes(tmp_path, "{:02d}", side=28, per_class=1)
    Image.new("RGB", (28, 28), (255, 255, 255)).save(tmp_path / "03" / "000.png")
    digits = load_png_digits(tmp_path, FOREIGN_LAYOUTS["japanese"])
    assert (digits.images[digits.labels == 3] == 255).all()


def test_missing_class_folder_names_the_layout(tmp_path):
    write_png_classes(tmp_path / "Test", "digit_{}", side=32)
    (tmp_path / "Test" / "digit_7" / "000.png").unlink()
    (tmp_path / "Test" / "digit_7" / "001.png").unlink()
    (tmp_path / "Test" / "digit_7").rmdir()
    with pytest.raises(DatasetError, match=r"digit_7: missing class folder; the devanagari layout has digit_0 \.\.\. digit_9"):
        load_png_digits(tmp_path, FOREIGN_LAYOUTS["devanagari"])


def test_empty_class_folder_is_refused(tmp_path):
    write_png_classes(tmp_path, "{:02d}", side=28)
    for png in (tmp_path / "05").glob("*.png"):
        png.unlink()
    with pytest.raises(DatasetError, match=r"05: no PNG files"):
        load_png_digits(tmp_path, FOREIGN_LAYOUTS["japanese"])


def test_corrupt_png_is_named(tmp_path):
    write_png_classes(tmp_path, "{:02d}", side=28)
    (tmp_path / "02" / "001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=r"02/001.png: not a readable PNG image"):
        load_png_digits(tmp_path, FOREIGN_LAYOUTS["japanese"])


def test_wrong_layout_folder_is_named(tmp_path):
    write_png_classes(tmp_path / "devanagari", "digit_{}", side=32)  # classes without the Test/ level
    with pytest.raises(DatasetError, match=r"devanagari/Test: folder not found for the devanagari digits"):
        load_source("devanagari", tmp_path)


def test_unknown_source_lists_the_known_ones(tmp_path):
    with pytest.raises(DatasetError, match="unknown digit source 'klingon': expected one of mnist, devanagari, japanese"):
        load_source("klingon", tmp_path)


def test_real_datasets_load_in_the_contract(shared_data):
    for source, expected in (("mnist", 10000), ("devanagari", 2400), ("japanese", 10800)):
        digits = load_source(source, shared_data)
        assert len(digits) == expected and digits.images.shape[1:] == (28, 28)
        assert set(np.unique(digits.labels)) == set(range(10))
        # white digit on black: the border is dark, the centre carries the ink
        assert digits.images[:, 0, :].mean() < 30 and digits.images[:, 10:18, 10:18].mean() > digits.images[:, 0, :].mean()
