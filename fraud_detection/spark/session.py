"""The Spark session of the Spark engine: Spark's own configuration first, loopback when asked.

The master and resources come from where Spark users already put them, in this order:
``spark-submit --master`` / ``PYSPARK_SUBMIT_ARGS``, ``$SPARK_CONF_DIR/spark-defaults.conf``,
``SPARK_MASTER`` in the environment (for ``mlflow run``, which has no Spark flags); with none of
them, ``local[*]``. The template adds only what its own code needs and what is always right:

- UTC as the session time zone (window features count seconds; DST must not move them);
- executors run the driver's Python (``PYSPARK_PYTHON``), so the model's packages are there;
- when ``SPARK_LOCAL_IP`` is set (tests set 127.0.0.1; Spark otherwise binds to a non-loopback
  interface of a machine with several), the driver host and bind address follow it, since
  XGBoost's tracker connects to the driver host;
- a barrier-slot check that fails in seconds, not after Spark's 40 x 15 s, when
  ``SparkXGBClassifier`` asks for more workers than there are task slots;
- Arrow for pandas conversions, and silence for the three warnings PySpark 4.3 gives under
  pandas 3, which the project keeps (`quiet_pandas_3_warnings`, docs/spark.md).

Spark's JVM is started before its configuration is read (`_launch_jvm`): until then PySpark's
``SparkConf()`` is empty, and a master set on the builder would override spark-defaults.conf.

PySpark is the optional ``spark`` extra (``pip install -e ".[spark]"``) and needs Java 17 or
newer; `require_spark` says how to install whichever is missing.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from typing import TYPE_CHECKING

from fraud_detection.errors import PipelineError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

MIN_JAVA = 17
INSTALL_PYSPARK = 'pip install -e ".[spark]"'
INSTALL_JAVA = (
    "Debian/Ubuntu: apt-get install openjdk-17-jre-headless; macOS: brew install openjdk@17; "
    "or set JAVA_HOME to a Java 17+ installation"
)
# What the template sets unless Spark's own configuration already says otherwise.
TEMPLATE_DEFAULTS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "3",
    "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "2s",
    "spark.ui.showConsoleProgress": "false",
    # pandas -> Spark (the simulated table) and back through Arrow, not row by row in Python.
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
# The launcher sets these for every Python driver, so their presence says nothing of the user's
# wishes: the template's values apply.
_LAUNCHER_SETTINGS = frozenset({"spark.ui.showConsoleProgress"})


class SparkUnavailableError(PipelineError):
    """PySpark or a suitable Java is missing: the message says how to install it."""


def java_major_version() -> int | None:
    """The major version of the Java that Spark will start (``JAVA_HOME`` first), or None."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        return None
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def require_spark() -> None:
    """Raise `SparkUnavailableError` naming the install command when PySpark or Java is missing."""
    if importlib.util.find_spec("pyspark") is None:
        raise SparkUnavailableError(
            f"the Spark engine needs PySpark, which is not installed: {INSTALL_PYSPARK}"
        )
    version = java_major_version()
    if version is None:
        raise SparkUnavailableError(
            f"the Spark engine needs Java {MIN_JAVA} or newer, and no java was found "
            f"({INSTALL_JAVA})"
        )
    if version < MIN_JAVA:
        raise SparkUnavailableError(
            f"the Spark engine needs Java {MIN_JAVA} or newer, found Java {version} "
            f"({INSTALL_JAVA})"
        )


def spark_session(app_name: str = "fraud-detection") -> SparkSession:
    """The active Spark session, or a new one configured as the module docstring says."""
    require_spark()
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    quiet_pandas_3_warnings()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    _launch_jvm()
    configured = SparkConf()  # now holds spark-defaults.conf and spark-submit's settings
    builder = SparkSession.builder.appName(app_name)
    settings = dict(TEMPLATE_DEFAULTS)
    local_ip = os.environ.get("SPARK_LOCAL_IP")
    if local_ip:
        settings |= {"spark.driver.host": local_ip, "spark.driver.bindAddress": local_ip}
    for key, value in settings.items():
        if key in _LAUNCHER_SETTINGS or not configured.contains(key):
            builder = builder.config(key, value)
    session = builder.getOrCreate()
    logger.info(
        "Spark %s session on %s (%s)",
        session.version,
        session.sparkContext.master,
        session.sparkContext.applicationId,
    )
    return session


def quiet_pandas_3_warnings() -> None:
    """Silence the three warnings PySpark 4.3 gives on pandas conversions under pandas 3.

    PySpark 4.3 warns that it "does not yet fully support pandas >= 3.0.0", passes pandas 3 a
    deprecated ``copy`` keyword, and hands timestamps to Arrow through ``Series.values``, which
    pandas 3.1 deprecates for time-zone-aware series. The project keeps pandas 3 (its pins
    allow 2.2 to 3.1) because the Spark engine is tested on it: reading, features and split
    equal the pandas engine's on pandas 3.1 (docs/spark.md, "pandas 3"). Only these messages
    are silenced; every other warning still shows.
    """
    warnings.filterwarnings(
        "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
    )
    warnings.filterwarnings(
        "ignore",
        message="The copy keyword is deprecated",
        category=DeprecationWarning,
        module=r"pyspark\.",
    )
    warnings.filterwarnings(
        "ignore",
        message="Series.values returning an ndarray that drops timezone information",
        category=DeprecationWarning,
    )


def _launch_jvm() -> None:
    """Start Spark's JVM (or join the one ``spark-submit`` started) before reading the conf.

    Before the JVM runs, ``SparkConf()`` is an empty Python dict that has read nothing, and a
    master set on the builder would override ``spark-defaults.conf`` and ``--master``. Launched
    first, the JVM resolves the master as spark-submit does: ``--master`` (``PYSPARK_SUBMIT_ARGS``),
    then ``spark.master`` in spark-defaults.conf, then the ``MASTER`` variable, which is given
    ``SPARK_MASTER`` for the launch, then ``local[*]``.
    """
    from pyspark import SparkContext

    master = os.environ.get("SPARK_MASTER")
    lent = bool(master) and "MASTER" not in os.environ
    if lent:
        os.environ["MASTER"] = master
    try:
        SparkContext._ensure_initialized()
    finally:
        if lent:
            del os.environ["MASTER"]
