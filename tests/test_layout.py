"""The house rules of the source tree, checked: small modules, short functions, the engine knows no method,
and no module reaches into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tribute"
FILES = sorted(p for p in SRC.rglob("*.py"))
MAX_FILE_LINES = 600
MAX_FUNCTION_CODE_LINES = 60
# The trainer's loop is the one function allowed to be long: its steps read best in order, in one place.
LONG_FUNCTIONS_ALLOWED = {("training.py", "fit")}
# Packages that hold methods or what is built on them; the engine (core/) may import none of them.
METHOD_PACKAGES = ("attribution", "lrp", "metrics", "robust", "explainers", "store", "viz", "report", "data",
                   "training", "cli", "demo")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _code_lines(node: ast.AST, lines: list[str]) -> int:
    """Lines of code in a function: blank lines, comments and its docstring do not count."""
    doc: set[int] = set()
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        doc = set(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for i in range(node.lineno, node.end_lineno + 1)
               if i not in doc and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module imported, names taken from it) for every tribute-internal import in ``path``."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "tribute":
                found.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "tribute"]
    return found


def test_the_checks_find_files():
    assert len(FILES) > 40


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_the_line_limit(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_FILE_LINES, f"{path.relative_to(SRC)} has {n} lines (limit {MAX_FILE_LINES}): split it by concept"


def test_no_function_over_the_code_line_limit():
    long = []
    for path in FILES:
        lines = path.read_text().splitlines()
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _code_lines(node, lines)
                if n > MAX_FUNCTION_CODE_LINES and (path.name, node.name) not in LONG_FUNCTIONS_ALLOWED:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines of code)")
    assert not long, "functions over the limit:\n" + "\n".join(long)


def test_the_engine_imports_no_method_package():
    bad = []
    for path in (SRC / "core").rglob("*.py"):
        for module, _ in _imports(path):
            top = module.split(".")[1] if "." in module else ""
            if top in METHOD_PACKAGES:
                bad.append(f"{path.relative_to(SRC)} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_private_names_imported_from_another_module():
    bad = []
    for path in FILES:
        for module, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{path.relative_to(SRC)}: from {module} import {', '.join(private)}")
    assert not bad, "\n".join(bad)


def test_the_code_line_count_ignores_docstrings_comments_and_blanks():
    source = 'def f():\n    """Doc\n    string."""\n\n    # why\n    x = 1\n    return x\n'
    node = ast.parse(source).body[0]
    assert _code_lines(node, source.splitlines()) == 3  # def, x = 1, return x
