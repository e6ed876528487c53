"""The pieces under the CLI: the virtual adb device's wire protocol (through real adbutils and a real
adb server), the adb transport's exit markers and quoting, path confinement, the agent payload and
the agent's own CLI."""
from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from thomas_cli.transport.base import Entry, RemotePathError, check_rel, confined
from thomas_cli.transport.local import LocalTransport
from virtual_adb import VirtualDevice

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def vdev(tmp_path_factory):
    if shutil.which("adb") is None:
        pytest.skip("the virtual adb device needs the `adb` binary (Debian package adb; `make setup` installs it)")
    with VirtualDevice(tmp_path_factory.mktemp("phone")) as vd:
        yield vd


@pytest.fixture
def adb_env(vdev, monkeypatch):
    for k, v in vdev.env.items():
        monkeypatch.setenv(k, v)
    return vdev


# ============================================================================ the virtual device
def test_virtual_device_speaks_adb_to_real_adbutils(adb_env):
    import adbutils

    vd = adb_env
    c = adbutils.AdbClient(port=vd.server_port)
    (info,) = [i for i in c.list(extended=True) if i.serial == vd.serial]
    assert info.state == "device" and info.tags["model"] == "Virtual_Phone"
    d = c.device(vd.serial)
    assert d.get_features() == ""                           # legacy shell + sync v1
    # legacy shell: stderr merged, cwd = the device root, exit status lost
    assert d.shell("echo out; echo err >&2; pwd; exit 3") == f"out\nerr\n{vd.root}"
    assert d.prop.model == "Virtual_Phone" and d.shell(["getprop", "ro.build.version.sdk"]) == "34"
    # sync v1: SEND (several DATA chunks), STAT, LIST, RECV
    blob = os.urandom(300_000)
    path = f"{vd.root}/sync test/a b.bin"
    d.sync.push(io.BytesIO(blob), path)
    st = d.sync.stat(path)
    assert st.size == len(blob) and st.mode & 0o170000 == 0o100000
    assert {f.path for f in d.sync.list(f"{vd.root}/sync test")} == {".", "..", "a b.bin"}
    assert d.sync.read_bytes(path) == blob
    assert d.sync.stat(f"{vd.root}/missing").mode == 0 and not d.sync.exists(f"{vd.root}/missing")
    with pytest.raises(adbutils.AdbError):
        d.sync.read_bytes(f"{vd.root}/missing")
    with pytest.raises(adbutils.AdbError):                  # confined to the device root
        d.sync.read_bytes("/etc/hostname")
    with d.open_transport() as conn:                        # services it does not offer are refused
        conn.send_command("framebuffer:")
        with pytest.raises(adbutils.AdbError, match="closed"):
            conn.check_okay()


def test_virtual_device_forwards_tcp_through_the_real_adb_server(adb_env):
    """`adb forward tcp:L tcp:R` through the real server reaches a server on the phone's loopback port R,
    both ways, with payloads larger than one adb packet; a refused port just closes the connection."""
    import socket
    import threading

    import adbutils

    vd = adb_env
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(2)
    remote = srv.getsockname()[1]

    def echo():
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    d = adbutils.AdbClient(port=vd.server_port).device(vd.serial)
    local = d.forward_port(remote)
    assert any(f.remote == f"tcp:{remote}" for f in d.forward_list())
    blob = os.urandom(200_000)
    with socket.create_connection(("127.0.0.1", local), timeout=10) as c:
        c.sendall(blob)
        got = bytearray()
        while len(got) < len(blob):
            got += c.recv(65536)
    assert bytes(got) == blob
    srv.close()
    closed = d.forward_port(remote + 1 if remote < 65535 else remote - 1)    # nobody listens there
    with socket.create_connection(("127.0.0.1", closed), timeout=10) as c:
        c.settimeout(10)
        assert c.recv(10) == b""


def test_adb_transport_exit_status_and_quoting(adb_env, tmp_path):
    from thomas_cli.transport.adb import AdbTransport

    vd = adb_env
    t = AdbTransport(vd.serial, root=f"{vd.root}/q t", python=sys.executable)
    assert t.sh("exit 7")[0] == 7
    assert t.sh("echo hi; false")[0] == 1
    nasty = "a'b\"c; touch PWNED $(touch PWNED2) `touch PWNED3`"
    rc, out = t.sh("printf %s " + shlex.quote(nasty))
    assert rc == 0 and out == nasty and not list(Path(vd.root).rglob("PWNED*"))
    t.write_bytes(f"dir/{nasty}", b"payload")
    (e,) = t.listdir("dir")
    assert e.name == nasty and not e.is_dir and e.size == 7
    assert t.read_bytes(f"dir/{nasty}") == b"payload"
    t.move("dir", "moved")
    assert t.stat("moved").is_dir and t.stat("dir") is None
    t.pull_tree("moved", tmp_path / "got")
    assert (tmp_path / "got" / nasty).read_bytes() == b"payload"
    t.remove("moved")
    assert t.stat("moved") is None and not list(Path(vd.root).rglob("PWNED*"))
    with pytest.raises(RemotePathError):
        t.read_bytes("../escape")
    facts = t.probe()
    assert facts["python"] == sys.executable and facts["props"]["ro.product.model"] == "Virtual_Phone"
    assert facts["root_writable"] is True


