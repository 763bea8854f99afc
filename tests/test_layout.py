"""The house rules of docs/contracts.md, checked with `ast` over recal_jax/: the one-way
import graph, and no function over MAX_FUNCTION_LINES lines without a comment saying why."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "recal_jax"
MAX_FUNCTION_LINES = 60
# `# long: <why>` in the lines just above a def (its decorators included) or in its first lines
LONG_MARKER = re.compile(r"#\s*long:\s*\S")

# package -> the project packages (and top-level modules) it must never import
FORBIDDEN = {
    "calibration": "*",  # imports nothing of the project
    "losses": "*",
    "shapes": "*",
    "models": {"calibration", "losses"},
    "data": {"routing", "training", "rollout", "evaluation"},
    "routing": {"training", "evaluation", "rollout"},
    "evaluation": {"training"},
}


def _modules():
    return sorted(p for p in ROOT.rglob("*.py"))


def _package(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).with_suffix("").parts[0]


def _imported_packages(tree: ast.AST) -> set[str]:
    """Project packages / top-level modules named by any import in the module (lazy ones too)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "recal_jax":  # from recal_jax import calibration
                names = [f"recal_jax.{a.name}" for a in node.names]
        else:
            continue
        out |= {n.split(".")[1] for n in names if n.startswith("recal_jax.")}
    return out


def test_no_relative_imports():
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}: use absolute imports"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_one_way_import_graph(package):
    violations = []
    for path in _modules():
        if _package(path) != package:
            continue
        imported = _imported_packages(ast.parse(path.read_text())) - {package}
        bad = imported if FORBIDDEN[package] == "*" else imported & FORBIDDEN[package]
        if bad:
            violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _has_long_marker(lines: list[str], node) -> bool:
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    body = node.body[0].lineno
    window = lines[max(first - 4, 0):body + 2]
    return any(LONG_MARKER.search(line) for line in window)


def long_functions() -> list[str]:
    """'file::name (n lines)' of every function over MAX_FUNCTION_LINES lines with no reason given."""
    out = []
    for path in _modules():
        text = path.read_text()
        lines = text.splitlines()
        for node in _functions(ast.parse(text)):
            n = node.end_lineno - node.lineno + 1
            where = f"{path.relative_to(ROOT).as_posix()}::{node.name}"
            if n > MAX_FUNCTION_LINES and not _has_long_marker(lines, node):
                out.append(f"{where} ({n} lines)")
    return out


def test_no_long_function_without_a_reason():
    assert long_functions() == [], (
        f"functions over {MAX_FUNCTION_LINES} lines: split them, or say why above the def with '# long: <why>'")


def test_the_checks_see_what_they_should():
    tree = ast.parse("import recal_jax.routing.answers\nfrom recal_jax import calibration\n"
                     "def f():\n    from recal_jax.training import grpo\n")
    assert _imported_packages(tree) == {"routing", "calibration", "training"}
    body = "def f():\n" + "    x = 1\n" * 70
    for src, marked in ((body, False), ("# long: a reason\n" + body, True)):
        node = next(_functions(ast.parse(src)))
        assert _has_long_marker(src.splitlines(), node) == marked
