"""`python -m device_agent serve`: the THOMAS daemon for unrooted phones (issue 6). Standard library only.

    python -m device_agent serve [--port 7878] [--root ~/thomas] [--pair]   # inside Termux
    python -m device_agent pair [--root ~/thomas]        # a fresh pairing code for the running daemon
    python -m device_agent pair --list | --revoke HOST   # the paired computers; unpair one

It listens on 127.0.0.1 only (the laptop comes in through `adb forward`) and speaks the daemon wire
of protocol.py, which is the contract: frames, welcome, auth/pair, ops, job streams. One thread per
connection; nothing but auth or pair runs before a host has proved it holds a pairing token.
Human lines go to stderr. State lives under <root>/.daemon/, which the wire never reaches:

    hosts.json      {"hosts": [{"id": 8 hex, "name", "token": 64 hex, "paired_at": unix}]}      0600
    pairing.json    {"sha256": of the open code, "expires": unix, "attempts": tries left}       0600
    partial/KEY     an upload in progress, KEY = sha256("path\\0size\\0sha256") (so a drop resumes)
    jobs/ID.json    a job record (the `jobs` fields + "pid");  jobs/ID.out: its output lines
    daemon.json     {"pid", "port", "started", "root"} of the running daemon
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import hmac
import json
import os
import platform
import select
import secrets
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

from . import __version__
from .fsutil import atomic_write, sha256_file
from .protocol import (CHUNK, DAEMON_DIR, DAEMON_PORT, PAIR_ATTEMPTS, PAIR_TTL_S, PROTOCOL_VERSION,
                       QUEUED_COMMANDS, QUEUED_EVERY_S, WireError, auth_mac, encode_frame, event_of, path_problem,
                       read_frame)

KEEP_JOBS = 50            # finished jobs kept (records + output); older ones are deleted
AUTH_DELAY_S = 0.5        # a refused auth or pair waits this long before the answer (against guessing)
FIRST_FRAME_S = 30.0      # a peer that connects and says nothing is dropped after this
KILL_AFTER_S = 5.0        # cancel: SIGTERM, then SIGKILL after this
MAX_LINE = 1 << 16        # characters of one output line (longer ones are cut: a frame header has a cap)
FINAL = ("done", "cancelled", "lost")


def log(msg: str) -> None:
    try:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):        # stderr gone (the Termux session closed): keep serving
        pass


class Refused(Exception):
    """Answered {"ok": false, "code", "message", **extra}; the connection goes on."""

    def __init__(self, code: str, message: str, **extra):
        super().__init__(message)
        self.code, self.extra = code, extra


# ============================================================================ small file helpers
def write_json(path: Path, obj) -> None:
    """Atomically and 0600 from the start (fsutil.atomic_write)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj).encode()))


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_event(line: str) -> bool:
    """A line the host counts as an event (the same test: protocol.event_of)."""
    return event_of(line) is not None


def agent_pythonpath(root: Path) -> str:
    """PYTHONPATH with <root>/agent first (once)."""
    agent, rest = str(root / "agent"), os.environ.get("PYTHONPATH", "")
    parts = [p for p in rest.split(os.pathsep) if p and p != agent]
    return os.pathsep.join([agent, *parts])


def our_process(pid, *words: bytes) -> bool:
    """pid is alive and its command line holds every word (Linux /proc; False where unreadable)."""
    try:
        cmd = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError, TypeError):
        return False
    return bool(cmd) and all(w in cmd for w in words)


def open_pairing(root: Path) -> str:
    """A fresh one-use 6-digit code (replaces any open one); only its sha256 is stored."""
    code = f"{secrets.randbelow(10 ** 6):06d}"
    write_json(root / DAEMON_DIR / "pairing.json", {"sha256": hashlib.sha256(code.encode()).hexdigest(),
                                                    "expires": time.time() + PAIR_TTL_S, "attempts": PAIR_ATTEMPTS})
    return code


