"""The package layering the architecture relies on (docs/ARCHITECTURE.md): data
flows wire codec -> session -> SQL planner, and no package imports its way back."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PROXY = Path(__file__).resolve().parents[1] / "proxy"
#: Packages that must stay below others: the codec and the planner are pure.
ALLOWED = {
    "wire": {"errors"},
    "sql": {"errors", "policy", "quoting"},
    "policy": {"config", "errors"},
    "errors": set(),
    "quoting": set(),
}


def _imports() -> dict[str, set[str]]:
    deps: dict[str, set[str]] = defaultdict(set)
    for path in PROXY.rglob("*.py"):
        rel = path.relative_to(PROXY).parts
        package = rel[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("proxy."):
                target = node.module.split(".")[1]
                if target != package:
                    deps[package].add(target)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("proxy.") and alias.name.split(".")[1] != package:
                        deps[package].add(alias.name.split(".")[1])
    return deps


def test_no_import_cycles_between_packages() -> None:
    deps = _imports()

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        stack = list(deps.get(start, ()))
        while stack:
            package = stack.pop()
            if package not in seen:
                seen.add(package)
                stack.extend(deps.get(package, ()))
        return seen

    cycles = sorted(p for p in deps if p in reachable(p))
    assert not cycles, f"packages in an import cycle: {cycles} ({dict(deps)})"


def test_the_codec_and_the_planner_import_nothing_above_them() -> None:
    deps = _imports()
    for package, allowed in ALLOWED.items():
        extra = deps.get(package, set()) - allowed
        assert not extra, f"proxy.{package} imports {sorted(extra)}"
