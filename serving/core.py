"""The scoring core: a loaded model turns batches of 28x28 images into predictions with flags."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from common.images import fingerprint, image_statistics, to_model_input
from common.quality import quality_causes
from common.quiet import native_stderr_filtered
from common.records import FOREIGN_FLAG, LEARNED_FLAG, LOW_CONFIDENCE_FLAG, PredictionRecord, compress_image
from common.reference import Reference, load_reference, project, scores_and_learned
from common.settings import (
    CHAMPION_ALIAS,
    LOW_CONFIDENCE_THRESHOLD,
    MODEL_NAME,
    REFERENCE_ARTIFACT_DIR,
    REFERENCE_FILE,
)
from common.stopwatch import Stopwatch
from serving.model_calls import (
    LoadError,
    check_output,
    frozen_call,
    litert_call,
    pyfunc_call,
    served_graph,
    split_call,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL_URI = f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}"
# What runs a Keras model: LiteRT's interpreter on the graph Keras exported at training time (serving/model.tflite
# on the run), which answers without TensorFlow's import, or TensorFlow's frozen graph; auto: LiteRT when the
# version has the exported graph
RUNTIMES = ("auto", "litert", "tensorflow")


@dataclass(frozen=True)
class ModelIdentity:
    """What the served model is, for records and the metadata endpoint."""

    name: str
    version: str
    alias: str | None
    source: str
    flavor: str
    signature: dict | None = None
    run_id: str | None = None
    has_reference: bool = False
    runtime: str = ""  # what runs the model: tensorflow, litert or pyfunc


@dataclass(frozen=True)
class Scored:
    """Per-image outputs of one model call."""

    predicted: np.ndarray  # int (N,)
    probabilities: np.ndarray  # float32 (N, 10)
    confidence: np.ndarray  # float (N,)
    flags: list[tuple[str, ...]]
    foreign_score: np.ndarray | None = None  # (N,) when the model has a reference
    projection: np.ndarray | None = None  # (N, 8) embedding projection when the model has one
    identity: ModelIdentity | None = None  # the model that scored them (a server may switch models between batches)

    def __getitem__(self, rows: slice) -> Scored:
        return Scored(
            self.predicted[rows],
            self.probabilities[rows],
            self.confidence[rows],
            self.flags[rows],
            None if self.foreign_score is None else self.foreign_score[rows],
            None if self.projection is None else self.projection[rows],
            self.identity,
        )


def flag_predictions(
    probabilities: np.ndarray,
    threshold: float,
    foreign_score: np.ndarray | None = None,
    foreign_threshold: float | None = None,
    projection: np.ndarray | None = None,
    causes: list[str] | None = None,
    learned: np.ndarray | None = None,
) -> Scored:
    """Class, confidence and flags: low confidence under `threshold`, foreign over `foreign_threshold`, and each
    image's data-quality cause (`common.quality`), which explains it instead of the foreign flag; an image neither
    foreign nor faulty is flagged `learned` when it is like the incident traffic the version was trained for."""
    confidence = probabilities.max(axis=1)
    flags = []
    for index, value in enumerate(confidence):
        flag = (LOW_CONFIDENCE_FLAG,) if value < threshold else ()
        cause = causes[index] if causes is not None else ""
        if cause:
            flag += (cause,)
        elif foreign_score is not None and foreign_score[index] > foreign_threshold:
            flag += (FOREIGN_FLAG,)
        elif learned is not None and learned[index]:
            flag += (LEARNED_FLAG,)
        flags.append(flag)
    return Scored(probabilities.argmax(axis=1), probabilities, confidence, flags, foreign_score, projection)


def to_records(
    scored: Scored,
    images: np.ndarray,
    identity: ModelIdentity,
    request_id: str,
    window: int | None,
    first_index: int = 0,
    now: datetime | None = None,
) -> list[PredictionRecord]:
    """One prediction record per image of a request."""
    timestamp = (now or datetime.now(UTC)).isoformat(timespec="microseconds")
    # Whole arrays to Python values in one call each (the same floats as float() of each element): per-element
    # conversion was most of the ~11 us per record the log thread spends, on the cores the model needs.
    predicted, confidence = scored.predicted.tolist(), scored.confidence.tolist()
    probabilities = scored.probabilities.tolist()
    foreign_score = [None] * len(images) if scored.foreign_score is None else scored.foreign_score.tolist()
    projection = [None] * len(images) if scored.projection is None else scored.projection.tolist()
    return [
        PredictionRecord(
            request_id=request_id,
            image_index=first_index + offset,
            model_name=identity.name,
            model_version=identity.version,
            timestamp=timestamp,
            window=window,
            predicted=predicted[offset],
            probabilities=tuple(probabilities[offset]),
            confidence=confidence[offset],
            flags=scored.flags[offset],
            fingerprint=fingerprint(images[offset]),
            foreign_score=foreign_score[offset],
            projection=None if projection[offset] is None else tuple(projection[offset]),
            image=compress_image(images[offset]) if scored.flags[offset] else None,
        )
        for offset in range(len(images))
    ]


@dataclass
class ScoringCore:
    """A model and its identity; `score` is the one way every door turns images into predictions."""

    # float32 (N, 784) -> probabilities (N, 10) and embeddings (N, D) or None
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    identity: ModelIdentity
    threshold: float = LOW_CONFIDENCE_THRESHOLD
    reference: Reference | None = None
    threads: int = 1  # chunks of a batch scored at once (`split_call`)
    calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._outputs = split_call(self._chunk_outputs, self.threads) if self.threads > 1 else self._chunk_outputs

    def score(self, images: np.ndarray) -> Scored:
        """Score uint8 (N, 28, 28) images in one model call, with foreign scores when a reference is loaded."""
        self.calls += 1
        probabilities, foreign_score, projection, causes, learned = self._outputs(images)
        if self.reference is None:
            return replace(flag_predictions(probabilities, self.threshold), identity=self.identity)
        causes = None if causes is None else causes.tolist()
        scored = flag_predictions(
            probabilities, self.threshold, foreign_score, self.reference.threshold, projection, causes, learned
        )
        return replace(scored, identity=self.identity)

    def _chunk_outputs(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Probabilities, foreign scores, projections, data-quality causes and learned marks of some images (None
        without a reference; causes None with a reference that has no quality bounds, learned None with one that
        took in no served images); the image statistics once for the score and the causes."""
        probabilities, embeddings = self.predict(to_model_input(images))
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if self.reference is None:
            return probabilities, None, None, None, None
        statistics = image_statistics(images)
        bounds = self.reference.quality_bounds
        causes = np.array(quality_causes(images, bounds, statistics), dtype=object) if len(bounds) else None
        foreign, learned = scores_and_learned(self.reference, images, embeddings, statistics)
        return probabilities, foreign, project(self.reference, embeddings), causes, learned


