"""Which devices there are and what each offers: `thomas devices`, `thomas doctor` (and step 7 of
`thomas setup termux`).

    rows = device_rows(target)                          # attached phones (adb), then the local device
    modes = detect_modes(serial, target)                # daemon (paired? running?) and adb shell (a Python?)
    res = run_doctor(Session(t), modes=modes)           # {"device", "ok", "checks": [...], "report", "agent"}
"""
from __future__ import annotations

from device_agent.protocol import PROTOCOL_VERSION, DeviceEvent

from .device import Session, Target, local_root, python_hint
from .transport.base import DeviceError, DeviceRow


def device_rows(target: Target) -> list[DeviceRow]:
    """The adb server's devices (it is started if needed, as `adb devices` does), then the local one.
    With --device local, adb is left alone."""
    from .transport.adb import list_devices
    from .transport.daemon import load_pairing, pairing_path

    local = DeviceRow("local", "device", "local", "this computer",
                      str(target.root if target.device == "local" and target.root else local_root()))
    phones = [] if target.device == "local" else list_devices()
    for r in phones:
        try:
            paired = load_pairing(r.serial) is not None
        except DeviceError:
            paired = pairing_path(r.serial).exists()
        if paired:
            r.detail = f"{r.detail}; paired with its THOMAS daemon".lstrip("; ")
    return phones + [local]


def _gib(n) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def detect_modes(serial: str, target: Target) -> dict:
    """Which ways into the phone work: the Termux daemon (paired? running?) and adb shell (a Python the
    shell user can run?); `pick` is the one auto mode uses (None: neither works yet)."""
    from .transport import adb, daemon

    shell = adb.AdbTransport(serial, target.root or adb.DEFAULT_ROOT, target.python or adb.DEFAULT_PYTHON,
                             su=target.su).probe()
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

    props = facts.get("props") or {}
    if t.kind in ("adb", "daemon"):
        add("device", "ok", f"{t.serial}: {props.get('ro.product.model', '?')}, Android "
                            f"{props.get('ro.build.version.release', '?')} (SDK {props.get('ro.build.version.sdk', '?')}, "
                            f"{props.get('ro.product.cpu.abi', '?')})")
    else:
        add("device", "ok", f"local: this computer ({facts.get('os')})")
    add("device root", "ok" if facts.get("root_writable") else "fail", t.root,
        "" if facts.get("root_writable") else "pass a writable --device-root")
    py_ok = bool(facts.get("python") and facts.get("python_version"))
    add("python", "ok" if py_ok else "fail",
        f"{facts.get('python')} ({facts.get('python_version')})" if py_ok else f"'{t.python}' not runnable",
        "" if py_ok else python_hint(t))
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
        report = s.agent_event(["doctor"], DeviceEvent)
        add("agent", "ok", f"{agent['agent']} ({agent['hash'][:12]}, "
                           f"{'pushed now' if agent['pushed'] else 'up to date'}), protocol {PROTOCOL_VERSION}")
        _agent_checks(report, facts, add)
    ok = all(c["state"] != "fail" for c in checks)
    return {"device": t.describe(), "ok": ok, "checks": checks, "report": report.to_dict() if report else None,
            "agent": agent}


def _agent_checks(report: DeviceEvent, facts: dict, add) -> None:
    """What the agent's own doctor found: numpy, pyopencl, each OpenCL device, free space."""
    add("numpy", "ok" if report.numpy else "fail", report.numpy or "missing",
        "" if report.numpy else "install numpy for that Python (pip install numpy; Termux: pkg install python-numpy)")
    add("pyopencl", "ok" if report.pyopencl else "warn", report.pyopencl or "missing",
        "" if report.pyopencl else "pip install pyopencl (without it training runs on the CPU: --backend cpu)")
    for d in report.opencl:
        add(f"OpenCL {d.get('index', '')}", "ok",
            f"{d['device']} [{d['kind']}] on {d['platform']}, {_gib(d.get('global_mem'))} memory, "
            f"max buffer {_gib(d.get('max_alloc'))}, fp16 {'yes' if d.get('fp16') else 'no'}")
    if not report.opencl:
        libs = facts.get("opencl_libs") or []
        fix = "install the vendor OpenCL driver (or pocl-binary-distribution for a CPU device)"
        if libs:
            fix = (f"the vendor driver is at {libs[0]}: make it visible to that Python "
                   f"(LD_LIBRARY_PATH / an ICD file, docs/ANDROID.md)")
        add("OpenCL", "warn", report.opencl_error or "no device", fix)
    free = report.free_bytes
    add("free space", "ok" if free is None or free > 500 * 2**20 else "warn", _gib(free),
        "" if free is None or free > 500 * 2**20 else "free some space at the device root")
