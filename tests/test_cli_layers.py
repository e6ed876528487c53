"""The CLI's layers (issue 16 item 1), read from the AST (tests/importgraph.py): app.py at the bottom,
services in the middle, commands/ on top; no import cycle at all; command modules are not libraries;
runs.py alone writes run records; the global options live on the Click context, not in a module global;
events are read as dataclasses (the string "ev" only in the handshake)."""
from __future__ import annotations

import ast

import pytest

from importgraph import ROOT, cycles, edges, modules

PKG = "thomas_cli"
CMDS = "thomas_cli.commands"
EDGES = edges(PKG)
MODS = modules(PKG)


def is_command(mod: str) -> bool:
    return mod == CMDS or mod.startswith(CMDS + ".")


def _where(es) -> list[str]:
    return [f"{e.src}:{e.line} -> {e.dst} ({e.level})" for e in es]


def test_importgraph_sees_a_cycle_when_there_is_one(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    es = edges("pkg", tmp_path)
    assert cycles(es) == [["pkg.a", "pkg.b"]] and cycles(es, ("module",)) == []


def test_no_import_cycle_in_the_cli():
    assert cycles(EDGES) == [], "module- and function-level imports together"


def test_app_imports_nothing_of_the_cli():
    assert _where(e for e in EDGES if e.src == "thomas_cli.app") == []


def test_services_never_import_a_command():
    assert _where(e for e in EDGES if is_command(e.dst) and not is_command(e.src) and e.src != "thomas_cli.main") == []


def test_command_modules_are_not_libraries():
    """A command module is imported by commands/__init__ alone (to register it); common.py by commands."""
    shared = (CMDS, f"{CMDS}.common")
    bad = [e for e in EDGES if is_command(e.dst) and e.dst not in shared and e.src != CMDS]
    assert _where(bad) == []
    assert {m for m in MODS if is_command(m)} - {e.dst for e in EDGES if e.src == CMDS} == {CMDS, f"{CMDS}.common"}


def _writes(mod: str):
    """(line, what) of every direct write of a host file that could be a run record: store.write_json /
    save_run / remove_run not called through runs, and open() for writing."""
    for node in ast.walk(ast.parse(MODS[mod].read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        through_runs = isinstance(f, ast.Attribute) and getattr(f.value, "id", None) == "runs"
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        if name in ("write_json", "save_run", "remove_run", "write_result") and not through_runs:
            yield node.lineno, name
        mode = node.args[1] if name == "open" and len(node.args) > 1 else None
        if isinstance(mode, ast.Constant) and str(mode.value)[:1] in "aw":
            yield node.lineno, f"open(..., {mode.value!r})"


def test_runs_alone_writes_run_records():
    allowed = {"thomas_cli.runs", "thomas_cli.store",        # store: the atomic JSON writer runs.py uses
               "thomas_cli.transport.daemon",                # its pairing file (store.write_json), not a run
               "thomas_cli.fleet.record"}                    # a fleet run's records (fleet.json, its run.json, fleet.log)
    found = {m: list(_writes(m)) for m in MODS if m not in allowed}
    assert {m: w for m, w in found.items() if w} == {}
    assert list(_writes("thomas_cli.runs")), "the check sees runs.py's own writes"


def test_no_module_global_holds_the_target():
    """The global options are a Target on the root Click context (commands/devices.py), never a global."""
    for mod, path in MODS.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
                f = node.value.func
                assert getattr(f, "id", getattr(f, "attr", None)) != "Target", f"{mod}:{node.lineno}"


@pytest.mark.parametrize("mod", sorted(m for m in MODS if m != "thomas_cli.device"))
def test_events_are_read_as_dataclasses(mod):
    """No ev["ev"] / ev.get("ev") of an event dict: "ev" is read only where the handshake reads a hello
    of maybe another protocol (device.Session._check_hello, next test). Writing it (fleet's own --json
    lines: a dict literal's key) is not reading."""
    tree = ast.parse(MODS[mod].read_text())
    keys = {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys if k is not None}
    hits = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "ev" and id(n) not in keys]
    assert hits == []


def test_device_reads_ev_only_in_the_handshake():
    tree = ast.parse(MODS["thomas_cli.device"].read_text())
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    users = {f.name for f in funcs for n in ast.walk(f) if isinstance(n, ast.Constant) and n.value == "ev"}
    assert users == {"_check_hello"}


def test_the_entry_point_is_main():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'thomas = "thomas_cli.main:main"' in text
    from thomas_cli.main import app, hoist_globals, main  # noqa: F401  (the tests' import keeps working)
