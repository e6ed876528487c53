"""The global device options and `thomas version`, `thomas devices`, `thomas doctor`, `thomas pair`.

    thomas devices                        # attached phones (adb) and the local device
    thomas -s R58M123 doctor              # what the phone offers, and how to fix what is missing
    thomas --device local doctor --json
"""
from __future__ import annotations

import dataclasses
import socket

import typer
from rich.table import Table

from ..app import app, err, guarded, note, out, print_json
from ..device import Session, Target, open_transport, pick_serial
from ..doctor import detect_modes, device_rows, run_doctor
from ..views import doctor_table
from .common import target


@app.callback()
def device_options(
    ctx: typer.Context,
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
    # NOTE: the one place the global options land: the root context's obj, which every command reads
    ctx.obj = Target(serial=None if device == "local" else serial, device=device, root=device_root,
                     python=python, su=su, mode=mode)


@app.command()
def version():
    """Print the versions of the host CLI and the device agent."""
    import device_agent

    out.print(f"thomas {device_agent.__version__} (agent {device_agent.__version__})")


@app.command()
@guarded
def devices(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List attached phones (through adb) with model and state, and the local device."""
    rows = device_rows(target())
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    t = Table("serial", "state", "transport", "model", "detail", title="devices")
    for r in rows:
        state = r.state if r.state == "device" else f"[yellow]{r.state}[/]"
        t.add_row(r.serial, state, r.transport, r.model, r.detail)
    out.print(t)
    if len(rows) == 1 and target().device != "local":
        err.print("[dim]no phone attached: enable USB debugging and accept the prompt on the phone "
                  "(see docs/ANDROID.md); commands use the local device meanwhile[/]")


@app.command()
@guarded
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    repush: bool = typer.Option(False, "--repush", help="Push the agent again even if its version matches."),
):
    """Check the device: Python, numpy, pyopencl, OpenCL devices (memory, fp16), free space, agent;
    for each missing piece, how to fix it. Exit status 1 when something essential is missing."""
    tgt = target()
    serial = pick_serial(tgt, note=note)
    modes = None
    if serial is not None:
        modes = detect_modes(serial, tgt)
        mode = tgt.mode if tgt.mode != "auto" else (modes["pick"] or "shell")
        tgt = dataclasses.replace(tgt, serial=serial, device="adb", mode=mode)
    t = open_transport(tgt, note=note)
    res = run_doctor(Session(t, note=note), repush=repush, modes=modes)
    if as_json:
        print_json(res)
    else:
        out.print(doctor_table(res, t))
    if not res["ok"]:
        raise typer.Exit(1)


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
    from ..transport import daemon

    serial = pick_serial(dataclasses.replace(target(), device="adb"), note=note)
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
