"""Training stages: which parameters train, where the frozen prefix ends, and the feature cache.

    trainable = trainable_params(graph, 3)          # the last 3 entries of graph.param_groups()
    sp = split_graph(graph, trainable)              # sp.prefix (frozen, forward only), sp.suffix, sp.cut
    cache = FeatureCache(root, sp, data_digest, backend, dtype)

The trainable part (the suffix) is every node that reads a trainable parameter, every Dropout (it
draws fresh masks each step, so its output can't be cached) and everything downstream of those.
The rest is the frozen prefix; the tensors it hands to the suffix are the cut (several when, say, a
residual branch crosses it). Both are parts of heads.loss_graph(graph): a final Softmax/LogSoftmax
is not trained through, the suffix's one output is the (N,K) logits. The prefix always runs in eval mode (BN running statistics).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import lookahead
from ..errors import JobError
from ..fsutil import npy_map
from ..model.graph import Graph, Node, ParamSpec, TensorSpec
from ..model.heads import loss_graph

CACHE_FORMAT = 1


def trainable_params(graph: Graph, layers) -> set[str]:
    """layers "last" | "all" | N: the trainable params of the last 1 / all / N param groups."""
    groups = graph.param_groups()
    if layers == "all":
        sel = groups
    elif layers == "last":
        sel = groups[-1:]
    else:
        if layers > len(groups):
            raise JobError(f"job field 'layers' is {layers}, but model '{graph.name}' has only "
                           f"{len(groups)} layers with parameters")
        sel = groups[-layers:]
    sel = set(sel)
    return {k for k, p in graph.params.items() if p.trainable and p.group in sel}


@dataclass
class Split:
    prefix: Graph | None     # None: nothing is frozen before the trainable part
    suffix: Graph
    cut: list[str]           # prefix outputs = suffix inputs, in the order the suffix first reads them


def split_graph(graph: Graph, trainable: set[str]) -> Split:
    """Prefix, suffix and cut of heads.loss_graph(graph): the suffix ends in the (N,K) logits the loss
    reads (a final Softmax/LogSoftmax is not part of training), so does the feature cache's head."""
    graph = loss_graph(graph)
    hot: set[str] = set(trainable)          # tensors that change from step to step
    suffix_nodes: list[Node] = []
    for n in graph.nodes:
        if n.op == "Dropout" or any(t in hot for t in n.inputs):
            suffix_nodes.append(n)
            hot.update(n.outputs)
    if not all(o in hot for o in graph.outputs):
        raise JobError(f"model '{graph.name}': output '{graph.outputs[0]}' does not depend on any "
                       f"trainable parameter")
    in_suffix = {n.name for n in suffix_nodes}
    made_in_suffix = {t for n in suffix_nodes for t in n.outputs}
    cut: list[str] = []
    for n in suffix_nodes:
        for t in n.inputs:
            if t not in made_in_suffix and t not in graph.params and t not in cut:
                cut.append(t)
    inputs = [i.name for i in graph.inputs]
    shapes = graph.infer_shapes(batch=1)

    def params_of(nodes):
        names = [t for n in nodes for t in n.inputs if t in graph.params]
        return {k: ParamSpec(tuple(graph.params[k].shape), graph.params[k].dtype, graph.params[k].group,
                             graph.params[k].trainable) for k in dict.fromkeys(names)}

    def clone(nodes):
        return [Node(n.op, n.name, list(n.inputs), list(n.outputs), copy.deepcopy(n.attrs)) for n in nodes]

    if len(suffix_nodes) == len(graph.nodes) and set(cut) <= set(inputs):
        return Split(None, graph, [])
    # the prefix: the frozen nodes the cut needs (ancestors of the cut tensors)
    need = set(cut)
    prefix_nodes = []
    for n in reversed(graph.nodes):
        if n.name not in in_suffix and any(t in need for t in n.outputs):
            prefix_nodes.append(n)
            need.update(n.inputs)
    prefix_nodes.reverse()
    pp = params_of(prefix_nodes)
    prefix = Graph(f"{graph.name}.prefix", copy.deepcopy(graph.inputs), list(cut), clone(prefix_nodes), pp,
                   {k: graph.weights[k] for k in pp}, None, {"split_of": graph.name})
    specs = []
    by_name = {i.name: i for i in graph.inputs}
    for t in cut:
        if t in by_name:
            specs.append(copy.deepcopy(by_name[t]))
        else:
            s = shapes[t]
            specs.append(TensorSpec(t, (None,) + tuple(s[1:]), "float32", "NCHW" if len(s) == 4 else "", None))
    sp = params_of(suffix_nodes)
    suffix = Graph(graph.name, specs, list(graph.outputs), clone(suffix_nodes), sp,
                   {k: graph.weights[k] for k in sp}, graph.labels, copy.deepcopy(graph.meta))
    prefix.validate()
    suffix.validate()
    return Split(prefix, suffix, cut)


