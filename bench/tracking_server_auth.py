"""What basic auth costs a tracking server per request, with and without its credential cache.

Starts deploy/production-server.sh twice on 127.0.0.1 (SQLite stores in a temporary folder: the
cost measured is the password check, not the database), once with MLFLOW_AUTH_CACHE_TTL_SECONDS=0
(MLflow's default: every request hashes the password, PBKDF2) and once with the script's default
of 60 s, and deploy/dev-server.sh (no auth) as the baseline; times the same authenticated API
call on each.

    python bench/tracking_server_auth.py [--requests 30] [--out results.json]

Needs the server's packages: pip install -e ".[dev,server]".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from tests.support.processes import (  # noqa: E402 (the project root is not on sys.path by default)
    background_process,
    basic_auth,
    free_port,
    http_ok,
    http_status,
    mlflow_environment,
    post_json,
)

ADMIN_PASSWORD = "bench-admin-password"
USER, USER_PASSWORD = "bench-user", "bench-user-password"
CALL = "/api/2.0/mlflow/experiments/search?max_results=1"


def _latencies_ms(url: str, headers: dict[str, str], requests: int) -> list[float]:
    assert http_status(url + CALL, headers) == 200  # warm up (and check the credentials)
    timings = []
    for _ in range(requests):
        start = time.perf_counter()
        status = http_status(url + CALL, headers)
        timings.append((time.perf_counter() - start) * 1000)
        assert status == 200, status
    return timings


def _measure(script: str, settings: dict[str, str], workdir: Path, requests: int) -> list[float]:
    workdir.mkdir()
    port = free_port()
    env = mlflow_environment(
        None, MLFLOW_PORT=str(port), MLFLOW_WORKERS="1", TMPDIR=str(workdir), **settings
    )
    url = f"http://127.0.0.1:{port}"
    command = ["bash", str(PROJECT_DIR / "deploy" / script)]
    with background_process(command, workdir / "server.log", env=env, cwd=workdir) as server:
        server.wait_until(lambda: http_ok(f"{url}/health"), 180, script)
        if "MLFLOW_AUTH_DATABASE_URI" not in settings:
            return _latencies_ms(url, {}, requests)
        status, body = post_json(
            f"{url}/api/2.0/mlflow/users/create",
            {"username": USER, "password": USER_PASSWORD},
            basic_auth("admin", ADMIN_PASSWORD),
        )
        assert status == 200, body
        return _latencies_ms(url, basic_auth(USER, USER_PASSWORD), requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--out", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)

        def production(name: str, ttl: str) -> list[float]:
            return _measure(
                "production-server.sh",
                {
                    "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / name}.db",
                    "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{root / name}-auth.db",
                    "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": "bench-secret-key",
                    "MLFLOW_SERVER_ALLOWED_HOSTS": "127.0.0.1:*",
                    "MLFLOW_HOST": "127.0.0.1",
                    "MLFLOW_ARTIFACTS_DESTINATION": str(root / f"{name}-artifacts"),
                    "MLFLOW_AUTH_CACHE_TTL_SECONDS": ttl,
                },
                root / name,
                args.requests,
            )

        results = {
            "no auth (dev-server.sh)": _measure("dev-server.sh", {}, root / "dev", args.requests),
            "basic auth, cache off (TTL 0)": production("uncached", "0"),
            "basic auth, cache 60 s (script default)": production("cached", "60"),
        }

    baseline = statistics.median(results["no auth (dev-server.sh)"])
    report = {}
    print(f"{args.requests} authenticated experiments/search calls, median and p90 (ms):")
    for name, timings in results.items():
        median = statistics.median(timings)
        p90 = statistics.quantiles(timings, n=10)[-1]
        report[name] = {"median_ms": median, "p90_ms": p90, "vs_no_auth": median / baseline}
        print(f"  {name:42s} {median:8.1f} {p90:8.1f}   x{median / baseline:.1f} vs no auth")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
