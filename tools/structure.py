"""How the code is structured, in figures anyone can recompute: `python tools/structure.py`.

Reads the source with `ast` (nothing is imported or run) and prints: import cycles between the
project's modules (every import counts, also one inside a function body), project imports made
inside function bodies, files over 300 lines, the longest functions, and the README's length.
The layer contract itself is checked by import-linter (`.importlinter`); this is the report.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from frugal.codegraph import PACKAGES, imports, modules  # noqa: E402  (the same reading of the source as the cache keys)

LONG_FILE = 300


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan): each is at least one import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def functions(path: Path) -> list[tuple[int, str]]:
    """(lines, qualified name) of every function and method in the file."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out.append((child.end_lineno - child.lineno + 1, name))
                visit(child, f"{name}.")

    visit(tree, "")
    return out


def report(root: Path, top: int) -> str:
    known = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in known}
    inside: dict[str, list[str]] = {}  # "file:line" of an import statement inside a function -> the project modules it imports
    for module, path in known.items():
        for target, in_function, line in imports(module, path, known):
            graph[module].add(target)
            if in_function:
                inside.setdefault(f"{path.relative_to(root)}:{line}", []).append(target)
    found = cycles(graph)
    lengths = sorted(((len(p.read_text().splitlines()), p.relative_to(root)) for p in known.values()), reverse=True)
    longest = sorted(((n, f"{p.relative_to(root)}:{name}") for p in known.values() for n, name in functions(p)), reverse=True)
    readme = len((root / "README.md").read_text().splitlines())
    lines = [f"modules: {len(known)} in {', '.join(PACKAGES)}", f"import cycles (strongly connected groups): {len(found)}"]
    lines += [f"  {' <-> '.join(group)}" for group in found]
    lines.append(f"project import statements inside function bodies: {len(inside)}")
    lines += [f"  {where} -> {', '.join(targets)}" for where, targets in inside.items()]
    over = [(n, p) for n, p in lengths if n > LONG_FILE]
    lines.append(f"files over {LONG_FILE} lines: {len(over)}")
    lines += [f"  {n} {p}" for n, p in over]
    lines.append(f"longest {top} functions:")
    lines += [f"  {n} {name}" for n, name in longest[:top]]
    lines.append(f"README.md: {readme} lines")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT), help="the checkout to read (default: this one)")
    parser.add_argument("--top", type=int, default=10, help="how many of the longest functions to list")
    args = parser.parse_args()
    print(report(Path(args.root), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
