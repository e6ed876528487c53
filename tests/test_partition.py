"""thomas_cli.partition: the split of one dataset across N devices as a pure function (IID stratified or
Dirichlet by class), and each part's own train/val/test (plan_parts)."""
from __future__ import annotations

import numpy as np
import pytest

from device_agent.errors import DataError
from thomas_cli.partition import class_counts, partition, plan_parts

BALANCED = np.repeat(np.arange(10), 30)
SKEWED = np.concatenate([np.zeros(200, int), np.ones(20, int), np.full(3, 2), np.full(1, 5)])
ONE_CLASS = np.zeros(17, int)


def check_cover(labels, parts, n):
    """Disjoint, covering every index once, sorted, none empty, n of them."""
    assert len(parts) == n
    assert all(p.dtype == np.int64 and len(p) >= 1 and np.all(np.diff(p) > 0) for p in parts)
    every = np.concatenate(parts)
    assert len(every) == len(labels) and np.array_equal(np.sort(every), np.arange(len(labels)))


@pytest.mark.parametrize("labels", [BALANCED, SKEWED, ONE_CLASS], ids=["balanced", "skewed", "one-class"])
@pytest.mark.parametrize("alpha", [None, 100.0, 0.5, 0.01])
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_disjoint_covering_non_empty(labels, alpha, n):
    for seed in range(5):
        check_cover(labels, partition(labels, n, alpha, seed), n)


@pytest.mark.parametrize("labels", [BALANCED, SKEWED, np.random.default_rng(1).integers(0, 7, 101)],
                         ids=["balanced", "skewed", "random"])
@pytest.mark.parametrize("n", [2, 3, 4, 9])
def test_iid_is_stratified_within_one(labels, n):
    parts = partition(labels, n, seed=4)
    k = int(labels.max()) + 1
    counts = class_counts(labels, parts, k)
    want = np.bincount(labels, minlength=k) / n
    assert np.all(np.abs(counts - want) < 1), counts                 # floor or ceil of n_c / n, each class
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == len(labels)


def test_iid_is_shuffled_not_a_slice():
    labels = np.zeros(100, int)
    parts = partition(labels, 2, seed=0)
    assert not np.array_equal(parts[0], np.arange(50))           # examples are picked at random
    assert not np.array_equal(parts[0], np.arange(0, 100, 2))
    assert not np.array_equal(partition(labels, 2, seed=1)[0], parts[0])


def skew(labels, parts) -> float:
    """Mean total-variation distance between each part's class distribution and the whole's."""
    k = int(labels.max()) + 1
    counts = class_counts(labels, parts, k).astype(float)
    whole = np.bincount(labels, minlength=k) / len(labels)
    return float(np.mean(0.5 * np.abs(counts / counts.sum(1, keepdims=True) - whole).sum(1)))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(10), 100)
    alphas = [None, 1000.0, 10.0, 1.0, 0.1, 0.01]
    mean = [np.mean([skew(labels, partition(labels, 5, a, seed)) for seed in range(20)]) for a in alphas]
    assert all(a < b for a, b in zip(mean, mean[1:])), dict(zip(map(str, alphas), mean))
    assert mean[0] < 0.01 and mean[1] < 0.05                    # IID and a huge alpha: nearly the whole's mix
    assert mean[-1] > 0.7                                       # alpha 0.01: almost one class per part
    # each class mostly on one part when alpha is tiny
    counts = class_counts(labels, partition(labels, 5, 0.01, 3), 10)
    assert np.mean(counts.max(0) / counts.sum(0)) > 0.9


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_seeded_determinism(alpha):
    labels = np.random.default_rng(0).integers(0, 10, 500)
    a = partition(labels, 4, alpha, seed=7)
    b = partition(labels.copy(), 4, alpha, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = partition(labels, 4, alpha, seed=8)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_every_part_gets_one_even_when_the_draw_leaves_it_empty():
    """Two classes, ten parts, alpha tiny: the draw puts each class on about one part; the fix-up gives
    each empty part one example (not more: most parts end with exactly one)."""
    labels = np.repeat([0, 1], 50)
    for seed in range(10):
        parts = partition(labels, 10, 0.001, seed)
        check_cover(labels, parts, 10)
        assert sum(len(p) == 1 for p in parts) >= 6             # the fixed-up parts hold one example each
    parts = partition(np.arange(6) % 2, 6, 0.001, 0)           # as many parts as examples: one each
    assert [len(p) for p in parts] == [1] * 6


@pytest.mark.parametrize("labels,n,alpha,words", [
    (BALANCED, 0, None, "integer >= 1, got 0"),
    (BALANCED, -2, 0.5, "integer >= 1, got -2"),
    (BALANCED, 2.5, None, "integer >= 1, got 2.5"),
    (BALANCED, True, None, "integer >= 1, got True"),
    (np.arange(3), 4, None, "cannot split 3 examples into 4 parts"),
    (np.arange(3), 4, 0.5, "cannot split 3 examples into 4 parts"),
    (np.zeros(0, int), 1, None, "cannot split 0 examples into 1 parts"),
    (BALANCED, 2, 0.0, "alpha must be a finite number > 0"),
    (BALANCED, 2, -1.0, "alpha must be a finite number > 0 (smaller: more skewed), got -1.0"),
    (BALANCED, 2, float("nan"), "alpha must be a finite number > 0"),
    (BALANCED, 2, float("inf"), "alpha must be a finite number > 0"),
    (BALANCED, 2, "0.5", "alpha must be a finite number > 0"),
    (BALANCED.astype(float), 2, None, "1-D array of integers, got float64"),
    (BALANCED.reshape(30, 10), 2, None, "1-D array of integers"),
    (np.array([0, 1, -1]), 2, None, "labels must be >= 0, got -1"),
])
def test_bad_arguments_raise_a_clear_error(labels, n, alpha, words):
    with pytest.raises(DataError) as e:
        partition(labels, n, alpha)
    assert words in str(e.value), str(e.value)


# ============================================================================ plan_parts: each part's splits
def images(n, start=0):
    """n 2x2 gray images whose first pixels spell their index (start + i), to trace them."""
    x = np.zeros((n, 2, 2, 1), np.uint8)
    ids = np.arange(start, start + n)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = ids % 256, ids // 256
    return x


def ids_of(x):
    return x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 1, 0].astype(int)


