"""Host side of `make test-arm64`: read what the arm64 agent wrote into ROOT and check it.

    .venv/bin/python tests/arm64/check.py ROOT [--machine aarch64] [--no-opencl] [--times NAME=SECONDS ...]

Checks (one line each, exit 1 on the first failure):
  doctor   the device event: machine aarch64, numpy and pyopencl importable, a PoCL OpenCL device, no error
  epoch    the numpy engine finished one epoch: every step loss finite, the loss fell, val accuracy reported
  cl2      the OpenCL engine's two steps equal the numpy engine's on the same job (np2): per-step losses and
           the final weights within float32 tolerance (both engines compute in float32; different summation
           orders leave ~1e-6 relative differences per op, which two SGD steps do not amplify past these)
Writes ROOT/summary.json (versions, devices, losses, largest differences, times) for docs/ANDROID.md.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

LOSS_RTOL = 2e-4          # as tests/test_train_heads.py's numpy-vs-opencl training check
W_RTOL, W_ATOL = 1e-4, 1e-5


class CheckFailed(Exception):
    pass


def events(path: Path) -> list[dict]:
    if not path.is_file():
        raise CheckFailed(f"{path} is missing: the agent did not run (see its log beside it)")
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def one(evs: list[dict], kind: str, where: str) -> dict:
    found = [e for e in evs if e["ev"] == kind]
    if not found:
        err = [e for e in evs if e["ev"] == "error"]
        raise CheckFailed(f"{where}: no '{kind}' event" + (f"; error {err[-1]}" if err else ""))
    return found[-1]


def check_doctor(root: Path, machine: str) -> dict:
    dev = one(events(root / "doctor.jsonl"), "device", "doctor")
    if dev["machine"] != machine:
        raise CheckFailed(f"doctor: machine is {dev['machine']!r}, expected {machine!r}")
    if not dev["numpy"] or not dev["pyopencl"]:
        raise CheckFailed(f"doctor: numpy {dev['numpy']}, pyopencl {dev['pyopencl']}")
    if dev["opencl_error"] or not dev["opencl"]:
        raise CheckFailed(f"doctor: no OpenCL device ({dev['opencl_error']})")
    return dev


def step_losses(evs: list[dict]) -> list[float]:
    return [e["loss"] for e in evs if e["ev"] == "step"]


def check_epoch(root: Path) -> dict:
    evs = events(root / "runs" / "epoch" / "events.jsonl")
    done, losses = one(evs, "done", "epoch"), step_losses(evs)
    if not losses or not all(math.isfinite(x) for x in losses):
        raise CheckFailed(f"epoch: step losses {losses}")
    k = max(1, len(losses) // 4)
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    if not last < first:
        raise CheckFailed(f"epoch: the loss did not fall (first quarter {first:.4f}, last quarter {last:.4f})")
    if done["val_acc"] is None:
        raise CheckFailed("epoch: no val accuracy")
    return dict(steps=done["steps"], loss_first=first, loss_last=last, val_loss=done["val_loss"],
                val_acc=done["val_acc"], ms=done["ms"])


def final_weights(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "final" / "weights.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def check_two_steps(root: Path) -> dict:
    runs = root / "runs"
    ref_evs, cl_evs = events(runs / "np2" / "events.jsonl"), events(runs / "cl2" / "events.jsonl")
    one(ref_evs, "done", "np2")
    one(cl_evs, "done", "cl2")
    a, b = step_losses(ref_evs), step_losses(cl_evs)
    if len(a) != 2 or len(b) != 2:
        raise CheckFailed(f"two-step jobs ran {len(a)} (numpy) and {len(b)} (opencl) steps, expected 2")
    loss_rel = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    if loss_rel > LOSS_RTOL:
        raise CheckFailed(f"cl2: losses {b} differ from numpy's {a} (relative {loss_rel:.2e} > {LOSS_RTOL})")
    wa, wb = final_weights(runs / "np2"), final_weights(runs / "cl2")
    if sorted(wa) != sorted(wb):
        raise CheckFailed(f"cl2: weights {sorted(wb)} vs numpy's {sorted(wa)}")
    worst, worst_name = 0.0, ""
    for k in wa:
        if not np.all(np.isfinite(wb[k])):
            raise CheckFailed(f"cl2: weight {k} has non-finite values")
        excess = float(np.max(np.abs(wb[k] - wa[k]) - (W_ATOL + W_RTOL * np.abs(wa[k])), initial=-np.inf))
        if excess > 0:
            raise CheckFailed(f"cl2: weight {k} differs from numpy's beyond atol {W_ATOL} + rtol {W_RTOL}")
        d = float(np.max(np.abs(wb[k] - wa[k]), initial=0.0))
        worst, worst_name = (d, k) if d > worst else (worst, worst_name)
    moved = max(float(np.max(np.abs(wa[k] - w0))) for k, w0 in final_weights_init(root).items() if k in wa)
    if moved == 0.0:
        raise CheckFailed("cl2: two steps left every weight where it was (nothing was trained)")
    return dict(losses_numpy=a, losses_opencl=b, loss_max_rel_diff=loss_rel, weight_max_abs_diff=worst,
                weight_worst=worst_name, weight_max_update=moved, tensors=len(wa))


def final_weights_init(root: Path) -> dict[str, np.ndarray]:
    with np.load(root / "models" / "tiny" / "weights.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def parse(argv: list[str]) -> tuple[Path, str, bool, dict[str, float]]:
    if not argv or argv[0].startswith("-"):
        raise SystemExit(f"usage: {Path(__file__).name} ROOT [--machine M] [--no-opencl] [--times NAME=SECONDS ...]")
    root, machine, opencl, times, i = Path(argv[0]), "aarch64", True, {}, 1
    while i < len(argv):
        if argv[i] == "--no-opencl":
            opencl, i = False, i + 1
        elif argv[i] == "--machine" and i + 1 < len(argv):
            machine, i = argv[i + 1], i + 2
        elif argv[i] == "--times":
            i += 1
            while i < len(argv) and "=" in argv[i]:
                name, _, sec = argv[i].partition("=")
                times[name], i = round(float(sec), 1), i + 1
        else:
            raise SystemExit(f"{Path(__file__).name}: unknown argument {argv[i]!r}")
    return root, machine, opencl, times


def main(argv: list[str]) -> int:
    root, machine, opencl, times = parse(argv)
    summary: dict = {"times_s": times}
    try:
        dev = check_doctor(root, machine)
        cl = dev["opencl"][0]
        summary["doctor"] = {k: dev[k] for k in ("os", "machine", "cpus", "python", "numpy", "pyopencl")}
        summary["doctor"]["opencl"] = [f"{d.get('platform')} / {d.get('device')}" for d in dev["opencl"]]
        print(f"ok doctor: {dev['machine']} python {dev['python']} numpy {dev['numpy']} pyopencl {dev['pyopencl']}; "
              f"OpenCL {cl.get('platform')} / {cl.get('device')}")
        summary["epoch"] = e = check_epoch(root)
        print(f"ok epoch (numpy): {e['steps']} steps, loss {e['loss_first']:.4f} -> {e['loss_last']:.4f}, "
              f"val acc {e['val_acc']:.3f}")
        if not opencl:
            print("SKIPPED two steps (opencl == numpy): no binfmt_misc here, so PoCL cannot run its arm64 linker")
            return 0
        summary["two_steps"] = t = check_two_steps(root)
        print(f"ok two steps (opencl == numpy): losses {[round(x, 6) for x in t['losses_opencl']]}, loss rel diff "
              f"{t['loss_max_rel_diff']:.1e}, weights max |diff| {t['weight_max_abs_diff']:.1e} "
              f"({t['tensors']} tensors, largest update {t['weight_max_update']:.1e})")
    except CheckFailed as err:
        print(f"FAILED {err}", file=sys.stderr)
        return 1
    finally:
        (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
