"""The scoring server's limits, batching, access and following: one setting per command-line flag."""

from __future__ import annotations

from dataclasses import dataclass

from common.cli import option


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Limits and batching of the server; each has a command-line flag but the Retry-After seconds (the API key and the
    webhook's secret are read from environment variables that flags name)."""

    max_batch: int = option(256, "images per model call when batching")
    # How long the first request of a batch waits for company. 0: batch what queued while the model
    # was busy, which at concurrency 8 beat 2 ms (1,097 vs 928 requests/s) and halves latency at concurrency 1.
    max_wait_ms: float = option(0.0, "how long a batch waits for company; 0 batches what queued meanwhile")
    max_images: int = option(1024, "images per request; more is a 413")
    max_body_bytes: int = option(16 * 2**20, "request body size; more is a 413")
    timeout_s: float = option(30.0, "scoring time per request; more is a 504")
    max_queued_images: int | None = option(
        4096, "images waiting for the model beyond which requests get 503 with Retry-After; 0: no bound"
    )  # None in the config: no bound
    retry_after_s: int = 1
    api_key: str | None = None  # when set, requests need `Authorization: Bearer <key>`
    follow_seconds: float = option(
        0.0,
        "with --model models:/<name>@<alias>: check this often where the alias points and switch to that version (with "
        "its reference) without a restart; 0: never",
    )
    # MLflow's deliveries to this server's /webhooks/mlflow, signed with the secret, make the follower check at once
    webhook_url: str | None = option(
        None,
        "with --model models:/<name>@<alias>: where the tracking server reaches this server's /webhooks/mlflow; "
        "registers an MLflow registry webhook so that an alias set is followed at once (a SQL-backed tracking server; "
        "--follow-seconds stays the fallback); the secret that signs deliveries is read from --webhook-secret-env",
        metavar="URL",
    )
    webhook_secret: str | None = None
    # Off by default: watching each request for the hang-up costs a task per request
    drop_abandoned: bool = option(
        False,
        "refuse and do not log a request whose client hung up before its records were committed, or that waited more "
        "than --stale-after-s (behind a proxy that retries a timed-out request on another replica, so that only the "
        "replica that answered logs it)",
    )
    stale_after_s: float = option(
        5.0,
        "with --drop-abandoned: seconds a request may wait before its commit; under the proxy's server timeout "
        "(HAProxy's 10 s on the stack)",
    )
