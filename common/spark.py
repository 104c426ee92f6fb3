"""The one way every job gets its SparkSession: local[*] by default, a cluster by its master URL."""

from __future__ import annotations

import os
import sys

DEFAULT_MASTER = "local[*]"


def spark_session(master: str = DEFAULT_MASTER, app_name: str = "digitdrift"):
    """The SparkSession of this process (created on first use; spark-submit's own session when it made one)."""
    from pyspark.sql import SparkSession

    # Python workers must run this environment's interpreter (pandas, PIL), not the system's.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", os.environ.get("DIGITDRIFT_SPARK_DRIVER_MEMORY", "4g"))
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
