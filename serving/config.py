"""The scoring server's limits, batching, access and following: one setting per command-line flag."""

from __future__ import annotations

from dataclasses import dataclass


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
