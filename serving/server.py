"""The HTTP server: /score (Azure ML body), /invocations (MLflow bodies), /health, /ready, /metadata."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from common.access import RequireApiKey, send_json
from serving.batcher import Abandoned, Job, MicroBatcher, Overloaded, Stale
from serving.core import Scored, ScoringCore, freeze_heap
from serving.dataset_sink import DatasetSink
from serving.follow import AliasFollower, ModelSlot
from serving.protocol import (
    BadRequest,
    HttpError,
    decode_json,
    invocations_answer,
    invocations_openapi,
    parse_invocations_body,
    parse_request_id,
    parse_score_body,
    parse_window,
    score_answer,
    score_openapi,
)
from serving.scoring import LogUnavailable, RecordSink, log_scored, score_requests
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

# A door: the request's headers and its body's receiver in, the answer and the request id out.
Door = Callable[[Mapping[bytes, bytes], Receive], Awaitable[tuple[dict, str]]]


async def read_json(headers: Mapping[bytes, bytes], receive: Receive, max_body_bytes: int) -> object:
    """The request's JSON body; refused with 415 or 413 as soon as its type or size shows it is wrong."""
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
    if content_type != "application/json":
        raise BadRequest(f"content type {content_type or 'none'!r} is not supported; send application/json", 415)
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise BadRequest(f"the body has {int(declared)} bytes; the limit is {max_body_bytes}", 413)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client closed the connection before the body was complete")
        body += message.get("body", b"")
        if len(body) > max_body_bytes:
            raise BadRequest(f"the body exceeds the limit of {max_body_bytes} bytes", 413)
        if not message.get("more_body", False):
            return decode_json(bytes(body))


def _set_if_disconnected(watch: asyncio.Future, hung_up: asyncio.Event) -> None:
    """The watch on a request's `receive()` ended: set `hung_up` only if the client went away (not when the watch was
    cancelled because the request ended, nor when it failed)."""
    if not watch.cancelled() and watch.exception() is None and watch.result().get("type") == "http.disconnect":
        hung_up.set()


class ScoringDoors:
    """POST /score and /invocations as plain ASGI in front of FastAPI, which serves every other path (and
    describes these two in its OpenAPI schema).

    The doors are the hot path: FastAPI's routing, middleware, request and response objects cost a sixth of the
    throughput at 64 clients of single images (a prototype of these doors: 1,990 against 1,690 requests/s, alternating runs).
    """

    def __init__(self, app: ASGIApp, doors: Mapping[str, Door]) -> None:
        self.app = app
        self.doors = doors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        door = self.doors.get(scope["path"]) if scope["type"] == "http" else None
        if door is None:
            await self.app(scope, receive, send)
            return
        try:
            if scope["method"] != "POST":
                raise HttpError(f"{scope['method']} is not allowed on {scope['path']}; send POST", 405, {"allow": "POST"})
            answer, request_id = await door(dict(scope["headers"]), receive)
        except HttpError as err:
            await send_json(send, err.status, {"error": str(err)}, err.headers)
            return
        await send_json(send, 200, answer, {"x-request-id": request_id})


@dataclass(frozen=True)
class ServerConfig:
    """Limits and batching of the server; each has a command-line flag."""

    max_batch: int = 256  # images per model call when micro-batching
    # How long the first request of a batch waits for company. 0: batch what queued while the model
    # was busy, which at concurrency 8 beat 2 ms (1,097 vs 928 requests/s) and halves latency at concurrency 1.
    max_wait_ms: float = 0.0
    max_images: int = 1024  # images per request
    max_body_bytes: int = 16 * 2**20
    timeout_s: float = 30.0  # scoring timeout per request
    # Images waiting for the model beyond which requests are shed with 503 and Retry-After; None: no bound
    max_queued_images: int | None = 4096
    retry_after_s: int = 1
    api_key: str | None = None  # when set, requests need `Authorization: Bearer <key>`
    follow_seconds: float = 0.0  # with a follower: how often to check where the served alias points; 0: never
    # with a follower: the URL of this server's /webhooks/mlflow, registered with the tracking server while it runs;
    # MLflow's deliveries there, signed with the secret, make the follower check at once
    webhook_url: str | None = None
    webhook_secret: str | None = None
    # behind a proxy that times out and retries on another replica: refuse (and do not log) a request whose client
    # hung up before its records were committed, or that waited more than stale_after_s, so that only the replica
    # that answered logs it. Off by default: watching each request for the hang-up costs a task per request
    drop_abandoned: bool = False
    stale_after_s: float = 5.0  # with drop_abandoned: under the proxy's server timeout (HAProxy's 10 s on the stack)


