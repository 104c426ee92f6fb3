"""Request bodies of both doors (Azure ML's /score, MLflow's /invocations) and their answers; pure."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson

from common.images import PIXELS, ImageContractError, to_image_batch
from serving.core import ModelIdentity, Scored

SCORE_KEYS = {"data", "request_id", "window"}
INVOCATION_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
SPLIT_KEYS = {"data", "columns", "index"}
MAX_WINDOW = 2**31 - 1  # windows count days or hours from 0; a bound keeps SQLite and Parquet integers in range


class HttpError(Exception):
    """An error answered over HTTP with `status` and this message as {"error": ...}, plus any `headers`."""

    def __init__(self, message: str, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class BadRequest(HttpError):
    """The client's mistake: a 4xx (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, status)


@dataclass(frozen=True)
class ScoreRequest:
    images: np.ndarray  # uint8 (N, 28, 28)
    request_id: str | None = None
    window: int | None = None


def decode_json(body: bytes | str) -> object:
    """Parse a body with orjson (4x faster than json on 256 images); on failure, json gets a second look
    because Python clients send NaN and Infinity literals, which the image contract then names."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, and numbers too long to convert
        raise BadRequest(f"the body is not valid JSON ({type(err).__name__} at position {getattr(err, 'pos', '?')})") from None
    except RecursionError:  # orjson stops at 1024 levels; json's recursive decoder runs out of stack
        raise BadRequest("the body nests JSON arrays or objects too deeply (an image needs 2 levels)") from None


def describe_json(value: object) -> str:
    """What a parsed JSON value is, for error messages (never the value itself): null, a JSON list, ..."""
    return "null" if value is None else f"a JSON {type(value).__name__}"


def parse_score_body(payload: object, max_images: int) -> ScoreRequest:
    """Azure ML's body: {"data": images, "request_id"?: str, "window"?: int}."""
    if not isinstance(payload, dict):
        raise BadRequest(f"the body must be a JSON object with a 'data' key; got {describe_json(payload)}")
    unknown = sorted(set(payload) - SCORE_KEYS)
    if unknown:
        raise BadRequest(
            f"unknown key(s) {', '.join(map(repr, unknown))[:200]}; expected 'data' and optionally 'request_id', 'window'"
        )
    if "data" not in payload:
        raise BadRequest("missing key 'data': send {\"data\": [image, ...]} with 28x28 or 784 grey values per image")
    request_id = payload.get("request_id")
    if request_id is not None:
        request_id = parse_request_id(request_id, "'request_id'")
    return ScoreRequest(_images(payload["data"], max_images), request_id, parse_window(payload.get("window")))


def parse_request_id(value: object, where: str) -> str:
    """A request id: 1 to 200 printable ASCII characters, since the answer echoes it in the X-Request-Id header."""
    if not isinstance(value, str) or not 0 < len(value) <= 200 or not (value.isascii() and value.isprintable()):
        raise BadRequest(f"{where} must be 1 to 200 printable ASCII characters (it is echoed in a header)")
    return value


def parse_invocations_body(payload: object, max_images: int) -> np.ndarray:
    """MLflow's bodies: dataframe_split, dataframe_records, instances or inputs (plus optional params).

    Images come as 784 pixel columns, or as one column holding 784 values per row (Spark ML's `pixels` vector,
    as `mlflow models serve` takes it for digits-spark).
    """
    if not isinstance(payload, dict):
        raise BadRequest(
            f"the body must be a JSON object with one of {', '.join(INVOCATION_FORMATS)}; got {describe_json(payload)}"
        )
    formats = [key for key in INVOCATION_FORMATS if key in payload]
    unknown = sorted(set(payload) - set(INVOCATION_FORMATS) - {"params"})
    if unknown:
        raise BadRequest(f"unknown key(s) {', '.join(map(repr, unknown))[:200]}; expected one of {', '.join(INVOCATION_FORMATS)}")
    if len(formats) != 1:
        raise BadRequest(f"the body must hold exactly one of {', '.join(INVOCATION_FORMATS)}; it holds {len(formats)}")
    if "params" in payload and not isinstance(payload["params"], dict):
        raise BadRequest(f"'params' must be an object of parameter names and values; got {describe_json(payload['params'])}")
    key = formats[0]
    value = payload[key]
    if key == "dataframe_split":
        value = _split_frame(value)
    elif key == "dataframe_records":
        value = _records_to_rows(value)
    elif key == "instances" and isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        value = _records_to_rows(value, "instances")
    elif key == "inputs" and isinstance(value, dict):
        if len(value) != 1:
            raise BadRequest(f"named 'inputs' must hold one tensor (the model has one input); got {len(value)}")
        value = next(iter(value.values()))
    return _images(value, max_images)