def load_core(
    source: str = DEFAULT_MODEL_URI,
    threshold: float = LOW_CONFIDENCE_THRESHOLD,
    name: str | None = None,
    version: str | None = None,
    reference_path: str | None = None,
    model_threads: int = 1,
    stages: dict[str, float] | None = None,
    runtime: str = "auto",
) -> ScoringCore:
    """Load a model from an MLflow model URI (models:/name@alias, runs:/...) or a local MLflow model folder.

    Keras models are called as a frozen graph (`frozen_call`; not through `model.predict`, which costs ~60 ms a
    call), each op on one thread when `model_threads` > 1; any other flavor goes through pyfunc. Either way each
    batch is cut into up to `model_threads` chunks scored at once. The monitoring
    reference comes from `reference_path`, else from the model version's run (reference/reference.npz), else
    beside a model folder. `stages`, when given, receives the seconds each step of the load took (what a cold
    start spends before the first answer). A Keras model is run by LiteRT from the graph its training run exported
    (`litert_call`; TensorFlow is never imported) with `runtime` "litert", or "auto" when the graph exists; else
    by TensorFlow.
    """
    lap = Stopwatch(stages)
    import mlflow  # heavy: imported when a model is loaded, not when the module is
    from threadpoolctl import threadpool_limits

    lap("import_mlflow")
    # numpy's BLAS threads, spinning after the foreign score's small products, slowed the next
    # TensorFlow call from 34 to 64 ms (256 images, 2 cores): one BLAS thread for this process.
    threadpool_limits(1, user_api="blas")
    identity = identify_model(source, name, version)
    lap("registry_lookup")
    # Model.load reads only the MLmodel file: get_model_info would also look the model up in the
    # tracking store, which fails for a downloaded folder served elsewhere (e.g. AZUREML_MODEL_DIR).
    model_info = mlflow.models.Model.load(source)
    signature = model_info.signature.to_dict() if model_info.signature else None
    if runtime == "litert" and "keras" not in model_info.flavors:
        raise LoadError(f"{source}: --runtime litert runs Keras models; this one's flavors are {sorted(model_info.flavors)}")
    graph = None
    if "keras" in model_info.flavors and runtime != "tensorflow":
        try:
            graph = served_graph(source, identity.run_id)
        except LoadError:
            if runtime == "litert":
                raise
            log.info("%s: no exported graph for LiteRT; TensorFlow runs it", source)
    if graph:
        predict = litert_call(graph, op_threads=1 if model_threads > 1 else 0)
        lap("model_load")
        flavor, runtime = "keras", "litert"
    elif "keras" in model_info.flavors:
        with native_stderr_filtered():
            import keras  # noqa: F401 (TensorFlow's import, timed apart from reading the model)

            lap("import_tensorflow")
            keras_model = mlflow.keras.load_model(source)
            lap("model_load")
        predict = frozen_call(keras_model, op_threads=1 if model_threads > 1 else 0)
        flavor, runtime = "keras", "tensorflow"
    else:
        with native_stderr_filtered():
            pyfunc_model = mlflow.pyfunc.load_model(source)
        lap("model_load")
        predict = pyfunc_call(pyfunc_model, model_info.signature)
        flavor = next(iter(set(model_info.flavors) - {"python_function"}), "python_function")
        runtime = "pyfunc"
    lap("graph_build")
    check_output(predict, source)
    lap("first_call")
    reference = _find_reference(source, identity.run_id, reference_path)
    lap("reference")
    identity = replace(identity, flavor=flavor, signature=signature, has_reference=reference is not None, runtime=runtime)
    log.info(
        "loaded %s version %s (%s flavor, %s) from %s in %.1f s (%s); reference: %s",
        identity.name,
        identity.version,
        flavor,
        runtime,
        source,
        lap.total,
        lap.describe(),
        "yes" if reference else "none (no foreign scores)",
    )
    return ScoringCore(predict, identity, threshold, reference, model_threads)


