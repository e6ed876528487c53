"""Where the agent finds kernels/ and configs/: inside the installed wheel (`_data/`), or at the
top of a source checkout (editable installs, the pushed payload)."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for cand in (_HERE / "_data" / name, _HERE.parent / name):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"THOMAS {name}/ directory not found beside {_HERE}")


def kernels_dir() -> Path:
    return _find("kernels")


def configs_dir() -> Path:
    return _find("configs")
