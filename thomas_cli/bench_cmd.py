"""`thomas bench`: per-layer times of one stage, OpenCL Plan beside the serial single-core numpy
baseline (`--compare cpu`), or the same job on this computer and on the device (`--compare desktop`).

    thomas bench mobilenet_v2 --compare cpu --stage last --batch 8 --size 224 --steps 10
    thomas --device local bench mobilenet_v2 --width 0.35 --size 32 --batch 2 --steps 1 --json

MODEL is a model on the device, a package directory or a zoo name (built at --size, pushed as
`bench-<name>-<size>`). The result is a run record (`thomas runs list`): events.jsonl, bench.json;
`thomas report RUN` plots its per-layer bars.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from device_agent.errors import ThomasError

from . import session, store, zoo
from .app import app, err, guarded, out
from .push_cmd import push_model, resolve_model_source
from .session import DEFAULT_TIMEOUT, RunFailed, Session, Target, console_note, open_transport

COMPARES = ("cpu", "desktop")
STAGES = ("infer", "last", "all")


def _model(s: Session, model: str, size: int, width: float, classes: int) -> str:
    """The device path of the model package (pushed when it is a zoo name or a local directory)."""
    if store.NAME.match(model) and s.t.exists(f"models/{model}/model.json"):
        return f"models/{model}"
    if Path(model).is_dir() or model in zoo.ZOO:
        g, name, source = resolve_model_source(model, classes, size, width, 0)
        if model in zoo.ZOO:
            name = f"bench-{model}-{size}" + ("" if width == 1.0 else f"-w{width:g}")
        push_model(s, g, name, source)
        return f"models/{name}"
    raise ThomasError(f"no model '{model}' on {s.t.serial}: push it with `thomas push-model`, or give a "
                      f"package directory or a zoo name ({', '.join(zoo.ZOO)})")


def _pull_model(name: str, tmp: Path) -> Path:
    """models/<name> of the selected device copied to tmp/<name> (for `--compare desktop`)."""
    store.check_name(name, "model")
    t = open_transport(note=console_note)
    if not t.exists(f"models/{name}/model.json"):
        raise ThomasError(f"no model '{name}' on {t.serial}: push it with `thomas push-model`, or give a "
                          f"package directory or a zoo name ({', '.join(zoo.ZOO)})")
    t.pull_tree(f"models/{name}", tmp / name)
    return tmp / name


def run_bench(target: Target | None, model: str, stage: str, batch: int, size: int, steps: int, width: float,
              classes: int, on_event=None) -> dict:
    """One bench on one device; returns the run record (with rec["bench"] = the result)."""
    s = Session(open_transport(target, note=console_note), note=console_note)
    pkg = _model(s, model, size, width, classes)
    run_id = store.new_run_id()
    job = {"model": pkg, "stage": stage, "batch": batch, "steps": steps, "out": f"runs/{run_id}"}
    rec = {"id": run_id, "kind": "bench", "created": time.strftime("%Y-%m-%d %H:%M:%S"),
           "device": s.t.describe(), "model": model, "data": None, "stage": stage, "job": job, "status": "running"}
    host = store.run_dir(run_id)
    host.mkdir(parents=True, exist_ok=True)
    store.save_run(rec)
    job_rel = f"jobs/{run_id}.json"
    s.t.write_bytes(job_rel, (json.dumps(job, indent=1) + "\n").encode())
    with open(host / "events.jsonl", "a") as evf:
        def event(ev: dict) -> None:
            evf.write(json.dumps(ev) + "\n")
            evf.flush()
            if on_event:
                on_event(ev)

        try:
            res = s.call(["bench", job_rel], on_event=event, timeout=DEFAULT_TIMEOUT)
        except ThomasError as e:
            rec.update(status="error", error=str(e))
            store.save_run(rec)
            raise
    last = res.events[-1] if res.events else {}
    if last.get("ev") != "bench":
        msg = last.get("message") if last.get("ev") == "error" else f"agent ended ({res.returncode}) without a result"
        rec.update(status="error", error=msg)
        store.save_run(rec)
        raise RunFailed(last.get("code", "error"), f"bench {run_id} failed on {s.t.serial}: {msg}")
    layers = [e for e in res.events if e["ev"] == "layer_time"]
    result = {"id": run_id, "device": s.t.describe(), "summary": last, "layers": layers}
    store.write_json(host / "bench.json", result)
    rec.update(status="done", finished=time.strftime("%Y-%m-%d %H:%M:%S"), bench=last.get("results"),
               summary={"speedup": last.get("speedup")})
    store.save_run(rec)
    return result


def _f(v, fmt=".2f") -> str:
    return "" if v is None else format(v, fmt)


def layer_table(results: list[tuple[str, dict]], title: str) -> Table:
    """One row per layer; per column set (label, result): fw ms, bw ms, GFLOP/s, GB/s, share."""
    cols: list[tuple[str, dict]] = []   # (heading, layer -> row)
    order: list[str] = []
    for label, r in results:
        for backend in ("opencl", "numpy"):
            rows = {e["layer"]: e for e in r["layers"] if e["backend"] == backend}
            if rows or backend in r["summary"]["results"]:
                cols.append((f"{label}{backend}", rows))
            order += [k for k in rows if k not in order]
    t = Table("layer", "op", title=title)
    for head, _ in cols:
        for h in ("fw ms", "bw ms", "GFLOP/s", "GB/s", "%"):
            t.add_column(f"{head}\n{h}", justify="right")
    if len(cols) == 2:   # cpu: numpy time / OpenCL time; desktop: device time / desktop time
        t.add_column("speed-up" if len(results) == 1 else "device ÷\ndesktop", justify="right")
    for name in order:
        op = next((rows[name]["op"] for _, rows in cols if name in rows), "")
        cells, tot = [], []
        for _, rows in cols:
            e = rows.get(name)
            if e is None:
                cells += [""] * 5
                tot.append(None)
                continue
            cells += [_f(e["fw_ms"]), _f(e["bw_ms"]), _f(e["gflops"], ".1f"), _f(e["gbs"], ".1f"),
                      _f(100 * e["share"], ".0f")]
            tot.append(e["fw_ms"] + e["bw_ms"])
        if len(cols) == 2:
            cells.append(f"{tot[1] / tot[0]:.1f}x" if tot[0] and tot[1] else "")
        t.add_row(name, op, *cells)
    return t


def totals_table(results: list[tuple[str, dict]]) -> Table:
    t = Table("backend", "device", "ms/step", "img/s", "peak memory", "params", "grads", "optimizer",
              "activations", "workspace", title="totals")
    mib = lambda v: "" if v is None else f"{v / 2**20:.1f} MiB"  # noqa: E731
    for label, r in results:
        for backend, v in r["summary"]["results"].items():
            if "error" in v:
                t.add_row(f"{label}{backend}", "", f"[red]{v['error']}[/]")
                continue
            m = v.get("memory", {})
            where = v.get("device") or (f"{v.get('threads')} thread" if v.get("threads") else "")
            t.add_row(f"{label}{backend}", str(where), _f(v["ms_step"], ".1f"), _f(v["img_s"], ".1f"),
                      mib(m.get("peak")), mib(m.get("params")), mib(m.get("grads")), mib(m.get("optimizer")),
                      mib(m.get("activations")), mib(m.get("workspace")))
    return t


@app.command()
@guarded
def bench(
    model: str = typer.Argument(..., help="Model on the device, package directory or zoo name."),
    compare: str = typer.Option("cpu", "--compare", help="cpu: OpenCL vs serial numpy on the device; "
                                                          "desktop: the same job here and on the device."),
    stage: str = typer.Option("last", "--stage", help="infer | last | all."),
    batch: int = typer.Option(8, "--batch", min=1),
    size: int = typer.Option(224, "--size", min=8, help="Input size of a zoo model."),
    steps: int = typer.Option(10, "--steps", min=1, help="Timed steps (medians)."),
    width: float = typer.Option(1.0, "--width", help="Width multiplier of a zoo model."),
    classes: int = typer.Option(1000, "--classes", min=1, help="Classes of a zoo model's head."),
    as_json: bool = typer.Option(False, "--json", help="The result as JSON on stdout."),
):
    """Time every layer of one stage on the OpenCL Plan and the serial single-core CPU baseline."""
    if compare not in COMPARES:
        raise typer.BadParameter(f"must be one of {', '.join(COMPARES)}", param_hint="--compare")
    if stage not in STAGES:
        raise typer.BadParameter(f"must be one of {', '.join(STAGES)}", param_hint="--stage")
    targets: list[tuple[str, Target | None]] = [("", None)]
    if compare == "desktop":
        targets = [("desktop ", replace(session.TARGET, device="local", serial=None, root=None, python=None,
                                        su=False)), ("device ", None)]
    results, name = [], model
    with tempfile.TemporaryDirectory(prefix="thomas-bench-") as tmp:
        if compare == "desktop" and model not in zoo.ZOO and not Path(model).is_dir():
            model = str(_pull_model(model, Path(tmp)))       # a model only the device has: bench its copy here too
        for label, target in targets:
            if not as_json:
                err.print(f"bench {model} {stage} batch {batch} on {label.strip() or 'the device'} ...",
                          highlight=False)
            results.append((label, run_bench(target, model, stage, batch, size, steps, width, classes)))
    if as_json:
        doc = {lbl.strip() or "device": r for lbl, r in results} if compare == "desktop" else results[0][1]
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    if compare == "desktop":
        results = [(lbl, dict(r, layers=[e for e in r["layers"] if e["backend"] == "opencl"],
                              summary=dict(r["summary"], results={k: v for k, v in r["summary"]["results"].items()
                                                                  if k == "opencl"})))
                   for lbl, r in results] if all("ms_step" in r["summary"]["results"].get("opencl", {})
                                                 for _, r in results) else results
    out.print(layer_table(results, f"{name} {stage}, batch {batch} (run {', '.join(r['id'] for _, r in results)})"))
    out.print(totals_table(results))
    sp = results[0][1]["summary"].get("speedup")
    if compare == "cpu" and sp:
        out.print(f"OpenCL is [bold]{sp:.1f}x[/] the serial single-core numpy baseline")


@app.command()
@guarded
def tune(
    model: str = typer.Argument("mobilenet_v2", help="Model on the device, package directory or zoo name."),
    batch: int = typer.Option(8, "--batch", min=1),
    size: int = typer.Option(224, "--size", min=8, help="Input size of a zoo model."),
    steps: int = typer.Option(3, "--steps", min=1, help="Timed repetitions per variant (median)."),
    width: float = typer.Option(1.0, "--width", help="Width multiplier of a zoo model."),
    classes: int = typer.Option(1000, "--classes", min=1, help="Classes of a zoo model's head."),
    as_json: bool = typer.Option(False, "--json", help="The events as JSON lines on stdout."),
):
    """Time GEMM tile variants on the model's GEMMs once; the device keeps the winner for every later run."""
    s = Session(open_transport(note=console_note), note=console_note)
    pkg = _model(s, model, size, width, classes)
    job_rel = f"jobs/tune-{store.new_run_id()}.json"
    s.t.write_bytes(job_rel, (json.dumps({"model": pkg, "batch": batch, "steps": steps}) + "\n").encode())
    res = s.call(["tune", job_rel], on_event=(lambda ev: sys.stdout.write(json.dumps(ev) + "\n")) if as_json else None,
                 timeout=DEFAULT_TIMEOUT)
    last = res.events[-1] if res.events else {}
    if last.get("ev") != "tune":
        msg = last.get("message") if last.get("ev") == "error" else f"agent ended ({res.returncode}) without a result"
        raise RunFailed(last.get("code", "error"), f"tune failed on {s.t.serial}: {msg}")
    if as_json:
        return
    t = Table("#", "tile", "GEMM ms", "launches", title=f"GEMM variants on {last['key']}")
    for e in res.events:
        if e["ev"] == "tune_variant":
            p = e["params"]
            tile = " ".join(f"{k}={p[k]}" for k in sorted(p) if k.isupper()) or "defaults"
            t.add_row(str(e["index"]) + (" *" if e["index"] == last["index"] else ""), tile,
                      _f(e["ms"], ".2f") if e["ms"] is not None else f"[red]{e['error']}[/]", str(e["gemms"]))
    out.print(t)
    gain = f" ({last['default_ms'] / last['ms']:.2f}x the defaults)" if last.get("default_ms") else ""
    shapes = last.get("shapes") or {}
    own = (f", and their own tiles for {len(shapes)} GEMM shapes (all GEMMs {last['tuned_ms']:.2f} ms instead of "
           f"{last['ms']:.2f})" if shapes and last.get("tuned_ms") else "")
    out.print(f"saved variant {last['index']}{gain}{own} to {s.t.serial}:{last['path']}", highlight=False,
              soft_wrap=True)
