"""The labeling page: a person labels the queued images by keyboard (0-9, n: not a digit, s: skip, u: undo); every
answer goes to the label store at once, with who and when. The page needs the API key, as the scoring server does."""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.types import ASGIApp

from common.access import RequireApiKey
from common.labels import NOT_A_DIGIT, NOT_A_DIGIT_LABEL
from common.records import decompress_image
from labeling.store import AnswerError, LabelStore, parse_answer

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
OPEN_PATHS = frozenset({"/", "/health"})  # the page itself asks for the key; everything it fetches needs it
# request ids may hold "/" (any printable ASCII): the routes take the id as a path, and the image index after it


@dataclass(frozen=True)
class QueuedImage:
    """One image of the queue as the page shows it: what the model said of it and where it came from."""

    request_id: str
    image_index: int
    window: int
    stratum: str
    predicted: int
    confidence: float
    foreign_score: float | None
    cluster: int | None


def queued_images(
    queue: pd.DataFrame, records: pd.DataFrame, members: pd.DataFrame | None
) -> tuple[list[QueuedImage], dict, int]:
    """The queue's images that the log kept (the log keeps flagged images only), in queue order, with the model's
    guess and the window's cluster from a monitoring run's members; their pixels by key; how many were left out."""
    kept = records[records["image"].notna()]
    rows = queue[["request_id", "image_index", "window", "stratum"]].merge(
        kept[["request_id", "image_index", "predicted", "confidence", "foreign_score", "image"]],
        on=["request_id", "image_index"],
        how="inner",
    )
    if members is not None:
        rows = rows.merge(
            members[["request_id", "image_index", "window", "cluster"]], on=["request_id", "image_index", "window"], how="left"
        )
    else:
        rows = rows.assign(cluster=np.nan)
    images, pixels = [], {}
    for row in rows.itertuples():
        images.append(
            QueuedImage(
                request_id=str(row.request_id),
                image_index=int(row.image_index),
                window=int(row.window),
                stratum=str(row.stratum),
                predicted=int(row.predicted),
                confidence=float(row.confidence),
                foreign_score=None if pd.isna(row.foreign_score) else float(row.foreign_score),
                cluster=None if pd.isna(row.cluster) else int(row.cluster),
            )
        )
        pixels[(str(row.request_id), int(row.image_index))] = decompress_image(row.image)
    return images, pixels, len(queue) - len(rows)


def png_bytes(pixels: np.ndarray) -> bytes:
    """An image as PNG (the page enlarges it)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def shown(answer: dict | None) -> dict | None:
    """A stored answer as the page sends it back: "not_a_digit" in words."""
    if answer is None:
        return None
    label = answer["label"]
    return {**answer, "label": NOT_A_DIGIT if label == NOT_A_DIGIT_LABEL else int(label)}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(images: list[QueuedImage], pixels: dict[tuple[str, int], np.ndarray], store: LabelStore, api_key: str) -> ASGIApp:
    """The page and its API over `images`; answers go to `store`."""
    app = FastAPI(title="digitdrift labeling", docs_url=None, redoc_url=None, openapi_url=None)
    by_key = {(image.request_id, image.image_index): image for image in images}

    @app.get("/")
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/queue")
    def queue() -> dict:
        answers = store.answers()
        listed = []
        for image in images:
            answer = answers.get((image.request_id, image.image_index))
            listed.append({**asdict(image), "label": None if answer is None else shown(answer)["label"]})
        return {"images": listed, "labels_file": str(store.path)}

    @app.get("/api/images/{request_id:path}/{image_index}")
    def image(request_id: str, image_index: int) -> Response:
        if (request_id, image_index) not in pixels:
            return error(404, f"image {image_index} of request {request_id!r} is not in this queue")
        return Response(png_bytes(pixels[(request_id, image_index)]), media_type="image/png")

    @app.put("/api/labels/{request_id:path}/{image_index}")
    async def answer(request_id: str, image_index: int, request: Request) -> JSONResponse:
        queued = by_key.get((request_id, image_index))
        if queued is None:
            return error(404, f"image {image_index} of request {request_id!r} is not in this queue")
        try:
            label, who = parse_answer(await request.json())
        except AnswerError as err:
            return error(422, str(err))
        except ValueError as err:
            return error(400, f"the body is not JSON ({err})")
        previous = store.put(request_id, image_index, queued.window, label, who)
        return JSONResponse({"previous": shown(previous)})

    @app.delete("/api/labels/{request_id:path}/{image_index}")
    def take_back(request_id: str, image_index: int) -> JSONResponse:
        if (request_id, image_index) not in by_key:
            return error(404, f"image {image_index} of request {request_id!r} is not in this queue")
        return JSONResponse({"previous": shown(store.remove(request_id, image_index))})

    return RequireApiKey(app, api_key, OPEN_PATHS)
