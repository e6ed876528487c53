"""`thomas report RUN [-o report.png]`: a PNG of one run (matplotlib, Agg).

    thomas report 20260101-120000-ab12                 # -> report-<run>.png in the current folder
    thomas report RUN -o docs/report.png

A training run: loss and accuracy per epoch (train and val) from its metrics.jsonl (else the `epoch`
events of events.jsonl). A bench run (`thomas bench`): per-layer forward/backward time bars, one panel
per backend. A run with neither is an error that says so.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

from device_agent.errors import ThomasError

from . import store
from .main import app, err, guarded


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue            # a torn last line of an interrupted run
        if isinstance(d, dict):
            rows.append(d)
    return rows


def epoch_metrics(run_id: str) -> list[dict]:
    d = store.run_dir(run_id)
    rows = [r for r in _jsonl(d / "metrics.jsonl") if "epoch" in r]
    if not rows:
        rows = [e for e in _jsonl(d / "events.jsonl") if e.get("ev") == "epoch"]
    by_epoch = {r["epoch"]: r for r in rows}          # a resumed run may repeat an epoch: the last wins
    return [by_epoch[k] for k in sorted(by_epoch)]


def render(run_id: str, dest: Path) -> Path:
    """Write the PNG of run `run_id` to dest; ThomasError when the run has nothing to plot."""
    rec = store.load_run(run_id)
    bench = store.read_json(store.run_dir(run_id) / "bench.json")
    metrics = epoch_metrics(run_id)
    if not metrics and not (bench and bench.get("layers")):
        raise ThomasError(f"run {run_id} has no metrics to plot (no epoch finished: no metrics.jsonl or epoch "
                          f"events, and it is not a bench run)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({e["backend"] for e in bench["layers"]}, key=("opencl", "numpy").index) if bench else []
    panels = (2 if metrics else 0) + len(backends)
    n_layers = max((sum(e["backend"] == b for e in bench["layers"]) for b in backends), default=0)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, max(4.5, 0.14 * n_layers)), squeeze=False)
    axes = list(axes[0])
    title = f"run {run_id}: {rec.get('model')}" + (f" on {rec['data']}" if rec.get("data") else "") + \
        (f" ({rec['stage']})" if rec.get("stage") else "")
    if metrics:
        ep = [m["epoch"] for m in metrics]
        for ax, key, label in ((axes.pop(0), "loss", "loss"), (axes.pop(0), "acc", "accuracy")):
            for split, style in (("train", "o-"), ("val", "s--")):
                ys = [m.get(f"{split}_{key}") for m in metrics]
                pts = [(e, y) for e, y in zip(ep, ys) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), style, label=split)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.set_title(label)
            ax.grid(alpha=0.3)
            ax.legend()
    if bench:
        for backend in backends:
            rows = [e for e in bench["layers"] if e["backend"] == backend]
            ax = axes.pop(0)
            ys = range(len(rows))
            fw = [e["fw_ms"] for e in rows]
            bw = [e["bw_ms"] for e in rows]
            ax.barh(ys, fw, label="forward")
            ax.barh(ys, bw, left=fw, label="backward")
            ax.set_yticks(list(ys), [e["layer"] for e in rows], fontsize=7)
            r = bench["summary"]["results"].get(backend, {})
            ax.set_title(f"{backend}: {r.get('ms_step', 0):.1f} ms/step" + (f" ({r['device']})" if r.get("device") else ""))
            ax.set_xlabel("ms per layer")
            ax.set_ylim(len(rows) - 0.5, -0.5)
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest


@app.command()
@guarded
def report(
    run: str = typer.Argument(..., help="Run id (`thomas runs list`)."),
    output: Path = typer.Option(None, "-o", "--output", help="PNG to write (default: report-RUN.png)."),
):
    """Plot a run: loss and accuracy per epoch, per-layer time bars of a bench run."""
    dest = render(run, output or Path(f"report-{run}.png"))
    err.print(f"wrote {dest}", highlight=False)
