"""What a fleet run shows: a table per round (devices done/failed, the example-weighted train/val loss and
accuracy of the devices' runs, the central accuracy, bytes moved over the devices' links, round time),
or with --json one event a line: start, round_start, device_done, device_failed, round_done, done."""
from __future__ import annotations

import json
import time

from rich.console import Console
from rich.markup import escape

from ..views import rounds_table


KINDS = {"adb": "adb shell", "daemon": "daemon", "local": "local"}


class FleetView:
    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.out: Console | None = None
        self.err: Console | None = None
        self._raw = None

    def attach(self, out_file, err_file) -> None:
        """Where to write while Flower runs (file descriptors 1 and 2 go to the run's log then)."""
        self._raw = out_file
        self.out = Console(file=out_file) if out_file else None
        self.err = Console(file=err_file, stderr=True) if err_file else None

    def _console(self, stderr: bool = False) -> Console:
        """stdout, or for progress lines stderr on a terminal (a failed command's piped stderr is its
        error line alone, as everywhere in thomas: the lines go to stdout then)."""
        from ..app import err, out

        e = self.err or err
        return e if stderr and e.is_terminal else (self.out or out)

    def emit(self, ev: str, **fields) -> None:
        line = json.dumps({"ev": ev, "t": round(time.time(), 3), **fields}, default=_jsonable)
        if self._raw is not None:
            self._raw.write(line + "\n")
            self._raw.flush()
        else:
            print(line, flush=True)

    def start(self, doc: dict, resumed_from: int = 0) -> None:
        if self.as_json:
            self.emit("start", run=doc["id"], rounds=doc["rounds"], devices=[d["serial"] for d in doc["devices"]],
                      strategy=doc["strategy"], resumed_from=resumed_from)
            return
        devs = ", ".join(f"{d['serial']} ({KINDS.get(d['kind'], d['kind'])})" for d in doc["devices"])
        what = f"resumed after round {resumed_from}" if resumed_from else f"{doc['rounds']} rounds"
        self._console().print(f"fleet run [bold]{doc['id']}[/]: {escape(doc['model'])} on '{escape(doc['data'])}', "
                              f"{doc['strategy']}, {what}, {doc['job'].get('epochs')} local epochs, "
                              f"layers {doc['job'].get('layers', 'last')}, bn {doc['bn']}; devices: {escape(devs)}",
                              highlight=False, soft_wrap=True)

    def note(self, msg: str) -> None:
        """A line for the user while the fleet runs (with --json: a `note` event)."""
        if self.as_json:
            self.emit("note", message=msg)
        else:
            self._console(True).print(f"[yellow]{escape(msg)}[/]", highlight=False, soft_wrap=True)

    def round_start(self, rnd: int, n: int) -> None:
        if self.as_json:
            self.emit("round_start", round=rnd, devices=n)

    def device_done(self, rnd: int, row: dict) -> None:
        if self.as_json:
            self.emit("device_done", round=rnd, **row)
            return
        self._console(True).print(f"[dim]round {rnd}: device {row['device']} {escape(row['serial'])} done "
                                  f"(run {row['run']}, val acc {_fmt(row.get('val_acc'))}, "
                                  f"{row['seconds']:.1f}s)[/]", highlight=False, soft_wrap=True)

    def device_failed(self, rnd: int, f: dict) -> None:
        if self.as_json:
            self.emit("device_failed", round=rnd, **f)
            return
        self._console(True).print(f"[yellow]round {rnd}: device {f['device']} failed:[/] {escape(f['error'])}",
                                  highlight=False, soft_wrap=True)

    def round_done(self, entry: dict) -> None:
        if self.as_json:
            self.emit("round_done", **entry)
            return
        self._console().print(rounds_table([entry]))

    def done(self, doc: dict) -> None:
        final = f"{doc['id']}/final"
        if self.as_json:
            self.emit("done", run=doc["id"], rounds=doc.get("rounds_done"), final=final,
                      history=doc.get("history", []))
            return
        c = self._console()
        c.print(rounds_table(doc.get("history", []), title=f"fleet run {doc['id']}"))
        c.print(f"[green]done[/]: {doc.get('rounds_done')} rounds; the global model is run {final} "
                f"(thomas eval/export/infer {doc['id']})", highlight=False, soft_wrap=True)


def _fmt(v) -> str:
    return "" if v is None or v != v else f"{v:.3f}"


def _jsonable(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