def create_app(
    core: ScoringCore, prediction_log: RecordSink | None, config: ServerConfig, follower: AliasFollower | None = None
) -> ASGIApp:
    """The server around a scoring core: the doors, then FastAPI; the log, when given, receives every scored image.
    With a follower (and `follow_seconds`), the core is replaced by the version the served alias moves to,
    between batches."""
    slot = ModelSlot(core)

    def score(jobs: list[Job]) -> list[Scored]:
        return score_requests(slot.core, jobs)

    def commit(jobs: list[Job], results: list[Scored]) -> None:
        log_scored(prediction_log, jobs, results)

    stale_after_s = config.stale_after_s if config.drop_abandoned else None
    withdraw = prediction_log.withdraw if config.drop_abandoned and prediction_log is not None else None
    batcher = MicroBatcher(
        score, commit, config.max_batch, config.max_wait_ms / 1000, config.max_queued_images, stale_after_s, withdraw
    )

    alias_set = asyncio.Event()  # a webhook said the alias was set: check now

    async def follow() -> None:
        while True:
            try:
                await asyncio.wait_for(alias_set.wait(), timeout=config.follow_seconds or None)
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

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        follows = follower is not None and (config.follow_seconds > 0 or config.webhook_secret is not None)
        following = asyncio.create_task(follow()) if follows else None
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

    def openapi() -> dict:
        """FastAPI's schema of its own routes, with the two doors it does not route."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            doors = {
                "/score": {"post": {"summary": "Score", "operationId": "score", **score_openapi(config.max_images)}},
                "/invocations": {
                    "post": {"summary": "Invocations", "operationId": "invocations", **invocations_openapi(config.max_images)}
                },
            }
            schema["paths"] = {**doors, **schema.get("paths", {})}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    async def score_images(images: np.ndarray, request_id: str, window: int | None, receive: Receive) -> Scored:
        # with the body read, the only message left is the client hanging up: a proxy that timed out on this
        # replica (stopped, stalled) and sent the request to another; then it is not logged here (not answered twice)
        hung_up, watch = (asyncio.Event(), asyncio.ensure_future(receive())) if config.drop_abandoned else (None, None)
        if watch is not None:
            watch.add_done_callback(lambda done: _set_if_disconnected(done, hung_up))
        try:
            async with asyncio.timeout(config.timeout_s):
                return await batcher.submit(images, request_id, window, hung_up.is_set if hung_up else None)
        except Overloaded as err:
            headers = {"retry-after": str(config.retry_after_s)}
            raise HttpError(f"the server is at capacity ({err}); retry later", 503, headers) from None
        except TimeoutError:
            raise HttpError(f"scoring took longer than {config.timeout_s} s", 504) from None
        except Abandoned as err:  # nobody reads it (uvicorn sends nothing to a closed connection); 499 as nginx logs it
            raise HttpError(str(err), 499) from None
        except Stale as err:  # a proxy still waiting retries it on another replica
            raise HttpError(str(err), 503, {"retry-after": str(config.retry_after_s)}) from None
        except LogUnavailable as err:  # acknowledging would promise a record the disk does not hold
            raise HttpError(str(err), 503, {"retry-after": str(config.retry_after_s)}) from None
        except Exception:  # logged by the batcher; the client learns only that it was our fault
            raise HttpError("the model failed to score this request", 500) from None
        finally:
            if watch is not None:
                watch.cancel()

    def request_meta(headers: Mapping[bytes, bytes]) -> tuple[str, int | None]:
        supplied = headers.get(b"x-request-id")
        if supplied is None:
            request_id = uuid.uuid4().hex
        else:
            request_id = parse_request_id(supplied.decode("latin-1"), "the X-Request-Id header")
        window = headers.get(b"x-window")
        return request_id, parse_window(None if window is None else window.decode("latin-1"))

    async def score(headers: Mapping[bytes, bytes], receive: Receive) -> tuple[dict, str]:
        header_id, header_window = request_meta(headers)
        parsed = parse_score_body(await read_json(headers, receive, config.max_body_bytes), config.max_images)
        request_id = parsed.request_id or header_id
        window = parsed.window if parsed.window is not None else header_window
        scored = await score_images(parsed.images, request_id, window, receive)
        return score_answer(scored, scored.identity, request_id), request_id

    async def invocations(headers: Mapping[bytes, bytes], receive: Receive) -> tuple[dict, str]:
        request_id, window = request_meta(headers)
        images = parse_invocations_body(await read_json(headers, receive, config.max_body_bytes), config.max_images)
        scored = await score_images(images, request_id, window, receive)
        return invocations_answer(scored), request_id

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

    if follower is not None and config.webhook_secret is not None:
        last_refusal_logged = [0.0]

        @app.post(WEBHOOK_PATH, include_in_schema=False)
        async def alias_webhook(request: Request) -> JSONResponse:
            """MLflow's registry webhook: a verified model_version_alias.created for the followed alias wakes the follower."""
            try:  # the path is open (MLflow sends no API key): read no more than a delivery can be before verifying
                body = await read_capped(request, MAX_DELIVERY_BYTES)
                payload = verify_delivery(config.webhook_secret, request.headers, body, time.time())
            except DeliveryRefused as refused:
                if time.monotonic() - last_refusal_logged[0] > 60:  # a flood of forgeries must not flood the log
                    last_refusal_logged[0] = time.monotonic()
                    client = request.client.host if request.client else "?"
                    log.warning(
                        "refused a webhook delivery from %s: %s (further refusals this minute not logged)", client, refused
                    )
                return JSONResponse({"error": str(refused)}, status_code=refused.status)
            follows = moves_alias(payload, follower.name, follower.alias)
            if follows:
                alias_set.set()
            return JSONResponse({"accepted": True, "checking": follows})

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

    doors = ScoringDoors(app, {"/score": score, "/invocations": invocations})
    if config.api_key is None:
        return doors
    # MLflow cannot send the API key; its deliveries carry their own proof (the HMAC signature)
    open_paths = OPEN_PATHS | ({WEBHOOK_PATH} if config.webhook_secret is not None else set())
    return RequireApiKey(doors, config.api_key, open_paths)
