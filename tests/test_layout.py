"""The layout keeps its promises: what each subpackage may import, one contract, small functions.

These read the source (AST), so they hold for code that no other test reaches.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import PROJECT_DIR

PACKAGE = PROJECT_DIR / "fraud_detection"
LONGEST_FUNCTION = {"fraud_detection": 60, "bench": 80}
DOMAIN_PACKAGES = ("data", "modelling", "steps", "reporting", "serving", "hardening")


def _modules(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.py") if ".venv" not in path.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (prose may name a tag)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_no_step_module_imports_another():
    steps = {path: _module_name(path) for path in _modules(PACKAGE / "steps")}
    for path, name in steps.items():
        others = {other for other in steps.values() if other != name and "__init__" not in other}
        imported = set(_imports(path)) & others
        assert not imported, f"{name} imports {sorted(imported)}: hand over through MLflow"


def test_the_config_package_imports_no_domain_module():
    for path in _modules(PACKAGE / "config"):
        domain = [
            module
            for module in _imports(path)
            if module.startswith("fraud_detection.")
            and module.split(".")[1] in (*DOMAIN_PACKAGES, "contract", "tracking", "cli")
        ]
        assert not domain, f"{path.name} imports {domain}"


def test_fraud_tags_are_named_only_in_the_contract_module():
    offenders = []
    for path in _modules(PACKAGE):
        if path.name == "contract.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and "fraud." in node.value
            ):
                offenders.append(f"{path.relative_to(PROJECT_DIR)}:{node.lineno} {node.value!r}")
    assert offenders == []


@pytest.mark.parametrize("root", list(LONGEST_FUNCTION))
def test_functions_are_short(root):
    limit = LONGEST_FUNCTION[root]
    long = []
    for path in _modules(PROJECT_DIR / root):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    long.append(
                        f"{path.relative_to(PROJECT_DIR)}:{node.lineno} {node.name} {length}"
                    )
    assert long == [], f"functions over {limit} lines"


def test_every_hardening_module_says_what_it_guards_against():
    for path in _modules(PACKAGE / "hardening"):
        if path.name == "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "Guards against" in doc, f"{path.name}: which failure does it prevent?"
        assert "A fork may" in doc, f"{path.name}: what does a fork lose without it?"


def test_no_test_imports_conftest():
    """Fixtures come from conftest.py by name; shared helpers live in tests/support."""
    for path in _modules(PROJECT_DIR / "tests"):
        imported = [module for module in _imports(path) if "conftest" in module]
        assert not imported, f"{path.relative_to(PROJECT_DIR)} imports {imported}"
