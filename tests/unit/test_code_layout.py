"""The program's modules import one another without a cycle (a type-only import counts too:
it is a cycle a later change turns into an import error)."""

from __future__ import annotations

import ast
from pathlib import Path

from components.stack_settings import PROJECT_DIR

PACKAGES = ("components", "cluster_logic")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The program's modules `path` names in any import statement, wherever it stands."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # `from package import module` names a module; `from module import name` the module.
            names = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known] or [base]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [path for package in PACKAGES for path in (PROJECT_DIR / package).rglob("*.py")]
    known = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, known) - {module_name(path)} for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            found.append(trail[trail.index(module) :] + [module])
            return
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_the_program_imports_without_cycles():
    graph = import_graph()
    assert "components.eks_platform.backups" in graph["components.eks_platform"]
    assert cycles(graph) == []


def test_the_cycle_check_notices_a_type_only_import():
    graph = import_graph()
    # What components/snapshot_backups.py did before the platform's split: the platform
    # imported it, and it imported the platform's AwsAccount back under TYPE_CHECKING.
    graph["components.eks_platform.backups"].add("components.eks_platform")
    assert cycles(graph), "the old circle between the platform and its backups"
