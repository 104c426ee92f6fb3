"""The micro-batcher's pipeline and the split model call, with plain functions: answers wait for their commit,
failures reach the client, chunks are scored at once."""

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batcher import MicroBatcher
from serving.core import Scored
from serving.model_calls import MIN_CHUNK_IMAGES, split_call


def scored_for(jobs) -> list[Scored]:
    """One Scored per job whose prediction is the job's first pixel, so each answer can be matched to its request."""
    return [Scored(np.array([job.images[0, 0, 0]]), np.zeros((1, 10), np.float32), np.ones(1), [()]) for job in jobs]


def image(value: int) -> np.ndarray:
    return np.full((1, 28, 28), value, dtype=np.uint8)


def withdrawing(asked: list[list[str]]):
    """A withdraw that takes back every request it is asked for, noting each call in `asked`."""

    def withdraw(request_ids: list[str]) -> set[str]:
        asked.append(request_ids)
        return set(request_ids)

    return withdraw


def test_an_answer_waits_for_its_commit_and_commits_keep_the_order_batches_were_scored():
    release = threading.Event()
    committed: list[list[int]] = []

    def commit(jobs, results):
        release.wait(10)
        committed.append([int(job.images[0, 0, 0]) for job in jobs])

    async def scenario():
        batcher = MicroBatcher(scored_for, commit, max_batch=1, max_wait_s=0)
        batcher.start()
        answers = [asyncio.create_task(batcher.submit(image(value), f"r{value}", None)) for value in range(5)]
        await asyncio.sleep(0.3)  # every request scored (max_batch 1: five batches), none committed
        unanswered = sum(not answer.done() for answer in answers)
        release.set()
        results = await asyncio.gather(*answers)
        await batcher.stop()
        return unanswered, [int(result.predicted[0]) for result in results], batcher.batches

    unanswered, predicted, batches = asyncio.run(scenario())
    assert unanswered == 5
    assert predicted == [0, 1, 2, 3, 4]
    assert batches == 5 and committed == [[0], [1], [2], [3], [4]]


def test_a_failed_commit_fails_its_requests_and_the_next_batch_is_served():
    calls = []

    def commit(jobs, results):
        calls.append(len(jobs))
        if len(calls) == 1:
            raise OSError("disk full")

    async def scenario():
        batcher = MicroBatcher(scored_for, commit, max_batch=1, max_wait_s=0)
        batcher.start()
        with pytest.raises(OSError, match="disk full"):
            await batcher.submit(image(1), "first", None)
        second = await batcher.submit(image(2), "second", None)
        await batcher.stop()
        return int(second.predicted[0]), batcher.queued_images

    assert asyncio.run(scenario()) == (2, 0)


def test_requests_queued_while_the_model_is_busy_share_one_model_call():
    busy = threading.Event()
    sizes = []

    def score(jobs):
        sizes.append(len(jobs))
        busy.wait(10)
        return scored_for(jobs)

    async def scenario():
        batcher = MicroBatcher(score, lambda jobs, results: None, max_batch=256, max_wait_s=0)
        batcher.start()
        first = asyncio.create_task(batcher.submit(image(0), "first", None))
        await asyncio.sleep(0.1)  # the model holds the first request
        rest = [asyncio.create_task(batcher.submit(image(value), f"r{value}", None)) for value in range(1, 9)]
        await asyncio.sleep(0.1)
        busy.set()
        await asyncio.gather(first, *rest)
        await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [1, 8]


def test_a_split_call_scores_chunks_at_once_and_answers_in_the_batch_order():
    threads, both_running = set(), threading.Barrier(2, timeout=5)

    def call(batch):
        threads.add(threading.get_ident())
        if len(batch) >= MIN_CHUNK_IMAGES:
            both_running.wait()  # fails unless the two chunks are scored at the same time
        return batch[:, :10] * 2, batch[:, :3]

    split = split_call(call, 2)
    batch = np.arange(40 * 784, dtype=np.float32).reshape(40, 784)
    probabilities, embeddings = split(batch)
    assert (probabilities == batch[:, :10] * 2).all() and (embeddings == batch[:, :3]).all()
    assert len(threads) == 2
    small, callers = batch[: 2 * MIN_CHUNK_IMAGES - 1], []  # too small to cut: one call, on the caller's thread
    probabilities, _ = split_call(lambda images: (callers.append(threading.get_ident()) or images[:, :10], None), 2)(small)
    assert (probabilities == small[:, :10]).all() and callers == [threading.get_ident()]


