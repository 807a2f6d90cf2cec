"""The package's own source: its import graph, read with `ast` (nothing is imported), and a
digest of the code a result depends on.

One reader serves two checks that must agree. `tests/code/test_layout.py` asserts that each
DVC stage's code deps cover its module's import closure, so a code change always reruns the
stage; training fingerprints its checkpoints with `code_digest` of the same closure, so a
rerun never resumes a checkpoint written by other code (a finished checkpoint of the old
code once made a changed training loop finish in 6.6 s with the old weights).
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "mmfuse"
SRC = Path(__file__).resolve().parent.parent


def module_file(module: str) -> Path | None:
    """The file of a dotted mmfuse module (a package's __init__.py), or None if it is not one."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _packages_of(module: str) -> list[str]:
    """mmfuse.a.b -> [mmfuse, mmfuse.a, mmfuse.a.b]: importing a module runs every package above it."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every mmfuse module `module` imports, at any depth of its body (lazy imports count: they run too)."""
    path = module_file(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE and module_file(name) is not None:
                found.update(p for p in _packages_of(name) if module_file(p) is not None)
    return frozenset(found - {module})


def closure(module: str) -> set[str]:
    """`module`, the packages above it and everything they import, transitively."""
    todo = [m for m in _packages_of(module) if module_file(m) is not None]
    seen: set[str] = set()
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imports_of(current) - seen)
    return seen


def all_modules() -> list[str]:
    return sorted(module_name(p) for p in (SRC / PACKAGE).rglob("*.py"))


def code_digest(module: str) -> str:
    """SHA-256 over the module names and bytes of `module`'s import closure, in name order.

    Bytes, not mtimes: a checkout or a copy that leaves the code as it was changes nothing.
    """
    digest = hashlib.sha256()
    for name in sorted(closure(module)):
        digest.update(name.encode() + b"\0" + module_file(name).read_bytes() + b"\0")
    return digest.hexdigest()
