"""Our HTTP server over loopback: bad input at both doors, API key, micro-batching, model failures."""

import json
import math
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from common.datasets import load_source
from common.records import read_prediction_log
from common.settings import PROJECT_ROOT
from devtools.processes import alive, free_port, running
from tests.helpers import serving_command
from tests.stand_in_models import save_stand_in

pytestmark = pytest.mark.slow

GOOD = (np.arange(784) % 256).tolist()


@pytest.fixture(scope="module")
def server(champion, tmp_path_factory):
    home = tmp_path_factory.mktemp("server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serving_command(
        champion.uri, port, "--prediction-log", str(home / "predictions.db"), "--max-images", "64", "--max-body-bytes", "400000"
    )
    with running(command, f"{url}/ready", {"MLFLOW_TRACKING_URI": champion.tracking_uri}, home / "server.log"):
        yield url, home / "predictions.db"


def raw_post(url, body: bytes, content_type="application/json", **headers):
    return httpx.post(url, content=body, headers={"content-type": content_type, **headers}, timeout=30)


def bad_bodies(door):
    """Each bad case as (name, bytes, content type): the Azure body at /score, MLflow's at /invocations."""

    def wrap(images):
        return {"data": images} if door == "/score" else {"instances": images}

    def encoded(payload):
        return json.dumps(payload).encode()

    return [
        ("malformed-json", b'{"data": [[1, 2', "application/json"),
        ("unknown-key", encoded({"pixels": [GOOD]}), "application/json"),
        ("missing-key", encoded({"params": {}} if door == "/invocations" else {"window": 1}), "application/json"),
        ("27x28", encoded(wrap([np.zeros((27, 28)).tolist()])), "application/json"),
        ("3-channels", encoded(wrap([np.zeros((28, 28, 3)).tolist()])), "application/json"),
        ("785-values", encoded(wrap([[0] * 785])), "application/json"),
        ("nan", encoded(wrap([[math.nan] * 784])), "application/json"),
        ("infinity", encoded(wrap([[math.inf] * 784])), "application/json"),
        ("out-of-range", encoded(wrap([[256] * 784])), "application/json"),
        ("negative", encoded(wrap([[-3] * 784])), "application/json"),
        ("strings", encoded(wrap([["7"] * 784])), "application/json"),
        ("empty-batch", encoded(wrap([])), "application/json"),
        ("over-the-cap", encoded(wrap([[0] * 784] * 65)), "application/json"),
        ("wrong-content-type", encoded(wrap([GOOD])), "text/plain"),
        ("oversized-body", encoded(wrap([[255] * 784] * 200)), "application/json"),
    ]


EXPECTED_STATUS = {"over-the-cap": 413, "oversized-body": 413, "wrong-content-type": 415}


def test_bad_input_gets_a_clear_4xx_at_both_doors_and_only_good_requests_are_logged(server):
    url, log_path = server
    for door in ("/score", "/invocations"):
        for name, body, content_type in bad_bodies(door):
            response = raw_post(url + door, body, content_type, **{"x-request-id": f"bad-{door}-{name}"})
            assert response.status_code == EXPECTED_STATUS.get(name, 400), (door, name, response.text)
            message = response.json()["error"]
            assert 10 < len(message) < 300, (door, name, message)
        good = raw_post(
            url + door,
            json.dumps({"data": [GOOD]} if door == "/score" else {"inputs": [GOOD, GOOD]}).encode(),
            **{"x-request-id": f"good{door}", "x-window": "3"},
        )
        assert good.status_code == 200, good.text
    log = read_prediction_log(log_path)
    logged = sorted(zip(log["request_id"], log["image_index"]))
    assert logged == [("good/invocations", 0), ("good/invocations", 1), ("good/score", 0)]
    assert set(log["window"]) == {3}


def test_messages_name_the_problem(server):
    url, _ = server
    cases = {
        b'{"data": [[1, 2': "not valid JSON",
        json.dumps({"data": [[0] * 785]}).encode(): "got shape 1x785",
        json.dumps({"data": [[math.nan] * 784]}).encode(): "NaN or infinity",
        json.dumps({"data": [[300] * 784]}).encode(): "must lie in 0..255",
    }
    for body, expected in cases.items():
        assert expected in raw_post(url + "/score", body).json()["error"]


def test_a_door_answers_405_with_allow_to_anything_but_post_and_the_schema_still_describes_both(server):
    url, _ = server
    for door in ("/score", "/invocations"):
        answer = httpx.get(url + door)
        assert answer.status_code == 405 and answer.headers["allow"] == "POST" and "send POST" in answer.json()["error"]
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/score", "/invocations", "/health", "/ready", "/metadata"} <= set(paths)
    assert paths["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"] == ["data"]


def test_health_ready_and_metadata(server, champion):
    url, log_path = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/ready").json()
    assert ready == {"ready": True, "model": "digits-cnn", "version": champion.version}
    metadata = httpx.get(f"{url}/metadata").json()
    assert metadata["model"]["alias"] == "champion" and metadata["model"]["flavor"] == "keras"
    assert metadata["model"]["signature"]["inputs"]
    assert metadata["low_confidence_threshold"] == 0.9 and metadata["limits"]["max_images"] == 64
    assert metadata["prediction_log"] == str(log_path)


