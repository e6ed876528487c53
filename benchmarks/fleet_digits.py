"""Fleet fine-tuning on non-IID digits (issue 17 item 6): accuracy per round against centralized
training on the union of the phones' data. An experiment, not a test.

    .venv/bin/python benchmarks/fleet_digits.py [--rounds 10] [--alpha 0.5] [--split dirichlet|iid]
                                                [--strategy fedavg] [--out benchmarks/results/fleet_digits.json]

1. Pretraining (this computer, the local device): MobileNetV2 width 0.5 at 32x32 from scratch on digits
   0-4 (the demo's recipe) -> the model every later run starts from.
2. Digits 5-9 (scikit-learn's real scans): 20 % stratified hold-out (seed 0) for evaluation; the other 80 %
   split over three phones by class with Dirichlet(alpha) proportions (numpy, seed 0), or IID.
3. Three virtual phones (tests/virtual_adb.py: a fake adbd behind a real adb server): phones 0 and 1 run
   the Termux daemon (paired), phone 2 is reached in adb shell mode. Each gets its part as dataset
   'digits' (`thomas push-data`, 20 % of the part as its val split).
4. `thomas fleet finetune` over the three phones: --layers all, Adam lr 0.001 (--layers, --lr), batch 32,
   1 local epoch per round, --central-data = the hold-out (the global model, evaluated here after each round). The
   terminal session is captured with script(1) into the output folder.
5. Centralized: `thomas finetune` of the same model with the same recipe on the union of the three parts
   (train = all of it), val = the hold-out: its val accuracy after epoch r is the baseline for round r
   (one epoch over the union = one round of one local epoch on every phone).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
RECIPE = ["--optimizer", "adam", "--batch", "32", "--backend", "cpu"]     # + --layers, --lr (options)


def split_parts(y: np.ndarray, n: int, alpha: float | None, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of each of n parts: per class, Dirichlet(alpha) proportions (None: IID, equal shares)."""
    parts: list[list[int]] = [[] for _ in range(n)]
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        p = np.full(n, 1.0 / n) if alpha is None else rng.dirichlet(np.full(n, alpha))
        cuts = (np.cumsum(p)[:-1] * len(rows)).round().astype(int)
        for i, chunk in enumerate(np.split(rows, cuts)):
            parts[i] += chunk.tolist()
    return [np.sort(np.asarray(p, np.int64)) for p in parts]


