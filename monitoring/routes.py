"""Where incident notices go: a signed webhook, a Slack-compatible incoming webhook, e-mail over SMTP.

Each route is tried a few times; one that still fails is reported and never stops the monitoring run. Secrets
(the webhook's signing key, SMTP passwords) come from environment variables the policy file names, never from
the file itself.

A signed webhook's body carries a header `X-Digitdrift-Signature: t=<unix seconds>,v1=<hex>`, where v1 is the
HMAC-SHA256 of "<t>.<body>" under the secret: a receiver recomputes it (`verify_signature`) and refuses a stale
`t`, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import smtplib
import time
from dataclasses import dataclass, field
from email.message import EmailMessage

import httpx
from tenacity import Retrying, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Digitdrift-Signature"
ROUTE_KINDS = ("webhook", "slack", "email")


class RouteError(ValueError):
    """A route that cannot be used as configured; the message names it and what is missing."""


@dataclass(frozen=True)
class Route:
    """One destination for incident notices, as the policy file's `routes` section declares it."""

    name: str
    kind: str  # webhook, slack or email
    url: str = ""  # webhook and slack
    secret_env: str = ""  # webhook: the variable holding the signing secret ('' sends unsigned)
    smtp_host: str = ""
    smtp_port: int = 25
    sender: str = ""
    recipients: tuple[str, ...] = field(default=())
    username_env: str = ""
    password_env: str = ""
    starttls: bool = False


@dataclass(frozen=True)
class Delivery:
    """What became of one notice on one route."""

    route: str
    incident: int
    event: str
    delivered: bool
    error: str = ""


def signature(body: bytes, secret: str, timestamp: int) -> str:
    """The signature header's value for `body` signed at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(body: bytes, header: str, secret: str, now: float, tolerance_s: float = 300) -> bool:
    """Whether `header` signs `body` with `secret` and was made within `tolerance_s` of `now` (no replay)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature(body, secret, timestamp), header)


def notice_text(notice: dict) -> str:
    """One line a person reads: which incident, what happened, which rules, when."""
    when = f"{notice['window_start']} to {notice['window_end']}" if notice.get("window_start") else f"window {notice['window']}"
    return (
        f"[{notice['severity']}] digitdrift incident {notice['event']} on {notice['model_name']} "
        f"v{notice['model_version']} ({notice['traffic']}): {', '.join(notice['rules'])}, {when}"
    )


def slack_body(notice: dict) -> dict:
    """A Slack incoming-webhook message (`text` for notifications, one section block for the channel)."""
    text = notice_text(notice)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def _send(route: Route, notice: dict, environ: dict, client: httpx.Client) -> None:
    if route.kind == "webhook":
        body = json.dumps({"source": "digitdrift", **notice}).encode()
        headers = {"content-type": "application/json"}
        if route.secret_env:
            secret = environ.get(route.secret_env)
            if not secret:
                raise RouteError(f"route {route.name}: the signing secret's variable {route.secret_env} is not set")
            headers[SIGNATURE_HEADER] = signature(body, secret, int(time.time()))
        client.post(route.url, content=body, headers=headers).raise_for_status()
    elif route.kind == "slack":
        client.post(route.url, json=slack_body(notice)).raise_for_status()
    else:
        message = EmailMessage()
        message["Subject"] = notice_text(notice)
        message["From"] = route.sender
        message["To"] = ", ".join(route.recipients)
        message.set_content(json.dumps(notice, indent=2))
        with smtplib.SMTP(route.smtp_host, route.smtp_port, timeout=10) as smtp:
            if route.starttls:
                smtp.starttls()
            if route.username_env:
                smtp.login(environ.get(route.username_env, ""), environ.get(route.password_env, ""))
            smtp.send_message(message)


def deliver(
    notices: list[dict], routes: dict[str, Route], wanted: dict[str, tuple[str, ...]], attempts: int = 3, backoff_s: float = 0.2
) -> list[Delivery]:
    """Send each notice to the routes its rules name (`wanted`: rule -> route names), each route tried `attempts`
    times; every outcome is returned, failures logged, nothing raised."""
    environ = dict(os.environ)
    deliveries = []
    with httpx.Client(timeout=10) as client:
        for notice in notices:
            names = dict.fromkeys(name for rule in notice["rules"] for name in wanted.get(rule, ()))
            for name in names:
                route = routes[name]
                try:
                    for attempt in Retrying(
                        stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=backoff_s, max=5), reraise=True
                    ):
                        with attempt:
                            _send(route, notice, environ, client)
                    deliveries.append(Delivery(name, notice["incident"], notice["event"], True))
                except (httpx.HTTPError, OSError, smtplib.SMTPException, RouteError) as err:
                    reason = f"{type(err).__name__}: {err}"[:300]
                    log.warning("route %s: incident %s %s not delivered: %s", name, notice["incident"], notice["event"], reason)
                    deliveries.append(Delivery(name, notice["incident"], notice["event"], False, reason))
    return deliveries
