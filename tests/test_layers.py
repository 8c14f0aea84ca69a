"""The package's layers: every import in autoseg/ (function-level ones included) goes to the same layer or
a lower one, and no module imports itself back through others.

The order (docs/architecture.md draws it) runs from plain data and files up to the command line. A
new module belongs to the layer of its package (the longest prefix below); a module in no layer
fails the test, so placing it is a decision, not an accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "autoseg"

LAYERS = [
    ["autoseg", "autoseg.errors"],
    ["autoseg.artifacts"],
    ["autoseg.workspace", "autoseg.hardware", "autoseg.device", "autoseg.cropping", "autoseg.processes"],
    ["autoseg.io", "autoseg.dicom", "autoseg.dicom_seg"],
    ["autoseg.dataset", "autoseg.demo"],
    ["autoseg.case_validation"],
    ["autoseg.check", "autoseg.fingerprint"],
    ["autoseg.metrics"],
    ["autoseg.evaluation", "autoseg.postprocessing", "autoseg.ensembling", "autoseg.statistics", "autoseg.figures"],
    ["autoseg.network"],
    ["autoseg.preprocessing"],
    ["autoseg.planning"],
    ["autoseg.checkpoint", "autoseg.cascade", "autoseg.bundle"],
    ["autoseg.inference"],
    ["autoseg.training"],
    ["autoseg.budget"],
    ["autoseg.cross_validation", "autoseg.mirror_choice"],
    ["autoseg.selection"],
    ["autoseg.stages"],
    ["autoseg.api"],
    ["autoseg.cli", "autoseg.console", "autoseg.torchrun"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The autoseg modules `path` imports anywhere in its body: `import a.b`, `from a.b import c` (c itself
    when it is a submodule, else a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "autoseg")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "autoseg":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return found


def layer_of(module: str) -> int | None:
    best, best_length = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "autoseg" and module.startswith(prefix + "."))
            if matches and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_modules(path, modules) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_every_module_has_a_layer():
    assert [m for m in all_modules() if layer_of(m) is None] == []


def test_imports_never_go_up_the_layers():
    upward = [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
              for module, targets in import_graph().items() for target in sorted(targets)
              if layer_of(target) is not None and layer_of(target) > layer_of(module)]
    assert upward == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checker_sees_cycles_and_function_level_imports(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from autoseg.training import trainer\n    import autoseg.device\n")
    modules = {"autoseg.training.trainer": Path(), "autoseg.device": Path()}
    assert imported_modules(source, modules) == {"autoseg.training.trainer", "autoseg.device"}
    assert layer_of("autoseg.training.trainer") > layer_of("autoseg.inference.model")
