"""Load from Debian's `wrk` (a C load generator): POSTs of one JSON body, each with its own X-Request-Id."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from common.settings import PROJECT_ROOT

# Threads number themselves in setup(); each request gets "<prefix>-<thread>-<n>" so the server logs every one.
POST_SCRIPT = """
local counter = 1
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  wrk.method = "POST"
  wrk.body = io.open(args[1]):read("*a")
  prefix = args[2] .. "-" .. id .. "-"
  sent = 0
end
function request()
  sent = sent + 1
  return wrk.format(nil, nil, {["Content-Type"] = "application/json", ["X-Request-Id"] = prefix .. sent})
end
"""
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def find_wrk() -> str:
    """wrk's path, installing Debian's package first when it is missing (as root)."""
    if not shutil.which("wrk"):
        subprocess.run([str(PROJECT_ROOT / "scripts" / "debian-packages.sh"), "wrk=wrk"], check=True)
    return shutil.which("wrk") or "wrk"


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", value).groups()
    return float(number) * UNITS_MS[unit]


def parse_report(report: str) -> dict:
    """wrk's --latency report as figures: requests/s, p50/p99 in ms, non-2xx answers and socket errors."""
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", report, re.MULTILINE))
    return {
        "requests": int(re.search(r"(\d+) requests in", report).group(1)),
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", report).group(1)),
        # wrk prints no distribution when no request completed (every one timed out or failed)
        "p50_ms": round(to_ms(latency["50"]), 2) if "50" in latency else None,
        "p99_ms": round(to_ms(latency["99"]), 2) if "99" in latency else None,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0,
    }


def wrk_load(url: str, body: bytes, connections: int, duration_s: float, prefix: str) -> dict:
    """`connections` keep-alive connections POSTing `body` to `url` for `duration_s` seconds."""
    threads = min(2, connections)
    with tempfile.TemporaryDirectory() as scratch:
        script, body_path = Path(scratch) / "post.lua", Path(scratch) / "body.json"
        script.write_text(POST_SCRIPT)
        body_path.write_bytes(body)
        command = [find_wrk(), "-t", str(threads), "-c", str(connections), "-d", f"{duration_s:g}s", "--latency"]
        command += ["--timeout", "10s", "-s", str(script), url, "--", str(body_path), prefix]
        report = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {"connections": connections, **parse_report(report)}
