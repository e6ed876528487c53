"""The global device options and `thomas devices`, `thomas doctor`.

    thomas devices                        # attached phones (adb) and the local device
    thomas -s R58M123 doctor              # what the phone offers, and how to fix what is missing
    thomas --device local doctor --json
"""
from __future__ import annotations

import dataclasses
import socket

import typer
from rich.table import Table

from . import session
from .app import app, err, guarded, out, print_json
from .session import Session, Target, console_note, open_transport
from .transport.base import DeviceError, DeviceRow


@app.callback()
def device_options(
    serial: str = typer.Option(None, "-s", "--serial", envvar="THOMAS_SERIAL",
                               help="The phone to use, as `thomas devices` lists it (also THOMAS_SERIAL)."),
    device: str = typer.Option("auto", "--device", envvar="THOMAS_DEVICE",
                               help="auto: the attached phone, else the local device; local: this computer "
                                    "(a folder + subprocess); adb: a phone or fail."),
    device_root: str = typer.Option(None, "--device-root", envvar="THOMAS_DEVICE_ROOT",
                                    help="THOMAS folder on the device (default: /data/local/tmp/thomas on a phone, "
                                         "$THOMAS_HOME/device for local)."),
    python: str = typer.Option(None, "--python", envvar="THOMAS_DEVICE_PYTHON",
                               help="Python on the device that runs the agent (default: python3 on a phone, this one for local)."),
    su: bool = typer.Option(False, "--su", envvar="THOMAS_SU", help="Run the agent through `su -c` (rooted phones)."),
    mode: str = typer.Option("auto", "--mode", envvar="THOMAS_MODE",
                             help="How a phone runs the agent: auto (the Termux daemon once paired, else adb "
                                  "shell), daemon, or shell (rooted phones / a pushed runtime)."),
):
    """Fine-tune pretrained CNNs on an Android phone's GPU, driven from this laptop."""
    if device not in ("auto", "local", "adb"):
        raise typer.BadParameter(f"must be auto, local or adb, not '{device}'", param_hint="--device")
    if mode not in ("auto", "shell", "daemon"):
        raise typer.BadParameter(f"must be auto, shell or daemon, not '{mode}'", param_hint="--mode")
    session.TARGET = Target(serial=None if device == "local" else serial, device=device, root=device_root,
                            python=python, su=su, mode=mode)


def device_rows() -> list[DeviceRow]:
    """The adb server's devices (it is started if needed, as `adb devices` does), then the local one.
    With --device local, adb is left alone."""
    from .transport.adb import list_devices

    tgt = session.TARGET
    local = DeviceRow("local", "device", "local", "this computer", str(tgt.root if tgt.device == "local" and tgt.root
                                                                      else session.local_root()))
    from .transport.daemon import load_pairing, pairing_path

    phones = [] if tgt.device == "local" else list_devices()
    for r in phones:
        try:
            paired = load_pairing(r.serial) is not None
        except DeviceError:
            paired = pairing_path(r.serial).exists()
        if paired:
            r.detail = f"{r.detail}; paired with its THOMAS daemon".lstrip("; ")
    return phones + [local]


