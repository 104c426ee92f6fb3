"""Both doors' bodies: every accepted form and every bad one, with its status and message."""

import json

import numpy as np
import pytest

from serving.core import ModelIdentity, flag_predictions
from serving.protocol import (
    BadRequest,
    decode_json,
    invocations_answer,
    parse_invocations_body,
    parse_score_body,
    parse_window,
    score_answer,
)

IMAGE = (np.arange(784) % 256).tolist()
SQUARE = np.asarray(IMAGE).reshape(28, 28).tolist()


def test_score_body_takes_flat_or_square_images_with_id_and_window():
    request = parse_score_body({"data": [IMAGE, IMAGE], "request_id": "r-1", "window": 7}, max_images=10)
    assert request.images.shape == (2, 28, 28) and request.request_id == "r-1" and request.window == 7
    square = parse_score_body({"data": [SQUARE]}, max_images=10)
    assert square.request_id is None and square.window is None
    assert (square.images[0] == request.images[1]).all()
    for alone in (IMAGE, SQUARE):  # one image alone, as the image contract takes it, whatever the limit
        assert (parse_score_body({"data": alone}, max_images=1).images == request.images[:1]).all()


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_split": {"columns": [f"pixel_{i}" for i in range(784)], "data": [IMAGE]}},
        {"dataframe_split": {"data": [IMAGE]}},
        {"dataframe_split": {"index": [7], "data": [IMAGE]}},
        decode_json(b'{"dataframe_split": {"index": [-86283983177548044804152098816], "data": [' + str(IMAGE).encode() + b"]}}"),
        {"dataframe_records": [{f"pixel_{i}": v for i, v in enumerate(IMAGE)}]},
        {"instances": [IMAGE]},
        {"instances": [SQUARE]},
        {"inputs": [IMAGE]},
        {"inputs": {"pixels": [IMAGE]}},
        {"inputs": [IMAGE], "params": {}},
        {"dataframe_split": {"columns": ["pixels"], "data": [[IMAGE]]}},
        {"dataframe_records": [{"pixels": IMAGE}]},
        {"instances": [{"pixels": IMAGE}]},
    ],
    ids=[
        "split-columns",
        "split",
        "split-index",
        "split-index-past-64-bits",
        "records",
        "instances",
        "instances-square",
        "inputs",
        "inputs-named",
        "params",
        "split-one-column",
        "records-one-column",
        "instances-one-column",
    ],
)
def test_every_mlflow_body_gives_the_same_images(body):
    images = parse_invocations_body(body, max_images=10)
    assert images.shape == (1, 28, 28) and (images.ravel() == np.asarray(IMAGE)).all()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ([IMAGE], 400, "must be a JSON object with a 'data' key; got a JSON list"),
        (None, 400, "must be a JSON object with a 'data' key; got null"),
        ({"images": [IMAGE]}, 400, "unknown key(s) 'images'"),
        ({"request_id": "x"}, 400, "missing key 'data'"),
        ({"data": [IMAGE], "request_id": 5}, 400, "'request_id' must be 1 to 200 printable ASCII characters"),
        ({"data": [IMAGE], "request_id": "caf\u00e9"}, 400, "'request_id' must be 1 to 200 printable ASCII characters"),
        ({"data": [IMAGE], "window": True}, 400, "the window must be a whole number"),
        ({"data": [IMAGE[:-28]]}, 400, "got shape 1x756"),
        ({"data": []}, 400, "the batch is empty"),
        ({"data": [IMAGE] * 11}, 413, "11 images in one request; the limit is 10"),
        ({"data": [IMAGE] * 785}, 413, "785 images in one request; the limit is 10"),
        ({"data": [0] * 700}, 400, "got shape 700"),
        ({"data": [IMAGE], "window": "monday"}, 400, "the window must be a whole number"),
    ],
)
def test_bad_score_bodies(body, status, message):
    with pytest.raises(BadRequest) as raised:
        parse_score_body(body, max_images=10)
    assert raised.value.status == status and message in str(raised.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [IMAGE], "inputs": [IMAGE]}, "exactly one of dataframe_split"),
        ({}, "exactly one of dataframe_split"),
        ({"instances": [IMAGE], "extra": 1}, "unknown key(s) 'extra'"),
        ({"dataframe_split": [IMAGE]}, "'dataframe_split' must be an object with 'data'"),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [IMAGE]}}, "or one column of 784 values; got 2"),
        ({"dataframe_split": {"columns": [None], "data": [[IMAGE]]}}, "must be column names (strings); item 0 is null"),
        ({"dataframe_split": {"columns": None, "data": [IMAGE]}}, "or one column of 784 values; got null"),
        ({"dataframe_split": {"data": [IMAGE], "dtype": "int"}}, "unknown key(s) 'dtype' in 'dataframe_split'"),
        ({"dataframe_split": {"index": 0, "data": [IMAGE]}}, "'dataframe_split.index' must be a list of row labels"),
        ({"dataframe_split": {"index": [None], "data": [IMAGE]}}, "(integers or strings); item 0 is null"),
        ({"dataframe_split": {"index": [0.5], "data": [IMAGE]}}, "(integers or strings); item 0 is a JSON float"),
        ({"dataframe_split": {"data": IMAGE}}, "data' row 0 must hold 784 values (an image in row order); got a JSON"),
        ({"dataframe_split": {"data": [SQUARE]}}, "data' row 0 must hold 784 values (an image in row order); got 28 items"),
        ({"dataframe_split": {"columns": ["pixels"], "data": [[SQUARE]]}}, "row 0 must hold 784 values (an image in row order)"),
        ({"dataframe_split": {"data": None}}, "'dataframe_split.data' must be a list of rows of 784 values; got null"),
        ({"dataframe_split": {"columns": ["pixels"], "data": [IMAGE]}}, "must hold one value per row"),
        ({"dataframe_records": [IMAGE]}, "must be a list of objects"),
        ({"dataframe_records": [{"a": 1, "b": 2}]}, "the same 784 pixel keys"),
        ({"dataframe_records": [{"pixels": IMAGE}, {"other": IMAGE}]}, "or the same one key of 784 values"),
        ({"instances": [{"pixels": IMAGE}, {"pixels": IMAGE, "x": 1}]}, "every record in 'instances'"),
        ({"dataframe_records": [{"pixels": IMAGE[:-1]}]}, "got shape 1x783"),
        ({"inputs": {"a": [IMAGE], "b": [IMAGE]}}, "must hold one tensor"),
        ({"instances": [[0.5] * 783 + [float("nan")]]}, "NaN or infinity"),
        ({"instances": [[300] * 784]}, "0..255"),
        ({"instances": [["x"] * 784]}, "got strings"),
        ({"inputs": [IMAGE], "params": None}, "'params' must be an object of parameter names and values; got null"),
        ({"instances": [IMAGE], "params": [1]}, "'params' must be an object of parameter names and values; got a JSON list"),
    ],
)
def test_bad_invocation_bodies(body, message):
    with pytest.raises(BadRequest) as raised:
        parse_invocations_body(body, max_images=10)
    assert raised.value.status == 400 and message in str(raised.value)


