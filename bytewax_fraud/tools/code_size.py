"""Print the largest functions and modules of a source tree, counted from its AST.

    python -m bytewax_fraud.tools.code_size                 # the package in this checkout
    python -m bytewax_fraud.tools.code_size --rev b321800   # the package at a git revision

A function's size is its line span (`end_lineno - lineno + 1`, decorators and
docstring included); a module's size is its line count. Nested functions count
inside their parent and again on their own.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sized:
    """One function or module and its size in lines."""

    name: str
    lines: int


def functions(path: str, source: str) -> Iterator[Sized]:
    """Yield every function and method of one module with its line span."""
    tree = ast.parse(source, filename=path)
    stack: list[tuple[ast.AST, str]] = [(tree, path)]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}:{child.name}" if node is tree else f"{prefix}.{child.name}"
                if not isinstance(child, ast.ClassDef):
                    end = child.end_lineno or child.lineno
                    yield Sized(name, end - child.lineno + 1)
                stack.append((child, name))
            else:
                stack.append((child, prefix))


def sources(root: str, rev: str | None) -> dict[str, str]:
    """The Python files under `root`, from the working tree or from a git revision."""
    if rev is None:
        return {str(p): p.read_text() for p in sorted(Path(root).rglob("*.py"))}
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, root],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return {
        name: subprocess.run(
            ["git", "show", f"{rev}:{name}"], check=True, capture_output=True, text=True
        ).stdout
        for name in names
        if name.endswith(".py")
    }


def main(argv: list[str] | None = None) -> None:
    """Print the top functions and modules by size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="bytewax_fraud", help="folder to count")
    parser.add_argument("--rev", default=None, help="git revision (default: working tree)")
    parser.add_argument("--top", type=int, default=15, help="how many of each to print")
    args = parser.parse_args(argv)
    files = sources(args.root, args.rev)
    funcs = sorted(
        (f for path, text in files.items() for f in functions(path, text)),
        key=lambda s: (-s.lines, s.name),
    )
    mods = sorted(
        (Sized(path, text.count("\n")) for path, text in files.items()),
        key=lambda s: (-s.lines, s.name),
    )
    print(f"{len(files)} modules, {sum(m.lines for m in mods)} lines, {len(funcs)} functions")
    print(f"functions over 50 lines: {sum(1 for f in funcs if f.lines > 50)}")
    print("largest functions:")
    for f in funcs[: args.top]:
        print(f"  {f.lines:5d}  {f.name}")
    print("largest modules:")
    for m in mods[: args.top]:
        print(f"  {m.lines:5d}  {m.name}")


if __name__ == "__main__":
    main()
