"""The ops a paired host may call, one method each (op_NAME): status, files, resumable uploads, the agent
payload, jobs. Mixed into wire.Handler, which reads the requests and sends the answers: an op returns
its answer's fields (and bytes, for get) or raises Refused; start/attach then stream via self.then."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
import zipfile
from pathlib import Path

from ..fsutil import sha256_file
from ..protocol import CHUNK, DAEMON_DIR
from .base import Refused, is_event, log
from .jobs import Job
from .state import Daemon


KEEP_FREE = 64 << 20      # bytes an upload must leave free on the daemon's disk


def _human(n: int) -> str:
    """1536 -> '1.5 KiB' (bytes, binary units)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def int_field(h: dict, key: str, lo: int = 0) -> int:
    v = h.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise Refused("bad_request", f"'{key}' must be an integer >= {lo}, got {v!r}")
    return v


def sha_field(h: dict, key: str) -> str:
    v = h.get(key)
    if not (isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
        raise Refused("bad_request", f"'{key}' must be a lowercase hex sha256, got {v!r}")
    return v


class Ops:
    """The op_NAME methods of a connection (self.d: the Daemon, self.host: the paired host)."""

    OPS = ("status", "stat", "list", "remove", "move", "put_begin", "put_chunk", "get", "hash", "install",
           "restart", "start", "attach", "jobs", "cancel")
    d: Daemon

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
        dest, size, sha = self.d.path(h.get("path")), int_field(h, "size"), sha_field(h, "sha256")
        key = hashlib.sha256(f"{h['path']}\0{size}\0{sha}".encode()).hexdigest()
        return dest, size, sha, self.d.partial / key

    @staticmethod
    def _have(part: Path) -> int:
        try:
            return part.stat().st_size
        except FileNotFoundError:
            return 0

    def op_put_begin(self, h, data) -> dict:
        """{"offset": bytes already here}. When that is the whole size, a put_chunk with n = 0 publishes.
        Refused("disk_full") when the bytes still to come do not fit (leaving KEEP_FREE free)."""
        dest, size, sha, part = self._upload(h)
        with self.d.put_lock:
            have = self._have(part)
            if have > size:
                part.unlink()
                have = 0
            free = shutil.disk_usage(self.d.partial).free
            if size - have > free - KEEP_FREE:
                raise Refused("disk_full", f"put_begin: {h['path']} is {size} bytes ({_human(size)}) but only "
                                           f"{_human(free)} are free under {self.d.root} (the daemon keeps "
                                           f"{_human(KEEP_FREE)} free); free some space on the phone (thomas runs rm RUN)")
            return {"offset": have}

    def op_put_chunk(self, h, data) -> dict:
        dest, size, sha, part = self._upload(h)
        offset, n = int_field(h, "offset"), len(data)
        if n > CHUNK:
            raise Refused("bad_request", f"a chunk is at most {CHUNK} bytes, got {n}")
        with self.d.put_lock:
            have = self._have(part)
            if offset != have:
                raise Refused("offset", f"{h['path']}: the daemon has {have} bytes, not {offset}; resend from there",
                              offset=have)
            if have + n > size:
                raise Refused("bad_request", f"{h['path']}: the chunk runs past the declared size {size}")
            if hashlib.sha256(data).hexdigest() != sha_field(h, "chunk_sha256"):
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
        p, offset, most = self.d.path(h.get("path")), int_field(h, "offset"), int_field(h, "max", 1)
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
                k = int_field(h, "events")
                if k > len(seqs):
                    raise Refused("bad_request", f"attach: job {job.id} has {len(seqs)} events, not {k}")
                seq = seqs[k - 1] + 1 if k else 0
            else:
                seq = int_field(h, "seq")
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
