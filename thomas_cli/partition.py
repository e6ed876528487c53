"""Splitting one dataset across N devices (`thomas push-data SRC --devices a,b,c [--dirichlet ALPHA]`).

    parts = partition(labels, 3)                    # IID: stratified, shuffled; [idx0, idx1, idx2]
    parts = partition(labels, 3, alpha=0.5, seed=1) # non-IID: each class's share per part ~ Dirichlet(0.5)
    plans = plan_parts(dec.parts, len(dec.classes), 3, 0.5, seed, val, resplit)  # per part: its splits

partition() is a pure function of (labels, n, alpha, seed): the parts are disjoint, cover every index,
each holds at least one example, and each is sorted.

IID (alpha None): every class's indices are shuffled (default_rng(seed)), the classes laid end to end,
and position i dealt to part i mod n: each part holds floor or ceil of n_c / n of every class c, and
floor or ceil of N / n examples in all.

Dirichlet (alpha > 0), the label-skew split of the FL literature in its per-class form (Yurochkin et al.
2019, "Bayesian nonparametric federated learning of neural networks"; NIID-Bench, Li et al. 2021; Hsu et
al. 2019 draw the same Dirichlet per client instead): for every class c, proportions
p_c ~ Dirichlet(alpha * 1_n) are drawn and class c's shuffled indices are cut at round(cumsum(p_c) * n_c)
(rounded, not floored as is common, so the last part is not handed every class's remainder).
Smaller alpha: more skew (alpha -> 0: each class on one part; alpha -> inf: IID). A draw can leave a
part empty; then (and only then) each empty part, in order, takes one example from the part that holds
the most (of that part's most common class, its last index in the shuffled order). The draw is not
repeated, so a seed always means one partition and the fix-up moves at most n - 1 examples.
"""
from __future__ import annotations

import math

import numpy as np

from device_agent.errors import DataError
from device_agent.training.dataset_write import random_split


def partition(labels, n: int, alpha: float | None = None, seed: int = 0) -> list[np.ndarray]:
    """labels (N,) int >= 0 -> n arrays of indices into labels (int64, sorted, disjoint, all covered,
    none empty). alpha None: IID stratified; alpha > 0: each class's share per part ~ Dirichlet(alpha).
    DataError (a ValueError) for bad arguments, naming what is wrong."""
    y = _check(labels, n, alpha)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    shuffled = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    if alpha is None:
        order = np.concatenate(shuffled)
        return [np.sort(order[j::n]) for j in range(n)]
    cuts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for idx in shuffled:
        p = rng.dirichlet(np.full(n, float(alpha)))
        bounds = np.rint(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)   # rounded: no part favoured
        for j, piece in enumerate(np.split(idx, np.clip(bounds, 0, len(idx)))):
            cuts[j].append(piece)
    parts = [np.concatenate(c) for c in cuts]
    _fill_empty(parts, y)
    return [np.sort(p) for p in parts]


def _check(labels, n, alpha) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise DataError(f"labels must be a 1-D array of integers, got {y.dtype} {y.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"the number of parts must be an integer >= 1, got {n!r}")
    if len(y) and y.min() < 0:
        raise DataError(f"labels must be >= 0, got {int(y.min())}")
    if n > len(y):
        raise DataError(f"cannot split {len(y)} examples into {n} parts: every part needs at least one")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) \
                or not math.isfinite(alpha) or alpha <= 0:
            raise DataError(f"the Dirichlet alpha must be a finite number > 0 (smaller: more skewed), got {alpha!r}")
    return y.astype(np.int64, copy=False)


def _fill_empty(parts: list[np.ndarray], y: np.ndarray) -> None:
    """Each empty part, in order, takes one example from the largest part (first among equals): the last
    index (in shuffled order) of that part's most common class (the smallest label among equals)."""
    for j, p in enumerate(parts):
        if len(p):
            continue
        big = int(np.argmax([len(q) for q in parts]))
        src = parts[big]
        counts = np.bincount(y[src])
        take = np.flatnonzero(y[src] == int(np.argmax(counts)))[-1]
        parts[j] = src[take:take + 1]
        parts[big] = np.delete(src, take)


