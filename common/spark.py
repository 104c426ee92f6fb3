"""The one SparkSession builder every part uses; pyspark is imported only when a session is built."""

from __future__ import annotations

import os
import sys

DEFAULT_SPARK_MASTER = "local[*]"


def spark_config(master: str, app_name: str) -> dict[str, str]:
    """The configuration every digitdrift SparkSession is built with."""
    return {
        "spark.master": master,
        "spark.app.name": app_name,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.memory": os.environ.get("DIGITDRIFT_SPARK_DRIVER_MEMORY", "4g"),
        "spark.ui.showConsoleProgress": "false",
    }


def spark_session(master: str = DEFAULT_SPARK_MASTER, app_name: str = "digitdrift"):
    """This process's SparkSession (local[*] by default, a cluster by its master URL), created on first use."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers run this environment's interpreter
    return SparkSession.builder.config(map=spark_config(master, app_name)).getOrCreate()
