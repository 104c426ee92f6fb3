"""Blob storage down under a replica: it keeps answering, /ready says how far publishing is behind, and every
acknowledged record is published once when storage returns (real Azurite, stopped and started again)."""

import subprocess
import time

import httpx
import numpy as np

from common.prediction_dataset import filesystem, list_parts, read_parts
from devtools.azurite import azurite_command, connection_string
from devtools.processes import free_port, running, stop
from tests.helpers import serving_command, wait_for_port


def test_a_replica_answers_while_blob_storage_is_down_says_it_is_behind_and_publishes_everything_when_it_returns(
    champion, shared_data, tmp_path, monkeypatch
):
    storage_port, port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"

    def start_storage() -> subprocess.Popen:
        with open(tmp_path / "azurite.log", "ab") as output:  # the same data folder: what it held comes back
            process = subprocess.Popen(
                azurite_command(storage_port, tmp_path / "azurite"), stdout=output, stderr=subprocess.STDOUT
            )
        wait_for_port(storage_port, process)
        return process

    def publishing(until, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while not until(state := httpx.get(f"{url}/ready", timeout=10).json()["publishing"]):
            assert time.monotonic() < deadline, f"/ready still says {state} after {timeout} s"
            time.sleep(0.5)
        return state

    connection = connection_string(storage_port)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)  # this process reads the container too
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": connection,
        "MLFLOW_TRACKING_URI": champion.tracking_uri,
        "DIGITDRIFT_DATA": str(shared_data),
        "DIGITDRIFT_HOME": str(tmp_path),
    }
    storage = start_storage()
    fs, _ = filesystem("az://outage")
    fs.mkdir("outage")
    command = serving_command(
        champion.uri, port, "--prediction-dataset", "az://outage/predictions", "--staging-dir", str(tmp_path / "staging"),
        "--flush-seconds", "1",
    )  # fmt: skip
    image = np.zeros((28, 28), dtype=int).tolist()
    try:
        with running(command, f"{url}/ready", env=env, log_path=tmp_path / "server.log"):

            def score(number: int) -> int:
                return httpx.post(f"{url}/score", json={"data": [image], "request_id": f"req-{number}"}, timeout=30).status_code

            assert [score(number) for number in range(5)] == [200] * 5
            publishing(lambda state: state["status"] == "ok" and state["staged_records"] == 0, 60)
            stop(storage)
            answered = [score(number) for number in range(5, 25)]
            assert answered == [200] * 20, "the replica must keep answering: its staging is the durability point"
            behind = publishing(lambda state: state["status"] == "behind", 240)
            assert behind["staged_records"] == 20 and behind["oldest_staged"]
            ready = httpx.get(f"{url}/ready", timeout=10)
            assert ready.status_code == 200 and ready.json()["ready"]
            storage = start_storage()
            publishing(lambda state: state["status"] == "ok" and state["staged_records"] == 0, 240)
        records = read_parts(fs, list_parts(fs, "outage/predictions"), ["window"])
    finally:
        stop(storage)
    assert sorted(records["request_id"]) == sorted(f"req-{number}" for number in range(25))  # each acknowledged one, once
    log = (tmp_path / "server.log").read_text()
    assert log.count("publishing to az://outage/predictions failed") <= 1 and "Traceback" not in log  # no log flood
