"""Same answer from every door, for digits-cnn (Keras) and digits-spark (Spark ML through pyfunc):
score.run(), our /score and /invocations, `mlflow models serve`, azmlinfsrv."""

import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest

from common.datasets import Digits, load_source
from devtools.processes import free_port, running
from tests.helpers import VENV_BIN, serving_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(shared_data):
    """Real digits from every source: what production sends."""
    parts = [load_source(source, shared_data, limit_per_class=1).images[:10] for source in ("mnist", "devanagari", "japanese")]
    return np.concatenate(parts)


@dataclass(frozen=True)
class Served:
    """A registered model under test: where it is, the body column its signature names, and its own answer."""

    uri: str
    folder: Path
    tracking_uri: str
    column: str | None  # None: 784 pixel columns (Keras); "pixels": one column of 784 values (Spark ML)
    trained_probabilities: Callable[[np.ndarray], np.ndarray]
    mlflow_serve_formats: tuple[str, ...] = ("dataframe_split", "dataframe_records", "instances", "inputs")


@pytest.fixture(scope="module", params=["digits-cnn", "digits-spark"])
def served(request):
    if request.param == "digits-cnn":
        champion = request.getfixturevalue("champion")
        return Served(
            champion.uri,
            champion.folder,
            champion.tracking_uri,
            None,
            lambda images: champion.keras_model.predict(images.reshape(len(images), 784).astype("float32"), verbose=0),
        )
    from training.spark_job import pixels_frame, probabilities_of

    spark, model = request.getfixturevalue("spark"), request.getfixturevalue("spark_model")

    def trained_probabilities(images):
        digits = Digits(images, np.zeros(len(images), dtype=np.int64), "test")
        return probabilities_of(model.pipeline, spark.createDataFrame(pixels_frame(digits)))[0]

    # `mlflow models serve` turns instances/inputs bodies into a dict of arrays, which MLflow's Spark pyfunc
    # cannot score (400 "Failed to predict data"): for digits-spark it takes the two dataframe bodies.
    return Served(
        model.uri, model.folder, model.tracking_uri, "pixels", trained_probabilities, ("dataframe_split", "dataframe_records")
    )


def mlflow_bodies(images, column=None):
    """The four bodies of MLflow's scoring protocol, in the columns the model's signature names."""
    flat = images.reshape(len(images), 784).tolist()
    if column:  # a Spark ML vector holds doubles; MLflow's schema check refuses JSON integers for it
        flat = images.reshape(len(images), 784).astype(float).tolist()
        return {
            "dataframe_split": {"dataframe_split": {"columns": [column], "data": [[row] for row in flat]}},
            "dataframe_records": {"dataframe_records": [{column: row} for row in flat]},
            "instances": {"instances": [{column: row} for row in flat]},
            "inputs": {"inputs": {column: flat}},
        }
    columns = [f"pixel_{i}" for i in range(784)]
    return {
        "dataframe_split": {"dataframe_split": {"columns": columns, "data": flat}},
        "dataframe_records": {"dataframe_records": [dict(zip(columns, row)) for row in flat]},
        "instances": {"instances": flat},
        "inputs": {"inputs": flat},
    }


def probabilities_from(answer):
    if isinstance(answer.get("predictions", [None])[0], dict):  # Azure ML answer
        return np.array([item["probabilities"] for item in answer["predictions"]])
    return np.array(answer["predictions"])