def class_counts(labels, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(n, K) examples of each class in each part."""
    y = np.asarray(labels, np.int64)
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])


# ============================================================================ each part's splits
def plan_parts(parts: dict, num_classes: int, n: int, alpha: float | None, seed: int,
               val: float | None, resplit: bool, where: str = "dataset") -> list[tuple[dict, str, dict]]:
    """The decoded splits {"all" | "train"/"val"/"test": (x, y)} cut into n parts (partition() of every
    example, all splits pooled) -> per part (its {split: (x, y, None)}, split_source, extra dataset.json
    fields). A part keeps the dataset's own train/val/test membership of its examples when the data has
    a val split (and not resplit); otherwise its examples of "all" (or train, or train + val with
    resplit) are split at random per part (--val, default 0.2, seed), a test split kept as it is."""
    own = "val" in parts and not resplit
    if own and val is not None:
        raise DataError(f"{where}: has its own split ({len(parts['train'][1])} train / {len(parts['val'][1])} "
                        f"val); --val would re-split it: drop --val, or add --resplit to split each part at random")
    if val is not None and not 0 <= val < 1:
        raise DataError(f"--val {val}: give a fraction in [0, 1)")
    frac = 0.2 if val is None else float(val)
    pooled = set() if own else set(parts) - {"test"}
    names = list(parts)
    labels = np.concatenate([np.asarray(parts[s][1], np.int64) for s in names])
    split_of = np.concatenate([np.full(len(parts[s][1]), s, object) for s in names])
    rows = np.concatenate([np.arange(len(parts[s][1])) for s in names])
    try:
        cut = partition(labels, n, alpha, seed)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    source = "dataset" if own else f"random val={frac:g} seed={seed}"
    extra = {} if own else {"seed": int(seed), "val_fraction": frac}
    out = []
    for j, ix in enumerate(cut):
        info = {"part": j, "parts": n, "dirichlet": alpha, "seed": int(seed), "of_examples": int(len(labels))}
        out.append((part_splits(split_of[ix], rows[ix], parts, pooled, num_classes, frac, seed), source,
                    dict(extra, partition=info)))
    return out



def part_splits(split_of: np.ndarray, rows: np.ndarray, arrays: dict, pooled: set, num_classes: int,
                val: float, seed: int) -> dict:
    """One part's {split: (x, y, None)} for write_splits. The part's examples are given as split_of[k]
    (the name of the source split) and rows[k] (the row in it); arrays: {split: (x, y)} of the source.
    Examples of a split in `pooled` are divided into train / val at random (random_split(val, seed),
    stratified per class of this part); the others keep their split. When this part holds val or test
    examples of a class but no training example of it (write_splits needs every class of val and test
    in train): the first such example of each class moves to train, so every example of the part is pushed."""
    xs, ys, names = [], [], []
    for s in dict.fromkeys(split_of.tolist()):
        r = rows[split_of == s]
        xs.append(arrays[s][0][r])
        ys.append(arrays[s][1][r])
        names.append(np.full(len(r), s, object))
    x, y, member = np.concatenate(xs), np.concatenate(ys), np.concatenate(names)
    pool = np.isin(member, list(pooled))
    if pool.any():
        is_val = random_split(y[pool], num_classes, val, seed)
        member[np.flatnonzero(pool)] = np.where(is_val, "val", "train")
    have = set(np.unique(y[member == "train"]).tolist())
    for c in sorted(set(np.unique(y).tolist()) - have):
        member[np.flatnonzero(y == c)[0]] = "train"
    return {s: (x[member == s], y[member == s], None) for s in ("train", "val", "test") if (member == s).any()}