def test_a_request_whose_client_hung_up_before_its_commit_is_refused_and_not_committed_while_its_batch_mates_are():
    from serving.batcher import Abandoned

    committed: list[str] = []

    def commit(jobs, results):
        committed.extend(job.request_id for job in jobs)

    async def scenario():
        batcher = MicroBatcher(scored_for, commit, max_batch=8, max_wait_s=0.2)
        batcher.start()
        gone = asyncio.create_task(batcher.submit(image(1), "gone", None, abandoned=lambda: True))
        waiting = asyncio.create_task(batcher.submit(image(2), "waiting", None, abandoned=lambda: False))
        unwatched = asyncio.create_task(batcher.submit(image(3), "unwatched", None))
        with pytest.raises(Abandoned, match="hung up before this request was answered; not recorded"):
            await gone
        answers = [int((await task).predicted[0]) for task in (waiting, unwatched)]
        await batcher.stop()
        return answers, batcher.abandoned, batcher.batches

    answers, abandoned, batches = asyncio.run(scenario())
    assert answers == [2, 3] and abandoned == 1 and batches == 1
    assert committed == ["waiting", "unwatched"]


def test_a_request_that_waited_past_the_stale_limit_is_refused_and_not_committed():
    from serving.batcher import Stale

    committed: list[str] = []
    release = threading.Event()

    def score(jobs):
        release.wait(10)  # the process stalls with the first batch in hand
        return scored_for(jobs)

    async def scenario():
        batcher = MicroBatcher(score, lambda jobs, results: committed.extend(j.request_id for j in jobs), 1, 0, None, 0.2)
        batcher.start()
        stalled = asyncio.create_task(batcher.submit(image(1), "stalled", None))
        await asyncio.sleep(0.4)
        release.set()
        with pytest.raises(Stale, match=r"stalled \d+\.\d s with this request \(limit 0.2 s\); not recorded, retry"):
            await stalled
        fresh = await batcher.submit(image(2), "fresh", None)
        await batcher.stop()
        return int(fresh.predicted[0]), batcher.stale

    assert asyncio.run(scenario()) == (2, 1)
    assert committed == ["fresh"]


def test_a_committed_request_whose_answer_would_leave_late_is_withdrawn_and_refused_unless_it_is_published():
    from serving.batcher import Stale

    committed: list[str] = []
    asked: list[list[str]] = []

    def commit(jobs, results):
        committed.extend(job.request_id for job in jobs)
        time.sleep(0.4)  # the process stops right after the commit, before the answer leaves

    def withdraw(request_ids):
        asked.append(request_ids)
        return {request_id for request_id in request_ids if request_id != "published"}

    async def scenario():
        batcher = MicroBatcher(scored_for, commit, 1, 0, None, 0.2, withdraw)
        batcher.start()
        with pytest.raises(Stale, match=r"stalled 0\.\d s with this request \(limit 0.2 s\); its records were taken back"):
            await batcher.submit(image(1), "late", None)
        answered = await batcher.submit(image(2), "published", None)  # too late to take back: answered as committed
        await batcher.stop()
        return int(answered.predicted[0]), batcher.withdrawn, batcher.stale

    assert asyncio.run(scenario()) == (2, 1, 0)
    assert committed == ["late", "published"] and asked == [["late"], ["published"]]


def test_a_request_whose_client_hung_up_after_its_commit_is_withdrawn_and_one_answered_in_time_is_not():
    from serving.batcher import Abandoned

    hung_up = threading.Event()
    asked: list[list[str]] = []

    def commit(jobs, results):
        if jobs[0].request_id == "gone":
            hung_up.set()  # the proxy gives up while the batch commits

    async def scenario():
        batcher = MicroBatcher(scored_for, commit, 1, 0, None, 5.0, withdrawing(asked))
        batcher.start()
        with pytest.raises(Abandoned, match="hung up before this request was answered; its records were taken back"):
            await batcher.submit(image(1), "gone", None, abandoned=hung_up.is_set)
        kept = await batcher.submit(image(2), "kept", None, abandoned=lambda: False)
        await batcher.stop()
        return int(kept.predicted[0]), batcher.withdrawn, batcher.abandoned

    assert asyncio.run(scenario()) == (2, 1, 0)
    assert asked == [["gone"]]


def test_a_retry_committed_under_the_same_id_keeps_the_rows_a_late_first_attempt_would_withdraw():
    hung_up = threading.Event()
    asked: list[list[str]] = []

    def commit(jobs, results):
        if int(jobs[0].images[0, 0, 0]) == 1:  # the first attempt: its client hangs up while it commits
            hung_up.set()
            time.sleep(0.3)  # meanwhile the retry is scored and queued behind it on the log thread

    async def scenario():
        batcher = MicroBatcher(scored_for, commit, 1, 0, None, 5.0, withdrawing(asked))
        batcher.start()
        first = asyncio.create_task(batcher.submit(image(1), "same", None, abandoned=hung_up.is_set))
        await asyncio.sleep(0.05)
        retry = asyncio.create_task(batcher.submit(image(2), "same", None))
        answers = [int((await task).predicted[0]) for task in (first, retry)]
        await batcher.stop()
        return answers, batcher.withdrawn

    # the retry added no row (the same key) and is answered from the first attempt's: those stay
    assert asyncio.run(scenario()) == ([1, 2], 0)
    assert asked == []