@app.command()
@guarded
def devices(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List attached phones (through adb) with model and state, and the local device."""
    rows = device_rows()
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    t = Table("serial", "state", "transport", "model", "detail", title="devices")
    for r in rows:
        state = r.state if r.state == "device" else f"[yellow]{r.state}[/]"
        t.add_row(r.serial, state, r.transport, r.model, r.detail)
    out.print(t)
    if len(rows) == 1 and session.TARGET.device != "local":
        err.print("[dim]no phone attached: enable USB debugging and accept the prompt on the phone "
                  "(see docs/ANDROID.md); commands use the local device meanwhile[/]")


# ============================================================================ doctor
def _gib(n) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def detect_modes(serial: str) -> dict:
    """Which ways into the phone work: the Termux daemon (paired? running?) and adb shell (a Python the
    shell user can run?); `pick` is the one auto mode uses (None: neither works yet)."""
    from .transport import adb, daemon

    tgt = session.TARGET
    shell = adb.AdbTransport(serial, tgt.root or adb.DEFAULT_ROOT, tgt.python or adb.DEFAULT_PYTHON, su=tgt.su).probe()
    shell_ok = bool(shell.get("python") and shell.get("python_version") and shell.get("root_writable"))
    pairing = daemon.load_pairing(serial)
    welcome = daemon.probe_daemon(serial, int(pairing.get("port") or daemon.DAEMON_PORT) if pairing else daemon.DAEMON_PORT)
    pick = "daemon" if pairing and welcome else ("shell" if shell_ok else None)
    return {"shell": {"ok": shell_ok, "python": shell.get("python"), "python_version": shell.get("python_version"),
                      "su": bool(shell.get("su"))},
            "daemon": {"paired": pairing is not None, "running": welcome is not None,
                       "agent": (welcome or {}).get("agent"), "python": (welcome or {}).get("python"),
                       "pairing_open": bool((welcome or {}).get("pairing"))},
            "pick": pick}


def _modes_check(m: dict, using: str) -> tuple[str, str, str]:
    d, sh = m["daemon"], m["shell"]
    if d["running"]:
        dv = f"daemon {'paired' if d['paired'] else 'running, not paired'} (agent {d['agent']}, python {d['python']})"
    else:
        dv = "daemon paired but not running" if d["paired"] else "no daemon"
    sv = (f"shell python {sh['python_version']}" if sh["ok"] else "no python for the adb shell user") + \
        ("; su available" if sh["su"] else "")
    value = f"{dv}; {sv} -> using {using}"
    if m["pick"] is not None:
        fix = "" if using == m["pick"] or m["pick"] == "shell" else f"--mode {m['pick']} would work"
        return "ok", value, fix
    if d["running"]:
        fix = "pair this computer: `thomas pair` with the code `thomas-daemon pair` shows in Termux"
    elif d["paired"]:
        fix = "start the daemon in Termux: `thomas-daemon` (`thomas setup termux` shows the steps)"
    else:
        fix = "unrooted phone: `thomas setup termux`, then `thomas pair`; rooted: --su --python PATH"
    return "fail", value, fix


def run_doctor(s: Session, repush: bool = False, modes: dict | None = None) -> dict:
    """Every check with its state (ok / warn / fail), value and fix; `ok` False if one fails."""
    t = s.t
    facts = t.probe()
    checks: list[dict] = []

    def add(name, state, value, fix=""):
        checks.append({"check": name, "state": state, "value": value, "fix": fix})

    desc = t.describe()
    props = facts.get("props") or {}
    if t.kind in ("adb", "daemon"):
        model = props.get("ro.product.model", "?")
        add("device", "ok", f"{t.serial}: {model}, Android {props.get('ro.build.version.release', '?')} "
                            f"(SDK {props.get('ro.build.version.sdk', '?')}, {props.get('ro.product.cpu.abi', '?')})")
    else:
        add("device", "ok", f"local: this computer ({facts.get('os')})")
    add("device root", "ok" if facts.get("root_writable") else "fail", t.root,
        "" if facts.get("root_writable") else "pass a writable --device-root")
    py_ok = bool(facts.get("python") and facts.get("python_version"))
    add("python", "ok" if py_ok else "fail",
        f"{facts.get('python')} ({facts.get('python_version')})" if py_ok else f"'{t.python}' not runnable",
        "" if py_ok else session.python_hint(t))
    if modes is not None:
        add("modes", *_modes_check(modes, t.kind if t.kind == "daemon" else "shell"))
    elif t.kind == "adb":
        add("modes", "ok" if py_ok else "fail", ("shell (adb shell runs the agent)" if py_ok else "none yet") +
            ("; su available" if facts.get("su") else ""),
            "" if py_ok else "daemon mode (Termux) for unrooted phones: `thomas setup termux`, then `thomas pair`")
    if t.kind == "daemon":
        d = facts.get("daemon") or {}
        add("daemon", "ok", f"127.0.0.1:{d.get('port')} on the phone, pid {d.get('pid')}, up {d.get('uptime', 0):.0f} s, "
                            f"{'running a job' if d.get('running') else 'idle'}, {len(d.get('queue') or [])} queued")
    report, agent = None, None
    if py_ok and facts.get("root_writable"):
        agent = s.ensure_agent(force=repush)
        report = s.agent_json(["doctor"], "device")
        add("agent", "ok", f"{agent['agent']} ({agent['hash'][:12]}, "
                           f"{'pushed now' if agent['pushed'] else 'up to date'}), protocol {session.PROTOCOL_VERSION}")
        add("numpy", "ok" if report["numpy"] else "fail", report["numpy"] or "missing",
            "" if report["numpy"] else "install numpy for that Python (pip install numpy; Termux: pkg install python-numpy)")
        add("pyopencl", "ok" if report["pyopencl"] else "warn", report["pyopencl"] or "missing",
            "" if report["pyopencl"] else "pip install pyopencl (without it training runs on the CPU: --backend cpu)")
        cl = report["opencl"]
        for d in cl:
            add(f"OpenCL {d.get('index', '')}", "ok",
                f"{d['device']} [{d['kind']}] on {d['platform']}, {_gib(d.get('global_mem'))} memory, "
                f"max buffer {_gib(d.get('max_alloc'))}, fp16 {'yes' if d.get('fp16') else 'no'}")
        if not cl:
            libs = facts.get("opencl_libs") or []
            fix = "install the vendor OpenCL driver (or pocl-binary-distribution for a CPU device)"
            if libs:
                fix = (f"the vendor driver is at {libs[0]}: make it visible to that Python "
                       f"(LD_LIBRARY_PATH / an ICD file, docs/ANDROID.md)")
            add("OpenCL", "warn", report.get("opencl_error") or "no device", fix)
        free = report.get("free_bytes")
        add("free space", "ok" if free is None or free > 500 * 2**20 else "warn", _gib(free),
            "" if free is None or free > 500 * 2**20 else "free some space at the device root")
    ok = all(c["state"] != "fail" for c in checks)
    return {"device": desc, "ok": ok, "checks": checks, "report": report, "agent": agent}


def doctor_table(res: dict, t) -> Table:
    """run_doctor's checks as the table `thomas doctor` prints (one row a check, with its fix)."""
    tb = Table("", "check", "value", "fix", title=f"thomas doctor: {t.serial} ({t.kind})")
    marks = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}
    for c in res["checks"]:
        tb.add_row(marks[c["state"]], c["check"], c["value"], c["fix"])
    return tb


