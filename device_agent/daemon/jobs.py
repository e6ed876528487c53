"""Agent calls as jobs: one Condition over all of them, a FIFO lane for QUEUED_COMMANDS, output kept in
memory while live and in jobs/ID.out always, cancel (SIGTERM then SIGKILL), recovery after a crash."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..protocol import DAEMON_DIR, QUEUED_COMMANDS
from .base import agent_pythonpath, is_event, log, our_process, read_json, write_json

KEEP_JOBS = 50            # finished jobs kept (records + output); older ones are deleted
KILL_AFTER_S = 5.0        # cancel: SIGTERM, then SIGKILL after this
MAX_LINE = 1 << 16        # characters of one output line (longer ones are cut: a frame header has a cap)
FINAL = ("done", "cancelled", "lost")


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

