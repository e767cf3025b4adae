"""bench/scale.py's Spark engine against a standalone cluster: the driver's memory alone.

    python bench/scale_on_cluster.py --sizes 4000000,16000000 --rounds 100 \
        --data-dir /tmp/scale-data --out bench/results/scale_cluster.json

In ``local[2]`` mode the executors are threads of the driver's JVM, so ``bench/scale.py`` can
only give the driver and the executors together. Here a standalone cluster (one master and
two one-core workers on 127.0.0.1, started from pyspark's own scripts by the helper the
integration tests use, ``tests/support/spark_cluster.py``) runs the executors in JVMs of its
own, outside the benchmark's process tree: ``driver_jvm`` is then the driver's alone. The
executors get ``--executor-memory`` each; the shuffle partitions are Spark's default, as in
``bench/scale.py``. Every other option is passed to ``bench/scale.py`` unchanged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-memory", default="6g", help="memory each worker offers")
    parser.add_argument("--executor-memory", default="5g", help="heap of each executor")
    args, scale_arguments = parser.parse_known_args()
    sys.path.insert(0, str(PROJECT_DIR))
    from tests.support.spark_cluster import standalone_cluster

    with (
        tempfile.TemporaryDirectory(prefix="scale-cluster-") as root,
        standalone_cluster(Path(root), worker_memory=args.worker_memory) as cluster,
    ):
        conf = cluster.conf_dir / "spark-defaults.conf"
        lines = [
            line
            for line in conf.read_text().splitlines()
            if not line.startswith(("spark.executor.memory", "spark.sql.shuffle.partitions"))
        ]
        conf.write_text("\n".join([*lines, f"spark.executor.memory {args.executor_memory}", ""]))
        command = [sys.executable, str(PROJECT_DIR / "bench" / "scale.py"), "--engines"]
        command += ["spark", "--master", cluster.master_url, *scale_arguments]
        env = {**os.environ, **cluster.client_environment}
        return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
