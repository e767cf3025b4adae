"""Helpers the tests share (fixtures live in ``conftest.py``; these are plain functions).

- ``pipeline``: small data, the steps run in-process, finding their runs;
- ``processes``: project copies, `mlflow run`, background processes on loopback;
- ``services``: PostgreSQL, the moto S3 server, tracking servers, `git daemon`;
- ``requirements``: skip (or, in CI, fail) a test whose component is not installed.
"""

from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
