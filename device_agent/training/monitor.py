"""What the training loop watches: divergence (per step) and the best epoch (per eval).

    guard = DivergenceGuard(factor=10.0, num_classes=10)
    why = guard.check(loss)        # None, or why the run diverged (the loss is then not recorded)
    best = BestEpoch("val_acc", patience=3)
    if best.update(epoch, val_loss, val_acc): ...write best/...
    if best.should_stop(): ...early stop...

Both states go into every checkpoint's meta (state() / load_state()), so a resumed run makes
exactly the decisions an uninterrupted one makes.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

from ..errors import CheckpointError

WINDOW = 50          # steps: the median the divergence test compares with, checked once this many ran
SELECT = ("val_acc", "val_loss")


class DivergenceGuard:
    """A step diverged when its loss is not finite or, once WINDOW steps ran, exceeds `factor` x the
    reference: the median of the previous WINDOW steps' losses, but

      * at most the first step's loss: losses that blew up within the first steps (lr 1e6: 2.4, then
        1e6..1e7 for ever) have a huge median of their own, yet are far above where the run started;
      * at least ln(K), the loss of a uniform guess over K classes: an over-fitted run's tiny median
        (1e-4) would make a harmless batch (0.5) look like a blow-up.

    So it fires whenever loss > factor x median does, except below factor x ln(K).
    factor None: only the non-finite test."""

    def __init__(self, factor: float | None = 10.0, num_classes: int = 2):
        self.factor = factor
        self.floor = math.log(max(int(num_classes), 2))
        self.first: float | None = None
        self.recent: deque[float] = deque(maxlen=WINDOW)

    def check(self, loss: float) -> str | None:
        """None (the loss is recorded), or why this step diverged."""
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if self.factor is not None and len(self.recent) == WINDOW:
            med = float(np.median(np.asarray(self.recent, np.float64)))
            ref = max(self.floor, min(med, self.first))
            if loss > self.factor * ref:
                why = ("the median of the last {WINDOW} steps" if ref == med else
                       "the first step's loss" if ref == self.first else "ln(classes), a uniform guess's loss")
                return f"loss {loss:.4g} is more than {self.factor:g} x {why.format(WINDOW=WINDOW)} ({ref:.4g})"
        if self.first is None:
            self.first = float(loss)
        self.recent.append(float(loss))
        return None

    def state(self) -> dict:
        return {"first": self.first, "recent": list(self.recent)}

    def load_state(self, d, where: str) -> None:
        losses = d.get("recent") if isinstance(d, dict) else None
        first = d.get("first") if isinstance(d, dict) else None
        if not (isinstance(losses, list) and len(losses) <= WINDOW and all(map(_finite, losses))
                and (first is None and not losses or _finite(first))):
            raise CheckpointError(f"{where}: meta field 'guard' is not a first loss and at most {WINDOW} "
                                  f"finite losses")
        self.first = None if first is None else float(first)
        self.recent = deque((float(x) for x in losses), maxlen=WINDOW)


class BestEpoch:
    """The epoch with the best `select` metric so far (val_acc: highest, a tie going to the lower
    val_loss, as a small val set often ties on accuracy; val_loss: lowest; a full tie keeps the earlier
    epoch, NaN never wins) and the epochs since it improved (for `patience`)."""

    def __init__(self, select: str = "val_acc", patience: int | None = None):
        self.select = select
        self.patience = patience
        self.epoch: int | None = None        # 1-based
        self.metric: float | None = None
        self.loss: float | None = None       # its val_loss: the tie-break of val_acc
        self.since = 0                       # evaluated epochs without improvement since self.epoch

    def value(self, val_loss, val_acc) -> float | None:
        v = val_acc if self.select == "val_acc" else val_loss
        return None if v is None else float(v)

    def update(self, epoch: int, val_loss, val_acc) -> bool:
        """Record epoch (1-based) and its metrics; True when it is the new best."""
        v = self.value(val_loss, val_acc)
        if v is None or not math.isfinite(v):
            better = False
        elif self.metric is None:
            better = True
        elif self.select == "val_acc":
            better = v > self.metric or (v == self.metric and _lower(val_loss, self.loss))
        else:
            better = v < self.metric
        if better:
            self.epoch, self.metric, self.since = epoch, v, 0
            self.loss = None if val_loss is None else float(val_loss)
        else:
            self.since += 1
        return better

    def should_stop(self) -> bool:
        return self.patience is not None and self.epoch is not None and self.since >= self.patience

    def state(self) -> dict:
        return {"epoch": self.epoch, "metric": self.metric, "since": self.since, "loss": self.loss}

    def load_state(self, d, where: str) -> None:
        ok = (isinstance(d, dict) and _count(d.get("since")) and
              (d.get("epoch") is None and d.get("metric") is None or
               _count(d.get("epoch")) and _finite(d.get("metric"))))
        if not ok:
            raise CheckpointError(f"{where}: meta field 'best' is {d!r}, not an epoch, metric and count"[:200])
        self.epoch, self.since = d["epoch"], d["since"]
        self.metric = None if d["metric"] is None else float(d["metric"])
        loss = d.get("loss")                 # absent in checkpoints written before the tie-break
        self.loss = float(loss) if _finite(loss) else None


def _lower(new, old) -> bool:
    """new val_loss strictly below old (a missing or non-finite loss never wins a tie)."""
    return _finite(new) and (old is None or new < old)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
