"""The op contract: every op module registers one `OpDef` per op it implements.

An op is a pure function of its inputs. Parameters (weights) and buffers (running
statistics) are ordinary inputs of a node, named in the graph's `params` table; the
op only says which of its input slots hold them. Every array is NCHW, float32 on
the device and float64 in the finite-difference tests: ops keep the dtype they get.

  infer(attrs, shapes)               -> output shapes; raises ShapeError naming the slot
  ref_forward(attrs, xs, ctx)        -> (ys, saved)   saved = what backward needs
  ref_backward(attrs, saved, gys, needs, ctx) -> one gradient per input (None where
                                        needs[i] is False or the input is not differentiable)
  param_shapes(attrs, x_shape)       -> {slot: shape} for the parameter/buffer slots

`attrs` reach the op already validated and normalised by `normalize_attrs`
(defaults filled in, int lists as tuples).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

REQUIRED = object()


class OpError(ValueError):
    """A node is wrong: bad attribute, misshaped input. `field` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class ShapeError(OpError):
    pass


@dataclass(frozen=True)
class Attr:
    kind: str                  # "int" | "float" | "ints" | "bool" | "str"
    default: Any = REQUIRED
    length: int | None = None  # for "ints": exact length, None = any
    choices: tuple | None = None
    min: float | None = None   # inclusive lower bound for int/float, and for every element of ints


@dataclass
class Ctx:
    """Per-call state shared by the ops of one forward/backward pass.

    training        dropout active
    bn_batch_stats  BatchNorm normalises with batch statistics and updates its running
                    statistics (through `update`); False = frozen running statistics
    rng             the seeded generator dropout draws its masks from
    """

    training: bool = False
    bn_batch_stats: bool = False
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    updates: dict[str, np.ndarray] = field(default_factory=dict)

    def update(self, slot: str, value: np.ndarray) -> None:
        """Record a new value for a buffer input slot (e.g. BN running_mean)."""
        self.updates[slot] = value


def _no_params(attrs: dict, x_shape: tuple) -> dict:
    return {}


def _default_flops(attrs: dict, in_shapes: list, out_shapes: list) -> int:
    return int(sum(int(np.prod(s)) for s in out_shapes))


@dataclass(frozen=True)
class ClSpec:
    """How the OpenCL Plan runs an op (see device_agent/backends/opencl/runtime.py).

    forward(b, io)   enqueue the forward launches: read io.x, write io.y (and io.state)
    backward(b, io)  enqueue the backward launches: read io.gy (+ saved tensors, io.state),
                     OVERWRITE io.gx[i] wherever it is not None (the Plan sums branches itself)
    saves            forward tensors the backward reads: "x0", "x1", ..., "y0"; they stay alive
                     until the node's backward has run. Or a function of the node's attrs returning
                     them (LeakyRelu reads y, but x when alpha < 0); ask through `saved(attrs)`
    state(attrs, in_shapes, out_shapes, training) -> {name: (shape, dtype)}: per-node buffers that
                     live from forward to backward (BN batch statistics, max-pool argmax, ...)
    workspace(attrs, in_shapes, out_shapes) -> bytes of scratch one launch sequence needs
                     (shared by all nodes; im2col columns)
    gemms(attrs, in_shapes, out_shapes) -> [(M, N, K, batch, reduce_batch), ...]: the matrix products
                     the launchers run through `b.gemm(..., work=io.workspace, work_off=<workspace
                     bytes / 4>)`; the backend reserves room for their partial products (split-K on
                     GPUs) after the `workspace` bytes
    alias            output 0 is input 0 reinterpreted (Flatten, Reshape, Identity): no launch
    recompute(b, io) enqueue launches that rewrite io.y from the saved inputs and io.state alone (no
                     side effects): a Plan built with recompute=True calls it in the backward instead
                     of keeping y alive for the consumers that save it (BatchNorm)

    The launch builder `b` is the op's only window on the backend: b.launch(file, kernel, ...),
    b.gemm(ta, tb, M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, ...), b.colsum(g, s, rows,
    cols), b.gemm_family() ("gpu" | "cpu"), b.tuning(op), b.kind, b.rt. Ops never import a backend.
    """

    forward: Callable | None = None
    backward: Callable | None = None
    saves: tuple[str, ...] | Callable = ()
    state: Callable | None = None
    workspace: Callable | None = None
    gemms: Callable | None = None
    alias: bool = False
    recompute: Callable | None = None

    def saved(self, attrs: dict) -> tuple[str, ...]:
        """`saves` for a node with these (normalised) attrs."""
        return tuple(self.saves(attrs)) if callable(self.saves) else tuple(self.saves)


