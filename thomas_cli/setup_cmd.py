"""`thomas setup termux`: the guided setup of daemon mode on an unrooted phone (docs/ANDROID.md).

    thomas setup termux                              # each step, then its check; Enter to go on
    thomas setup termux --yes --code 123456 --json   # no prompts: the checks only, exit 1 at the first failure
    thomas setup termux --shared-dir /sdcard/Documents/thomas --port 7979

The seven steps, and how the host checks each (through adb, no root):
  1 Termux installed              `pm path com.termux` (+ who installed it: the Google Play build warns)
  2 Termux packages               manual; checked at step 7 by the agent's own doctor through the daemon
  3 termux-setup-storage          `pm dump com.termux` (storage permission granted?) or `appops`
  4 push the agent + script       adb sync to the shared folder, then a stat of both files
  5 `sh <shared>/thomas-termux.sh` typed in Termux: unpacks the agent, installs `thomas-daemon`,
                                  starts the daemon; the host polls the daemon's welcome
  6 pair                          the code the daemon shows, exchanged for a token (`thomas pair`)
  7 doctor                        `thomas doctor` through the daemon

Everything the phone runs comes from `bootstrap_script()`, the only place the script's text lives.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
import socket
import sys
import tempfile
import time
from pathlib import Path

import typer

import device_agent
from device_agent.errors import ThomasError
from device_agent.protocol import DAEMON_PORT, PROTOCOL_VERSION

from . import session
from .app import app, err, guarded, out, print_json
from .session import Session, console_note

setup_app = typer.Typer(no_args_is_help=True, help="Set a phone up for THOMAS (daemon mode on unrooted phones).")
app.add_typer(setup_app, name="setup")

SHARED_DIR = "/sdcard/Download/thomas"
SCRIPT = "thomas-termux.sh"
PAYLOAD_ZIP = "thomas-agent.zip"
TERMUX, TERMUX_API = "com.termux", "com.termux.api"
INSTALLERS = {"org.fdroid.fdroid": "F-Droid", "org.fdroid.basic": "F-Droid", "com.looker.droidify": "Droid-ify",
              "com.android.vending": "Google Play", "com.google.android.packageinstaller": "an APK file",
              "com.android.packageinstaller": "an APK file", "com.android.shell": "adb install"}
WAIT_S = 300.0              # s: how long the interactive setup waits for the daemon to answer
POLL_S = 1.0


class SetupFailed(ThomasError):
    """A check failed where the setup cannot go on (non-interactive, or the user quit)."""


@dataclasses.dataclass
class Check:
    step: str
    state: str                  # ok | warn | fail | manual
    value: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.step}: {self.value}" + (f"; {self.fix}" if self.fix else "")


# ============================================================================ the bootstrap script
def bootstrap_script(payload_hash: str, agent: str, port: int = DAEMON_PORT, shared: str = SHARED_DIR) -> str:
    """The POSIX sh script typed once in Termux (`sh <shared>/thomas-termux.sh`). It unpacks the
    payload zip lying next to it into ~/thomas/agent (agent.new, then swapped in), writes
    $PREFIX/bin/thomas-daemon and starts the daemon in the foreground. Rerunning it upgrades: it stops
    the daemon an earlier run started, swaps the agent, rewrites the wrapper.
    Extra arguments, and the words of $THOMAS_DAEMON_ARGS, go to `python -m device_agent serve`."""
    if not re.fullmatch(r"[0-9a-f]{64}", payload_hash):
        raise ValueError(f"not a payload hash: {payload_hash!r}")
    port = int(port)
    agent = re.sub(r"[^0-9A-Za-z.+-]", "", agent)
    typed = shlex.quote(f"{shared}/{SCRIPT}").replace("\n", " ")      # only ever shown in a comment
    return f"""#!/bin/sh
# THOMAS bootstrap for Termux, written by `thomas setup termux` (agent {agent}, payload {payload_hash[:12]}).
# Type in Termux:   sh {typed}
# It unpacks the agent ({PAYLOAD_ZIP}, next to this script) into ~/thomas/agent, installs the
# `thomas-daemon` command and starts the daemon in the foreground. Running it again upgrades the agent.
# Arguments, and the words of $THOMAS_DAEMON_ARGS, go on to `python -m device_agent serve`.
set -eu

