"""The daemon (`python -m device_agent serve`, device_agent/daemon/) over raw TCP: pairing, auth, confined
file ops, resumable uploads, agent install + restart, jobs (queue, stream, re-attach, cancel), crash safety.
Every test runs a real daemon subprocess on port 0 with its own root; jobs run a stand-in agent
(daemonkit.FAKE_AGENT) except the install test, which installs and runs the real payload."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from daemonkit import REPO, Client, DaemonProc, install_fake_agent
from device_agent.protocol import PAIR_ATTEMPTS, PROTOCOL_VERSION, QUEUED_EVERY_S, auth_mac, encode_frame


@pytest.fixture
def daemon(tmp_path):
    d = DaemonProc(tmp_path / "root")
    yield d
    d.kill()


@pytest.fixture
def paired(daemon):
    """(daemon, connect): connect() gives an authenticated Client."""
    host, token = Client(daemon.port).pair(daemon.code)
    install_fake_agent(daemon.root)

    def connect() -> Client:
        c = Client(daemon.port)
        assert c.auth(host, token)["ok"] is True
        return c

    connect.host, connect.token = host, token
    return daemon, connect


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def put(c: Client, path: str, blob: bytes, chunk: int = 1 << 16, start: int = 0, stop: int | None = None,
        declared: str | None = None) -> dict:
    """Send blob[start:stop] in chunks; the last answer."""
    spec = {"path": path, "size": len(blob), "sha256": declared or sha(blob)}
    off, end, ans = start, len(blob) if stop is None else stop, None
    while off < end or (ans is None and not blob):
        piece = blob[off:min(off + chunk, end)]
        ans = c.req("put_chunk", piece, **spec, offset=off, chunk_sha256=sha(piece))
        if not ans["ok"]:
            return ans
        off = ans["offset"]
    return ans


def collect(c: Client) -> tuple[list[dict], dict]:
    """Every out frame until end; (outs, end)."""
    outs = []
    for f in c.stream():
        if f["op"] == "out":
            outs.append(f)
    return outs, f


def wait_for(pred, timeout: float = 10, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := pred():
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def job_rec(c: Client, job: str) -> dict:
    return next(j for j in c.ok("jobs")["jobs"] if j["job"] == job)


def dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (OSError, IndexError):
        return True


# ============================================================================ pairing and auth
def test_welcome_pairing_and_single_use_code(daemon):
    c = Client(daemon.port)
    w = c.welcome
    assert w["op"] == "welcome" and w["protocol"] == PROTOCOL_VERSION and w["agent"] == "0.1.0"
    assert w["payload"] is None and w["python"].count(".") == 2 and w["pairing"] is True
    assert w["root"] == str(daemon.root.resolve()) and len(w["nonce"]) == 32 and int(w["nonce"], 16) >= 0
    assert Client(daemon.port).welcome["nonce"] != w["nonce"]
    info = json.loads((daemon.root / ".daemon" / "daemon.json").read_text())
    assert info["pid"] == daemon.p.pid and info["port"] == daemon.port
    assert stat.S_IMODE((daemon.root / ".daemon" / "pairing.json").stat().st_mode) == 0o600

    host, token = c.pair(daemon.code, name="my-laptop")
    assert len(host) == 8 and int(host, 16) >= 0 and len(token) == 64 and int(token, 16) >= 0
    hosts = daemon.root / ".daemon" / "hosts.json"
    assert stat.S_IMODE(hosts.stat().st_mode) == 0o600
    (rec,) = json.loads(hosts.read_text())["hosts"]
    assert rec["id"] == host and rec["name"] == "my-laptop" and rec["token"] == token and rec["paired_at"] > 0
    assert c.ok("status")["pid"] == daemon.p.pid          # a pair authenticates the connection too

    again = Client(daemon.port)                          # one use: the code is closed now
    assert again.welcome["pairing"] is False
    ans = again.req("pair", code=daemon.code, name="thief")
    assert ans["ok"] is False and ans["code"] == "auth" and "no pairing code" in ans["message"]
    assert again.hung_up()
    ok = Client(daemon.port)
    assert ok.auth(host, token)["ok"] is True
    assert ok.ok("status")["running"] is None


def test_wrong_codes_close_the_pairing(daemon):
    wrong = "000000" if daemon.code != "000000" else "111111"
    for left in range(PAIR_ATTEMPTS - 1, -1, -1):
        c = Client(daemon.port)
        ans = c.req("pair", code=wrong, name="x")
        assert ans["ok"] is False and ans["code"] == "auth" and f"{left} tries left" in ans["message"]
        assert c.hung_up()
    c = Client(daemon.port)
    assert c.welcome["pairing"] is False
    assert c.req("pair", code=daemon.code, name="x")["code"] == "auth"
    assert not (daemon.root / ".daemon" / "hosts.json").exists()


def test_pair_command_opens_a_code_for_the_running_daemon(paired):
    daemon, connect = paired
    assert Client(daemon.port).welcome["pairing"] is False
    r = subprocess.run([sys.executable, "-m", "device_agent", "pair", "--root", str(daemon.root)], cwd=REPO,
                       capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    code = r.stdout.split("pairing code: ")[1][:6]
    assert "no daemon runs" not in r.stdout and '"ev"' not in r.stdout     # not an agent call: no hello
    c = Client(daemon.port)
    assert c.welcome["pairing"] is True
    host2, token2 = c.pair(code, name="second")
    assert host2 != connect.host
    c2 = Client(daemon.port)
    assert c2.auth(host2, token2)["ok"] and connect().ok("status")      # both hosts work


def test_nothing_runs_before_auth(paired):
    daemon, connect = paired
    root = daemon.root
    blob = b"payload"
    put_spec = {"path": "landed.bin", "size": len(blob), "sha256": sha(blob)}
    start = {"args": ["run", "1", "0", str(root / "marker")]}
    # other ops first
    for op, fields, data in (("start", start, b""), ("status", {}, b""),
                             ("put_chunk", dict(put_spec, offset=0, chunk_sha256=sha(blob)), blob),
                             ("stat", {"path": "agent"}, b"")):
        c = Client(daemon.port)
        ans = c.req(op, data, **fields)
        assert ans["ok"] is False and ans["code"] == "auth" and "authenticate first" in ans["message"], ans
        assert c.hung_up()
    # a wrong mac, an unknown host, a missing mac: refused after a delay, then the connection is gone
    for host, mac in ((connect.host, "0" * 64), ("deadbeef", "0" * 64), (connect.host, None)):
        c = Client(daemon.port)
        t0 = time.monotonic()
        ans = c.req("auth", host=host, mac=mac)
        assert ans["ok"] is False and ans["code"] == "auth" and time.monotonic() - t0 >= 0.4
        try:
            c.send("start", **start)
            c.send("put_chunk", blob, **put_spec, offset=0, chunk_sha256=sha(blob))
        except OSError:
            pass
        assert c.hung_up()
    # a mac for another nonce (a replayed auth) is refused too
    c1, c2 = Client(daemon.port), Client(daemon.port)
    replayed = auth_mac(connect.token, c1.welcome["nonce"], connect.host)
    assert c2.req("auth", host=connect.host, mac=replayed)["code"] == "auth"
    time.sleep(0.5)
    assert not (root / "marker").exists() and not (root / "landed.bin").exists()
    assert connect().ok("jobs")["jobs"] == [] and list((root / ".daemon" / "partial").iterdir()) == []


def test_bad_frames_and_unknown_ops_do_not_kill_the_server(paired):
    daemon, connect = paired
    c = connect()
    ans = c.req("frobnicate")
    assert ans["ok"] is False and ans["code"] == "bad_request" and "frobnicate" in ans["message"]
    assert c.req("get", path="x", offset=-1, max=10)["code"] == "bad_request"
    assert c.req("put_begin", path="x", size=3, sha256="nothex")["code"] == "bad_request"
    assert c.req("start", args="hello")["code"] == "bad_request"
    assert c.req("start", args=[])["code"] == "bad_request"
    assert c.req("start", args=["hello", 3])["code"] == "bad_request"
    assert c.req("attach", job="nope", seq=0)["code"] == "no_job"
    assert c.req("cancel", job="nope")["code"] == "no_job"
    c.ok("status")                                        # still talking
    c.sock.sendall(b"this is not json\n")
    assert c.hung_up()
    c = connect()
    c.sock.sendall(b'{"op": "stat", "id": 1, "n": -5}\n')
    assert c.hung_up()
    raw = Client(daemon.port)                             # garbage before auth
    raw.sock.sendall(b"\x00\xff garbage\n")
    assert raw.hung_up()
    raw = Client(daemon.port)
    raw.sock.sendall(b'{"op": "auth", "id": 1, "host": "x"')   # half a frame, then gone
    raw.close()
    assert connect().ok("status")["pid"] == daemon.p.pid
    assert daemon.p.poll() is None and "Traceback" not in daemon.log()


# ============================================================================ files
def test_file_ops(paired):
    daemon, connect = paired
    c, root = connect(), daemon.root
    (root / "runs" / "r1" / "ckpt").mkdir(parents=True)
    (root / "runs" / "r1" / "events.jsonl").write_text("{}\n")
    (root / "runs" / "b.txt").write_bytes(b"hello")
    e = c.ok("stat", path="runs/b.txt")["entry"]
    assert e["name"] == "b.txt" and e["is_dir"] is False and e["size"] == 5 and e["mtime"] > 0
    assert c.ok("stat", path="runs/r1")["entry"]["is_dir"] is True
    assert c.ok("stat", path="runs/missing")["entry"] is None
    assert [x["name"] for x in c.ok("list", path="runs")["entries"]] == ["b.txt", "r1"]
    assert c.ok("list", path="nothing/here")["entries"] == []
    assert c.ok("hash", path="runs/b.txt") == {"id": c.id, "ok": True, "sha256": sha(b"hello"), "size": 5}
    assert c.req("hash", path="runs/r1")["code"] == "not_found"
    c.ok("move", src="runs/b.txt", dst="runs/r1/events.jsonl")       # replaces
    assert (root / "runs/r1/events.jsonl").read_bytes() == b"hello" and not (root / "runs/b.txt").exists()
    c.ok("move", src="runs/r1", dst="archive/r1")                     # parents created
    assert (root / "archive/r1/ckpt").is_dir()
    assert c.req("move", src="runs/r1", dst="x")["code"] == "not_found"
    (root / "keep" / "inner").mkdir(parents=True)
    assert c.req("move", src="keep/inner", dst="keep")["code"] == "bad_request"     # would delete its source
    assert c.req("move", src="keep", dst="keep")["code"] == "bad_request" and (root / "keep/inner").is_dir()
    c.ok("remove", path="archive")                                    # a tree
    c.ok("remove", path="archive")                                    # missing: fine
    assert not (root / "archive").exists()
    st = c.ok("status")
    assert st["free"] > 0 and st["jobs"] == 0 and st["queue"] == [] and st["uptime"] >= 0


def test_paths_stay_under_the_root(paired, tmp_path):
    daemon, connect = paired
    root = daemon.root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("secret")
    (root / "out").symlink_to(outside)
    (root / "self").symlink_to(root)
    (root / "loop").symlink_to(root / "loop")
    c = connect()
    blob = b"x"
    bads = ("../x", "/etc/passwd", ".daemon/hosts.json", ".daemon", "a//b", "a/./b", "a\\b", "", "x/../../y",
            "a\nb", "out", "out/passwd", "self/.daemon/hosts.json", "self/.daemon", "self/out", None, 3)
    for bad in bads:
        for op, fields in (("stat", {"path": bad}), ("list", {"path": bad}), ("remove", {"path": bad}),
                           ("hash", {"path": bad}), ("get", {"path": bad, "offset": 0, "max": 10}),
                           ("put_begin", {"path": bad, "size": 1, "sha256": sha(blob)}),
                           ("put_chunk", {"path": bad, "size": 1, "sha256": sha(blob), "offset": 0,
                                          "chunk_sha256": sha(blob)}),
                           ("move", {"src": bad, "dst": "y"}), ("move", {"src": "runs", "dst": bad}),
                           ("install", {"path": bad})):
            ans = c.req(op, blob if op == "put_chunk" else b"", **fields)
            assert ans["ok"] is False and ans["code"] == "bad_path", (bad, op, ans)
    assert (outside / "passwd").read_text() == "secret" and (root / ".daemon" / "hosts.json").exists()
    assert ".daemon" not in [e["name"] for e in c.ok("list", path="self")["entries"]]
    out = next(e for e in c.ok("list", path="self")["entries"] if e["name"] == "out")
    assert out["is_dir"] is False                                          # the link itself, not its target
    ans = c.req("stat", path="loop")                                       # a symlink loop: no crash
    assert ans.get("entry") is None and ans.get("code", "bad_path") == "bad_path"


def test_put_resumes_after_a_drop_and_get_reads_it_back(paired):
    daemon, connect = paired
    blob = os.urandom(300_000)
    spec = {"path": "data/shard0.bin", "size": len(blob), "sha256": sha(blob)}
    c = connect()
    assert c.ok("put_begin", **spec)["offset"] == 0
    assert put(c, "data/shard0.bin", blob, stop=131072)["offset"] == 131072
    c.close()                                                          # the cable wobbles
    c = connect()
    assert c.ok("put_begin", **spec)["offset"] == 131072
    ans = c.req("put_chunk", blob[:10], **spec, offset=0, chunk_sha256=sha(blob[:10]))
    assert ans["ok"] is False and ans["code"] == "offset" and ans["offset"] == 131072
    assert not (daemon.root / "data").exists()                        # nothing published before the end
    ans = put(c, "data/shard0.bin", blob, start=131072)
    assert ans == {"id": c.id, "ok": True, "offset": len(blob), "done": True}
    assert (daemon.root / "data/shard0.bin").read_bytes() == blob
    assert list((daemon.root / ".daemon" / "partial").iterdir()) == []
    got, off = b"", 0
    while True:
        a = c.ok("get", path="data/shard0.bin", offset=off, max=100_000)
        assert a["n"] == len(c.data) <= 100_000 and a["chunk_sha256"] == sha(c.data) and a["size"] == len(blob)
        if not a["n"]:
            break
        got += c.data
        off += a["n"]
    assert got == blob and c.ok("hash", path="data/shard0.bin")["sha256"] == sha(blob)
    assert c.req("get", path="data", offset=0, max=10)["code"] == "not_found"
    # an empty file: put_begin says 0, a zero-length chunk publishes it
    assert c.ok("put_begin", path="empty", size=0, sha256=sha(b""))["offset"] == 0
    assert put(c, "empty", b"")["done"] is True and (daemon.root / "empty").read_bytes() == b""


def test_put_bad_chunk_then_retry_and_bad_file(paired):
    daemon, connect = paired
    c, blob = connect(), os.urandom(50_000)
    spec = {"path": "m/w.npz", "size": len(blob), "sha256": sha(blob)}
    ans = c.req("put_chunk", blob[:20_000], **spec, offset=0, chunk_sha256=sha(b"other"))
    assert ans["ok"] is False and ans["code"] == "bad_chunk"
    assert c.ok("put_begin", **spec)["offset"] == 0                   # the bad chunk was dropped
    assert put(c, "m/w.npz", blob, chunk=20_000)["done"] is True
    assert (daemon.root / "m/w.npz").read_bytes() == blob
    lie = dict(spec, path="m/x.npz", sha256=sha(b"something else"))
    assert c.req("put_chunk", blob[:30_000], **lie, offset=0, chunk_sha256=sha(blob[:30_000]))["offset"] == 30_000
    ans = c.req("put_chunk", blob[30_000:], **lie, offset=30_000, chunk_sha256=sha(blob[30_000:]))
    assert ans["ok"] is False and ans["code"] == "bad_file" and "\n" not in ans["message"]
    assert c.ok("put_begin", **lie)["offset"] == 0 and not (daemon.root / "m/x.npz").exists()
    ans = c.req("put_chunk", blob[:10], **dict(spec, size=5), offset=0, chunk_sha256=sha(blob[:10]))
    assert ans["code"] == "bad_request"                               # past the declared size


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fake a full disk")
def test_disk_full_is_a_clean_answer(paired):
    daemon, connect = paired
    c, blob = connect(), os.urandom(5000)
    spec = {"path": "big.bin", "size": len(blob), "sha256": sha(blob)}
    # NOTE: the partial file's name is serve.py's key; pointing it at /dev/full makes the write fail ENOSPC
    key = hashlib.sha256(f"big.bin\0{len(blob)}\0{sha(blob)}".encode()).hexdigest()
    (daemon.root / ".daemon" / "partial" / key).symlink_to("/dev/full")
    ans = c.req("put_chunk", blob, **spec, offset=0, chunk_sha256=sha(blob))
    assert ans["ok"] is False and ans["code"] == "disk_full" and "\n" not in ans["message"], ans
    assert c.ok("status")


# ============================================================================ agent install + restart
def test_install_real_payload_run_hello_and_restart(paired, tmp_path):
    from thomas_cli.device import build_payload

    daemon, connect = paired
    c = connect()
    zpath, digest = build_payload(tmp_path / "payload")
    blob = zpath.read_bytes()
    assert put(c, "agent.zip", blob, chunk=1 << 18)["done"] is True
    assert c.ok("install", path="agent.zip")["restart"] is True      # the daemon runs from the source tree
    assert json.loads((daemon.root / "agent" / "PAYLOAD").read_text())["hash"] == digest
    assert not (daemon.root / "agent.new").exists()
    ans = c.ok("start", args=["hello"])
    assert ans["state"] == "running" and ans["position"] == 0
    outs, end = collect(c)
    hello = json.loads(outs[0]["line"])
    assert hello["ev"] == "hello" and hello["payload"] == digest and end == {
        "op": "end", "job": ans["job"], "rc": 0, "state": "done"}
    rec = job_rec(c, ans["job"])
    assert rec["args"] == ["hello"] and rec["host"] == connect.host and rec["lines"] == len(outs) >= 1
    assert rec["events"] == 1 and rec["started"] >= rec["created"] and rec["ended"] >= rec["started"]
    # a zip that escapes the root is refused whole
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("PAYLOAD", "{}")
        z.writestr("device_agent/__main__.py", "")
        z.writestr("../escape.py", "x")
    assert put(c, "evil.zip", evil.read_bytes())["done"] is True
    assert c.req("install", path="evil.zip")["code"] == "bad_zip" and not (daemon.root.parent / "escape.py").exists()
    # restart: same pid, same port, now running the installed payload
    c.ok("restart")
    assert c.hung_up()
    daemon.wait_line(r"listening on 127\.0\.0\.1:%d" % daemon.port, start=1)
    w = Client(daemon.port).welcome
    assert w["payload"] == digest and daemon.p.poll() is None
    c = connect()
    assert c.ok("status")["pid"] == daemon.p.pid


# ============================================================================ jobs
def test_job_stream_and_records(paired):
    daemon, connect = paired
    c = connect()
    ans = c.ok("start", args=["run", "3", "0"])
    outs, end = collect(c)
    lines = [o["line"] for o in outs]
    assert [o["seq"] for o in outs] == list(range(len(outs))) and {o["job"] for o in outs} == {ans["job"]}
    assert lines[1:] == ["to stderr", "log 0", '{"ev": "step", "step": 0}', "log 1", '{"ev": "step", "step": 1}',
                         "log 2", '{"ev": "step", "step": 2}', '{"ev": "done"}']
    assert end["rc"] == 0 and end["state"] == "done"
    c.ok("status")                                        # after "end" the connection takes requests again
    rec = job_rec(c, ans["job"])
    assert rec["state"] == "done" and rec["rc"] == 0 and rec["lines"] == 9 and rec["events"] == 5
    assert "pid" not in rec
    out = daemon.root / ".daemon" / "jobs" / f"{ans['job']}.out"
    assert out.read_text().splitlines() == lines
    # a job that is not in QUEUED_COMMANDS and fails: its rc
    ans = c.ok("start", args=["nosuch"])
    assert collect(c)[1]["rc"] == 0                       # the fake agent ignores unknown commands
    assert c.ok("start", args=["run", "x", "0"])["state"] == "running"
    assert collect(c)[1]["rc"] == 1                       # int("x") fails in the agent: a traceback, rc 1
    c.ok("start", args=["long"])                          # a huge line is cut below the frame header cap
    long = collect(c)[0][-1]["line"]
    assert long.startswith("xxx") and long.endswith("[cut by the daemon]") and len(long) < 70_000


def test_queue_runs_one_at_a_time_in_order(paired):
    daemon, connect = paired
    a, b, c, h = connect(), connect(), connect(), connect()
    ja = a.ok("start", args=["run", "12", "0.25"])
    t0 = time.monotonic()
    jb = b.ok("start", args=["run", "1", "0"])
    jc = c.ok("start", args=["infer", "m", "x.npy", "y.npy"])
    assert ja["state"] == "running" and (jb["state"], jb["position"]) == ("queued", 1)
    assert (jc["state"], jc["position"]) == ("queued", 2)
    st = h.ok("status")
    assert st["running"] == ja["job"] and st["queue"] == [jb["job"], jc["job"]]
    hello = h.ok("start", args=["hello"])                 # not a queued command: runs at once
    assert hello["state"] == "running" and collect(h)[1]["state"] == "done"
    first, _ = b.frame()                                  # a queued frame about every QUEUED_EVERY_S
    assert first == {"op": "queued", "job": jb["job"], "position": 1}
    assert QUEUED_EVERY_S - 0.1 <= time.monotonic() - t0 <= QUEUED_EVERY_S + 2
    assert collect(a)[1]["state"] == "done"
    outs_b, end_b = collect(b)
    outs_c, end_c = collect(c)
    assert end_b["state"] == end_c["state"] == "done" and outs_b[-1]["line"] == '{"ev": "done"}'
    ra, rb, rc = (job_rec(h, j["job"]) for j in (ja, jb, jc))
    assert ra["ended"] <= rb["started"] and rb["ended"] <= rc["started"]


def test_reattach_by_seq_and_by_events_gives_every_line_once(paired):
    daemon, connect = paired
    c = connect()
    job = c.ok("start", args=["run", "12", "0.05"])["job"]
    seen = []
    for f in c.stream():
        seen.append(f)
        if sum('"ev"' in x["line"] for x in seen) == 4:  # hello + 3 steps
            break
    c.close()                                             # drop mid-stream; the job goes on
    k_events, last_seq = 4, seen[-1]["seq"]
    c2 = connect()
    assert c2.ok("attach", job=job, seq=last_seq + 1)["job"] == job
    rest, end = collect(c2)
    lines = [f["line"] for f in seen] + [f["line"] for f in rest]
    assert [f["seq"] for f in seen + rest] == list(range(len(lines))) and end["state"] == "done"
    full = (daemon.root / ".daemon" / "jobs" / f"{job}.out").read_text().splitlines()
    assert lines == full and len(full) == 1 + 1 + 12 * 2 + 1
    c3 = connect()                                        # by events: from just after the 4th event
    assert c3.ok("attach", job=job, events=k_events)["state"] == "done"
    by_events, _ = collect(c3)
    assert by_events[0]["seq"] == last_seq + 1 and [f["line"] for f in by_events] == full[last_seq + 1:]
    assert c3.ok("attach", job=job, events=0) and [f["seq"] for f in collect(c3)[0]] == list(range(len(full)))
    assert c3.req("attach", job=job, events=99)["code"] == "bad_request"


def test_cancel_running_and_queued(paired):
    daemon, connect = paired
    a, b, ctl = connect(), connect(), connect()
    ja = a.ok("start", args=["run", "200", "0.05", str(daemon.root / "finished")])["job"]
    jb = b.ok("start", args=["run", "1", "0"])["job"]
    next(f for f in a.stream() if f["op"] == "out" and "step" in f["line"])     # it runs
    assert ctl.ok("cancel", job=jb)["state"] == "cancelled"
    assert collect(b)[1] == {"op": "end", "job": jb, "rc": None, "state": "cancelled"}
    assert ctl.ok("cancel", job=ja)["state"] == "cancelled"
    assert collect(a)[1] == {"op": "end", "job": ja, "rc": -signal.SIGTERM, "state": "cancelled"}
    assert ctl.ok("cancel", job=ja)["state"] == "cancelled"                       # again: no change
    assert not (daemon.root / "finished").exists() and ctl.ok("status")["running"] is None
    assert job_rec(ctl, jb)["started"] is None


def test_cancel_escalates_to_sigkill(paired):
    daemon, connect = paired
    c, ctl = connect(), connect()
    job = c.ok("start", args=["run", "200", "0.05", "stubborn"])["job"]
    next(f for f in c.stream() if f["op"] == "out" and "step" in f["line"])
    t0 = time.monotonic()
    assert ctl.ok("cancel", job=job)["state"] == "running"      # SIGTERM ignored: still running after 1 s
    end = collect(c)[1]
    assert end["rc"] == -signal.SIGKILL and end["state"] == "cancelled" and 4.5 <= time.monotonic() - t0 < 8


def test_two_connections_at_once(paired):
    daemon, connect = paired
    s, f = connect(), connect()
    job = s.ok("start", args=["run", "30", "0.05"])["job"]
    next(s.stream())
    blob = os.urandom(200_000)
    assert put(f, "x.bin", blob)["done"] is True and f.ok("hash", path="x.bin")["sha256"] == sha(blob)
    assert f.ok("status")["running"] == job                   # the stream goes on meanwhile
    outs, end = collect(s)
    assert end["state"] == "done" and outs[-1]["line"] == '{"ev": "done"}'


def test_daemon_killed_mid_run_then_restarted(paired):
    daemon, connect = paired
    c = connect()
    job = c.ok("start", args=["run", "400", "0.05"])["job"]
    hello = json.loads(next(c.stream())["line"])
    daemon.kill(signal.SIGKILL)
    d2 = DaemonProc(daemon.root)                                # same root, a new port
    try:
        assert d2.code is None                                  # a host is paired: no code opened
        wait_for(lambda: dead(hello["pid"]), what="the orphaned agent to die")
        c2 = Client(d2.port)
        assert c2.auth(connect.host, connect.token)["ok"] is True     # hosts.json survived
        rec = job_rec(c2, job)
        assert rec["state"] == "lost" and rec["rc"] is None and rec["ended"] is not None and rec["lines"] >= 1
        assert c2.ok("attach", job=job, seq=0)["state"] == "lost"
        outs, end = collect(c2)
        assert outs[0]["line"] == json.dumps(hello) or json.loads(outs[0]["line"]) == hello
        assert end == {"op": "end", "job": job, "rc": None, "state": "lost"}
        assert "lost" in d2.log()
    finally:
        d2.kill()


def test_sigterm_cancels_jobs_and_exits_cleanly(paired):
    daemon, connect = paired
    c = connect()
    job = c.ok("start", args=["run", "400", "0.05"])["job"]
    queued = connect().ok("start", args=["run", "1", "0"])["job"]
    hello = json.loads(next(c.stream())["line"])
    assert daemon.kill(signal.SIGTERM) == 0
    assert dead(hello["pid"]) and "stopped" in daemon.log()
    for j in (job, queued):
        assert json.loads((daemon.root / ".daemon" / "jobs" / f"{j}.json").read_text())["state"] == "cancelled"
    assert not (daemon.root / ".daemon" / "daemon.json").exists()


def test_restart_refused_while_busy_and_one_daemon_per_root(paired):
    daemon, connect = paired
    c = connect()
    c.ok("start", args=["run", "100", "0.05"])
    ctl = connect()
    assert ctl.req("restart")["code"] == "busy" and ctl.req("install", path="x.zip")["code"] == "busy"
    r = subprocess.run([sys.executable, "-m", "device_agent", "serve", "--port", "0", "--root", str(daemon.root)],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "already serves" in r.stderr


def test_only_the_latest_finished_jobs_are_kept(tmp_path):
    root = tmp_path / "root"
    jobs = root / ".daemon" / "jobs"
    jobs.mkdir(parents=True)
    for i in range(55):
        rec = {"job": f"j{i:02d}", "args": ["hello"], "state": "done", "rc": 0, "created": 1000.0 + i,
               "started": 1000.0 + i, "ended": 1000.5 + i, "lines": 1, "events": 1, "host": "h", "pid": None}
        (jobs / f"j{i:02d}.json").write_text(json.dumps(rec))
        (jobs / f"j{i:02d}.out").write_text("{}\n")
    d = DaemonProc(root)
    try:
        assert sorted(p.stem for p in jobs.glob("*.json")) == [f"j{i:02d}" for i in range(5, 55)]
        assert len(list(jobs.glob("*.out"))) == 50
    finally:
        d.kill()


def test_listens_on_loopback_only(daemon):
    s = socket.socket()
    s.settimeout(2)
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    except OSError:
        addrs = set()
    for a in addrs:
        if a.startswith("127."):
            continue
        with pytest.raises(OSError):
            socket.create_connection((a, daemon.port), timeout=2)
    raw = Client(daemon.port)
    raw.sock.sendall(encode_frame({"op": "status", "id": 1}))
    assert raw.frame()[0]["code"] == "auth"
