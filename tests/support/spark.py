"""Spark for the tests: a local session on loopback, skipped (failed in CI) without PySpark or
Java 17, with the command that installs the missing part."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tests.support.requirements import require

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Spark binds to a non-loopback interface of this machine unless told otherwise; every Spark
# process the tests start (driver, executors, a standalone cluster) inherits these.
LOOPBACK = {"SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOCAL_HOSTNAME": "localhost"}
# Expressions evaluated by Spark's interpreter, not compiled to Java (Janino) first: on the
# tests' small data compiling costs more than running. Sampled with jstack, the driver JVM
# spent most of its busy time in Janino; the in-process train-evaluate-register round trip
# (tests/spark/test_engine.py) took 89 s instead of 110-115 s alone on the 2-core machine, and
# the standalone cluster's pipeline (tests/integration/test_spark_cluster.py) about a fifth
# less. Same results by construction (Spark's own test suites run both modes). The Spark
# scale benchmark's test (tests/test_bench.py) and the session-settings probes
# (tests/spark/test_session.py) keep Spark's defaults, code generation included.
INTERPRETED_EXPRESSIONS = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}
# For the JVMs the tests start in processes of their own (a standalone cluster's daemons,
# drivers and executors; the session-settings probes), which live for seconds to minutes on
# small data: the client JIT compiler only, whose optimising twin's work does not pay back
# there. Measured on the 2-core machine: the cluster's pipeline 172-192 s instead of 244 s
# (tests/support/spark_cluster.py), the four probes 24 s instead of 42 s
# (tests/spark/test_session.py). The JIT level changes no result.
SHORT_LIVED_JVM_OPTIONS = "-XX:TieredStopAtLevel=1"
# The local test session's settings: few shuffle partitions (instead of Spark's 200 near-empty
# tasks per shuffle) and interpreted expressions.
TEST_SESSION_SETTINGS = {"spark.sql.shuffle.partitions": "4", **INTERPRETED_EXPRESSIONS}


def require_spark() -> None:
    """Skip (fail in CI) the test when PySpark or Java 17+ is missing."""
    from fraud_detection.spark.session import SparkUnavailableError
    from fraud_detection.spark.session import require_spark as check

    try:
        check()
    except SparkUnavailableError as error:
        require(False, "Spark", str(error))


def local_session() -> SparkSession:
    """A two-core local session on 127.0.0.1 with few shuffle partitions (small test data)."""
    require_spark()
    os.environ.update(LOOPBACK)
    os.environ["SPARK_MASTER"] = "local[2]"
    from fraud_detection.spark.session import spark_session

    session = spark_session("fraud-detection-tests")
    for key, value in TEST_SESSION_SETTINGS.items():
        session.conf.set(key, value)
    return session
