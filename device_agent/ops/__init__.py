"""Op registry: one module per op family, each registering its `OpDef`s.

    from device_agent.ops import REGISTRY, get_op
    conv = get_op("Conv2d")
"""
from __future__ import annotations

from .base import REQUIRED, Attr, ClSpec, Ctx, OpDef, OpError, ShapeError, normalize_attrs  # noqa: F401

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


def _load_all() -> None:
    # NOTE: imported here, not at module top, so each op module can `from . import register`.
    from . import (activation, batchnorm, conv2d, dropout, elementwise, gemm, lrn, pool,  # noqa: F401
                   reduce, resize, shape, softmax)


_load_all()
