"""The one SparkSession builder every part uses; pyspark is imported only when a session is built."""

from __future__ import annotations

import os
import sys

from common.settings import PROJECT_ROOT

DEFAULT_SPARK_MASTER = "local[*]"


def spark_config(master: str, app_name: str) -> dict[str, str]:
    """The configuration every digitdrift SparkSession is built with."""
    # executors import this project's packages to unpickle its Python functions (UDFs): on this machine's
    # cluster they find them here; on a remote cluster, ship them with --py-files (README)
    python_path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return {
        "spark.master": master,
        "spark.executorEnv.PYTHONPATH": python_path,
        "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",  # a cluster's executors: one BLAS thread per task (see below)
        "spark.app.name": app_name,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.memory": os.environ.get("DIGITDRIFT_SPARK_DRIVER_MEMORY", "4g"),
        "spark.ui.showConsoleProgress": "false",
        # timestamps as UTC instants: the monitor numbers windows of wall-clock time from them (common.windows)
        "spark.sql.session.timeZone": "UTC",
    }


def spark_session(master: str = DEFAULT_SPARK_MASTER, app_name: str = "digitdrift"):
    """This process's SparkSession (local[*] by default, a cluster by its master URL), created on first use."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers run this environment's interpreter
    # Spark ML calls native BLAS (OpenBLAS, when the system has it) from every task, one task per core: one BLAS
    # thread each, as Spark's ML guide advises, else the tasks' threads fight for the cores. Read when the JVM
    # starts; this process's numpy has loaded its own OpenBLAS by then.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    return SparkSession.builder.config(map=spark_config(master, app_name)).getOrCreate()