# ============================================================================ jobs
class Job:
    """One agent call. `rec` is the wire record (job, args, state, rc, created, started, ended, lines,
    events, host) + pid; `lines`/`event_seqs` hold the output while the job is live (None after: the
    .out file has it all)."""

    def __init__(self, rec: dict):
        self.rec = rec
        self.lines: list[str] | None = None
        self.event_seqs: list[int] | None = None     # seq of each event line
        self.proc: subprocess.Popen | None = None
        self.cancelled = False

    @property
    def id(self) -> str:
        return self.rec["job"]

    @property
    def state(self) -> str:
        return self.rec["state"]


class Jobs:
    """Every job of this root. One Condition guards all of it and wakes every stream on each new line.
    Commands in QUEUED_COMMANDS run one at a time in FIFO order (`lane` is the one running); others at once."""

    def __init__(self, root: Path):
        self.root, self.dir = root, root / DAEMON_DIR / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cond = threading.Condition()
        self.jobs: dict[str, Job] = {}
        self.queue: list[Job] = []
        self.lane: Job | None = None
        self._n = 0
        self._recover()

    def _recover(self) -> None:
        """Load the records; a job a previous daemon left running or queued is lost (its agent, if it
        still lives, gets SIGTERM)."""
        recs = [r for f in self.dir.glob("*.json") if isinstance(r := read_json(f), dict) and "job" in r]
        for rec in sorted(recs, key=lambda r: r.get("created") or 0):
            job = Job(rec)
            self.jobs[job.id] = job
            if job.state not in FINAL:
                if rec.get("pid") and our_process(rec["pid"], b"device_agent"):
                    self._signal(rec["pid"], signal.SIGTERM)
                lines = self.read_out(job)
                rec.update(state="lost", rc=None, ended=time.time(), lines=len(lines),
                           events=sum(map(is_event, lines)))
                self._save(job)
                log(f"job {job.id} ({' '.join(rec['args'])}) was left by a previous daemon: lost")
        self._prune()

    # ---------------------------------------------------------------- records
    def _save(self, job: Job) -> None:
        write_json(self.dir / f"{job.id}.json", job.rec)

    def read_out(self, job: Job) -> list[str]:
        try:
            lines = (self.dir / f"{job.id}.out").read_text(encoding="utf-8", errors="replace").split("\n")
        except OSError:
            return []
        return lines[:-1] if lines and lines[-1] == "" else lines

    def wire(self, job: Job) -> dict:
        """The `jobs` record (live counts while it runs). Call under cond."""
        rec = {k: v for k, v in job.rec.items() if k != "pid"}
        if job.lines is not None:
            rec.update(lines=len(job.lines), events=len(job.event_seqs))
        return rec

    def position(self, job: Job) -> int:
        """1 = next to run; 0 when not queued."""
        return self.queue.index(job) + 1 if job in self.queue else 0

    def busy(self) -> bool:
        with self.cond:
            return any(j.state in ("running", "queued") for j in self.jobs.values())

    def _prune(self) -> None:
        done = [j for j in self.jobs.values() if j.state in FINAL]
        for j in done[:max(0, len(done) - KEEP_JOBS)]:
            del self.jobs[j.id]
            for ext in (".json", ".out"):
                (self.dir / f"{j.id}{ext}").unlink(missing_ok=True)

    # ---------------------------------------------------------------- life of a job
    def start(self, args: list[str], host: str) -> Job:
        with self.cond:
            while True:
                self._n += 1
                jid = f"{time.strftime('%Y%m%d-%H%M%S')}-{self._n}"
                if jid not in self.jobs and not (self.dir / f"{jid}.json").exists():
                    break
            job = Job({"job": jid, "args": args, "state": "queued", "rc": None, "created": time.time(),
                       "started": None, "ended": None, "lines": 0, "events": 0, "host": host, "pid": None})
            self.jobs[jid] = job
            self._save(job)
            if args[0] in QUEUED_COMMANDS:
                self.queue.append(job)
                self._pump()
                if job.state == "queued":
                    log(f"job {jid} queued at {self.position(job)}: {' '.join(args)}")
            else:
                self._spawn(job)
            return job

    def _pump(self) -> None:
        if self.lane is None and self.queue:
            self.lane = self.queue.pop(0)
            self._spawn(self.lane)

    def _spawn(self, job: Job) -> None:
        """Under cond: run `python -u -m device_agent ARGS` in <root> with <root>/agent first on the path."""
        job.lines, job.event_seqs = [], []
        job.rec.update(state="running", started=time.time())
        env = dict(os.environ, PYTHONPATH=agent_pythonpath(self.root))
        try:
            job.proc = subprocess.Popen([sys.executable, "-u", "-m", "device_agent", *job.rec["args"]],
                                        cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            self._line(job, f"thomas daemon: cannot start {sys.executable} ({e.strerror})")
            self._finish(job, 127)
            return
        job.rec["pid"] = job.proc.pid
        self._save(job)
        threading.Thread(target=self._read, args=(job,), daemon=True, name=f"job-{job.id}").start()
        log(f"job {job.id} started (pid {job.proc.pid}): {' '.join(job.rec['args'])}")

    def _line(self, job: Job, line: str) -> None:
        """Under cond: one more output line, every stream woken."""
        job.lines.append(line)
        if is_event(line):
            job.event_seqs.append(len(job.lines) - 1)
        self.cond.notify_all()

    def _read(self, job: Job) -> None:
        """The job's reader thread: each line of the agent's merged stdout/stderr into jobs/ID.out (flushed,
        so attach works after the end) and memory; then its exit status."""
        out = None
        try:
            out = open(self.dir / f"{job.id}.out", "a", encoding="utf-8")
        except OSError as e:
            log(f"job {job.id}: cannot open its output file ({e.strerror}); it is kept in memory only")
        for raw in job.proc.stdout:
            line = raw.decode("utf-8", "replace")
            line = (line[:-1] if line.endswith("\n") else line).rstrip("\r")
            if len(line) > MAX_LINE:
                line = line[:MAX_LINE] + " [cut by the daemon]"
            if out is not None:
                try:
                    out.write(line + "\n")
                    out.flush()
                except OSError as e:
                    log(f"job {job.id}: writing its output file failed ({e.strerror}); memory only from here")
                    out = None
            with self.cond:
                self._line(job, line)
        if out is not None:
            try:
                out.close()
            except OSError:
                pass
        job.proc.stdout.close()
        rc = job.proc.wait()
        with self.cond:
            self._finish(job, rc)

    def _finish(self, job: Job, rc: int | None) -> None:
        """Under cond: the job ended; record it, free the lane, start the next one."""
        job.rec.update(state="cancelled" if job.cancelled else "done", rc=rc, ended=time.time(),
                       lines=len(job.lines), events=len(job.event_seqs))
        job.lines = job.event_seqs = None
        self._save(job)
        log(f"job {job.id} {job.state} (rc {rc}, {job.rec['lines']} lines, "
            f"{job.rec['ended'] - job.rec['started']:.1f} s)")
        if self.lane is job:
            self.lane = None
            self._pump()
        self._prune()
        self.cond.notify_all()

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.killpg(pid, sig)              # the agent leads its own session (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass

    def cancel(self, job: Job, wait: float = 1.0) -> str:
        """Queued: dropped. Running: SIGTERM to its group, SIGKILL after KILL_AFTER_S (in the background);
        waits up to `wait` s for the end. Returns the state then."""
        with self.cond:
            if job in self.queue:
                self.queue.remove(job)
                job.cancelled = True
                job.rec.update(state="cancelled", ended=time.time())
                self._save(job)
                log(f"job {job.id} cancelled while queued")
                self.cond.notify_all()
                return job.state
            if job.state != "running" or job.proc is None:
                return job.state
            job.cancelled = True
            pid = job.proc.pid
        log(f"job {job.id}: cancel (SIGTERM to pid {pid}, SIGKILL in {KILL_AFTER_S:.0f} s if it lingers)")
        self._signal(pid, signal.SIGTERM)
        kill = threading.Timer(KILL_AFTER_S, lambda: job.state in FINAL or self._signal(pid, signal.SIGKILL))
        kill.daemon = True
        kill.start()
        with self.cond:
            self.cond.wait_for(lambda: job.state in FINAL, wait)
            return job.state

    def stop_all(self) -> None:
        """The daemon is stopping: drop the queue, cancel what runs, wait (SIGKILL comes after 5 s)."""
        with self.cond:
            queued, running = list(self.queue), [j for j in self.jobs.values() if j.state == "running"]
        for j in queued:
            self.cancel(j)
        for j in running:
            self.cancel(j, wait=0)
        with self.cond:
            self.cond.wait_for(lambda: all(j.state in FINAL for j in running), KILL_AFTER_S + 2)


# ============================================================================ the daemon's state
class Daemon:
    """What every connection shares: root, hosts, pairing, jobs, the payload hash of the code running."""

    def __init__(self, root: Path, payload: str | None):
        self.root, self.dir, self.payload = root, root / DAEMON_DIR, payload
        self.partial = self.dir / "partial"
        self.partial.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.lock = threading.Lock()         # hosts.json, pairing.json
        self.put_lock = threading.Lock()     # partial/ (one chunk at a time, whoever sends it)
        self.jobs = Jobs(root)
        for p in self.partial.iterdir():     # uploads abandoned a week ago
            if p.is_file() and p.stat().st_mtime < time.time() - 7 * 86400:
                p.unlink(missing_ok=True)

    # ---------------------------------------------------------------- hosts and pairing
    def hosts(self) -> list[dict]:
        d = read_json(self.dir / "hosts.json")
        return d["hosts"] if isinstance(d, dict) and isinstance(d.get("hosts"), list) else []

    def open_code(self) -> dict | None:
        p = read_json(self.dir / "pairing.json")
        if isinstance(p, dict) and p.get("attempts", 0) > 0 and p.get("expires", 0) > time.time():
            return p
        return None

    def pair(self, code, name) -> dict:
        """{"id", "name", "token", "paired_at"} for the right open code; Refused("auth") otherwise."""
        with self.lock:
            p = self.open_code()
            if p is None:
                raise Refused("auth", "no pairing code is open: run `thomas-daemon pair` in Termux "
                                      "(or `python -m device_agent pair --root ROOT`)")
            given = hashlib.sha256(str(code).encode()).hexdigest()
            if not hmac.compare_digest(given, str(p.get("sha256"))):
                p["attempts"] -= 1
                if p["attempts"] > 0:
                    write_json(self.dir / "pairing.json", p)
                else:
                    (self.dir / "pairing.json").unlink(missing_ok=True)
                closed = "" if p["attempts"] else "; the code is closed, open a new one in Termux"
                raise Refused("auth", f"wrong pairing code ({p['attempts']} tries left{closed})")
            (self.dir / "pairing.json").unlink(missing_ok=True)
            host = {"id": secrets.token_hex(4), "name": (name if isinstance(name, str) else "host")[:64],
                    "token": secrets.token_hex(32), "paired_at": time.time()}
            write_json(self.dir / "hosts.json", {"hosts": self.hosts() + [host]})
            return host

    def check_auth(self, host_id, mac, nonce: str) -> dict:
        host = next((h for h in self.hosts() if h.get("id") == host_id), None)
        token = host["token"] if host else "00" * 32
        want = auth_mac(token, nonce, str(host_id)).encode()
        if not hmac.compare_digest(want, str(mac).encode()) or host is None:
            raise Refused("auth", f"host {host_id!r} is not paired with this daemon or its token is wrong: pair again")
        return host

    # ---------------------------------------------------------------- paths
    def path(self, rel) -> Path:
        """root/rel for a wire path: relative, clean (protocol.path_problem), not DAEMON_DIR, and still under
        root once symlinks are followed. Refused("bad_path") otherwise."""
        problem = path_problem(rel, "path")
        if problem:
            raise Refused("bad_path", problem)
        p = self.root / rel
        if rel.split("/")[0] == DAEMON_DIR or not self.inside(p):
            raise Refused("bad_path", f"path {rel!r} leaves the daemon root (or reaches its own {DAEMON_DIR})")
        return p

    def inside(self, p: Path) -> bool:
        try:
            inner = p.resolve().relative_to(self.root).parts
        except (ValueError, OSError, RuntimeError):      # out of root, or a symlink loop
            return False
        return inner[:1] != (DAEMON_DIR,)

    def entry(self, p: Path) -> dict | None:
        try:
            st = p.stat() if self.inside(p) else p.lstat()   # never describe what a symlink out points at
        except OSError:
            return None
        return {"name": p.name, "is_dir": stat.S_ISDIR(st.st_mode), "size": st.st_size, "mtime": st.st_mtime}


# ============================================================================ a connection
def _int(h: dict, key: str, lo: int = 0) -> int:
    v = h.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise Refused("bad_request", f"'{key}' must be an integer >= {lo}, got {v!r}")
    return v


def _sha(h: dict, key: str) -> str:
    v = h.get(key)
    if not (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
        raise Refused("bad_request", f"'{key}' must be a lowercase hex sha256, got {v!r}")
    return v


class Handler(socketserver.StreamRequestHandler):
    """One connection: welcome, auth or pair, then one request answered at a time (ops are op_NAME).
    An op returns its answer's fields (and bytes, for get); start/attach then stream via self.then."""

    OPS = ("status", "stat", "list", "remove", "move", "put_begin", "put_chunk", "get", "hash", "install",
           "restart", "start", "attach", "jobs", "cancel")

    def handle(self) -> None:
        self.d: Daemon = self.server.d
        self.who = "a peer"
        self.then = None
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.greet():
                while True:
                    self.serve_one(*read_frame(self.rfile))
        except WireError as e:
            if str(e) != "the connection closed":
                log(f"{self.who}: {e}; hung up")
        except (ConnectionError, TimeoutError) as e:
            log(f"{self.who}: connection lost ({type(e).__name__})")

    def send(self, head: dict, data: bytes = b"") -> None:
        self.wfile.write(encode_frame(head, data))

    def greet(self) -> bool:
        """Welcome, then the first request must be a good auth or pair; else refuse, wait, hang up."""
        nonce = secrets.token_hex(16)
        self.send({"op": "welcome", "protocol": PROTOCOL_VERSION, "agent": __version__, "payload": self.d.payload,
                   "python": platform.python_version(), "root": str(self.d.root), "nonce": nonce,
                   "pairing": self.d.open_code() is not None})
        self.request.settimeout(FIRST_FRAME_S)
        h, _ = read_frame(self.rfile)
        self.request.settimeout(None)
        op, rid = h.get("op"), h.get("id")
        try:
            if op == "auth":
                self.host = self.d.check_auth(h.get("host"), h.get("mac"), nonce)
                self.send({"id": rid, "ok": True})
            elif op == "pair":
                self.host = self.d.pair(h.get("code"), h.get("name"))
                log(f"paired a new host: {self.host['name']} ({self.host['id']})")
                self.send({"id": rid, "ok": True, "host": self.host["id"], "token": self.host["token"]})
            else:
                raise Refused("auth", f"authenticate first (auth or pair), not {op!r}")
        except Refused as e:
            log(f"refused a connection: {e}")
            time.sleep(AUTH_DELAY_S)
            self.send({"id": rid, "ok": False, "code": e.code, "message": str(e)})
            return False
        self.who = f"host {self.host['name']} ({self.host['id']})"
        return True

    def serve_one(self, h: dict, data: bytes) -> None:
        op, rid = h.get("op"), h.get("id")
        try:
            if op not in self.OPS:
                raise Refused("bad_request", f"unknown op {op!r}")
            res = getattr(self, f"op_{op}")(h, data)
            fields, blob = res if isinstance(res, tuple) else (res, b"")
            answer = {"id": rid, "ok": True, **fields}
        except Refused as e:
            answer, blob = {"id": rid, "ok": False, "code": e.code, "message": str(e), **e.extra}, b""
        except ConnectionError:
            raise
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            msg = f"{op}: {e.strerror or e}" + (f" ({Path(e.filename).name})" if e.filename else "")
            if full:
                msg += f"; free some space under {self.d.root} (what was received is kept)"
            answer, blob = {"id": rid, "ok": False, "code": "disk_full" if full else "io", "message": msg}, b""
        self.send(answer, blob)
        then, self.then = self.then, None
        if then is not None:
            then()

    # ---------------------------------------------------------------- files
    def op_status(self, h, data) -> dict:
        jobs = self.d.jobs
        with jobs.cond:
            running = jobs.lane or next((j for j in jobs.jobs.values() if j.state == "running"), None)
            ans = {"running": running.id if running else None, "queue": [j.id for j in jobs.queue],
                   "jobs": len(jobs.jobs)}
        try:
            free = shutil.disk_usage(self.d.root).free
        except OSError:
            free = None
        return dict(ans, uptime=round(time.time() - self.d.started, 1), free=free, pid=os.getpid())

    def op_stat(self, h, data) -> dict:
        return {"entry": self.d.entry(self.d.path(h.get("path")))}

    def op_list(self, h, data) -> dict:
        p = self.d.path(h.get("path"))
        if not p.is_dir():
            return {"entries": []}
        names = sorted(n for n in os.listdir(p) if not (n == DAEMON_DIR and p.resolve() == self.d.root))
        return {"entries": [e for n in names if (e := self.d.entry(p / n)) is not None]}

    def op_remove(self, h, data) -> dict:
        p = self.d.path(h.get("path"))
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        return {}

    def op_move(self, h, data) -> dict:
        src, dst = self.d.path(h.get("src")), self.d.path(h.get("dst"))
        if not src.exists() and not src.is_symlink():
            raise Refused("not_found", f"move: {h['src']} does not exist")
        if dst == src or dst in src.parents:            # replacing dst would delete src first
            raise Refused("bad_request", f"move: {h['dst']} is {h['src']} or holds it")
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return {}

    def _upload(self, h) -> tuple[Path, int, str, Path]:
        """(destination, size, sha256, partial file) of a put_begin/put_chunk."""
        dest, size, sha = self.d.path(h.get("path")), _int(h, "size"), _sha(h, "sha256")
        key = hashlib.sha256(f"{h['path']}\0{size}\0{sha}".encode()).hexdigest()
        return dest, size, sha, self.d.partial / key

    @staticmethod
    def _have(part: Path) -> int:
        try:
            return part.stat().st_size
        except FileNotFoundError:
            return 0

    def op_put_begin(self, h, data) -> dict:
        """{"offset": bytes already here}. When that is the whole size, a put_chunk with n = 0 publishes."""
        dest, size, sha, part = self._upload(h)
        with self.d.put_lock:
            have = self._have(part)
            if have > size:
                part.unlink()
                have = 0
            return {"offset": have}

    def op_put_chunk(self, h, data) -> dict:
        dest, size, sha, part = self._upload(h)
        offset, n = _int(h, "offset"), len(data)
        if n > CHUNK:
            raise Refused("bad_request", f"a chunk is at most {CHUNK} bytes, got {n}")
        with self.d.put_lock:
            have = self._have(part)
            if offset != have:
                raise Refused("offset", f"{h['path']}: the daemon has {have} bytes, not {offset}; resend from there",
                              offset=have)
            if have + n > size:
                raise Refused("bad_request", f"{h['path']}: the chunk runs past the declared size {size}")
            if hashlib.sha256(data).hexdigest() != _sha(h, "chunk_sha256"):
                raise Refused("bad_chunk", f"{h['path']}: the chunk at byte {offset} arrived corrupted (sha256); "
                                           f"send it again")
            try:
                with open(part, "ab") as f:
                    f.write(data)
            except OSError:
                try:
                    os.truncate(part, have)            # keep exactly the good bytes
                except OSError:
                    pass
                raise
            if have + n < size:
                return {"offset": have + n}
            got = sha256_file(part)
            if got != sha:
                part.unlink()
                raise Refused("bad_file", f"{h['path']}: the file arrived with sha256 {got[:12]}..., not "
                                          f"{sha[:12]}...; dropped, send it again")
            fd = os.open(part, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, dest)
            return {"offset": size, "done": True}

    def op_get(self, h, data) -> tuple[dict, bytes]:
        p, offset, most = self.d.path(h.get("path")), _int(h, "offset"), _int(h, "max", 1)
        try:
            with open(p, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise Refused("not_found", f"get: {h['path']} is not a file")
                f.seek(offset)
                blob = f.read(min(most, CHUNK))
        except (FileNotFoundError, IsADirectoryError):
            raise Refused("not_found", f"get: {h['path']} is not a file") from None
        return {"size": st.st_size, "mtime": st.st_mtime, "chunk_sha256": hashlib.sha256(blob).hexdigest(),
                "n": len(blob)}, blob

    def op_hash(self, h, data) -> dict:
        p = self.d.path(h.get("path"))
        if not p.is_file():
            raise Refused("not_found", f"hash: {h['path']} is not a file")
        return {"sha256": sha256_file(p), "size": p.stat().st_size}

    # ---------------------------------------------------------------- the agent itself
    def op_install(self, h, data) -> dict:
        """Unzip a pushed agent payload (device_agent/, kernels/, configs/, PAYLOAD) into <root>/agent whole."""
        zpath = self.d.path(h.get("path"))
        if self.d.jobs.busy():
            raise Refused("busy", "a job is running or queued; install the agent when the daemon is idle")
        try:
            with zipfile.ZipFile(zpath) as z:
                names = z.namelist()
                bad = [n for n in names if n.startswith("/") or "\\" in n or ".." in n.split("/") or ":" in n]
                if bad or "PAYLOAD" not in names or "device_agent/__main__.py" not in names:
                    raise Refused("bad_zip", f"install: {h['path']} is not an agent payload"
                                             + (f" (unsafe member {bad[0]!r})" if bad else ""))
                new_hash = json.loads(z.read("PAYLOAD")).get("hash")
                new = self.d.root / "agent.new"
                shutil.rmtree(new, ignore_errors=True)
                z.extractall(new)
        except (zipfile.BadZipFile, ValueError, AttributeError) as e:
            raise Refused("bad_zip", f"install: {h['path']} is not an agent payload ({e})") from None
        agent, old = self.d.root / "agent", self.d.root / "agent.old"
        shutil.rmtree(old, ignore_errors=True)
        if agent.exists():
            os.replace(agent, old)
        os.replace(new, agent)
        shutil.rmtree(old, ignore_errors=True)
        log(f"{self.who} installed agent payload {str(new_hash)[:12]}")
        return {"restart": new_hash != self.d.payload}

    def op_restart(self, h, data) -> dict:
        if self.d.jobs.busy():
            raise Refused("busy", "a job is running or queued; restart when the daemon is idle")
        log(f"{self.who} asked for a restart")
        self.then = self.server.restart
        return {}

    # ---------------------------------------------------------------- jobs
    def op_start(self, h, data) -> dict:
        args = h.get("args")
        if not (isinstance(args, list) and args and all(isinstance(a, str) and "\0" not in a for a in args)):
            raise Refused("bad_request", f"start: 'args' must be a non-empty list of strings, got {args!r}")
        job = self.d.jobs.start(args, self.host["id"])
        with self.d.jobs.cond:
            ans = {"job": job.id, "state": job.state, "position": self.d.jobs.position(job)}
        self.then = lambda: self.stream(job, 0)
        return ans

    def _job(self, h) -> Job:
        job = self.d.jobs.jobs.get(h.get("job"))
        if job is None:
            raise Refused("no_job", f"no job {h.get('job')!r} on this daemon (see `jobs`)")
        return job

    def op_attach(self, h, data) -> dict:
        """{"job", "state"}, then the stream from line `seq`, or from just after the `events`-th event."""
        jobs, job = self.d.jobs, self._job(h)
        with jobs.cond:
            live = job.lines is not None
            lines = job.lines if live else jobs.read_out(job)
            seqs = job.event_seqs if live else [i for i, ln in enumerate(lines) if is_event(ln)]
            if "events" in h:
                k = _int(h, "events")
                if k > len(seqs):
                    raise Refused("bad_request", f"attach: job {job.id} has {len(seqs)} events, not {k}")
                seq = seqs[k - 1] + 1 if k else 0
            else:
                seq = _int(h, "seq")
                if seq > len(lines):
                    raise Refused("bad_request", f"attach: job {job.id} has {len(lines)} lines, not {seq}")
            state = job.state
        self.then = lambda: self.stream(job, seq)
        return {"job": job.id, "state": state}

    def op_jobs(self, h, data) -> dict:
        with self.d.jobs.cond:
            return {"jobs": [self.d.jobs.wire(j) for j in self.d.jobs.jobs.values()]}

    def op_cancel(self, h, data) -> dict:
        return {"state": self.d.jobs.cancel(self._job(h))}

    def peer_gone(self) -> bool:
        """The host hung up (readable with nothing to read)."""
        try:
            if not select.select([self.request], [], [], 0)[0]:
                return False
            return self.request.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def stream(self, job: Job, seq: int) -> None:
        """queued / out / end frames of `job` from line `seq`; returns after "end" (the connection goes on
        with requests) or raises ConnectionError when the host is gone (the job goes on)."""
        jobs, last_tick = self.d.jobs, time.monotonic()
        while True:
            with jobs.cond:
                while True:
                    state, lines = job.state, job.lines
                    if state in FINAL or (lines is not None and seq < len(lines)):
                        break
                    if state == "queued" and time.monotonic() - last_tick >= QUEUED_EVERY_S:
                        break
                    if not jobs.cond.wait(0.5) and self.peer_gone():
                        raise ConnectionError("the host went away")
                new = lines[seq:] if lines is not None else None
                position, rc = jobs.position(job), job.rec["rc"]
            if new is None:                      # finished: the .out file holds every line
                new = jobs.read_out(job)[seq:]
            for i in range(0, len(new), 256):
                self.wfile.write(b"".join(encode_frame({"op": "out", "job": job.id, "seq": seq + i + k, "line": ln})
                                          for k, ln in enumerate(new[i:i + 256])))
            seq += len(new)
            if state in FINAL:
                self.send({"op": "end", "job": job.id, "rc": rc, "state": state})
                return
            if not new and state == "queued":
                self.send({"op": "queued", "job": job.id, "position": position})
                last_tick = time.monotonic()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, d: Daemon):
        super().__init__(("127.0.0.1", port), Handler)
        self.d, self.restarting = d, False

    def restart(self) -> None:
        self.restarting = True
        threading.Thread(target=self.shutdown, daemon=True).start()

    def handle_error(self, request, client_address) -> None:
        e = sys.exc_info()[1]
        log(f"connection {client_address[1]}: internal error {type(e).__name__}: {e} (the daemon goes on)")


# ============================================================================ entry points
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