def holdout(y: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """A stratified boolean mask of `frac` of each class."""
    mask = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        mask[rows[:int(round(frac * len(rows)))]] = True
    return mask


def cli(env: dict, *args: str, capture: bool = True) -> str:
    r = subprocess.run([sys.executable, "-m", "thomas_cli", *args], env=env, cwd=REPO, capture_output=capture,
                       text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"thomas {' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:] if capture else ''}")
    return r.stdout if capture else ""


def pretrain(env: dict, home: Path, x: np.ndarray, y: np.ndarray, work: Path) -> Path:
    """MobileNetV2 w0.5 from scratch on digits 0-4 (the demo's 'scratch' recipe); returns its final/."""
    np.savez(work / "d04.npz", x=x, y=y, classes=np.array([str(c) for c in range(5)]))
    cli(env, "--device", "local", "push-data", str(work / "d04.npz"), "--name", "d04", "--val", "0.2")
    before = {p.name for p in (home / "runs").iterdir()} if (home / "runs").is_dir() else set()
    cli(env, "--device", "local", "finetune", "mobilenet_v2", "--width", "0.5", "--data", "d04", "--init", "scratch",
        "--epochs", "8", "--batch", "32", "--optimizer", "adam", "--lr", "0.003", "--backend", "cpu")
    (run,) = {p.name for p in (home / "runs").iterdir()} - before
    return home / "runs" / run / "final"


def phones(stack, work: Path, env: dict):
    """Three virtual phones behind phone 0's adb server; 0 and 1 with a paired Termux daemon."""
    from devicekit import DeviceTarget
    from test_daemon_cli import Daemon, paired
    from virtual_adb import VirtualDevice

    vds = [stack.enter_context(VirtualDevice(work / f"phone{i}")) for i in range(3)]
    for vd in vds[1:]:
        assert "connected" in vds[0].adb_cmd("connect", vd.serial)
        vds[0].adb_cmd("-s", vd.serial, "wait-for-device", timeout=15)
    env.update(vds[0].env)
    os.environ.update(env)           # the in-process `thomas pair` below reaches phone 0's adb server
    for vd in vds[:2]:
        d = Daemon(Path(vd.root) / "termux" / "thomas")
        stack.callback(d.stop)
        paired(DeviceTarget("daemon", d.root, ["-s", vd.serial], env=env, vdev=vd), d)
    return vds


def centralized(env: dict, home: Path, model: Path, x, y, xh, yh, rounds: int, work: Path) -> list[dict]:
    classes = np.array([str(c) for c in range(5, 10)])
    np.savez(work / "union.npz", x_train=x, y_train=y, x_val=xh, y_val=yh, classes=classes)
    cli(env, "--device", "local", "push-data", str(work / "union.npz"), "--name", "union59")
    out = cli(env, "--device", "local", "finetune", str(model), "--data", "union59", "--epochs", str(rounds),
              *RECIPE, "--json")
    return [{"epoch": e["epoch"], "val_acc": e["val_acc"], "val_loss": e["val_loss"]}
            for e in map(json.loads, out.splitlines()) if e.get("ev") == "epoch"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--split", choices=("dirichlet", "iid"), default="dirichlet")
    ap.add_argument("--strategy", default="fedavg")
    ap.add_argument("--layers", default="all")
    ap.add_argument("--lr", default="0.001")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (phones, runs) in the temp dir")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fleet_digits.json")
    a = ap.parse_args()
    RECIPE[:0] = ["--layers", a.layers, "--lr", a.lr]
    import contextlib

    from thomas_cli.demo import digits_dataset

    rng = np.random.default_rng(0)
    x, y = digits_dataset(32)
    work = Path(tempfile.mkdtemp(prefix="fleet-digits-"))
    home = work / "home"
    env = dict(os.environ, THOMAS_HOME=str(home))
    t0 = time.time()
    lo = y < 5
    model = pretrain(env, home, x[lo], y[lo], work)
    x59, y59 = x[~lo], y[~lo] - 5
    hold = holdout(y59, 0.2, rng)
    xh, yh = x59[hold], y59[hold]
    xr, yr = x59[~hold], y59[~hold]
    parts = split_parts(yr, 3, a.alpha if a.split == "dirichlet" else None, rng)
    classes = np.array([str(c) for c in range(5, 10)])
    np.savez(work / "holdout.npz", x=xh, y=yh, classes=classes)
    counts = [np.bincount(yr[p], minlength=5).tolist() for p in parts]
    with contextlib.ExitStack() as stack:
        vds = phones(stack, work, env)
        shell_root = Path(vds[2].root) / "thomas"
        g = ["--device-root", str(shell_root), "--python", sys.executable]
        for vd, p in zip(vds, parts):
            np.savez(work / f"part-{vd.port}.npz", x=xr[p], y=yr[p], classes=classes)
            cli(env, "-s", vd.serial, *g, "push-data", str(work / f"part-{vd.port}.npz"), "--name", "digits",
                "--val", "0.2")
        fleet = [sys.executable, "-m", "thomas_cli", *g, "fleet", "finetune", str(model), "--data", "digits",
                 "--devices", ",".join(vd.serial for vd in vds), "--rounds", str(a.rounds), "--local-epochs", "1",
                 "--strategy", a.strategy, "--central-data", str(work / "holdout.npz"), *RECIPE]
        session = a.out.with_suffix(".session.txt")
        typescript = work / "typescript"
        cmd = " ".join(f"'{c}'" for c in fleet)
        r = subprocess.run(["script", "-q", "-e", "-c", f"COLUMNS=120 {cmd}", str(typescript)], env=env, cwd=REPO)
        if r.returncode != 0:
            raise SystemExit(f"the fleet run failed ({r.returncode}); see {typescript}")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", typescript.read_text(errors="replace"))
    session.parent.mkdir(parents=True, exist_ok=True)
    session.write_text(f"$ thomas fleet finetune {model.parent.name}/final --data digits --devices "
                       f"{','.join(vd.serial for vd in vds)} --rounds {a.rounds} --local-epochs 1 --strategy "
                       f"{a.strategy} --central-data holdout.npz {' '.join(RECIPE)}\n" + text)
    fruns = [p for p in (home / "runs").iterdir() if '"kind": "fleet"' in (p / "run.json").read_text()]
    doc = json.loads((fruns[0] / "fleet.json").read_text())
    central = centralized(env, home, model, xr, yr, xh, yh, a.rounds, work)
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "split": a.split, "alpha": a.alpha,
           "recipe": " ".join(RECIPE), "local_epochs": 1,
           "strategy": a.strategy, "rounds": a.rounds, "part_class_counts": counts, "holdout": int(len(yh)),
           "central_start": doc.get("central_start"),
           "fleet": [{k: e.get(k) for k in ("round", "done", "train_acc", "val_acc", "central_acc", "bytes",
                                             "seconds")} for e in doc["history"]],
           "per_device_val_acc": [[r.get("val_acc") for r in e["per_device"]] for e in doc["history"]],
           "centralized": central, "seconds": round(time.time() - t0, 1), "session": str(session)}
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print("| round | fleet: hold-out acc | fleet: devices' val acc | centralized: hold-out acc (epoch r) |")
    print("|---:|---:|---:|---:|")
    for e, c in zip(res["fleet"], central):
        print(f"| {e['round']} | {e['central_acc']:.3f} | {e['val_acc']:.3f} | {c['val_acc']:.3f} |")
    print(f"parts (class counts 5..9): {counts}; hold-out {len(yh)}; {res['seconds']} s; session in {session}")
    if not a.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)       # the phones' roots and every run (~0.7 GB)
    return 0


if __name__ == "__main__":
    sys.exit(main())
