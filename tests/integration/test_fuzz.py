"""Both doors under generated input: schemathesis from the server's OpenAPI schema, hypothesis for malformed JSON.

Every client mistake must get a 4xx with a one-line message, the server must keep serving, its log must gain
nothing from a refused request, and the prediction log must hold only the images that were answered 200.
Seeds are fixed (derandomize) and example counts bounded, so `make test` runs the same cases every time.
"""

import json

import httpx
import pytest
import schemathesis
from hypothesis import given, settings
from schemathesis import GenerationMode

from common.records import read_prediction_log
from devtools.fuzzing import FUZZ, MAX_IMAGES, check_answer, count_answered, malformed, post
from devtools.processes import free_port, running
from tests.helpers import serving_command

pytestmark = pytest.mark.slow

DOORS = ("/score", "/invocations")
# 413 is a documented refusal of both doors (more images than `maxItems`, a body over the byte limit); schemathesis'
# default list of statuses that reject schema-violating data leaves it out. (Hypothesis mixes string constants
# of the project's own modules into its examples, so a code change elsewhere can change the cases drawn: a
# clean clone drew 25 junk "instances" and got the 413 for too many images.)
REJECTIONS_WITH_413 = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]}
        }
    }
)


@pytest.fixture(scope="module")
def fuzzed_server(champion, tmp_path_factory):
    """Our server on the test champion, with its own log file and prediction log; the answered images counted."""
    home = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serving_command(
        champion.uri,
        port,
        "--prediction-log",
        str(home / "predictions.db"),
        "--max-images",
        str(MAX_IMAGES),
        "--max-body-bytes",
        "200000",
    )
    with running(command, f"{url}/ready", {"MLFLOW_TRACKING_URI": champion.tracking_uri}, home / "server.log"):
        answered: set[tuple[str, int]] = set()  # (request id, image index) of every image answered 200
        yield url, home, answered
    # after every fuzz test of the module: the server said nothing about any request, and logged exactly what it answered
    server_log = (home / "server.log").read_text()
    assert "Traceback" not in server_log and "ERROR" not in server_log, server_log[-3000:]
    logged = read_prediction_log(home / "predictions.db")
    assert set(zip(logged["request_id"], logged["image_index"].tolist())) == answered


@pytest.mark.parametrize("door", DOORS)
def test_malformed_json_gets_a_one_line_4xx_and_the_server_keeps_serving(fuzzed_server, door):
    url, _, answered = fuzzed_server

    @FUZZ
    @given(case=malformed(door))
    def check(case: tuple[bytes, str]) -> None:
        body, content_type = case
        check_answer(post(url + door, body, content_type), answered)

    check()
    good = {"data": [[0] * 784]} if door == "/score" else {"inputs": [[0] * 784]}
    check_answer(post(url + door, json.dumps(good).encode()), answered)
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 200


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda mode: mode.value)
@pytest.mark.parametrize("door", DOORS)
def test_both_doors_keep_their_openapi_contract(fuzzed_server, door, mode):
    """Schemathesis' cases from /openapi.json: valid bodies are answered per the schema, invalid ones refused with
    a documented 4xx, none is a server error. (Its pytest plugin needs a pytest attribute gone in pytest 9, so the
    operation's hypothesis strategy is driven directly.)"""
    url, _, answered = fuzzed_server
    operation = schemathesis.openapi.from_url(f"{url}/openapi.json", config=REJECTIONS_WITH_413)[door]["POST"]

    @settings(FUZZ, max_examples=40)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:
        response = case.call(base_url=url)
        if response.status_code == 200:  # schemathesis' headers hold lists of values
            count_answered(response.headers["x-request-id"][0], response.json()["predictions"], answered)
        case.validate_response(response)

    check()
