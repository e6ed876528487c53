"""The agent's map stays true: device_agent/__init__.py names every top-level module and package, and
each package grouped by what it is (model, training, bench, daemon) names each of its modules in its
own docstring. Also: the payload the host ships holds every package (nothing is collected by name).
From the source; nothing of the agent runs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[1] / "device_agent"
GROUPS = ("model", "training", "bench", "daemon")


def _doc(init: Path) -> str:
    return ast.get_docstring(ast.parse(init.read_text())) or ""


def _names(folder: Path) -> list[str]:
    mods = [p.name for p in folder.glob("*.py") if p.name != "__init__.py"]
    pkgs = [f"{p.name}/" for p in folder.iterdir() if (p / "__init__.py").is_file()]
    return sorted(mods + pkgs)


def test_the_agent_docstring_maps_every_top_level_module_and_package():
    doc = _doc(AGENT / "__init__.py")
    missing = [n for n in _names(AGENT) if n not in doc]
    assert not missing, f"device_agent/__init__.py's docstring does not name {missing}"


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_maps_its_modules(group):
    folder = AGENT / group
    assert (folder / "__init__.py").is_file(), f"device_agent/{group}/ is not a package"
    doc = _doc(folder / "__init__.py")
    missing = [n for n in _names(folder) if n not in doc]
    assert not missing, f"device_agent/{group}/__init__.py's docstring does not name {missing}"


def test_the_payload_holds_every_package_of_the_agent():
    from thomas_cli.device import payload_files

    names = {name for name, _ in payload_files()}
    pkgs = [p.parent for p in AGENT.rglob("__init__.py") if "__pycache__" not in p.parts]
    missing = [str(p.relative_to(AGENT.parent)) for p in pkgs
               if f"{p.relative_to(AGENT.parent).as_posix()}/__init__.py" not in names]
    assert len(pkgs) >= 8 and not missing, f"packages missing from the payload: {missing}"
    assert {"device_agent/training/train.py", "device_agent/daemon/serve.py", "kernels/batchnorm.cl"} <= names
