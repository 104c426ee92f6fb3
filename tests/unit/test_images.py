"""The image contract: what is accepted, and the message for each kind of bad input."""

import math

import numpy as np
import pytest

from common.images import ImageContractError, to_image_batch, to_model_input


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 784), (3, 28, 28, 1), (28, 28), (784,)], ids=lambda s: "x".join(map(str, s)))
def test_accepted_shapes_become_uint8_batches(shape):
    values = np.full(shape, 200.0)
    batch = to_image_batch(values.tolist())
    assert batch.dtype == np.uint8
    assert batch.shape[1:] == (28, 28)
    assert (batch == 200).all()


def test_flat_and_square_forms_give_the_same_images():
    square = np.arange(784).reshape(28, 28) % 256
    assert (to_image_batch([square.tolist()]) == to_image_batch([square.ravel().tolist()])).all()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.zeros((1, 27, 28)).tolist(), "got shape 1x27x28"),
        (np.zeros((1, 28, 28, 3)).tolist(), "got shape 1x28x28x3"),
        (np.zeros((1, 785)).tolist(), "got shape 1x785"),
        ([[math.nan] * 784], "NaN or infinity"),
        ([[math.inf] * 784], "NaN or infinity"),
        ([[-1] * 784], "0..255; found values from -1"),
        ([[256] * 784], "to 256"),
        ([["12"] * 784], "got strings"),
        ([[None] * 784], "strings, nulls or mixed"),
        ([[True] * 784], "got booleans"),
        ([], "batch is empty"),
        ([[1, 2], [3]], "ragged"),
    ],
    ids=[
        "27x28",
        "3-channels",
        "785-values",
        "nan",
        "infinity",
        "negative",
        "over-255",
        "strings",
        "nulls",
        "booleans",
        "empty",
        "ragged",
    ],
)
def test_bad_input_names_the_problem(values, message):
    with pytest.raises(ImageContractError, match=message.replace("(", r"\(").replace(".", r"\.")):
        to_image_batch(values)


def test_error_message_never_echoes_the_input():
    with pytest.raises(ImageContractError) as raised:
        to_image_batch([[123456.0] * 785])
    assert len(str(raised.value)) < 200


def test_model_input_is_flat_float32():
    batch = to_image_batch(np.full((2, 28, 28), 7).tolist())
    model_input = to_model_input(batch)
    assert model_input.shape == (2, 784) and model_input.dtype == np.float32 and model_input.max() == 7


def test_whole_and_fractional_grey_levels_give_the_same_images():
    levels = np.arange(784) % 255
    as_floats = to_image_batch([(levels + 0.4).tolist()])
    assert (to_image_batch([levels.tolist()]) == as_floats).all() and (as_floats.ravel() == levels).all()
    assert (to_image_batch([(levels + 0.6).tolist()]).ravel() == levels + 1).all()


def test_rows_of_whole_grey_levels_read_as_the_general_path_reads_them():
    levels = np.random.default_rng(0).integers(0, 256, size=(5, 784))
    batch = to_image_batch(levels.tolist())
    assert batch.dtype == np.uint8 and batch.shape == (5, 28, 28) and batch.flags.writeable
    assert (batch.reshape(5, 784) == levels).all()
    assert (to_image_batch([[1] + [True] * 783]).ravel() == 1).all()  # as np.asarray reads a mixed row


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([[0] * 784, [0] * 783 + [256]], "to 256"),
        ([[0] * 784, [0] * 783 + [-3]], "found values from -3"),
        ([[0] * 784, [0] * 783], "ragged"),
        ([[0] * 783, [0] * 785], "ragged"),
        ([[0] * 784, 784], "ragged"),
        ([[0] * 783 + ["12"]], "got strings"),
        ([[0] * 783 + [None]], "strings, nulls or mixed"),
        ([[0] * 783 + [math.inf]], "NaN or infinity"),
    ],
    ids=["over-255-late", "negative-late", "short-row", "uneven-rows", "number-row", "string-late", "null-late", "inf-late"],
)
def test_a_bad_value_after_good_ones_is_named_as_when_it_comes_first(values, message):
    with pytest.raises(ImageContractError, match=message):
        to_image_batch(values)


def test_a_fractional_value_after_whole_ones_is_rounded():
    assert to_image_batch([[0] * 783 + [12.6]]).ravel()[-1] == 13
