"""MLflow registry webhooks for a following server: the alias moved, so check now rather than at the next poll.

MLflow signs each delivery (HMAC-SHA256 over "<delivery id>.<timestamp>.<body>" with the webhook's secret, sent as
"v1,<base64>" in X-MLflow-Signature); a delivery that does not verify, or is older than the tolerance, is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping

from starlette.requests import Request

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/mlflow"
ALIAS_EVENT = "model_version_alias.created"  # MLflow sends it whenever an alias is set, moved or not
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER = "x-mlflow-signature", "x-mlflow-timestamp", "x-mlflow-delivery-id"
TOLERANCE_S = 300  # MLflow's own guidance for replay protection: refuse deliveries older than five minutes
MAX_DELIVERY_BYTES = 64 * 1024  # an alias event is a few hundred bytes


class DeliveryRefused(ValueError):
    """A delivery that is not MLflow's, or not fresh; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The X-MLflow-Signature a delivery of `body` carries: "v1," and the base64 of HMAC-SHA256."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()


async def read_capped(request: Request, limit: int) -> bytes:
    """A request's body, refused (413) as soon as it is declared or found to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise DeliveryRefused(f"a delivery of {declared} bytes exceeds the limit of {limit}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise DeliveryRefused(f"the delivery exceeds the limit of {limit} bytes", 413)
    return bytes(body)


def verify_delivery(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> dict:
    """The delivery's JSON payload once its signature and timestamp verify; DeliveryRefused otherwise."""
    supplied = headers.get(SIGNATURE_HEADER, "")
    delivery_id, timestamp = headers.get(DELIVERY_HEADER, ""), headers.get(TIMESTAMP_HEADER, "")
    if not (supplied and delivery_id and timestamp):
        raise DeliveryRefused("not an MLflow webhook delivery: X-MLflow-Signature, -Timestamp and -Delivery-Id are needed", 401)
    if not hmac.compare_digest(supplied.encode(), signature(secret, delivery_id, timestamp, body).encode()):
        raise DeliveryRefused("the X-MLflow-Signature does not verify with this server's webhook secret", 401)
    if not timestamp.isdigit() or abs(now - int(timestamp)) > TOLERANCE_S:
        raise DeliveryRefused(f"X-MLflow-Timestamp {timestamp!r} is not within {TOLERANCE_S} s of now", 401)
    try:
        payload = json.loads(body)
    except ValueError:
        raise DeliveryRefused("the delivery's body is not JSON", 400) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise DeliveryRefused('expected {"entity": ..., "action": ..., "data": {...}}', 400)
    return payload


def moves_alias(payload: dict, name: str, alias: str) -> bool:
    """Whether a verified delivery says that `name@alias` was set."""
    event = f"{payload.get('entity')}.{payload.get('action')}"
    data = payload["data"]
    return event == ALIAS_EVENT and data.get("name") == name and data.get("alias") == alias


def subscribe(url: str, secret: str, follow_seconds: float) -> str | None:
    """Register this server's webhook for alias changes; None when the tracking server will not take it (a file
    store, a URL it refuses): then polling alone follows, as the warning says."""
    from mlflow.exceptions import MlflowException

    try:
        webhook_id = register_webhook(url, secret)
    except (MlflowException, OSError, NotImplementedError) as err:  # a file store has no webhooks at all
        fallback = f"polling every {follow_seconds} s" if follow_seconds > 0 else "nothing: the alias is not followed"
        log.warning(
            "the tracking server took no webhook for %s (%s); following by %s",
            url,
            (str(err).splitlines() or [type(err).__name__])[0],
            fallback,
        )
        return None
    log.info("MLflow webhook %s tells %s of every alias set", webhook_id, url)
    return webhook_id


def unsubscribe(webhook_id: str) -> None:
    """Delete this server's webhook as it stops; one left behind (the registry was down) is replaced at the next start."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().delete_webhook(webhook_id)
    except (MlflowException, OSError, NotImplementedError) as err:
        log.warning("could not delete MLflow webhook %s (%s)", webhook_id, (str(err).splitlines() or [type(err).__name__])[0])


def register_webhook(url: str, secret: str) -> str:
    """Ask the tracking server to tell `url` of every alias set; the webhook's id. One per URL: an older one for
    the same URL (left by a replica that was killed) is replaced."""
    import mlflow

    client = mlflow.MlflowClient()
    name = f"digitdrift-follower-{hashlib.sha256(url.encode()).hexdigest()[:12]}"
    page_token = None
    while True:
        page = client.list_webhooks(page_token=page_token)
        for webhook in page:
            if webhook.name == name:
                client.delete_webhook(webhook.webhook_id)
        if not page.token:
            break
        page_token = page.token
    description = f"a digitdrift server at {url} follows an alias"
    return client.create_webhook(name=name, url=url, events=[ALIAS_EVENT], secret=secret, description=description).webhook_id
