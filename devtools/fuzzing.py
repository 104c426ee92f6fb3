"""Bodies a careless or hostile client sends, and what a door must answer them: hypothesis strategies and the
check of each answer, shared by the server's fuzz tests, the stack's (through HAProxy and TLS) and bench.faults."""

from __future__ import annotations

import codecs
import json

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

MAX_IMAGES = 8  # the servers under fuzz are started with --max-images 8
FUZZ = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def answer_problem(response: httpx.Response) -> str | None:
    """What is wrong with a door's answer to a fuzzed body, or None: a 200 with its predictions, or a 4xx whose JSON
    `error` is one line; never a 5xx, never a page that is not the server's."""
    if response.status_code >= 500:
        return f"{response.status_code}: {response.text[:300]}"
    try:
        answer = response.json()
    except ValueError:
        return f"{response.status_code} without a JSON body: {response.text[:300]}"
    if response.status_code == 200:
        return None if isinstance(answer.get("predictions"), list) else f"200 without predictions: {response.text[:300]}"
    message = answer.get("error") if isinstance(answer, dict) else None
    if not 400 <= response.status_code < 500 or not isinstance(message, str):
        return f"{response.status_code} is not a refusal with an error: {response.text[:300]}"
    return None if 10 < len(message) < 300 and "\n" not in message else f"not a one-line message: {message[:300]!r}"


def count_answered(request_id: str, predictions: list, answered: set) -> None:
    answered.update((request_id, index) for index in range(len(predictions)))


def check_answer(response: httpx.Response, answered: set) -> None:
    """Fail on a wrong answer (answer_problem); add the images of a 200 to `answered`."""
    problem = answer_problem(response)
    if problem is not None:
        raise AssertionError(problem)
    if response.status_code == 200:
        count_answered(response.headers["x-request-id"], response.json()["predictions"], answered)


def post(
    url: str, body: bytes, content_type: str = "application/json", headers: dict | None = None, verify: str | bool = True
) -> httpx.Response:
    """`body` as it is, under `content_type` (and `headers`); `verify`: the CA bundle a TLS door is checked against."""
    return httpx.post(url, content=body, headers={**(headers or {}), "content-type": content_type}, verify=verify, timeout=30)


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=40,
)
# numbers as JSON text the encoders never write: huge, tiny, signed zero, long digit strings
odd_numbers = st.sampled_from(["1e400", "-1e400", "1e-400", "-0", "0.0000000000000000000001", "9" * 5000, "1E2", "255.0000001"])
image_like = st.lists(
    st.lists(st.integers(-2, 300) | st.floats(-1, 256), min_size=0, max_size=30), min_size=0, max_size=30
) | st.lists(st.integers(0, 255), min_size=780, max_size=790)


@st.composite
def door_shaped(draw, door: str) -> bytes:
    """An object with the door's keys (and some others) around image-like values."""
    keys = (
        ["data", "request_id", "window"]
        if door == "/score"
        else ["instances", "inputs", "dataframe_split", "dataframe_records", "params"]
    )
    chosen = draw(st.lists(st.sampled_from(keys) | st.text(max_size=8), min_size=0, max_size=3, unique=True))
    payload = {key: draw(st.lists(image_like, max_size=MAX_IMAGES + 2) | json_values) for key in chosen}
    return json.dumps(payload).encode()


@st.composite
def malformed(draw, door: str) -> tuple[bytes, str]:
    """Bodies a careless or hostile client sends, with the content type it claims."""
    kind = draw(st.sampled_from(["value", "door", "nesting", "number", "bytes", "encoding", "truncated", "content-type"]))
    if kind == "value":
        return json.dumps(draw(json_values)).encode(), "application/json"
    if kind == "door":
        return draw(door_shaped(door)), "application/json"
    if kind == "nesting":
        depth = draw(st.integers(1, 100_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * depth + "0" + closer * depth).encode(), "application/json"
    if kind == "number":
        number = draw(odd_numbers)
        key = "data" if door == "/score" else "instances"
        return f'{{"{key}": [[{",".join([number] * 784)}]], "window": {number}}}'.encode(), "application/json"
    if kind == "bytes":
        return draw(st.binary(max_size=300)), "application/json"
    if kind == "encoding":
        text = json.dumps({"data" if door == "/score" else "inputs": [[0] * 784]})
        codec = draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "utf-8-sig"]))
        prefix = draw(st.sampled_from([b"", codecs.BOM_UTF8]))
        return prefix + text.encode(codec), "application/json; charset=" + codec
    if kind == "truncated":
        text = json.dumps({"data" if door == "/score" else "instances": [[7] * 784]}).encode()
        return text[: draw(st.integers(0, len(text) - 1))], "application/json"
    return draw(door_shaped(door)), draw(
        st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "", "application/jsonx"])
    )
