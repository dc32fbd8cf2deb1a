"""The project's own import graph, read from the source with `ast` (nothing is imported): what code a module runs.

A stage's cache key takes the hash of every project module it can run (tasks/plumbing/caching.py),
and dvc.yaml's code deps are the files of the same closure (tools/dvc_sync.py): neither is a hand-kept
list, so editing any module invalidates exactly the stages that run it. Every import counts, also
one inside a function body (it runs when the function does); imports under `if TYPE_CHECKING:` do not.

A module that runs code it does not import by name (plugins it discovers, an app another process
runs) says so with a module-level `CODE_DEPS = ("package.or.module", ...)`: each entry adds that
module, or every module of that package, to whatever runs it.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("frugal", "ml", "tasks", "flows")  # the project's importable top-level packages


def modules(root: Path | None = None) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages (under `root`, default: this checkout)."""
    root, found = root or ROOT, {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (the longest known prefix), or None when it is not the project's."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    """ids of the statements under `if TYPE_CHECKING:` (they never run)."""
    ids: set[int] = set()
    for block in ast.walk(tree):
        if isinstance(block, ast.If) and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING":
            ids |= {id(node) for stmt in block.body for node in ast.walk(stmt)}
    return ids


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """(imported project module, made inside a function body?, line) for each import of the file."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_blocks(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                names = [f"{base}.{alias.name}" for alias in child.names]  # `from pkg import mod` imports pkg.mod
            else:
                visit(child, nested)
                continue
            if id(child) in skip:
                continue
            for name in names:
                target = _resolve(name, known)
                if target and target != module:
                    out.append((target, in_function, child.lineno))

    visit(tree, False)
    return out


def code_deps(path: Path) -> tuple[str, ...]:
    """The module's declared `CODE_DEPS` (see the module docstring), or ()."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CODE_DEPS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return ()


def _parents(module: str, known: dict[str, Path]) -> list[str]:
    """The packages whose __init__ runs before `module` (Python imports every parent first)."""
    parts = module.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in known]


def _under(prefix: str, known: dict[str, Path]) -> list[str]:
    return [name for name in known if name == prefix or name.startswith(f"{prefix}.")]


@lru_cache(maxsize=8)
def _graph(root: Path, stamp: tuple[tuple[str, int, int], ...]) -> dict[str, frozenset[str]]:
    known = modules(root)
    edges: dict[str, frozenset[str]] = {}
    for name, path in known.items():
        targets = {target for target, _, _ in imports(name, path, known)} | set(_parents(name, known))
        edges[name] = frozenset(targets)
    return edges


def _stamp(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of the source files: the graph is read again when any of them changes."""
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in modules(root).values())


def graph(root: Path | None = None) -> dict[str, frozenset[str]]:
    """Module -> the project modules it imports (anywhere in its body) and the packages above it."""
    root = root or ROOT
    return _graph(root, _stamp(root))


def closure(roots: Iterable[str], root: Path | None = None, skip: Iterable[str] = ()) -> list[str]:
    """Every project module that running `roots` can run: imports, parents and declared CODE_DEPS, transitively.

    `skip` names CODE_DEPS entries not to follow (a compression step runs one discovered method, not all of them).
    """
    known, edges, skipped = modules(root), graph(root), set(skip)
    seen: set[str] = set()
    todo = [name for name in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in known:
            raise KeyError(f"{name!r} is not a module of the project under {root or ROOT}")
        seen.add(name)
        todo += [*edges[name], *(m for dep in code_deps(known[name]) if dep not in skipped for m in _under(dep, known))]
    return sorted(seen)


def files(roots: Iterable[str], root: Path | None = None, skip: Iterable[str] = ()) -> list[Path]:
    """The source files of `closure(roots)`, relative to the project root."""
    known = modules(root)
    return [known[name].relative_to(root or ROOT) for name in closure(roots, root, skip)]


def code_version(roots: Iterable[str], root: Path | None = None, skip: Iterable[str] = ()) -> str:
    """A short hash of the names and source of every module `roots` can run."""
    known, digest = modules(root), hashlib.sha256()
    for name in closure(roots, root, skip):
        digest.update(name.encode() + b"\0" + known[name].read_bytes())
    return digest.hexdigest()[:16]