def test_malformed_json_is_a_bad_request_without_echo():
    with pytest.raises(BadRequest, match="not valid JSON") as raised:
        decode_json(b'{"data": [1, 2,' + b"9" * 5000)
    assert len(str(raised.value)) < 100


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("3", 3), (4, 4), (2**31 - 1, 2**31 - 1)])
def test_window_values(value, expected):
    assert parse_window(value) == expected


@pytest.mark.parametrize("value", ["-1", 2.5, "x", "", 2**31, "1e400", float("inf"), float("nan"), True])
def test_bad_windows(value):
    with pytest.raises(BadRequest):
        parse_window(value)


def test_answers_carry_classes_probabilities_and_flags():
    probabilities = np.array([[0.95] + [0.05 / 9] * 9, [0.5, 0.4] + [0.1 / 8] * 8], dtype=np.float32)
    scored = flag_predictions(probabilities, threshold=0.9)
    identity = ModelIdentity("digits-cnn", "3", "champion", "models:/digits-cnn@champion", "keras")
    answer = score_answer(scored, identity, "r-9")
    assert [p["class"] for p in answer["predictions"]] == [0, 0]
    assert [p["flags"] for p in answer["predictions"]] == [[], ["low_confidence"]]
    assert answer["model"] == {"name": "digits-cnn", "version": "3"}
    assert json.loads(json.dumps(invocations_answer(scored)))["predictions"][1][:2] == pytest.approx([0.5, 0.4])
