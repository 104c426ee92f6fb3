"""Shared fixtures (the read-only dataset mirror, a real MLflow server, trained models, Spark, Azurite) and the
order in which `make test` hands modules to its parallel workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.processes import free_port, mlflow_server_command, stop, wait_for_http
from tests.helpers import SHARED_DATA

# The modules that take longest (minutes each on 2 cores), longest first: `make test` (pytest-xdist, --dist loadfile,
# --no-loadscope-reorder) hands whole modules to its workers in collection order, so these start first and the
# workers finish together; the rest follow in their usual order. (pytest-xdist 3.8's --dist loadgroup cannot group
# under pytest 9: it renames items through an attribute pytest 9 no longer reads.)
LONGEST_MODULES = (
    "tests.integration.test_real_traffic",
    "tests.integration.test_stack",
    "tests.integration.test_prediction_dataset",
    "tests.integration.test_contract",
    "tests.integration.test_monitoring",
    "tests.integration.test_closed_loop",
    "tests.integration.test_cloud",
    "tests.integration.test_server",
    "tests.integration.test_fuzz",
    "tests.integration.test_keras_training",
)


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker the main module (execnet's) has neither __spec__ nor __file__, which pyspark's
    Spark Connect import (reached by mlflow.spark.log_model) takes for a doctest run: it exits the worker. Name it."""
    main = sys.modules["__main__"]
    if os.environ.get("PYTEST_XDIST_WORKER") and getattr(main, "__spec__", None) is None and not hasattr(main, "__file__"):
        main.__file__ = "<pytest-xdist worker>"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first, each module's tests together and in their order."""
    modules = list(dict.fromkeys(item.module.__name__ for item in items))
    rank = {module: LONGEST_MODULES.index(module) if module in LONGEST_MODULES else len(LONGEST_MODULES) for module in modules}
    items.sort(key=lambda item: (rank[item.module.__name__], modules.index(item.module.__name__)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only mirror of the real datasets (../shared/data)."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.fail(f"the dataset mirror {SHARED_DATA} is missing: tests read the real datasets from it")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real `mlflow server` on a free loopback port (SQLite backend, local artifacts); its URL."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    with open(home / "server.log", "wb") as output:  # the child keeps its own handle
        process = subprocess.Popen(
            mlflow_server_command(port, f"sqlite:///{home / 'mlflow.db'}", str(home / "artifacts"), workers=1),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", process)
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="session")
def champion(shared_data, tmp_path_factory):
    """A small digits-cnn trained for real into its own SQLite store, registered and promoted to @champion."""
    import mlflow

    from tests.helpers import ChampionModel, settings_for
    from training.configs import KerasJobConfig
    from training.keras_job import run_keras_job
    from training.registry import promote

    home = tmp_path_factory.mktemp("champion")
    settings = settings_for(home, data_dir=shared_data)
    config = KerasJobConfig(
        data_dir=str(shared_data),
        epochs=1,
        train_limit=3000,
        validation_size=500,
        foreign_limit_per_class=5,
        batch_size=64,
        run_name="test-champion",
    )
    result = run_keras_job(config, settings)
    assert promote("digits-cnn", threshold=0.0).promoted
    folder = Path(mlflow.artifacts.download_artifacts("models:/digits-cnn@champion", dst_path=str(home / "download")))
    return ChampionModel(settings.tracking_uri, "models:/digits-cnn@champion", folder, result.model_version, result.model)


@pytest.fixture(scope="session")
def spark():
    """The one SparkSession of the test run (local mode)."""
    from common.spark import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark_model(spark, shared_data, tmp_path_factory):
    """A small digits-spark (logistic regression on PCA 20) trained in the shared session and registered @challenger."""
    import mlflow

    from tests.helpers import SparkModel, settings_for
    from training.configs import SparkJobConfig
    from training.spark_job import run_spark_job

    home = tmp_path_factory.mktemp("spark-model")
    settings = settings_for(home, data_dir=shared_data)
    config = SparkJobConfig(
        data_dir=str(shared_data),
        classifier="logistic",
        pca_k=20,
        max_iter=20,
        train_limit=2000,
        validation_size=500,
        foreign_limit_per_class=3,
        spark_master="local[2]",
        run_name="spark-test",
    )
    result = run_spark_job(config, settings)
    uri = "models:/digits-spark@challenger"
    folder = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(home / "download")))
    return SparkModel(settings.tracking_uri, uri, folder, result.model_version, result.run_id, result.model)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """The Azure Storage emulator (blob service) on a free loopback port; its connection string."""
    from devtools.azurite import azurite_command, connection_string
    from tests.helpers import wait_for_port

    home = tmp_path_factory.mktemp("azurite")
    port = free_port()
    try:
        command = azurite_command(port, home)
    except FileNotFoundError as err:
        pytest.fail(f"{err} (`make test` installs it before the tests)")
    with open(home / "azurite.log", "wb") as output:  # the child keeps its own handle
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        yield connection_string(port)
    finally:
        stop(process)
