"""The documentation stays true: the forking guide's diffs apply; links and sizes hold."""

from __future__ import annotations

import re

import pytest

from tests.support import PROJECT_DIR
from tests.support.docs import apply_diff, changed_files, forking_diffs

README = PROJECT_DIR / "README.md"
DOCS = PROJECT_DIR / "docs"


def test_the_forking_guide_has_three_worked_edits_of_at_most_two_package_files():
    diffs = forking_diffs()
    assert len(diffs) == 3
    for diff in diffs:
        package = [name for name in changed_files(diff) if name.startswith("fraud_detection/")]
        assert 1 <= len(package) <= 2, package


@pytest.mark.parametrize("index", range(3))
def test_each_forking_diff_applies_to_this_tree(index):
    """The slow layer runs the pipeline on each (tests/integration/test_forking.py)."""
    apply_diff(forking_diffs()[index], PROJECT_DIR, check=True)


def test_the_readme_is_a_newcomers_page():
    assert len(README.read_text().splitlines()) <= 200


def test_every_relative_link_of_the_readme_and_docs_exists():
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_nothing_names_a_path_outside_the_repository():
    """Every relative path a page names (a link or plain text, ``../...``) stays inside the
    repository: the project stands on its own."""
    root = PROJECT_DIR.resolve()
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for path in re.findall(r"(?<![\w./])(?:\.\./)+[\w.\-/]*", page.read_text()):
            assert (page.parent / path).resolve().is_relative_to(root), f"{page.name}: {path}"


def test_every_quoted_result_file_is_committed():
    """Every figure in docs/ names the JSON it comes from: that file must be in the repository."""
    for page in sorted(DOCS.glob("*.md")):
        for name in set(re.findall(r"bench/results/[\w.\-]+\.json", page.read_text())):
            assert (PROJECT_DIR / name).is_file(), f"{page.name} quotes {name}, not committed"


def test_ci_runs_the_readmes_two_commands_exactly():
    commands = re.findall(r"```bash\n(.+?)\n```", README.read_text())[:2]
    ci = (PROJECT_DIR / ".ci" / "run").read_text()
    assert len(commands) == 2
    for command in commands:
        assert command in ci, command