def _split_frame(frame: object) -> list:
    """pandas' split orient: 'data', optional 'columns' (784 names, or one), optional 'index' (row labels, unused);
    the rows of 784 values."""
    if not isinstance(frame, dict) or "data" not in frame:
        raise BadRequest("'dataframe_split' must be an object with 'data' (rows of 784 values), optionally 'columns' and 'index'")
    unknown = sorted(set(frame) - SPLIT_KEYS)
    if unknown:
        named = ", ".join(map(repr, unknown))[:200]
        raise BadRequest(f"unknown key(s) {named} in 'dataframe_split'; it takes data, columns and index")
    columns = frame.get("columns")
    if "columns" in frame and (not isinstance(columns, list) or len(columns) not in (1, PIXELS)):
        got = len(columns) if isinstance(columns, list) else describe_json(columns)
        raise BadRequest(f"'dataframe_split.columns' must name the 784 pixel columns, or one column of 784 values; got {got}")
    unnamed = _first_refused(columns or [], lambda name: isinstance(name, str))
    if unnamed is not None:
        what = describe_json(columns[unnamed])
        raise BadRequest(f"'dataframe_split.columns' must be column names (strings); item {unnamed} is {what}")
    # the index labels rows, which answers keep in data's order; OpenAPI cannot say "as long as data", so none is asked
    index = frame.get("index", [])
    if not isinstance(index, list):
        raise BadRequest(f"'dataframe_split.index' must be a list of row labels; got {describe_json(index)}")
    odd = _first_refused(index, lambda label: isinstance(label, str) or _is_integer(label))
    if odd is not None:
        what = describe_json(index[odd])
        raise BadRequest(f"'dataframe_split.index' must hold row labels (integers or strings); item {odd} is {what}")
    rows = frame["data"]
    if columns is not None and len(columns) == 1:
        rows = _one_column_rows(rows, "dataframe_split.data")
    return _flat_rows(rows, "dataframe_split.data")


def _flat_rows(rows: object, where: str) -> list:
    """Rows of 784 values each: the split orient's images are flat (28x28 ones come as 'instances' or 'inputs')."""
    if not isinstance(rows, list):
        raise BadRequest(f"'{where}' must be a list of rows of 784 values; got {describe_json(rows)}")
    odd = _first_refused(rows, lambda row: isinstance(row, list) and len(row) == PIXELS)
    if odd is not None:
        row = rows[odd]
        what = f"{len(row)} items" if isinstance(row, list) else describe_json(row)
        raise BadRequest(f"'{where}' row {odd} must hold 784 values (an image in row order); got {what}")
    return rows


def _first_refused(items: list, accepted: Callable[[object], bool]) -> int | None:
    """The position of the first item that `accepted` refuses, or None."""
    return next((number for number, item in enumerate(items) if not accepted(item)), None)


