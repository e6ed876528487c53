"""Support for the fleet tests: several virtual phones behind ONE adb server (the first phone's; the others
are `adb connect`ed to it), a phone in daemon mode, pushing a dataset to a device, running
`thomas fleet finetune` as a real subprocess (its own session, so the test can SIGKILL all of it).

    vds = phones(stack, tmp_path, 3)                      # VirtualDevice x3, vds[0].env reaches all of them
    fl = FleetEnv(tmp_path, vds, monkeypatch, shell=vds[2])  # THOMAS_HOME, adb env, the shell phone's root
    d = fl.daemon(vds[1])                                 # Termux daemon on phone 1, paired with this host
    fl.push(vds[2].serial, digits_dir)                    # push-data through the existing service
    p = fl.fleet("mnv2", "--devices", ..., "--json")      # Popen; fl.events(p) iterates its JSON lines
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from devicekit import DeviceTarget, thomas

RUN = ["--batch", "8", "--backend", "cpu"]
SCRUB = ("THOMAS_SERIAL", "THOMAS_DEVICE", "THOMAS_DEVICE_ROOT", "THOMAS_DEVICE_PYTHON", "THOMAS_SU", "THOMAS_MODE",
         "ANDROID_SERIAL", "ANDROID_ADB_SERVER_PORT", "ANDROID_ADB_SERVER_HOST", "ADBUTILS_ADB_PATH")


def phones(stack, tmp_path: Path, n: int) -> list:
    from conftest import need_adb
    from virtual_adb import VirtualDevice

    need_adb()
    vds = [stack.enter_context(VirtualDevice(tmp_path / f"phone{i}")) for i in range(n)]
    for vd in vds[1:]:
        out = vds[0].adb_cmd("connect", vd.serial)
        assert "connected" in out, out
        assert vds[0].adb_cmd("-s", vd.serial, "wait-for-device", timeout=15) is not None
    return vds


class FleetEnv:
    def __init__(self, tmp_path: Path, vds: list, monkeypatch, shell=None):
        for k in SCRUB:
            monkeypatch.delenv(k, raising=False)
        self.home = tmp_path / "home"
        self.env = {"THOMAS_HOME": str(self.home)}
        if vds:
            self.env.update(vds[0].env)
        for k, v in self.env.items():
            monkeypatch.setenv(k, v)
        # NOTE: --device-root applies to every shell phone of a fleet: the tests have one (`shell`, default the
        # first phone); a virtual phone's files must be under its own root
        self.shell_root = Path((shell or vds[0]).root if vds else tmp_path) / "thomas"
        self.globals = ["--device-root", str(self.shell_root), "--python", sys.executable]
        self.daemons = []
        self.procs: list[subprocess.Popen] = []

    def target(self, serial: str | None) -> DeviceTarget:
        if serial is None:
            return DeviceTarget("local", self.home / "device", ["--device", "local"], env=self.env)
        return DeviceTarget("adb", self.shell_root, ["-s", serial, *self.globals], env=self.env)

    def daemon(self, vd, port: int = 0):
        from test_daemon_cli import Daemon, paired

        d = Daemon(Path(vd.root) / "termux" / "thomas", port=port)
        self.daemons.append(d)
        paired(DeviceTarget("daemon", d.root, ["-s", vd.serial], env=self.env, vdev=vd), d)
        return d

    def restart(self, d):
        """The daemon again on its port (its pairing is in its root: no new pairing)."""
        from test_daemon_cli import Daemon

        d2 = Daemon(d.root, port=d.port)
        self.daemons.append(d2)
        return d2

    def stop(self):
        """Every fleet process still running (a failed test) with its whole session, then the daemons."""
        import signal

        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        for d in self.daemons:
            d.stop()

    def push(self, serial: str | None, src: Path, name: str = "digits") -> None:
        thomas(self.target(serial), "push-data", str(src), "--size", "32", "--val", "0.25", "--name", name)

    def fleet(self, *args: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "thomas_cli", *self.globals, "fleet", "finetune", *args],
                             env=dict(os.environ, **self.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        self.procs.append(p)
        return p

    def run(self, *args: str, expect: int = 0, timeout: float = 400) -> tuple[list[dict], str]:
        p = self.fleet(*args)
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == expect, f"exit {p.returncode}\nstdout: {out[-3000:]}\nstderr: {err[-3000:]}"
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def events(p: subprocess.Popen):
    """The JSON events of a running fleet, as they come."""
    for line in p.stdout:
        if line.startswith("{"):
            yield json.loads(line)


def weights(run_dir: Path, which: str = "final") -> dict:
    with np.load(run_dir / which / "weights.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def same_weights(a: dict, b: dict) -> list[str]:
    """The names whose arrays differ (bit for bit), or that only one side has."""
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or not np.array_equal(a[k], b[k]))


def image_set(root: Path, classes: int = 3, per_class: int = 16) -> Path:
    from devicekit import image_folder

    if not root.exists():
        image_folder(root, n_per_class=per_class, classes=classes, bad=False)
    return root
