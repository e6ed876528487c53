"""Pairing codes, paired hosts and authentication: <root>/.daemon/pairing.json and hosts.json."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from pathlib import Path

from ..protocol import DAEMON_DIR, PAIR_ATTEMPTS, PAIR_TTL_S, auth_mac
from .base import Refused, read_json, write_json


def open_pairing(root: Path) -> str:
    """A fresh one-use 6-digit code (replaces any open one); only its sha256 is stored."""
    code = f"{secrets.randbelow(10 ** 6):06d}"
    write_json(root / DAEMON_DIR / "pairing.json", {"sha256": hashlib.sha256(code.encode()).hexdigest(),
                                                    "expires": time.time() + PAIR_TTL_S, "attempts": PAIR_ATTEMPTS})
    return code



class Pairing:
    """The paired hosts and the open pairing code of one daemon root (`lock` guards both files)."""

    def __init__(self, root: Path):
        self.dir = root / DAEMON_DIR
        self.lock = threading.Lock()         # hosts.json, pairing.json

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

