"""Op registry: one module per op family, each registering its `OpDef`s (ops/registry.py).

    from device_agent.ops import REGISTRY, get_op
    conv = get_op("Conv2d")
"""
from __future__ import annotations

from .base import REQUIRED, Attr, ClSpec, Ctx, OpDef, OpError, ShapeError, normalize_attrs  # noqa: F401
from .registry import REGISTRY, get_op, register  # noqa: F401

# every op family registers itself when imported
from . import (activation, batchnorm, conv2d, dropout, elementwise, gemm, lrn, pool,  # noqa: E402,F401
               reduce, resize, shape, softmax)