want='{payload_hash}'
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
zip="$here/{PAYLOAD_ZIP}"
root="$HOME/thomas"

say() {{ printf 'thomas: %s\\n' "$*"; }}
die() {{ printf 'thomas: error: %s\\n' "$*" >&2; exit 1; }}

[ -n "${{PREFIX:-}}" ] || die "run this inside Termux (PREFIX is not set)"
command -v python >/dev/null 2>&1 || die "no python in Termux: pkg install python python-pip python-numpy"
python -c 'import numpy' 2>/dev/null || die "numpy is missing: pkg install python-numpy"
[ -r "$zip" ] || die "cannot read $zip: run termux-setup-storage and allow it (or run \\`thomas setup termux\\` again)"
python -c 'import pyopencl' 2>/dev/null || say "note: no pyopencl: training runs on the CPU until it is installed"

# 1. the agent, unpacked beside the live one and checked before anything changes
mkdir -p "$root"
rm -rf "$root/agent.new"
python - "$zip" "$root/agent.new" "$want" <<'PY'
import json, sys, zipfile
src, dest, want = sys.argv[1:4]
try:
    with zipfile.ZipFile(src) as z:
        meta = json.loads(z.read("PAYLOAD"))
        if meta.get("hash") != want:
            sys.exit("thomas: error: %s holds payload %s, this script wants %s: run `thomas setup termux` "
                     "on the computer again" % (src, str(meta.get("hash"))[:12], want[:12]))
        z.extractall(dest)
except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    sys.exit("thomas: error: cannot unpack %s (%s): run `thomas setup termux` on the computer again" % (src, e))
print("thomas: agent %s (payload %s) unpacked" % (meta.get("agent"), want[:12]))
PY

# 2. a daemon already serving ~/thomas runs the old agent: stopped (SIGTERM: it cancels its jobs, cleanly)
old=$(python -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["pid"]))' "$root/.daemon/daemon.json" \\
  2>/dev/null || true)
case "$old" in
  ''|*[!0-9]*) ;;
  *)
    cmd=$(tr '\\000' ' ' < "/proc/$old/cmdline" 2>/dev/null || true)
    case "$cmd" in
      *device_agent*serve*)
        say "stopping the running THOMAS daemon (pid $old) to upgrade it"
        kill "$old" 2>/dev/null || true
        # NOTE: alive = a non-empty command line (an exited daemon its parent has not reaped yet has none)
        i=0
        while [ -n "$(tr '\\000' ' ' < "/proc/$old/cmdline" 2>/dev/null || true)" ] && [ "$i" -lt 20 ]; do
          sleep 1; i=$((i + 1))
        done
        if [ "$i" -ge 20 ]; then kill -9 "$old" 2>/dev/null || true; fi ;;
    esac ;;
esac

# 3. the swap: agent.new becomes agent whole
rm -rf "$root/agent.old"
if [ -d "$root/agent" ]; then mv "$root/agent" "$root/agent.old"; fi
mv "$root/agent.new" "$root/agent"
rm -rf "$root/agent.old"

# 4. the thomas-daemon command
mkdir -p "$PREFIX/bin"
wrapper="$PREFIX/bin/thomas-daemon"
{{
  printf '#!%s\\n' "$(command -v sh)"
  cat <<'WRAPPER'
# thomas-daemon: the THOMAS daemon that `thomas` on a computer reaches through adb forward.
# Written by thomas-termux.sh (run that again to upgrade the agent).
#   thomas-daemon              start it in the foreground (Ctrl-C stops it)
#   thomas-daemon pair         open a new pairing code for `thomas pair` (while the daemon runs)
#   thomas-daemon --port N     other options go to `python -m device_agent serve`
# ~/.thomas-daemon.env, when it exists, is sourced first (e.g. export LD_LIBRARY_PATH=/vendor/lib64:$PREFIX/lib).
root="$HOME/thomas"
if [ -f "$HOME/.thomas-daemon.env" ]; then . "$HOME/.thomas-daemon.env"; fi
if [ "${{1:-}}" = pair ]; then
  shift
  exec env PYTHONPATH="$root/agent" python -m device_agent pair --root "$root" "$@"
fi
if command -v termux-wake-lock >/dev/null 2>&1; then termux-wake-lock || true; fi
exec env PYTHONPATH="$root/agent" python -m device_agent serve --root "$root" --port {port} "$@"
WRAPPER
}} > "$wrapper.tmp"
chmod 755 "$wrapper.tmp"
mv "$wrapper.tmp" "$wrapper"
say "installed $wrapper"

