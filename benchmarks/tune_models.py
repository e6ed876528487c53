"""`thomas tune` on the zoo models, then the whole steps timed without and with the tuning it wrote.

    python3 benchmarks/tune_models.py --models alexnet --batch 32 --torch cuda --out-dir OUT

For each model: a package is built (thomas_cli.zoo), `python -m device_agent tune` (the command
`thomas tune` runs on the device) writes OUT/tuning-<model>.json, then benchmarks/plan_models.py
times the stages twice in fresh processes, with THOMAS_TUNING_FILE unset and set to that file (each
with the PyTorch peer when --torch is given). Results: OUT/tune-<model>.json (the tune events) and
OUT/plan-<model>-{default,tuned}.json (plan_models' output).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,alexnet")
    ap.add_argument("--stages", default="infer,full")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tune-steps", type=int, default=3)
    ap.add_argument("--torch", default="none", choices=["cpu", "cuda", "none"])
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from device_agent.model.graph import save_package
    from thomas_cli.zoo import build

    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("THOMAS_TUNING_FILE", None)
    for name in a.models.split(","):
        with tempfile.TemporaryDirectory() as d:
            pkg = Path(d) / name
            save_package(build(name, num_classes=1000, size=a.size), pkg)
            job = Path(d) / "tune.json"
            job.write_text(json.dumps({"model": str(pkg), "batch": a.batch, "steps": a.tune_steps}))
            tuning = out / f"tuning-{name}.json"
            tuning.unlink(missing_ok=True)
            r = subprocess.run([sys.executable, "-m", "device_agent", "tune", str(job)], cwd=d, capture_output=True,
                               text=True, env=dict(env, THOMAS_TUNING_FILE=str(tuning)))
            events = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
            (out / f"tune-{name}.json").write_text(json.dumps(events, indent=1) + "\n")
            last = events[-1] if events else {}
            # NOTE: NVIDIA's driver may crash in interpreter teardown after the file is written
            print(f"{name}: tune -> {last.get('ev')} (rc {r.returncode}) GEMMs {last.get('default_ms')} ms default, "
                  f"{last.get('ms')} winner, {last.get('tuned_ms')} with {len(last.get('shapes') or {})} shapes",
                  flush=True)
            if last.get("ev") != "tune":
                print(r.stderr[-2000:], file=sys.stderr)
                continue
        for label, extra in (("default", {}), ("tuned", {"THOMAS_TUNING_FILE": str(tuning)})):
            res = out / f"plan-{name}-{label}.json"
            subprocess.run([sys.executable, str(HERE / "plan_models.py"), "--models", name, "--stages", a.stages,
                            "--size", str(a.size), "--batch", str(a.batch), "--steps", str(a.steps), "--torch",
                            a.torch, "--out", str(res)], env=dict(env, **extra), check=False)
            if res.exists():
                for row in json.loads(res.read_text())["rows"]:
                    print(label, json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