def test_concurrent_single_images_are_micro_batched_and_answered_correctly(server, champion, shared_data):
    url, log_path = server
    images = load_source("mnist", shared_data).images[:48]
    expected = champion.keras_model.predict(images.reshape(48, 784).astype("float32"), verbose=0).argmax(axis=1)
    before = httpx.get(f"{url}/metadata").json()["stats"]

    def send(index):
        body = json.dumps({"data": [images[index].tolist()], "request_id": f"mb-{index}"}).encode()
        return raw_post(url + "/score", body).json()["predictions"][0]["class"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        classes = list(pool.map(send, range(48)))
    after = httpx.get(f"{url}/metadata").json()["stats"]
    assert classes == expected.tolist()
    assert after["model_calls"] - before["model_calls"] < 48  # several requests shared a model call
    log = read_prediction_log(log_path)
    assert sum(request_id.startswith("mb-") for request_id in log["request_id"]) == 48


def test_a_retried_request_id_is_logged_once(server):
    url, log_path = server
    body = json.dumps({"data": [GOOD, GOOD], "request_id": "retry-me"}).encode()
    assert raw_post(url + "/score", body).status_code == 200
    assert raw_post(url + "/score", body).status_code == 200
    log = read_prediction_log(log_path)
    assert list(log["request_id"]).count("retry-me") == 2  # two images, once each


def test_a_request_whose_client_hung_up_while_the_server_was_stopped_is_answered_by_nobody_and_not_logged(champion, tmp_path):
    """What a proxy does to a replica that hangs: it times out, hangs up and sends the request to another replica,
    which logs it. The hung one, woken, must not log it too."""
    port = free_port()
    url, log_path = f"http://127.0.0.1:{port}", tmp_path / "predictions.db"
    command = serving_command(champion.uri, port, "--prediction-log", str(log_path), "--drop-abandoned")
    with running(command, f"{url}/ready", {"MLFLOW_TRACKING_URI": champion.tracking_uri}, tmp_path / "server.log") as server:
        held = json.dumps({"data": [GOOD], "request_id": "held-while-stopped"}).encode()
        server.send_signal(signal.SIGSTOP)
        try:  # the kernel takes the connection and the body; the client gives up waiting and hangs up
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + "/score", content=held, headers={"content-type": "application/json"}, timeout=1)
        finally:
            server.send_signal(signal.SIGCONT)
        after = json.dumps({"data": [GOOD], "request_id": "after-the-hang"}).encode()
        assert raw_post(url + "/score", after).status_code == 200
        stats = httpx.get(f"{url}/metadata", timeout=5).json()["stats"]
    assert stats["abandoned"] == 1
    assert list(read_prediction_log(log_path)["request_id"]) == ["after-the-hang"]


def test_api_key_guards_every_route_but_health_and_ready_and_is_checked_first(champion, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"MLFLOW_TRACKING_URI": champion.tracking_uri, "DIGITDRIFT_API_KEY": "s3cret"}
    command = serving_command(champion.uri, port, "--prediction-log", "none")
    with running(command, f"{url}/health", env, tmp_path / "server.log"):
        body = json.dumps({"data": [GOOD]}).encode()
        assert raw_post(url + "/score", body).status_code == 401
        wrong = raw_post(url + "/invocations", body, authorization="Bearer nope")
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        assert wrong.headers["www-authenticate"] == "Bearer"
        # a request that is wrong in every other way too learns only that the key is missing
        for bad in (
            raw_post(url + "/score", b"{not json", "text/plain", **{"x-window": "-1", "x-request-id": "r" * 300}),
            raw_post(url + "/score", b"x" * 500_000),
        ):
            assert bad.status_code == 401, bad.text
        for path in ("/metadata", "/openapi.json", "/docs", "/no-such-route"):
            assert httpx.get(url + path, timeout=10).status_code == 401, path
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        assert httpx.get(url + "/ready", timeout=10).status_code == 200
        key = {"authorization": "Bearer s3cret"}
        assert raw_post(url + "/score", body, **key).status_code == 200
        assert httpx.get(url + "/metadata", headers=key, timeout=10).json()["model"]["name"] == "digits-cnn"


def test_a_scoring_timeout_is_a_504_not_logged_and_the_server_keeps_serving(tmp_path):
    model_dir = save_stand_in(tmp_path / "slow-model", "slow")
    port = free_port()
    url, log_path = f"http://127.0.0.1:{port}", tmp_path / "predictions.db"
    command = serving_command(str(model_dir), port, "--prediction-log", str(log_path), "--timeout-s", "1")
    with running(command, f"{url}/ready", {}, tmp_path / "server.log"):
        slow = raw_post(url + "/score", json.dumps({"data": [[0] * 784], "request_id": "timed-out"}).encode())
        assert slow.status_code == 504 and "longer than 1.0 s" in slow.json()["error"]
        time.sleep(2.5)  # the timed-out call still holds the one scoring thread until it returns
        ok = raw_post(url + "/score", json.dumps({"data": [GOOD], "request_id": "answered"}).encode())
        assert ok.status_code == 200
    # scored after its client was told 504: not recorded (a proxy retrying the 504 elsewhere records it there)
    assert list(read_prediction_log(log_path)["request_id"]) == ["answered"]


