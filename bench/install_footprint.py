"""What installing the project costs: the wall time of `pip install -e ".[dev]"` into a fresh
virtual environment, the environment's size on disk, and its largest packages.

Standard library only, so that it runs before anything is installed. Each install creates a
new venv in a temporary folder with the given Python, times the install, measures the venv
(disk usage as `du` counts it, each file once) and each installed distribution (the files of
its RECORD), then removes the venv.

Downloads: by default each install fetches from the package index (and pip's cache, where the
index lets pip cache). `--local-wheels` first downloads every distribution the install needs
into a local folder, untimed, and the timed installs take them from there with `--no-index`:
the install time of a warm cache, whatever the index's caching headers.

    python bench/install_footprint.py --local-wheels --out bench/results/install_footprint.json
    python bench/install_footprint.py --project /path/to/main --project . --repeats 3
    python bench/install_footprint.py --python python3.13 --pip-args "-e .[dev,integration]"

The install time depends on what else the machine is doing: each install records the load
average before it and its CPU time (pip and its children, summed over cores).
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
import tomllib
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


def fill_wheelhouse(
    python: str, project: Path, pip_args: list[str], wheelhouse: Path, scratch: Path
) -> None:
    """Download into ``wheelhouse`` every distribution that `pip install ``pip_args``` needs
    in ``project``, and the project's build backend."""
    requirements = [arg for arg in pip_args if arg not in ("-e", "--editable")]
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    build = [*pyproject.get("build-system", {}).get("requires", []), "wheel"]
    venv = Path(tempfile.mkdtemp(prefix="venv-", dir=scratch))
    try:
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        command = [str(venv / "bin" / "python"), "-m", "pip", "download", "--quiet"]
        result = subprocess.run(
            [*command, "--dest", str(wheelhouse), *requirements, *build],
            cwd=project,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise SystemExit(f"pip download failed ({result.returncode}):\n{result.stderr[-4000:]}")
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def install_once(python: str, project: Path, pip_args: list[str], scratch: Path) -> dict[str, Any]:
    """Create a venv under ``scratch``, install into it, measure it, remove it."""
    venv = Path(tempfile.mkdtemp(prefix="venv-", dir=scratch))
    try:
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        load = os.getloadavg()[0]
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
            "load_average_before": round(load, 2),
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


def project_figures(project: Path, runs: list[dict[str, Any]], top: int) -> dict[str, Any]:
    last = runs[-1]
    return {
        "project": str(project),
        "git_commit": _output(["git", "rev-parse", "HEAD"], cwd=project),
        "git_dirty": bool(_output(["git", "status", "--porcelain"], cwd=project)),
        "install_seconds": [run["install_seconds"] for run in runs],
        "install_seconds_median": statistics.median(run["install_seconds"] for run in runs),
        "install_cpu_seconds": [run["install_cpu_seconds"] for run in runs],
        "load_average_before": [run["load_average_before"] for run in runs],
        "venv_bytes": last["venv_bytes"],
        "venv_apparent_bytes": last["venv_apparent_bytes"],
        "venv_mib": round(last["venv_bytes"] / MIB),
        "distribution_count": len(last["distributions"]),
        "largest_distributions": [
            {**row, "mib": round(row["bytes"] / MIB, 1)} for row in last["distributions"][:top]
        ],
        "distributions": {row["name"]: row["version"] for row in last["distributions"]},
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--project",
        type=Path,
        action="append",
        help="checkout to install (this one by default); given twice or more, the installs "
        "alternate between them, so that a machine that slows down affects each alike",
    )
    parser.add_argument(
        "--python", default="python3.11", help="interpreter that creates the venv (python3.11)"
    )
    parser.add_argument(
        "--pip-args",
        default="-e .[dev]",
        help="arguments of `pip install`, run in the project folder (default: '-e .[dev]')",
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed installs of each (1)")
    parser.add_argument(
        "--local-wheels",
        action="store_true",
        help="download everything first (untimed); install from there with --no-index",
    )
    parser.add_argument("--top", type=int, default=10, help="largest distributions to list (10)")
    parser.add_argument("--scratch", type=Path, help="where the venvs go (a temporary folder)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    return parser


def _install_all(
    args: argparse.Namespace, projects: list[Path], pip_args: list[str]
) -> tuple[dict[Path, list[dict[str, Any]]], int]:
    """Every timed install, alternating between ``projects``; and the pip cache's size before."""
    scratch = Path(tempfile.mkdtemp(prefix="install-footprint-", dir=args.scratch))
    runs: dict[Path, list[dict[str, Any]]] = {project: [] for project in projects}
    try:
        install_args = {project: pip_args for project in projects}
        if args.local_wheels:
            for index, project in enumerate(projects):
                wheelhouse = scratch / f"wheels-{index}"
                print(f"downloading what {project} needs into {wheelhouse}", flush=True)
                fill_wheelhouse(args.python, project, pip_args, wheelhouse, scratch)
                install_args[project] = ["--no-index", "--find-links", str(wheelhouse), *pip_args]
        cache_before = pip_cache_bytes(args.python)
        for repeat in range(args.repeats):
            for project in projects:
                run = install_once(args.python, project, install_args[project], scratch)
                print(
                    f"install {repeat + 1}/{args.repeats} of {project}: "
                    f"{run['install_seconds']:.1f} s ({run['install_cpu_seconds']:.1f} s CPU; "
                    f"load average {run['load_average_before']:.1f}), "
                    f"venv {run['venv_bytes'] / MIB:,.0f} MiB",
                    flush=True,
                )
                runs[project].append(run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return runs, cache_before


def _print_figures(figures: dict[str, Any]) -> None:
    for row in figures["projects"]:
        print(
            f"\n{figures['command']} in {row['project']} ({row['git_commit'] or 'no git'}), "
            f"Python {figures['python']}, downloads {figures['downloads']}:\n"
            f"  install time: {row['install_seconds_median']:.1f} s "
            f"(median of {len(row['install_seconds'])})\n"
            f"  venv size:    {row['venv_mib']:,} MiB ({row['distribution_count']} distributions)\n"
            f"  largest:"
        )
        for package in row["largest_distributions"]:
            print(f"    {package['mib']:8,.1f} MiB  {package['name']} {package['version']}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    projects = [path.resolve() for path in args.project or [PROJECT_DIR]]
    for project in projects:
        if not (project / "pyproject.toml").exists():
            parser.error(f"--project: no pyproject.toml in {project}")
    runs, cache_before = _install_all(args, projects, args.pip_args.split())
    version = _output([args.python, "-c", "import platform; print(platform.python_version())"])
    figures = {
        "command": f"pip install {args.pip_args}",
        "python": version,
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "downloads": (
            "none: every distribution from a local folder filled before (--local-wheels)"
            if args.local_wheels
            else "from the package index, each install"
        ),
        "pip_cache_bytes_before": cache_before,
        "projects": [project_figures(project, runs[project], args.top) for project in projects],
    }
    _print_figures(figures)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
