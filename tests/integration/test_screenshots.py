"""docs/screenshots/take.py, the README's MLflow UI screenshots, end to end on small data: the
quick start in a clone, a real `mlflow ui`, headless Chromium. Every PNG is written, is a PNG of
the window's size and is not blank, and no process the script started outlives it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

from tests.support import PROJECT_DIR
from tests.support.processes import run_command
from tests.support.requirements import require

pytestmark = [pytest.mark.slow, pytest.mark.minutes]

SCRIPT = PROJECT_DIR / "docs" / "screenshots" / "take.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A rendered MLflow page has 1,000-2,000 colours (anti-aliased text, icons, the card's plots);
# a blank page has one, a spinner on an empty page a few dozen.
MIN_COLOURS = 500


def _script():
    spec = importlib.util.spec_from_file_location("take_screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


take = _script()


@pytest.fixture
def chromium() -> None:
    found = any(shutil.which(name) for name in take.CHROMIUM_NAMES)
    require(found, "Chromium", take.CHROMIUM_INSTALL)


def _started_since(started: float, path: Path) -> list[str]:
    """Processes started since ``started`` of the kinds the script starts: working in or
    naming ``path`` (the pipeline, `mlflow ui` and its workers), or a Chromium of the script
    (its profile's name)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd", "create_time"]):
        command = " ".join(process.info["cmdline"] or [])
        mine = (
            str(path) in command
            or str(path) in (process.info["cwd"] or "")
            or take.CHROMIUM_PROFILE_PREFIX in command
        )
        if mine and process.info["create_time"] >= started and process.pid != os.getpid():
            found.append(f"{process.info['pid']}: {command[:200]}")
    return found


def test_script_writes_every_screenshot_rendered(tmp_path: Path, chromium: None) -> None:
    out, work = tmp_path / "images", tmp_path / "work"
    command = [sys.executable, str(SCRIPT), "--small", "--out", str(out), "--workdir", str(work)]
    started = time.time()
    result = run_command(command, dict(os.environ), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-6000:]

    assert sorted(path.name for path in out.iterdir()) == sorted(take.SHOTS)
    for name in take.SHOTS:
        path = out / name
        assert f"wrote {path}" in result.stdout
        assert path.read_bytes().startswith(PNG_SIGNATURE), name
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", take.WINDOW), name
            colours = image.convert("RGB").getcolors(maxcolors=MIN_COLOURS)
            assert colours is None, f"{name} has only {len(colours)} colours"
    assert not _started_since(started - 1, tmp_path)
