"""`python -m device_agent bench JOB.json`: per-layer times of one stage on the OpenCL Plan and on
the serial single-core numpy_ref baseline, on this device.

    {"model": "models/mobilenet_v2", "stage": "last", "batch": 8, "steps": 10, "out": "runs/<id>"}
    -> hello, layer_time... (opencl), layer_time... (numpy), bench | error

Stages: infer (inference plan, BN folded), last (classifier only), all (every layer, BN batch
statistics); training stages use SGD with momentum 0.9 and lr 1e-4.

How it measures:
  step     ms/step is the median of `steps` plain train_step()/infer() calls after one warm-up: the
           Plan's launch list with its one sync, exactly the training path.
  layers   a SEPARATE profiling pass replays the same launches node by node with queue.finish()
           around each node's group (never in the training path), median over `steps` passes.
  baseline numpy_ref in a subprocess started with THOMAS_THREADS=1 (BLAS pinned before numpy is
           imported), profile=True, same stage; its optimizer row is a numpy SGD-momentum update.
  GFLOP/s  from the op FLOPs (the Plan's launch flops; for numpy the same count: 2·MACs forward,
           2x that backward for Conv2d/Gemm); GB/s from the bytes of the node's input and output
           tensors (a lower bound on the traffic).
Without pyopencl or an OpenCL device the `opencl` column carries `error` and the baseline still runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import InputError, ThomasError
from ..protocol import BenchDoneEvent, LayerTimeEvent

STAGES = ("infer", "last", "all")
LR = 1e-4


def read_job(path: str, kind: str, defaults: dict) -> dict:
    """A small agent job file (bench, tune): a JSON object with 'model' (a package directory) and the
    fields of `defaults`, whose integer fields must be integers >= 1; InputError (one line) otherwise."""
    try:
        job = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable {kind} job ({e})") from None
    if not isinstance(job, dict) or not isinstance(job.get("model"), str):
        raise InputError(f"{path}: a {kind} job needs 'model' (a package directory)")
    for k, v in defaults.items():
        job.setdefault(k, v)
        if isinstance(v, int) and (isinstance(job[k], bool) or not isinstance(job[k], int) or job[k] < 1):
            raise InputError(f"{kind} field '{k}' must be an integer >= 1, got {job[k]!r}")
    return job


def load_job(path: str) -> dict:
    job = read_job(path, "bench", {"stage": "last", "batch": 8, "steps": 10})
    if job["stage"] not in STAGES:
        raise InputError(f"bench field 'stage' must be one of {', '.join(STAGES)}, got {job['stage']!r}")
    return job


def _inputs(g, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = tuple(batch if d is None else int(d) for d in g.inputs[0].shape)
    x = rng.standard_normal(shape).astype(np.float32)
    classes = int(g.infer_shapes(batch=1)[g.outputs[0]][-1])
    y = rng.integers(0, classes, batch).astype(np.int32)
    return x, y


def _trainable(g, stage: str):
    from ..training.stages import trainable_params

    return set() if stage == "infer" else trainable_params(g, stage)


def node_costs(g, batch: int) -> dict[str, dict]:
    """node -> {op, flops (forward), bytes (inputs + outputs, float32)}; shapes at `batch`."""
    shapes = g.infer_shapes(batch=batch)
    out = {}
    for n in g.nodes:
        nbytes = 4 * sum(int(np.prod(shapes[t])) for t in [*n.inputs, *n.outputs])
        flops = 0
        if n.op == "Conv2d":
            w = shapes[n.inputs[1]]                       # (K, C/g, R, S)
            flops = 2 * int(np.prod(shapes[n.outputs[0]])) * int(np.prod(w[1:]))
        elif n.op == "Gemm":
            a, w = shapes[n.inputs[0]], shapes[n.inputs[1]]
            flops = 2 * int(np.prod(a)) * int(np.prod(w)) // max(1, int(a[-1]))
        else:
            flops = int(np.prod(shapes[n.outputs[0]]))     # one op an element (eltwise, pool, BN)
        out[n.name] = {"op": n.op, "flops": flops, "bytes": nbytes}
    return out


def _rows(backend: str, times: dict, costs: dict, flops: dict | None, order: list[str]) -> list[dict]:
    """times: layer -> [fw s, bw s]; flops: layer -> [fw, bw] counted flops (None: estimate)."""
    total = sum(f + b for f, b in times.values()) or 1e-12
    rows = []
    for name in order:
        if name not in times:
            continue
        fw, bw = times[name]
        c = costs.get(name, {"op": "Optimizer" if name == "optimizer" else name.strip("<>"), "flops": 0, "bytes": 0})
        if flops and name in flops:
            ff, fb = flops[name]
        else:
            ff = c["flops"]
            fb = (2 * ff if c["op"] in ("Conv2d", "Gemm") else ff) if bw > 0 else 0
        s = fw + bw
        rows.append(dict(backend=backend, layer=name, op=c["op"], fw_ms=fw * 1e3, bw_ms=bw * 1e3,
                         gflops=(ff + fb) / s / 1e9 if s > 0 and ff + fb else None,
                         gbs=c["bytes"] * (2 if bw > 0 else 1) / s / 1e9 if s > 0 and c["bytes"] else None,
                         share=s / total))
    return rows


# ============================================================================ OpenCL
def _node_of(label: str) -> tuple[str, int]:
    """'conv1' -> (conv1, 0); 'conv1:backward/gemm_nt' -> (conv1, 1); optimizer launches -> 'optimizer'."""
    name = label.split("/")[0]
    if name.endswith(":backward"):
        return name[: -len(":backward")], 1
    return name, 0


def bench_opencl(g, stage: str, batch: int, steps: int, costs: dict) -> dict:
    try:
        import pyopencl as cl

        from ..backends.opencl.runtime import replay
        from ..backends.opencl.plan import OptimConfig, Plan
    except ImportError as e:
        return {"backend": "opencl", "error": f"pyopencl is not installed ({e})"}
    x, y = _inputs(g, batch)
    try:
        if stage == "infer":
            plan = Plan(g, batch=batch, trainable=set())
            fn = lambda: plan.infer(x)  # noqa: E731
        else:
            plan = Plan(g, batch=batch, trainable=_trainable(g, stage), optimizer=OptimConfig("sgd", momentum=0.9),
                        bn_batch_stats=stage == "all")
            fn = lambda: plan.train_step(x, y, lr=LR)  # noqa: E731
    except (ThomasError, cl.Error) as e:
        return {"backend": "opencl", "error": f"{type(e).__name__}: {e}"}
    fn()
    ms = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    # profiling pass: the same launches, grouped by node, a finish() around each group
    groups: list[tuple[str, int, list]] = []
    for phase, launches in ((0, plan.fw_launches), (1, plan.bw_launches), (2, plan.opt_launches)):
        for ln in launches:
            name, bw = ("optimizer", 0) if phase == 2 else _node_of(ln.label)
            bw = 1 if phase == 1 else bw
            if groups and groups[-1][0] == name and groups[-1][1] == bw:
                groups[-1][2].append(ln)
            else:
                groups.append((name, bw, [ln]))
    q = plan.rt.queue
    vals = plan._values(0, LR)
    if stage != "infer":
        plan._upload(x)
        cl.enqueue_copy(q, plan.labels.buf, y)
    samples: dict[tuple[str, int], list[float]] = {}
    flops: dict[str, list[int]] = {}
    for name, bw, lns in groups:
        flops.setdefault(name, [0, 0])[bw] += sum(ln.flops for ln in lns)
    for _ in range(steps):
        per: dict[tuple[str, int], float] = {}
        for name, bw, lns in groups:
            q.finish()
            t0 = time.perf_counter()
            replay(q, lns, vals)
            q.finish()
            per[(name, bw)] = per.get((name, bw), 0.0) + time.perf_counter() - t0
        for k, v in per.items():
            samples.setdefault(k, []).append(v)
    times: dict[str, list[float]] = {}
    for (name, bw), v in samples.items():
        times.setdefault(name, [0.0, 0.0])[bw] = float(np.median(v))
    order = [n.name for n in g.nodes] + ["optimizer"]
    extra = [k for k in times if k not in order]   # launches not named after a node (loss, acc_add)
    rows = _rows("opencl", times, costs, {k: v for k, v in flops.items() if any(v)}, order + extra)
    step = float(np.median(ms))
    return {"backend": "opencl", "device": plan.rt.info.get("device"), "ms_step": step,
            "img_s": batch * 1e3 / step, "memory": plan.memory(), "layers": rows}


# ============================================================================ numpy baseline
def bench_numpy(g, stage: str, batch: int, steps: int, costs: dict) -> dict:
    """The serial baseline in this process; call it through `baseline()` so BLAS is pinned."""
    from ..backends.numpy import NumpyRef

    x, y = _inputs(g, batch)
    trainable = _trainable(g, stage)
    be = NumpyRef(g, trainable=trainable, profile=True)
    mom = {k: np.zeros_like(be.weights[k]) for k in trainable}

    def step():
        t0 = time.perf_counter()
        if stage == "infer":
            be.forward(x, training=False)
            return time.perf_counter() - t0, 0.0
        be.forward(x, training=True, bn_batch_stats=stage == "all", grad=True)
        be.loss(y)
        grads = be.backward()
        t1 = time.perf_counter()
        for k, gr in grads.items():
            if k in mom:
                mom[k] = 0.9 * mom[k] + gr
                be.weights[k] -= LR * mom[k]
        t2 = time.perf_counter()
        return t2 - t0, t2 - t1

    import tracemalloc

    tracemalloc.start()              # numpy reports its buffers to tracemalloc: the step's peak, untimed
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ms, opt, samples = [], [], {}
    for _ in range(steps):
        be.timings = {}
        s, o = step()
        ms.append(s * 1e3)
        opt.append(o)
        for k, v in be.timings.items():
            samples.setdefault(k, []).append(v)
    times = {k: [float(np.median([v[0] for v in vs])), float(np.median([v[1] for v in vs]))]
             for k, vs in samples.items()}
    if stage != "infer":
        times["optimizer"] = [float(np.median(opt)), 0.0]
    order = [n.name for n in g.nodes] + ["optimizer"]
    rows = _rows("numpy", times, costs, None, order)
    step_ms = float(np.median(ms))
    nbytes = lambda ks: 4 * sum(int(be.weights[k].size) for k in ks)  # noqa: E731
    mem = {"params": nbytes(be.weights), "grads": nbytes(trainable), "optimizer": nbytes(mom)}
    mem["peak"] = mem["params"] + mem["optimizer"] + peak    # weights and momentum live outside the step
    return {"backend": "numpy", "threads": os.environ.get("THOMAS_THREADS"), "ms_step": step_ms,
            "img_s": batch * 1e3 / step_ms, "memory": mem, "layers": rows}


def baseline(job_path: str) -> dict:
    """numpy_ref in a child started with THOMAS_THREADS=1; returns its result dict."""
    env = dict(os.environ, THOMAS_THREADS="1")
    pkg_parent = str(Path(__file__).resolve().parents[2])    # the folder holding device_agent/
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run([sys.executable, "-m", "device_agent.bench.bench", "--baseline", job_path],
                       env=env, capture_output=True, text=True)
    if p.returncode != 0:
        tail = " | ".join(p.stderr.strip().splitlines()[-3:]) or f"exit status {p.returncode}"
        return {"backend": "numpy", "error": f"baseline failed: {tail}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(args: list[str], emit) -> int:
    from ..model.graph import load_package

    job = load_job(args[0])
    g = load_package(job["model"])
    costs = node_costs(g, job["batch"])
    res = {}
    for r in (bench_opencl(g, job["stage"], job["batch"], job["steps"], costs), baseline(args[0])):
        res[r["backend"]] = r
        for row in r.get("layers", []):
            emit(LayerTimeEvent(**row))
    cl_, np_ = res["opencl"], res["numpy"]
    speedup = np_["ms_step"] / cl_["ms_step"] if "ms_step" in cl_ and "ms_step" in np_ else None
    summary = BenchDoneEvent(model=job["model"], stage=job["stage"], batch=job["batch"], steps=job["steps"],
                             results={k: {kk: vv for kk, vv in v.items() if kk != "layers"} for k, v in res.items()},
                             speedup=speedup)
    if job.get("out"):
        out = Path(job["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(dict(job=job, results=res, speedup=speedup), indent=1) + "\n")
    emit(summary)
    return 0


if __name__ == "__main__":   # the baseline child: python -m device_agent.bench.bench --baseline JOB.json
    if len(sys.argv) == 3 and sys.argv[1] == "--baseline":
        from ..model.graph import load_package

        _job = load_job(sys.argv[2])
        _g = load_package(_job["model"])
        print(json.dumps(bench_numpy(_g, _job["stage"], _job["batch"], _job["steps"],
                                     node_costs(_g, _job["batch"]))))
        sys.exit(0)
    print("usage: python -m device_agent.bench.bench --baseline JOB.json", file=sys.stderr)
    sys.exit(2)
