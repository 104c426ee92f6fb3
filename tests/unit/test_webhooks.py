"""Registry webhooks: deliveries signed as MLflow signs them verify; forged, stale or garbled ones are refused."""

import json

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from serving.webhooks import DeliveryRefused, moves_alias, verify_delivery

NOW = 1_796_000_000


def delivery(data, secret="hush", stamp=NOW, entity="model_version_alias", action="created"):
    body = json.dumps({"entity": entity, "action": action, "timestamp": "2026-12-06T12:00:00+00:00", "data": data})
    headers = {
        "x-mlflow-delivery-id": "d-1",
        "x-mlflow-timestamp": str(stamp),
        "x-mlflow-signature": _generate_hmac_signature(secret, "d-1", str(stamp), body),  # MLflow's own signer
    }
    return headers, body.encode()


def test_a_delivery_signed_as_mlflow_signs_it_verifies_and_names_the_alias_it_moved():
    headers, body = delivery({"name": "digits-cnn", "alias": "champion", "version": "3"})
    payload = verify_delivery("hush", headers, body, NOW + 2)
    assert payload["data"]["version"] == "3"
    assert moves_alias(payload, "digits-cnn", "champion")
    assert not moves_alias(payload, "digits-cnn", "challenger") and not moves_alias(payload, "other", "champion")
    deleted = verify_delivery("hush", *delivery({"name": "digits-cnn", "alias": "champion"}, action="deleted"), NOW)
    assert not moves_alias(deleted, "digits-cnn", "champion")


@pytest.mark.parametrize(
    ("change", "message", "status"),
    [
        (lambda headers, body: ({**headers, "x-mlflow-signature": "v1,AAAA"}, body), "does not verify", 401),
        (lambda headers, body: (headers, body.replace(b'"3"', b'"4"')), "does not verify", 401),
        (lambda headers, body: ({k: v for k, v in headers.items() if k != "x-mlflow-signature"}, body), "not an MLflow", 401),
    ],
)
def test_a_forged_or_altered_delivery_is_refused(change, message, status):
    headers, body = change(*delivery({"name": "digits-cnn", "alias": "champion", "version": "3"}))
    with pytest.raises(DeliveryRefused, match=message) as refused:
        verify_delivery("hush", headers, body, NOW)
    assert refused.value.status == status


def test_a_replayed_delivery_older_than_five_minutes_is_refused():
    headers, body = delivery({"name": "digits-cnn", "alias": "champion", "version": "3"}, stamp=NOW - 301)
    with pytest.raises(DeliveryRefused, match="not within 300 s"):
        verify_delivery("hush", headers, body, NOW)


def test_a_signed_body_that_is_not_a_webhook_payload_is_a_bad_request():
    headers = {"x-mlflow-delivery-id": "d-1", "x-mlflow-timestamp": str(NOW)}
    for body in (b"{oops", b"[1, 2]"):
        signed = {**headers, "x-mlflow-signature": _generate_hmac_signature("hush", "d-1", str(NOW), body.decode())}
        with pytest.raises(DeliveryRefused) as refused:
            verify_delivery("hush", signed, body, NOW)
        assert refused.value.status == 400


def test_a_delivery_over_the_cap_is_refused_before_it_is_read_whole():
    import asyncio

    from starlette.requests import Request

    from serving.webhooks import read_capped

    def request(body: bytes, declared: bool) -> Request:
        chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)] or [b""]
        messages = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)]

        async def receive():
            return messages.pop(0)

        headers = [(b"content-length", str(len(body)).encode())] if declared else []
        return Request({"type": "http", "method": "POST", "path": "/webhooks/mlflow", "headers": headers}, receive)

    assert asyncio.run(read_capped(request(b"x" * 500, declared=True), 1024)) == b"x" * 500
    for declared in (True, False):  # refused by its declared length, or while it streams in
        with pytest.raises(DeliveryRefused, match="exceeds the limit of 1024") as refused:
            asyncio.run(read_capped(request(b"x" * 5000, declared), 1024))
        assert refused.value.status == 413


def test_a_tracking_store_without_webhooks_leaves_the_server_polling(tmp_path, caplog):
    import mlflow

    from serving.webhooks import subscribe

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tmp_path.as_uri())  # a file store: MLflow has no webhooks there
    try:
        with caplog.at_level("WARNING", logger="serving.webhooks"):
            assert subscribe("http://127.0.0.1:9/webhooks/mlflow", "hush", 5.0) is None
    finally:
        mlflow.set_tracking_uri(previous)
    assert "following by polling every 5.0 s" in caplog.text
