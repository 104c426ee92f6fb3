"""The scoring doors: POST /score and /invocations as plain ASGI in front of FastAPI, each request parsed, its
images queued for the micro-batcher, and answered or refused with the status that says whose fault it was."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping

import numpy as np
from starlette.types import ASGIApp, Receive, Scope, Send

from common.access import send_json
from serving.batcher import Abandoned, MicroBatcher, Overloaded, Stale
from serving.config import ServerConfig
from serving.core import Scored
from serving.protocol import (
    BadRequest,
    HttpError,
    decode_json,
    invocations_answer,
    parse_invocations_body,
    parse_request_id,
    parse_score_body,
    parse_window,
    score_answer,
)
from serving.scoring import LogUnavailable

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


def request_meta(headers: Mapping[bytes, bytes]) -> tuple[str, int | None]:
    """The request id (X-Request-Id, else a new one) and simulated window (X-Window) a request's headers carry."""
    supplied = headers.get(b"x-request-id")
    if supplied is None:
        request_id = uuid.uuid4().hex
    else:
        request_id = parse_request_id(supplied.decode("latin-1"), "the X-Request-Id header")
    window = headers.get(b"x-window")
    return request_id, parse_window(None if window is None else window.decode("latin-1"))


class Doors:
    """The two scoring doors over one micro-batcher: parse a request, queue its images, answer or refuse."""

    def __init__(self, batcher: MicroBatcher, config: ServerConfig) -> None:
        self.batcher = batcher
        self.config = config

    async def score_images(self, images: np.ndarray, request_id: str, window: int | None, receive: Receive) -> Scored:
        """Images scored by the micro-batcher (and logged, when the server logs), or the HttpError that says why not."""
        # with the body read, the only message left is the client hanging up: a proxy that timed out on this
        # replica (stopped, stalled) and sent the request to another; then it is not logged here (not answered twice)
        hung_up, watch = (asyncio.Event(), asyncio.ensure_future(receive())) if self.config.drop_abandoned else (None, None)
        if watch is not None:
            watch.add_done_callback(lambda done: _set_if_disconnected(done, hung_up))
        try:
            async with asyncio.timeout(self.config.timeout_s):
                return await self.batcher.submit(images, request_id, window, hung_up.is_set if hung_up else None)
        except Overloaded as err:
            headers = {"retry-after": str(self.config.retry_after_s)}
            raise HttpError(f"the server is at capacity ({err}); retry later", 503, headers) from None
        except TimeoutError:
            raise HttpError(f"scoring took longer than {self.config.timeout_s} s", 504) from None
        except Abandoned as err:  # nobody reads it (uvicorn sends nothing to a closed connection); 499 as nginx logs it
            raise HttpError(str(err), 499) from None
        except Stale as err:  # a proxy still waiting retries it on another replica
            raise HttpError(str(err), 503, {"retry-after": str(self.config.retry_after_s)}) from None
        except LogUnavailable as err:  # acknowledging would promise a record the disk does not hold
            raise HttpError(str(err), 503, {"retry-after": str(self.config.retry_after_s)}) from None
        except Exception:  # logged by the batcher; the client learns only that it was our fault
            raise HttpError("the model failed to score this request", 500) from None
        finally:
            if watch is not None:
                watch.cancel()

    async def score(self, headers: Mapping[bytes, bytes], receive: Receive) -> tuple[dict, str]:
        """POST /score: Azure ML's body in, its answer out."""
        header_id, header_window = request_meta(headers)
        parsed = parse_score_body(await read_json(headers, receive, self.config.max_body_bytes), self.config.max_images)
        request_id = parsed.request_id or header_id
        window = parsed.window if parsed.window is not None else header_window
        scored = await self.score_images(parsed.images, request_id, window, receive)
        return score_answer(scored, scored.identity, request_id), request_id

    async def invocations(self, headers: Mapping[bytes, bytes], receive: Receive) -> tuple[dict, str]:
        """POST /invocations: MLflow's scoring protocol."""
        request_id, window = request_meta(headers)
        images = parse_invocations_body(await read_json(headers, receive, self.config.max_body_bytes), self.config.max_images)
        scored = await self.score_images(images, request_id, window, receive)
        return invocations_answer(scored), request_id
