"""The layout rules, checked from the AST (nothing is imported):

- no .py file over 600 lines (tests: 800), no function over 80 lines outside tests/;
- no import cycle in device_agent or thomas_cli (imports inside functions count too);
- device_agent imports only the standard library, numpy and pyopencl, never thomas_cli;
- ops never import a backend;
- transports import from the agent only protocol, errors and fsutil.

`make sz` prints the same report: python tests/test_layout_rules.py
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from importgraph import ROOT, cycles, edges  # noqa: E402

TREES = ("device_agent", "thomas_cli", "benchmarks", "tests")
MAX_LINES, MAX_TEST_LINES, MAX_FUNC = 600, 800, 80
AGENT_THIRD_PARTY = {"numpy", "pyopencl"}
TRANSPORT_MAY_IMPORT = {"device_agent.protocol", "device_agent.errors", "device_agent.fsutil"}


def _files(tree: str, root: Path = ROOT) -> list[Path]:
    return [p for p in sorted((root / tree).rglob("*.py")) if "__pycache__" not in p.parts]


def _rel(p: Path, root: Path = ROOT) -> str:
    return str(p.relative_to(root))


def long_files() -> list[str]:
    out = []
    for tree in TREES:
        limit = MAX_TEST_LINES if tree == "tests" else MAX_LINES
        for p in _files(tree):
            n = len(p.read_text().splitlines())
            if n > limit:
                out.append(f"{_rel(p)}: {n} lines (limit {limit})")
    return out


def long_functions(root: Path = ROOT) -> list[str]:
    out = []
    for tree in TREES[:3]:
        for p in _files(tree, root):
            for node in ast.walk(ast.parse(p.read_text(), str(p))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNC:
                        out.append(f"{_rel(p, root)}:{node.lineno} {node.name}: {n} lines (limit {MAX_FUNC})")
    return out


def imports_of(p: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a file (relative ones resolved)."""
    mod = ".".join(p.relative_to(root).with_suffix("").parts)
    pkg = mod if p.name == "__init__.py" else mod.rpartition(".")[0]
    if p.name == "__init__.py":
        pkg = pkg.rpartition(".")[0] if pkg.endswith(".__init__") else pkg
    out = []
    for node in ast.walk(ast.parse(p.read_text(), str(p))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.removesuffix(".__init__").split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            out += [(f"{base}.{a.name}" if base else a.name, node.lineno) for a in node.names] or [(base, node.lineno)]
    return out


def agent_imports(root: Path = ROOT) -> list[str]:
    """device_agent importing anything but the standard library, numpy, pyopencl and itself."""
    allowed = set(sys.stdlib_module_names) | AGENT_THIRD_PARTY | {"device_agent", "__future__"}
    return [f"{_rel(p, root)}:{line} imports {name}" for p in _files("device_agent", root)
            for name, line in imports_of(p, root) if name.split(".")[0] not in allowed]


def ops_to_backends(root: Path = ROOT) -> list[str]:
    return [f"{_rel(p, root)}:{line} imports {name}" for p in _files("device_agent/ops", root)
            for name, line in imports_of(p, root) if name.startswith("device_agent.backends")]


def transport_imports() -> list[str]:
    bad = []
    for p in _files("thomas_cli/transport"):
        for name, line in imports_of(p):
            if name.startswith("device_agent") and not any(name == m or name.startswith(m + ".")
                                                           for m in TRANSPORT_MAY_IMPORT):
                bad.append(f"{_rel(p)}:{line} imports {name}")
    return bad


def import_cycles() -> list[str]:
    return [f"{pkg}: " + " -> ".join(c) for pkg in ("device_agent", "thomas_cli") for c in cycles(edges(pkg))]


RULES = {
    "files over the line limit": long_files,
    "functions over 80 lines": long_functions,
    "import cycles": import_cycles,
    "the agent importing beyond stdlib/numpy/pyopencl": agent_imports,
    "ops importing a backend": ops_to_backends,
    "transports importing more of the agent than protocol/errors/fsutil": transport_imports,
}


@pytest.mark.parametrize("rule", list(RULES))
def test_layout_rule(rule):
    broken = RULES[rule]()
    assert not broken, f"{rule}:\n  " + "\n  ".join(broken)


def test_the_checks_see_violations(tmp_path):
    """The scanners find what they look for (so a green run means something)."""
    p = tmp_path / "device_agent" / "ops" / "probe.py"
    p.parent.mkdir(parents=True)
    p.write_text("import thomas_cli\nfrom ..backends import opencl\n\ndef f():\n" + "    x = 1\n" * 90)
    assert any("probe" in s for s in long_functions(tmp_path))
    assert any("probe" in s and "thomas_cli" in s for s in agent_imports(tmp_path))
    assert any("probe" in s for s in ops_to_backends(tmp_path))


if __name__ == "__main__":
    for rule, check in RULES.items():
        broken = check()
        print(f"{'ok ' if not broken else 'BAD'} {rule}" + "".join(f"\n      {b}" for b in broken))
