"""The layers stay as drawn: read every product module's imports (no import runs) and
check there are no cycles, between modules or between the top-level packages, and that
each layer imports only the layers below it: api, then core and engine, then builders,
then controllers and workers (which never import each other, and each kind's package keeps
to itself), then cli."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "gptoss_operator"

# What each layer may import from the product besides itself (``gptoss_operator`` is the
# package's own ``__init__``: its version). The cli may import everything.
LAYERS: dict[str, set[str]] = {
    "api": set(),
    "core": {"api", "gptoss_operator"},
    "engine": {"api"},
    "builders": {"api", "core", "gptoss_operator"},
    "controllers": {"api", "builders", "core", "engine", "gptoss_operator"},
    # The workers read what the operator tells them through the API's contracts (the
    # batch plan, the download exit codes), never the builders that write it.
    "workers": {"api", "core", "engine", "gptoss_operator"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_imports(path: Path) -> Iterator[str]:
    """The product modules a file imports (``from gptoss_operator import x`` names x)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gptoss_operator" or node.module.startswith("gptoss_operator."):
                # ``from package import module`` names a module, else a symbol of the
                # module (see graph()).
                yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("gptoss_operator."))


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in product_imports(path):
            # ``from gptoss_operator.engine import client`` names a module or a symbol.
            target = imported if imported in modules else imported.rsplit(".", 1)[0]
            while target not in modules and "." in target:  # a namespace package
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_module_imports_itself_back() -> None:
    assert cycles(graph()) == []


def test_no_two_top_level_packages_import_each_other() -> None:
    edges: dict[str, set[str]] = {}
    for source, targets in graph().items():
        edges.setdefault(top(source), set()).update(
            top(t) for t in targets if top(t) != top(source)
        )
    assert cycles(edges) == []


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = [
        (source, target)
        for source, targets in graph().items()
        for target in targets
        if top(source) in LAYERS
        and top(target) != top(source)
        and top(target) not in LAYERS[top(source)]
    ]
    assert wrong == []


def test_the_check_sees_a_cycle_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "gptoss_operator.engine.client" in graph()["gptoss_operator.engine.generation"]


def test_every_package_is_a_known_layer() -> None:
    packages = {top(module) for module in graph()}
    assert packages == {*LAYERS, "cli", "gptoss_operator"}


# Each kind's controller and each worker is a package that keeps to itself. Besides its
# own modules, a kind's package may use the controllers' shared modules (``facts``: what
# the indexes hold of each object; ``tenancy``: the bindings of a model's tenants, which
# the job housekeeping keeps as it counts them; ``quota``: which tenants are at a limit,
# whose waiting jobs are told so and add no demand for replicas; ``usage``: what each
# tenant used, counted as its jobs and batches finish); the model's reconcile
# asks the autoscaler how many replicas to run. Only the wiring (``operator``,
# ``indexes``) brings the kinds together.
SIBLINGS: dict[str, set[str]] = {
    "controllers.model": {"controllers.facts", "controllers.autoscale"},
    "controllers.job": {
        "controllers.facts",
        "controllers.tenancy",
        "controllers.quota",
        "controllers.usage",
    },
    "controllers.batch": {"controllers.facts", "controllers.quota", "controllers.usage"},
    "controllers.autoscale": {"controllers.facts", "controllers.quota"},
    "controllers.facts": set(),
    "controllers.quota": {"controllers.facts"},
    "controllers.usage": {"controllers.facts"},
    "controllers.tenancy": set(),
    "workers.download": set(),
    "workers.sidecar": set(),
    "workers.batch": set(),
}


def unit(module: str) -> str:
    """``gptoss_operator.controllers.model.reconciler`` -> ``controllers.model``."""
    return ".".join(module.split(".")[1:3])


def test_no_kind_reaches_into_a_siblings_modules() -> None:
    wrong = [
        (source, target)
        for source, targets in graph().items()
        for target in targets
        if top(source) in ("controllers", "workers")
        and top(target) == top(source)
        and unit(target) != unit(source)
        and unit(target) not in SIBLINGS.get(unit(source), {unit(target)})
    ]
    assert wrong == []


def test_every_controller_and_worker_package_is_drawn() -> None:
    wiring = {"controllers.operator", "controllers.indexes", "controllers", "workers"}
    units = {unit(m) or top(m) for m in graph() if top(m) in ("controllers", "workers")}
    assert units - wiring == set(SIBLINGS)
