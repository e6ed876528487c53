"""`thomas setup termux`: the guided setup of daemon mode on an unrooted phone (docs/ANDROID.md); the
checks and the bootstrap script are thomas_cli/termux.py.

    thomas setup termux                              # each step, then its check; Enter to go on
    thomas setup termux --yes --code 123456 --json   # no prompts: the checks only, exit 1 at the first failure
    thomas setup termux --shared-dir /sdcard/Documents/thomas --port 7979
"""
from __future__ import annotations

import dataclasses
import shlex
import socket
import sys

import typer

from device_agent.protocol import DAEMON_PORT

from ..app import app, err, guarded, note, out, print_json
from ..device import Session, open_transport, pick_serial
from ..doctor import detect_modes, run_doctor
from ..termux import (PAYLOAD_ZIP, SCRIPT, SHARED_DIR, WAIT_S, Check, SetupFailed, check_daemon, check_paired,
                      check_storage, check_termux, do_pair, push_bootstrap)
from ..views import doctor_table
from .common import target

setup_app = typer.Typer(no_args_is_help=True, help="Set a phone up for THOMAS (daemon mode on unrooted phones).")
app.add_typer(setup_app, name="setup")


# ============================================================================ the walk
class Walk:
    """The conversation: steps printed, checks run, prompts only when interactive."""

    def __init__(self, interactive: bool, as_json: bool):
        self.interactive = interactive
        self.as_json = as_json
        self.con = err if as_json else out
        self.checks: list[Check] = []
        self.facts: dict = {}           # serial, shared_dir, port, payload: for --json

    def say(self, text: str = "") -> None:
        self.con.print(text, highlight=False, soft_wrap=True)

    def step(self, n: int, title: str, lines: list[str]) -> None:
        self.say()
        self.say(f"[bold]Step {n}/7: {title}[/]")
        for ln in lines:
            self.say(f"  {ln}")

    def wait_enter(self, what: str = "done") -> None:
        if self.interactive:
            typer.prompt(f"  Press Enter when {what}", default="", show_default=False, prompt_suffix=" ",
                         err=self.as_json)

    def show(self, c: Check) -> None:
        mark = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]", "manual": "[dim]·[/]"}[c.state]
        self.say(f"  {mark} {c.step}: {c.value}")
        if c.fix and c.state != "ok":
            self.say(f"    [dim]fix:[/] {c.fix}")

    def manual(self, n: int, title: str, lines: list[str], what: str, check_fn, wait: bool = True) -> Check:
        """A step done on the phone: checked first (done already: just the ✓), else the instructions,
        Enter when done (interactive), then the check."""
        c = check_fn()
        if c.state == "ok":
            self.step(n, title, [])
            return self.run(check_fn, first=c)
        self.step(n, title, lines)
        if wait and self.interactive:
            self.wait_enter(what)
            return self.run(check_fn)
        return self.run(check_fn, first=c)

    def run(self, check_fn, first: Check | None = None) -> Check:
        """Run a check until it passes (interactive: retry or go on as the user says)."""
        while True:
            c, first = first or check_fn(), None
            self.show(c)
            if c.state in ("ok", "manual"):
                break
            if not self.interactive:
                if c.state == "fail":
                    self.fail(c)
                break
            choice = typer.prompt("  [r]etry the check, [c]ontinue anyway, [q]uit",
                                  default="r" if c.state == "fail" else "c", err=self.as_json).strip().lower()[:1]
            if choice == "q":
                self.fail(c)
            if choice == "c":
                break
        self.checks = [x for x in self.checks if x.step != c.step] + [c]
        return c

    def fail(self, c: Check):
        self.checks = [x for x in self.checks if x.step != c.step] + [c]
        self.dump(ok=False)
        raise SetupFailed(c.line())

    def dump(self, ok: bool, doctor: dict | None = None) -> None:
        if self.as_json:
            print_json({"ok": ok, **self.facts, "steps": [dataclasses.asdict(c) for c in self.checks],
                        "doctor": doctor})


