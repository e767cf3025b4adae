"""What installing the project costs: the wall time of `pip install -e ".[dev]"` into a fresh
virtual environment, the environment's size on disk, and its largest packages.

Standard library only, so that it runs before anything is installed. Each repeat creates a new
venv in a temporary folder with the given Python, times the install, measures the venv (disk
usage as `du` counts it, each file once) and each installed distribution (the files of its
RECORD), then removes the venv. pip's cache is used as it is: `--warm-up` first installs once,
untimed, so that the timed installs take every download from the cache.

    python bench/install_footprint.py --warm-up --out bench/results/install_footprint.json
    python bench/install_footprint.py --project /path/to/other/checkout --python python3.12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def disk_usage(root: Path) -> tuple[int, int]:
    """(bytes on disk as `du` counts them, apparent bytes) of everything under ``root``;
    hard-linked files counted once."""
    seen: set[tuple[int, int]] = set()
    blocks = apparent = 0
    for folder, _, files in os.walk(root):
        for name in [folder, *(os.path.join(folder, file) for file in files)]:
            info = os.lstat(name)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            blocks += info.st_blocks * 512
            apparent += info.st_size
    return blocks, apparent


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


def distributions(venv: Path) -> list[dict[str, Any]]:
    """Every distribution installed in ``venv``: name, version and the disk usage of its files
    (from its RECORD, each file once)."""
    root = site_packages(venv)
    rows = []
    for info in sorted(root.glob("*.dist-info")):
        metadata = (info / "METADATA").read_text(errors="replace")
        fields = dict(line.split(": ", 1) for line in metadata.splitlines()[:20] if ": " in line)
        size = 0
        record = info / "RECORD"
        if record.exists():
            for line in record.read_text().splitlines():
                path = root / line.split(",", 1)[0]
                if path.is_file():
                    size += os.lstat(path).st_blocks * 512
        rows.append(
            {"name": fields.get("Name", info.name), "version": fields.get("Version"), "bytes": size}
        )
    return sorted(rows, key=lambda row: row["bytes"], reverse=True)


def install_once(python: str, project: Path, pip_args: list[str], scratch: Path) -> dict[str, Any]:
    """Create a venv under ``scratch``, install into it, measure it, remove it."""
    venv = Path(tempfile.mkdtemp(prefix="venv-", dir=scratch))
    try:
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        result = subprocess.run(
            [*pip, "install", "--quiet", *pip_args], cwd=project, capture_output=True, text=True
        )
        seconds = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            raise SystemExit(f"pip install failed ({result.returncode}):\n{result.stderr[-4000:]}")
        disk, apparent = disk_usage(venv)
        return {
            "install_seconds": round(seconds, 1),
            "install_cpu_seconds": round(
                (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1
            ),
            "venv_bytes": disk,
            "venv_apparent_bytes": apparent,
            "distributions": distributions(venv),
        }
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def _output(command: list[str], cwd: Path | None = None) -> str | None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def pip_cache_bytes(python: str) -> int | None:
    folder = _output([python, "-m", "pip", "cache", "dir"])
    return disk_usage(Path(folder))[0] if folder and Path(folder).is_dir() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=PROJECT_DIR, help="checkout to install")
    parser.add_argument(
        "--python", default="python3.11", help="interpreter that creates the venv (python3.11)"
    )
    parser.add_argument(
        "--pip-args",
        default="-e .[dev]",
        help="arguments of `pip install`, run in the project folder (default: '-e .[dev]')",
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed installs (1)")
    parser.add_argument(
        "--warm-up", action="store_true", help="install once, untimed, to warm pip's cache"
    )
    parser.add_argument("--top", type=int, default=10, help="largest distributions to list (10)")
    parser.add_argument("--scratch", type=Path, help="where the venvs go (a temporary folder)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    project = args.project.resolve()
    if not (project / "pyproject.toml").exists():
        parser.error(f"--project: no pyproject.toml in {project}")
    pip_args = args.pip_args.split()

    scratch = Path(tempfile.mkdtemp(prefix="install-footprint-", dir=args.scratch))
    try:
        if args.warm_up:
            print(f"warming pip's cache: pip install {args.pip_args} ...", flush=True)
            install_once(args.python, project, pip_args, scratch)
        cache_before = pip_cache_bytes(args.python)
        runs = []
        for repeat in range(args.repeats):
            run = install_once(args.python, project, pip_args, scratch)
            print(
                f"install {repeat + 1}/{args.repeats}: {run['install_seconds']:.1f} s "
                f"({run['install_cpu_seconds']:.1f} s CPU), "
                f"venv {run['venv_bytes'] / MIB:,.0f} MiB",
                flush=True,
            )
            runs.append(run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    last = runs[-1]
    largest = last["distributions"][: args.top]
    version = _output([args.python, "-c", "import platform; print(platform.python_version())"])
    figures = {
        "project": str(project),
        "git_commit": _output(["git", "rev-parse", "HEAD"], cwd=project),
        "git_dirty": bool(_output(["git", "status", "--porcelain"], cwd=project)),
        "command": f"pip install {args.pip_args}",
        "python": version,
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "pip_cache": "warmed by an untimed install first" if args.warm_up else "as found",
        "pip_cache_bytes_before": cache_before,
        "install_seconds": [run["install_seconds"] for run in runs],
        "install_seconds_median": statistics.median(run["install_seconds"] for run in runs),
        "install_cpu_seconds": [run["install_cpu_seconds"] for run in runs],
        "venv_bytes": last["venv_bytes"],
        "venv_apparent_bytes": last["venv_apparent_bytes"],
        "venv_mib": round(last["venv_bytes"] / MIB),
        "distribution_count": len(last["distributions"]),
        "largest_distributions": [{**row, "mib": round(row["bytes"] / MIB, 1)} for row in largest],
        "distributions": {row["name"]: row["version"] for row in last["distributions"]},
    }
    print(
        f"\n{figures['command']} with Python {version} ({figures['pip_cache']}):\n"
        f"  install time: {figures['install_seconds_median']:.1f} s (median of {len(runs)})\n"
        f"  venv size:    {figures['venv_mib']:,} MiB "
        f"({figures['distribution_count']} distributions)\n"
        f"  largest:"
    )
    for row in figures["largest_distributions"]:
        print(f"    {row['mib']:8,.1f} MiB  {row['name']} {row['version']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
