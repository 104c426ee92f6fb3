"""Soak benchmark: python -m bench.soak [--requests 1000000] [--connections 64].

Our server under Debian's `wrk` (a C load generator; installed when missing, as root): a warm-up, then
`--requests` single-image POSTs to /invocations at `--connections` connections, each with its own
X-Request-Id. Records errors and non-2xx answers, the server's resident memory after the warm-up and
through the run, and whether the prediction log holds exactly one record per acknowledged image.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.result_file import write_result
from bench.serving import STARTUP_TIMEOUT_S, our_server_command
from common.datasets import load_source
from common.logs import configure_logging
from common.settings import PROJECT_ROOT, load_settings
from devtools.processes import free_port, running
from serving.core import DEFAULT_MODEL_URI

log = logging.getLogger("bench.soak")
RESULTS = Path(__file__).parent / "results"

# Each wrk thread sends its share of the requests, numbered so that every request id is unique, writes the id of
# every 200 answer to its own file, and stops, leaving a .done file; requests still in flight then are not counted
# by wrk. wrk's main thread sleeps for -d whatever its threads do, so the caller interrupts it (SIGINT) once all
# threads are done, and wrk reports.
WRK_SCRIPT = """
local threads = {}
local counter = 1
function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end
function init(args)
  limit = tonumber(args[1])
  prefix = args[2]
  sent = 0
  answered = 0
  wrk.method = "POST"
  wrk.body = io.open(args[3]):read("*a")
  marker = args[4] .. "-" .. id
  acknowledged = io.open(marker .. ".txt", "w")
end
function request()
  sent = sent + 1
  return wrk.format(nil, nil, {["Content-Type"] = "application/json", ["X-Request-Id"] = prefix .. "-" .. id .. "-" .. sent})
end
function response(status, headers, body)
  if answered >= limit then return end
  answered = answered + 1
  if status == 200 then acknowledged:write(headers["x-request-id"], "\\n") end
  if answered >= limit then
    acknowledged:close()
    io.open(marker .. ".done", "w"):close()
    wrk.thread:stop()
  end
end
"""


def resident_mib(pid: int) -> float:
    """The process's resident set size (VmRSS) in MiB."""
    with open(f"/proc/{pid}/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024


def run_wrk(url: str, folder: Path, prefix: str, requests: int, connections: int, threads: int) -> dict:
    """One wrk run of `requests` requests (split over its threads); its figures parsed from the report, and the
    request ids it saw answered 200."""
    per_thread = -(-requests // threads)
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", "3600s", "--timeout", "30s", "--latency"]
    command += ["-s", str(folder / "soak.lua"), url, "--", str(per_thread), prefix, str(folder / "body.json")]
    command += [str(folder / f"acknowledged-{prefix}")]
    started = time.perf_counter()
    generator = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    while generator.poll() is None and len(list(folder.glob(f"acknowledged-{prefix}-*.done"))) < threads:
        time.sleep(0.2)
    generator.send_signal(signal.SIGINT)
    report = generator.communicate()[0]
    seconds = time.perf_counter() - started
    if generator.returncode != 0:
        raise RuntimeError(f"wrk failed ({generator.returncode}): {report[-2000:]}")
    completed = int(re.search(r"(\d+) requests in", report).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", report, re.MULTILINE))
    acknowledged = set()
    for path in folder.glob(f"acknowledged-{prefix}-*.txt"):
        acknowledged.update(path.read_text().split())
    return {
        "acknowledged": acknowledged,
        "completed": completed,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0,
        "seconds": round(seconds, 1),
        "requests_per_s": round(completed / seconds, 1),
        "p50": latency.get("50"),
        "p99": latency.get("99"),
    }


def run_soak(model_uri: str, requests: int, connections: int, warmup_requests: int, tracking_uri: str, data_dir: Path) -> dict:
    image = load_source("mnist", data_dir).images[0].reshape(784).tolist()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "body.json").write_text(json.dumps({"inputs": [image]}))
        (folder / "soak.lua").write_text(WRK_SCRIPT)
        port = free_port()
        database = folder / "predictions.db"
        env = {"MLFLOW_TRACKING_URI": tracking_uri, "TF_CPP_MIN_LOG_LEVEL": "2"}
        url = f"http://127.0.0.1:{port}/invocations"
        memory: list[tuple[float, float]] = []
        command = our_server_command(model_uri, port, database)
        with running(command, f"http://127.0.0.1:{port}/ready", env, timeout=STARTUP_TIMEOUT_S) as server:
            log.info("warm-up: %d requests", warmup_requests)
            warmup = run_wrk(url, folder, "warmup", warmup_requests, connections, 2)
            after_warmup = resident_mib(server.pid)
            log.info("after warm-up: %.1f MiB resident; soak: %d requests at %d connections", after_warmup, requests, connections)
            stop_sampling = threading.Event()
            started = time.monotonic()

            def sample() -> None:
                while not stop_sampling.wait(15):
                    memory.append((round(time.monotonic() - started), round(resident_mib(server.pid), 1)))
                    log.info("%4d s: %.1f MiB resident", *memory[-1])

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            soak = run_wrk(url, folder, "soak", requests, connections, 2)
            stop_sampling.set()
            sampler.join()
            at_end = resident_mib(server.pid)
        with sqlite3.connect(database) as connection:
            logged = [row[0] for row in connection.execute("SELECT request_id FROM predictions")]
    acknowledged = warmup.pop("acknowledged") | soak.pop("acknowledged")
    logged_ids = set(logged)
    return {
        "warmup": warmup,
        "soak": soak,
        "errors": soak["non_2xx"] + soak["socket_errors"] + warmup["non_2xx"] + warmup["socket_errors"],
        "memory_mib": {
            "after_warmup": round(after_warmup, 1),
            "at_end": round(at_end, 1),
            "growth": round(at_end / after_warmup - 1, 4),
            "samples_s_mib": memory,
        },
        "prediction_log": {
            "acknowledged_images": len(acknowledged),
            "records": len(logged),
            "acknowledged_without_record": len(acknowledged - logged_ids),
            "records_with_two_or_more_per_request": len(logged) - len(logged_ids),
            # wrk stops a thread at its count with requests in flight; the server may answer and log those
            "records_not_acknowledged_in_flight_at_stop": len(logged_ids - acknowledged),
            "one_record_per_acknowledged_image": not (acknowledged - logged_ids) and len(logged) == len(logged_ids),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL_URI, help="model to serve (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=1_000_000, help="single-image requests (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default: %(default)s)")
    parser.add_argument("--warmup-requests", type=int, default=20_000, help="requests before the first memory figure")
    parser.add_argument("--out", default=str(RESULTS / "soak.json"), help="result file (default: %(default)s)")
    args = parser.parse_args()
    configure_logging()
    subprocess.run([str(PROJECT_ROOT / "scripts" / "debian-packages.sh"), "wrk=wrk"], check=True)
    settings = load_settings()
    figures = run_soak(
        args.model, args.requests, args.connections, args.warmup_requests, settings.tracking_uri, settings.data_dir
    )
    measured = {
        "model": args.model,
        "requests": args.requests,
        "connections": args.connections,
        "load_generator": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
        **figures,
    }
    benchmark = "soak: single-image requests to /invocations under wrk, memory and the prediction log"
    result = write_result(args.out, benchmark, measured, "bench.soak")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
