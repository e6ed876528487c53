"""The import graph of a package, read from the AST (nothing is imported), and what is wrong with it.

    python tests/importgraph.py thomas_cli          # edges, cycles, largest files and functions
    python tests/importgraph.py thomas_cli --json

An edge A -> B means module A imports module B; `level` is "module" for an import at the top of a
module (it runs when A is imported) and "function" for one inside a function or method (it runs when
that is called). `from . import x` counts as an import of the module `pkg.x` when x is a module.
Imports under `if TYPE_CHECKING:` are left out. Used by tests/test_cli_layers.py.
"""
from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    level: str          # "module" | "function"
    line: int


def modules(package: str, root: Path = ROOT) -> dict[str, Path]:
    """{dotted module name: file} of every .py under the package folder."""
    base = root / package.replace(".", "/")
    out = {}
    for p in sorted(base.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, is_pkg: bool, level: int, name: str | None) -> str:
    """The absolute module of a (possibly relative) `from ... import` / `import` target."""
    if level == 0:
        return name or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def edges(package: str, root: Path = ROOT) -> list[Edge]:
    """Every import inside the package of a module of the package."""
    mods = modules(package, root)
    found: list[Edge] = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))

        def visit(node, in_func: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _type_checking(child):
                    continue
                func = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                level = "function" if in_func else "module"
                if isinstance(child, ast.Import):
                    for a in child.names:
                        _add(a.name, child.lineno, level)
                elif isinstance(child, ast.ImportFrom):
                    target = _resolve(mod, is_pkg, child.level, child.module)
                    for a in child.names:
                        sub = f"{target}.{a.name}"
                        _add(sub if sub in mods else target, child.lineno, level)
                visit(child, func)

        def _add(target: str, line: int, level: str) -> None:
            # `import a.b.c` imports a.b.c and its parents; the deepest module of the package counts
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != mod:
                found.append(Edge(mod, target, level, line))

        visit(tree, False)
    return found


def cycles(es: list[Edge], levels=("module", "function")) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in es:
        if e.level in levels:
            graph.setdefault(e.src, set()).add(e.dst)
            graph.setdefault(e.dst, set())
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(out)


def function_sizes(package: str, root: Path = ROOT) -> list[tuple[int, str]]:
    """(lines, 'module:qualname') of every function and method, largest first."""
    rows = []
    for mod, path in modules(package, root).items():
        tree = ast.parse(path.read_text(), str(path))

        def walk(node, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    rows.append((child.end_lineno - child.lineno + 1, f"{mod}:{prefix}{child.name}"))
                    walk(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")

        walk(tree, "")
    return sorted(rows, reverse=True)


def file_sizes(package: str, root: Path = ROOT) -> list[tuple[int, str]]:
    return sorted(((len(p.read_text().splitlines()), m) for m, p in modules(package, root).items()), reverse=True)


def summary(package: str) -> dict:
    es = edges(package)
    pairs = {(e.src, e.dst, e.level) for e in es}             # one edge per module pair and level
    return {"package": package, "modules": len(modules(package)),
            "edges": {"module": sum(lv == "module" for _, _, lv in pairs),
                      "function": sum(lv == "function" for _, _, lv in pairs)},
            "cycles_module_level": cycles(es, ("module",)),
            "cycles_all_imports": cycles(es),
            "function_level_imports": sorted({f"{e.src} -> {e.dst}" for e in es if e.level == "function"}),
            "largest_files": file_sizes(package)[:8], "largest_functions": function_sizes(package)[:8]}


if __name__ == "__main__":
    pkg = next((a for a in sys.argv[1:] if not a.startswith("-")), "thomas_cli")
    doc = summary(pkg)
    if "--json" in sys.argv:
        print(json.dumps(doc, indent=1))
    else:
        print(f"{pkg}: {doc['modules']} modules, {doc['edges']['module']} module-level and "
              f"{doc['edges']['function']} function-level imports inside the package")
        for key in ("cycles_module_level", "cycles_all_imports"):
            print(f"{key}: {len(doc[key])}")
            for c in doc[key]:
                print(f"  {len(c)} modules: {' '.join(c)}")
        print("largest files:", ", ".join(f"{m} {n}" for n, m in doc["largest_files"]))
        print("largest functions:", ", ".join(f"{m} {n}" for n, m in doc["largest_functions"]))