def freeze_heap() -> None:
    """Take everything loaded so far out of the garbage collector's full collections.

    With TensorFlow, Keras and MLflow loaded a process tracks ~620,000 objects, and a full collection walks
    them all: ~300 ms on this CPU, every so often in the middle of serving (the p99 at 64 clients was 342 ms,
    70 ms once frozen). Called again after a model swap, it thaws first, so the version swapped out is collected.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _find_reference(source: str, run_id: str | None, reference_path: str | None) -> Reference | None:
    from common.tracking import download_reference

    if reference_path:
        return load_reference(reference_path)
    if run_id:
        try:
            return load_reference(download_reference(run_id))
        except FileNotFoundError as err:
            log.warning("%s", err)
            return None
    for candidate in (Path(source) / REFERENCE_FILE, Path(source).parent / REFERENCE_ARTIFACT_DIR / REFERENCE_FILE):
        if candidate.is_file():
            return load_reference(candidate)
    return None


def identify_model(source: str, name: str | None, version: str | None) -> ModelIdentity:
    """Name, version and alias of a model source: from the registry for models:/ URIs."""
    if source.startswith("models:/"):
        from common.tracking import resolve_registered

        found = resolve_registered(source)
        return ModelIdentity(found.name, found.version, found.alias, source, "", run_id=found.run_id)
    folder_name = Path(source).name if not source.startswith("runs:/") else source
    return ModelIdentity(name or MODEL_NAME, version or f"local:{folder_name}", None, source, "")
