"""The API-key contract of the project's HTTP servers: `Authorization: Bearer <key>` on every path but the open ones."""

from __future__ import annotations

import hmac
from collections.abc import Collection, Mapping

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

API_KEY_ENV = "DIGITDRIFT_API_KEY"  # where the commands read the key by default: never a flag, so never in `ps`
WEBHOOK_SECRET_ENV = "DIGITDRIFT_WEBHOOK_SECRET"  # the secret MLflow signs a following server's webhook deliveries with


def api_key_header(api_key: str) -> dict[str, str]:
    """The header a client sends the key in."""
    return {"authorization": f"Bearer {api_key}"}


async def send_json(send: Send, status: int, content: object, headers: Mapping[str, str] | None = None) -> None:
    """An ASGI response of `content` encoded by orjson, with `headers`."""
    body = orjson.dumps(content)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequireApiKey:
    """ASGI middleware: every path but `open_paths` needs `Authorization: Bearer <key>`, checked before anything
    else about the request is looked at."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Collection[str]) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            supplied = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(supplied, self.expected):
                refusal = {"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"}
                await send_json(send, 401, refusal, {"www-authenticate": "Bearer"})
                return
        await self.app(scope, receive, send)
