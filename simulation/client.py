"""The traffic client: sends a plan's requests over HTTP (or in-process through score.py) and keeps the sidecar."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from common.access import api_key_header
from common.datasets import Digits
from common.quality import DUPLICATE_CAUSE, corrupt
from common.windows import WALL, WindowClock
from simulation.scenario import PlannedRequest
from simulation.sidecar import GroundTruthSidecar

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = {429, 500, 502, 503, 504}


class ServerRefused(RuntimeError):
    """The server refused a request (or kept failing); the run stops, keeping what was acknowledged."""

    def __init__(self, status: int | None, message: str, request_id: str) -> None:
        where = f"HTTP {status}" if status else "no answer"
        super().__init__(f"request {request_id}: {where}: {message}")
        self.status = status


class Transport(Protocol):
    def send(self, request_id: str, window: int | None, images: np.ndarray) -> dict: ...


def score_body(request_id: str, window: int | None, images: np.ndarray) -> str:
    """The Azure ML /score body the server and score.py take: images, id and window (none, as real clients send,
    in a live run); never the labels."""
    body = {"data": images.reshape(len(images), -1).tolist(), "request_id": request_id}
    return json.dumps(body if window is None else {**body, "window": window})


def score_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/score") else url + "/score"


class HttpTransport:
    """POSTs to the server's /score, retrying transient failures with the same id (the log ignores repeats).

    With several URLs (replicas without a load balancer in front), requests take turns, and a retry goes to
    the next replica: one that died costs no request.
    """

    def __init__(
        self, url: str, api_key: str | None = None, timeout_s: float = 30.0, retries: int = 4, backoff_s: float = 0.2
    ) -> None:
        self.urls = [score_url(part) for part in url.split(",") if part.strip()]
        self._turn = itertools.count()
        headers = {"content-type": "application/json", **(api_key_header(api_key) if api_key else {})}
        self.client = httpx.Client(
            timeout=timeout_s, headers=headers, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
        )
        self.retries = retries
        self.backoff_s = backoff_s

    def send(self, request_id: str, window: int | None, images: np.ndarray) -> dict:
        body = score_body(request_id, window, images)
        first = next(self._turn)
        attempts = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff_s, max=30),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            for attempt in attempts:
                with attempt:
                    replica = self.urls[(first + attempt.retry_state.attempt_number - 1) % len(self.urls)]
                    try:
                        response = self.client.post(replica, content=body)
                    except httpx.TransportError as err:
                        raise _Transient(f"{type(err).__name__}: {err}") from None
                    if response.status_code == 200:
                        return response.json()
                    if response.status_code in TRANSIENT_STATUSES:
                        raise _Transient(_error_message(response))
                    raise ServerRefused(response.status_code, _error_message(response), request_id)
        except _Transient as last:
            raise ServerRefused(None, f"gave up after {self.retries + 1} tries; last: {last}", request_id) from None

    def close(self) -> None:
        self.client.close()


class _Transient(Exception):
    """A failure worth another try: the connection broke, or the server answered a transient status."""


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


class EntryScriptTransport:
    """Scores in-process through an Azure ML entry script's init()/run() contract (serving/score.py by default).

    The script is loaded by file path, as `azmlinfsrv` and Azure ML load it, so this edge is the Azure
    contract, not an import: simulation never imports serving (the import contracts in pyproject.toml
    check that), and any script that keeps the contract can be simulated against.
    """

    def __init__(self, entry_script: str | Path, prediction_log: str | Path, model_uri: str | None = None) -> None:
        os.environ["DIGITDRIFT_PREDICTION_LOG"] = str(prediction_log)
        if model_uri:
            os.environ["DIGITDRIFT_MODEL_URI"] = model_uri
        spec = importlib.util.spec_from_file_location("digitdrift_entry_script", Path(entry_script).resolve())
        self.script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.script)
        self.script.init()
        self._lock = threading.Lock()

    def send(self, request_id: str, window: int | None, images: np.ndarray) -> dict:
        with self._lock:
            answer = self.script.run(score_body(request_id, window, images))
        if isinstance(answer, dict):
            return answer
        raise ServerRefused(answer.status_code, str(answer.get_json().get("error")), request_id)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class LiveClock:
    """A live run's schedule: window w of the scenario lasts `window_seconds` of wall-clock time from `start` (epoch
    seconds), and its requests leave evenly spread across it."""

    start: float
    window_seconds: float
    positions: dict[str, tuple[int, int]]  # request id -> (its place in its window, the window's request count)

    @classmethod
    def aligned(cls, plan: list[PlannedRequest], window_seconds: int, now: float) -> LiveClock:
        """Windows that start where the monitor's UTC windows of `window_seconds` start (the next one after `now`),
        so each scenario window is one window of the monitor's clock with --window of the same length."""
        clock = WindowClock(WALL, int(window_seconds), "UTC")
        start = clock.start(clock.window_of(datetime.fromtimestamp(now, UTC)) + 1).timestamp()
        counts, seen, positions = Counter(request.window for request in plan), Counter(), {}
        for request in plan:
            positions[request.request_id] = (seen[request.window], counts[request.window])
            seen[request.window] += 1
        return cls(start, window_seconds, positions)

    def send_time(self, request: PlannedRequest) -> float:
        place, count = self.positions[request.request_id]
        return self.start + self.window_seconds * (request.window + place / count)

    def window_start(self, window: int) -> float:
        return self.start + self.window_seconds * window


