"""Daemon mode on an unrooted phone: the Termux bootstrap script and the checks of `thomas setup termux`
(commands/setup.py walks through them; docs/ANDROID.md).

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
import tempfile
import time
from pathlib import Path

import device_agent
from device_agent.errors import ThomasError
from device_agent.protocol import DAEMON_PORT, PROTOCOL_VERSION

from .app import err
from .device import build_payload

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
# The script's text (str.format fields: payload_hash, short, agent, port, typed, shared, PAYLOAD_ZIP, SCRIPT)
_BOOTSTRAP = """#!/bin/sh
# THOMAS bootstrap for Termux, written by `thomas setup termux` (agent {agent}, payload {short}).
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
    return _BOOTSTRAP.format(payload_hash=payload_hash, short=payload_hash[:12], agent=agent, port=port, typed=typed,
                             shared=shared, PAYLOAD_ZIP=PAYLOAD_ZIP, SCRIPT=SCRIPT)


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
        zip_path, digest = build_payload(Path(d))
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
