"""The house rules, checked on the source: imports run one way, commands stay apart, tasks are objects.

The layer order below is the one `docs/architecture.md` draws. A module may import from its own unit (the
prefix it matches) and from units of lower layers; never from a higher layer, nor from another unit of its
own layer. Every `import` counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dccnext_cli"
TESTS = Path(__file__).resolve().parent

# Lowest first. A unit is a module or a package prefix; the longest matching prefix names a module's unit.
LAYERS: list[tuple[str, ...]] = [
    ("dccnext_cli._version", "dccnext_cli.errors"),
    # export_formats: the names and files export writes, read by the CLI's help and early checks without torch
    ("dccnext_cli.common", "dccnext_cli.export_formats"),
    ("dccnext_cli.models", "dccnext_cli.data", "dccnext_cli.training"),
    ("dccnext_cli.classification", "dccnext_cli.dense"),
    ("dccnext_cli.tasks", "dccnext_cli.export", "dccnext_cli.viz", "dccnext_cli.benchmark"),
    ("dccnext_cli.cli",),
    ("dccnext_cli", "dccnext_cli.__main__"),  # the public API and `python -m`: nothing imports them
]
TASK_REGISTRY_MODULES = {"dccnext_cli.tasks", "dccnext_cli.dense.tasks", "dccnext_cli.classification.task"}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Package modules `name` imports (every import statement, resolved to the deepest module that exists)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule; `from pkg import name` the package itself
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _unit(module: str) -> tuple[int, str]:
    best = max((u for layer in LAYERS for u in layer if module == u or module.startswith(u + ".")), key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer), best


def test_every_module_has_a_layer():
    for module in MODULES:
        assert _unit(module)


def test_no_import_runs_upwards_or_sideways():
    wrong = []
    for module, targets in GRAPH.items():
        level, unit = _unit(module)
        for target in targets:
            target_level, target_unit = _unit(target)
            if target_unit == unit:
                continue
            if target_level >= level and target_unit != unit:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_commands_do_not_import_each_other():
    commands = {m for m in MODULES if m.startswith("dccnext_cli.cli.cmd_")}
    crossing = [f"{m} -> {t}" for m in commands for t in GRAPH[m] if t in commands]
    assert not crossing, crossing


def test_the_checker_sees_function_local_imports():
    """The graph counts imports inside functions: the checker itself would miss a hidden cycle otherwise."""
    source = "def f():\n    from ..models.weights import read_meta\n"
    tree = ast.parse(source)
    assert isinstance(tree.body[0].body[0], ast.ImportFrom)
    assert "dccnext_cli.models.weights" in GRAPH["dccnext_cli.models.pretrained"]
    assert "dccnext_cli.classification.train" in GRAPH["dccnext_cli.cli.cmd_train"]  # imported inside train_cmd


def _task_names() -> list[str]:
    from dccnext_cli.tasks import TASKS

    return list(TASKS)


def test_no_task_name_is_compared_as_a_string_outside_the_registry():
    names, found = _task_names(), []
    for module, path in MODULES.items():
        if module in TASK_REGISTRY_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            for side in [node.left, *node.comparators]:
                values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                hits = [v.value for v in values if isinstance(v, ast.Constant) and v.value in names]
                if hits:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} compares {hits}")
    assert not found, "\n".join(found)


def test_cli_task_choices_come_from_the_registry():
    from dccnext_cli.cli.options import Task

    assert [t.value for t in Task] == _task_names()


# Functions allowed past the limit, and why.
LONG_FUNCTIONS: dict[str, str] = {}


def test_functions_are_short():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                key = f"{path.relative_to(PACKAGE.parent)}:{node.name}"
                if lines > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                    long.append(f"{key} has {lines} lines")
    assert not long, "\n".join(long)


def test_no_module_global_of_the_package_is_reassigned():
    """Switches live in the operator settings; nothing assigns to another module's attributes."""
    found = []
    for path in MODULES.values():
        tree = ast.parse(path.read_text())
        imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    for a in n.names if n.level}
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id in imported:
                    found.append(f"{path.name}:{node.lineno} assigns {target.value.id}.{target.attr}")
    assert not found, found


def test_no_test_patches_a_module_attribute_of_the_package():
    """Tests change the operator through `use_operator_settings`, never by patching module attributes."""
    found = []
    for path in TESTS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {a.asname or a.name.split(".")[-1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   and (n.module or "").startswith("dccnext_cli") for a in n.names
                   if f"{n.module}.{a.name}" in MODULES}
        modules |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                    if a.name.startswith("dccnext_cli")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setattr" and node.args:
                first = node.args[0]
                if (isinstance(first, ast.Name) and first.id in modules) or (
                        isinstance(first, ast.Constant) and str(first.value).startswith("dccnext_cli")):
                    found.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert not found, found


def test_the_package_points_to_no_document_outside_the_repository():
    found = [str(p.relative_to(PACKAGE.parent)) for p in MODULES.values() if "shared/spec" in p.read_text()]
    assert not found, found