@pytest.fixture(scope="module")
def in_process(served, images, monkeypatch_module):
    monkeypatch_module.setenv("AZUREML_MODEL_DIR", str(served.folder))
    monkeypatch_module.delenv("DIGITDRIFT_PREDICTION_LOG", raising=False)
    score = importlib.import_module("serving.score")
    score.init()
    answer = score.run(json.dumps({"data": images.tolist()}))
    assert isinstance(answer, dict), answer
    return probabilities_from(answer)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def assert_same(expected, answer_probabilities):
    assert answer_probabilities.shape == expected.shape
    assert (answer_probabilities.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert np.abs(answer_probabilities - expected).max() <= 1e-6


def test_score_run_matches_the_trained_model(in_process, served, images):
    assert_same(served.trained_probabilities(images), in_process)


def test_score_run_answers_bad_input_with_400(in_process):
    score = sys.modules["serving.score"]
    response = score.run('{"data": [[1, 2, 3]]}')
    assert response.status_code == 400 and "got shape 1x3" in response.get_json()["error"]


def test_our_server_gives_the_same_answer_at_both_doors(served, images, in_process, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # TensorFlow, as score.py runs a downloaded model folder: the doors compared on one runtime
    command = serving_command(served.uri, port, "--prediction-log", "none", "--runtime", "tensorflow")
    with running(command, f"{url}/ready", {"MLFLOW_TRACKING_URI": served.tracking_uri}, tmp_path / "server.log"):
        score = httpx.post(f"{url}/score", json={"data": images.tolist()}, timeout=60)
        assert_same(in_process, probabilities_from(score.json()))
        for name, body in mlflow_bodies(images, served.column).items():
            response = httpx.post(f"{url}/invocations", json=body, timeout=30)
            assert response.status_code == 200, (name, response.text)
            assert_same(in_process, probabilities_from(response.json()))


def test_mlflow_models_serve_gives_the_same_answer(served, images, in_process, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(VENV_BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        served.uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    env = {"MLFLOW_TRACKING_URI": served.tracking_uri, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    with running(command, f"{url}/ping", env, tmp_path / "mlflow.log"):  # it execs uvicorn from PATH
        for name in served.mlflow_serve_formats:
            response = httpx.post(f"{url}/invocations", json=mlflow_bodies(images, served.column)[name], timeout=60)
            assert response.status_code == 200, (name, response.text[:500])
            assert_same(in_process, probabilities_from(response.json()))


def test_azure_ml_inference_server_runs_score_py_unchanged(served, images, in_process, tmp_path):
    port, health_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(VENV_BIN / "azmlinfsrv"),
        "--entry_script",
        "serving/score.py",
        "--model_dir",
        str(served.folder),
        "--port",
        str(port),
        "--health_port",
        str(health_port),
    ]
    env = {"DIGITDRIFT_PREDICTION_LOG": str(tmp_path / "log.db")}
    with running(command, f"{url}/", env, tmp_path / "azmlinfsrv.log"):
        response = httpx.post(f"{url}/score", json={"data": images.tolist(), "request_id": "azure-1", "window": 4}, timeout=60)
        assert response.status_code == 200, response.text[:500]
        assert response.json()["request_id"] == "azure-1"
        assert_same(in_process, probabilities_from(response.json()))
        bad = httpx.post(
            f"{url}/score",
            content=json.dumps({"data": [[float("nan")] * 785]}),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert bad.status_code == 400 and "got shape 1x785" in bad.json()["error"]
        assert httpx.post(f"{url}/score", json={"data": images[:1].tolist()}, timeout=30).status_code == 200
    from common.records import read_prediction_log

    log = read_prediction_log(tmp_path / "log.db")
    assert len(log["request_id"]) == len(images) + 1 and set(log["window"][log["request_id"] == "azure-1"]) == {4}


def test_a_downloaded_model_folder_loads_without_its_tracking_store(champion, tmp_path, monkeypatch):
    from serving.core import load_core

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    stages: dict[str, float] = {}
    core = load_core(str(champion.folder), stages=stages)
    assert core.identity.flavor == "keras" and core.identity.version == "local:download"
    assert core.identity.runtime == "tensorflow"  # no exported graph beside the folder: auto falls back
    # what a cold start spends, step by step, in the order the load takes them
    steps = ["import_mlflow", "registry_lookup", "import_tensorflow", "model_load", "graph_build", "first_call", "reference"]
    assert list(stages) == steps and all(seconds >= 0 for seconds in stages.values())


def test_a_model_answering_classes_only_is_refused_at_load_naming_what_it_answered(tmp_path):
    from serving.core import load_core
    from serving.model_calls import ModelOutputError
    from tests.stand_in_models import save_stand_in

    save_stand_in(tmp_path / "classes-only", "classes-only")
    with pytest.raises(ModelOutputError, match=r"answers shape \(1,\) for one image; digitdrift serves models that answer 10"):
        load_core(str(tmp_path / "classes-only"))


def test_a_version_with_its_exported_graph_is_run_by_litert_answering_as_tensorflow_does(champion, images, tmp_path):
    from serving.core import load_core

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serving_command(champion.uri, port, "--prediction-log", "none")  # the default runtime: auto
    with running(command, f"{url}/ready", {"MLFLOW_TRACKING_URI": champion.tracking_uri}, tmp_path / "server.log") as server:
        answer = httpx.post(f"{url}/score", json={"data": images.tolist()}, timeout=60).json()
        runtime = httpx.get(f"{url}/metadata", timeout=10).json()["model"]["runtime"]
        mapped = Path(f"/proc/{server.pid}/maps").read_text()
    assert runtime == "litert"
    assert "_pywrap_litert_interpreter_wrapper" in mapped and "libtensorflow" not in mapped
    mlflow.set_tracking_uri(champion.tracking_uri)
    tensorflow = load_core(champion.uri, runtime="tensorflow").score(images)
    assert (probabilities_from(answer).argmax(axis=1) == tensorflow.probabilities.argmax(axis=1)).all()
    assert np.abs(probabilities_from(answer) - tensorflow.probabilities).max() <= 1e-5
    assert [item["flags"] for item in answer["predictions"]] == [list(flags) for flags in tensorflow.flags]


def test_the_litert_runtime_refuses_a_model_without_its_exported_graph_naming_what_to_do(champion):
    from serving.core import load_core
    from serving.model_calls import LoadError

    with pytest.raises(LoadError, match=r"download: no serving/model.tflite beside it .*serve it with --runtime tensorflow"):
        load_core(str(champion.folder), runtime="litert")


def test_a_training_run_without_the_exported_graph_is_named_when_litert_is_asked(champion):
    from serving.model_calls import LoadError, served_graph

    mlflow.set_tracking_uri(champion.tracking_uri)
    with mlflow.start_run(run_name="no-graph") as run:  # a run that logged no serving/model.tflite
        pass
    with pytest.raises(LoadError, match=f"no serving/model.tflite on its training run {run.info.run_id}"):
        served_graph("models:/digits-cnn/1", run.info.run_id)
