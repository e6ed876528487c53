"""THOMAS device agent: everything that runs on the phone (standard library, numpy, pyopencl only).

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
