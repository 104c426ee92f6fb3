"""A small closed-loop HTTP load generator: N threads, keep-alive connections, latency percentiles."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    images_per_request: int
    p50_ms: float
    p99_ms: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def images_per_s(self) -> float:
        return self.requests * self.images_per_request / self.seconds

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "requests_per_s": round(self.requests_per_s, 1),
            "images_per_s": round(self.images_per_s, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
        }


def closed_loop(
    url: str, bodies: list[bytes], concurrency: int, duration_s: float, images_per_request: int, warmup_requests: int = 20
) -> LoadResult:
    """Each of `concurrency` threads POSTs bodies back to back for `duration_s` seconds."""
    parts = urlsplit(url)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    warmed_up = threading.Barrier(concurrency + 1)
    go = threading.Barrier(concurrency + 1)
    deadline = [0.0]  # set by the main thread between the two barriers

    def worker(slot: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        headers = {"Content-Type": "application/json"}
        for index in range(warmup_requests):
            connection.request("POST", parts.path, bodies[index % len(bodies)], headers)
            connection.getresponse().read()
        warmed_up.wait()
        go.wait()
        index = slot
        while time.perf_counter() < deadline[0]:
            began = time.perf_counter()
            connection.request("POST", parts.path, bodies[index % len(bodies)], headers)
            response = connection.getresponse()
            response.read()
            latencies[slot].append(time.perf_counter() - began)
            if response.status != 200:
                errors[slot] += 1
            index += concurrency
        connection.close()

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(concurrency)]
    for thread in threads:
        thread.start()
    warmed_up.wait()
    started = time.perf_counter()
    deadline[0] = started + duration_s
    go.wait()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    merged = np.concatenate([np.asarray(values) for values in latencies]) * 1000
    return LoadResult(
        len(merged), sum(errors), seconds, images_per_request, float(np.percentile(merged, 50)), float(np.percentile(merged, 99))
    )
