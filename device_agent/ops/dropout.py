"""Dropout (inverted): active only when ctx.training.

    x (*) -> y (*) = (x * mask) * scale,  mask[i] = hash_bits(seed, i) >= keep_threshold(ratio),
                                           scale = keep_scale(ratio) = float32(1 / (1 - ratio))

The mask comes from a counter-based hash of (seed, element index) rather than from numpy's
generator, so the OpenCL kernel (kernels/dropout.cl, `pcg_hash`) draws the same masks: one 32-bit
seed per call is drawn from ctx.rng, the rest is arithmetic. NOTE: bit-identical on every device
because nothing is left to a compiler's float choices: the mask is integer-only (uint32 wrap-around
hash, 24-bit draw against an integer threshold), and the scale is one float32 computed once on the
host and applied by two correctly rounded multiplications (x * mask is exact) -- no division
(OpenCL allows 2.5 ulp for x / y: NVIDIA's driver was 1 ulp off numpy) and no a * b + c that an
FMA could contract.
"""
from __future__ import annotations

import numpy as np

from .registry import register
from ._cl import copy, elt
from .base import Attr, ClSpec, OpDef, OpError

# Training step k (0-based) of every engine draws its dropout seeds from default_rng([seed,
# RNG_DROPOUT, k]) (data.py's RNG_SHUFFLE / RNG_AUGMENT are the other kinds), so a resumed run is
# bit-identical and the numpy and OpenCL engines draw the same masks.
RNG_DROPOUT = 3


def _pcg(v: np.ndarray) -> np.ndarray:
    """PCG-RXS-M-XS 32-bit hash (uint32 in, uint32 out); the same arithmetic as the kernel."""
    state = v * np.uint32(747796405) + np.uint32(2891336453)
    word = ((state >> ((state >> np.uint32(28)) + np.uint32(4))) ^ state) * np.uint32(277803737)
    return (word >> np.uint32(22)) ^ word


def hash_uniform(seed: int, n: int) -> np.ndarray:
    """n uniforms in [0, 1) (float32 grid of 2^-24) from a 32-bit seed: u[i] = pcg(seed ^ pcg(i))."""
    with np.errstate(over="ignore"):
        idx = np.arange(n, dtype=np.uint32)
        bits = _pcg(np.uint32(seed) ^ _pcg(idx))
    return (bits >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)


def hash_bits(seed: int, n: int) -> np.ndarray:
    """The n 24-bit draws (uint32 < 2^24) behind hash_uniform: hash_uniform == hash_bits * 2^-24."""
    with np.errstate(over="ignore"):
        return _pcg(np.uint32(seed) ^ _pcg(np.arange(n, dtype=np.uint32))) >> np.uint32(8)


def keep_mask(seed: int, n: int, ratio: float) -> np.ndarray:
    """(n,) bool, keep w.p. 1 - ratio: the kernel's integer comparison (== hash_uniform(seed, n) >= ratio)."""
    return hash_bits(seed, n) >= np.uint32(keep_threshold(ratio))


def keep_scale(ratio: float) -> np.float32:
    """1 / (1 - ratio) rounded once to float32: the factor numpy and every device multiply by."""
    return np.float32(1.0 / (1.0 - float(ratio)))


def draw_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2 ** 32, dtype=np.uint64))


def _check_ratio(attrs):
    r = attrs["ratio"]
    if not 0 <= r < 1:
        raise OpError("ratio", f"attribute 'ratio' must be in [0, 1), got {r!r}")


def dropout_infer(attrs, shapes):
    _check_ratio(attrs)
    return [tuple(shapes[0])]


def dropout_forward(attrs, xs, ctx):
    """x (*) -> y (*); saved mask (*) bool, or None outside training"""
    _check_ratio(attrs)
    (x,) = xs
    if not ctx.training:
        return [x], (None,)
    r = attrs["ratio"]
    # One seed drawn whenever training (even for ratio 0), so the generator's stream does not
    # depend on the ratio: same seed -> same mask.
    mask = keep_mask(draw_seed(ctx.rng), x.size, r).reshape(x.shape)  # keep w.p. 1 - ratio
    y = (x * mask) * x.dtype.type(keep_scale(r))
    return [y.astype(x.dtype, copy=False)], (mask,)


def dropout_backward(attrs, saved, gys, needs, ctx):
    (mask,) = saved
    (g,) = gys
    if not needs[0]:
        return [None]
    if mask is None:
        # undoes: y = x (not training)
        return [g]
    # undoes: y = (x * mask) * scale
    return [(g * mask) * g.dtype.type(keep_scale(attrs["ratio"]))]


# ----------------------------------------------------------------------------- OpenCL launchers
# kernels/dropout.cl. The seed is a per-step argument (dyn "seed", np.uint32, drawn like
# draw_seed(ctx.rng)); the forward also stores it in state "seed" (uint32[1]) and the backward
# redraws the mask from there, so no mask buffer exists. Not training: y = x (a copy, or nothing
# when the Plan gives y the buffer of x).
def keep_threshold(ratio: float) -> int:
    """The integer form of `hash_uniform(...) >= ratio`: the first 24-bit draw k whose float
    k * 2^-24 compares >= ratio exactly as the reference compares it."""
    k0 = int(np.floor(ratio * 2.0 ** 24))
    cand = np.arange(max(k0 - 2, 0), min(k0 + 3, 1 << 24), dtype=np.uint32)
    u = cand.astype(np.float32) * np.float32(2.0 ** -24)      # hash_uniform's own expression
    ok = np.flatnonzero(u >= ratio)
    assert ok.size == 0 or ok[0] > 0 or cand[0] == 0, "threshold window too narrow"
    return int(cand[ok[0]]) if ok.size else 1 << 24


def dropout_cl_state(attrs, in_shapes, out_shapes, training):
    return {"seed": ((1,), np.uint32)} if training else {}


def _cl_args(attrs):
    r = attrs["ratio"]
    return np.uint32(keep_threshold(r)), keep_scale(r)


def cl_dropout_forward(b, io):
    (x,), (y,) = io.x, io.y
    if not io.training:
        copy(b, x, y)
        return
    b.launch("dropout.cl", "dropout_fwd", (x.size,), elt(b), x, y, io.state["seed"], x.size,
             *_cl_args(io.attrs), np.uint32(0), dyn={6: "seed"})


def cl_dropout_backward(b, io):
    if io.gx[0] is None:
        return
    if not io.training:
        copy(b, io.gy[0], io.gx[0])    # undoes: y = x
        return
    g = io.gy[0]
    # undoes: y = (x * mask) * scale
    b.launch("dropout.cl", "dropout_bwd", (g.size,), elt(b), g, io.gx[0], io.state["seed"], g.size,
             *_cl_args(io.attrs))


register(OpDef("Dropout", ("x",), {"ratio": Attr("float", 0.5, min=0.0)},
               dropout_infer, dropout_forward, dropout_backward,
               doc="training: y = x * mask / (1 - ratio), mask ~ Bernoulli(1 - ratio) from ctx.rng",
               cl=ClSpec(cl_dropout_forward, cl_dropout_backward, state=dropout_cl_state)))
