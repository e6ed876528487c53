"""`python -m device_agent COMMAND`: the agent's CLI. JSONL events on stdout, human logs on stderr.

    python -m device_agent hello                      # hello
    python -m device_agent doctor                     # hello, device
    python -m device_agent run JOB.json               # hello, plan, step..., epoch..., done | error
    python -m device_agent infer MODEL X.npy OUT.npy [--batch N] [--backend auto|opencl|numpy]
                                                      # hello, infer | error
    python -m device_agent eval MODEL DATA OUT.json [--split val|train|test] [--batch N] [--top K]
                                [--backend B]         # hello, progress..., eval_report | error
    python -m device_agent serve [--port 7878] [--root DIR] [--pair]   # the daemon (daemon/serve.py), no events
    python -m device_agent pair [--root DIR]          # a pairing code for the running daemon, no events

Every path argument and path-valued job field must stay inside the device root, the agent's working
directory (confine.py); a full or read-only disk ends with code `disk_full` / `io`, not `internal`.
The first line of every agent call is `hello` (protocol and agent versions, the payload hash, the pid), written
before anything heavy is imported, so the host can check versions in milliseconds. The last line of
`run` and `infer` is `done`/`infer` or `error`. Exit status: 0 ok, 1 error, 2 usage.
`serve` and `pair` are not agent calls: long-running or interactive, they write human lines only.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path

from . import __version__
from .errors import ThomasError
from .errors import InputError, JobError
from .protocol import PROTOCOL_VERSION, DeviceEvent, ErrorEvent, Event, HelloEvent, InferEvent

USAGE = ("usage: python -m device_agent hello | doctor | run JOB.json | "
         "infer MODEL X.npy OUT.npy [--batch N] [--backend auto|opencl|numpy] | "
         "eval MODEL DATA OUT.json [--split S] [--batch N] [--top K] [--backend B] | "
         "serve [--port 7878] [--root DIR] [--pair] | pair [--root DIR]")


def emit(ev: Event) -> None:
    sys.stdout.write(ev.to_json() + "\n")
    sys.stdout.flush()


def payload_hash() -> str | None:
    """The hash the host wrote into PAYLOAD when it built this agent (None in a source tree)."""
    try:
        return json.loads((Path(__file__).resolve().parent.parent / "PAYLOAD").read_text())["hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def hello() -> None:
    emit(HelloEvent(PROTOCOL_VERSION, __version__, payload_hash(), platform.python_version(), os.getpid()))


def doctor() -> int:
    try:
        import numpy
        np_version = numpy.__version__
    except ImportError:
        np_version = None
    cl_version, devices, cl_error = None, [], None
    try:
        import pyopencl
        cl_version = pyopencl.VERSION_TEXT
    except ImportError as e:
        cl_error = f"pyopencl is not installed ({e})"
    except Exception as e:  # noqa: BLE001  (a broken ICD loader can raise anything; doctor reports it)
        cl_error = f"pyopencl fails to import: {type(e).__name__}: {e}"
    if cl_version is not None:
        from .backends.opencl.device import all_devices, describe

        try:
            devices = [dict(describe(d), index=f"{p}:{i}") for p, i, d in all_devices()]
        except Exception as e:  # noqa: BLE001  (vendor drivers fail in creative ways)
            cl_error = f"listing OpenCL devices failed: {type(e).__name__}: {e}"
        if not devices and cl_error is None:
            cl_error = "no OpenCL platform found (no ICD for the vendor driver, or no libOpenCL.so)"
    try:
        free = shutil.disk_usage(os.getcwd()).free
    except OSError:
        free = None
    emit(DeviceEvent(platform.platform(), platform.machine(), os.cpu_count() or 1, platform.python_version(),
                     np_version, cl_version, devices, cl_error, os.getcwd(), free))
    return 0


def infer(args: list[str]) -> int:
    """infer MODEL X.npy OUT.npy [--batch N] [--backend B]: x (N,C,H,W) preprocessed float32 -> OUT.npy (N,K).
    The `infer` event names the backend that ran and the device it ran on."""
    import time

    import numpy as np

    from .engine import resolve_backend
    from .model.graph import load_package
    from .infer import infer_package
    from .limits import load_npy
    from .protocol import BACKENDS

    pos, opts = [], {"--batch": "32", "--backend": "auto"}
    it = iter(args)
    for a in it:
        if a in opts:
            opts[a] = next(it, "")
        else:
            pos.append(a)
    batch, want = opts["--batch"], opts["--backend"]
    if len(pos) != 3 or not batch.isdigit() or int(batch) < 1 or want not in BACKENDS:
        raise InputError(USAGE)
    model, src, dst = pos
    g = load_package(model)
    x = load_npy(src, InputError)           # header checked before np.load allocates; never unpickled
    try:
        backend = resolve_backend(want, graph=g)
    except JobError:
        raise InputError("infer --backend opencl: no OpenCL device is usable here (pyopencl, a device or "
                         "the OpenCL engines are missing); use numpy or auto") from None
    t0 = time.perf_counter()
    y = infer_package(g, x, batch_size=int(batch), backend=backend)
    ms = (time.perf_counter() - t0) * 1e3
    if backend == "opencl":
        from .backends.opencl.runtime import shared_runtime

        where = f"{shared_runtime().device.name.strip()} (OpenCL)"
    else:
        where = f"{platform.machine() or 'cpu'} CPU, {os.cpu_count() or 1} cores (numpy)"
    tmp = f"{dst}.tmp.npy"
    try:
        np.save(tmp, y)
        os.replace(tmp, dst)
    except OSError as e:                    # a full disk: no half file left, the error names dst
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, dst) from e
    emit(InferEvent(model, int(y.shape[0]), dst, list(y.shape), round(ms, 1), backend, where))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] or argv[:1] == ["pair"]:
        from .daemon import serve      # a server, not an agent call: no hello on stdout

        return serve.serve_main(argv[1:], payload_hash()) if argv[0] == "serve" else serve.pair_main(argv[1:])
    hello()
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "hello" and not args:
        return 0
    if cmd == "doctor" and not args:
        return doctor()
    from .confine import confine_call

    confine_call(cmd, args, Path.cwd())     # paths stay inside the device root (the cwd): else bad_job
    if cmd == "run" and len(args) == 1:
        from .training import train

        return train.main(args, root=Path.cwd())
    if cmd == "infer":
        return infer(args)
    if cmd == "eval":
        from . import evaluate

        return evaluate.main(args, emit)
    if cmd == "bench" and len(args) == 1:
        from .bench import bench

        return bench.main(args, emit)
    if cmd == "tune" and len(args) == 1:
        from .bench import tune

        return tune.main(args, emit)
    emit(ErrorEvent("usage", USAGE))
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ThomasError as e:
        emit(ErrorEvent(e.code, str(e)))
        sys.exit(e.exit_code)
    except OSError as e:                    # the device's storage: disk_full / io, one line with the fix
        from .fsutil import disk_error

        err = disk_error(e)
        emit(ErrorEvent(err.code, str(err)))
        sys.exit(err.exit_code)