def _interactive(yes: bool) -> bool:
    return not yes and sys.stdin.isatty()


@setup_app.command("termux")
@guarded
def termux(
    shared_dir: str = typer.Option(SHARED_DIR, "--shared-dir",
                                   help="Phone folder that both adb and Termux reach (shared storage)."),
    port: int = typer.Option(DAEMON_PORT, "--port", min=1, max=65535, help="The daemon's port on the phone."),
    code: str = typer.Option(None, "--code", help="The pairing code the daemon shows in Termux (asked when missing)."),
    name: str = typer.Option(None, "--name", help="How the phone will know this computer (default: its host name)."),
    wait: float = typer.Option(None, "--wait", min=0,
                               help=f"Seconds to wait for the daemon to answer (default {WAIT_S:.0f}; 0 with --yes)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="No prompts: print the steps, run the checks, "
                                                         "exit 1 at the first failed one (also without a terminal)."),
    as_json: bool = typer.Option(False, "--json", help="The checks as JSON on stdout (the guide goes to stderr)."),
):
    """Set an unrooted phone up for daemon mode: Termux, its packages, the THOMAS agent and daemon,
    pairing, then `thomas doctor`; each step is checked from this computer through adb where it can be.
    With --yes (or without a terminal) nothing is asked: the checks run and the first failure exits 1."""
    shared = shared_dir.rstrip("/") or "/"
    if not shared.startswith("/") or any(c in shared for c in "\n\r\0"):
        raise typer.BadParameter("must be an absolute phone path", param_hint="--shared-dir")
    script = f"{shared}/{SCRIPT}"
    tgt = target()
    serial = pick_serial(dataclasses.replace(tgt, device="adb"), note=note)
    walk = Walk(_interactive(yes), as_json)
    walk.facts = {"serial": serial, "shared_dir": shared, "port": port}
    wait_s = wait if wait is not None else (WAIT_S if walk.interactive else 0.0)
    run_cmd = f"sh {shlex.quote(script)}"
    walk.say(f"Setting up [bold]{serial}[/] for THOMAS daemon mode (docs/ANDROID.md). The phone needs no root; "
             f"this computer checks each step through adb.")

    _phone_steps(walk, serial, port)
    _push_and_start(walk, serial, shared, port, wait_s, run_cmd, script)
    _pair_step(walk, serial, port, code, name or socket.gethostname(), as_json)
    walk.step(7, "check everything: thomas doctor through the daemon", [])
    doctor = _doctor(serial, walk, tgt)
    walk.dump(ok=doctor["ok"], doctor=doctor)
    if not doctor["ok"]:
        failed = ", ".join(c["check"] for c in doctor["checks"] if c["state"] == "fail")
        raise SetupFailed(f"doctor: {failed} failed (see the table); fix it in Termux, then `thomas doctor`")
    walk.say(f"\n[green]Done.[/] {serial} is ready for daemon mode: `thomas push-model`, `thomas finetune` ... "
             f"now run through the daemon. After a reboot, type `thomas-daemon` in Termux.")


