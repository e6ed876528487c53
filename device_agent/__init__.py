"""THOMAS device agent: everything that runs on the phone (standard library, numpy, pyopencl only).

Grouped by what each part is (each package's docstring maps its own modules):

    __main__.py   `python -m device_agent hello|doctor|run|infer|eval|bench|tune|serve|pair`
    protocol.py   the wire: PROTOCOL_VERSION, the event records, the daemon's frames
    job.py        the TrainJob schema (part of the wire: the host writes it, protocol re-exports it)
    confine.py    every path an agent call names stays inside the device root
    errors.py     the typed errors (code + exit status) every part raises
    fsutil.py     crash-safe writes, file hashes, disk-full errors
    limits.py     limits on untrusted input (JSON size and depth, npy/npz headers) before allocating
    resources.py  where kernels/ and configs/ are
    engine.py     the backend interface (TrainEngine, InferEngine) and which backend runs
    infer.py      `infer`: a model package's forward pass, batched, on the chosen backend
    evaluate.py   `eval`: accuracy, per-class precision/recall, confusion matrix on a dataset split
    model/        the model package: graph (IR, load/save), builder, heads
    ops/          one module per op family: shapes, numpy reference, OpenCL launchers
    backends/     one folder per backend: numpy/ (the reference), opencl/ (runtime, Plan, engines)
    training/     `run`: the loop, stages, optimizers, data, checkpoints
    bench/        `bench` and `tune`: measuring this device
    daemon/       `serve` and `pair`: the Termux daemon for unrooted phones

`THOMAS_THREADS=N` pins BLAS/OpenMP thread pools to N threads. It must take effect before numpy
is imported, which is why it lives here: `python -m device_agent` imports this package first.
THOMAS_THREADS=1 gives the serial single-core CPU baseline the product compares against.
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"

_threads = _os.environ.get("THOMAS_THREADS")
if _threads:
    if "numpy" in _sys.modules:
        # NOTE: too late to pin BLAS threads; say so instead of silently measuring the wrong thing.
        print(f"thomas: THOMAS_THREADS={_threads} set after numpy was imported; BLAS threads not pinned",
              file=_sys.stderr)
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                 "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        _os.environ[_var] = _threads
