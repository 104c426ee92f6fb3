"""The labeling page, served by `python -m labeling serve` over loopback and used by keyboard in real headless Chromium."""

import os
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pandas as pd
import pytest

from common.labels import NOT_A_DIGIT_LABEL, read_labels
from common.records import PredictionRecord, compress_image
from devtools.processes import free_port, stop, wait_for_http
from labeling.__main__ import export_queue
from serving.prediction_log import PredictionLog
from tests.helpers import ChromiumPage, synthetic_digits

API_KEY = "labeling-test-key"


def write_log(path, flagged=6, clean=4):
    """A prediction log of one window: `flagged` foreign records with their image kept, `clean` ones without."""
    images, _ = synthetic_digits(flagged + clean, seed=3)
    log = PredictionLog(path)
    records = []
    for number in range(flagged + clean):
        is_flagged = number < flagged
        records.append(
            PredictionRecord(
                request_id=f"batch/{number}",  # a "/" in a request id, as clients may send
                image_index=0,
                model_name="digits-cnn",
                model_version="1",
                timestamp=f"2026-12-06T10:00:{number:02d}.000000+00:00",
                window=0,
                predicted=number % 10,
                probabilities=(0.1,) * 10,
                confidence=0.55 if is_flagged else 0.99,
                flags=("foreign",) if is_flagged else (),
                fingerprint=f"{number:016x}",
                foreign_score=4.2 if is_flagged else 0.3,
                image=compress_image(images[number]) if is_flagged else None,
            )
        )
    log.write(records)
    log.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A queue of one window (flagged images kept, clean ones not) served by the labeling page on a free port."""
    folder = tmp_path_factory.mktemp("labeling")
    write_log(folder / "predictions.db")
    queue = export_queue(str(folder / "predictions.db"), 8, 0.25, None, 0, folder / "queue.csv", None)
    members = queue[["request_id", "image_index", "window"]].assign(cluster=1)
    members.to_csv(folder / "cluster_members.csv", index=False)
    port = free_port()
    command = [sys.executable, "-m", "labeling", "serve", "--queue", str(folder / "queue.csv")]
    command += ["--prediction-log", str(folder / "predictions.db"), "--labels", str(folder / "labels.jsonl")]
    command += ["--clusters", str(folder / "cluster_members.csv"), "--port", str(port)]
    process = subprocess.Popen(
        command, env={**os.environ, "DIGITDRIFT_API_KEY": API_KEY}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process, timeout=60)
        yield {"url": f"http://127.0.0.1:{port}", "folder": folder, "queue": queue, "process": process}
    finally:
        stop(process)


def test_the_page_serves_only_kept_images_and_refuses_requests_without_the_key_or_with_bad_answers(page):
    url, queue = page["url"], page["queue"]
    assert httpx.get(f"{url}/api/queue").status_code == 401
    key = {"Authorization": f"Bearer {API_KEY}"}
    listed = httpx.get(f"{url}/api/queue", headers=key).json()["images"]
    kept = queue[queue["stratum"] != "clean"]
    assert 0 < len(kept) < len(queue), "the queue should hold flagged images (kept) and clean ones (not kept)"
    assert [image["request_id"] for image in listed] == kept["request_id"].tolist()
    assert {image["cluster"] for image in listed} == {1}
    first = listed[0]
    png = httpx.get(f"{url}/api/images/{first['request_id']}/0", headers=key)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    path = f"{url}/api/labels/{first['request_id']}/0"
    wrong = httpx.put(path, json={"label": 12, "labeled_by": "Ada"}, headers=key)
    assert wrong.status_code == 422 and "label 12" in wrong.json()["error"]
    nameless = httpx.put(path, json={"label": 3, "labeled_by": " "}, headers=key)
    assert nameless.status_code == 422 and "labeled_by" in nameless.json()["error"]
    garbled = httpx.put(path, content=b"{not json", headers={**key, "content-type": "application/json"})
    assert garbled.status_code == 400 and "not JSON" in garbled.json()["error"]
    unknown = httpx.put(f"{url}/api/labels/batch/unknown/0", json={"label": 3, "labeled_by": "Ada"}, headers=key)
    assert unknown.status_code == 404 and "batch/unknown" in unknown.json()["error"]
    assert not (page["folder"] / "labels.jsonl").exists(), "a refused answer must not write the store"
    assert page["process"].poll() is None


def test_a_person_labels_by_keyboard_and_every_answer_lands_in_the_store_with_who_and_when(page, tmp_path):
    started = datetime.now(UTC).replace(microsecond=0)
    browser = ChromiumPage(tmp_path / "profile")
    try:
        browser.open(page["url"] + "/")
        browser.evaluate("document.getElementById('key').focus()")
        browser.type_text("not-the-key")
        browser.evaluate("document.getElementById('name').focus()")
        browser.type_text("Ada Lovelace")
        browser.press("Enter")
        assert "refused" in browser.wait_for("document.getElementById('login-error').textContent")
        browser.evaluate("document.getElementById('key').value = ''; document.getElementById('key').focus()")
        browser.type_text(API_KEY)
        browser.press("Enter")
        browser.wait_for("document.getElementById('work').style.display === 'block' && document.body.dataset.pending === '0'")
        shown = browser.evaluate("document.getElementById('image').dataset.key")
        listed = httpx.get(f"{page['url']}/api/queue", headers={"Authorization": f"Bearer {API_KEY}"}).json()["images"]
        keys = [f"{image['request_id']}/{image['image_index']}" for image in listed]
        assert shown == keys[0]
        assert browser.evaluate("document.getElementById('image').naturalWidth") == 28

        # label, not a digit, skip, label; undo the label and the skip; label the skipped image
        for key in ("3", "n", "s", "7", "u", "Backspace", "5"):
            browser.press(key)
        browser.wait_for("document.body.dataset.pending === '0'")
        progress = browser.evaluate("document.getElementById('progress').textContent")
    finally:
        browser.close()

    stored = read_labels(page["folder"] / "labels.jsonl", not_a_digit=True).set_index("request_id")
    first, second, skipped, fourth = (key.rsplit("/", 1)[0] for key in keys[:4])
    assert stored.loc[first, "label"] == 3
    assert stored.loc[second, "label"] == NOT_A_DIGIT_LABEL
    assert stored.loc[skipped, "label"] == 5, "undoing the skip goes back to the skipped image"
    assert fourth not in stored.index, "undo takes the 7 back out of the store"
    assert len(stored) == 3 and progress == f"3 of {len(keys)} images answered"
    assert set(stored["labeled_by"]) == {"Ada Lovelace"}
    stamps = pd.to_datetime(stored["labeled_at"])
    assert (stamps >= started).all() and (stamps <= datetime.now(UTC)).all()
    assert set(stored["window"]) == {0}
    # what the loop and a retrain read: digits only
    assert sorted(read_labels(page["folder"] / "labels.jsonl")["label"]) == [3, 5]
