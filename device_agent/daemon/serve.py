"""`python -m device_agent serve`: the THOMAS daemon for unrooted phones (issue 6). Standard library only.

    python -m device_agent serve [--port 7878] [--root ~/thomas] [--pair]   # inside Termux
    python -m device_agent pair [--root ~/thomas]        # a fresh pairing code for the running daemon
    python -m device_agent pair --list | --revoke HOST   # the paired computers; unpair one

The daemon itself is the package device_agent/daemon/ (its docstring maps it); this module is its two
entry points: `serve` (listen until stopped) and `pair` (codes and paired computers, from Termux).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from .. import __version__
from ..protocol import DAEMON_DIR, DAEMON_PORT, PAIR_TTL_S
from .base import agent_pythonpath, log, our_process, read_json, write_json
from .pairing import open_pairing
from .state import Daemon
from .wire import Server


def serve_main(argv: list[str], payload: str | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device_agent serve")
    ap.add_argument("--port", type=int, default=DAEMON_PORT, help=f"127.0.0.1 port (default {DAEMON_PORT}; 0: any)")
    ap.add_argument("--root", default="~/thomas", help="the device root (default ~/thomas)")
    ap.add_argument("--pair", action="store_true", help="open a pairing code even when a host is paired")
    a = ap.parse_args(argv)
    root = Path(a.root).expanduser().resolve()
    (root / DAEMON_DIR).mkdir(parents=True, exist_ok=True)
    os.chmod(root / DAEMON_DIR, 0o700)
    info = read_json(root / DAEMON_DIR / "daemon.json") or {}
    if info.get("pid") != os.getpid() and our_process(info.get("pid"), b"device_agent", b"serve"):
        log(f"another daemon (pid {info['pid']}, port {info.get('port')}) already serves {root}; stop it first")
        return 1
    d = Daemon(root, payload)

    def stop(signum, frame):
        raise KeyboardInterrupt

    # NOTE: before anything listens, so a SIGTERM right after "listening on" still cleans up
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server = Server(a.port, d)
    except OSError as e:
        log(f"cannot listen on 127.0.0.1:{a.port} ({e.strerror}); is a daemon already running? try --port")
        return 1
    port = server.server_address[1]
    try:
        write_json(root / DAEMON_DIR / "daemon.json", {"pid": os.getpid(), "port": port, "started": d.started,
                                                       "root": str(root)})
        log(f"thomas daemon {__version__} listening on 127.0.0.1:{port} (root {root})")
        if a.pair or not d.hosts():
            code = open_pairing(root)
            log("=" * 60)
            log(f"pairing code: {code}   (on the laptop: thomas pair; valid {PAIR_TTL_S // 60} min)")
            log("=" * 60)
        server.serve_forever()
    except KeyboardInterrupt:
        log("stopping: cancelling running jobs")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.server_close()
        d.jobs.stop_all()
    if server.restarting:
        # NOTE: cwd is on sys.path before PYTHONPATH with -m; the root holds agent/, not device_agent/
        os.chdir(root)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)      # an ignored signal would survive the exec
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        log(f"restarting from {root / 'agent'}")
        os.execve(sys.executable, [sys.executable, "-m", "device_agent", "serve", "--port", str(port),
                                   "--root", str(root)], dict(os.environ, PYTHONPATH=agent_pythonpath(root)))
    (root / DAEMON_DIR / "daemon.json").unlink(missing_ok=True)
    log("stopped")
    return 0


def pair_main(argv: list[str]) -> int:
    """A new pairing code for the running daemon; --list / --revoke HOST manage the paired computers
    (hosts.json is read at every authentication, so a revoked host is refused from its next connection)."""
    ap = argparse.ArgumentParser(prog="python -m device_agent pair")
    ap.add_argument("--root", default="~/thomas", help="the device root of the daemon (default ~/thomas)")
    ap.add_argument("--list", action="store_true", help="list the paired computers")
    ap.add_argument("--revoke", metavar="HOST", help="unpair a computer: its id or name (see --list)")
    a = ap.parse_args(argv)
    root = Path(a.root).expanduser().resolve()
    (root / DAEMON_DIR).mkdir(parents=True, exist_ok=True)
    path = root / DAEMON_DIR / "hosts.json"
    doc = read_json(path)
    hosts = doc["hosts"] if isinstance(doc, dict) and isinstance(doc.get("hosts"), list) else []
    if a.list:
        for h in hosts:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(h.get("paired_at", 0)))
            print(f"{h.get('id')}  {h.get('name')}  paired {when}")
        if not hosts:
            print("no computer is paired with this daemon")
        return 0
    if a.revoke is not None:
        keep = [h for h in hosts if a.revoke not in (h.get("id"), h.get("name"))]
        if len(keep) == len(hosts):
            print(f"no paired computer has the id or name {a.revoke!r} (see --list)", file=sys.stderr)
            return 1
        write_json(path, {"hosts": keep})
        print(f"revoked {len(hosts) - len(keep)} computer(s) named or numbered {a.revoke!r}; it must pair again")
        return 0
    code = open_pairing(root)
    print(f"pairing code: {code}   (on the laptop: thomas pair; valid {PAIR_TTL_S // 60} min, one use)")
    info = read_json(root / DAEMON_DIR / "daemon.json") or {}
    if not our_process(info.get("pid"), b"device_agent", b"serve"):
        print(f"no daemon runs for {root} yet: start it with `python -m device_agent serve`; the code waits for it")
    return 0