@dataclass(frozen=True)
class OpDef:
    name: str
    inputs: tuple[str, ...]          # slot names; "bias?" = optional; "*" = variadic (Concat)
    attrs: dict[str, Attr]
    infer: Callable
    forward: Callable
    backward: Callable
    params: tuple[str, ...] = ()     # trainable slots, e.g. ("weight", "bias")
    buffers: tuple[str, ...] = ()    # non-trainable state slots, e.g. ("running_mean", "running_var")
    param_shapes: Callable = _no_params
    flops: Callable = _default_flops
    nondiff: tuple[str, ...] = ()    # slots that never get a gradient (labels)
    doc: str = ""
    cl: ClSpec | None = None         # the OpenCL launchers; None = no OpenCL implementation yet

    @property
    def variadic(self) -> bool:
        return self.inputs == ("*",)

    def slot_names(self, n: int) -> list[str]:
        """Slot names for a node with n inputs (variadic ops: input0, input1, ...)."""
        if self.variadic:
            return [f"input{i}" for i in range(n)]
        return [s.rstrip("?") for s in self.inputs[:n]]

    def arity(self) -> tuple[int, int]:
        """(min, max) number of inputs."""
        if self.variadic:
            return 1, 1 << 30
        required = sum(1 for s in self.inputs if not s.endswith("?"))
        return required, len(self.inputs)


def _check_number(op: str, key: str, v: Any, spec: Attr, want_int: bool) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (
            want_int and isinstance(v, float) and not v.is_integer()):
        raise OpError(key, f"attribute '{key}' must be {'an integer' if want_int else 'a number'}, got {v!r}")
    # NOTE: JSON ints are unbounded: one past int64 (or a float overflowing) is refused here, not by
    # numpy later with a TypeError
    if (want_int or isinstance(v, int)) and not -2 ** 63 <= v < 2 ** 63:
        raise OpError(key, f"attribute '{key}' is out of the int64 range, got {v!r}")
    v = int(v) if want_int else float(v)
    if not np.isfinite(v):
        raise OpError(key, f"attribute '{key}' must be finite, got {v!r}")
    if spec.min is not None and v < spec.min:
        raise OpError(key, f"attribute '{key}' must be >= {spec.min}, got {v!r}")
    return v


def normalize_attrs(op: OpDef, attrs: dict | None) -> dict:
    """Validate `attrs` against the op's schema; return them with defaults filled in."""
    attrs = dict(attrs or {})
    unknown = sorted(set(attrs) - set(op.attrs))
    if unknown:
        raise OpError(unknown[0], f"unknown attribute '{unknown[0]}' for op {op.name} "
                                  f"(known: {', '.join(sorted(op.attrs)) or 'none'})")
    out = {}
    for key, spec in op.attrs.items():
        if key not in attrs:
            if spec.default is REQUIRED:
                raise OpError(key, f"missing required attribute '{key}' for op {op.name}")
            out[key] = spec.default
            continue
        v = attrs[key]
        if v is None and spec.default is None:
            out[key] = None
            continue
        if spec.kind in ("int", "float"):
            v = _check_number(op.name, key, v, spec, spec.kind == "int")
        elif spec.kind == "ints":
            if not isinstance(v, (list, tuple)):
                raise OpError(key, f"attribute '{key}' must be a list of integers, got {v!r}")
            v = tuple(_check_number(op.name, key, e, Attr("int", min=spec.min), True) for e in v)
            if spec.length is not None and len(v) != spec.length:
                raise OpError(key, f"attribute '{key}' must have {spec.length} entries, got {len(v)}")
        elif spec.kind == "bool":
            if not isinstance(v, bool):
                raise OpError(key, f"attribute '{key}' must be true or false, got {v!r}")
        elif spec.kind == "str":
            if not isinstance(v, str):
                raise OpError(key, f"attribute '{key}' must be a string, got {v!r}")
        if spec.choices is not None and v not in spec.choices:
            raise OpError(key, f"attribute '{key}' must be one of {list(spec.choices)}, got {v!r}")
        out[key] = v
    return out


def expect_shape(slot: str, got: tuple, want: tuple) -> None:
    if tuple(got) != tuple(want):
        raise ShapeError(slot, f"input '{slot}' has shape {tuple(got)}, expected {tuple(want)}")


def expect_rank(slot: str, got: tuple, rank: int | tuple) -> None:
    ranks = (rank,) if isinstance(rank, int) else rank
    if len(got) not in ranks:
        raise ShapeError(slot, f"input '{slot}' must have rank {' or '.join(map(str, ranks))}, "
                               f"got shape {tuple(got)}")