def test_a_failure_inside_the_model_is_a_5xx_and_the_server_keeps_serving(tmp_path):
    model_dir = save_stand_in(tmp_path / "failing-model", "failing")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serving_command(str(model_dir), port, "--prediction-log", str(tmp_path / "log.db"))
    with running(command, f"{url}/ready", {}, tmp_path / "server.log"):
        failed = raw_post(url + "/score", json.dumps({"data": [[255] * 784]}).encode())
        assert failed.status_code == 500 and "model" in failed.json()["error"]
        ok = raw_post(url + "/score", json.dumps({"data": [GOOD]}).encode())
        assert ok.status_code == 200 and ok.json()["predictions"][0]["confidence"] == pytest.approx(0.1)
    assert len(read_prediction_log(tmp_path / "log.db")["request_id"]) == 1


def test_overload_is_shed_with_503_and_retry_after_and_the_server_recovers(champion, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "predictions.db"
    command = serving_command(champion.uri, port, "--prediction-log", str(log_path), "--max-queued-images", "200")
    body = json.dumps({"instances": [GOOD] * 100}).encode()
    with running(command, f"{url}/ready", {"MLFLOW_TRACKING_URI": champion.tracking_uri}, tmp_path / "server.log"):

        def send(number):
            return raw_post(f"{url}/invocations", body, **{"x-request-id": f"burst-{number}"})

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(send, range(64)))
        statuses = [answer.status_code for answer in answers]
        assert set(statuses) == {200, 503}, statuses  # at most 2 requests of 100 images wait; the rest are shed
        shed = [answer for answer in answers if answer.status_code == 503]
        assert all(answer.headers["retry-after"] == "1" and "capacity" in answer.json()["error"] for answer in shed)
        after = send("after")  # the burst is over: served again
        assert after.status_code == 200 and len(after.json()["predictions"]) == 100
        assert httpx.get(f"{url}/metadata").json()["stats"]["shed"] == len(shed)
    accepted = {f"burst-{n}" for n, status in enumerate(statuses) if status == 200} | {"burst-after"}
    assert set(read_prediction_log(log_path)["request_id"]) == accepted  # nothing shed was logged


def test_workers_share_the_port_and_the_log_and_stop_with_the_server(champion, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "predictions.db"
    command = serving_command(champion.uri, port, "--prediction-log", str(log_path), "--workers", "2")
    body = json.dumps({"instances": [GOOD]}).encode()
    with running(command, f"{url}/ready", {"MLFLOW_TRACKING_URI": champion.tracking_uri}, tmp_path / "server.log") as server:
        answered_by, deadline = set(), time.monotonic() + 120
        with ThreadPoolExecutor(8) as pool:
            while len(answered_by) < 2 and time.monotonic() < deadline:  # each get a new connection, to either worker
                answers = pool.map(lambda _: httpx.get(f"{url}/metadata", timeout=30), range(16))
                answered_by |= {answer.json()["stats"]["process_id"] for answer in answers if answer.status_code == 200}
            scored = list(pool.map(lambda n: raw_post(f"{url}/invocations", body, **{"x-request-id": f"w-{n}"}), range(40)))
        assert len(answered_by) == 2 and server.pid not in answered_by
        assert [answer.status_code for answer in scored] == [200] * 40
        probabilities = np.array([answer.json()["predictions"][0] for answer in scored])
        assert np.abs(probabilities - probabilities[0]).max() < 1e-6  # the same model in both, batched either way
    assert server.returncode == 0  # stopped with SIGTERM: the workers went with it
    assert not any(alive(pid) for pid in answered_by)
    assert sorted(read_prediction_log(log_path)["request_id"]) == sorted(f"w-{n}" for n in range(40))


def test_workers_that_cannot_serve_the_model_stop_the_server_with_its_error(tmp_path):
    model_dir = save_stand_in(tmp_path / "classes-only", "classes-only")
    command = serving_command(str(model_dir), free_port(), "--prediction-log", "none", "--workers", "2")
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 2
    assert "answers shape (1,) for one image" in result.stderr and "could not start" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--workers", "2", "--prediction-dataset", "/tmp/dataset"], "start one server per --staging-dir instead"),
        (["--drop-abandoned", "--stale-after-s", "40"], "--stale-after-s 40 must be above 0 and under --timeout-s (30)"),
        (["--drop-abandoned", "--stale-after-s", "0"], "--stale-after-s 0 must be above 0"),
    ],
)
def test_options_that_cannot_work_are_refused_before_anything_starts(extra, message):
    result = subprocess.run(
        serving_command("models:/never-loaded@champion", free_port(), *extra),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and message in result.stderr