@app.command()
@guarded
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    repush: bool = typer.Option(False, "--repush", help="Push the agent again even if its version matches."),
):
    """Check the device: Python, numpy, pyopencl, OpenCL devices (memory, fp16), free space, agent;
    for each missing piece, how to fix it. Exit status 1 when something essential is missing."""
    tgt = session.TARGET
    serial = session.pick_serial(tgt, note=console_note)
    modes = None
    if serial is not None:
        modes = detect_modes(serial)
        mode = tgt.mode if tgt.mode != "auto" else (modes["pick"] or "shell")
        t = open_transport(dataclasses.replace(tgt, serial=serial, device="adb", mode=mode), note=console_note)
    else:
        t = open_transport(note=console_note)
    res = run_doctor(Session(t, note=console_note), repush=repush, modes=modes)
    if as_json:
        print_json(res)
    else:
        out.print(doctor_table(res, t))
    if not res["ok"]:
        raise typer.Exit(1)


# ============================================================================ pairing
@app.command()
@guarded
def pair(
    code: str = typer.Option(None, "--code", help="The 6-digit code the daemon shows in Termux (asked when missing)."),
    port: int = typer.Option(None, "--port", min=1, max=65535, help="The daemon's port on the phone (default 7878)."),
    name: str = typer.Option(None, "--name", help="How the phone will know this computer (default: its host name)."),
    forget: bool = typer.Option(False, "--forget", help="Remove this computer's pairing with the phone instead."),
):
    """Pair this computer with the THOMAS daemon running in Termux on the phone (once per phone).

    The daemon shows a 6-digit code when it starts unpaired, or after `thomas-daemon pair` in Termux; the
    token it gives back is stored in $THOMAS_HOME/pairing/ (mode 0600) and proves this computer on every
    connection, so other apps on the phone cannot drive the daemon."""
    from .transport import daemon

    serial = session.pick_serial(dataclasses.replace(session.TARGET, device="adb"), note=console_note)
    if forget:
        gone = daemon.forget_pairing(serial)
        out.print(f"forgot the pairing with {serial}" if gone else f"this computer was not paired with {serial}",
                  highlight=False)
        return
    port = port or daemon.DAEMON_PORT
    welcome = daemon.probe_daemon(serial, port)
    if welcome is None:
        raise daemon.DeviceError(f"no THOMAS daemon answers on {serial}'s port {port}: start it in Termux "
                                 f"(`thomas setup termux` shows how)")
    if code is None:
        if not welcome.get("pairing"):
            raise daemon.DeviceError(f"the daemon on {serial} has no pairing code open: run `thomas-daemon pair` "
                                     f"in Termux, then `thomas pair` again")
        code = typer.prompt("pairing code shown in Termux")
    rec = daemon.pair(serial, code, name or socket.gethostname(), port)
    out.print(f"paired with the THOMAS daemon on {serial} (agent {rec.get('agent')}, root {rec.get('root')}); "
              f"commands now reach the phone through it (--mode shell overrides)", highlight=False, soft_wrap=True)
