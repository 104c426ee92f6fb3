"""The HTTP server: /score (Azure ML body), /invocations (MLflow bodies), /health, /ready, /metadata."""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import numpy as np
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.batcher import Job, MicroBatcher, Overloaded
from serving.core import Scored, ScoringCore, freeze_heap
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
from serving.scoring import RecordSink, log_scored, score_requests

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready"})  # what a load balancer probes; everything else needs the key


class JsonResponse(Response):
    """JSON encoded by orjson. FastAPI deprecated its ORJSONResponse in favour of response models, which would
    pass every answer through pydantic; the answers here are built by serving.protocol already."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


class RequireApiKey:
    """ASGI middleware: every path but /health and /ready needs `Authorization: Bearer <key>`, checked before
    anything else about the request is looked at."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            supplied = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(supplied, self.expected):
                refusal = JsonResponse(
                    {"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                    status_code=401,
                    headers={"www-authenticate": "Bearer"},
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


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


def create_app(
    core: ScoringCore, prediction_log: RecordSink | None, config: ServerConfig, follower: AliasFollower | None = None
) -> FastAPI:
    """The FastAPI app around a scoring core; the log, when given, receives every scored image. With a follower
    (and `follow_seconds`), the core is replaced by the version the served alias moves to, between batches."""
    slot = ModelSlot(core)

    def score(jobs: list[Job]) -> list[Scored]:
        return score_requests(slot.core, jobs)

    def commit(jobs: list[Job], results: list[Scored]) -> None:
        log_scored(prediction_log, jobs, results)

    batcher = MicroBatcher(score, commit, config.max_batch, config.max_wait_ms / 1000, config.max_queued_images)

    async def follow() -> None:
        while True:
            await asyncio.sleep(config.follow_seconds)
            try:
                moved = await asyncio.to_thread(follower.check)
            except Exception:  # the registry unreachable or the new version broken: keep serving the current one
                log.exception("could not follow %s; still serving version %s", follower.source, slot.core.identity.version)
                continue
            if moved is not None:
                previous, slot.core = slot.core.identity.version, moved
                freeze_heap()  # the new version's objects, as the first version's were at start
                log.info("now serving %s version %s (was %s)", moved.identity.name, moved.identity.version, previous)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        following = asyncio.create_task(follow()) if follower is not None and config.follow_seconds > 0 else None
        yield
        if following is not None:
            following.cancel()
        await batcher.stop()
        if prediction_log is not None:
            prediction_log.close()  # the dataset sink publishes what is staged

    app = FastAPI(title="digitdrift scoring server", lifespan=lifespan)
    app.state.batcher = batcher
    if config.api_key is not None:
        app.add_middleware(RequireApiKey, api_key=config.api_key)

    @app.exception_handler(HttpError)
    async def http_error(_: Request, err: HttpError) -> JsonResponse:
        return JsonResponse({"error": str(err)}, status_code=err.status, headers=err.headers)

    async def read_json(request: Request) -> object:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise BadRequest(f"content type {content_type or 'none'!r} is not supported; send application/json", 415)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise BadRequest(f"the body has {declared} bytes; the limit is {config.max_body_bytes}", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise BadRequest(f"the body exceeds the limit of {config.max_body_bytes} bytes", 413)
        return decode_json(bytes(body))

    async def score_images(images: np.ndarray, request_id: str, window: int | None) -> Scored:
        try:
            async with asyncio.timeout(config.timeout_s):
                return await batcher.submit(images, request_id, window)
        except Overloaded as err:
            headers = {"retry-after": str(config.retry_after_s)}
            raise HttpError(f"the server is at capacity ({err}); retry later", 503, headers) from None
        except TimeoutError:
            raise HttpError(f"scoring took longer than {config.timeout_s} s", 504) from None
        except Exception:  # logged by the batcher; the client learns only that it was our fault
            raise HttpError("the model failed to score this request", 500) from None

    def request_meta(request: Request) -> tuple[str, int | None]:
        supplied = request.headers.get("x-request-id")
        request_id = uuid.uuid4().hex if supplied is None else parse_request_id(supplied, "the X-Request-Id header")
        return request_id, parse_window(request.headers.get("x-window"))

    @app.post("/score", openapi_extra=score_openapi(config.max_images))
    async def score(request: Request) -> JsonResponse:
        header_id, header_window = request_meta(request)
        parsed = parse_score_body(await read_json(request), config.max_images)
        request_id = parsed.request_id or header_id
        window = parsed.window if parsed.window is not None else header_window
        scored = await score_images(parsed.images, request_id, window)
        return JsonResponse(score_answer(scored, scored.identity, request_id), headers={"x-request-id": request_id})

    @app.post("/invocations", openapi_extra=invocations_openapi(config.max_images))
    async def invocations(request: Request) -> JsonResponse:
        request_id, window = request_meta(request)
        images = parse_invocations_body(await read_json(request), config.max_images)
        scored = await score_images(images, request_id, window)
        return JsonResponse(invocations_answer(scored), headers={"x-request-id": request_id})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JsonResponse:
        loaded = batcher.running
        return JsonResponse(
            {"ready": loaded, "model": slot.core.identity.name, "version": slot.core.identity.version},
            status_code=200 if loaded else 503,
        )

    @app.get("/metadata")
    async def metadata() -> dict:
        return {
            "model": asdict(slot.core.identity),
            "low_confidence_threshold": slot.core.threshold,
            "limits": {key: value for key, value in asdict(config).items() if key != "api_key"},
            "prediction_log": str(prediction_log) if prediction_log else None,
            "stats": {"model_calls": slot.core.calls, "batches": batcher.batches, "shed": batcher.shed},
        }

    return app
