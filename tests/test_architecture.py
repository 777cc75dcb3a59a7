"""The package's layering, checked on the source: imports only go down the stack and no modules import each
other in a cycle (docs/architecture.md draws the stack)."""

from __future__ import annotations

import ast
from pathlib import Path

import vit_sae_hooks

PACKAGE = Path(vit_sae_hooks.__file__).parent

# Bottom to top; a module may import modules of its own layer or of layers below it.
LAYERS = (
    ("errors",),
    ("_tl", "checks", "files", "cli_support"),
    ("hook_names", "tokens", "hub"),
    ("kernels",),
    ("sae", "pretrained"),
    ("model",),
    ("data", "datasets"),
    ("experiments",),
    ("evals",),
    ("training", "train"),
    ("viz",),
    ("demo",),
    ("cli", "__init__"),
)
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(("vit_sae_hooks", *parts))


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports when it runs (imports under ``TYPE_CHECKING`` excluded)."""
    tree = ast.parse(path.read_text())
    type_checking = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
        for statement in block.body
        for node in ast.walk(statement)
    }
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            # `from package import submodule` imports the submodule; `from module import name` the module.
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found & modules


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: _runtime_imports(path, set(modules)) - {name} for name, path in modules.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return LAYER_OF[top]


def test_every_top_level_module_has_a_layer() -> None:
    tops = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in PACKAGE.rglob("*.py")}
    assert tops <= set(LAYER_OF), f"give these a layer in LAYERS and docs/architecture.md: {sorted(tops - set(LAYER_OF))}"


def test_imports_only_go_down_the_stack() -> None:
    upward = [
        f"{module} (layer {_layer(module)}) imports {imported} (layer {_layer(imported)})"
        for module, imports in _graph().items()
        for imported in imports
        if _layer(imported) > _layer(module)
    ]
    assert not upward, "imports that run back up:\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    graph = _graph()
    # A package's __init__ importing its own submodules is how packages export; only cycles between modules count.
    edges = {
        module: {imported for imported in imports if not module.startswith(imported + ".")}
        for module, imports in graph.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for imported in sorted(edges[module]):
            if state.get(imported) == 1:
                cycles.append([*stack[stack.index(imported):], imported])
            elif imported not in state:
                visit(imported, [*stack, imported])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)
