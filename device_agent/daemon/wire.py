"""One connection to the daemon (welcome, auth or pair, one request answered at a time, job streams) and
the Server that gives each connection its thread. The frames are protocol.py's."""
from __future__ import annotations

import collections
import errno
import platform
import secrets
import select
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path

from .. import __version__
from ..protocol import PROTOCOL_VERSION, QUEUED_EVERY_S, WireError, encode_frame, read_frame
from .base import Refused, log
from .handlers import Ops
from .jobs import FINAL, Job
from .state import Daemon

AUTH_DELAY_S = 0.5        # a refused auth or pair waits this long before the answer (against guessing); it
                          # sleeps in that connection's own thread, holding no lock: nobody else waits
FIRST_FRAME_S = 30.0      # a peer that connects and says nothing is dropped after this
LISTEN_BACKLOG = 128      # connections the kernel queues before accept(): a burst of clients is not dropped
MAX_PEER_CONNS = 64       # connections at once from one peer address until they authenticate (through
                          # `adb forward` every connection comes from 127.0.0.1: the cap on unproven ones)
MAX_HOST_CONNS = 32       # authenticated connections at once of one paired host


class Slots:
    """Connections open at once per key (("peer", address) until auth, ("host", id) after), each capped."""

    def __init__(self):
        self.lock = threading.Lock()
        self.n: collections.Counter = collections.Counter()

    def take(self, key: tuple, cap: int) -> bool:
        with self.lock:
            if self.n[key] >= cap:
                return False
            self.n[key] += 1
            return True

    def give(self, key: tuple) -> None:
        with self.lock:
            self.n[key] -= 1
            if self.n[key] <= 0:
                del self.n[key]


class Handler(Ops, socketserver.StreamRequestHandler):
    """One connection: welcome, auth or pair, then one request answered at a time (ops are op_NAME).
    An op returns its answer's fields (and bytes, for get); start/attach then stream via self.then."""

    def handle(self) -> None:
        self.d: Daemon = self.server.d
        self.who = "a peer"
        self.then = None
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        slots, peer = self.server.slots, self.client_address[0]
        if not slots.take(("peer", peer), MAX_PEER_CONNS):
            # NOTE: instead of the welcome, at once (no guess was made): the peer learns why and goes away
            self.refuse_early("too_many", f"{peer} already has {MAX_PEER_CONNS} connections to this daemon that "
                                          f"have not authenticated; close some and retry")
            return
        self.slot = ("peer", peer)
        try:
            if self.greet():
                while True:
                    self.serve_one(*read_frame(self.rfile))
        except WireError as e:
            if str(e) != "the connection closed":
                log(f"{self.who}: {e}; hung up")
        except (ConnectionError, TimeoutError) as e:
            log(f"{self.who}: connection lost ({type(e).__name__})")
        finally:
            slots.give(self.slot)

    def refuse_early(self, code: str, message: str) -> None:
        """One refusal frame in place of the welcome, then the daemon hangs up."""
        log(f"refused a connection: {message}")
        try:
            self.send({"op": "refused", "ok": False, "code": code, "message": message})
        except OSError:
            pass

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
                ans = {"id": rid, "ok": True}
            elif op == "pair":
                self.host = self.d.pair(h.get("code"), h.get("name"))
                log(f"paired a new host: {self.host['name']} ({self.host['id']})")
                ans = {"id": rid, "ok": True, "host": self.host["id"], "token": self.host["token"]}
            else:
                raise Refused("auth", f"authenticate first (auth or pair), not {op!r}")
        except Refused as e:
            log(f"refused a connection: {e}")
            time.sleep(AUTH_DELAY_S)
            self.send({"id": rid, "ok": False, "code": e.code, "message": str(e)})
            return False
        self.who = f"host {self.host['name']} ({self.host['id']})"
        if not self.become_host(rid):
            return False
        self.send(ans)
        return True

    def become_host(self, rid) -> bool:
        """Move this connection from its peer's slots to its host's; False (refused, hang up) when that
        host already has MAX_HOST_CONNS."""
        slots, key = self.server.slots, ("host", self.host["id"])
        if not slots.take(key, MAX_HOST_CONNS):
            msg = (f"{self.who} already has {MAX_HOST_CONNS} connections to this daemon; close some "
                   f"(other thomas commands on that computer?) and retry")
            log(f"refused a connection: {msg}")
            self.send({"id": rid, "ok": False, "code": "too_many", "message": msg})
            return False
        slots.give(self.slot)
        self.slot = key
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

    # ---------------------------------------------------------------- job streams
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
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, port: int, d: Daemon):
        super().__init__(("127.0.0.1", port), Handler)
        self.d, self.restarting, self.slots = d, False, Slots()

    def restart(self) -> None:
        self.restarting = True
        threading.Thread(target=self.shutdown, daemon=True).start()

    def handle_error(self, request, client_address) -> None:
        e = sys.exc_info()[1]
        log(f"connection {client_address[1]}: internal error {type(e).__name__}: {e} (the daemon goes on)")

