"""The table of every op: op modules add their `OpDef`s with `register`, everyone reads `get_op`.

A module of its own (not ops/__init__.py) so that an op module imports only this file and ops/
has no import cycle: __init__ -> op modules -> registry.
"""
from __future__ import annotations

from .base import OpDef, OpError

REGISTRY: dict[str, OpDef] = {}


def register(*defs: OpDef) -> None:
    for d in defs:
        if d.name in REGISTRY:
            raise RuntimeError(f"op {d.name} registered twice")
        REGISTRY[d.name] = d


def get_op(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise OpError("op", f"unknown op '{name}' (known: {', '.join(sorted(REGISTRY))})") from None
