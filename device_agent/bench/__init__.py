"""Measuring the agent on this device: `python -m device_agent bench|tune JOB.json`.

    bench.py   per-layer times of one stage on the OpenCL Plan vs the serial numpy baseline (a child
               process with BLAS pinned to one thread: python -m device_agent.bench.bench --baseline)
    tune.py    times GEMM tile variants on the model's own GEMMs once and saves the winner in the
               device's tuning file (the training loop never re-times)

Nothing here is imported by training or inference; both read the tuning data through the OpenCL runtime.
"""
