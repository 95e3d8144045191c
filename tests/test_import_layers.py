"""The package's imports point down only (docs/ARCHITECTURE.md, "Layers"), with no cycle.

Every `import` of a `mars_jax` module is read from the source (module level and inside
functions alike: an import moved into a function to dodge a cycle is still a cycle).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mars_jax"

# Layer of each top-level part of the package: a module may import its own layer and below.
LAYERS = {
    "tokens": 0,
    "outputs": 0,
    "digests": 0,
    "text": 1,
    "vq": 1,
    "model": 2,
    "data": 2,
    "sampling": 3,
    "demo": 3,
    "train_lib": 4,
    "runs": 5,
    "eval": 5,
    "bench": 6,
    # entry points (ENTRY_LAYER)
    "train": 7,
    "generate": 7,
    "caption": 7,
    "cascade": 7,
    "evaluate": 7,
    "convert": 7,
    "export": 7,
    "plot": 7,
    "sample_flags": 7,
    "cli": 0,
}
ENTRY_LAYER = 7


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path, module: str) -> set[str]:
    """`mars_jax` modules that `path` imports (for `from a import b`, `a.b` if a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mars_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                base = ".".join(module.split(".")[: -node.level] + [node.module])
            if not base.startswith("mars_jax"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _exists(sub) else base)
    return found - {module}


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        graph[module] = {m for m in _imports(path, module) if m in _all_modules()}
    return graph


def _all_modules() -> set[str]:
    return {_module_name(p) for p in PACKAGE.rglob("*.py")}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_part_has_a_layer():
    parts = {_part(m) for m in _all_modules()} - {""}
    assert parts <= set(LAYERS), f"add {sorted(parts - set(LAYERS))} to LAYERS"


def _points_up(module: str, dep: str) -> bool:
    """Up a layer, or sideways into another part of the same layer (entry points excepted:
    `cascade` builds on `generate`'s flags)."""
    own, other = _part(module), _part(dep)
    if not own or not other or own == other:
        return False
    if LAYERS[other] == LAYERS[own]:
        return LAYERS[own] < ENTRY_LAYER
    return LAYERS[other] > LAYERS[own]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} -> {dep}" for m, deps in graph.items() for dep in deps if _points_up(m, dep)
    )


def test_imports_point_down():
    upward = _upward(_graph())
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            # A package's __init__ is imported with its modules; skip that edge.
            if node.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


@pytest.mark.parametrize(
    "source, target",
    [("model", "sampling"), ("tokens", "model"), ("data", "model"), ("train_lib", "generate")],
)
def test_the_check_catches_known_upward_imports(source, target):
    fake = {
        f"mars_jax.{source}.a": {
            f"mars_jax.{target}.b" if target != "generate" else "mars_jax.generate"
        }
    }
    assert _upward(fake) == [f"mars_jax.{source}.a -> {next(iter(fake[f'mars_jax.{source}.a']))}"]
