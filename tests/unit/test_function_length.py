"""No function in rerank_ray/ grows past 60 lines (``def`` line to last line, docstring included),
and no module past 500.

A long function is split into named phases with docstrings (STYLE.md, "a loop reads as its
phases"); declarative tables are the exception and are listed in ``ALLOWED`` by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import rerank_ray

MAX_LINES = 60
# (module path relative to the package, function name): tables, not logic.
ALLOWED = {("cli.py", "build_parser")}

PACKAGE = Path(rerank_ray.__file__).parent


def function_lengths(root: Path) -> dict[tuple[str, str], int]:
    """``(path relative to root, qualified name) -> lines`` of every function and method."""
    lengths = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                name = f"{prefix}{getattr(child, 'name', '')}"
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lengths[(str(path.relative_to(root)), name)] = child.end_lineno - child.lineno + 1
                    stack.append((child, f"{name}."))
                elif isinstance(child, ast.ClassDef):
                    stack.append((child, f"{name}."))
                else:
                    stack.append((child, prefix))
    return lengths


def test_the_counter_sees_nested_functions_and_methods(tmp_path):
    (tmp_path / "m.py").write_text(
        "class A:\n    def f(self):\n        def g():\n            return 1\n\n        return g\n"
    )
    assert function_lengths(tmp_path) == {("m.py", "A.f"): 5, ("m.py", "A.f.g"): 2}


def test_no_function_is_longer_than_60_lines():
    lengths = function_lengths(PACKAGE)
    assert set(ALLOWED) <= set(lengths), "an allowed function is gone: drop it from ALLOWED"
    long = {f"{path}::{name} ({n} lines)" for (path, name), n in lengths.items() if n > MAX_LINES}
    long -= {f"{path}::{name} ({lengths[(path, name)]} lines)" for path, name in ALLOWED}
    assert not long, f"split these into named phases (at most {MAX_LINES} lines each): {sorted(long)}"


MAX_MODULE_LINES = 500


def test_no_module_is_longer_than_500_lines():
    """A module past 500 lines holds more than one job: split it by job (docs/ARCHITECTURE.md)."""
    long = {
        f"{path.relative_to(PACKAGE)} ({n} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these by job (at most {MAX_MODULE_LINES} lines each): {sorted(long)}"