@dataclass
class SendStats:
    sent: int = 0
    skipped: int = 0  # already acknowledged in an earlier, interrupted run
    seconds: float = 0.0
    model_versions: set[str] = field(default_factory=set)
    stopped_by: str | None = None

    @property
    def requests_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def images_of(request: PlannedRequest, pools: dict[str, Digits]) -> tuple[np.ndarray, list[int]]:
    """A request's images as the client sends them (each with its planned corruption) and their true labels."""
    images = np.stack([pools[s].images[i] for s, i in zip(request.sources, request.pool_indices)])
    labels = [int(pools[s].labels[i]) for s, i in zip(request.sources, request.pool_indices)]
    for index, fault in enumerate(request.corruptions):
        if fault and fault != DUPLICATE_CAUSE:  # a duplicate is planned as the burst's image itself
            seed = int.from_bytes(hashlib.sha256(f"{request.request_id}:{index}".encode()).digest()[:8], "big")
            images[index] = corrupt(images[index : index + 1], fault, np.random.default_rng(seed))[0]
    return images, labels


def send_plan(
    plan: list[PlannedRequest],
    pools: dict[str, Digits],
    transport: Transport,
    sidecar: GroundTruthSidecar,
    concurrency: int = 8,
    rate: float | None = None,
    on_progress: Callable[[PlannedRequest, SendStats], None] | None = None,
    flush_every: int = 100,
    live: LiveClock | None = None,
) -> SendStats:
    """Send every request not yet in the sidecar; record ground truth once the server has acknowledged it.

    With `live`, each request leaves at its time on the wall clock and carries no window, as real clients' do
    (the sidecar keeps the scenario's window). Stops at the first refusal (ServerRefused propagates) after
    flushing what was acknowledged.
    """
    done = sidecar.done_request_ids()
    pending = [request for request in plan if request.request_id not in done]
    stats = SendStats(skipped=len(plan) - len(pending))
    rows: list[tuple] = []
    started = time.perf_counter()
    interval = 1.0 / rate if rate else 0.0
    next_send = started

    def send_one(request: PlannedRequest) -> tuple[PlannedRequest, dict, list[int]]:
        images, labels = images_of(request, pools)
        return request, transport.send(request.request_id, None if live else request.window, images), labels

    def collect(future: Future) -> None:
        request, answer, labels = future.result()
        faults = request.corruptions or ("",) * len(labels)
        rows.extend(
            (request.request_id, index, request.window, source, label, fault)
            for index, (source, label, fault) in enumerate(zip(request.sources, labels, faults))
        )
        stats.sent += 1
        version = answer.get("model", {}).get("version")
        if version:
            stats.model_versions.add(str(version))
        if on_progress:
            stats.seconds = time.perf_counter() - started
            on_progress(request, stats)

    in_flight: set[Future] = set()
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="traffic") as pool:
            try:
                for request in pending:
                    if live:
                        time.sleep(max(0.0, live.send_time(request) - time.time()))
                    elif interval:
                        next_send += interval
                        time.sleep(max(0.0, next_send - time.perf_counter()))
                    while len(in_flight) >= concurrency:
                        finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        for future in finished:
                            collect(future)
                    in_flight.add(pool.submit(send_one, request))
                    if len(rows) >= flush_every:
                        sidecar.write(rows)
                        rows.clear()
            finally:
                failure = None
                for future in in_flight:  # let the requests already sent finish and keep their rows
                    try:
                        collect(future)
                    except ServerRefused as err:
                        failure = failure or err
                if failure:
                    raise failure
    except (ServerRefused, KeyboardInterrupt) as err:
        stats.stopped_by = str(err) or type(err).__name__
        raise
    finally:
        sidecar.write(rows)
        stats.seconds = time.perf_counter() - started
    return stats
