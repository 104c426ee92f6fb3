"""What calls a model: LiteRT's interpreter, TensorFlow's frozen graph or pyfunc behind one signature, float32
(N, 784) images -> (probabilities (N, 10), embeddings (N, D) or None), and the check of a loaded model's output."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.images import NUM_CLASSES, PIXELS
from common.reference import EMBEDDING_LAYER
from common.settings import SERVED_GRAPH_DIR, SERVED_GRAPH_FILE


def served_graph(source: str, run_id: str | None) -> str:
    """The local path of the graph LiteRT runs (serving/model.tflite): from the version's training run, else beside
    a model folder; LoadError when there is none."""
    if run_id:
        import mlflow

        artifact = f"{SERVED_GRAPH_DIR}/{SERVED_GRAPH_FILE}"
        # absent: listed as such; present but not downloadable (the store unreachable) is an error, not a fallback
        if artifact in {entry.path for entry in mlflow.MlflowClient().list_artifacts(run_id, SERVED_GRAPH_DIR)}:
            return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact)
    else:
        candidate = Path(source).parent / SERVED_GRAPH_DIR / SERVED_GRAPH_FILE
        if candidate.is_file():
            return str(candidate)
    where = f"on its training run {run_id}" if run_id else "beside it"
    raise LoadError(
        f"{source}: no {SERVED_GRAPH_DIR}/{SERVED_GRAPH_FILE} {where} (versions trained before the LiteRT export "
        "have none): train it again, or serve it with --runtime tensorflow"
    )


def litert_call(path: str, op_threads: int = 0) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """The Keras model as its training run exported it for LiteRT (`format="litert"`: probabilities, then the
    embeddings), run by LiteRT's interpreter: one interpreter per calling thread, as one is not safe to share, each
    op on `op_threads` threads (0: LiteRT's choice)."""
    from ai_edge_litert.interpreter import Interpreter

    local = threading.local()

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not hasattr(local, "runner"):
            interpreter = Interpreter(model_path=path, num_threads=op_threads or None)
            signature = interpreter.get_signature_list()["serving_default"]
            local.runner, local.input, local.outputs = (
                interpreter.get_signature_runner(),
                signature["inputs"][0],
                signature["outputs"],
            )
        answer = local.runner(**{local.input: np.ascontiguousarray(batch, dtype=np.float32)})
        probabilities = answer[local.outputs[0]]
        return probabilities, answer[local.outputs[1]] if len(local.outputs) > 1 else None

    return run


def _traced_function(model):
    """The Keras model as one tf.function for any batch size, answering (probabilities, embeddings) when the model
    has an `embedding` layer and the probabilities alone otherwise."""
    import keras
    import tensorflow as tf

    if EMBEDDING_LAYER in [layer.name for layer in model.layers]:
        model = keras.Model(model.inputs, [model.output, model.get_layer(EMBEDDING_LAYER).output])

    @tf.function(input_signature=[tf.TensorSpec([None, model.inputs[0].shape[-1]], tf.float32)])
    def call(batch):
        return model(batch, training=False)

    return call


def traced_call(model) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """The Keras model as one traced TensorFlow graph on TensorFlow's own threads: probabilities, and the
    `embedding` layer's output when the model has one. The benchmarks' bare model (issue 16's peer).

    An eager Keras 3 call costs ~10 ms per batch on this CPU, the traced graph ~1.4 ms at batch 1.
    """
    call = _traced_function(model)

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = call(batch)
        if isinstance(outputs, (list, tuple)):
            return outputs[0].numpy(), outputs[1].numpy()
        return outputs.numpy(), None

    return run


def frozen_call(model, op_threads: int = 1) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """The traced graph with the model's weights folded in as constants, run by a TensorFlow session whose every
    op runs in the calling thread on `op_threads` threads (0: TensorFlow's choice, the machine's cores).

    What the server calls. With constant weights TensorFlow's graph optimizer folds the batch normalizations'
    arithmetic into the weights (the digits CNN runs 1 Mul and 5 AddV2 beside its 4 Conv2D, against 16 Mul, 11
    AddV2, 5 Rsqrt and 5 Sub traced), and no op waits for a thread of TensorFlow's pools, which sleep between
    requests: see bench/results/README.md for the figures.
    """
    import tensorflow as tf

    # TF2 has no public API to freeze a concrete function; TensorFlow's own converters use this one.
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(_traced_function(model).get_concrete_function())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(frozen.graph.as_graph_def(), name="")
    # A negative inter-op thread count makes the session run every op in the caller's thread.
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=-1, intra_op_parallelism_threads=op_threads)
    session = tf.compat.v1.Session(graph=graph, config=config)
    outputs = [graph.get_tensor_by_name(tensor.name) for tensor in frozen.outputs]
    run = session.make_callable(outputs, feed_list=[graph.get_tensor_by_name(frozen.inputs[0].name)])
    if len(outputs) == 2:
        return lambda batch: tuple(run(batch))
    return lambda batch: (run(batch)[0], None)


