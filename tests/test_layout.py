"""The house rules of docs/contracts.md, checked with `ast` over recal_jax/: the one-way
import graph between packages, no import cycle between modules, and no function over
MAX_FUNCTION_LINES lines without a comment saying why."""

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


def module_name(path: pathlib.Path) -> str:
    """recal_jax/evaluation/plots.py -> recal_jax.evaluation.plots; a package's __init__.py is the package."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _parents(name: str) -> list[str]:
    """recal_jax.a.b.c -> [recal_jax.a, recal_jax.a.b]: the packages Python initialises before it."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _resolve(name: str, modules: set[str]) -> str | None:
    """The project module that running `import name` loads last: name itself, or for
    `from pkg import attr` (name pkg.attr) the longest prefix that is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name if name.startswith("recal_jax") else None


def module_imports(importer: str, tree: ast.AST, modules: set[str]) -> set[str]:
    """Project modules whose code runs when `importer` imports what it names, from every
    import in the module, function-level ones included (see test_no_import_cycle): each
    named module and each of its parent packages, except the packages that contain the
    importer (those are initialised before it, never because of it)."""
    own = {"recal_jax", importer, *_parents(importer)}
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in filter(None, (_resolve(n, modules) for n in names)):
            out |= {m for m in (*_parents(target), target) if m == target or m not in own}
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (module_imports), over recal_jax/."""
    paths = {module_name(p): p for p in _modules()}
    return {name: module_imports(name, ast.parse(path.read_text()), set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the directed graph (a self-import included), or None
    when it is acyclic. Depth-first search, iterative (no recursion limit)."""
    state = {}  # node -> "open" while on the search path, "done" after
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph.get(root, ())))]
        state[root] = "open"
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = "open"
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycle():
    # Function-level imports count: a lazy import only hides a cycle from the interpreter
    # (it breaks it at run time, by hand), while the two modules still cannot be read,
    # tested or moved one without the other: the cycle this test is there to prevent.
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_on_small_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None  # a diamond is no cycle
    cycle = find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["a", "b", "c"]
    assert find_cycle({"x": {"x"}}) == ["x", "x"]
    assert find_cycle({"a": {"b"}, "b": {"c", "e"}, "c": set(), "e": {"b"}}) == ["b", "e", "b"]


def test_module_imports_sees_lazy_imports_and_parent_packages():
    modules = {"recal_jax", "recal_jax.ev", "recal_jax.ev.a", "recal_jax.ev.b", "recal_jax.tr", "recal_jax.tr.g"}
    src = "from recal_jax.ev import b\ndef f():\n    from recal_jax.tr.g import h\n"
    # inside its own package: b only; from outside: the package's __init__ runs too
    assert module_imports("recal_jax.ev.a", ast.parse(src), modules) == {"recal_jax.ev.b", "recal_jax.tr",
                                                                          "recal_jax.tr.g"}
    assert module_imports("recal_jax.tr", ast.parse("from recal_jax.ev.a import x"), modules) == {
        "recal_jax.ev", "recal_jax.ev.a"}
    graph = {"recal_jax.ev.a": module_imports("recal_jax.ev.a", ast.parse("from recal_jax.ev import b"), modules),
             "recal_jax.ev.b": module_imports("recal_jax.ev.b", ast.parse("def f():\n    import recal_jax.ev.a"),
                                              modules)}
    assert find_cycle(graph) == ["recal_jax.ev.a", "recal_jax.ev.b", "recal_jax.ev.a"]


REGISTRY = ROOT / "calibration" / "config.py"  # the one home of the reward components' names


def component_name_copies(tree: ast.AST, names: tuple[str, ...]) -> list[int]:
    """Line numbers of tuple / list / set literals holding two or more of `names` as strings:
    a copy of the registry (reading a single name, as in a metric key, is no copy)."""
    return [node.lineno for node in ast.walk(tree) if isinstance(node, (ast.Tuple, ast.List, ast.Set))
            and sum(isinstance(e, ast.Constant) and e.value in names for e in node.elts) >= 2]


def test_reward_components_are_named_in_one_place():
    from recal_jax.calibration.config import COMPONENTS

    paths = [p for p in (*_modules(), *sorted((ROOT.parent / "experiments").rglob("*.py"))) if p != REGISTRY]
    copies = [f"{path.relative_to(ROOT.parent)}:{line}" for path in paths
              for line in component_name_copies(ast.parse(path.read_text()), COMPONENTS)]
    assert not copies, f"copies of calibration.config.COMPONENTS (import its names and indices instead): {copies}"
    assert component_name_copies(ast.parse(REGISTRY.read_text()), COMPONENTS)  # the check sees the registry
    assert component_name_copies(ast.parse('AUX = ["info", "route"]\nx = ("balance",)'), COMPONENTS) == [1]


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
