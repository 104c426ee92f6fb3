"""Micro-batching: concurrent requests are scored in one model call and logged in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from serving.core import Scored

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One request's images waiting for the model; `future` receives its Scored slice."""

    images: np.ndarray
    request_id: str
    window: int | None
    future: asyncio.Future = field(repr=False)
    abandoned: Callable[[], bool] | None = field(default=None, repr=False)  # whether its client has hung up
    submitted_at: float = field(default_factory=time.monotonic, repr=False)


class Overloaded(RuntimeError):
    """More images wait for the model than the batcher may queue: the request is shed, not queued."""


class Abandoned(RuntimeError):
    """The client hung up before the request's records were committed (a proxy that timed out has sent it to
    another replica): it is not logged, since nobody was told it was, and the replica that answered logs it."""


class Stale(RuntimeError):
    """The request waited longer than a retrying proxy should let it before its records were committed (the process
    was stopped or stalled): it is not logged and the client is told to retry, since its proxy may have already."""


Withdraw = Callable[[list[str]], set[str]]  # request ids -> those whose records were all taken back from the log
RECENT_COMMITS = 65_536  # request ids remembered for withdrawals, which concern requests answered seconds late


class MicroBatcher:
    """Scores queued jobs in batches on a model thread and commits each batch on a log thread: a pipeline, so the
    model scores the next batch while the log waits for the disk.

    The model thread takes what has queued when it is free (waiting up to `max_wait_s` for company, up to
    `max_batch` images); it takes its work itself, so the next batch starts the moment the model is free, not
    when the event loop, busy answering the last batch, gets round to it. `score(jobs)` returns one Scored per
    job; `commit(jobs, results)` returns once their records are durable. Jobs resolve only after their commit,
    so an answer is sent only once its records are committed; commits run in the order batches were scored.
    """

    def __init__(
        self,
        score: Callable[[list[Job]], list[Scored]],
        commit: Callable[[list[Job], list[Scored]], None],
        max_batch: int,
        max_wait_s: float,
        max_queued_images: int | None = None,
        stale_after_s: float | None = None,
        withdraw: Withdraw | None = None,
    ) -> None:
        self.score = score
        self.commit = commit
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queued_images = max_queued_images  # None: no bound
        self.stale_after_s = stale_after_s  # None: a request is committed however long it waited
        # takes back a committed request's records that were not yet published; used for an answer about to leave
        # late or to a client that hung up (the process stopped between the commit and the answer)
        self.withdraw = withdraw
        self._last_commit: OrderedDict[str, Job] = OrderedDict()  # on the log thread: recent commits by request id
        self.queued_images = 0  # submitted and not yet answered
        self.shed = 0
        self.abandoned = 0
        self.stale = 0
        self.withdrawn = 0
        self.batches = 0
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()  # None: stop
        self._log_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logging")
        self._model_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._model_thread is not None and self._model_thread.is_alive()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._model_thread = threading.Thread(target=self._score_batches, name="scoring", daemon=True)
        self._model_thread.start()

    async def stop(self) -> None:
        """Score what is queued, commit every batch scored, then stop the threads."""
        if self._model_thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._model_thread.join)
        await asyncio.to_thread(self._log_thread.shutdown, wait=True)

    async def submit(
        self, images: np.ndarray, request_id: str, window: int | None, abandoned: Callable[[], bool] | None = None
    ) -> Scored:
        """Queue a request and wait for its answer; over `max_queued_images` it is refused at once (Overloaded):
        a bounded queue keeps every accepted request's latency bounded instead of letting all of them grow. One
        whose `abandoned()` is true by the time it would be committed is refused then (Abandoned), not logged; so is
        one whose answer would leave late or to nobody, when its records can still be withdrawn."""
        if self.max_queued_images is not None and self.queued_images + len(images) > self.max_queued_images:
            self.shed += 1
            raise Overloaded(f"{self.queued_images} images are waiting for the model; the limit is {self.max_queued_images}")
        job = Job(images, request_id, window, asyncio.get_running_loop().create_future(), abandoned)
        self.queued_images += len(images)
        try:
            self._jobs.put(job)
            result = await job.future
        except asyncio.CancelledError:  # the server gave up on it (504): what its commit wrote goes too, if it can
            if self.withdraw is not None and job.future.done() and not job.future.cancelled():
                with contextlib.suppress(RuntimeError):  # the log thread has stopped: the server is shutting down
                    self._log_thread.submit(self._withdraw_latest, job)
            raise
        finally:
            self.queued_images -= len(images)
        if self.withdraw is not None and (late := self._late(job, time.monotonic(), "its records were taken back")):
            # the commit's records may sit unpublished while a retrying proxy has had the request answered elsewhere
            try:
                taken_back = await asyncio.wrap_future(self._log_thread.submit(self._withdraw_latest, job))
            except RuntimeError:  # the log thread has stopped (the server is shutting down): answer as committed
                return result
            if taken_back:
                self.withdrawn += 1
                log.warning("a committed request's records were taken back before its answer left (%s)", late)
                raise late
        return result

    def _withdraw_latest(self, job: Job) -> bool:
        """On the log thread: withdraw `job`'s records unless a later request with its id was committed since (it
        added nothing, the rows being `job`'s, and it is answered from them); whether they were taken back."""
        if self._last_commit.get(job.request_id) is not job:
            return False
        return job.request_id in self.withdraw([job.request_id])

    def _score_batches(self) -> None:
        """The model thread: take a batch, score it, hand it to the log thread; until stopped."""
        while (jobs := self._next_batch()) is not None:
            jobs = [job for job in jobs if not job.future.cancelled()]  # their clients gave up waiting
            if not jobs:
                continue
            try:
                results = self.score(jobs)
            except Exception as err:  # the model failed: every request of the batch gets a 5xx
                self._loop.call_soon_threadsafe(self._fail, jobs, err)
                continue
            self.batches += 1
            self._log_thread.submit(self._commit, jobs, results)

    def _next_batch(self) -> list[Job] | None:
        first = self._jobs.get()
        if first is None:
            return None
        jobs, size = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = self._jobs.get(block=False)
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self._jobs.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is None:  # stop once this batch is scored
                self._jobs.put(None)
                break
            jobs.append(job)
            size += len(job.images)
        return jobs

    def _commit(self, jobs: list[Job], results: list[Scored]) -> None:
        """The log thread: commit a batch, then answer its requests on the event loop. Requests whose client has
        hung up meanwhile, or that waited past `stale_after_s` (a process stopped or stalled: a retrying proxy may
        have sent them to another replica, and the hang-up may not have reached this thread yet), are refused."""
        now = time.monotonic()
        refusals = [self._refusal(job, now) for job in jobs]
        if any(refusals):
            self._loop.call_soon_threadsafe(self._refuse, [(job, err) for job, err in zip(jobs, refusals) if err])
            kept = [(job, result) for job, result, err in zip(jobs, results, refusals) if not err]
            if not kept:
                return
            jobs, results = [job for job, _ in kept], [result for _, result in kept]
        try:
            self.commit(jobs, results)
        except Exception as err:  # the log failed: nothing of the batch is acknowledged
            self._loop.call_soon_threadsafe(self._fail, jobs, err)
            return
        if self.withdraw is not None:  # which job's commit each request id's rows belong to, for a withdrawal
            for job in jobs:
                self._last_commit[job.request_id] = job
                self._last_commit.move_to_end(job.request_id)
            while len(self._last_commit) > RECENT_COMMITS:
                self._last_commit.popitem(last=False)
        self._loop.call_soon_threadsafe(self._answer, jobs, results)

    @staticmethod
    def _answer(jobs: list[Job], results: list[Scored]) -> None:
        for job, result in zip(jobs, results):
            if not job.future.done():
                job.future.set_result(result)

    def _refusal(self, job: Job, now: float) -> Exception | None:
        """Why `job` may not be committed now, or None."""
        if job.future.cancelled():  # the server gave up waiting (504): nobody is told it was recorded
            self.abandoned += 1
            return Abandoned("the server gave up on this request before it was logged; not recorded")
        refusal = self._late(job, now, "not recorded")
        if isinstance(refusal, Abandoned):
            self.abandoned += 1
        elif isinstance(refusal, Stale):
            self.stale += 1
        return refusal

    def _late(self, job: Job, now: float, outcome: str) -> Exception | None:
        """Abandoned when `job`'s client has hung up, Stale when it has waited past `stale_after_s`, else None."""
        if job.abandoned is not None and job.abandoned():
            return Abandoned(f"the client hung up before this request was answered; {outcome}")
        waited = now - job.submitted_at
        if self.stale_after_s is not None and waited > self.stale_after_s:
            limit = f"{self.stale_after_s:g} s"
            return Stale(f"the server stalled {waited:.1f} s with this request (limit {limit}); {outcome}, retry")
        return None

    @staticmethod
    def _refuse(refused: list[tuple[Job, Exception]]) -> None:
        log.warning("%d requests refused before their records were committed (%s)", len(refused), refused[0][1])
        for job, err in refused:
            if not job.future.done():
                job.future.set_exception(err)

    @staticmethod
    def _fail(jobs: list[Job], err: BaseException) -> None:
        log.error("scoring or logging a batch of %d requests failed", len(jobs), exc_info=err)
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(err)
