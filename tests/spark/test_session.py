"""The Spark session takes Spark's own settings first, and says what to install when it cannot
start.

Each configuration is checked in a fresh Python process (a JVM starts once per process); the
four start at once, since each spends most of its time starting its JVM. Those tests run in the
integration layer (`pytest -m slow`: processes of their own); the messages without PySpark or
Java run in the fast layer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fraud_detection.spark.session import INSTALL_JAVA, SparkUnavailableError, require_spark
from tests.support import PROJECT_DIR
from tests.support.spark import LOOPBACK, SHORT_LIVED_JVM_OPTIONS
from tests.support.spark import require_spark as require_spark_installed

PROBE = """
import json
from fraud_detection.spark.session import spark_session
session = spark_session("settings-probe")
conf = session.conf
print(json.dumps({
    "master": session.sparkContext.master,
    "shuffle_partitions": conf.get("spark.sql.shuffle.partitions"),
    "time_zone": conf.get("spark.sql.session.timeZone"),
    "driver_host": conf.get("spark.driver.host"),
}))
session.stop()
"""
SPARK_VARIABLES = ("SPARK_MASTER", "MASTER", "SPARK_CONF_DIR", "PYSPARK_SUBMIT_ARGS")
CONF_FILE = (
    "spark.master local[1]\n"
    "spark.sql.shuffle.partitions 7\n"
    "spark.sql.session.timeZone America/New_York\n"
)
CASES = {
    "nothing": {},
    "SPARK_MASTER": {"SPARK_MASTER": "local[2]"},
    "spark-defaults.conf": {"SPARK_CONF_DIR": "{conf}", "SPARK_MASTER": "local[2]"},
    "PYSPARK_SUBMIT_ARGS": {
        "SPARK_CONF_DIR": "{conf}",
        "PYSPARK_SUBMIT_ARGS": "--master local[3] --conf spark.sql.shuffle.partitions=5 "
        "pyspark-shell",
    },
}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """What a fresh session reports under each of ``CASES``, all started at once."""
    require_spark_installed()
    conf = tmp_path_factory.mktemp("spark-conf")
    (conf / "spark-defaults.conf").write_text(CONF_FILE)
    base = {k: v for k, v in os.environ.items() if k not in SPARK_VARIABLES}
    base |= LOOPBACK | {"PYTHONPATH": str(PROJECT_DIR)}
    # Four JVMs that start, report and stop; the settings they read are the same.
    base["JDK_JAVA_OPTIONS"] = SHORT_LIVED_JVM_OPTIONS
    started = {}
    for name, variables in CASES.items():
        env = base | {key: value.format(conf=conf) for key, value in variables.items()}
        started[name] = subprocess.Popen(
            [sys.executable, "-c", PROBE],
            env=env,
            cwd=conf,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    reports = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {err[-3000:]}"
        reports[name] = json.loads(out.strip().splitlines()[-1])
    return reports


@pytest.mark.slow
def test_local_with_every_core_when_nothing_is_configured(sessions):
    assert sessions["nothing"]["master"] == "local[*]"
    assert sessions["nothing"]["time_zone"] == "UTC"  # the template's own default
    assert sessions["nothing"]["driver_host"] == "127.0.0.1"  # SPARK_LOCAL_IP


@pytest.mark.slow
def test_spark_master_from_the_environment(sessions):
    assert sessions["SPARK_MASTER"]["master"] == "local[2]"


@pytest.mark.slow
def test_spark_defaults_conf_wins_over_the_environment_and_the_templates_defaults(sessions):
    assert sessions["spark-defaults.conf"] == {
        "master": "local[1]",
        "shuffle_partitions": "7",
        "time_zone": "America/New_York",
        "driver_host": "127.0.0.1",
    }


@pytest.mark.slow
def test_spark_submit_arguments_win_over_spark_defaults_conf(sessions):
    report = sessions["PYSPARK_SUBMIT_ARGS"]
    assert report["master"] == "local[3]"
    assert report["shuffle_partitions"] == "5"
    assert report["time_zone"] == "America/New_York"


def test_without_pyspark_the_message_names_the_install_command():
    """A Python without site-packages has no PySpark: the real check, in a child process."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from fraud_detection.spark.session import SparkUnavailableError, require_spark\n"
        "try:\n    require_spark()\nexcept SparkUnavailableError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code, str(PROJECT_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == (
        'the Spark engine needs PySpark, which is not installed: pip install -e ".[spark]"'
    )


def _fake_java(home: Path, version_line: str) -> Path:
    java = home / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")  # java -version writes stderr
    java.chmod(0o755)
    return home


@pytest.mark.parametrize(
    ("version_line", "found"),
    [
        ('openjdk version "11.0.22" 2024-01-16', "found Java 11"),
        ('java version "1.8.0_392"', "found Java 8"),
    ],
)
def test_an_old_java_is_named_with_how_to_install_java_17(
    tmp_path, monkeypatch, version_line, found
):
    require_spark_installed()
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path / "jdk", version_line)))
    with pytest.raises(SparkUnavailableError) as caught:
        require_spark()
    assert str(caught.value) == (
        f"the Spark engine needs Java 17 or newer, {found} ({INSTALL_JAVA})"
    )


def test_no_java_at_all(tmp_path, monkeypatch):
    require_spark_installed()
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(SparkUnavailableError, match=r"no java was found.*openjdk-17"):
        require_spark()