MIN_CHUNK_IMAGES = 8  # smaller chunks cost more in calls than they gain in parallel


def split_call(call: Callable[[np.ndarray], tuple], threads: int) -> Callable[[np.ndarray], tuple]:
    """`call` (a batch to a tuple of per-image arrays or None) with each batch cut into up to `threads` chunks of
    at least MIN_CHUNK_IMAGES, scored at once; the same tuple for the whole batch.

    Meant for calls that run each op on one thread (`frozen_call(model, 1)`): on these 2 cores a batch-1 call
    took 0.55 ms on one thread against 0.85 ms on TensorFlow's two (each op hands half its work to the other
    thread), and two chunks of a batch of 256 on two single-threaded calls ran at 0.93-1.16x one call on two
    threads (three runs of bench.serving). The chunks' own numpy work (the foreign score) runs in parallel too."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="model-chunk")

    def run(batch: np.ndarray) -> tuple:
        chunks = min(threads, len(batch) // MIN_CHUNK_IMAGES)
        if chunks <= 1:
            return call(batch)
        pieces = np.array_split(batch, chunks)
        others = [pool.submit(call, piece) for piece in pieces[1:]]
        outputs = [call(pieces[0])] + [other.result() for other in others]
        return tuple(None if parts[0] is None else np.concatenate(parts) for parts in zip(*outputs))

    return run


def pyfunc_call(pyfunc, signature) -> Callable[[np.ndarray], tuple[np.ndarray, None]]:
    """A pyfunc model as the core's call. A model whose signature takes one named column (Spark ML's `pixels`
    vector) gets each image's 784 grey levels in that column; any other gets the (N, 784) array."""
    import pandas as pd

    names = signature.inputs.input_names() if signature and signature.inputs else []
    column = names[0] if len(names) == 1 and isinstance(names[0], str) else None

    def run(batch: np.ndarray) -> tuple[np.ndarray, None]:
        if column is None:
            return np.asarray(pyfunc.predict(batch)), None
        rows = pd.DataFrame({column: list(batch.astype(np.float64))})
        return np.asarray(list(pyfunc.predict(rows)), dtype=np.float64), None

    return run


class LoadError(ValueError):
    """A model that cannot be served as asked; the message names it and what to do."""


class ModelOutputError(LoadError):
    """A model whose answer is not ten probabilities per image: digitdrift cannot flag or monitor it."""


def check_output(predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]], source: str) -> None:
    """One blank image through the model at load time: it must answer (1, 10) probabilities."""
    probabilities, _ = predict(np.zeros((1, PIXELS), dtype=np.float32))
    shape = np.shape(probabilities)
    if shape != (1, NUM_CLASSES):
        raise ModelOutputError(
            f"{source}: the model answers shape {shape} for one image; digitdrift serves models that answer "
            f"{NUM_CLASSES} class probabilities per image (a Spark pipeline: put them in its 'prediction' column)"
        )
