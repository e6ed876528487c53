"""GEMM throughput (GFLOP/s) of the OpenCL kernels beside numpy/OpenBLAS (1 and 2 threads) and,
on a GPU machine, torch.matmul on CUDA (TF32 off), for square sizes and the real training GEMMs of
AlexNet and MobileNetV2 (conv-as-GEMM forward / dX / dW and the FC layers).

    python benchmarks/ops.py                                   # PoCL (or THOMAS_CL_DEVICE) vs numpy 1/2 threads
    python benchmarks/ops.py --quick                           # fewer shapes and repetitions
    THOMAS_CL_DEVICE=nvidia python benchmarks/ops.py --device-only --torch-cuda --square 1024,2048,4096
    python benchmarks/ops.py --gemm-params '{"TM": 8, "TN": 8}' # try other tiles (what `thomas tune` varies)

Each shape is the GEMM exactly as device_agent/ops/{conv2d,gemm}.py launch it: conv forward/dX are
batched over the images (stride per image), conv dW sums the images' products (reduce_batch: partial
products + a reduction on GPUs, image by image with beta = 1 on CPUs, where it runs as NN on im2row
columns), with the scratch the ops reserve for split-K. numpy and torch get their best form of the same
product (one stacked matmul; dW as one GEMM over the concatenated K). Depthwise convolutions are
direct kernels, not GEMMs, and are not listed.
Every engine: one warm-up, then `--reps` samples of enough back-to-back runs to last ~50 ms each; the
median is reported. numpy runs in a child process per thread count (OPENBLAS_NUM_THREADS), OpenCL and
torch in this one. JSON goes to benchmarks/results/ops.json, a Markdown table to stdout.
NOTE: on a shared 2-core machine the 2-thread OpenBLAS figures collapse whenever other processes run
(its threads wait on each other); compare only runs made on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLE_S = 0.05


# ----------------------------------------------------------------------------- shapes
def model_shapes(model: str, batch: int, size: int) -> list[dict]:
    """The GEMMs of one training step (forward, dX, dW) of every Conv2d (not depthwise) and Gemm node."""
    sys.path.insert(0, str(ROOT))
    from device_agent.ops import normalize_attrs, get_op
    from thomas_cli import zoo

    g = zoo.build(model, num_classes=1000, size=size, seed=0)
    shapes = g.infer_shapes(batch)
    graph_inputs = {spec.name for spec in g.inputs}
    out = []
    for n in g.nodes:
        if n.op not in ("Conv2d", "Gemm"):
            continue
        a = normalize_attrs(get_op(n.op), n.attrs)
        if n.op == "Gemm":
            (nb, f), m = shapes[n.inputs[0]], a["out_features"]
            out += [dict(layer=n.name, kind="fc fwd", form="nt", M=nb, N=m, K=f, batch=1, acc=False),
                    dict(layer=n.name, kind="fc dX", form="nn", M=nb, N=f, K=m, batch=1, acc=False),
                    dict(layer=n.name, kind="fc dW", form="tn", M=m, N=f, K=nb, batch=1, acc=False)]
            continue
        nb, c, _, _ = shapes[n.inputs[0]]
        _, k, p, q = shapes[n.outputs[0]]
        gr = a["groups"]
        if gr == c and gr > 1:
            continue  # depthwise: direct kernels
        r, s = a["kernel"]
        kg, crs = k // gr, c // gr * r * s
        tag = f"{r}x{s}" + (f"/g{gr}" if gr > 1 else "")
        out.append(dict(layer=n.name, kind=f"conv{tag} fwd", form="nn", M=kg, N=p * q, K=crs, batch=nb, acc=False))
        if n.inputs[0] not in graph_inputs:  # no dX for the image (the Plan skips it too)
            out.append(dict(layer=n.name, kind=f"conv{tag} dX", form="tn", M=crs, N=p * q, K=kg, batch=nb, acc=False))
        out.append(dict(layer=n.name, kind=f"conv{tag} dW", form="nt", M=kg, N=crs, K=p * q, batch=nb, acc=True))
    return out


def all_shapes(models: list[str], batch: int, size: int, square: list[int], quick: bool) -> list[dict]:
    rows: dict[tuple, dict] = {}
    for sq in square:
        for form in ("nn", "nt", "tn"):
            key = (form, sq, sq, sq, 1, False)
            rows[key] = dict(model="square", layers=[f"{sq}^3"], kind="square", form=form, M=sq, N=sq, K=sq,
                             batch=1, acc=False, count=1)
    for model in models:
        for sh in model_shapes(model, batch, size):
            key = (sh["form"], sh["M"], sh["N"], sh["K"], sh["batch"], sh["acc"])
            if key in rows:
                rows[key]["count"] += 1
                rows[key]["layers"].append(sh["layer"])
                continue
            rows[key] = dict(model=model, layers=[sh["layer"]], count=1,
                             **{k: v for k, v in sh.items() if k != "layer"})
    out = list(rows.values())
    if quick:  # the three biggest GEMMs per model and kind of pass, plus the squares
        keep = []
        for model in models:
            for kind in ("fwd", "dX", "dW"):
                cand = [r for r in out if r["model"] == model and r["kind"].endswith(kind)]
                cand.sort(key=lambda r: -r["M"] * r["N"] * r["K"] * r["batch"])
                keep += cand[:2]
        out = [r for r in out if r["model"] == "square"] + keep
    return out


def flops(sh: dict) -> int:
    return 2 * sh["M"] * sh["N"] * sh["K"] * sh["batch"]


def _time(fn, sync, reps: int) -> float:
    """median seconds of one fn() call: warm-up, then `reps` samples of n calls lasting ~SAMPLE_S"""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = max(time.perf_counter() - t0, 1e-6)
    n = max(1, min(1000, int(SAMPLE_S / one)))
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / n)
    samples.sort()
    return samples[len(samples) // 2]


# ----------------------------------------------------------------------------- engines
def _operand_shapes(sh: dict) -> tuple:
    ta, tb = sh["form"][0] == "t", sh["form"][1] == "t"
    M, N, K = sh["M"], sh["N"], sh["K"]
    return ((K, M) if ta else (M, K)), ((N, K) if tb else (K, N)), ta, tb


def run_numpy(shapes: list[dict], reps: int) -> list[float]:
    import numpy as np

    rng = np.random.default_rng(0)
    res = []
    for sh in shapes:
        (ar, ac), (br, bc), ta, tb = _operand_shapes(sh)
        z = sh["batch"]
        if sh["acc"]:  # dW over the images: numpy's best is one GEMM over the concatenated K
            M, N, K = sh["M"], sh["N"], sh["K"] * z
            a = rng.standard_normal((M, K), dtype=np.float32)
            b = rng.standard_normal((N, K), dtype=np.float32)
            c = np.empty((M, N), np.float32)
            fn = lambda: np.matmul(a, b.T, out=c)  # noqa: E731
        else:
            a = rng.standard_normal((ar, ac), dtype=np.float32)          # conv: the weight, shared by the images
            b = rng.standard_normal((z, br, bc) if z > 1 else (br, bc), dtype=np.float32)
            oa = a.swapaxes(-1, -2) if ta else a
            ob = b.swapaxes(-1, -2) if tb else b
            c = np.empty((z, sh["M"], sh["N"]) if z > 1 else (sh["M"], sh["N"]), np.float32)
            fn = lambda: np.matmul(oa, ob, out=c)  # noqa: E731
        t = _time(fn, lambda: None, reps)
        res.append(t)
        del a, b, c
    return res


def run_opencl(shapes: list[dict], reps: int, params: dict | None, variant: str | None) -> tuple[list[float], dict]:
    import numpy as np
    import pyopencl as cl

    sys.path.insert(0, str(ROOT))
    from device_agent.backends.opencl.gemm import gemm, gemm_config, split_floats
    from device_agent.backends.opencl.runtime import LaunchBuilder, Runtime, TensorRef, replay

    rt = Runtime()
    rng = np.random.default_rng(0)
    fam, p = gemm_config(LaunchBuilder(rt), variant, params)

    def buf(name, n, fill=True):
        t = TensorRef(name, (n,), rt.alloc(4 * n))
        if fill:
            cl.enqueue_copy(rt.queue, t.buf, rng.standard_normal(n, dtype=np.float32))
        return t

    res = []
    for sh in shapes:
        if fam == "cpu" and sh["kind"].startswith("conv") and sh["acc"]:
            sh["cl_form"] = "nn"  # conv dW on CPU-shaped GEMMs: gy @ rows (im2row), see ops/conv2d.py
        cl_shape = dict(sh, form=sh.get("cl_form", sh["form"]))
        (ar, ac), (br, bc), ta, tb = _operand_shapes(cl_shape)
        M, N, K, z = sh["M"], sh["N"], sh["K"], sh["batch"]
        # im2col rows are padded to 4 floats (ops/conv2d.py _ldp): B of fwd and GPU dW, C of dX
        conv = sh["kind"].startswith("conv") and "1x1" not in sh["kind"]
        pad = lambda v: -(-v // 4) * 4 if conv else v  # noqa: E731
        ldb = pad(bc) if conv and (sh["kind"].endswith("fwd") or (sh["acc"] and fam == "gpu")) else bc
        ldc = pad(N) if conv and sh["kind"].endswith("dX") else N
        # conv fwd/dX: the weight (A) is shared by the images, B and C are per image; dW: all per image
        A = buf("A", ar * ac * (z if sh["acc"] else 1))
        B, C = buf("B", br * ldb * z), buf("C", M * ldc * (1 if sh["acc"] else z), fill=False)
        b = LaunchBuilder(rt)
        wf = split_floats(M, N, K, z, reduce_batch=sh["acc"])      # what the op would reserve
        work = buf("work", wf, fill=False) if wf else None
        # dW: A (gy) and B (columns) per image, summed into one C (reduce_batch); else A shared
        gemm(b, ta, tb, M, N, K, A, 0, ac, B, 0, ldb, C, 0, ldc, batch=z, stride_a=ar * ac if sh["acc"] else 0,
             stride_b=br * ldb, stride_c=0 if sh["acc"] else M * ldc, reduce_batch=sh["acc"], work=work,
             work_floats=wf, params=params, variant=variant)
        sh["cl_launches"] = len(b.launches)
        res.append(_time(lambda: replay(rt.queue, b.launches), rt.queue.finish, reps))
        del A, B, C, b, work
    return res, {"device": rt.info, "family": fam, "params": p}


def run_torch_cuda(shapes: list[dict], reps: int) -> tuple[list[float], dict]:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    res = []
    for sh in shapes:
        (ar, ac), (br, bc), ta, tb = _operand_shapes(sh)
        z = sh["batch"]
        rnd = lambda *s: torch.randn(*s, device=dev, generator=gen)  # noqa: E731
        if sh["acc"]:
            a, b = rnd(sh["M"], sh["K"] * z), rnd(sh["N"], sh["K"] * z)
            c = torch.empty(sh["M"], sh["N"], device=dev)
            fn = lambda: torch.matmul(a, b.t(), out=c)  # noqa: E731
        else:
            a = rnd(ar, ac)
            b = rnd(z, br, bc) if z > 1 else rnd(br, bc)
            oa = a.transpose(-1, -2) if ta else a
            ob = b.transpose(-1, -2) if tb else b
            c = torch.empty(*((z,) if z > 1 else ()), sh["M"], sh["N"], device=dev)
            fn = lambda: torch.matmul(oa, ob, out=c)  # noqa: E731
        res.append(_time(fn, torch.cuda.synchronize, reps))
        del a, b, c
    return res, {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "tf32": False}


# ----------------------------------------------------------------------------- driver
def child_numpy(shapes_path: str, reps: int) -> None:
    shapes = json.loads(Path(shapes_path).read_text())
    print(json.dumps(run_numpy(shapes, reps)))


def numpy_info() -> dict:
    import numpy as np

    info = {"numpy": np.__version__}
    try:
        cfg = np.show_config(mode="dicts")
        info["blas"] = cfg.get("Build Dependencies", {}).get("blas", {}).get("name")
    except TypeError:  # numpy < 1.26
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="alexnet,mobilenet_v2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--square", default="512,1024,2048")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true",
                    help="fewer shapes (squares + the 2 biggest per pass and model), 3 reps")
    ap.add_argument("--device-only", action="store_true", help="no numpy peers (e.g. on the GPU machine)")
    ap.add_argument("--torch-cuda", action="store_true", help="also time torch.matmul on CUDA, TF32 off")
    ap.add_argument("--no-opencl", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gemm-params", default=None, help="JSON tile overrides for the GEMM launcher")
    ap.add_argument("--variant", choices=("gpu", "cpu"), default=None, help="force a GEMM kernel family")
    ap.add_argument("--out", default=str(HERE / "results" / "ops.json"))
    ap.add_argument("--child-numpy", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.reps = min(a.reps, 3)
    if a.child_numpy:
        child_numpy(a.child_numpy, a.reps)
        return
    models = [m for m in a.models.split(",") if m]
    square = [int(v) for v in a.square.split(",") if v]
    shapes = all_shapes(models, a.batch, a.size, square, a.quick)
    print(f"{len(shapes)} GEMM shapes", file=sys.stderr)
    times: dict[str, list[float]] = {}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "batch": a.batch, "size": a.size, "reps": a.reps, "sample_s": SAMPLE_S}
    if not a.device_only:
        meta.update(numpy_info())
        tmp = Path(a.out).with_suffix(".shapes.json")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(shapes))
        try:
            for threads in (1, 2):
                env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                           MKL_NUM_THREADS=str(threads))
                r = subprocess.run([sys.executable, __file__, "--child-numpy", str(tmp), "--reps", str(a.reps)],
                                   env=env, capture_output=True, text=True, check=True)
                times[f"numpy{threads}"] = json.loads(r.stdout.splitlines()[-1])
                print(f"numpy {threads} thread(s) done", file=sys.stderr)
        finally:
            tmp.unlink(missing_ok=True)
    if not a.no_opencl:
        params = json.loads(a.gemm_params) if a.gemm_params else None
        times["opencl"], meta["opencl"] = run_opencl(shapes, a.reps, params, a.variant)
        print("opencl done", file=sys.stderr)
    if a.torch_cuda:
        times["torch_cuda"], meta["torch_cuda"] = run_torch_cuda(shapes, a.reps)
        print("torch cuda done", file=sys.stderr)
    engines = list(times)
    for i, sh in enumerate(shapes):
        sh["ms"] = {e: times[e][i] * 1e3 for e in engines}
        sh["gflops"] = {e: flops(sh) / times[e][i] / 1e9 for e in engines}
    totals = {}
    for model in ["square"] + models:
        rows = [s for s in shapes if s["model"] == model]
        if rows and model != "square":
            totals[model] = {e: sum(s["count"] * s["ms"][e] for s in rows) for e in engines}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "totals_ms": totals, "shapes": shapes}, indent=1) + "\n")
    print_table(meta, shapes, engines, totals)


def print_table(meta: dict, shapes: list[dict], engines: list[str], totals: dict) -> None:
    dev = meta.get("opencl", {}).get("device", {})
    print(f"\nGEMM GFLOP/s, batch {meta['batch']}, {meta['size']}x{meta['size']}; OpenCL: "
          f"{dev.get('device', '-')} ({dev.get('platform', '-')}), family {meta.get('opencl', {}).get('family', '-')}; "
          f"{meta['date']}, median of {meta['reps']}\n")
    ref = "numpy2" if "numpy2" in engines else ("torch_cuda" if "torch_cuda" in engines else None)
    head = ["model", "layers", "pass", "form", "M", "N", "K", "batch"] + engines
    if ref and "opencl" in engines:
        head.append(f"opencl/{ref}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for s in shapes:
        layers = s["layers"][0] + (f" (+{len(s['layers']) - 1})" if len(s["layers"]) > 1 else "")
        form = s["form"] + (f"→{s['cl_form']}" if s.get("cl_form") else "")
        cells = [s["model"], layers, s["kind"], form, str(s["M"]), str(s["N"]), str(s["K"]),
                 str(s["batch"]) + ("+acc" if s["acc"] else "")]
        cells += [f"{s['gflops'][e]:.1f}" for e in engines]
        if ref and "opencl" in engines:
            cells.append(f"{s['gflops']['opencl'] / s['gflops'][ref]:.0%}")
        print("| " + " | ".join(cells) + " |")
    if totals:
        print("\nAll GEMMs of one training step (ms, layers counted with multiplicity):\n")
        print("| model | " + " | ".join(engines) + " |")
        print("|---|" + "---|" * len(engines))
        for model, t in totals.items():
            print(f"| {model} | " + " | ".join(f"{t[e]:.1f}" for e in engines) + " |")


if __name__ == "__main__":
    main()
