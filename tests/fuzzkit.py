"""Run one `thomas` command on a hostile input in a forked child and judge how it failed.

    v = run_cli(["--device", "local", "--device-root", root, "inspect", str(bad)], env={...})
    assert v.clean, v.why          # exit 1 or 2, one line on stderr, no traceback, < 30 s, < 1 GiB

The child is a fork of the test process (the CLI is already imported, so one case costs
milliseconds, not an interpreter start): its stdout/stderr are redirected at the file-descriptor
level (the agent subprocesses a command starts write there too), its address space is capped a
little above the budget so a runaway dies instead of swapping the machine, and it is killed at the
time limit. Peak memory is the child's `ru_maxrss` from wait4 (which includes the processes it
waited for) above the parent's resident size at the fork.
"""
from __future__ import annotations

import os
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass

TIME_LIMIT_S = 30.0
RSS_LIMIT = 1 << 30            # 1 GiB above the forking process
AS_SLACK = 3 << 30             # address space the child may add before allocations fail


@dataclass
class Verdict:
    argv: list
    code: int | None            # exit status; None = killed (time limit) or died of a signal
    stdout: str
    stderr: str
    seconds: float
    extra_rss: int              # bytes above the parent's resident size
    why: str = ""

    @property
    def clean(self) -> bool:
        return not self.why


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(argv: list, env: dict, out_fd: int, err_fd: int) -> None:
    os.setpgid(0, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    # pytest's capture replaced sys.stdout/sys.stderr with its own objects: write to the fds
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", closefd=False)
    os.environ.update(env)
    limit = _vm_size() + AS_SLACK
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    code = 0
    try:
        from thomas_cli.main import main

        sys.argv = ["thomas", *argv]
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001  (the verdict reports it as a traceback)
        import traceback

        traceback.print_exc()
        code = 99
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def run_cli(argv: list, env: dict | None = None, timeout: float = TIME_LIMIT_S,
            expect=(1, 2)) -> Verdict:
    """Run `thomas ARGV` in a forked child; the verdict's `why` says what was not clean."""
    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as errf:
        sys.stdout.flush()
        sys.stderr.flush()
        base = _rss_now()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(argv, env or {}, out.fileno(), errf.fileno())
        killed = False
        while True:
            wpid, status, ru = os.wait4(pid, os.WNOHANG)
            if wpid:
                break
            if time.monotonic() - t0 > timeout:
                killed = True
                os.killpg(pid, signal.SIGKILL)
                _, status, ru = os.wait4(pid, 0)
                break
            time.sleep(0.005)
        secs = time.monotonic() - t0
        out.seek(0)
        errf.seek(0)
        so = out.read().decode(errors="replace")
        se = errf.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status) if not killed else None
    if code is not None and code < 0:
        code = None
    extra = max(0, ru.ru_maxrss * 1024 - base)
    v = Verdict(argv, code, so, se, secs, extra)
    # NOTE: a usage error (exit 2) is its error line plus "hint: thomas CMD --help" (thomas_cli/main.py)
    lines = [ln for ln in se.splitlines() if ln.strip() and not (code == 2 and ln.startswith("hint: "))]
    if killed:
        v.why = f"hung: killed after {timeout:.0f} s"
    elif code is None:
        v.why = f"died of a signal (status {status})"
    elif "Traceback" in se or "Traceback" in so:
        v.why = "traceback"
    elif code not in expect:
        v.why = f"exit {code}, expected one of {expect}"
    elif code != 0 and len(lines) != 1:
        v.why = f"{len(lines)} lines on stderr, expected 1"
    elif extra > RSS_LIMIT:
        v.why = f"peak memory {extra / 2**20:.0f} MiB above the parent"
    return v


def tree(root) -> dict:
    """{relative path: size} of every file under root (for 'nothing half-written left behind')."""
    from pathlib import Path

    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}