def graph_digest(g: Graph) -> str:
    """sha256 of a graph's structure and weights."""
    h = hashlib.sha256(json.dumps(g.to_json(), sort_keys=True).encode())
    for k in sorted(g.weights):
        a = np.asarray(g.weights[k], order="C")
        h.update(f"{k}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def compute_dtype(job_dtype: str) -> np.dtype:
    """The arithmetic dtype of a job's dtype field: 'mixed' computes in float32 (only what the
    backward reads, and the feature cache, are kept as halves)."""
    return np.dtype(np.float32 if job_dtype == "mixed" else job_dtype)


# ============================================================================ feature cache
class FeatureCache:
    """The frozen prefix's outputs for every image of a dataset, on disk, memory-mapped.

    Key = sha256(prefix graph + weights (this holds the cut point), dataset.json digest, backend,
    storage dtype): any change to the frozen layers, the data or the numerics gives a new entry.
    The prefix runs in `dtype`; its outputs are stored as `store` (default the same; dtype 'mixed'
    stores float16, rounded to nearest even, half the disk and page cache; read back as float32).
    Layout: <root>/features/<key>/{meta.json, train.<i>.npy, val.<i>.npy} (i indexes the cut);
    an entry is written into a temp directory and renamed into place complete. Entries for the
    same (model path, data path, cut) with another key are stale and are removed when a new one
    is stored."""

    def __init__(self, root, split: Split, data_digest: str, backend: str, dtype, source: dict, store=None):
        self.root = Path(root) / "features"
        self.cut = list(split.cut)
        self.dtype = np.dtype(dtype)                                 # the prefix's arithmetic
        self.store = np.dtype(dtype if store is None else store)     # the stored features
        self.source = dict(source, cut=self.cut, dtype=self.store.name, backend=backend)
        h = hashlib.sha256(f"thomas-features/{CACHE_FORMAT}/{backend}/{self.store.name}/{data_digest}/".encode())
        h.update(graph_digest(split.prefix).encode())
        self.key = h.hexdigest()[:32]
        self.dir = self.root / self.key
        self.loaded: dict[str, dict[str, np.ndarray]] = {}

    def open(self) -> bool:
        """Map a complete entry; False if there is none (or it is damaged: then it is removed)."""
        meta = self.dir / "meta.json"
        if not meta.is_file():
            return False
        try:
            doc = json.loads(meta.read_text())
            for split, rows in doc["rows"].items():
                self.loaded[split] = {}
                for i, t in enumerate(self.cut):
                    a = np.load(self.dir / f"{split}.{i}.npy", mmap_mode="r", allow_pickle=False)
                    if a.shape[0] != rows or a.dtype != self.store:
                        raise ValueError(f"{split}.{i}.npy: shape {a.shape}, dtype {a.dtype}")
                    self.loaded[split][t] = a
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            print(f"thomas: feature cache {self.dir} is damaged ({e}); recomputing", file=sys.stderr)
            self.loaded = {}
            shutil.rmtree(self.dir, ignore_errors=True)
            return False
        return True

    def fill(self, splits: dict, prefix, batch: int, preprocess: dict | None, progress=None) -> None:
        """Run the prefix over every image of `splits` ({name: data.Split}) and store the entry."""
        from .data import normalize
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.key}.tmp-", dir=self.root))
        try:
            splits = {n: s for n, s in splits.items() if len(s)}
            total = sum(len(s) for s in splits.values())
            done = 0
            for name, sp in splits.items():
                outs = None
                los = range(0, len(sp), batch)
                xs = (normalize(sp.rows(np.arange(lo, min(lo + batch, len(sp)))), preprocess, self.dtype) for lo in los)
                for lo, (x, ahead) in zip(los, lookahead(xs)):      # ahead: the next batch, during this one
                    rows = np.arange(lo, min(lo + batch, len(sp)))
                    feats = prefix.forward(x, ahead=ahead)
                    if outs is None:
                        outs = [npy_map(tmp / f"{name}.{i}.npy", self.store, (len(sp),) + feats[t].shape[1:])
                                for i, t in enumerate(self.cut)]   # a full disk: ENOSPC here, not SIGBUS
                    for o, t in zip(outs, self.cut):
                        o[lo:lo + len(rows)] = feats[t]
                    done += len(rows)
                    if progress is not None:
                        progress(done, total)
                for o in outs or ():
                    o.flush()
                del outs
            with open(tmp / "meta.json", "w") as f:
                json.dump({"format": CACHE_FORMAT, "key": self.key, "source": self.source,
                           "rows": {n: len(s) for n, s in splits.items()}, "created": time.time()}, f)
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            try:
                os.replace(tmp, self.dir)
            except OSError:               # another run stored the same entry first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.filename is None:    # a write that names no file: name the cache
                raise OSError(e.errno, e.strerror, str(self.root)) from e
            raise
        self._evict_stale()
        if not self.open():
            raise OSError(f"feature cache {self.dir} could not be read back")

    def _evict_stale(self) -> None:
        for d in self.root.iterdir():
            if d.name == self.key or d.name.startswith("."):
                continue
            try:
                src = json.loads((d / "meta.json").read_text()).get("source")
            except (OSError, ValueError):
                continue
            if src == self.source:
                shutil.rmtree(d, ignore_errors=True)

    def nbytes(self) -> int:
        return int(sum(a.nbytes for s in self.loaded.values() for a in s.values()))