def test_plan_parts_keeps_the_datasets_own_split_per_part():
    rng = np.random.default_rng(0)
    y = {"train": rng.integers(0, 4, 300), "val": rng.integers(0, 4, 60), "test": rng.integers(0, 4, 40)}
    starts = {"train": 0, "val": 300, "test": 360}
    parts = {s: (images(len(v), starts[s]), v) for s, v in y.items()}
    plans = plan_parts(parts, 4, 3, 0.3, 5, None, False)
    seen = []
    for splits, source, extra in plans:
        assert source == "dataset" and extra["partition"]["parts"] == 3 and extra["partition"]["dirichlet"] == 0.3
        train_classes = set(splits["train"][1].tolist())
        for s, (x, lab, rows) in splits.items():
            assert rows is None and len(x) == len(lab)
            assert set(lab.tolist()) <= train_classes                  # write_splits' rule holds
            ids = ids_of(x)
            seen += ids.tolist()
            home = np.searchsorted([0, 300, 360], ids, side="right") - 1
            origin = np.array(["train", "val", "test"])[home]
            moved = origin != s
            assert s == "train" or not moved.any()                    # only moves are into train
            assert moved.sum() <= 4 * 2                               # at most one per class from val and test
            assert np.array_equal(lab, np.concatenate(list(y.values()))[ids])
    assert sorted(seen) == list(range(400))


def test_plan_parts_splits_each_part_at_random_without_an_own_split():
    y = np.repeat(np.arange(5), 40)
    plans = plan_parts({"all": (images(200), y)}, 5, 4, None, 1, 0.25, False)
    for splits, source, extra in plans:
        assert source == "random val=0.25 seed=1" and extra["val_fraction"] == 0.25
        assert set(splits) == {"train", "val"}
        assert np.array_equal(np.bincount(splits["val"][1], minlength=5), [2] * 5)   # 25% of each class's 10
    with pytest.raises(DataError, match="has its own split"):
        plan_parts({"train": (images(20), y[:20]), "val": (images(20), y[:20])}, 5, 2, None, 0, 0.2, False)
    plans = plan_parts({"train": (images(20), y[::10]), "val": (images(20, 20), y[::10])}, 5, 2, None, 0, 0.5,
                       True)                                        # resplit: train + val pooled per part
    assert all(src == "random val=0.5 seed=0" for _, src, _ in plans)
    assert sorted(i for sp, _, _ in plans for x, _, _ in sp.values() for i in ids_of(x)) == list(range(40))
