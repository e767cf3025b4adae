"""What the documentation promises, read from its files: the forking guide's diffs."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import PROJECT_DIR

FORKING_GUIDE = PROJECT_DIR / "docs" / "forking.md"


def forking_diffs() -> list[str]:
    """The ```diff blocks of docs/forking.md, in order."""
    return re.findall(r"```diff\n(.*?)```", FORKING_GUIDE.read_text(), re.DOTALL)


def changed_files(diff: str) -> list[str]:
    return re.findall(r"^\+\+\+ b/(\S+)", diff, re.MULTILINE)


def apply_diff(diff: str, directory: Path, check: bool = False) -> None:
    import subprocess

    # --recount: the diffs' blank context lines carry no trailing space in Markdown.
    command = ["git", "apply", "--recount", *(["--check"] if check else []), "-"]
    result = subprocess.run(
        command, cwd=directory, input=diff, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"the diff does not apply in {directory}: {result.stderr}"
