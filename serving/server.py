"""The HTTP server: /score (Azure ML body), /invocations (MLflow bodies), /health, /ready, /metadata."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from starlette.responses import JSONResponse
from starlette.types import ASGIApp

from common.access import RequireApiKey
from serving.batcher import Job, MicroBatcher
from serving.config import ServerConfig
from serving.core import Scored, ScoringCore, freeze_heap
from serving.dataset_sink import DatasetSink
from serving.doors import Doors, ScoringDoors
from serving.follow import AliasFollower, ModelSlot
from serving.protocol import invocations_openapi, score_openapi
from serving.scoring import RecordSink, log_scored, score_requests
from serving.webhooks import (
    MAX_DELIVERY_BYTES,
    WEBHOOK_PATH,
    DeliveryRefused,
    moves_alias,
    read_capped,
    subscribe,
    unsubscribe,
    verify_delivery,
)

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready"})  # what a load balancer probes; everything else needs the key


class ScoringPipeline:
    """What the micro-batcher does with a batch: score it with the core the slot holds now, then log its records."""

    def __init__(self, slot: ModelSlot, prediction_log: RecordSink | None) -> None:
        self.slot = slot
        self.prediction_log = prediction_log

    def score(self, jobs: list[Job]) -> list[Scored]:
        return score_requests(self.slot.core, jobs)

    def commit(self, jobs: list[Job], results: list[Scored]) -> None:
        log_scored(self.prediction_log, jobs, results)


def create_app(
    core: ScoringCore, prediction_log: RecordSink | None, config: ServerConfig, follower: AliasFollower | None = None
) -> ASGIApp:
    """The server around a scoring core: the doors, then FastAPI; the log, when given, receives every scored image.
    With a follower (and `follow_seconds`), the core is replaced by the version the served alias moves to,
    between batches."""
    slot = ModelSlot(core)
    pipeline = ScoringPipeline(slot, prediction_log)
    stale_after_s = config.stale_after_s if config.drop_abandoned else None
    withdraw = prediction_log.withdraw if config.drop_abandoned and prediction_log is not None else None
    batcher = MicroBatcher(
        pipeline.score,
        pipeline.commit,
        config.max_batch,
        config.max_wait_ms / 1000,
        config.max_queued_images,
        stale_after_s,
        withdraw,
    )
    alias_set = asyncio.Event()  # a webhook said the alias was set: check now
    follows = follower is not None and (config.follow_seconds > 0 or config.webhook_secret is not None)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        following = asyncio.create_task(follow_alias(slot, follower, config.follow_seconds, alias_set)) if follows else None
        webhook_id = None
        if follows and config.webhook_url and config.webhook_secret:
            webhook_id = await asyncio.to_thread(subscribe, config.webhook_url, config.webhook_secret, config.follow_seconds)
        yield
        if following is not None:
            following.cancel()
        await batcher.stop()
        if prediction_log is not None:
            prediction_log.close()  # the dataset sink publishes what is staged
        if webhook_id is not None:  # last: the records come first if the registry is slow to answer
            await asyncio.to_thread(unsubscribe, webhook_id)

    app = FastAPI(title="digitdrift scoring server", lifespan=lifespan)
    app.openapi = lambda: schema_with_doors(app, config.max_images)
    add_status_routes(app, slot, batcher, config, follower, prediction_log)
    if follower is not None and config.webhook_secret is not None:
        add_webhook_route(app, follower, config.webhook_secret, alias_set)
    doors = Doors(batcher, config)
    app_with_doors = ScoringDoors(app, {"/score": doors.score, "/invocations": doors.invocations})
    if config.api_key is None:
        return app_with_doors
    # MLflow cannot send the API key; its deliveries carry their own proof (the HMAC signature)
    open_paths = OPEN_PATHS | ({WEBHOOK_PATH} if config.webhook_secret is not None else set())
    return RequireApiKey(app_with_doors, config.api_key, open_paths)


async def follow_alias(slot: ModelSlot, follower: AliasFollower, every_s: float, alias_set: asyncio.Event) -> None:
    """Check where the served alias points every `every_s` seconds (0: only when a webhook sets `alias_set`) and put
    the version it moved to in the slot; a failed check keeps the current version serving."""
    while True:
        try:
            await asyncio.wait_for(alias_set.wait(), timeout=every_s or None)
        except TimeoutError:
            pass
        alias_set.clear()
        failing_since = follower.failing_since
        try:
            moved = await asyncio.to_thread(follower.check)
        except Exception as err:  # the registry unreachable or the new version broken: keep serving the current one
            follower.failed(err)
            if failing_since is None:  # once per outage; /ready says it meanwhile
                version = slot.core.identity.version
                log.warning("could not follow %s (%s); still serving version %s", follower.source, follower.failure, version)
            continue
        if failing_since is not None:
            log.info("following %s again (checks had failed since %s)", follower.source, failing_since)
        if moved is not None:
            previous, slot.core = slot.core.identity.version, moved
            freeze_heap()  # the new version's objects, as the first version's were at start
            log.info("now serving %s version %s (was %s)", moved.identity.name, moved.identity.version, previous)


def schema_with_doors(app: FastAPI, max_images: int) -> dict:
    """FastAPI's schema of its own routes, with the two doors it does not route."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        doors = {
            "/score": {"post": {"summary": "Score", "operationId": "score", **score_openapi(max_images)}},
            "/invocations": {"post": {"summary": "Invocations", "operationId": "invocations", **invocations_openapi(max_images)}},
        }
        schema["paths"] = {**doors, **schema.get("paths", {})}
        app.openapi_schema = schema
    return app.openapi_schema