def _phone_steps(walk: Walk, serial: str, port: int) -> None:
    """Steps 1-3, done on the phone by hand: Termux, its packages, shared storage."""
    walk.manual(1, "install Termux", [
        "Install Termux from F-Droid (https://f-droid.org/packages/com.termux/) or from its GitHub releases",
        "(https://github.com/termux/termux-app/releases) -- not the Google Play build. Open it once.",
        "Termux:API is optional (THOMAS does not need it); if you add it, take it from the same source."],
        "Termux is installed", lambda: check_termux(serial))

    from ..transport.daemon import probe_daemon

    # NOTE: a daemon that answers already (a rerun) means the packages are there: step 7 says for sure
    running = walk.interactive and probe_daemon(serial, port) is not None
    walk.manual(2, "install Python, numpy and OpenCL in Termux", [
        "Type in Termux:",
        "  [cyan]pkg update && pkg upgrade[/]",
        "  [cyan]pkg install python python-pip python-numpy ocl-icd opencl-headers clinfo[/]",
        "For the GPU, pyopencl (no Android wheel exists: pip compiles it, several minutes):",
        "  [cyan]pkg install clang cmake ninja[/]",
        "  [cyan]pip install scikit-build-core nanobind[/]",
        "  [cyan]pip install --no-build-isolation pyopencl[/]   (uses Termux's numpy instead of building one)",
        "The vendor OpenCL driver is usually /vendor/lib64/libOpenCL.so. Since Android 7 an app may load it only",
        "if it is listed in /vendor/etc/public.libraries.txt. `clinfo -l` shows what Termux sees; if it lists no",
        "platform, try `LD_LIBRARY_PATH=/vendor/lib64:$PREFIX/lib clinfo -l` (docs/ANDROID.md, OpenCL).",
        "Without pyopencl or a visible driver THOMAS still trains, on the CPU. Step 7 checks all of this."],
        "the packages are installed",
        lambda: Check("packages", "manual", "checked at step 7 (the agent's doctor, through the daemon)"),
        wait=not running)

    walk.manual(3, "let Termux read shared storage", [
        "Type in Termux:  [cyan]termux-setup-storage[/]   and allow the permission Android asks for."],
        "storage is allowed", lambda: check_storage(serial))


def _push_and_start(walk: Walk, serial: str, shared: str, port: int, wait_s: float, run_cmd: str, script: str) -> None:
    """Steps 4-5: the agent and the script pushed from here, the daemon started in Termux (polled)."""
    walk.step(4, "push the THOMAS agent and its bootstrap script", [
        f"This computer copies {PAYLOAD_ZIP} and {SCRIPT} to {shared} on the phone."])
    digest = ""

    def push() -> Check:
        nonlocal digest
        c, digest = push_bootstrap(serial, shared, port)
        walk.facts["payload"] = digest
        return c

    walk.run(push)

    walk.step(5, "start the daemon in Termux", [
        f"Type in Termux (one command):  [cyan]{run_cmd}[/]",
        "It unpacks the agent into ~/thomas/agent, installs the `thomas-daemon` command and starts the daemon",
        "(under termux-wake-lock). Leave that session open; it shows a pairing code for step 6.",
        "Later, `thomas-daemon` starts it again; rerunning the script upgrades the agent."])
    walk.run(lambda: check_daemon(serial, port, digest, wait_s, walk.interactive, script)[0])


def _pair_step(walk: Walk, serial: str, port: int, code: str | None, host_name: str, as_json: bool) -> None:
    """Step 6: this computer paired with the daemon (the code typed, or --code)."""
    walk.step(6, "pair this computer with the daemon", [
        "Type the 6-digit pairing code the daemon shows in Termux. No code on screen (or it expired)?",
        "Open a second Termux session (swipe from the left edge > New session) and type `thomas-daemon pair`."])

    def pair_check() -> Check:
        nonlocal code
        done = check_paired(serial, port)
        if done is not None:
            return done
        if code is None:
            if not walk.interactive:
                return Check("pair", "fail", "this computer is not paired with the daemon yet",
                             "rerun with --code CODE (the pairing code the daemon shows in Termux), or `thomas pair`")
            code = typer.prompt("  pairing code shown in Termux", err=as_json)
        c = do_pair(serial, port, code, host_name)
        code = None                     # a retry asks again
        return c

    walk.run(pair_check)


def _doctor(serial: str, walk: Walk, tgt) -> dict:
    modes = detect_modes(serial, tgt)
    t = open_transport(dataclasses.replace(tgt, serial=serial, device="adb", mode="daemon"), note=note)
    try:
        res = run_doctor(Session(t, note=note), modes=modes)
    finally:
        t.close()
    walk.con.print(doctor_table(res, t))
    failed = [c["check"] for c in res["checks"] if c["state"] == "fail"]
    walk.checks.append(Check("doctor", "ok" if res["ok"] else "fail",
                             "every essential check passed" if res["ok"] else f"failed: {', '.join(failed)}"))
    return res
