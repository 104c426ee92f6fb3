"""The prediction log's disk fills under a running server: it stops acknowledging (503 with the reason, not 200),
keeps every record it acknowledged, and acknowledges again once space returns. A real tmpfs of 1 MiB (mounted
as root, which `make test` runs as on the CI machines)."""

import subprocess

import httpx
import numpy as np

from common.records import read_prediction_log
from devtools.processes import free_port, running
from tests.helpers import serving_command


def test_a_full_disk_turns_acknowledgements_into_503_loses_nothing_acknowledged_and_recovers(champion, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"this test mounts a small tmpfs and needs root: {mounted.stderr}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = small / "predictions.db"
    env = {"MLFLOW_TRACKING_URI": champion.tracking_uri, "DIGITDRIFT_HOME": str(tmp_path)}
    rng = np.random.default_rng(0)
    try:
        with running(serving_command(champion.uri, port, "--prediction-log", str(log_path)), f"{url}/ready", env=env):
            filler = small / "filler"
            with open(filler, "wb") as handle:  # leave about 256 KiB of the 1 MiB
                handle.write(b"\0" * (1024 * 1024 - 256 * 1024 - sum(p.stat().st_size for p in small.iterdir())))
            answers = {}
            for number in range(3000):
                images = rng.integers(0, 256, (4, 28, 28)).tolist()  # noise: flagged, so each record keeps its image
                answer = httpx.post(f"{url}/score", json={"data": images, "request_id": f"req-{number}"}, timeout=30)
                answers[f"req-{number}"] = answer
                if answer.status_code != 200:
                    break
            refused = answers[f"req-{number}"]
            assert refused.status_code == 503, refused.text
            assert "cannot be written" in refused.json()["error"] and refused.headers["retry-after"]
            acknowledged = {request for request, answer in answers.items() if answer.status_code == 200}
            assert len(acknowledged) >= 5, "the disk filled before the server acknowledged anything"
            logged = set(read_prediction_log(log_path, ["request_id"])["request_id"])
            assert acknowledged <= logged and f"req-{number}" not in logged  # everything acknowledged, nothing else
            filler.unlink()  # space returns
            again = httpx.post(f"{url}/score", json={"data": images, "request_id": "after"}, timeout=30)
            assert again.status_code == 200 and "after" in set(read_prediction_log(log_path, ["request_id"])["request_id"])
            print(f"acknowledged {len(acknowledged)} requests before the disk was full; 503 at request {number + 1}")
    finally:  # lazily: detached now, freed once the last open file of it (this process's reader) is closed
        subprocess.run(["umount", "--lazy", str(small)], check=False)