# 5. the daemon, in the foreground
say "starting the THOMAS daemon (port {port}); Ctrl-C stops it, \\`thomas-daemon\\` starts it again"
say "on the computer, \\`thomas pair\\` (or \\`thomas setup termux\\`) asks for the pairing code shown below"
# NOTE: THOMAS_DAEMON_ARGS is split into words on purpose (e.g. "--port 0")
# shellcheck disable=SC2086
exec "$wrapper" ${{THOMAS_DAEMON_ARGS:-}} "$@"
"""


# ============================================================================ checks through adb
def _dev(serial: str):
    from .transport.adb import client

    return client().device(serial)


def adb_shell(serial: str, args: list[str], timeout: float = 20) -> str:
    """One command through `adb shell` (the legacy shell: output only, no status)."""
    from .transport.adb import adb_errors

    with adb_errors(f"device {serial}"):
        return _dev(serial).shell(args, timeout=timeout)


def installer_of(listing: str, pkg: str) -> str | None:
    """The installer in `pm list packages -i PKG` output ("package:com.termux  installer=org.fdroid.fdroid")."""
    for line in listing.splitlines():
        m = re.match(r"\s*package:(\S+)\s+installer=(\S+)", line)
        if m and m.group(1) == pkg:
            return None if m.group(2) in ("null", "") else m.group(2)
    return None


def check_termux(serial: str) -> Check:
    """Step 1: Termux is installed (and from where); Termux:API is noted, never required."""
    path = adb_shell(serial, ["pm", "path", TERMUX])
    if "package:" not in path:
        return Check("Termux", "fail", "Termux (com.termux) is not installed on the phone",
                     "install Termux from F-Droid (f-droid.org/packages/com.termux) or its GitHub releases "
                     "(github.com/termux/termux-app/releases), not from Google Play")
    inst = installer_of(adb_shell(serial, ["pm", "list", "packages", "-i", TERMUX]), TERMUX)
    api = "package:" in adb_shell(serial, ["pm", "path", TERMUX_API])
    source = INSTALLERS.get(inst or "", inst or "installer unknown")
    value = f"com.termux installed ({source}); Termux:API {'installed' if api else 'not installed (optional)'}"
    if inst == "com.android.vending":
        return Check("Termux", "warn", value,
                     "this is the Google Play build, which long lagged behind and still differs from the F-Droid/"
                     "GitHub builds; if `pkg` or OpenCL fail, reinstall Termux from F-Droid or GitHub releases")
    return Check("Termux", "ok", value)


def storage_granted(dump: str, appops: str = "") -> bool | None:
    """From `pm dump com.termux` (and `appops get com.termux MANAGE_EXTERNAL_STORAGE`): True when
    Termux may read shared storage, False when the dump says it may not, None when it does not say."""
    if re.search(r"MANAGE_EXTERNAL_STORAGE: allow", appops):
        return True
    m = re.search(r"android\.permission\.READ_EXTERNAL_STORAGE: granted=(true|false)", dump)
    return None if m is None else m.group(1) == "true"


def check_storage(serial: str) -> Check:
    """Step 3: Termux may read /sdcard (termux-setup-storage was run and allowed)."""
    ok = storage_granted(adb_shell(serial, ["pm", "dump", TERMUX], timeout=30),
                         adb_shell(serial, ["appops", "get", TERMUX, "MANAGE_EXTERNAL_STORAGE"]))
    if ok:
        return Check("storage", "ok", "Termux may read shared storage")
    return Check("storage", "warn",
                 "Termux's storage permission is not granted" if ok is False
                 else "cannot tell from here whether Termux may read shared storage",
                 "in Termux run `termux-setup-storage` and allow the permission (or Settings > Apps > Termux > "
                 "Permissions > Files)")


def push_bootstrap(serial: str, shared: str, port: int) -> tuple[Check, str]:
    """Step 4: the payload zip, then the script, into the shared folder; both checked with a sync stat.
    Returns (check, payload hash)."""
    from .transport.adb import adb_errors
    from .transport.base import DeviceError

    with tempfile.TemporaryDirectory(prefix="thomas-setup-") as d:
        zip_path, digest = session.build_payload(Path(d))
        script = Path(d) / SCRIPT
        script.write_text(bootstrap_script(digest, device_agent.__version__, port, shared))
        files = [(zip_path, f"{shared}/{PAYLOAD_ZIP}"), (script, f"{shared}/{SCRIPT}")]
        size = zip_path.stat().st_size
        try:
            with adb_errors(f"pushing to {serial}:{shared}"):
                dev = _dev(serial)
                for local, remote in files:
                    dev.sync.push(local, remote, mode=0o644)
                for local, remote in files:
                    st = dev.sync.stat(remote)
                    if st.size != local.stat().st_size:
                        return Check("push", "fail", f"{remote} has {st.size} bytes on the phone, not "
                                                     f"{local.stat().st_size}",
                                     "push again (check the cable), or pass another --shared-dir"), digest
        except DeviceError as e:
            return Check("push", "fail", str(e), "pass --shared-dir a folder the adb shell can write and "
                                                 "Termux can read (e.g. /sdcard/Documents/thomas)"), digest
    return Check("push", "ok", f"agent {device_agent.__version__} (payload {digest[:12]}, {size / 1024:.0f} KiB) "
                               f"and {SCRIPT} in {shared}"), digest


def check_daemon(serial: str, port: int, digest: str, wait: float, spin: bool = False,
                 script: str = f"{SHARED_DIR}/{SCRIPT}") -> tuple[Check, dict | None]:
    """Step 5: the daemon answers on the phone's `port` with this host's payload (polled for `wait` s;
    `script` is the bootstrap's phone path, for the message)."""
    from .transport.daemon import probe_daemon

    deadline = time.monotonic() + max(0.0, wait)
    welcome = None
    status = err.status(f"waiting for the daemon on {serial}'s port {port} (up to {wait:.0f} s; Ctrl-C stops)") \
        if spin and wait > 0 else None
    if status is not None:
        status.start()
    try:
        while True:
            welcome = probe_daemon(serial, port)
            if welcome is not None and welcome.get("protocol") == PROTOCOL_VERSION:
                break
            if welcome is not None and status is not None:
                status.update(f"a daemon that speaks another protocol answers on port {port}: stop it in Termux "
                              f"(Ctrl-C) and type `sh {shlex.quote(script)}` again; waiting ...")
            if time.monotonic() + POLL_S > deadline:
                break
            time.sleep(POLL_S)
    finally:
        if status is not None:
            status.stop()
    if welcome is None:
        return Check("daemon", "fail", f"no THOMAS daemon answers on {serial}'s port {port}" +
                     (f" after {wait:.0f} s" if wait > 0 else ""),
                     f"in Termux type `sh {shlex.quote(script)}` and leave it running (`thomas-daemon` once "
                     f"it is installed)"), None
    if welcome.get("protocol") != PROTOCOL_VERSION:
        return Check("daemon", "fail", f"the daemon on port {port} speaks protocol {welcome.get('protocol')} (agent "
                                       f"{welcome.get('agent')}), this computer {PROTOCOL_VERSION}",
                     f"in Termux stop it (Ctrl-C) and type `sh {shlex.quote(script)}` again"), welcome
    value = (f"agent {welcome.get('agent')} answers on 127.0.0.1:{port} (python {welcome.get('python')}, "
             f"root {welcome.get('root')})")
    if welcome.get("payload") not in (digest, None):
        # NOTE: same protocol: the daemon installs this computer's agent itself once paired (doctor, step 7)
        value += f"; its agent (payload {str(welcome.get('payload'))[:12]}) is updated through it at step 7"
    return Check("daemon", "ok", value), welcome


def check_paired(serial: str, port: int) -> Check | None:
    """Step 6 when this computer is paired already: ok if the daemon accepts it; None when not paired."""
    from .transport import daemon

    if daemon.load_pairing(serial) is None:
        return None
    try:
        t = daemon.DaemonTransport(serial, port=port)
    except daemon.NotPaired:
        return None                     # the daemon forgot this computer (or it is another daemon): pair again
    except daemon.DeviceError as e:
        return Check("pair", "fail", str(e), "is the daemon still running in Termux? (`thomas-daemon`)")
    t.close()
    return Check("pair", "ok", f"this computer is paired with the daemon on {serial} "
                               f"(as {t.pairing.get('name')}, {t.pairing.get('paired')})")


def do_pair(serial: str, port: int, code: str, name: str) -> Check:
    from .transport import daemon
    from .transport.base import DeviceError

    try:
        rec = daemon.pair(serial, code, name, port)
    except DeviceError as e:
        return Check("pair", "fail", str(e), "check the code the daemon shows in Termux; `thomas-daemon pair` "
                                             "in a second Termux session opens a new one")
    return Check("pair", "ok", f"paired as {rec['name']}; the token is in $THOMAS_HOME/pairing (mode 0600)")


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
    serial = session.pick_serial(dataclasses.replace(session.TARGET, device="adb"), note=console_note)
    walk = Walk(_interactive(yes), as_json)
    walk.facts = {"serial": serial, "shared_dir": shared, "port": port}
    wait_s = wait if wait is not None else (WAIT_S if walk.interactive else 0.0)
    run_cmd = f"sh {shlex.quote(script)}"
    walk.say(f"Setting up [bold]{serial}[/] for THOMAS daemon mode (docs/ANDROID.md). The phone needs no root; "
             f"this computer checks each step through adb.")

    walk.manual(1, "install Termux", [
        "Install Termux from F-Droid (https://f-droid.org/packages/com.termux/) or from its GitHub releases",
        "(https://github.com/termux/termux-app/releases) -- not the Google Play build. Open it once.",
        "Termux:API is optional (THOMAS does not need it); if you add it, take it from the same source."],
        "Termux is installed", lambda: check_termux(serial))

    from .transport.daemon import probe_daemon

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

    walk.step(6, "pair this computer with the daemon", [
        "Type the 6-digit pairing code the daemon shows in Termux. No code on screen (or it expired)?",
        "Open a second Termux session (swipe from the left edge > New session) and type `thomas-daemon pair`."])
    host_name = name or socket.gethostname()

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

    walk.step(7, "check everything: thomas doctor through the daemon", [])
    doctor = _doctor(serial, walk)
    walk.dump(ok=doctor["ok"], doctor=doctor)
    if not doctor["ok"]:
        failed = ", ".join(c["check"] for c in doctor["checks"] if c["state"] == "fail")
        raise SetupFailed(f"doctor: {failed} failed (see the table); fix it in Termux, then `thomas doctor`")
    walk.say(f"\n[green]Done.[/] {serial} is ready for daemon mode: `thomas push-model`, `thomas finetune` ... "
             f"now run through the daemon. After a reboot, type `thomas-daemon` in Termux.")


def _doctor(serial: str, walk: Walk) -> dict:
    from .device_cmd import detect_modes, doctor_table, run_doctor

    modes = detect_modes(serial)
    t = session.open_transport(dataclasses.replace(session.TARGET, serial=serial, device="adb", mode="daemon"),
                               note=console_note)
    try:
        res = run_doctor(Session(t, note=console_note), modes=modes)
    finally:
        t.close()
    walk.con.print(doctor_table(res, t))
    failed = [c["check"] for c in res["checks"] if c["state"] == "fail"]
    walk.checks.append(Check("doctor", "ok" if res["ok"] else "fail",
                             "every essential check passed" if res["ok"] else f"failed: {', '.join(failed)}"))
    return res