def add_status_routes(
    app: FastAPI,
    slot: ModelSlot,
    batcher: MicroBatcher,
    config: ServerConfig,
    follower: AliasFollower | None,
    prediction_log: RecordSink | None,
) -> None:
    """GET /health, /ready and /metadata."""

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        loaded = batcher.running
        answer = {"ready": loaded, "model": slot.core.identity.name, "version": slot.core.identity.version}
        if follower is not None:  # degraded following still serves: ready stays true
            answer["following"] = follower.status()
        if isinstance(prediction_log, DatasetSink):  # publishing behind still serves: staging is the durability point
            answer["publishing"] = prediction_log.status()
        return JSONResponse(answer, status_code=200 if loaded else 503)

    @app.get("/metadata")
    async def metadata() -> dict:
        return {
            "model": asdict(slot.core.identity),
            "low_confidence_threshold": slot.core.threshold,
            "limits": {key: value for key, value in asdict(config).items() if key not in ("api_key", "webhook_secret")},
            "prediction_log": str(prediction_log) if prediction_log else None,
            "stats": {  # this process's: with --workers N, each worker answers with its own
                "process_id": os.getpid(),
                "model_calls": slot.core.calls,
                "batches": batcher.batches,
                "shed": batcher.shed,
                "abandoned": batcher.abandoned,
                "stale": batcher.stale,
                "withdrawn": batcher.withdrawn,
            },
        }


def add_webhook_route(app: FastAPI, follower: AliasFollower, secret: str, alias_set: asyncio.Event) -> None:
    """POST /webhooks/mlflow: MLflow's registry webhook; a verified model_version_alias.created for the followed alias
    sets `alias_set`, which wakes the follower."""
    last_refusal_logged = [0.0]

    @app.post(WEBHOOK_PATH, include_in_schema=False)
    async def alias_webhook(request: Request) -> JSONResponse:
        try:  # the path is open (MLflow sends no API key): read no more than a delivery can be before verifying
            body = await read_capped(request, MAX_DELIVERY_BYTES)
            payload = verify_delivery(secret, request.headers, body, time.time())
        except DeliveryRefused as refused:
            if time.monotonic() - last_refusal_logged[0] > 60:  # a flood of forgeries must not flood the log
                last_refusal_logged[0] = time.monotonic()
                client = request.client.host if request.client else "?"
                log.warning("refused a webhook delivery from %s: %s (further refusals this minute not logged)", client, refused)
            return JSONResponse({"error": str(refused)}, status_code=refused.status)
        follows = moves_alias(payload, follower.name, follower.alias)
        if follows:
            alias_set.set()
        return JSONResponse({"accepted": True, "checking": follows})
