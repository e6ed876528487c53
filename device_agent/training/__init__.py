"""Training: `python -m device_agent run JOB.json` (the developer entry, paths not confined:
`python -m device_agent.training.train JOB.json`).

    train.py          the loop: one TrainJob from a model package + dataset to a trained package,
                      streaming events (run, main)
    stages.py         which parameters train (--layers last|N|all, --init scratch), the frozen prefix /
                      trainable suffix split, and the prefix's feature cache
    optim.py          the numpy optimizers (SGD, Adam, AdamW), LR schedules, gradient clipping; the OpenCL
                      engine runs the same maths as kernels (backends/opencl/optim.py)
    data.py           the dataset reader: memory-mapped uint8 shards, batches, normalization, augmentation
    dataset_write.py  the dataset format and its writer (the host's push-data runs it)
    checkpoint.py     atomic checkpoints, keep-last-K, verification, resume
    monitor.py        the divergence guard and the best epoch (best/)
    runlock.py        one live trainer per run folder
    telemetry.py      energy and temperatures per epoch from sysfs, where readable

The backend is picked through engine.py (device_agent/backends/); the job schema is job.py, part of the wire.
"""
