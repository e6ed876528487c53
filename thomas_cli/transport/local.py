"""The embedded default device: a folder on this machine as the device root, the agent as a subprocess.

    t = LocalTransport(root=Path("~/.thomas/device"), python=sys.executable)

It is what `thomas` uses when no phone is attached, or with `--device local`. The agent still runs
from the pushed payload (<root>/agent), exactly as on a phone, so local runs test the same path.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

from .base import AgentProcess, DeviceError, Entry, Transport, check_rel


class LocalProcess(AgentProcess):
    def __init__(self, proc: subprocess.Popen):
        super().__init__()
        self.proc = proc
        self._start_reader(lambda: os.read(proc.stdout.fileno(), 65536))

    def _finish(self) -> None:
        try:
            self.returncode = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.cancel()
            self.returncode = self.proc.wait()
        self.proc.stdout.close()

    def cancel(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        if not self.proc.stdout.closed:
            self.proc.stdout.close()


class LocalTransport(Transport):
    kind = "local"

    def __init__(self, root: Path, python: str | None = None):
        super().__init__("local", str(Path(root).expanduser().resolve()), python or sys.executable)
        self.base = Path(self.root)

    def _p(self, rel: str) -> Path:
        return self.base / check_rel(rel)

    # ------------------------------------------------------------------ files
    def stat(self, rel: str) -> Entry | None:
        p = self._p(rel)
        try:
            st = p.stat()
        except OSError:
            return None
        return Entry(p.name, p.is_dir(), st.st_size, st.st_mtime)

    def listdir(self, rel: str) -> list[Entry]:
        p = self._p(rel)
        if not p.is_dir():
            return []
        out = []
        for c in sorted(p.iterdir()):
            st = c.stat()
            out.append(Entry(c.name, c.is_dir(), st.st_size, st.st_mtime))
        return out

    def read_bytes(self, rel: str) -> bytes:
        p = self._p(rel)
        try:
            return p.read_bytes()
        except OSError as e:
            raise DeviceError(f"cannot read {rel} on the local device ({e.strerror})") from None

    def push_file(self, local: Path, rel: str) -> int:
        dest = self._p(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".push-{dest.name}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)
        return dest.stat().st_size

    def pull_file(self, rel: str, local: Path) -> int:
        src = self._p(rel)
        if not src.is_file():
            raise DeviceError(f"{rel} is not a file on the local device (under {self.root})")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local)
        return local.stat().st_size

    def remove(self, rel: str) -> None:
        p = self._p(rel)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()

    def move(self, src: str, dst: str) -> None:
        s, d = self._p(src), self._p(dst)
        if d == s or d in s.parents or s in d.parents:
            raise DeviceError(f"cannot move {src} to {dst} on the local device: one holds the other")
        self.remove(dst)
        d.parent.mkdir(parents=True, exist_ok=True)
        os.replace(s, d)

    def free_bytes(self) -> int | None:
        self.base.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.base).free

    # ------------------------------------------------------------------ agent
    def install_payload(self, archive: Path) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.remove("agent.new")
        with zipfile.ZipFile(archive) as z:
            z.extractall(self.base / "agent.new")
        self.move("agent.new", "agent")

    def _env(self) -> dict:
        """This environment with the pushed agent first on PYTHONPATH; the caller's entries stay after it
        (a pyopencl found through PYTHONPATH is still found), and a device_agent they hold cannot shadow
        the agent that was pushed."""
        agent = str(self.base / "agent")
        rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != agent]
        return dict(os.environ, PYTHONPATH=os.pathsep.join([agent, *rest]))

    def start_agent(self, args: list[str]) -> LocalProcess:
        self.base.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.Popen([self.python, "-u", "-m", "device_agent", *args], cwd=self.base,
                                    env=self._env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise DeviceError(f"cannot start {self.python} on the local device ({e.strerror}); "
                              f"pass --python") from None
        return LocalProcess(proc)

    def probe(self) -> dict:
        py = shutil.which(self.python) or (self.python if os.access(self.python, os.X_OK) else None)
        version = None
        if py:
            r = subprocess.run([py, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                               text=True, timeout=30)
            version = r.stdout.strip() if r.returncode == 0 else None
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            writable = os.access(self.base, os.W_OK)
        except OSError:
            writable = False
        return {"python": py, "python_version": version, "root_writable": writable, "su": None,
                "opencl_libs": [], "os": sys.platform}
