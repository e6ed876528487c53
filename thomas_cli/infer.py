"""Inference on a device: a batch pushed as .npy, `python -m device_agent infer` run on it (OpenCL when
available), the logits pulled back.

    logits, ev = run_infer(s, "models/mnv2", x, batch=32, backend="auto", timeout=300)   # ev: InferEvent
    rows = top_rows(graph, names, logits, k=5)      # [{"input", "top": [{"index", "label", "prob", "logit"}]}]
"""
from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

import numpy as np

from device_agent.model.graph import Graph
from device_agent.protocol import ErrorEvent, InferEvent

from .device import RunFailed, Session
from .transport.base import DeviceError, confined


def probabilities(g: Graph, logits: np.ndarray) -> np.ndarray:
    """(N, K) scores -> probabilities; a model that already ends in Softmax is left alone."""
    prod = {o: n for n in g.nodes for o in n.outputs}
    last = prod.get(g.outputs[0])
    if last is not None and last.op == "Softmax":
        return logits
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_rows(g: Graph, names: list[str], logits: np.ndarray, top: int) -> list[dict]:
    """The top-k classes of every input, with the model's labels when they match its output width."""
    flat = logits.reshape(logits.shape[0], -1).astype(np.float64)
    probs = probabilities(g, flat)
    k = min(top, flat.shape[1])
    labels = g.labels if g.labels is not None and len(g.labels) == flat.shape[1] else None
    rows = []
    for i, nm in enumerate(names):
        idx = np.argsort(-probs[i], kind="stable")[:k]
        rows.append({"input": nm, "top": [{"index": int(j), "label": labels[j] if labels else None,
                                           "prob": float(probs[i, j]), "logit": float(flat[i, j])} for j in idx]})
    return rows


def run_infer(s: Session, remote: str, x: np.ndarray, batch: int, backend: str,
              timeout: float | None) -> tuple[np.ndarray, InferEvent]:
    """Push x as .npy into tmp/infer-<id>/ on the device, run the agent's infer on it, pull the
    logits back; the folder is removed afterwards. Returns (logits, the agent's `infer` event)."""
    tmp = f"tmp/infer-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="thomas-infer-") as d:
        host = Path(d)
        np.save(host / "x.npy", np.ascontiguousarray(x, np.float32))
        try:
            s.t.push_file(host / "x.npy", f"{tmp}/x.npy")
            r = s.call(["infer", remote, f"{tmp}/x.npy", f"{tmp}/logits.npy", "--batch", str(batch),
                        "--backend", backend], timeout=timeout)
            last = r.last
            if isinstance(last, ErrorEvent):
                raise RunFailed(last.code, f"agent on {s.t.serial}: {last.message}")
            if not isinstance(last, InferEvent):
                raise DeviceError(f"the agent on {s.t.serial} ended (exit status {r.returncode}) without an "
                                  f"infer or error event: {r.tail()}")
            dest = confined(host, "logits.npy", "logits")
            s.t.pull_file(f"{tmp}/logits.npy", dest)
            try:
                y = np.load(dest, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DeviceError(f"the logits pulled from {s.t.serial} are not a readable .npy ({e})") from None
        finally:
            s.t.remove(tmp)
    if y.shape[0] != x.shape[0]:
        raise DeviceError(f"the agent on {s.t.serial} returned {y.shape[0]} rows for {x.shape[0]} inputs")
    return y, last
