"""OpenCL teardown order (backends/opencl/runtime.py Runtime.close): kernels and buffers before
the programs, the queue and the context, at close() and at interpreter exit. NVIDIA's driver
segfaults when they outlive the context; PoCL does not, so these tests check the order's
observable results rather than a crash."""
from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from clcheck import needs_cl
from train_helpers import REPO, tiny_cnn

pytestmark = needs_cl


def _valid(buf) -> bool:
    import pyopencl as cl

    return buf.get_info(cl.mem_info.SIZE) > 0


def _released(buf) -> bool:
    """True when `buf` was released already. NOTE: destructive (it releases a live buffer) and the
    only safe probe: querying a released handle crashes."""
    import pyopencl as cl

    try:
        buf.release()
    except cl.LogicError as e:
        return "double-unref" in str(e)
    return False


def test_close_releases_plans_then_stores_then_programs_queue_and_context():
    from device_agent.backends.opencl import loader
    from device_agent.backends.opencl.engine import OpenCLEngine
    from device_agent.backends.opencl.runtime import Runtime
    from device_agent.training.optim import make_optimizer

    rt = Runtime()
    g = tiny_cnn(10)
    opt = make_optimizer("sgd", {k: g.params[k].shape for k in g.params if g.params[k].trainable}, momentum=0.9)
    eng = OpenCLEngine(g, {k for k in g.params if g.params[k].trainable}, opt, bn_batch_stats=True, runtime=rt)
    x = np.ones((4, 3, 8, 8), np.float32)
    eng.train_step(x, np.arange(4), 0.1)
    eng.eval_batch(x[:3], np.arange(3))
    plans = [*eng.plans.values(), *eng.evals.values()]
    launches = [ln for p in plans for ln in p.fw_launches]
    store_bufs = [eng.store.params_buf, eng.store.param_ref["fc.weight"].buf, eng.store.opt_state["momentum"].buf,
                  *eng.store.scratch.bufs]
    plan_bufs = [p.labels.buf for p in plans]
    prefix = f"{id(rt.ctx)}:"
    assert any(k.startswith(prefix) for k in loader._memory)
    assert all(_valid(b) for b in store_bufs + plan_bufs)
    rt.close()
    assert rt.closed and rt.queue is None and rt.ctx is None
    assert all(_released(b) for b in store_bufs + plan_bufs)
    assert all(ln.kernel is None for ln in launches) and not any(p.fw_launches for p in plans)
    assert not any(k.startswith(prefix) for k in loader._memory)
    rt.close()                      # idempotent
    del eng, plans
    gc.collect()                    # and collecting the released objects later is harmless


def test_a_plan_collected_mid_run_leaves_its_store_and_siblings_working():
    from device_agent.backends.opencl.plan import OptimConfig, Plan

    g = tiny_cnn(10)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    a = Plan(g, 4, trainable=None, optimizer=OptimConfig("sgd", momentum=0.9))
    b = Plan(g, 2, trainable=None, store=a.store)
    b.train_step(x[:2], np.arange(2), 0.1)
    bufs = list(b._own)
    del b
    gc.collect()
    assert all(_released(r.buf) for r in bufs)
    assert _valid(a.store.params_buf)
    loss, _ = a.train_step(x, np.arange(4), 0.1)
    assert np.isfinite(loss) and a.step_count == 2


SCRIPT = """
import atexit, sys
state = {}
atexit.register(lambda: print("closed at exit:", state["rt"].closed, state["rt"].ctx is None, flush=True))
import numpy as np
sys.path[:0] = [{repo!r}, {tests!r}]   # the script lives in tmp_path: the checkout need not be installed
from train_helpers import tiny_cnn
from device_agent.backends.opencl.plan import OptimConfig, Plan
from device_agent.backends.opencl.runtime import shared_runtime
rt = state["rt"] = shared_runtime()
KEEP = [Plan(tiny_cnn(10), 4, optimizer=OptimConfig("sgd", momentum=0.9), runtime=rt)]   # alive to the end
print("loss", KEEP[0].train_step(np.ones((4, 3, 8, 8), np.float32), np.arange(4), 0.1)[0], flush=True)
"""


def test_interpreter_exit_closes_the_runtimes_before_module_teardown(tmp_path):
    """A script that keeps Plans in a module global and just ends (no os._exit): the agent's exit
    hook closes the Runtime first (a hook registered earlier runs later and sees it closed), and
    nothing complains during teardown."""
    script = tmp_path / "bench_like.py"
    script.write_text(textwrap.dedent(SCRIPT).replace("{tests!r}", repr(str(REPO / "tests")))
                      .replace("{repo!r}", repr(str(REPO))))
    r = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "loss " in r.stdout and "closed at exit: True True" in r.stdout, r.stdout
    assert "Exception ignored" not in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("what", ["engine", "infer"])
def test_engines_release_their_plans_and_store(what):
    from device_agent.backends.opencl.engine import OpenCLEngine, OpenCLInfer
    from device_agent.training.optim import make_optimizer

    g = tiny_cnn(10)
    x = np.ones((3, 3, 8, 8), np.float32)
    if what == "engine":
        tr = {"fc.weight", "fc.bias"}
        eng = OpenCLEngine(g, tr, make_optimizer("sgd", {k: g.params[k].shape for k in tr}), bn_batch_stats=False)
        eng.train_step(x, np.arange(3), 0.1)
        plans = list(eng.plans.values())
    else:
        eng = OpenCLInfer(g)
        eng.forward(x)
        plans = list(eng.plans.values())
    weights = eng.store.params_buf
    eng.close()
    assert _released(weights) and all(not p.fw_launches for p in plans)
    assert not eng.rt.closed          # the shared Runtime stays open for the next engine
