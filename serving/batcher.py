"""Micro-batching: concurrent requests are scored in one model call and logged in one transaction."""

from __future__ import annotations

import asyncio
import logging
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


class Overloaded(RuntimeError):
    """More images wait for the model than the batcher may queue: the request is shed, not queued."""


class MicroBatcher:
    """Gathers jobs for up to `max_wait_s` or `max_batch` images, then runs `process` on one worker thread.

    `process(jobs)` scores and logs the whole batch and returns one Scored per job; jobs resolve only
    after it returns, so an answer is sent only once its records are committed.
    """

    def __init__(
        self,
        process: Callable[[list[Job]], list[Scored]],
        max_batch: int,
        max_wait_s: float,
        max_queued_images: int | None = None,
    ) -> None:
        self.process = process
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queued_images = max_queued_images  # None: no bound
        self.queued_images = 0  # submitted and not yet answered
        self.shed = 0
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        self._task: asyncio.Task | None = None
        self.batches = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, images: np.ndarray, request_id: str, window: int | None) -> Scored:
        """Queue a request and wait for its answer; over `max_queued_images` it is refused at once (Overloaded):
        a bounded queue keeps every accepted request's latency bounded instead of letting all of them grow."""
        if self.max_queued_images is not None and self.queued_images + len(images) > self.max_queued_images:
            self.shed += 1
            raise Overloaded(f"{self.queued_images} images are waiting for the model; the limit is {self.max_queued_images}")
        job = Job(images, request_id, window, asyncio.get_running_loop().create_future())
        self.queued_images += len(images)
        try:
            await self._queue.put(job)
            return await job.future
        finally:
            self.queued_images -= len(images)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].images)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                jobs.append(job)
                size += len(job.images)
            jobs = [job for job in jobs if not job.future.cancelled()]
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.process, jobs)
            except Exception as err:  # the model or the log failed: every request of the batch gets a 5xx
                log.exception("scoring a batch of %d requests failed", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.batches += 1
            for job, result in zip(jobs, results):
                if not job.future.done():
                    job.future.set_result(result)