def _is_integer(value: object) -> bool:
    """An integer as JSON Schema means it: a number without a fraction (orjson reads one past 64 bits as a float)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


def _records_to_rows(records: object, key: str = "dataframe_records") -> list:
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise BadRequest(f"'{key}' must be a list of objects, one per image, with 784 pixel values each")
    if not records:
        return []
    columns = list(records[0])
    if len(columns) not in (1, PIXELS) or any(list(record) != columns for record in records):
        raise BadRequest(f"every record in '{key}' must have the same 784 pixel keys, or the same one key of 784 values")
    if len(columns) == 1:
        return [record[columns[0]] for record in records]
    return [list(record.values()) for record in records]


def _one_column_rows(rows: object, where: str) -> list:
    """Rows of one column each ([[image], ...]) as the images."""
    if not isinstance(rows, list) or not all(isinstance(row, list) and len(row) == 1 for row in rows):
        raise BadRequest(f"'{where}' must hold one value per row (784 grey levels) for its one column")
    return [row[0] for row in rows]


def _images(values: object, max_images: int) -> np.ndarray:
    # a list longer than one image can be (784 values) is a batch: refused before it is converted
    if isinstance(values, list) and len(values) > max(max_images, PIXELS):
        raise BadRequest(f"{len(values)} images in one request; the limit is {max_images}", status=413)
    try:
        images = to_image_batch(values)
    except ImageContractError as err:
        raise BadRequest(str(err)) from None
    if len(images) > max_images:
        raise BadRequest(f"{len(images)} images in one request; the limit is {max_images}", status=413)
    return images


def parse_window(value: object) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError("a boolean is not a window")
        window = int(value)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"the window must be a whole number; got {str(value)[:40]!r}") from None
    if isinstance(value, float) and value != window or not 0 <= window <= MAX_WINDOW:
        raise BadRequest(f"the window must be a whole number from 0 to {MAX_WINDOW}; got {str(value)[:40]!r}")
    return window


def score_answer(scored: Scored, identity: ModelIdentity, request_id: str) -> dict:
    """Azure ML /score answer: per image class, probabilities, confidence and flags."""
    predicted, probabilities, confidence = scored.predicted.tolist(), scored.probabilities.tolist(), scored.confidence.tolist()
    return {
        "request_id": request_id,
        "model": {"name": identity.name, "version": identity.version},
        "predictions": [
            {
                "class": predicted[index],
                "probabilities": probabilities[index],
                "confidence": confidence[index],
                "flags": list(scored.flags[index]),
            }
            for index in range(len(predicted))
        ],
    }


def invocations_answer(scored: Scored) -> dict:
    """MLflow /invocations answer, as `mlflow models serve` gives for this model: the probabilities."""
    return {"predictions": scored.probabilities.astype(float).tolist()}


# OpenAPI descriptions of both doors, for /docs and for schemathesis; the parsers above stay the judge.
_GREY = {"type": "number", "minimum": 0, "maximum": 255}
_FLAT_IMAGE = {"type": "array", "items": _GREY, "minItems": PIXELS, "maxItems": PIXELS}
_SQUARE_IMAGE = {
    "type": "array",
    "items": {"type": "array", "items": _GREY, "minItems": 28, "maxItems": 28},
    "minItems": 28,
    "maxItems": 28,
}
_WINDOW = {"type": "integer", "minimum": 0, "maximum": MAX_WINDOW}
_REQUEST_ID = {"type": "string", "pattern": "^[ -~]{1,200}$"}
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_HEADERS = [
    {
        "name": "x-request-id",
        "in": "header",
        "required": False,
        "description": "the request's id in the prediction log (a retry with the same id is logged once)",
        "schema": _REQUEST_ID,
    },
    {
        "name": "x-window",
        "in": "header",
        "required": False,
        "description": "the traffic window the request belongs to (simulations set it)",
        "schema": _WINDOW,
    },
]


def _split_frame_schema(max_images: int) -> dict:
    """pandas' split orient: 784 pixel columns, or one column holding each row's 784 values; an index of row labels."""

    def frame(columns: int, row: dict, required: list[str]) -> dict:
        return {
            "type": "object",
            "properties": {
                "columns": {"type": "array", "items": {"type": "string"}, "minItems": columns, "maxItems": columns},
                "data": {"type": "array", "items": row, "minItems": 1, "maxItems": max_images},
                "index": {"type": "array", "items": {"type": ["integer", "string"]}},
            },
            "required": required,
            "additionalProperties": False,
        }

    one_value = {"type": "array", "items": _FLAT_IMAGE, "minItems": 1, "maxItems": 1}
    return {"oneOf": [frame(PIXELS, _FLAT_IMAGE, ["data"]), frame(1, one_value, ["columns", "data"])]}


def _images_schema(max_images: int) -> dict:
    return {
        "description": "28x28 grey images, all in one form (784 values in row order each, or 28 rows of 28 each), or one alone",
        "oneOf": [
            {"type": "array", "items": _FLAT_IMAGE, "minItems": 1, "maxItems": max_images},
            {"type": "array", "items": _SQUARE_IMAGE, "minItems": 1, "maxItems": max_images},
            _FLAT_IMAGE,
            _SQUARE_IMAGE,
        ],
    }


def _door(body_schema: dict, answer_schema: dict, summary: str) -> dict:
    errors = {
        "400": "the body or a header breaks the contract",
        "401": "the API key is missing or wrong (when the server has one)",
        "413": "too many images or too many bytes",
        "415": "the body is not application/json",
        "503": "the server is at capacity; retry after Retry-After seconds",
        "504": "scoring took longer than the timeout",
        "500": "the model failed",
    }
    responses = {"200": {"description": summary, "content": {"application/json": {"schema": answer_schema}}}}
    for status, description in errors.items():
        responses[status] = {"description": description, "content": {"application/json": {"schema": _ERROR}}}
    return {
        "parameters": _HEADERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}},
        "responses": responses,
    }


def score_openapi(max_images: int) -> dict:
    """/score in OpenAPI terms (route's openapi_extra): the Azure ML body, its answer and its errors."""
    return _door(
        {
            "type": "object",
            "properties": {
                "data": _images_schema(max_images),
                "request_id": _REQUEST_ID,
                "window": _WINDOW,
            },
            "required": ["data"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "request_id": {"type": "string"},
                "model": {"type": "object"},
                "predictions": {
                    "type": "array",
                    "items": {"type": "object", "required": ["class", "probabilities", "confidence"]},
                },
            },
            "required": ["request_id", "model", "predictions"],
        },
        "per image: class, probabilities, confidence and flags (Azure ML's score.py contract)",
    )


def invocations_openapi(max_images: int) -> dict:
    """/invocations in OpenAPI terms: MLflow's instances, inputs and dataframe_split bodies, and the answer.

    The door also takes dataframe_records, instances as records and named inputs; they are left out here because
    JSON Schema cannot say "every record with the same 784 keys", so a schema for them would call bodies valid that
    the door rightly refuses."""
    return _door(
        {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"instances": _images_schema(max_images), "params": {"type": "object"}},
                    "required": ["instances"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {"inputs": _images_schema(max_images), "params": {"type": "object"}},
                    "required": ["inputs"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {
                        "dataframe_split": _split_frame_schema(max_images),
                        "params": {"type": "object"},
                    },
                    "required": ["dataframe_split"],
                    "additionalProperties": False,
                },
            ]
        },
        {
            "type": "object",
            "properties": {"predictions": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}},
            "required": ["predictions"],
        },
        "per image, the 10 class probabilities (as `mlflow models serve` answers)",
    )
