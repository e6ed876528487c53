"""The convolution paths side by side on the OpenCL device: implicit GEMM (kernels/conv_igemm.cl) and
im2col + GEMM, per layer (forward, dX, dW timed apart) and their workspace bytes; plus the Plans'
memory for whole models (Plan.memory(): workspace, peak).

    python benchmarks/conv_paths.py [--layers alexnet,vgg] [--batch 32] [--reps 10]
                                    [--models alexnet,mobilenet_v2] [--size 224] [--out FILE]
                                    [--tiles '[{"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 8}]']

Each layer is timed as: its launches replayed `reps` times after one warm-up, one finish() at the end
(wall clock / reps). THOMAS_CL_CONV picks the path (set here per run). Writes JSON and prints Markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

# (name, C, H, K, R, stride, pad): square inputs and kernels
LAYERS = {
    "alexnet": [("alex.conv1", 3, 224, 64, 11, 4, 2), ("alex.conv2", 64, 27, 192, 5, 1, 2),
                ("alex.conv3", 192, 13, 384, 3, 1, 1), ("alex.conv4", 384, 13, 256, 3, 1, 1),
                ("alex.conv5", 256, 13, 256, 3, 1, 1)],
    "vgg": [("3x3.56x64", 64, 56, 64, 3, 1, 1), ("3x3.28x128", 128, 28, 128, 3, 1, 1),
            ("3x3.14x256", 256, 14, 256, 3, 1, 1), ("3x3s2.56x64", 64, 56, 128, 3, 2, 1)],
    "mobilenet": [("mnv2.conv0", 3, 224, 32, 3, 2, 1)],
}


def time_layer(rt, layer, batch, reps, mode, tile=None):
    from clcheck import empty, upload
    from device_agent.backends.opencl.arena import workspace_bytes
    from device_agent.backends.opencl.runtime import LaunchBuilder, NodeIO, replay
    from device_agent.ops import get_op, normalize_attrs

    os.environ["THOMAS_CL_CONV"] = mode
    rt.tuning.override["conv2d"] = {"igemm_tile": tile} if tile else {}
    name, c, h, k, r, st, pd = layer
    op = get_op("Conv2d")
    a = normalize_attrs(op, {"out_channels": k, "kernel": [r, r], "stride": [st, st], "pads": [pd] * 4})
    xs = (batch, c, h, h)
    ws_shape = op.param_shapes(a, xs)["weight"]
    ys = op.infer(a, [xs, ws_shape, (k,)])[0]
    rng = np.random.default_rng(0)
    x = upload(rt, "x", rng.standard_normal(xs).astype(np.float32))
    w = upload(rt, "w", (rng.standard_normal(ws_shape) * 0.1).astype(np.float32))
    bias = upload(rt, "b", np.zeros(k, np.float32))
    y, gy = empty(rt, "y", ys), upload(rt, "gy", rng.standard_normal(ys).astype(np.float32))
    gx, gw, gb = empty(rt, "gx", xs), empty(rt, "gw", ws_shape), empty(rt, "gb", (k,))
    nbytes = workspace_bytes(op.cl, a, [xs, ws_shape, (k,)], [ys], dev=rt)
    wsr = empty(rt, "ws", (max(1, nbytes // 4),)) if nbytes else None
    label = mode + (f"[{tile['MWG']}x{tile['NWG']}x{tile['KWG']}/{tile['NDIMC']}x{tile['MDIMC']}]" if tile else "")
    out = {"layer": name, "mode": label, "batch": batch, "workspace": nbytes,
           "gflop": 2 * batch * k * ys[2] * ys[3] * c * r * r / 1e9}
    for part, needs in (("fwd", None), ("dx", (gx, None, None)), ("dw", (None, gw, gb))):
        io = NodeIO(name, "Conv2d", a, [x, w, bias], [y], gx=list(needs or ()), gy=[gy], workspace=wsr)
        b = LaunchBuilder(rt)
        (op.cl.forward if needs is None else op.cl.backward)(b, io)
        replay(rt.queue, b.launches)
        rt.queue.finish()
        t0 = time.perf_counter()
        for _ in range(reps):
            replay(rt.queue, b.launches)
        rt.queue.finish()
        out[part + "_ms"] = (time.perf_counter() - t0) * 1e3 / reps
    return out


def plan_memory(rt, arch, size, batch, mode):
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from thomas_cli import zoo

    os.environ["THOMAS_CL_CONV"] = mode
    g = zoo.build(arch, num_classes=1000, size=size)
    plan = Plan(g, batch=batch, optimizer=OptimConfig("sgd", momentum=0.9), runtime=rt)
    m = plan.memory()
    return {"model": arch, "mode": mode, "batch": batch, "size": size, "workspace": m["workspace"],
            "peak": m["peak"], "activations": m["activations"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="alexnet,vgg,mobilenet")
    ap.add_argument("--models", default="")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--modes", default="im2col,igemm")
    ap.add_argument("--tiles", default="", help="JSON list of igemm tiles to time beside the default")
    ap.add_argument("--out", default=str(HERE / "results" / "conv_paths.json"))
    args = ap.parse_args()
    from device_agent.backends.opencl.runtime import Runtime

    rt = Runtime()
    modes = args.modes.split(",")
    runs = [(m, None) for m in modes] + [("igemm", t) for t in (json.loads(args.tiles) if args.tiles else [])]
    rows = [time_layer(rt, ly, args.batch, args.reps, m, t)
            for fam in filter(None, args.layers.split(",")) for ly in LAYERS[fam] for m, t in runs]
    rt.tuning.override.pop("conv2d", None)
    mems = [plan_memory(rt, arch, args.size, args.batch, m) for arch in filter(None, args.models.split(","))
            for m in modes]
    doc = {"device": rt.info, "layers": rows, "plans": mems}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"device: {rt.info.get('device')}  batch {args.batch}")
    print("| layer | path | fwd ms | dX ms | dW ms | fwd TFLOP/s | workspace MiB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['mode']} | {r['fwd_ms']:.3f} | {r['dx_ms']:.3f} | {r['dw_ms']:.3f} | "
              f"{r['gflop'] / r['fwd_ms']:.2f} | {r['workspace'] / 2**20:.1f} |")
    for m in mems:
        print(f"plan {m['model']} b{m['batch']} {m['size']} {m['mode']}: workspace {m['workspace'] / 2**20:.1f} MiB, "
              f"activations {m['activations'] / 2**20:.1f} MiB, peak {m['peak'] / 2**20:.1f} MiB")
    sys.stdout.flush()
    os._exit(0)   # NOTE: as the other benchmarks: no driver teardown at exit


if __name__ == "__main__":
    main()