def test_adb_transport_unknown_serial_is_one_line(adb_env):
    from thomas_cli.transport.adb import AdbTransport
    from thomas_cli.transport.base import DeviceError

    t = AdbTransport("127.0.0.1:9", root="/data/local/tmp/thomas")
    with pytest.raises(DeviceError, match="127.0.0.1:9"):
        t.stat("x")


# ============================================================================ paths
@pytest.mark.parametrize("rel", ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a\\b", "a\nb", "./a"])
def test_bad_remote_paths_refused(rel):
    with pytest.raises(RemotePathError):
        check_rel(rel)


def test_confined(tmp_path):
    assert confined(tmp_path, "a/b") == (tmp_path / "a" / "b").resolve()
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(RemotePathError):
        confined(tmp_path, "link/passwd")


def test_pull_tree_refuses_names_that_escape(tmp_path):
    class Evil(LocalTransport):
        def listdir(self, rel):
            return [Entry("../evil", False, 1, 0.0)] if rel == "run" else super().listdir(rel)

    t = Evil(tmp_path / "dev")
    (tmp_path / "dev" / "run").mkdir(parents=True)
    with pytest.raises(RemotePathError):
        t.pull_tree("run", tmp_path / "host" / "run")
    assert not (tmp_path / "host" / "evil").exists()


# ============================================================================ payload and agent
def test_payload_is_deterministic_and_self_contained(tmp_path):
    from thomas_cli.device import PAYLOAD, build_payload

    p1, h1 = build_payload(tmp_path / "a")
    p2, h2 = build_payload(tmp_path / "b")
    assert h1 == h2 and p1.read_bytes() == p2.read_bytes()
    with zipfile.ZipFile(p1) as z:
        names = set(z.namelist())
        meta = json.loads(z.read(PAYLOAD))
    assert {"device_agent/__main__.py", "device_agent/protocol.py", "configs/tuning/default.json"} <= names
    assert any(n.startswith("kernels/") and n.endswith(".cl") for n in names)
    assert not any(n.startswith("thomas_cli") or "__pycache__" in n for n in names)
    assert meta["hash"] == h1 and meta["protocol"] >= 1
    # the agent runs from the unpacked payload alone (not this checkout) and finds its kernels there
    root = tmp_path / "device"
    LocalTransport(root).install_payload(p1)
    env = dict(os.environ, PYTHONPATH=str(root / "agent"))
    code = "import device_agent, device_agent.resources as r; print(device_agent.__file__); print(r.kernels_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert all(Path(x).is_relative_to(root / "agent") for x in out), out
    hello = json.loads(subprocess.run([sys.executable, "-m", "device_agent", "hello"], cwd=root, env=env,
                                      capture_output=True, text=True, check=True).stdout)
    assert hello["ev"] == "hello" and hello["payload"] == h1


def _agent(args, cwd):
    r = subprocess.run([sys.executable, "-m", "device_agent", *args], cwd=cwd, capture_output=True, text=True)
    return r.returncode, [json.loads(x) for x in r.stdout.splitlines()], r.stderr


def test_agent_cli_hello_first_and_errors_last(tmp_path):
    from device_agent.protocol import PROTOCOL_VERSION

    rc, ev, _ = _agent(["hello"], tmp_path)
    assert rc == 0 and ev == [dict(ev[0], ev="hello", protocol=PROTOCOL_VERSION)] and ev[0]["pid"] > 0
    rc, ev, err = _agent(["frobnicate"], tmp_path)
    assert rc == 2 and [e["ev"] for e in ev] == ["hello", "error"] and ev[1]["code"] == "usage" and "usage" in err
    rc, ev, _ = _agent(["doctor"], tmp_path)
    assert rc == 0 and [e["ev"] for e in ev] == ["hello", "device"]
    assert ev[1]["numpy"] == np.__version__ and ev[1]["root"] == str(tmp_path)
    rc, ev, _ = _agent(["run", "missing.json"], tmp_path)
    assert rc == 1 and ev[-1]["ev"] == "error" and ev[-1]["code"] == "bad_job" and "missing.json" in ev[-1]["message"]


def test_agent_infer(tmp_path):
    pytest.importorskip("device_agent.infer")
    from device_agent.model.graph import save_package
    from thomas_cli import zoo

    g = zoo.build("mobilenet_v2", num_classes=4, size=32, width=0.35, seed=0)
    save_package(g, tmp_path / "m")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32))
    rc, ev, err = _agent(["infer", "m", "x.npy", "y.npy", "--batch", "2"], tmp_path)
    assert rc == 0 and [e["ev"] for e in ev] == ["hello", "infer"], err
    assert ev[1]["shape"] == [3, 4] and np.load(tmp_path / "y.npy").shape == (3, 4)
    rc, ev, _ = _agent(["infer", "m", "nope.npy", "y.npy"], tmp_path)
    assert rc == 1 and ev[-1]["ev"] == "error" and "nope.npy" in ev[-1]["message"]
