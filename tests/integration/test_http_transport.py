"""The simulator's HTTP transport against a scripted server on loopback: which answers it retries, and how often."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from simulation.client import HttpTransport, ServerRefused


class Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next status of `script` (then 200), recording the request ids it saw."""

    script: list[int] = []
    seen: list[str] = []

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Scripted.seen.append(body["request_id"])
        status = Scripted.script.pop(0) if Scripted.script else 200
        answer = {"predictions": [{"class": 7}]} if status == 200 else {"error": f"scripted {status}"}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    Scripted.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


IMAGES = np.zeros((1, 28, 28), dtype=np.uint8)


def test_transient_answers_are_retried_with_the_same_request_id(scripted_server):
    Scripted.script = [503, 502]
    transport = HttpTransport(scripted_server, retries=4, backoff_s=0.01)
    assert transport.send("r-1", 0, IMAGES)["predictions"][0]["class"] == 7
    assert Scripted.seen == ["r-1", "r-1", "r-1"]


def test_a_client_mistake_is_not_retried_and_names_the_status(scripted_server):
    Scripted.script = [400]
    transport = HttpTransport(scripted_server, retries=4, backoff_s=0.01)
    with pytest.raises(ServerRefused, match="request r-2: HTTP 400: scripted 400") as raised:
        transport.send("r-2", 0, IMAGES)
    assert raised.value.status == 400 and Scripted.seen == ["r-2"]


def test_it_gives_up_after_the_last_try_with_the_last_problem(scripted_server):
    Scripted.script = [503] * 3
    transport = HttpTransport(scripted_server, retries=2, backoff_s=0.01)
    with pytest.raises(ServerRefused, match="gave up after 3 tries; last: scripted 503"):
        transport.send("r-3", 0, IMAGES)
    assert Scripted.seen == ["r-3"] * 3


def test_a_dead_replica_costs_no_request_when_another_answers(scripted_server):
    from devtools.processes import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    transport = HttpTransport(f"{dead},{scripted_server}", retries=2, backoff_s=0.01)
    answers = [transport.send(f"r-{index}", 0, IMAGES) for index in range(4)]
    assert all(answer["predictions"][0]["class"] == 7 for answer in answers)
    assert Scripted.seen == [f"r-{index}" for index in range(4)]
